//! Choosing the next token: greedy, or temperature / top-k / top-p sampling from a seeded RNG.
//!
//! Greedy (temperature 0) takes the argmax; ties go to the lowest token id, so the choice is
//! deterministic and matches what the references do with their own argmax.

use crate::ops::{argmax, softmax_in_place};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1.0 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 1 }
    }
}

pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        let rng = SplitMix64(config.seed);
        Sampler { config, rng }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = &self.config;
        if c.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        // Candidates sorted by logit, highest first; equal logits keep id order.
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if c.top_k > 0 {
            ids.truncate(c.top_k);
        }
        let mut probs: Vec<f32> = ids.iter().map(|&i| logits[i as usize] / c.temperature).collect();
        softmax_in_place(&mut probs);
        if c.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    mass += p;
                    mass >= c.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            ids.truncate(keep);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.next_f32() * total;
        for (&id, &p) in ids.iter().zip(&probs) {
            if r < p {
                return id;
            }
            r -= p;
        }
        *ids.last().unwrap_or(&0)
    }
}

/// A small, well-mixed 64-bit generator (Steele, Lea and Flood's SplitMix64): reproducible from a
/// seed on every platform, which is all sampling needs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_lowest_id_among_equal_maxima() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&[0.1, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplerConfig { temperature: 5.0, top_k: 1, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5]), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // softmax([ln 6, ln 3, ln 1]) = [0.6, 0.3, 0.1]: p = 0.85 keeps ids 0 and 1 only.
        let logits = [6f32.ln(), 3f32.ln(), 0.0];
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_p: 0.85, ..Default::default() });
        let draws: Vec<u32> = (0..200).map(|_| s.sample(&logits)).collect();
        assert!(!draws.contains(&2));
        assert!(draws.contains(&0) && draws.contains(&1));
    }

    #[test]
    fn sampling_is_reproducible_from_the_seed_and_follows_the_distribution() {
        let logits = [6f32.ln(), 3f32.ln(), 0.0];
        let cfg = SamplerConfig { temperature: 1.0, seed: 42, ..Default::default() };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..3000).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..3000).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        // Expected 1800 zeros (p = 0.6); 5 standard deviations is sqrt(3000*0.6*0.4)*5 = 134.
        let zeros = a.iter().filter(|&&t| t == 0).count() as i64;
        assert!((zeros - 1800).abs() < 134, "{zeros} zeros");
    }
}

//! Choosing the next token: greedy, or temperature / top-k / top-p sampling by Gumbel-max on a
//! seeded, counter-based noise stream.
//!
//! Greedy (temperature 0) takes the argmax; ties go to the lowest token id, so the choice is
//! deterministic and matches what the references do with their own argmax. Sampling draws from
//! [`Sampler::distribution`] with the noise stream the checkpoint catalog defines (`[sampling]` in
//! `checkpoints/catalog.toml`), so any implementation that follows it picks the same tokens from the
//! same seed, and a sampled run can be checked as a greedy one is.

use crate::ops::{argmax, softmax_in_place};

include!(concat!(env!("OUT_DIR"), "/samplers.rs"));

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

/// Bugs planted in the sampler (fault::Fault, `fault-injection` feature); all off otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplerFaults {
    /// The temperature divides the probabilities after the softmax, which renormalising undoes.
    pub temperature_after_softmax: bool,
    /// Top-p keeps one token fewer than the smallest set reaching p.
    pub top_p_one_too_few: bool,
}

pub struct Sampler {
    config: SamplerConfig,
    faults: SamplerFaults,
    /// Draws made so far: draw j reads the noise stream from j * vocab.
    draws: u64,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler { config, faults: SamplerFaults::default(), draws: 0 }
    }

    pub fn with_faults(self, faults: SamplerFaults) -> Sampler {
        Sampler { faults, ..self }
    }

    /// What the next draw is taken from, one probability per token id: softmax(logits / T) over
    /// the tokens top-k and then top-p keep (top-p on the tempered probabilities), renormalised,
    /// 0 for the rest. At temperature 0, all mass on the greedy token.
    pub fn distribution(&self, logits: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let mut out = vec![0.0; logits.len()];
        if logits.is_empty() {
            return out;
        }
        if c.temperature <= 0.0 {
            out[argmax(logits)] = 1.0;
            return out;
        }
        // Candidates most likely first; equal logits keep id order. Sorting is only needed to cut.
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        if c.top_k > 0 || c.top_p < 1.0 {
            ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        }
        if c.top_k > 0 {
            ids.truncate(c.top_k);
        }
        let mut probs: Vec<f32> = if self.faults.temperature_after_softmax {
            let mut p: Vec<f32> = ids.iter().map(|&i| logits[i as usize]).collect();
            softmax_in_place(&mut p);
            p.iter().map(|v| v / c.temperature).collect()
        } else {
            let mut p: Vec<f32> = ids.iter().map(|&i| logits[i as usize] / c.temperature).collect();
            softmax_in_place(&mut p);
            p
        };
        if c.top_p < 1.0 {
            let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
            let mut mass = 0.0;
            let mut keep = probs
                .iter()
                .position(|&p| {
                    mass += f64::from(p) / total;
                    mass >= f64::from(c.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            if self.faults.top_p_one_too_few {
                keep = keep.saturating_sub(1).max(1);
            }
            ids.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
        for (&id, &p) in ids.iter().zip(&probs) {
            out[id as usize] = (f64::from(p) / total) as f32;
        }
        out
    }

    /// The next token: greedy at temperature 0, else a [`Sampler::draw`] from
    /// [`Sampler::distribution`].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.config.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        let probs = self.distribution(logits);
        self.draw(&probs)
    }

    /// Gumbel-max: the token with p > 0 and the largest ln(p) + g, g the stream's next
    /// `probs.len()` values (draw j reads from j * vocab); ties go to the lowest id.
    pub fn draw(&mut self, probs: &[f32]) -> u32 {
        let start = self.draws * probs.len() as u64;
        self.draws += 1;
        let mut best = (f64::NEG_INFINITY, 0u32);
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                let score = f64::from(p).ln() + gumbel(self.config.seed, start + i as u64);
                if score > best.0 {
                    best = (score, i as u32);
                }
            }
        }
        best.1
    }
}

/// Output `n` (from 0) of Steele, Lea and Flood's SplitMix64 started at `seed`. Its state moves by
/// a constant per output, so any element is had without the ones before it.
pub fn splitmix64(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `n` of the shared Gumbel noise stream: -ln(-ln u), u = ((x >> 11) + 0.5) / 2^53 strictly
/// inside (0, 1), x = [`splitmix64`]`(seed, n)`.
pub fn gumbel(seed: u64, n: u64) -> f64 {
    let u = ((splitmix64(seed, n) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(-u.ln()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32) -> Sampler {
        Sampler::new(SamplerConfig { temperature, top_k, top_p, seed: 42 })
    }

    #[test]
    fn greedy_takes_the_lowest_id_among_equal_maxima() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&[0.1, 2.0, 2.0, -1.0]), 1);
        assert_eq!(s.distribution(&[0.1, 2.0, 2.0, -1.0]), vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn splitmix64_gives_the_published_sequence_for_seed_1234567() {
        // The reference outputs of SplitMix64 from seed 1234567 (Vigna's splitmix64.c).
        let expected = [6457827717110365317u64, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821];
        for (n, &x) in expected.iter().enumerate() {
            assert_eq!(splitmix64(1234567, n as u64), x, "output {n}");
        }
    }

    #[test]
    fn the_distribution_is_the_tempered_softmax_cut_by_top_k_then_top_p() {
        // logits ln 6, ln 3, ln 1 at T = 1: [0.6, 0.3, 0.1]; at T = 0.5 squared and renormalised:
        // [36, 9, 1] / 46.
        let logits = [6f32.ln(), 3f32.ln(), 0.0];
        let close = |a: &[f32], b: &[f64]| a.iter().zip(b).all(|(&x, &y)| (f64::from(x) - y).abs() < 1e-6);
        assert!(close(&sampler(1.0, 0, 1.0).distribution(&logits), &[0.6, 0.3, 0.1]));
        assert!(close(&sampler(0.5, 0, 1.0).distribution(&logits), &[36.0 / 46.0, 9.0 / 46.0, 1.0 / 46.0]));
        assert!(close(&sampler(1.0, 2, 1.0).distribution(&logits), &[2.0 / 3.0, 1.0 / 3.0, 0.0]));
        // p = 0.85: 0.6 < 0.85 <= 0.9, so ids 0 and 1; p = 0.55 is reached by id 0 alone.
        assert!(close(&sampler(1.0, 0, 0.85).distribution(&logits), &[2.0 / 3.0, 1.0 / 3.0, 0.0]));
        assert!(close(&sampler(1.0, 0, 0.55).distribution(&logits), &[1.0, 0.0, 0.0]));
        // top-p sees the tempered distribution: at T = 0.5 id 0 alone holds 36/46 = 0.78 >= 0.75.
        assert!(close(&sampler(0.5, 0, 0.75).distribution(&logits), &[1.0, 0.0, 0.0]));
    }

    #[test]
    fn planted_sampler_faults_change_the_distribution_as_named() {
        let logits = [6f32.ln(), 3f32.ln(), 0.0];
        let late = SamplerFaults { temperature_after_softmax: true, ..Default::default() };
        let d = sampler(0.5, 0, 1.0).with_faults(late).distribution(&logits);
        assert!((d[0] - 0.6).abs() < 1e-6, "the temperature is undone: {d:?}");
        let few = SamplerFaults { top_p_one_too_few: true, ..Default::default() };
        assert_eq!(sampler(1.0, 0, 0.85).with_faults(few).distribution(&logits), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn gumbel_max_draws_follow_the_distribution_and_repeat_from_the_seed() {
        let logits = [6f32.ln(), 3f32.ln(), 0.0];
        let draws = |mut s: Sampler| -> Vec<u32> { (0..3000).map(|_| s.sample(&logits)).collect() };
        let a = draws(sampler(1.0, 0, 1.0));
        assert_eq!(a, draws(sampler(1.0, 0, 1.0)));
        // Expected 1800 zeros (p = 0.6); 5 standard deviations is sqrt(3000*0.6*0.4)*5 = 134.
        let zeros = a.iter().filter(|&&t| t == 0).count() as i64;
        assert!((zeros - 1800).abs() < 134, "{zeros} zeros");
        // A token top-p removed is never drawn.
        assert!(!draws(sampler(1.0, 0, 0.85)).contains(&2));
    }

    #[test]
    fn draw_j_reads_the_stream_from_j_times_the_vocabulary() {
        // Equal probabilities: the draw is the argmax of the noise itself.
        let logits = [0.0f32; 5];
        let mut s = sampler(1.0, 0, 1.0);
        for j in 0..4u64 {
            let noise: Vec<f64> = (0..5).map(|i| gumbel(42, j * 5 + i)).collect();
            let expected = (0..5).max_by(|&a, &b| noise[a].total_cmp(&noise[b])).unwrap() as u32;
            assert_eq!(s.sample(&logits), expected, "draw {j}");
        }
    }
}

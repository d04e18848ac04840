//! What both architectures' blocks do alike: the FFN residual, the weight products, the KV cache
//! taps, and the planted perturbation of a block's output.

use crate::attention::KvCache;
use crate::config::Config;
use crate::fault::Fault;
use crate::ops::{self, interleaved_to_half_split, RopeLayout};
use crate::sampling::splitmix64;
use crate::tap::{Tap, TapValue, Taps};
use crate::tensor::QTensor;

/// The planted PerturbFfn fault: layer `l`'s FFN output (rows at positions `pos0..`) plus noise.
pub(crate) fn perturb_ffn(ffn_out: &mut [f32], cfg: &Config, l: usize, pos0: usize) {
    if let Some(rel) = cfg.ffn_perturbation(l) {
        // Another noise stream than the block output's (a layer index no model reaches).
        add_noise(ffn_out, cfg.d_model, rel, l | 1 << 15, pos0);
    }
}

/// The FFN's residual connection `x += ffn_out` (or the planted bug that drops it).
pub(crate) fn residual(x: &mut [f32], ffn_out: &[f32], cfg: &Config) {
    if cfg.has_fault(Fault::DroppedFfnResidual) {
        x.copy_from_slice(ffn_out);
    } else {
        ops::add_in_place(x, ffn_out);
    }
}

/// The planted Perturb fault: layer `l`'s block output (rows at positions `pos0..`) plus noise.
pub(crate) fn perturb(x: &mut [f32], cfg: &Config, l: usize, pos0: usize) {
    if let Some(rel) = cfg.perturbation(l) {
        add_noise(x, cfg.d_model, rel, l, pos0);
    }
}

/// Adds to each row of `x` (`d` wide, row t at position `pos0 + t`) `rel` times the row's RMS
/// times noise of zero mean and unit variance: uniform on [-sqrt 3, sqrt 3], a hash of (layer,
/// position, channel), so a position gets the same noise in a prefill and in a decode step.
fn add_noise(x: &mut [f32], d: usize, rel: f32, l: usize, pos0: usize) {
    for (t, row) in x.chunks_exact_mut(d).enumerate() {
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / d as f32).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            let key = ((l as u64) << 48) ^ (((pos0 + t) as u64) << 24) ^ i as u64;
            let unit = (splitmix64(key, 0) >> 11) as f64 / (1u64 << 53) as f64;
            *v += rel * rms * ((unit - 0.5) * 12f64.sqrt()) as f32;
        }
    }
}

/// `W x` for `n` token rows.
pub(crate) fn matmul(w: &QTensor, x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * w.rows()];
    w.matmul(x, n, &mut out);
    out
}

/// The `k_cache`/`v_cache` taps: the cache's first `len` positions, `[n_kv, len, hd]`.
pub(crate) fn record_cache(taps: &mut Taps, cache: &KvCache, l: usize, len: usize, cfg: &Config) {
    let shape = [cfg.n_kv_heads, len, cfg.head_dim];
    let canonical_k = |k: Vec<f32>| match cfg.rope_layout {
        RopeLayout::Interleaved => interleaved_to_half_split(&k, cfg.head_dim),
        RopeLayout::HalfSplit => k,
    };
    taps.record(Tap::KCache, Some(l), || TapValue::f32(&shape, canonical_k(cache.prefix(l, len, false))));
    taps.record(Tap::VCache, Some(l), || TapValue::f32(&shape, cache.prefix(l, len, true)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_noise_has_the_asked_relative_rms_and_repeats_per_position() {
        // 64 rows of 512 channels, each row's RMS 2 (values +-2): the noise added should have
        // mean ~0 and RMS rel * 2 (uniform noise: sample mean within 4 sigma = 4 / sqrt(n)).
        let (d, rows, rel) = (512, 64, 1e-3f32);
        let x: Vec<f32> = (0..d * rows).map(|i| if i % 3 == 0 { -2.0 } else { 2.0 }).collect();
        let mut y = x.clone();
        add_noise(&mut y, d, rel, 3, 0);
        let noise: Vec<f64> = y.iter().zip(&x).map(|(a, b)| (a - b) as f64 / (rel as f64 * 2.0)).collect();
        let n = noise.len() as f64;
        let mean = noise.iter().sum::<f64>() / n;
        let var = noise.iter().map(|v| v * v).sum::<f64>() / n - mean * mean;
        assert!(mean.abs() < 4.0 / n.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!(noise.iter().all(|v| v.abs() <= 3f64.sqrt() * 1.001));
        // Row 5 of a prefill gets the same noise as position 5 decoded alone; another layer does not.
        let mut one = x[5 * d..6 * d].to_vec();
        add_noise(&mut one, d, rel, 3, 5);
        assert_eq!(one, y[5 * d..6 * d]);
        let mut other = x[5 * d..6 * d].to_vec();
        add_noise(&mut other, d, rel, 4, 5);
        assert_ne!(other, one);
    }
}

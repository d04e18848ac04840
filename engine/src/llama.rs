//! The Llama family: RMSNorm, RoPE, grouped-query attention, SwiGLU, optionally tied output.
//!
//! Weights are addressed by their GGUF names (`blk.0.attn_q.weight`); the loader maps other
//! layouts (HF safetensors) onto them.

use crate::attention::{attend, KvCache};
use crate::config::{Config, Fault};
use crate::error::Result;
use crate::loader::WeightStore;
use crate::ops::{self, interleaved_to_half_split, Rope, RopeLayout};
use crate::tap::{Tap, TapValue, Taps};
use crate::tensor::QTensor;

pub struct Block {
    attn_norm: Vec<f32>,
    wq: QTensor,
    wk: QTensor,
    wv: QTensor,
    wo: QTensor,
    ffn_norm: Vec<f32>,
    w_gate: QTensor,
    w_up: QTensor,
    w_down: QTensor,
}

pub struct Llama {
    pub config: Config,
    token_embd: QTensor,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    /// The token embedding when the output projection is tied.
    output: QTensor,
}

impl Llama {
    pub fn load(config: Config, store: &dyn WeightStore) -> Result<Llama> {
        let (d, kv_dim, ffn, vocab) = (config.d_model, config.n_kv_heads * config.head_dim, config.ffn_dim, config.vocab_size);
        let token_embd = store.matrix("token_embd.weight", vocab, d)?;
        let blocks = (0..config.n_layers)
            .map(|l| {
                let w = |name: &str| format!("blk.{l}.{name}.weight");
                Ok(Block {
                    attn_norm: store.vector(&w("attn_norm"), d)?,
                    wq: store.matrix(&w("attn_q"), d, d)?,
                    wk: store.matrix(&w("attn_k"), kv_dim, d)?,
                    wv: store.matrix(&w("attn_v"), kv_dim, d)?,
                    wo: store.matrix(&w("attn_output"), d, d)?,
                    ffn_norm: store.vector(&w("ffn_norm"), d)?,
                    w_gate: store.matrix(&w("ffn_gate"), ffn, d)?,
                    w_up: store.matrix(&w("ffn_up"), ffn, d)?,
                    w_down: store.matrix(&w("ffn_down"), d, ffn)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = match store.has("output.weight") {
            true => store.matrix("output.weight", vocab, d)?,
            false => token_embd.clone(),
        };
        Ok(Llama { output_norm: store.vector("output_norm.weight", d)?, config, token_embd, blocks, output })
    }

    /// Every weight matrix, for planting a dequantization bug in it.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn matrices_mut(&mut self) -> Vec<&mut QTensor> {
        let mut out = vec![&mut self.token_embd, &mut self.output];
        for b in &mut self.blocks {
            out.extend([&mut b.wq, &mut b.wk, &mut b.wv, &mut b.wo, &mut b.w_gate, &mut b.w_up, &mut b.w_down]);
        }
        out
    }

    /// Runs `tokens` at positions `cache.len()..`, appending to the cache. Returns logits for
    /// every position when `all_logits`, else for the last one only.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, taps: &mut Taps, all_logits: bool) -> Vec<f32> {
        let (n, d) = (tokens.len(), self.config.d_model);
        let mut x = vec![0.0f32; n * d];
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            self.token_embd.dequantize_row(tok as usize, row);
        }
        taps.record(Tap::Embed, None, || TapValue::f32(&[n, d], x.clone()));

        let rope = self.config.rope();
        for (l, block) in self.blocks.iter().enumerate() {
            let own = self.config.layer_rope(l);
            block.forward(l, &mut x, cache, &self.config, own.as_ref().unwrap_or(&rope), taps);
        }
        cache.advance(n);

        let h = ops::rms_norm(&x, &self.output_norm, self.config.eps());
        taps.record(Tap::FinalNorm, None, || TapValue::f32(&[n, d], h.clone()));
        let rows = if all_logits { &h[..] } else { &h[(n - 1) * d..] };
        let mut logits = vec![0.0f32; rows.len() / d * self.config.vocab_size];
        self.output.matmul(rows, rows.len() / d, &mut logits);
        logits
    }
}

impl Block {
    fn forward(&self, l: usize, x: &mut [f32], cache: &mut KvCache, cfg: &Config, rope: &Rope, taps: &mut Taps) {
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let n = x.len() / d;
        let layer = Some(l);
        let pos0 = cache.len();
        // Taps show Q/K in HF's half-split order whatever layout the weights use.
        let canonical = |v: &[f32]| match cfg.rope_layout {
            RopeLayout::Interleaved => interleaved_to_half_split(v, hd),
            RopeLayout::HalfSplit => v.to_vec(),
        };

        let h = ops::rms_norm(x, &self.attn_norm, cfg.eps());
        taps.record(Tap::AttnNorm, layer, || TapValue::f32(&[n, d], h.clone()));

        let mut q = matmul(&self.wq, &h, n);
        let mut k = matmul(&self.wk, &h, n);
        let v = matmul(&self.wv, &h, n);
        let kv_dim = k.len() / n;
        taps.record(Tap::Q, layer, || TapValue::f32(&[n, d], canonical(&q)));
        taps.record(Tap::K, layer, || TapValue::f32(&[n, kv_dim], canonical(&k)));
        taps.record(Tap::V, layer, || TapValue::f32(&[n, kv_dim], v.clone()));

        // The planted DecodeRopeOffByOne fault: a decoded token is rotated one position on.
        let rope_pos = pos0 + usize::from(cfg.has_fault(Fault::DecodeRopeOffByOne) && n == 1 && pos0 > 0);
        rope.apply(&mut q, n, rope_pos);
        rope.apply(&mut k, n, rope_pos);
        taps.record(Tap::QRope, layer, || TapValue::f32(&[n, d], canonical(&q)));
        taps.record(Tap::KRope, layer, || TapValue::f32(&[n, kv_dim], canonical(&k)));

        cache.store(l, &k, &v);
        record_cache(taps, cache, l, pos0 + n, cfg);

        let (attn, probs) = attend(&q, cache, l, pos0, cfg.heads(), taps.active());
        if let Some(p) = probs {
            taps.record(Tap::AttnProbs, layer, || TapValue::f32(&[cfg.n_heads, n, pos0 + n], p));
        }
        let attn_out = matmul(&self.wo, &attn, n);
        taps.record(Tap::AttnOut, layer, || TapValue::f32(&[n, d], attn_out.clone()));
        ops::add_in_place(x, &attn_out);

        let h = ops::rms_norm(x, &self.ffn_norm, cfg.eps());
        taps.record(Tap::FfnNorm, layer, || TapValue::f32(&[n, d], h.clone()));
        let mut gate = matmul(&self.w_gate, &h, n);
        let up = matmul(&self.w_up, &h, n);
        ops::map_in_place(&mut gate, ops::silu);
        ops::mul_in_place(&mut gate, &up);
        let ffn_out = matmul(&self.w_down, &gate, n);
        taps.record(Tap::FfnOut, layer, || TapValue::f32(&[n, d], ffn_out.clone()));
        residual(x, &ffn_out, cfg);
        perturb(x, cfg, l, pos0);
        taps.record(Tap::BlockOut, layer, || TapValue::f32(&[n, d], x.to_vec()));
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
            let unit = (splitmix64(key) >> 11) as f64 / (1u64 << 53) as f64;
            *v += rel * rms * ((unit - 0.5) * 12f64.sqrt()) as f32;
        }
    }
}

/// SplitMix64's output function: a well-mixed 64-bit hash of `z`.
fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

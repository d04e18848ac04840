//! GPT-2: LayerNorm with bias, learned absolute positions, fused QKV with bias, GELU (tanh), tied
//! output embedding.
//!
//! Weights are addressed by their GGUF names (`blk.0.attn_qkv.weight`, Linear `[out, in]` layout);
//! the loader transposes HF's Conv1D `[in, out]` weights onto them.

use crate::attention::{attend, KvCache};
use crate::block::{matmul, perturb, perturb_ffn, record_cache, residual};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::loader::WeightStore;
use crate::ops;
use crate::tap::{Tap, TapValue, Taps};
use crate::tensor::QTensor;

/// A weight matrix with its bias.
struct Linear {
    w: QTensor,
    b: Vec<f32>,
}

impl Linear {
    fn load(store: &dyn WeightStore, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        Ok(Linear { w: store.matrix(&format!("{name}.weight"), rows, cols)?, b: store.vector(&format!("{name}.bias"), rows)? })
    }

    fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = matmul(&self.w, x, n);
        ops::add_bias(&mut y, &self.b);
        y
    }
}

/// LayerNorm parameters.
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Norm {
    fn load(store: &dyn WeightStore, name: &str, d: usize) -> Result<Norm> {
        Ok(Norm { w: store.vector(&format!("{name}.weight"), d)?, b: store.vector(&format!("{name}.bias"), d)? })
    }

    fn forward(&self, x: &[f32], eps: f32) -> Vec<f32> {
        ops::layer_norm(x, &self.w, &self.b, eps)
    }
}

struct Block {
    attn_norm: Norm,
    qkv: Linear,
    attn_output: Linear,
    ffn_norm: Norm,
    ffn_up: Linear,
    ffn_down: Linear,
}

pub struct Gpt2 {
    pub config: Config,
    token_embd: QTensor,
    position_embd: Vec<f32>,
    blocks: Vec<Block>,
    output_norm: Norm,
    output: QTensor,
}

impl Gpt2 {
    pub fn load(config: Config, store: &dyn WeightStore) -> Result<Gpt2> {
        let (d, ffn) = (config.d_model, config.ffn_dim);
        let token_embd = store.matrix("token_embd.weight", config.vocab_size, d)?;
        let position_embd = store.matrix("position_embd.weight", config.context, d)?.to_f32();
        let blocks = (0..config.n_layers)
            .map(|l| {
                let n = |name: &str| format!("blk.{l}.{name}");
                Ok(Block {
                    attn_norm: Norm::load(store, &n("attn_norm"), d)?,
                    qkv: Linear::load(store, &n("attn_qkv"), 3 * d, d)?,
                    attn_output: Linear::load(store, &n("attn_output"), d, d)?,
                    ffn_norm: Norm::load(store, &n("ffn_norm"), d)?,
                    ffn_up: Linear::load(store, &n("ffn_up"), ffn, d)?,
                    ffn_down: Linear::load(store, &n("ffn_down"), d, ffn)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = match store.has("output.weight") {
            true => store.matrix("output.weight", config.vocab_size, d)?,
            false => token_embd.clone(),
        };
        if config.n_kv_heads != config.n_heads {
            return Err(Error::Config("GPT-2 has as many KV heads as query heads".into()));
        }
        Ok(Gpt2 { output_norm: Norm::load(store, "output_norm", d)?, config, token_embd, position_embd, blocks, output })
    }

    /// The matrices every token multiplies by (the embedding is only looked up, unless tied).
    pub(crate) fn products(&self) -> Vec<&QTensor> {
        let mut out = vec![&self.output];
        for b in &self.blocks {
            out.extend([&b.qkv.w, &b.attn_output.w, &b.ffn_up.w, &b.ffn_down.w]);
        }
        out
    }

    /// Every weight matrix, for planting a dequantization bug in it. The position table was
    /// widened to f32 when loaded and is not among them.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn matrices_mut(&mut self) -> Vec<&mut QTensor> {
        let mut out = vec![&mut self.token_embd, &mut self.output];
        for b in &mut self.blocks {
            out.extend([&mut b.qkv.w, &mut b.attn_output.w, &mut b.ffn_up.w, &mut b.ffn_down.w]);
        }
        out
    }

    /// Runs `tokens` at positions `cache.len()..`, appending to the cache. Returns logits for
    /// every position when `all_logits`, else for the last one only.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, taps: &mut Taps, all_logits: bool) -> Vec<f32> {
        let (n, d, pos0) = (tokens.len(), self.config.d_model, cache.len());
        let mut x = vec![0.0f32; n * d];
        for (t, (row, &tok)) in x.chunks_exact_mut(d).zip(tokens).enumerate() {
            self.token_embd.dequantize_row(tok as usize, row);
            ops::add_in_place(row, &self.position_embd[(pos0 + t) * d..(pos0 + t + 1) * d]);
        }
        taps.record(Tap::Embed, None, || TapValue::f32(&[n, d], x.clone()));

        for l in 0..self.blocks.len() {
            self.forward_layer(l, &mut x, cache, taps);
        }
        cache.advance(n);

        let h = self.output_norm.forward(&x, self.config.eps());
        taps.record(Tap::FinalNorm, None, || TapValue::f32(&[n, d], h.clone()));
        let rows = if all_logits { &h[..] } else { &h[(n - 1) * d..] };
        let mut logits = vec![0.0f32; rows.len() / d * self.config.vocab_size];
        self.output.matmul(rows, rows.len() / d, &mut logits);
        logits
    }

    /// Layer `l` alone on the rows `x` (positions `cache.len()..`), in place: what [`Gpt2::forward`]
    /// runs for each layer, storing into the cache without advancing it.
    pub fn forward_layer(&self, l: usize, x: &mut [f32], cache: &mut KvCache, taps: &mut Taps) {
        self.blocks[l].forward(l, x, cache, &self.config, taps);
    }
}

impl Block {
    fn forward(&self, l: usize, x: &mut [f32], cache: &mut KvCache, cfg: &Config, taps: &mut Taps) {
        let d = cfg.d_model;
        let n = x.len() / d;
        let layer = Some(l);
        let pos0 = cache.len();

        let h = self.attn_norm.forward(x, cfg.layer_eps(l));
        taps.record(Tap::AttnNorm, layer, || TapValue::f32(&[n, d], h.clone()));

        let qkv = self.qkv.forward(&h, n);
        let split = |part: usize| -> Vec<f32> { qkv.chunks_exact(3 * d).flat_map(|row| row[part * d..(part + 1) * d].iter().copied()).collect() };
        let (q, k, v) = (split(0), split(1), split(2));
        taps.record(Tap::Q, layer, || TapValue::f32(&[n, d], q.clone()));
        taps.record(Tap::K, layer, || TapValue::f32(&[n, d], k.clone()));
        taps.record(Tap::V, layer, || TapValue::f32(&[n, d], v.clone()));

        cache.store(l, &k, &v);
        record_cache(taps, cache, l, pos0 + n, cfg);

        let (attn, probs) = attend(&q, cache, l, pos0, cfg.heads(l), taps.active());
        if let Some(p) = probs {
            taps.record(Tap::AttnProbs, layer, || TapValue::f32(&[cfg.n_heads, n, pos0 + n], p));
        }
        let attn_out = self.attn_output.forward(&attn, n);
        taps.record(Tap::AttnOut, layer, || TapValue::f32(&[n, d], attn_out.clone()));
        ops::add_in_place(x, &attn_out);

        let h = self.ffn_norm.forward(x, cfg.layer_eps(l));
        taps.record(Tap::FfnNorm, layer, || TapValue::f32(&[n, d], h.clone()));
        let mut up = self.ffn_up.forward(&h, n);
        // The planted GeluErf fault: the exact GELU where GPT-2 was trained with the tanh form.
        if cfg.has_fault(Fault::GeluErf) {
            ops::map_in_place(&mut up, ops::gelu_erf);
        } else {
            ops::map_in_place(&mut up, ops::gelu_tanh);
        }
        let mut ffn_out = self.ffn_down.forward(&up, n);
        perturb_ffn(&mut ffn_out, cfg, l, pos0);
        taps.record(Tap::FfnOut, layer, || TapValue::f32(&[n, d], ffn_out.clone()));
        residual(x, &ffn_out, cfg);
        perturb(x, cfg, l, pos0);
        taps.record(Tap::BlockOut, layer, || TapValue::f32(&[n, d], x.to_vec()));
    }
}

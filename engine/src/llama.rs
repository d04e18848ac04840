//! The Llama block: RMSNorm, RoPE, grouped-query attention, SwiGLU, optionally tied output; with
//! what the families built on it add: Llama 3.1's RoPE scaling (in [`Rope`]), Qwen2's Q/K/V
//! biases, Qwen3's per-head RMSNorm on q and k before RoPE and heads wider than the model,
//! Gemma-2's scaled embedding, GeGLU, norms after attention and FFN, soft-caps and sliding
//! window ([`crate::config::Traits`]; its norms' 1 + weight is in the weights), Phi-3's fused
//! Q/K/V and gate/up projections (split into views of their rows at load).
//!
//! Weights are addressed by their GGUF names (`blk.0.attn_q.weight`); the loader maps other
//! layouts (HF safetensors) onto them.

use crate::attention::{attend, KvCache};
use crate::block::{matmul, perturb, perturb_ffn, record_cache, residual};
use crate::config::{Arch, Config};
use crate::error::Result;
use crate::fault::Fault;
use crate::loader::WeightStore;
use crate::ops::{self, interleaved_to_half_split, Rope, RopeLayout};
use crate::tap::{Tap, TapValue, Taps};
use crate::tensor::{matmul_each, QTensor};

pub struct Block {
    attn_norm: Vec<f32>,
    wq: QTensor,
    wk: QTensor,
    wv: QTensor,
    /// Qwen2's projection biases.
    bias: Option<QkvBias>,
    /// Qwen3's per-head norms of q and k (`head_dim` wide each).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    wo: QTensor,
    /// Gemma-2's norms of the attention and FFN outputs, before each residual add.
    post_norms: Option<(Vec<f32>, Vec<f32>)>,
    ffn_norm: Vec<f32>,
    /// Phi-3's: gate and up are the two halves of one stored matrix.
    fused_gate_up: bool,
    w_gate: QTensor,
    w_up: QTensor,
    w_down: QTensor,
}

struct QkvBias {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

pub struct Llama {
    pub config: Config,
    token_embd: QTensor,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    /// The token embedding when the output projection is tied.
    output: QTensor,
    tied: bool,
}

impl Llama {
    pub fn load(config: Config, store: &dyn WeightStore) -> Result<Llama> {
        let (d, q_dim, kv_dim, ffn, vocab) = (config.d_model, config.q_dim(), config.n_kv_heads * config.head_dim, config.ffn_dim, config.vocab_size);
        let hd = config.head_dim;
        let token_embd = store.matrix("token_embd.weight", vocab, d)?;
        let blocks = (0..config.n_layers)
            .map(|l| {
                let w = |name: &str| format!("blk.{l}.{name}.weight");
                let b = |name: &str| format!("blk.{l}.{name}.bias");
                // Biases are Qwen2's, and any Llama file's that has them (HF `attention_bias`).
                let bias = match config.arch == Arch::Qwen2 || store.has(&b("attn_q")) {
                    true => Some(QkvBias {
                        q: store.vector(&b("attn_q"), q_dim)?,
                        k: store.vector(&b("attn_k"), kv_dim)?,
                        v: store.vector(&b("attn_v"), kv_dim)?,
                    }),
                    false => None,
                };
                let qk_norm = match config.arch == Arch::Qwen3 {
                    true => Some((store.vector(&w("attn_q_norm"), hd)?, store.vector(&w("attn_k_norm"), hd)?)),
                    false => None,
                };
                let post_norms = match config.arch == Arch::Gemma2 {
                    true => Some((store.vector(&w("post_attention_norm"), d)?, store.vector(&w("post_ffw_norm"), d)?)),
                    false => None,
                };
                let fused = config.arch == Arch::Phi3;
                let (wq, wk, wv, w_gate, w_up) = match fused {
                    true => {
                        let qkv = store.matrix(&w("attn_qkv"), q_dim + 2 * kv_dim, d)?;
                        let gate_up = store.matrix(&w("ffn_up"), 2 * ffn, d)?;
                        let (gate, up) = (gate_up.row_range(0, ffn)?, gate_up.row_range(ffn, ffn)?);
                        (qkv.row_range(0, q_dim)?, qkv.row_range(q_dim, kv_dim)?, qkv.row_range(q_dim + kv_dim, kv_dim)?, gate, up)
                    }
                    false => (
                        store.matrix(&w("attn_q"), q_dim, d)?,
                        store.matrix(&w("attn_k"), kv_dim, d)?,
                        store.matrix(&w("attn_v"), kv_dim, d)?,
                        store.matrix(&w("ffn_gate"), ffn, d)?,
                        store.matrix(&w("ffn_up"), ffn, d)?,
                    ),
                };
                Ok(Block {
                    attn_norm: store.vector(&w("attn_norm"), d)?,
                    wq,
                    wk,
                    wv,
                    bias,
                    qk_norm,
                    wo: store.matrix(&w("attn_output"), d, q_dim)?,
                    post_norms,
                    ffn_norm: store.vector(&w("ffn_norm"), d)?,
                    fused_gate_up: fused,
                    w_gate,
                    w_up,
                    w_down: store.matrix(&w("ffn_down"), d, ffn)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tied = !store.has("output.weight");
        let output = match tied {
            false => store.matrix("output.weight", vocab, d)?,
            true => token_embd.clone(),
        };
        Ok(Llama { output_norm: store.vector("output_norm.weight", d)?, config, token_embd, blocks, output, tied })
    }

    /// The matrices every token multiplies by (the embedding is only looked up, unless tied).
    pub(crate) fn products(&self) -> Vec<&QTensor> {
        let mut out = vec![&self.output];
        for b in &self.blocks {
            out.extend([&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down]);
        }
        out
    }

    /// Whether the output projection is the token embedding.
    pub fn tied_output(&self) -> bool {
        self.tied
    }

    /// Whether the Q/K/V projections carry biases.
    pub fn qkv_bias(&self) -> bool {
        self.blocks.iter().any(|b| b.bias.is_some())
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
        if self.config.traits.scaled_embedding {
            let scale = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        taps.record(Tap::Embed, None, || TapValue::f32(&[n, d], x.clone()));

        for l in 0..self.blocks.len() {
            self.forward_layer(l, &mut x, cache, taps);
        }
        cache.advance(n);

        let h = norm(&x, &self.output_norm, &self.config, self.config.eps());
        taps.record(Tap::FinalNorm, None, || TapValue::f32(&[n, d], h.clone()));
        let rows = if all_logits { &h[..] } else { &h[(n - 1) * d..] };
        let mut logits = vec![0.0f32; rows.len() / d * self.config.vocab_size];
        self.output.matmul(rows, rows.len() / d, &mut logits);
        if let Some(cap) = self.config.traits.final_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        logits
    }

    /// Layer `l` alone on the rows `x` (positions `cache.len()..`), in place: what [`Llama::forward`]
    /// runs for each layer, storing into the cache without advancing it.
    pub fn forward_layer(&self, l: usize, x: &mut [f32], cache: &mut KvCache, taps: &mut Taps) {
        let rope = self.config.layer_rope(l).unwrap_or_else(|| self.config.rope());
        self.blocks[l].forward(l, x, cache, &self.config, &rope, taps);
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

        let h = norm(x, &self.attn_norm, cfg, cfg.layer_eps(l));
        taps.record(Tap::AttnNorm, layer, || TapValue::f32(&[n, d], h.clone()));

        let [mut q, mut k, mut v] = matmul_each([&self.wq, &self.wk, &self.wv], &h, n);
        let (q_dim, kv_dim) = (q.len() / n, k.len() / n);
        let bias_after_rope = cfg.has_fault(Fault::BiasAfterRope);
        if let Some(b) = &self.bias {
            if !bias_after_rope {
                ops::add_bias(&mut q, &b.q);
                ops::add_bias(&mut k, &b.k);
            }
            ops::add_bias(&mut v, &b.v);
        }
        taps.record(Tap::Q, layer, || TapValue::f32(&[n, q_dim], canonical(&q)));
        taps.record(Tap::K, layer, || TapValue::f32(&[n, kv_dim], canonical(&k)));
        taps.record(Tap::V, layer, || TapValue::f32(&[n, kv_dim], v.clone()));

        let norm_after_rope = cfg.has_fault(Fault::QkNormAfterRope);
        let qk_norm = |q: &mut Vec<f32>, k: &mut Vec<f32>| {
            if let Some((qn, kn)) = &self.qk_norm {
                *q = ops::rms_norm(q, qn, cfg.layer_eps(l));
                *k = ops::rms_norm(k, kn, cfg.layer_eps(l));
            }
        };
        if !norm_after_rope {
            qk_norm(&mut q, &mut k);
        }
        if self.qk_norm.is_some() {
            taps.record(Tap::QNorm, layer, || TapValue::f32(&[n, q_dim], canonical(&q)));
            taps.record(Tap::KNorm, layer, || TapValue::f32(&[n, kv_dim], canonical(&k)));
        }

        // The planted DecodeRopeOffByOne fault: a decoded token is rotated one position on.
        let rope_pos = pos0 + usize::from(cfg.has_fault(Fault::DecodeRopeOffByOne) && n == 1 && pos0 > 0);
        rope.apply(&mut q, n, rope_pos);
        rope.apply(&mut k, n, rope_pos);
        if norm_after_rope {
            qk_norm(&mut q, &mut k);
        }
        if let (Some(b), true) = (&self.bias, bias_after_rope) {
            ops::add_bias(&mut q, &b.q);
            ops::add_bias(&mut k, &b.k);
        }
        taps.record(Tap::QRope, layer, || TapValue::f32(&[n, q_dim], canonical(&q)));
        taps.record(Tap::KRope, layer, || TapValue::f32(&[n, kv_dim], canonical(&k)));

        cache.store(l, &k, &v);
        record_cache(taps, cache, l, pos0 + n, cfg);

        let (attn, probs) = attend(&q, cache, l, pos0, cfg.heads(l), taps.active());
        if let Some(p) = probs {
            taps.record(Tap::AttnProbs, layer, || TapValue::f32(&[cfg.n_heads, n, pos0 + n], p));
        }
        let mut attn_out = matmul(&self.wo, &attn, n);
        taps.record(Tap::AttnOut, layer, || TapValue::f32(&[n, d], attn_out.clone()));
        if let Some((post_attn, _)) = &self.post_norms {
            attn_out = norm(&attn_out, post_attn, cfg, cfg.layer_eps(l));
            taps.record(Tap::PostAttnNorm, layer, || TapValue::f32(&[n, d], attn_out.clone()));
        }
        ops::add_in_place(x, &attn_out);

        let h = norm(x, &self.ffn_norm, cfg, cfg.layer_eps(l));
        taps.record(Tap::FfnNorm, layer, || TapValue::f32(&[n, d], h.clone()));
        let (w_gate, w_up) = match self.fused_gate_up && cfg.has_fault(Fault::GateUpSwapped) {
            true => (&self.w_up, &self.w_gate),
            false => (&self.w_gate, &self.w_up),
        };
        let [mut gate, up] = matmul_each([w_gate, w_up], &h, n);
        ops::map_in_place(&mut gate, gate_activation(cfg));
        ops::mul_in_place(&mut gate, &up);
        let mut ffn_out = matmul(&self.w_down, &gate, n);
        perturb_ffn(&mut ffn_out, cfg, l, pos0);
        taps.record(Tap::FfnOut, layer, || TapValue::f32(&[n, d], ffn_out.clone()));
        if let Some((_, post_ffn)) = &self.post_norms {
            ffn_out = norm(&ffn_out, post_ffn, cfg, cfg.layer_eps(l));
            taps.record(Tap::PostFfnNorm, layer, || TapValue::f32(&[n, d], ffn_out.clone()));
        }
        residual(x, &ffn_out, cfg);
        perturb(x, cfg, l, pos0);
        taps.record(Tap::BlockOut, layer, || TapValue::f32(&[n, d], x.to_vec()));
    }
}

/// RMSNorm by `weight`; with the planted NormWithoutPlusOne fault, a Gemma-2 norm scales by the
/// weight without the 1 its file adds (as code written for HF's stored weights would).
fn norm(x: &[f32], weight: &[f32], cfg: &Config, eps: f32) -> Vec<f32> {
    match cfg.arch == Arch::Gemma2 && cfg.has_fault(Fault::NormWithoutPlusOne) {
        true => ops::rms_norm(x, &weight.iter().map(|w| w - 1.0).collect::<Vec<_>>(), eps),
        false => ops::rms_norm(x, weight, eps),
    }
}

/// The FFN gate's activation: SiLU, or for GeGLU the tanh GELU (the erf one when planted).
fn gate_activation(cfg: &Config) -> fn(f32) -> f32 {
    match (cfg.traits.gelu_gate, cfg.has_fault(Fault::GeluErf)) {
        (false, _) => ops::silu,
        (true, false) => ops::gelu_tanh,
        (true, true) => ops::gelu_erf,
    }
}

//! A Llama forward pass written here with candle's tensor ops, so that every checkpoint inside a
//! block can be copied out. candle-transformers' own Llama computes the same math but returns only
//! the last position's logits, so its intermediates cannot be had; what this module computes is
//! declared `kernels` in the manifest's provenance (candle's kernels: matmul, rms_norm, rope,
//! softmax, silu; model code of ours), never `own`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::collections::BTreeMap;

/// The sizes the forward pass and the dump layouts need (from the HF `config.json`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Sizes {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_theta() -> f32 {
    10_000.0
}

impl Sizes {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

pub struct Net {
    pub sizes: Sizes,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    inv_freq: Tensor,
}

/// Tensors copied out of one forward call, by the catalog's per-layer name (`blk.3.q`).
pub type Taps = BTreeMap<String, Tensor>;

/// Keys and values of every position so far, per layer: `[KV, positions, hd]` each.
pub type Cache = Vec<Option<(Tensor, Tensor)>>;

impl Net {
    pub fn load(vb: &VarBuilder, sizes: Sizes) -> Result<Net> {
        let (d, hd, h, kv) = (sizes.hidden_size, sizes.head_dim(), sizes.num_attention_heads, sizes.kv_heads());
        let inter = sizes.intermediate_size;
        let mut layers = Vec::new();
        for l in 0..sizes.num_hidden_layers {
            let b = vb.pp(format!("model.layers.{l}"));
            layers.push(Layer {
                attn_norm: b.get(d, "input_layernorm.weight")?,
                q: b.get((h * hd, d), "self_attn.q_proj.weight")?,
                k: b.get((kv * hd, d), "self_attn.k_proj.weight")?,
                v: b.get((kv * hd, d), "self_attn.v_proj.weight")?,
                o: b.get((d, h * hd), "self_attn.o_proj.weight")?,
                ffn_norm: b.get(d, "post_attention_layernorm.weight")?,
                gate: b.get((inter, d), "mlp.gate_proj.weight")?,
                up: b.get((inter, d), "mlp.up_proj.weight")?,
                down: b.get((d, inter), "mlp.down_proj.weight")?,
            });
        }
        let embed = vb.get((sizes.vocab_size, d), "model.embed_tokens.weight")?;
        let lm_head = if sizes.tie_word_embeddings { embed.clone() } else { vb.get((sizes.vocab_size, d), "lm_head.weight")? };
        // RoPE's inverse frequencies as candle-transformers' Llama computes them (f32 powf).
        let freqs: Vec<f32> = (0..hd).step_by(2).map(|i| 1f32 / sizes.rope_theta.powf(i as f32 / hd as f32)).collect();
        let inv_freq = Tensor::new(freqs, vb.device())?;
        let norm = vb.get(d, "model.norm.weight")?;
        Ok(Net { sizes, embed, layers, norm, lm_head, inv_freq })
    }

    /// `tokens` at positions `pos..pos + n` through every layer (appending to `cache`); their
    /// logits `[n, V]`. With `taps`, every checkpoint tensor of the call is copied into it.
    pub fn forward(&self, tokens: &[u32], pos: usize, cache: &mut Cache, mut taps: Option<&mut Taps>) -> Result<Tensor> {
        let s = &self.sizes;
        let (n, h, kv, hd) = (tokens.len(), s.num_attention_heads, s.kv_heads(), s.head_dim());
        let eps = s.rms_norm_eps as f32;
        let device = self.embed.device();
        let mut tap = |key: String, t: &Tensor| {
            if let Some(taps) = taps.as_deref_mut() {
                taps.insert(key, t.clone());
            }
        };
        let ids = Tensor::new(tokens, device)?;
        let mut x = self.embed.index_select(&ids, 0)?; // [n, d]
        tap("embed".into(), &x);
        let (cos, sin) = self.rope_angles(pos, n, device)?;
        let total = pos + n;
        let mask = causal_mask(n, pos, device)?; // [n, total]: 0 or -inf
        for (l, w) in self.layers.iter().enumerate() {
            let key = |name: &str| format!("blk.{l}.{name}");
            let a = candle_nn::ops::rms_norm(&x, &w.attn_norm, eps)?;
            tap(key("attn_norm"), &a);
            let q = a.matmul(&w.q.t()?)?;
            let k = a.matmul(&w.k.t()?)?;
            let v = a.matmul(&w.v.t()?)?;
            tap(key("q"), &q);
            tap(key("k"), &k);
            tap(key("v"), &v);
            let heads = |t: &Tensor, count: usize| t.reshape((n, count, hd))?.transpose(0, 1)?.contiguous()?.unsqueeze(0);
            let q_rope = candle_nn::rotary_emb::rope(&heads(&q, h)?, &cos, &sin)?.squeeze(0)?; // [H, n, hd]
            let k_rope = candle_nn::rotary_emb::rope(&heads(&k, kv)?, &cos, &sin)?.squeeze(0)?; // [KV, n, hd]
            let rows = |t: &Tensor| t.transpose(0, 1)?.contiguous()?.reshape((n, ()));
            tap(key("q_rope"), &rows(&q_rope)?);
            tap(key("k_rope"), &rows(&k_rope)?);
            let v_heads = heads(&v, kv)?.squeeze(0)?;
            let (k_all, v_all) = match cache[l].take() {
                Some((ck, cv)) => (Tensor::cat(&[&ck, &k_rope], 1)?, Tensor::cat(&[&cv, &v_heads], 1)?),
                None => (k_rope, v_heads),
            };
            tap(key("k_cache"), &k_all);
            tap(key("v_cache"), &v_all);
            // Each query head reads key/value head h / (H / KV), as HF's repeat_kv.
            let group = h / kv;
            let expand = |t: &Tensor| t.unsqueeze(1)?.expand((kv, group, total, hd))?.reshape((h, total, hd));
            let (k_rep, v_rep) = (expand(&k_all)?, expand(&v_all)?);
            let scores = (q_rope.matmul(&k_rep.t()?)? / (hd as f64).sqrt())?; // [H, n, total]
            let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
            tap(key("attn_probs"), &probs);
            let mixed = probs.matmul(&v_rep)?.transpose(0, 1)?.contiguous()?.reshape((n, h * hd))?;
            let attn_out = mixed.matmul(&w.o.t()?)?;
            tap(key("attn_out"), &attn_out);
            cache[l] = Some((k_all, v_all));
            x = (x + attn_out)?;
            let f = candle_nn::ops::rms_norm(&x, &w.ffn_norm, eps)?;
            tap(key("ffn_norm"), &f);
            let gated = (candle_nn::ops::silu(&f.matmul(&w.gate.t()?)?)? * f.matmul(&w.up.t()?)?)?;
            let ffn_out = gated.matmul(&w.down.t()?)?;
            tap(key("ffn_out"), &ffn_out);
            x = (x + ffn_out)?;
            tap(key("block_out"), &x);
        }
        let normed = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        tap("final_norm".into(), &normed);
        normed.matmul(&self.lm_head.t()?)
    }

    /// cos and sin of position x inverse frequency, `[n, hd/2]` from `pos`, as candle-transformers'
    /// Llama makes them (an f32 outer product).
    fn rope_angles(&self, pos: usize, n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let positions = Tensor::arange(pos as u32, (pos + n) as u32, device)?.to_dtype(DType::F32)?.reshape((n, 1))?;
        let angles = positions.matmul(&self.inv_freq.reshape((1, ()))?)?;
        Ok((angles.cos()?, angles.sin()?))
    }
}

/// `[n, pos + n]`: 0 where query `pos + i` may read key `j` (j <= pos + i), -inf after.
fn causal_mask(n: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let total = pos + n;
    let values: Vec<f32> = (0..n).flat_map(|i| (0..total).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(values, (n, total), device)
}

/// `t` zero-padded along `axis` to `len` (the decode taps' fixed width, `T+N-1`).
pub fn pad_axis(t: &Tensor, axis: usize, len: usize) -> Result<Tensor> {
    let have = t.dim(axis)?;
    if have == len {
        return Ok(t.clone());
    }
    let mut shape = t.dims().to_vec();
    shape[axis] = len - have;
    Tensor::cat(&[t, &Tensor::zeros(shape, t.dtype(), t.device())?], axis)
}

/// The index of the largest value of a `[V]` tensor, the first on ties.
pub fn argmax(t: &Tensor) -> Result<u32> {
    let values = t.to_vec1::<f32>()?;
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

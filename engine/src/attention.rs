//! Causal grouped-query attention over a KV cache.
//!
//! The cache keeps, per layer, keys (after RoPE) and values in the canonical checkpoint layout
//! `[n_kv_heads, capacity, head_dim]`, so the `k_cache`/`v_cache` taps are a plain prefix copy.

/// Keys and values of one layer.
#[derive(Clone, Debug)]
pub struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The KV cache of a whole model for one sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    /// Positions filled so far (the same for every layer once a forward pass completes).
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> KvCache {
        let size = n_kv_heads * capacity * head_dim;
        let layer = LayerCache { k: vec![0.0; size], v: vec![0.0; size] };
        KvCache { layers: vec![layer; n_layers], n_kv_heads, head_dim, capacity, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by the cache (both tensors, every layer).
    pub fn bytes(&self) -> usize {
        self.layers.len() * 2 * self.n_kv_heads * self.capacity * self.head_dim * 4
    }

    /// Marks `n` more positions as filled; called once per forward pass after every layer stored them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Writes `n` new tokens' keys and values (`[n, n_kv*hd]`, token-major) at positions `len..len+n`.
    pub(crate) fn store(&mut self, layer: usize, k_new: &[f32], v_new: &[f32]) {
        let (hd, cap, pos0) = (self.head_dim, self.capacity, self.len);
        let row = self.n_kv_heads * hd;
        let cache = &mut self.layers[layer];
        for (t, (k_row, v_row)) in k_new.chunks_exact(row).zip(v_new.chunks_exact(row)).enumerate() {
            for h in 0..self.n_kv_heads {
                let dst = (h * cap + pos0 + t) * hd;
                cache.k[dst..dst + hd].copy_from_slice(&k_row[h * hd..(h + 1) * hd]);
                cache.v[dst..dst + hd].copy_from_slice(&v_row[h * hd..(h + 1) * hd]);
            }
        }
    }

    /// The first `n` positions of a layer's keys or values as `[n_kv, n, hd]` (for the taps).
    pub(crate) fn prefix(&self, layer: usize, n: usize, values: bool) -> Vec<f32> {
        let cache = &self.layers[layer];
        let src = if values { &cache.v } else { &cache.k };
        let hd = self.head_dim;
        (0..self.n_kv_heads).flat_map(|h| src[h * self.capacity * hd..(h * self.capacity + n) * hd].iter().copied()).collect()
    }
}

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores before the softmax: 1/sqrt(head_dim) unless the family says otherwise.
    pub scale: f32,
    /// Scaled scores become `cap * tanh(score / cap)` (Gemma-2).
    pub softcap: Option<f32>,
    /// A query sees only the last `window` positions, its own included (Gemma-2's local layers).
    pub window: Option<usize>,
    pub faults: AttnFaults,
}

/// Bugs planted inside attention (fault::Fault, `fault-injection` feature); all off otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnFaults {
    /// SoftmaxOff: probabilities divided by 1.001 times their sum.
    pub softmax_off: bool,
    /// DecodeAttendsOneFewer: a one-token step after the prompt skips the oldest cached position.
    pub decode_skips_oldest: bool,
    /// SoftcapBeforeScale: the soft-cap applied to the raw dot products, the scale after it.
    pub softcap_before_scale: bool,
}

/// Attention of `n_new` queries (`q`: `[n_new, n_heads*hd]`, already rotated) at positions
/// `pos0..pos0+n_new` against the cache's first `pos0 + n_new` positions of `layer`, which must
/// already hold these tokens' keys and values. Query head h reads KV head `h / (n_heads/n_kv)`.
///
/// Returns `[n_new, n_heads*hd]` and, when `want_probs`, the probabilities `[n_heads, n_new, pos0+n_new]`
/// with the masked entries (causal, outside the window) exactly 0.
pub fn attend(q: &[f32], cache: &KvCache, layer: usize, pos0: usize, heads: Heads, want_probs: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let Heads { n_heads, n_kv_heads, head_dim: hd, scale, softcap, window, faults } = heads;
    let score = move |dot: f32| match (softcap, faults.softcap_before_scale) {
        (None, _) => dot * scale,
        (Some(cap), false) => cap * (dot * scale / cap).tanh(),
        (Some(cap), true) => cap * (dot / cap).tanh() * scale,
    };
    let n_new = q.len() / (n_heads * hd);
    // One new token after cached ones is a decode step; a prefill starts at position 0.
    let skip_oldest = faults.decode_skips_oldest && n_new == 1 && pos0 > 0;
    let n_ctx = pos0 + n_new;
    let group = n_heads / n_kv_heads;
    let lc = &cache.layers[layer];

    // One task per query head, on the engine's pool: its outputs [n_new, hd], then its
    // probabilities [n_new, n_ctx], in its own part of one buffer.
    let per_head = n_new * (hd + n_ctx);
    if per_head == 0 {
        return (Vec::new(), want_probs.then(Vec::new));
    }
    let mut heads_out = vec![0.0f32; n_heads * per_head];
    crate::pool::for_each_chunk_mut(&mut heads_out, per_head, &|h, part| {
        let kv = h / group;
        let keys = &lc.k[kv * cache.capacity * hd..];
        let vals = &lc.v[kv * cache.capacity * hd..];
        let (out, probs) = part.split_at_mut(n_new * hd);
        for t in 0..n_new {
            let qh = &q[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd];
            let visible = pos0 + t + 1;
            let first = window.map_or(0, |w| visible.saturating_sub(w)) + usize::from(skip_oldest);
            let p = &mut probs[t * n_ctx + first..t * n_ctx + visible];
            for (j, s) in (first..).zip(p.iter_mut()) {
                let kj = &keys[j * hd..(j + 1) * hd];
                *s = score(crate::kernels::dot_f32(qh, kj));
            }
            crate::ops::softmax_in_place(p);
            if faults.softmax_off {
                p.iter_mut().for_each(|w| *w /= 1.001);
            }
            let o = &mut out[t * hd..(t + 1) * hd];
            for (j, &w) in (first..).zip(p.iter()) {
                for (o, v) in o.iter_mut().zip(&vals[j * hd..(j + 1) * hd]) {
                    *o += w * v;
                }
            }
        }
    });

    let mut out = vec![0.0f32; n_new * n_heads * hd];
    for (h, part) in heads_out.chunks_exact(per_head).enumerate() {
        for t in 0..n_new {
            out[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd].copy_from_slice(&part[t * hd..(t + 1) * hd]);
        }
    }
    let probs = want_probs.then(|| heads_out.chunks_exact(per_head).flat_map(|part| &part[n_new * hd..]).copied().collect());
    (out, probs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gqa_attention_matches_hand_computation() {
        // Two query heads share one KV head (hd = 2), two tokens.
        // keys k0 = [1, 0], k1 = [0, 1]; values v0 = [1, 2], v1 = [3, 4]; scale 1/sqrt(2).
        // token 0 sees only itself: output v0 for both heads, probs [1, 0].
        // token 1, head 0, q = [0, 2]: scores [0, 2/sqrt2 = 1.414214] -> softmax [0.195570, 0.804430]
        //   -> output 0.195570*v0 + 0.804430*v1 = [2.608860, 3.608860].
        // token 1, head 1, q = [1, 1]: scores equal -> [0.5, 0.5] -> output [2, 3].
        let heads =
            Heads { n_heads: 2, n_kv_heads: 1, head_dim: 2, scale: 1.0 / 2f32.sqrt(), softcap: None, window: None, faults: AttnFaults::default() };
        let mut cache = KvCache::new(1, 1, 2, 4);
        cache.store(0, &[1.0, 0.0, 0.0, 1.0], &[1.0, 2.0, 3.0, 4.0]);
        let q = [9.0, 9.0, -5.0, 3.0, 0.0, 2.0, 1.0, 1.0];
        let (out, probs) = attend(&q, &cache, 0, 0, heads, true);
        let want = [1.0, 2.0, 1.0, 2.0, 2.60886, 3.60886, 2.0, 3.0];
        for (g, w) in out.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{out:?}");
        }
        let p = probs.unwrap();
        let want_p = [1.0, 0.0, 0.195570, 0.804430, 1.0, 0.0, 0.5, 0.5];
        for (g, w) in p.iter().zip(want_p) {
            assert!((g - w).abs() < 1e-5, "{p:?}");
        }
        assert_eq!(p[1], 0.0, "masked entries are exactly zero");
    }

    #[test]
    fn decoding_one_token_sees_the_cached_prefix() {
        // The same two tokens, but token 1 attends alone at pos0 = 1 after token 0 was cached.
        let heads =
            Heads { n_heads: 2, n_kv_heads: 1, head_dim: 2, scale: 1.0 / 2f32.sqrt(), softcap: None, window: None, faults: AttnFaults::default() };
        let mut cache = KvCache::new(1, 1, 2, 4);
        cache.store(0, &[1.0, 0.0], &[1.0, 2.0]);
        cache.advance(1);
        cache.store(0, &[0.0, 1.0], &[3.0, 4.0]);
        let (out, _) = attend(&[0.0, 2.0, 1.0, 1.0], &cache, 0, 1, heads, false);
        assert!((out[0] - 2.60886).abs() < 1e-5 && (out[3] - 3.0).abs() < 1e-5, "{out:?}");
        assert_eq!(cache.prefix(0, 2, true), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn planted_attention_faults_do_what_they_say() {
        // As above: token 1 (q = [0, 2] and [1, 1]) decoded after token 0. Skipping the oldest
        // position leaves token 1 alone: both heads output v1 = [3, 4].
        let mut heads =
            Heads { n_heads: 2, n_kv_heads: 1, head_dim: 2, scale: 1.0 / 2f32.sqrt(), softcap: None, window: None, faults: AttnFaults::default() };
        let mut cache = KvCache::new(1, 1, 2, 4);
        cache.store(0, &[1.0, 0.0], &[1.0, 2.0]);
        cache.advance(1);
        cache.store(0, &[0.0, 1.0], &[3.0, 4.0]);
        heads.faults.decode_skips_oldest = true;
        let (out, probs) = attend(&[0.0, 2.0, 1.0, 1.0], &cache, 0, 1, heads, true);
        assert_eq!(out, vec![3.0, 4.0, 3.0, 4.0]);
        assert_eq!(probs.unwrap(), vec![0.0, 1.0, 0.0, 1.0]);
        // A prefill of both tokens is untouched by it: token 1, head 1 still weighs both [0.5, 0.5].
        let (_, probs) = attend(&[9.0, 9.0, -5.0, 3.0, 0.0, 2.0, 1.0, 1.0], &cache, 0, 0, heads, true);
        assert_eq!(probs.unwrap()[6..8], [0.5, 0.5]);
        // Softmax off by 0.1%: each row adds up to 1/1.001.
        heads.faults = AttnFaults { softmax_off: true, ..AttnFaults::default() };
        let (_, probs) = attend(&[9.0, 9.0, -5.0, 3.0, 0.0, 2.0, 1.0, 1.0], &cache, 0, 0, heads, true);
        let p = probs.unwrap();
        for row in p.chunks_exact(2) {
            assert!((row[0] + row[1] - 1.0 / 1.001).abs() < 1e-7, "{p:?}");
        }
        assert!((p[2] - 0.195570 / 1.001).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn a_window_hides_positions_before_it_and_a_softcap_bends_scaled_scores() {
        // One head, hd 2, three cached tokens: k0 = [1, 0], k1 = [0, 1], k2 = [1, 1]; values
        // v0 = [1, 0], v1 = [0, 1], v2 = [1, 1]. Token 2 with q = [0, 0] scores every key 0; a
        // window of 2 leaves it positions 1 and 2 at 1/2 each: output (v1 + v2) / 2 = [0.5, 1].
        let mut heads = Heads { n_heads: 1, n_kv_heads: 1, head_dim: 2, scale: 0.5, softcap: None, window: Some(2), faults: AttnFaults::default() };
        let mut cache = KvCache::new(1, 1, 2, 4);
        cache.store(0, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let (out, probs) = attend(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], &cache, 0, 0, heads, true);
        assert_eq!(probs.unwrap()[6..9], [0.0, 0.5, 0.5], "position 0 is outside token 2's window");
        assert_eq!(out[4..6], [0.5, 1.0]);
        // Token 1, q = [2, 0]: dots [2, 0], scaled [1, 0]. Capped at 1 after the scale:
        // [tanh 1, 0] -> softmax [0.681700, 0.318300]; uncapped softmax [0.731059, 0.268941];
        // capped before the scale (the planted bug): [0.5 tanh 2, 0] -> [0.618223, 0.381777].
        let q = [9.0, 9.0, 2.0, 0.0];
        let row = |heads: Heads| attend(&q, &cache, 0, 0, heads, true).1.unwrap()[2..4].to_vec();
        heads.window = None;
        assert!((row(heads)[0] - 0.731059).abs() < 1e-6);
        heads.softcap = Some(1.0);
        assert!((row(heads)[0] - 0.681700).abs() < 1e-6, "{:?}", row(heads));
        heads.faults.softcap_before_scale = true;
        assert!((row(heads)[0] - 0.618223).abs() < 1e-6, "{:?}", row(heads));
    }
}

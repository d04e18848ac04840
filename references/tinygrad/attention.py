"""Causal multi-head attention over a KV cache, on tinygrad Tensors, exposing its probabilities.

tinygrad's own Llama block calls `scaled_dot_product_attention`, which never materialises the
probabilities, and keeps its KV cache in float16; this one keeps everything in float32 so the
`attn_probs`, `k_cache` and `v_cache` checkpoints can be read.
"""

import math

import numpy as np
from tinygrad import Tensor, dtypes


class KVCache:
    """Per-layer keys and values of every position seen so far, each [KV, S, hd], float32."""

    def __init__(self, n_layers):
        self.k = [None] * n_layers
        self.v = [None] * n_layers

    def append(self, layer, k, v):
        """Adds [KV, T, hd] keys/values after the cached ones and returns the whole [KV, S, hd] pair."""
        if self.k[layer] is not None:
            k = self.k[layer].cat(k, dim=1)
            v = self.v[layer].cat(v, dim=1)
        self.k[layer], self.v[layer] = k.contiguous(), v.contiguous()
        return self.k[layer], self.v[layer]

    def length(self):
        return 0 if self.k[0] is None else self.k[0].shape[1]

    def realize(self):
        Tensor.realize(*[t for t in self.k + self.v if t is not None])


def causal_attention(q, k, v, start):
    """q [H, T, hd] at positions start..start+T-1; k, v [KV, S, hd] with S = start + T.

    Query head h reads key/value head h // (H / KV) (grouped-query attention). Returns the context
    [T, H*hd] and the probabilities [H, T, S], whose masked (future) entries are exactly 0.
    """
    n_heads, t, hd = q.shape
    n_kv, s, _ = k.shape
    group = n_heads // n_kv
    qg = q.reshape(n_kv, group, t, hd)
    scores = (qg @ k.unsqueeze(1).transpose(-1, -2)) * (1.0 / math.sqrt(hd))  # [KV, G, T, S]
    if t > 1:
        # position start+i may read keys 0..start+i
        allowed = np.arange(s)[None, :] <= (start + np.arange(t))[:, None]
        mask = Tensor(np.where(allowed, 0.0, -np.inf).astype(np.float32))
        scores = scores + mask
    probs = scores.softmax(-1)
    ctx = probs @ v.unsqueeze(1)  # [KV, G, T, hd]
    ctx = ctx.reshape(n_heads, t, hd).transpose(0, 1).reshape(t, n_heads * hd)
    return ctx, probs.reshape(n_heads, t, s)


def as_f32(t):
    return t if t.dtype == dtypes.float32 else t.float()

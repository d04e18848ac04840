"""Causal multi-head attention over a fixed-capacity KV cache, on tinygrad Tensors, exposing its probabilities.

tinygrad's own Llama block calls `scaled_dot_product_attention`, which never materialises the
probabilities, and keeps its KV cache in float16; this one keeps everything in float32 so the
`attn_probs`, `k_cache` and `v_cache` checkpoints can be read.

Every decode step has the same tensor shapes: the cache holds `capacity` positions from the start,
and where a step writes and what it may read are data (a one-hot row, an additive mask), never a
shape or an offset. tinygrad compiles one kernel per distinct shape and view, so a growing cache
would recompile every kernel of every layer at every generated token; with fixed shapes the models
capture one decode step with TinyJit and replay it (SmolLM2: minutes per dump otherwise).
Unwritten cache rows are zero and masked with -inf, so their probabilities are exactly 0 and the
result equals attention over the written rows alone.
"""

import math

import numpy as np
from tinygrad import Tensor, dtypes


class KVCache:
    """Per-layer keys and values, each [KV, capacity, hd] float32; positions 0..length-1 are written."""

    def __init__(self, n_layers, n_kv, head_dim, capacity):
        self.capacity = capacity
        self.k = [Tensor.zeros(n_kv, capacity, head_dim).contiguous() for _ in range(n_layers)]
        self.v = [Tensor.zeros(n_kv, capacity, head_dim).contiguous() for _ in range(n_layers)]
        self.pos = 0
        self.realize()

    def length(self):
        return self.pos

    def step(self, t):
        """The data a forward over the next `t` positions needs: the additive causal mask [t, C], and
        for one token the one-hot row [1, C, 1] that says where its keys and values go (else None)."""
        start, c = self.pos, self.capacity
        if start + t > c:
            raise ValueError(f"{start + t} positions exceed the KV cache capacity of {c}")
        if t > 1 and start != 0:
            raise ValueError("a multi-token forward is only supported as the first call (the prompt)")
        # position start+i may read keys 0..start+i
        allowed = np.arange(c)[None, :] <= (start + np.arange(t))[:, None]
        mask = Tensor(np.where(allowed, 0.0, -np.inf).astype(np.float32))
        row = Tensor(np.arange(c)[None, :, None] == start) if t == 1 else None
        return mask, row

    def window_mask(self, t, window):
        """The additive mask [t, C] of a sliding window over the next `t` positions: position i
        reads keys j with i - window < j <= i (Gemma-2's window as transformers and llama.cpp draw it)."""
        pos = self.pos + np.arange(t)[:, None]
        keys = np.arange(self.capacity)[None, :]
        return Tensor(np.where((keys <= pos) & (keys > pos - window), 0.0, -np.inf).astype(np.float32))

    def write(self, layer, k, v, row):
        """Stores [KV, T, hd] keys/values; returns the whole [KV, C, hd] pair. The prompt (`row` None)
        fills positions 0..T-1 of the empty cache; one token goes to the position `row` marks, in
        place, so a TinyJit-captured decode step keeps writing the same buffers."""
        if row is None:
            pad = ((0, 0), (0, self.capacity - k.shape[1]), (0, 0))
            self.k[layer], self.v[layer] = k.pad(pad).contiguous(), v.pad(pad).contiguous()
        else:
            self.k[layer].assign(row.where(k, self.k[layer]))
            self.v[layer].assign(row.where(v, self.v[layer]))
        return self.k[layer], self.v[layer]

    def realize(self):
        Tensor.realize(*self.k, *self.v)


def causal_attention(q, k, v, mask, softcap=None):
    """q [H, T, hd]; k, v [KV, C, hd], the whole cache; mask [T, C] from `KVCache.step` (or its
    `window_mask`). With `softcap`, the scaled scores become softcap * tanh(scores / softcap) before
    the mask (Gemma-2's attention logit soft-capping).

    Query head h reads key/value head h // (H / KV) (grouped-query attention). Returns the context
    [T, H*hd] and the probabilities [H, T, C], whose masked (future or unwritten) entries are exactly 0.
    """
    n_heads, t, hd = q.shape
    n_kv, c, _ = k.shape
    group = n_heads // n_kv
    qg = q.reshape(n_kv, group, t, hd)
    scores = (qg @ k.unsqueeze(1).transpose(-1, -2)) * (1.0 / math.sqrt(hd))  # [KV, G, T, C]
    if softcap is not None:
        scores = (scores / softcap).tanh() * softcap
    probs = (scores + mask).softmax(-1)
    ctx = probs @ v.unsqueeze(1)  # [KV, G, T, hd]
    ctx = ctx.reshape(n_heads, t, hd).transpose(0, 1).reshape(t, n_heads * hd)
    return ctx, probs.reshape(n_heads, t, c)


def as_f32(t):
    return t if t.dtype == dtypes.float32 else t.float()

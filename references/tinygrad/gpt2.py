"""GPT-2 as our own forward pass on tinygrad Tensors (tinygrad's llm package has no GPT-2 model).

Weights come from `tinygrad.llm.gguf.gguf_load` (GGUF stores every matrix [out, in]): token_embd
(tied with the output), learned position_embd, per block a fused attn_qkv with bias, attn_output,
LayerNorms with bias, ffn_up/ffn_down with bias and GELU (tanh form); output_norm at the end.
"""

import math

from attention import KVCache, as_f32, causal_attention
from tinygrad import Tensor, TinyJit, dtypes
from tinygrad.llm.gguf import gguf_load


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdim=True)
    return centred * (var + eps).rsqrt() * weight + bias


def gelu_tanh(x):
    return 0.5 * x * (1.0 + (math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)).tanh())


class Gpt2:
    def __init__(self, path):
        self.kv, sd = gguf_load(path)
        self.w = {name: as_f32(t).contiguous() for name, t in sd.items()}
        Tensor.realize(*self.w.values())
        kv = self.kv
        self.n_layers = kv["gpt2.block_count"]
        self.n_heads = kv["gpt2.attention.head_count"]
        self.d = kv["gpt2.embedding_length"]
        self.hd = self.d // self.n_heads
        self.eps = kv["gpt2.attention.layer_norm_epsilon"]
        self.context = kv["gpt2.context_length"]
        self.out_w = self.w.get("output.weight", self.w["token_embd.weight"])
        self.cache = None

    def reset_cache(self, capacity):
        """An empty KV cache for `capacity` positions (prompt + generated tokens)."""
        self.cache = KVCache(self.n_layers, self.n_heads, self.hd, capacity)
        self._decode = TinyJit(lambda *inputs: self._forward(*inputs).realize())

    def _linear(self, x, name):
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _norm(self, x, name):
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def forward(self, ids, tap=None):
        """Runs tokens `ids` after the cached ones; returns logits [T, V]. `tap(name, tensor)` sees
        the checkpoints (lazy tensors), the cache and attention over the `start + len(ids)` positions
        written so far. A single token without taps is a TinyJit-replayed decode step."""
        start, t = self.cache.length(), len(ids)
        if start + t > self.context:
            raise ValueError(f"{start + t} positions exceed the model's context of {self.context}")
        mask, row = self.cache.step(t)
        # positions as data, not a slice offset, so every decode step is the same computation
        inputs = (Tensor(ids, dtype=dtypes.int32), Tensor(list(range(start, start + t)), dtype=dtypes.int32), mask, row)
        logits = self._decode(*inputs) if row is not None and tap is None else self._forward(*inputs, tap=tap, n_ctx=start + t)
        self.cache.pos = start + t
        return logits

    def _forward(self, tokens, positions, mask, row, tap=None, n_ctx=None):
        tap = tap or (lambda name, t: None)
        t = tokens.shape[0]
        x = self.w["token_embd.weight"][tokens] + self.w["position_embd.weight"][positions]
        tap("embed", x)
        for i in range(self.n_layers):
            p = f"blk.{i}"
            xn = self._norm(x, f"{p}.attn_norm")
            qkv = self._linear(xn, f"{p}.attn_qkv")
            q, k, v = qkv[:, : self.d], qkv[:, self.d : 2 * self.d], qkv[:, 2 * self.d :]
            heads = lambda m: m.reshape(t, self.n_heads, self.hd).transpose(0, 1)  # noqa: E731
            k_all, v_all = self.cache.write(i, heads(k), heads(v), row)
            ctx, probs = causal_attention(heads(q), k_all, v_all, mask)
            attn_out = self._linear(ctx, f"{p}.attn_output")
            h = x + attn_out
            fn = self._norm(h, f"{p}.ffn_norm")
            ffn_out = self._linear(gelu_tanh(self._linear(fn, f"{p}.ffn_up")), f"{p}.ffn_down")
            x = h + ffn_out
            for name, val in (
                ("attn_norm", xn),
                ("q", q),
                ("k", k),
                ("v", v),
                ("k_cache", k_all[:, :n_ctx]),
                ("v_cache", v_all[:, :n_ctx]),
                ("attn_probs", probs[:, :, :n_ctx]),
                ("attn_out", attn_out),
                ("ffn_norm", fn),
                ("ffn_out", ffn_out),
                ("block_out", x),
            ):
                tap(f"{p}.{name}", val)
        final = self._norm(x, "output_norm")
        tap("final_norm", final)
        return final @ self.out_w.T

"""Llama through mlx-lm's own model (`mlx_lm.models.llama.Model`) on MLX's CPU device, watched.

From MLX and mlx-lm: GGUF reading (`mx.load`, which keeps Q4_0/Q4_1/Q8_0 as MLX's own 32-wide
affine quantization), the quantized and dense products, the token embedding (quantized or not),
every RMSNorm (`mx.fast.rms_norm`), RoPE (`mx.fast.rope`), the KV cache (`KVCache`), the fused
attention (`mx.fast.scaled_dot_product_attention`), SwiGLU, the block wiring, the output head.

Ours: the weights' names mapped from GGUF to mlx-lm's, the Q/K rows put back from llama.cpp's
interleaved RoPE order into the half-split order mlx-lm's RoPE expects (a row permutation, no
arithmetic), and the attention probabilities: MLX's fused attention never materialises them, so
`attn_probs` is softmax(q k^T / sqrt(hd)) over the causal positions computed here with MLX ops from
mlx-lm's own rotated queries and cached keys.

The model runs unchanged; each tap is its module's output, seen by swapping the module's class for
a subclass whose `__call__` records the result (every attribute, `as_linear` included, is kept).
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import llama as mlx_llama
from mlx_lm.models.cache import KVCache

# Metadata keys that change the computation in ways this mapping does not carry over.
UNSUPPORTED = ("llama.rope.scaling.type", "llama.rope.scaling.factor", "llama.expert_count")


def _meta(meta, key, default=None):
    value = meta.get(key, default)
    if isinstance(value, mx.array):
        return value.item() if value.size == 1 else value.tolist()
    return value


def _unpermute(w, n_head):
    """llama.cpp's converter interleaves each head's Q/K rows for its RoPE; mlx-lm rotates the
    half-split (HF) order. Rows only: a quantized matrix's scales and biases follow their rows."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_weights(gguf, n_head, n_kv):
    """The GGUF tensors under mlx-lm's names, Q/K rows in the half-split order, dense weights and
    quantization scales widened to float32 (exact)."""
    names = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
    }
    per_block = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    out = {}
    for key, value in gguf.items():
        stem, part = key.rsplit(".", 1)
        if stem.startswith("blk."):
            _, layer, name = stem.split(".", 2)
            if name not in per_block:
                raise ValueError(f"GGUF tensor {key} has no place in mlx-lm's Llama")
            target = f"model.layers.{layer}.{per_block[name]}"
            if name == "attn_q":
                value = _unpermute(value, n_head)
            elif name == "attn_k":
                value = _unpermute(value, n_kv)
        elif stem in names:
            target = names[stem]
        else:
            raise ValueError(f"GGUF tensor {key} has no place in mlx-lm's Llama")
        if value.dtype in (mx.float16, mx.bfloat16):
            value = value.astype(mx.float32)
        out[f"{target}.{part}"] = value
    return out


def _quantization(weights):
    """MLX's (group size, bits) for each quantized matrix, from its packed width and scales."""
    found = {}
    for key, scales in weights.items():
        if key.endswith(".scales"):
            prefix = key.removesuffix(".scales")
            packed = weights[f"{prefix}.weight"]
            columns = scales.shape[-1] * 32  # GGUF's quantized blocks are 32 wide
            found[prefix] = (32, packed.shape[-1] * 32 // columns)
    return found


class Llama:
    def __init__(self, path):
        gguf, meta = mx.load(path, return_metadata=True)
        for key in UNSUPPORTED:
            if key in meta:
                raise ValueError(f"{key} is set: this mapping onto mlx-lm does not carry it over")
        n_head = _meta(meta, "llama.attention.head_count")
        n_kv = _meta(meta, "llama.attention.head_count_kv", n_head)
        d = _meta(meta, "llama.embedding_length")
        vocab = gguf["token_embd.weight"].shape[0]
        self.args = mlx_llama.ModelArgs(
            model_type="llama",
            hidden_size=d,
            num_hidden_layers=_meta(meta, "llama.block_count"),
            intermediate_size=_meta(meta, "llama.feed_forward_length"),
            num_attention_heads=n_head,
            num_key_value_heads=n_kv,
            rms_norm_eps=_meta(meta, "llama.attention.layer_norm_rms_epsilon"),
            vocab_size=vocab,
            rope_theta=_meta(meta, "llama.rope.freq_base", 10000.0),
            max_position_embeddings=_meta(meta, "llama.context_length"),
            tie_word_embeddings="output.weight" not in gguf,
        )
        self.context = self.args.max_position_embeddings
        self.n_layers, self.n_heads, self.n_kv, self.hd = self.args.num_hidden_layers, n_head, n_kv, d // n_head
        weights = _hf_weights(gguf, n_head, n_kv)
        quantized = _quantization(weights)
        self.model = mlx_llama.Model(self.args)
        nn.quantize(
            self.model,
            class_predicate=lambda path, _: path in quantized and {"group_size": quantized[path][0], "bits": quantized[path][1], "mode": "affine"},
        )
        self.model.load_weights(list(weights.items()), strict=True)
        mx.eval(self.model.parameters())
        self._watch()
        self.cache = None
        self.taps = None

    def _watch(self):
        """Each checkpoint's module reports its output to `self.taps` (when set)."""
        inner = self.model.model
        _record(inner.embed_tokens, self, lambda out: {"embed": out[0]})
        _record(inner.norm, self, lambda out: {"final_norm": out[0]})
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            _record(layer.input_layernorm, self, lambda out, i=i: {f"blk.{i}.attn_norm": out[0]})
            _record(attn.q_proj, self, lambda out, i=i: {f"blk.{i}.q": out[0]})
            _record(attn.k_proj, self, lambda out, i=i: {f"blk.{i}.k": out[0]})
            _record(attn.v_proj, self, lambda out, i=i: {f"blk.{i}.v": out[0]})
            _record(attn.rope, self, _RopeTaps(i))
            _record(attn.o_proj, self, lambda out, i=i: {f"blk.{i}.attn_out": out[0]})
            _record(layer.post_attention_layernorm, self, lambda out, i=i: {f"blk.{i}.ffn_norm": out[0]})
            _record(layer.mlp, self, lambda out, i=i: {f"blk.{i}.ffn_out": out[0]})
            _record(layer, self, lambda out, i=i: {f"blk.{i}.block_out": out[0]})

    def reset_cache(self):
        self.cache = [KVCache() for _ in range(self.n_layers)]

    def forward(self, ids, tap=None):
        """Runs tokens `ids` after the cached ones through mlx-lm's model; returns logits [T, V].
        With `tap`, it gets every checkpoint as a numpy array, the caches and attention over all
        positions written so far."""
        start = self.cache[0].offset
        self.taps = {} if tap else None
        logits = self.model(mx.array([ids], dtype=mx.int32), cache=self.cache)[0]
        mx.eval(logits)
        if tap:
            n_ctx = start + len(ids)
            for i, c in enumerate(self.cache):
                k, v = c.keys[0, :, :n_ctx, :], c.values[0, :, :n_ctx, :]
                self.taps[f"blk.{i}.k_cache"] = k
                self.taps[f"blk.{i}.v_cache"] = v
                self.taps[f"blk.{i}.attn_probs"] = self._probs(self.taps.pop(f"blk.{i}.q_rope_heads"), k, start)
            mx.eval(list(self.taps.values()))
            for name, value in self.taps.items():
                tap(name, np.array(value, copy=True))
        self.taps = None
        return np.array(logits, copy=True)

    def _probs(self, q, k, start):
        """Ours, on MLX ops: softmax(q k^T / sqrt(hd)) over the positions each query may see. q is
        [H, T, hd] (mlx-lm's rotated queries), k [KV, start+T, hd] (its cache); query head h reads
        key head h // (H / KV), as mlx-lm's attention does."""
        group = self.n_heads // self.n_kv
        keys = mx.repeat(k, group, axis=0)
        scores = (q @ keys.swapaxes(-1, -2)) * (self.hd**-0.5)
        t, n = q.shape[1], k.shape[1]
        visible = mx.arange(n)[None, :] <= (start + mx.arange(t))[:, None]
        return mx.softmax(mx.where(visible, scores, -mx.inf), axis=-1)


class _RopeTaps:
    """mlx-lm's attention calls its RoPE twice per step: queries first, then keys ([1, H, T, hd])."""

    def __init__(self, layer):
        self.layer, self.calls = layer, 0

    def __call__(self, out):
        which = "q" if self.calls % 2 == 0 else "k"
        self.calls += 1
        heads = out[0]
        flat = heads.transpose(1, 0, 2).reshape(heads.shape[1], -1)
        taps = {f"blk.{self.layer}.{which}_rope": flat}
        if which == "q":
            taps[f"blk.{self.layer}.q_rope_heads"] = heads
        return taps


def _record(module, owner, taps_of):
    """Swaps `module`'s class for a subclass that hands its output to `taps_of` while `owner.taps`
    is a dict; the module computes exactly as before."""
    base = type(module)

    def __call__(self, *args, **kwargs):
        out = base.__call__(self, *args, **kwargs)
        if owner.taps is not None:
            owner.taps.update(taps_of(out))
        return out

    module.__class__ = type(f"Watched{base.__name__}", (base,), {"__call__": __call__})

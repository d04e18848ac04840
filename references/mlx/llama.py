"""Llama through mlx-lm's own model (`mlx_lm.models.llama.Model`) on MLX's CPU device, watched.

From MLX and mlx-lm: GGUF reading (`mx.load`, which keeps Q4_0/Q4_1/Q8_0 as MLX's own 32-wide
affine quantization), the quantized and dense products, the token embedding (quantized or not),
every RMSNorm (`mx.fast.rms_norm`), RoPE (`mx.fast.rope`), the KV cache (`KVCache`), the fused
attention (`mx.fast.scaled_dot_product_attention`), SwiGLU, the block wiring, the output head.

Ours: the weights' names mapped from GGUF to mlx-lm's, the Q/K rows put back from llama.cpp's
interleaved RoPE order into the half-split order mlx-lm's RoPE expects (a row permutation, no
arithmetic), and the attention probabilities (watch.py).
"""

import mlx.core as mx
from mlx_lm.models import llama as mlx_llama
from watch import Watched, load_into, meta_value, mlx_names, rows

# Metadata keys that change the computation in ways this mapping does not carry over.
UNSUPPORTED = ("llama.rope.scaling.type", "llama.rope.scaling.factor", "llama.expert_count")
PER_BLOCK = {
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
GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _unpermute(w, n_head):
    """llama.cpp's converter interleaves each head's Q/K rows for its RoPE; mlx-lm rotates the
    half-split (HF) order. Rows only: a quantized matrix's scales and biases follow their rows."""
    n = w.shape[0]
    return w.reshape(n_head, n // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _mlx_names(gguf, n_head, n_kv):
    """The GGUF tensors under mlx-lm's names, Q/K rows in the half-split order."""
    out = mlx_names(gguf, "Llama", "model.layers", PER_BLOCK, GLOBAL)
    for key, value in out.items():
        if ".self_attn.q_proj." in key or ".self_attn.k_proj." in key:
            out[key] = _unpermute(value, n_head if ".q_proj." in key else n_kv)
    return out


class Llama(Watched):
    def __init__(self, path):
        gguf, meta = mx.load(path, return_metadata=True)
        for key in UNSUPPORTED:
            if key in meta:
                raise ValueError(f"{key} is set: this mapping onto mlx-lm does not carry it over")
        n_head = meta_value(meta, "llama.attention.head_count")
        n_kv = meta_value(meta, "llama.attention.head_count_kv", n_head)
        d = meta_value(meta, "llama.embedding_length")
        self.args = mlx_llama.ModelArgs(
            model_type="llama",
            hidden_size=d,
            num_hidden_layers=meta_value(meta, "llama.block_count"),
            intermediate_size=meta_value(meta, "llama.feed_forward_length"),
            num_attention_heads=n_head,
            num_key_value_heads=n_kv,
            rms_norm_eps=meta_value(meta, "llama.attention.layer_norm_rms_epsilon"),
            vocab_size=gguf["token_embd.weight"].shape[0],
            rope_theta=meta_value(meta, "llama.rope.freq_base", 10000.0),
            max_position_embeddings=meta_value(meta, "llama.context_length"),
            tie_word_embeddings="output.weight" not in gguf,
        )
        model = mlx_llama.Model(self.args)
        load_into(model, _mlx_names(gguf, n_head, n_kv))
        super().__init__(model, self.args.num_hidden_layers, n_head, n_kv, d // n_head, self.args.max_position_embeddings)
        inner = model.model
        self.watch(inner.embed_tokens, lambda out: {"embed": out[0]})
        self.watch(inner.norm, lambda out: {"final_norm": out[0]})
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            self.watch(layer.input_layernorm, lambda out, i=i: {f"blk.{i}.attn_norm": out[0]})
            self.watch(attn.q_proj, lambda out, i=i: {f"blk.{i}.q": out[0]})
            self.watch(attn.k_proj, lambda out, i=i: {f"blk.{i}.k": out[0]})
            self.watch(attn.v_proj, lambda out, i=i: {f"blk.{i}.v": out[0]})
            self.watch(attn.rope, _RopeTaps(self, i))
            self.watch(attn.o_proj, lambda out, i=i: {f"blk.{i}.attn_out": out[0]})
            self.watch(layer.post_attention_layernorm, lambda out, i=i: {f"blk.{i}.ffn_norm": out[0]})
            self.watch(layer.mlp, lambda out, i=i: {f"blk.{i}.ffn_out": out[0]})
            self.watch(layer, lambda out, i=i: {f"blk.{i}.block_out": out[0]})


class _RopeTaps:
    """mlx-lm's attention calls its RoPE twice per step: queries first, then keys ([1, H, T, hd])."""

    def __init__(self, owner, layer):
        self.owner, self.layer, self.calls = owner, layer, 0

    def __call__(self, out):
        which = "q" if self.calls % 2 == 0 else "k"
        self.calls += 1
        if which == "q":
            self.owner.heads[self.layer] = out[0]
        return {f"blk.{self.layer}.{which}_rope": rows(out)}

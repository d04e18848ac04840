"""Llama (2 and 3) through mlx-lm's own model (`mlx_lm.models.llama.Model`) on MLX's CPU device,
watched, and the taps every Llama-style decoder shares (Qwen2 and Qwen3 too: qwen.py).

From MLX and mlx-lm: GGUF reading (`mx.load`, which keeps Q4_0/Q4_1/Q8_0 as MLX's own 32-wide
affine quantization), the quantized and dense products, the token embedding (quantized or not),
every RMSNorm (`mx.fast.rms_norm`), RoPE (`mx.fast.rope`; Llama-3's frequency scaling through
mlx-lm's own per-pair factor RoPE, see `rope_scaling`), the KV cache (`KVCache`), the fused
attention (`mx.fast.scaled_dot_product_attention`), SwiGLU, the block wiring, the output head.

Ours: the weights' names mapped from GGUF to mlx-lm's, the Q/K rows put back from llama.cpp's
interleaved RoPE order into the half-split order mlx-lm's RoPE expects (a row permutation, no
arithmetic), the GGUF's RoPE factors handed to mlx-lm as its config, and the attention
probabilities (watch.py).
"""

import mlx.core as mx
from mlx_lm.models import llama as mlx_llama
from watch import Watched, load_into, meta_value, mlx_names, rows

# Metadata keys that change the computation in ways this mapping does not carry over.
UNSUPPORTED = ("rope.scaling.type", "rope.scaling.factor", "expert_count")
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
ROPE_FACTORS = "rope_freqs.weight"


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


def refuse_unsupported(meta, arch):
    for key in UNSUPPORTED:
        if f"{arch}.{key}" in meta:
            raise ValueError(f"{arch}.{key} is set: this mapping onto mlx-lm does not carry it over")


def rope_scaling(gguf, context):
    """mlx-lm's RoPE config for the GGUF's `rope_freqs.weight` (taken out of `gguf`), or None.

    llama.cpp's converter writes Llama-3's frequency scaling only as those per-pair factors (pair
    i rotates at theta^(-2i/hd) / factor_i); the GGUF carries none of the llama3 parameters
    mlx-lm's `Llama3RoPE` is built from. mlx-lm's `longrope` RoPE (`SuScaledRoPE`) takes exactly
    such per-pair factors (`long_factor`, multiplying each pair's wavelength); with the context
    equal to the original context its attention scale is 1, so it is llama.cpp's rule as given."""
    factors = gguf.pop(ROPE_FACTORS, None)
    if factors is None:
        return None
    factors = factors.astype(mx.float32).tolist()
    return {"rope_type": "longrope", "original_max_position_embeddings": context, "short_factor": factors, "long_factor": factors}


class Llama(Watched):
    def __init__(self, path):
        gguf, meta = mx.load(path, return_metadata=True)
        refuse_unsupported(meta, "llama")
        n_head = meta_value(meta, "llama.attention.head_count")
        n_kv = meta_value(meta, "llama.attention.head_count_kv", n_head)
        d = meta_value(meta, "llama.embedding_length")
        context = meta_value(meta, "llama.context_length")
        self.args = mlx_llama.ModelArgs(
            model_type="llama",
            hidden_size=d,
            num_hidden_layers=meta_value(meta, "llama.block_count"),
            intermediate_size=meta_value(meta, "llama.feed_forward_length"),
            num_attention_heads=n_head,
            num_key_value_heads=n_kv,
            head_dim=meta_value(meta, "llama.attention.key_length", d // n_head),
            rms_norm_eps=meta_value(meta, "llama.attention.layer_norm_rms_epsilon"),
            vocab_size=gguf["token_embd.weight"].shape[0],
            rope_theta=meta_value(meta, "llama.rope.freq_base", 10000.0),
            rope_scaling=rope_scaling(gguf, context),
            max_position_embeddings=context,
            tie_word_embeddings="output.weight" not in gguf,
        )
        model = mlx_llama.Model(self.args)
        load_into(model, _mlx_names(gguf, n_head, n_kv))
        super().__init__(model, self.args.num_hidden_layers, n_head, n_kv, self.args.head_dim, context)
        watch_decoder(self, model.model)


def watch_decoder(owner, inner, qk_norm=False, fused_qkv=None):
    """The checkpoint taps of a Llama-style mlx-lm decoder (`inner` holds embed_tokens, layers of
    input_layernorm, self_attn with q/k/v/o_proj and rope, post_attention_layernorm and mlp, and
    norm); with `qk_norm`, self_attn's per-head q_norm/k_norm too (Qwen3); with `fused_qkv` =
    (q_end, k_end), q/k/v are the column slices [:q_end], [q_end:k_end], [k_end:] of self_attn's
    one qkv_proj (Phi-3), as mlx-lm splits it."""
    owner.watch(inner.embed_tokens, lambda out: {"embed": out[0]})
    owner.watch(inner.norm, lambda out: {"final_norm": out[0]})
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        owner.watch(layer.input_layernorm, lambda out, i=i: {f"blk.{i}.attn_norm": out[0]})
        if fused_qkv is None:
            owner.watch(attn.q_proj, lambda out, i=i: {f"blk.{i}.q": out[0]})
            owner.watch(attn.k_proj, lambda out, i=i: {f"blk.{i}.k": out[0]})
            owner.watch(attn.v_proj, lambda out, i=i: {f"blk.{i}.v": out[0]})
        else:
            q_end, k_end = fused_qkv
            owner.watch(
                attn.qkv_proj,
                lambda out, i=i: {f"blk.{i}.q": out[0][:, :q_end], f"blk.{i}.k": out[0][:, q_end:k_end], f"blk.{i}.v": out[0][:, k_end:]},
            )
        if qk_norm:  # [1, T, heads, hd], normalised over hd
            owner.watch(attn.q_norm, lambda out, i=i: {f"blk.{i}.q_norm": out[0].reshape(out.shape[1], -1)})
            owner.watch(attn.k_norm, lambda out, i=i: {f"blk.{i}.k_norm": out[0].reshape(out.shape[1], -1)})
        owner.watch(attn.rope, _RopeTaps(owner, i))
        owner.watch(attn.o_proj, lambda out, i=i: {f"blk.{i}.attn_out": out[0]})
        owner.watch(layer.post_attention_layernorm, lambda out, i=i: {f"blk.{i}.ffn_norm": out[0]})
        owner.watch(layer.mlp, lambda out, i=i: {f"blk.{i}.ffn_out": out[0]})
        owner.watch(layer, lambda out, i=i: {f"blk.{i}.block_out": out[0]})


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

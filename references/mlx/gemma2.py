"""Gemma-2 through mlx-lm's own model (`mlx_lm.models.gemma2.Model`) on MLX's CPU device, watched,
with the sliding window mlx-lm's Gemma-2 leaves out supplied by us.

From MLX and mlx-lm: GGUF reading (`mx.load`), the quantized and dense products, the token
embedding and its scaling by sqrt(d), every RMSNorm (mlx-lm's Gemma `RMSNorm`, `mx.fast.rms_norm`
by 1 + weight), RoPE (`nn.RoPE`, half-split: llama.cpp does not permute Gemma's q/k rows), the
attention with its query scale (1 / sqrt(query_pre_attn_scalar)), soft-capped scores and softmax,
the GELU (`gelu_approx`, the tanh form), the post-attention and post-FFN norms, the tied output head
and the final logit soft-cap, the KV cache, the block wiring.

Ours: the weights' names mapped from GGUF to mlx-lm's; the norm weights handed over as the GGUF's
value minus 1 (llama.cpp's converter stores 1 + w, mlx-lm's norm adds the 1 itself; checked exact);
query_pre_attn_scalar = head_dim (the GGUF does not carry it; llama.cpp scales by 1 / sqrt(head_dim));
the sliding window: mlx-lm's Gemma-2 gives every layer the full causal mask, so layers 0, 2, ... get
the window mask mlx-lm's own `create_attention_mask(..., window_size=W)` builds (W from the GGUF,
the layers by llama.cpp's and transformers' pattern) in place of it, which touches attn_out and
everything after it on those layers; the attention probabilities (recomputed as mlx-lm's attention
computes them, same mask); the `embed` tap as the scaled row entering block 0.
"""

import mlx.core as mx
from llama import _RopeTaps, refuse_unsupported
from mlx_lm.models import gemma2 as mlx_gemma2
from mlx_lm.models.base import create_attention_mask, create_causal_mask
from watch import Watched, load_into, meta_value, mlx_names

ARCH = "gemma2"
PER_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Tied output only: mlx-lm's Gemma-2 has no separate head, so a GGUF `output.weight` is refused.
GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}


def _without_one(weights):
    """The norm weights as mlx-lm's Gemma RMSNorm holds them: the GGUF's 1 + w minus 1. Refused
    unless 1 + (that) gives back the GGUF's value bit for bit, so the norm computes with it."""
    out = dict(weights)
    for key, value in weights.items():
        if key.endswith("layernorm.weight") or key == "model.norm.weight":
            w = value - 1.0
            if not mx.array_equal(1.0 + w, value).item():
                raise ValueError(f"{key}: the GGUF's 1 + w does not come back exactly from w")
            out[key] = w
    return out


def _windowed(layer, window):
    """`layer` (a mlx-lm Gemma-2 block) attending through a sliding window: the mask it is given is
    replaced by mlx-lm's own window mask for the same positions (before the cache takes this step)."""
    base = type(layer)

    def __call__(self, x, mask=None, cache=None):
        return base.__call__(self, x, create_attention_mask(x, cache, window_size=window, return_array=True), cache)

    layer.__class__ = type(f"Windowed{base.__name__}", (base,), {"__call__": __call__})


class Gemma2(Watched):
    def __init__(self, path):
        gguf, meta = mx.load(path, return_metadata=True)
        refuse_unsupported(meta, ARCH)
        n_head = meta_value(meta, f"{ARCH}.attention.head_count")
        n_kv = meta_value(meta, f"{ARCH}.attention.head_count_kv", n_head)
        d = meta_value(meta, f"{ARCH}.embedding_length")
        hd = meta_value(meta, f"{ARCH}.attention.key_length", d // n_head)
        self.args = mlx_gemma2.ModelArgs(
            model_type=ARCH,
            hidden_size=d,
            num_hidden_layers=meta_value(meta, f"{ARCH}.block_count"),
            intermediate_size=meta_value(meta, f"{ARCH}.feed_forward_length"),
            num_attention_heads=n_head,
            head_dim=hd,
            rms_norm_eps=meta_value(meta, f"{ARCH}.attention.layer_norm_rms_epsilon"),
            vocab_size=gguf["token_embd.weight"].shape[0],
            num_key_value_heads=n_kv,
            rope_theta=meta_value(meta, f"{ARCH}.rope.freq_base", 10000.0),
            attn_logit_softcapping=meta_value(meta, f"{ARCH}.attn_logit_softcapping"),
            final_logit_softcapping=meta_value(meta, f"{ARCH}.final_logit_softcapping"),
            query_pre_attn_scalar=hd,
        )
        model = mlx_gemma2.Model(self.args)
        load_into(model, _without_one(mlx_names(gguf, "Gemma-2", "model.layers", PER_BLOCK, GLOBAL)))
        super().__init__(model, self.args.num_hidden_layers, n_head, n_kv, hd, meta_value(meta, f"{ARCH}.context_length"))
        self.window = meta_value(meta, f"{ARCH}.attention.sliding_window", 0)
        for i, layer in enumerate(model.model.layers):
            if self.sliding(i):
                _windowed(layer, self.window)
        self._watch(model.model)

    def sliding(self, layer):
        """Layers 0, 2, ... attend through the window, the odd ones to every earlier position."""
        return self.window > 0 and layer % 2 == 0

    def _watch(self, inner):
        self.watch(inner.layers[0], lambda x: {"embed": x[0]}, of_input=True)  # the scaled row
        self.watch(inner.norm, lambda out: {"final_norm": out[0]})
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            for module, name in (
                (layer.input_layernorm, "attn_norm"),
                (attn.q_proj, "q"),
                (attn.k_proj, "k"),
                (attn.v_proj, "v"),
                (attn.o_proj, "attn_out"),
                (layer.post_attention_layernorm, "post_attn_norm"),
                (layer.pre_feedforward_layernorm, "ffn_norm"),
                (layer.mlp, "ffn_out"),
                (layer.post_feedforward_layernorm, "post_ffn_norm"),
                (layer, "block_out"),
            ):
                self.watch(module, lambda out, key=f"blk.{i}.{name}": {key: out[0]})
            self.watch(attn.rope, _RopeTaps(self, i))

    def probs(self, q, k, start, layer):
        """Ours, on MLX ops, as mlx-lm's Gemma-2 attention computes them: the queries scaled, q k^T
        soft-capped (cap * tanh(scores / cap)), the mask of block `layer` (the window on sliding
        layers), the precise softmax. Query head h reads key head h // (H / KV)."""
        cap = self.args.attn_logit_softcapping
        keys = mx.repeat(k, self.n_heads // self.n_kv, axis=0)
        scores = (q * (self.args.query_pre_attn_scalar**-0.5)) @ keys.swapaxes(-1, -2)
        scores = mx.tanh(scores / cap) * cap
        visible = create_causal_mask(q.shape[1], start, window_size=self.window if self.sliding(layer) else None)
        scores = mx.where(visible, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        return mx.softmax(scores, precise=True, axis=-1)

"""The model families the PyTorch dumper runs, and where transformers keeps each one's code.

A family is named by transformers' `model_type` (config.json, or the GGUF architecture transformers
maps it from) and dumped under the catalog's architecture name, which for these is the same word.
What the dumper needs to know about each:

- `modeling`: the transformers module whose functions the model's forward calls by their global
  name at call time (`apply_rotary_pos_emb`, `eager_attention_forward`): the RoPE recorder wraps
  the first, the float64 truth replaces the second, in that module.
- `rms_norm`: the RMSNorm class in that module (it upcasts to float32; the float64 truth replaces
  the forward of every instance). None for GPT-2 (LayerNorm, which runs in the model's dtype).
- `rope`: the model rotates q and k (q_rope, k_rope exist).
- `qk_norm`: each attention has `q_norm`/`k_norm` modules, a per-head RMSNorm of q and k before
  RoPE (Qwen3; catalog q_norm, k_norm).
- `float32_softmax`: its `eager_attention_forward` takes the softmax in float32 whatever the dtype
  (the float64 truth replaces it; Gemma-2's soft-caps the scores first, and so does ours).
- `norm_plus_one`: the RMSNorm scales by (1 + weight) (Gemma-2; the float64 norm does the same).
- `sandwich_norms`: each layer also normalises the attention and FFN outputs before adding them
  (Gemma-2: post_attention_layernorm is catalog post_attn_norm, pre_feedforward_layernorm is
  ffn_norm, post_feedforward_layernorm is post_ffn_norm).
- `fused_qkv`: one `qkv_proj` whose output is q | k | v (Phi-3); q, k, v are its slices.
- `embed_scale`: the embedding is scaled by sqrt(d) (Gemma-2's `embed_tokens.embed_scale`, a
  float32 buffer; the float64 truth puts sqrt(d) in float64 there).
- `sliding_window`: some layers attend within a window (Gemma-2): the dumper hands the model a
  cache that keeps every position (transformers' own keeps only the window on those layers), so
  k_cache/v_cache have the catalog's full length; the window lives in the mask.

The decoder families share Llama's module layout (model.layers[i].self_attn.q_proj, ...,
post_attention_layernorm, mlp, model.norm), which is what the dumper's hooks read, with the
differences above.
"""

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    arch: str
    modeling: str
    rms_norm: str | None
    rope: bool
    qk_norm: bool
    float32_softmax: bool
    norm_plus_one: bool = False
    sandwich_norms: bool = False
    fused_qkv: bool = False
    embed_scale: bool = False
    sliding_window: bool = False

    def module(self):
        """The family's transformers modeling module."""
        return importlib.import_module(self.modeling)

    def rms_norm_class(self):
        return getattr(self.module(), self.rms_norm)


FAMILIES = {
    "llama": Family("llama", "transformers.models.llama.modeling_llama", "LlamaRMSNorm", rope=True, qk_norm=False, float32_softmax=True),
    "qwen2": Family("qwen2", "transformers.models.qwen2.modeling_qwen2", "Qwen2RMSNorm", rope=True, qk_norm=False, float32_softmax=True),
    "qwen3": Family("qwen3", "transformers.models.qwen3.modeling_qwen3", "Qwen3RMSNorm", rope=True, qk_norm=True, float32_softmax=True),
    "gemma2": Family(
        "gemma2",
        "transformers.models.gemma2.modeling_gemma2",
        "Gemma2RMSNorm",
        rope=True,
        qk_norm=False,
        float32_softmax=True,
        norm_plus_one=True,
        sandwich_norms=True,
        embed_scale=True,
        sliding_window=True,
    ),
    "phi3": Family("phi3", "transformers.models.phi3.modeling_phi3", "Phi3RMSNorm", rope=True, qk_norm=False, float32_softmax=True, fused_qkv=True),
    "gpt2": Family("gpt2", "transformers.models.gpt2.modeling_gpt2", None, rope=False, qk_norm=False, float32_softmax=False),
}

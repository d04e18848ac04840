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
  (the float64 truth replaces it).

The decoder families share Llama's module layout (model.layers[i].self_attn.q_proj, ...,
post_attention_layernorm, mlp, model.norm), which is what the dumper's hooks read.
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

    def module(self):
        """The family's transformers modeling module."""
        return importlib.import_module(self.modeling)

    def rms_norm_class(self):
        return getattr(self.module(), self.rms_norm)


FAMILIES = {
    "llama": Family("llama", "transformers.models.llama.modeling_llama", "LlamaRMSNorm", rope=True, qk_norm=False, float32_softmax=True),
    "qwen2": Family("qwen2", "transformers.models.qwen2.modeling_qwen2", "Qwen2RMSNorm", rope=True, qk_norm=False, float32_softmax=True),
    "qwen3": Family("qwen3", "transformers.models.qwen3.modeling_qwen3", "Qwen3RMSNorm", rope=True, qk_norm=True, float32_softmax=True),
    "gpt2": Family("gpt2", "transformers.models.gpt2.modeling_gpt2", None, rope=False, qk_norm=False, float32_softmax=False),
}

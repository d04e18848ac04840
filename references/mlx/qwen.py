"""Qwen2 and Qwen3 through mlx-lm's own models (`mlx_lm.models.qwen2.Model`, `qwen3.Model`) on
MLX's CPU device, watched with the Llama-style taps of llama.py.

From MLX and mlx-lm, as for Llama (llama.py), and: Qwen2's Q/K/V biases (its projections'
own `bias=True`), Qwen3's per-head RMSNorm of queries and keys before RoPE (its `q_norm`/`k_norm`,
`mx.fast.rms_norm` over each head's head_dim values) and its head_dim wider than hidden_size / heads.

Ours: the weights' names mapped from GGUF to mlx-lm's (no row permutation: llama.cpp's converter
permutes Q/K rows for arch llama only, and stores Qwen's in the HF order), and the attention
probabilities (watch.py).
"""

import mlx.core as mx
from llama import GLOBAL, PER_BLOCK, refuse_unsupported, watch_decoder
from mlx_lm.models import qwen2 as mlx_qwen2
from mlx_lm.models import qwen3 as mlx_qwen3
from watch import Watched, load_into, meta_value, mlx_names

QWEN_PER_BLOCK = PER_BLOCK | {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}


class Qwen(Watched):
    """Qwen2 or Qwen3 (`arch`), from a GGUF of that architecture."""

    def __init__(self, path, arch):
        gguf, meta = mx.load(path, return_metadata=True)
        refuse_unsupported(meta, arch)
        n_head = meta_value(meta, f"{arch}.attention.head_count")
        n_kv = meta_value(meta, f"{arch}.attention.head_count_kv", n_head)
        d = meta_value(meta, f"{arch}.embedding_length")
        context = meta_value(meta, f"{arch}.context_length")
        common = dict(
            model_type=arch,
            hidden_size=d,
            num_hidden_layers=meta_value(meta, f"{arch}.block_count"),
            intermediate_size=meta_value(meta, f"{arch}.feed_forward_length"),
            num_attention_heads=n_head,
            num_key_value_heads=n_kv,
            rms_norm_eps=meta_value(meta, f"{arch}.attention.layer_norm_rms_epsilon"),
            vocab_size=gguf["token_embd.weight"].shape[0],
            rope_theta=meta_value(meta, f"{arch}.rope.freq_base"),
            max_position_embeddings=context,
            tie_word_embeddings="output.weight" not in gguf,
        )
        if arch == "qwen2":  # mlx-lm's Qwen2 takes head_dim as hidden_size / heads
            hd, module = d // n_head, mlx_qwen2
            self.args = module.ModelArgs(**common)
        else:
            hd, module = meta_value(meta, "qwen3.attention.key_length", d // n_head), mlx_qwen3
            self.args = module.ModelArgs(**common, head_dim=hd)
        model = module.Model(self.args)
        load_into(model, mlx_names(gguf, arch, "model.layers", QWEN_PER_BLOCK, GLOBAL))
        super().__init__(model, self.args.num_hidden_layers, n_head, n_kv, hd, context)
        watch_decoder(self, model.model, qk_norm=arch == "qwen3")

"""Phi-3 through mlx-lm's own model (`mlx_lm.models.phi3.Model`) on MLX's CPU device, watched with
the Llama-style taps of llama.py.

From MLX and mlx-lm, as for Llama (llama.py), and: the fused projections, each one of mlx-lm's
layers (`qkv_proj`, q rows then k then v, split by mlx-lm; `gate_up_proj`, gate rows then up, as
llama.cpp's converter keeps them in `ffn_up`, split and put through `swiglu` by mlx-lm), RoPE in
the half-split order (llama.cpp does not permute Phi-3's q/k rows), the untied output head.

Ours: the weights' names mapped from GGUF to mlx-lm's (no row permutation), the q/k/v taps as the
column slices of qkv_proj's output mlx-lm's split takes, and the attention probabilities (watch.py).
Refused: a sliding window or RoPE scaling in the GGUF (neither is carried over).
"""

import mlx.core as mx
from llama import GLOBAL, refuse_unsupported, watch_decoder
from mlx_lm.models import phi3 as mlx_phi3
from watch import Watched, load_into, meta_value, mlx_names

ARCH = "phi3"
PER_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
}


class Phi3(Watched):
    def __init__(self, path):
        gguf, meta = mx.load(path, return_metadata=True)
        refuse_unsupported(meta, ARCH)
        window = meta_value(meta, f"{ARCH}.attention.sliding_window", 0)
        if window:
            raise ValueError(f"{ARCH}.attention.sliding_window = {window}: this mapping onto mlx-lm does not carry it over")
        n_head = meta_value(meta, f"{ARCH}.attention.head_count")
        n_kv = meta_value(meta, f"{ARCH}.attention.head_count_kv", n_head)
        d = meta_value(meta, f"{ARCH}.embedding_length")
        hd = d // n_head  # mlx-lm's Phi-3 takes head_dim as hidden_size / heads
        context = meta_value(meta, f"{ARCH}.context_length")
        self.args = mlx_phi3.ModelArgs(
            model_type=ARCH,
            hidden_size=d,
            num_hidden_layers=meta_value(meta, f"{ARCH}.block_count"),
            intermediate_size=meta_value(meta, f"{ARCH}.feed_forward_length"),
            num_attention_heads=n_head,
            num_key_value_heads=n_kv,
            rms_norm_eps=meta_value(meta, f"{ARCH}.attention.layer_norm_rms_epsilon"),
            vocab_size=gguf["token_embd.weight"].shape[0],
            rope_theta=meta_value(meta, f"{ARCH}.rope.freq_base", 10000.0),
            partial_rotary_factor=meta_value(meta, f"{ARCH}.rope.dimension_count", hd) / hd,
            max_position_embeddings=context,
            original_max_position_embeddings=meta_value(meta, f"{ARCH}.rope.scaling.original_context_length", context),
            tie_word_embeddings="output.weight" not in gguf,
        )
        model = mlx_phi3.Model(self.args)
        load_into(model, mlx_names(gguf, "Phi-3", "model.layers", PER_BLOCK, GLOBAL))
        super().__init__(model, self.args.num_hidden_layers, n_head, n_kv, hd, context)
        watch_decoder(self, model.model, fused_qkv=(n_head * hd, (n_head + n_kv) * hd))

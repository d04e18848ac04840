"""GPT-2 through mlx-lm's own model (`mlx_lm.models.gpt2.Model`) on MLX's CPU device, watched.

From MLX and mlx-lm: GGUF reading (`mx.load`), the fused QKV product and its split, every
LayerNorm, the learned positions, the KV cache, the fused attention, the tanh GELU MLP, the block
wiring, the tied output head.

Ours: the weights' names mapped from GGUF to mlx-lm's (llama.cpp's converter already stores the
Conv1D matrices as [out, in], which is what mlx-lm's Linear layers hold: no arithmetic), the
`embed` tap read as the first block's input (the token plus position rows mlx-lm added), and the
attention probabilities (watch.py).
"""

import mlx.core as mx
from mlx_lm.models import gpt2 as mlx_gpt2
from watch import Watched, load_into, meta_value, mlx_names

PER_BLOCK = {
    "attn_norm": "ln_1",
    "attn_qkv": "attn.c_attn",
    "attn_output": "attn.c_proj",
    "ffn_norm": "ln_2",
    "ffn_up": "mlp.c_fc",
    "ffn_down": "mlp.c_proj",
}
GLOBAL = {"token_embd": "model.wte", "position_embd": "model.wpe", "output_norm": "model.ln_f"}


class Gpt2(Watched):
    def __init__(self, path):
        gguf, meta = mx.load(path, return_metadata=True)
        d, heads = meta_value(meta, "gpt2.embedding_length"), meta_value(meta, "gpt2.attention.head_count")
        context = meta_value(meta, "gpt2.context_length")
        self.args = mlx_gpt2.ModelArgs(
            model_type="gpt2",
            n_ctx=context,
            n_embd=d,
            n_head=heads,
            n_layer=meta_value(meta, "gpt2.block_count"),
            n_positions=context,
            layer_norm_epsilon=meta_value(meta, "gpt2.attention.layer_norm_epsilon"),
            vocab_size=gguf["token_embd.weight"].shape[0],
        )
        model = mlx_gpt2.Model(self.args)
        # an untied `output.weight` has no place: mlx-lm's GPT-2 always ties the head to wte
        load_into(model, mlx_names(gguf, "GPT-2", "model.h", PER_BLOCK, GLOBAL))
        super().__init__(model, self.args.n_layer, heads, heads, d // heads, context)
        inner = model.model
        self.watch(inner.ln_f, lambda out: {"final_norm": out[0]})
        # mlx-lm adds the token and position rows inline: `embed` is what the first block reads.
        self.watch(inner.h[0].ln_1, lambda x: {"embed": x[0]}, of_input=True)
        for i, block in enumerate(inner.h):
            self.watch(block.ln_1, lambda out, i=i: {f"blk.{i}.attn_norm": out[0]})
            self.watch(block.attn.c_attn, _QkvTaps(self, i, heads))
            self.watch(block.attn.c_proj, lambda out, i=i: {f"blk.{i}.attn_out": out[0]})
            self.watch(block.ln_2, lambda out, i=i: {f"blk.{i}.ffn_norm": out[0]})
            self.watch(block.mlp, lambda out, i=i: {f"blk.{i}.ffn_out": out[0]})
            self.watch(block, lambda out, i=i: {f"blk.{i}.block_out": out[0]})


class _QkvTaps:
    """mlx-lm splits the fused QKV product ([1, T, 3d]) into queries, keys and values, in that order."""

    def __init__(self, owner, layer, heads):
        self.owner, self.layer, self.n_heads = owner, layer, heads

    def __call__(self, out):
        q, k, v = mx.split(out[0], 3, axis=-1)
        t = q.shape[0]
        self.owner.heads[self.layer] = q.reshape(t, self.n_heads, -1).transpose(1, 0, 2)
        return {f"blk.{self.layer}.q": q, f"blk.{self.layer}.k": k, f"blk.{self.layer}.v": v}

"""Llama, Qwen2 and Qwen3 through tinygrad's own model, `tinygrad.llm.model.Transformer`, opened up block by block.

All three are tinygrad's own `TransformerBlock`, configured by its `from_gguf` from the file: Qwen2's
Q/K/V biases are its `Linear(bias=True)` (`qkv_bias`), Qwen3's per-head RMSNorm of q and k its
`attn_q_norm`/`attn_k_norm` (`qk_norm` = head_dim), heads wider than hidden_size / heads its
`key_length` head_dim, GQA its `n_kv_heads`.

From tinygrad: GGUF loading and dequantisation (`Transformer.from_gguf` / `gguf_load`), its un-permuting
of the attn_q/attn_k rows into the half-split (HF) RoPE order (arch llama only, as llama.cpp's converter
permutes only those), the token embedding, every RMSNorm (the per-head q/k norms included), the
q/k/v/output projections with their biases, RoPE (`precompute_freqs_cis`, `apply_rope`), the SwiGLU
FFN (`_feed_forward`), the output norm and the output head.

Ours: the block wiring around them (the residual adds, as in `FFNBlock.__call__`, which runs the block
as one opaque compiled function) and the attention core and KV cache (attention.py), because tinygrad's
`_attention` hides the probabilities inside `scaled_dot_product_attention` and stores K/V in float16.
And Llama-3's RoPE frequency scaling: tinygrad's loader leaves the GGUF's `rope_freqs.weight` unused
(its RoPE would rotate at the unscaled frequencies), so where the file has it the frequency table is
ours, on tinygrad ops: tinygrad's `precompute_freqs_cis` with each pair's frequency divided by its
factor, as llama.cpp applies them.
"""

from attention import as_f32, causal_attention
from decoder import CachedDecoder, import_model, tap_layer
from tinygrad import Tensor, nn
from tinygrad.llm.gguf import gguf_load

# GGUF architectures whose blocks tinygrad's own TransformerBlock runs as they are defined.
ARCHS = ("llama", "qwen2", "qwen3")


def scaled_freqs_cis(dim, end, theta, factors):
    """tinygrad's `precompute_freqs_cis` table with pair i's frequency theta^(-2i/dim) divided by
    `factors[i]` (the GGUF's `rope_freqs.weight`, Llama-3's frequency scaling, as llama.cpp applies it)."""
    freqs = 1.0 / (theta ** (Tensor.arange(0, dim, 2)[: (dim // 2)] / dim)) / factors
    angles = Tensor.arange(end).unsqueeze(dim=1) * freqs.unsqueeze(dim=0)
    return angles.cos().cat(angles.sin(), dim=-1)


class Llama(CachedDecoder):
    def __init__(self, path):
        self.tg = import_model()
        # HALF=0 (set by dump.py) keeps the GGUF's own types; everything is then widened to float32 once.
        self.model, self.kv = self.tg.Transformer.from_gguf(path, realize=False)
        for t in nn.state.get_parameters(self.model):
            t.replace(as_f32(t).contiguous())
        Tensor.realize(*nn.state.get_parameters(self.model))
        cfg = self.model.blk[0].config
        arch = self.kv["general.architecture"]
        if arch not in ARCHS or type(self.model.blk[0]) is not self.tg.TransformerBlock or cfg.num_experts or cfg.attn_output_gate:
            raise ValueError(f"only dense {', '.join(ARCHS)} blocks (no MLA, SSM, MoE or gated attention) are supported, not {arch}")
        if cfg.qk_norm not in (0, cfg.head_dim):
            raise ValueError(f"q/k norms {cfg.qk_norm} wide over heads of {cfg.head_dim}: only per-head norms are supported")
        scaling = self.kv.get(f"{arch}.rope.scaling.type", "none")
        if scaling != "none":
            raise ValueError(f"{arch}.rope.scaling.type = {scaling!r}: tinygrad's model does not apply it and this dumper does not either")
        self.n_layers, self.n_heads, self.n_kv, self.hd = cfg.num_blocks, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qk_norm = bool(cfg.qk_norm)
        # tinygrad's table (or ours with Llama-3's factors), read back once: each step takes its rows as data (see attention.py)
        factors = gguf_load(path)[1].get("rope_freqs.weight")
        if factors is None:
            self.freqs = self.tg.precompute_freqs_cis(cfg.rope_dim, cfg.max_context, cfg.rope_theta).numpy()
        else:
            self.freqs = scaled_freqs_cis(cfg.rope_dim, cfg.max_context, cfg.rope_theta, as_f32(factors)).numpy()
        self.rope_dim = cfg.rope_dim
        self.context = cfg.max_context
        self.cache = None

    def _forward(self, tokens, freqs, mask, row, tap=None, n_ctx=None):
        tap = tap or (lambda name, t: None)
        t = tokens.shape[1]
        m = self.model
        x = as_f32(m.token_embd(tokens))  # [1, T, d]
        tap("embed", x[0])
        for i, blk in enumerate(m.blk):
            xn = blk.attn_norm(x)
            q, k, v = blk.attn_q(xn)[0], blk.attn_k(xn)[0], blk.attn_v(xn)[0]  # [T, heads*hd], HF order
            qh = q.reshape(t, self.n_heads, self.hd).transpose(0, 1)
            kh = k.reshape(t, self.n_kv, self.hd).transpose(0, 1)
            vh = v.reshape(t, self.n_kv, self.hd).transpose(0, 1)
            if self.qk_norm:  # Qwen3: RMSNorm over each head's hd values, before RoPE
                qh, kh = blk.attn_q_norm(qh), blk.attn_k_norm(kh)
                tap(f"blk.{i}.q_norm", qh.transpose(0, 1).reshape(t, -1))
                tap(f"blk.{i}.k_norm", kh.transpose(0, 1).reshape(t, -1))
            qr, kr = self._rope(qh, freqs), self._rope(kh, freqs)
            k_all, v_all = self.cache.write(i, kr, vh, row)
            ctx, probs = causal_attention(qr, k_all, v_all, mask)
            attn_out = blk.attn_output(ctx[None])
            h = x + attn_out
            fn = blk.ffn_norm(h)
            ffn_out = blk._feed_forward(fn)
            x = h + ffn_out
            tap_layer(tap, i, t, n_ctx, xn, q, k, v, qr, kr, k_all, v_all, probs, attn_out=attn_out, ffn_norm=fn, ffn_out=ffn_out, block_out=x)
        final = m.output_norm(x)
        tap("final_norm", final[0])
        return m.output(final)[0]

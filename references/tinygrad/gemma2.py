"""Gemma-2 hosted on tinygrad: tinygrad's own modules and ops, wired as transformers' modeling_gemma2.

tinygrad's llm package has no Gemma-2 (its `Transformer.from_gguf` needs the `rope.freq_base`
Gemma-2's GGUF leaves out, and has no post-norms, soft-caps or sliding window), so the block is
ours, built from tinygrad's pieces, as gpt2.py is.

From tinygrad: GGUF loading and dequantisation (`gguf_load`, `load_state_dict`), the token
embedding (`nn.Embedding`), every RMSNorm (`nn.RMSNorm`, four a block and the output norm: they
multiply by the GGUF's weight, which llama.cpp's converter stores as 1 + w, so they scale by Gemma's
(1 + w) as they are), the projections (`nn.Linear`), RoPE in the half-split order
(`precompute_freqs_cis`, `apply_rope`; llama.cpp does not permute Gemma's q/k rows), the GELU in its
tanh form (`Tensor.gelu`), `tanh`, the output head (the tied embedding as tinygrad's `from_gguf` ties it).

Ours: the block wiring (post-attention and post-FFN norms before the residual adds, GeGLU as
down(gelu(gate) * up)), the embedding times sqrt(d), the attention core and KV cache (attention.py:
tinygrad's `scaled_dot_product_attention` has no soft-cap between the scale and the mask and never
shows its probabilities) with the scores soft-capped as cap * tanh(scores / cap), the sliding-window
mask on layers 0, 2, ... (llama.cpp's and transformers' pattern: the GGUF gives the window, not the
layers), the final logit soft-cap, and RoPE's base 10000 (llama.cpp's default when the GGUF has no
`rope.freq_base`, as here).
"""

import math

from attention import causal_attention
from decoder import CachedDecoder, import_model, load_gguf, tap_layer
from tinygrad import nn

ARCH = "gemma2"
# llama.cpp's RoPE base for a GGUF without `<arch>.rope.freq_base`.
DEFAULT_ROPE_BASE = 10000.0


class Block:
    """One Gemma-2 block's weights under the GGUF's names."""

    def __init__(self, d, ffn, n_heads, n_kv, hd, eps):
        self.attn_norm = nn.RMSNorm(d, eps)
        self.attn_q = nn.Linear(d, n_heads * hd, bias=False)
        self.attn_k = nn.Linear(d, n_kv * hd, bias=False)
        self.attn_v = nn.Linear(d, n_kv * hd, bias=False)
        self.attn_output = nn.Linear(n_heads * hd, d, bias=False)
        self.post_attention_norm = nn.RMSNorm(d, eps)
        self.ffn_norm = nn.RMSNorm(d, eps)
        self.ffn_gate = nn.Linear(d, ffn, bias=False)
        self.ffn_up = nn.Linear(d, ffn, bias=False)
        self.ffn_down = nn.Linear(ffn, d, bias=False)
        self.post_ffw_norm = nn.RMSNorm(d, eps)


class Weights:
    def __init__(self, kv):
        key = lambda name: kv[f"{ARCH}.{name}"]  # noqa: E731
        d, n_heads = key("embedding_length"), key("attention.head_count")
        hd = kv.get(f"{ARCH}.attention.key_length", d // n_heads)
        eps = key("attention.layer_norm_rms_epsilon")
        self.token_embd = nn.Embedding(len(kv["tokenizer.ggml.tokens"]), d)
        args = (d, key("feed_forward_length"), n_heads, key("attention.head_count_kv"), hd, eps)
        self.blk = [Block(*args) for _ in range(key("block_count"))]
        self.output_norm = nn.RMSNorm(d, eps)
        self.output = nn.Linear(d, len(kv["tokenizer.ggml.tokens"]), bias=False)


class Gemma2(CachedDecoder):
    def __init__(self, path):
        self.tg = import_model()
        self.model, self.kv = load_gguf(path, Weights)
        kv = self.kv
        key = lambda name: kv[f"{ARCH}.{name}"]  # noqa: E731
        self.d, self.n_layers = key("embedding_length"), key("block_count")
        self.n_heads, self.n_kv = key("attention.head_count"), key("attention.head_count_kv")
        self.hd = kv.get(f"{ARCH}.attention.key_length", self.d // self.n_heads)
        if kv.get(f"{ARCH}.attention.value_length", self.hd) != self.hd:
            raise ValueError("Gemma-2 with value heads unlike key heads is not supported")
        self.attn_softcap = kv.get(f"{ARCH}.attn_logit_softcapping")
        self.final_softcap = kv.get(f"{ARCH}.final_logit_softcapping")
        self.window = kv.get(f"{ARCH}.attention.sliding_window", 0)
        self.rope_dim = kv.get(f"{ARCH}.rope.dimension_count", self.hd)
        self.context = key("context_length")
        theta = kv.get(f"{ARCH}.rope.freq_base", DEFAULT_ROPE_BASE)
        self.freqs = self.tg.precompute_freqs_cis(self.rope_dim, self.context, theta).numpy()
        self.cache = None

    def sliding(self, layer):
        """Layers 0, 2, ... attend through the window, the odd ones to every earlier position."""
        return self.window > 0 and layer % 2 == 0

    def extra_masks(self, start, t):
        return (self.cache.window_mask(t, self.window),) if self.window > 0 else ()

    def _forward(self, tokens, freqs, mask, row, *window_mask, tap=None, n_ctx=None):
        tap = tap or (lambda name, t: None)
        t = tokens.shape[1]
        m = self.model
        x = m.token_embd(tokens) * math.sqrt(self.d)  # [1, T, d]
        tap("embed", x[0])
        for i, blk in enumerate(m.blk):
            xn = blk.attn_norm(x)
            q, k, v = blk.attn_q(xn)[0], blk.attn_k(xn)[0], blk.attn_v(xn)[0]  # [T, heads*hd]
            qh = q.reshape(t, self.n_heads, self.hd).transpose(0, 1)
            kh = k.reshape(t, self.n_kv, self.hd).transpose(0, 1)
            vh = v.reshape(t, self.n_kv, self.hd).transpose(0, 1)
            qr, kr = self._rope(qh, freqs), self._rope(kh, freqs)
            k_all, v_all = self.cache.write(i, kr, vh, row)
            ctx, probs = causal_attention(qr, k_all, v_all, window_mask[0] if self.sliding(i) else mask, softcap=self.attn_softcap)
            attn_out = blk.attn_output(ctx[None])
            post_attn = blk.post_attention_norm(attn_out)
            h = x + post_attn
            fn = blk.ffn_norm(h)
            ffn_out = blk.ffn_down(blk.ffn_gate(fn).gelu() * blk.ffn_up(fn))
            post_ffn = blk.post_ffw_norm(ffn_out)
            x = h + post_ffn
            rest = dict(attn_out=attn_out, post_attn_norm=post_attn, ffn_norm=fn, ffn_out=ffn_out, post_ffn_norm=post_ffn, block_out=x)
            tap_layer(tap, i, t, n_ctx, xn, q, k, v, qr, kr, k_all, v_all, probs, **rest)
        final = m.output_norm(x)
        tap("final_norm", final[0])
        logits = m.output(final)[0]
        if self.final_softcap is not None:
            logits = (logits / self.final_softcap).tanh() * self.final_softcap
        return logits

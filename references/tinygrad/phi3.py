"""Phi-3 hosted on tinygrad: tinygrad's own modules and ops, wired as transformers' modeling_phi3.

tinygrad's llm package has no Phi-3 (its `Transformer.from_gguf` builds separate q/k/v and
gate/up projections and cannot take the fused `attn_qkv` and `ffn_up` of Phi-3's GGUF), so the block
is ours, built from tinygrad's pieces, as gpt2.py is.

From tinygrad: GGUF loading and dequantisation (`gguf_load`, `load_state_dict`), the token
embedding (`nn.Embedding`), every RMSNorm (`nn.RMSNorm`), the fused projections as one `nn.Linear`
each (q, k, v rows in one matrix; gate then up rows in the other, as llama.cpp's converter keeps
them), the output projection and head, RoPE in the half-split order (`precompute_freqs_cis`,
`apply_rope`; llama.cpp does not permute Phi-3's q/k rows), SiLU (`Tensor.silu`).

Ours: the block wiring (the residual adds), the fused outputs cut into q, k, v and into gate, up
(column slices, no arithmetic), SwiGLU as down(silu(gate) * up), and the attention core and KV cache
(attention.py; tinygrad's `scaled_dot_product_attention` never shows its probabilities).
Refused: a sliding window, RoPE scaling and LongRoPE factor tensors (none of which this block applies).
"""

from attention import causal_attention
from decoder import CachedDecoder, import_model, load_gguf, tap_layer
from tinygrad import nn

ARCH = "phi3"


class Block:
    """One Phi-3 block's weights under the GGUF's names."""

    def __init__(self, d, ffn, n_heads, n_kv, hd, eps):
        self.attn_norm = nn.RMSNorm(d, eps)
        self.attn_qkv = nn.Linear(d, (n_heads + 2 * n_kv) * hd, bias=False)
        self.attn_output = nn.Linear(n_heads * hd, d, bias=False)
        self.ffn_norm = nn.RMSNorm(d, eps)
        self.ffn_up = nn.Linear(d, 2 * ffn, bias=False)
        self.ffn_down = nn.Linear(ffn, d, bias=False)


class Weights:
    def __init__(self, kv):
        key = lambda name: kv[f"{ARCH}.{name}"]  # noqa: E731
        d, n_heads = key("embedding_length"), key("attention.head_count")
        eps = key("attention.layer_norm_rms_epsilon")
        vocab = len(kv["tokenizer.ggml.tokens"])
        self.token_embd = nn.Embedding(vocab, d)
        args = (d, key("feed_forward_length"), n_heads, key("attention.head_count_kv"), d // n_heads, eps)
        self.blk = [Block(*args) for _ in range(key("block_count"))]
        self.output_norm = nn.RMSNorm(d, eps)
        self.output = nn.Linear(d, vocab, bias=False)


class Phi3(CachedDecoder):
    def __init__(self, path):
        self.tg = import_model()
        self.model, self.kv = load_gguf(path, Weights)
        kv = self.kv
        key = lambda name: kv[f"{ARCH}.{name}"]  # noqa: E731
        if kv.get(f"{ARCH}.attention.sliding_window", 0):
            raise ValueError(f"{ARCH}.attention.sliding_window = {kv[f'{ARCH}.attention.sliding_window']}: this Phi-3 block has no sliding window")
        if kv.get(f"{ARCH}.rope.scaling.type", "none") != "none":
            raise ValueError(f"{ARCH}.rope.scaling.type = {kv[f'{ARCH}.rope.scaling.type']!r}: this Phi-3 block does not apply it")
        self.d, self.n_layers = key("embedding_length"), key("block_count")
        self.n_heads, self.n_kv = key("attention.head_count"), key("attention.head_count_kv")
        self.hd = self.d // self.n_heads
        self.ffn = key("feed_forward_length")
        self.rope_dim = kv.get(f"{ARCH}.rope.dimension_count", self.hd)
        self.context = key("context_length")
        self.freqs = self.tg.precompute_freqs_cis(self.rope_dim, self.context, key("rope.freq_base")).numpy()
        self.cache = None

    def _forward(self, tokens, freqs, mask, row, tap=None, n_ctx=None):
        tap = tap or (lambda name, t: None)
        t = tokens.shape[1]
        m = self.model
        q_end, k_end = self.n_heads * self.hd, (self.n_heads + self.n_kv) * self.hd
        x = m.token_embd(tokens)  # [1, T, d]
        tap("embed", x[0])
        for i, blk in enumerate(m.blk):
            xn = blk.attn_norm(x)
            qkv = blk.attn_qkv(xn)[0]  # [T, (H + 2 KV) * hd]: q, then k, then v
            q, k, v = qkv[:, :q_end], qkv[:, q_end:k_end], qkv[:, k_end:]
            qh = q.reshape(t, self.n_heads, self.hd).transpose(0, 1)
            kh = k.reshape(t, self.n_kv, self.hd).transpose(0, 1)
            vh = v.reshape(t, self.n_kv, self.hd).transpose(0, 1)
            qr, kr = self._rope(qh, freqs), self._rope(kh, freqs)
            k_all, v_all = self.cache.write(i, kr, vh, row)
            ctx, probs = causal_attention(qr, k_all, v_all, mask)
            attn_out = blk.attn_output(ctx[None])
            h = x + attn_out
            fn = blk.ffn_norm(h)
            gate_up = blk.ffn_up(fn)  # gate, then up
            ffn_out = blk.ffn_down(gate_up[..., : self.ffn].silu() * gate_up[..., self.ffn :])
            x = h + ffn_out
            tap_layer(tap, i, t, n_ctx, xn, q, k, v, qr, kr, k_all, v_all, probs, attn_out=attn_out, ffn_norm=fn, ffn_out=ffn_out, block_out=x)
        final = m.output_norm(x)
        tap("final_norm", final[0])
        return m.output(final)[0]

"""Float64 numpy checks of a Gemma-2 or Phi-3 dump against the GGUF's own tensors, shared by the
tinygrad and MLX dumper tests (numpy only: each test reads the GGUF with its own reader, not the
dumper's loader, and hands the tensors over as float64 [rows, cols] arrays under their GGUF names).

Each check recomputes one step of the block from the dump's own input to it, so a wrong step fails
where it lives: Gemma-2's scaled embedding, its soft-capped, windowed attention probabilities
(prompt and decode path; the window must be seen to cut something, else the check shows nothing),
the (1 + w) post-norms (the GGUF holds 1 + w, so the norm multiplies by the stored value), GeGLU in
the tanh form, the residual adds and the soft-capped tied logits; Phi-3's fused q/k/v rows and
fused gate-then-up FFN and its logits.
"""

import math

import numpy as np


def gemma2_sliding(layer):
    """Layers 0, 2, ... of Gemma-2 attend through the window (transformers' layer_types, llama.cpp's pattern)."""
    return layer % 2 == 0


def relative_rms(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))


def rms_norm(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def probs(q, k_cache, positions, scale, softcap=None, window=None):
    """softmax over keys of (q . k) * scale, soft-capped, for queries q [T, H*hd] at `positions`
    over k_cache [KV, C, hd]; key j is visible to position i when j <= i (and i - window < j)."""
    n_kv, c, hd = k_cache.shape
    heads = q.reshape(q.shape[0], -1, hd).transpose(1, 0, 2)  # [H, T, hd]
    keys = np.repeat(k_cache, heads.shape[0] // n_kv, axis=0)
    scores = heads @ keys.transpose(0, 2, 1) * scale
    if softcap is not None:
        scores = softcap * np.tanh(scores / softcap)
    j, i = np.arange(c)[None, :], np.asarray(positions)[:, None]
    visible = (j <= i) & ((j > i - window) if window else True)
    scores = np.where(visible[None], scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Expect:
    """expect(name, got, want) fails when got is more than `tol` relative RMS from want; keeps the worst."""

    def __init__(self, rel, fail, tol):
        self.rel, self.fail, self.tol, self.worst = rel, fail, tol, 0.0

    def __call__(self, name, got, want):
        err = relative_rms(got, want)
        self.worst = max(self.worst, err)
        if err > self.tol:
            self.fail(f"{self.rel}: {name} is {err:.2g} relative RMS from float64 numpy of the GGUF")


class Dump:
    """The tensors of one dump folder as float64."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, name):
        return np.load(self.folder / f"{name}.npy").astype(np.float64)


def check_gemma2(rel, folder, w, config, fail, tol=1e-5):
    """A Gemma-2 dump (prompt longer than the window, 4 generated tokens) against float64 numpy of
    the GGUF's tensors `w`; `config` is the model's HF config.json. Returns the worst relative RMS."""
    load, expect = Dump(folder), Expect(rel, fail, tol)

    tokens = np.load(folder / "tokens.npy")
    t, d, window = len(tokens), config["hidden_size"], config["sliding_window"]
    if t <= window:
        fail(f"{rel}: the prompt's {t} tokens do not reach past the {window}-token window")
    eps, scale = config["rms_norm_eps"], config["query_pre_attn_scalar"] ** -0.5
    expect("embed", load("embed"), w["token_embd.weight"][tokens] * math.sqrt(d))
    x = load("embed")
    for i in range(config["num_hidden_layers"]):
        blk = lambda name: w[f"blk.{i}.{name}.weight"]  # noqa: E731
        sliding = window if gemma2_sliding(i) else None
        want = probs(load(f"blk.{i}.q_rope"), load(f"blk.{i}.k_cache"), np.arange(t), scale, config["attn_logit_softcapping"], sliding)
        expect(f"blk.{i}.attn_probs", load(f"blk.{i}.attn_probs"), want)
        cut = np.tril(np.ones((t, t), bool), -window)  # j <= i - window: outside the window
        if sliding and (load(f"blk.{i}.attn_probs")[:, cut] != 0).any():
            fail(f"{rel}: blk.{i}.attn_probs reads keys outside the {window}-token window")
        if not sliding and (load(f"blk.{i}.attn_probs")[:, cut] == 0).any():
            fail(f"{rel}: blk.{i}.attn_probs (a full-attention layer) has zeros outside the window")
        expect(f"blk.{i}.post_attn_norm", load(f"blk.{i}.post_attn_norm"), rms_norm(load(f"blk.{i}.attn_out"), blk("post_attention_norm"), eps))
        h = x + load(f"blk.{i}.post_attn_norm")
        expect(f"blk.{i}.ffn_norm", load(f"blk.{i}.ffn_norm"), rms_norm(h, blk("ffn_norm"), eps))
        fn = load(f"blk.{i}.ffn_norm")
        expect(f"blk.{i}.ffn_out", load(f"blk.{i}.ffn_out"), (gelu_tanh(fn @ blk("ffn_gate").T) * (fn @ blk("ffn_up").T)) @ blk("ffn_down").T)
        expect(f"blk.{i}.post_ffn_norm", load(f"blk.{i}.post_ffn_norm"), rms_norm(load(f"blk.{i}.ffn_out"), blk("post_ffw_norm"), eps))
        expect(f"blk.{i}.block_out", load(f"blk.{i}.block_out"), h + load(f"blk.{i}.post_ffn_norm"))
        x = load(f"blk.{i}.block_out")
        # the decode path: steps 1, 2, 3 at positions T, T+1, T+2 (all past the window)
        dec_q, dec_k = load(f"blk.{i}.dec_q_rope"), load(f"blk.{i}.dec_k_cache")
        for s, step in enumerate((1, 2, 3)):
            pos = t + step - 1
            want = probs(dec_q[s : s + 1], dec_k[s], [pos], scale, config["attn_logit_softcapping"], sliding)[:, 0]
            expect(f"blk.{i}.dec_attn_probs step {step}", load(f"blk.{i}.dec_attn_probs")[s], want)
        expect(
            f"blk.{i}.dec_post_attn_norm",
            load(f"blk.{i}.dec_post_attn_norm"),
            rms_norm(load(f"blk.{i}.dec_attn_out"), blk("post_attention_norm"), eps),
        )
        expect(f"blk.{i}.dec_post_ffn_norm", load(f"blk.{i}.dec_post_ffn_norm"), rms_norm(load(f"blk.{i}.dec_ffn_out"), blk("post_ffw_norm"), eps))
    cap = config["final_logit_softcapping"]
    expect("logits", load("logits"), cap * np.tanh(load("final_norm") @ w["token_embd.weight"].T / cap))
    return expect.worst


def check_phi3(rel, folder, w, config, fail, tol=1e-5):
    """A Phi-3 dump against float64 numpy of the GGUF's tensors `w`: q, k, v as the slices of the
    fused attn_qkv rows, the FFN from the fused ffn_up rows (gate, then up), the untied logits.
    Returns the worst relative RMS."""
    load, expect = Dump(folder), Expect(rel, fail, tol)

    h, kv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["hidden_size"] // config["num_attention_heads"]
    ffn = config["intermediate_size"]
    for i in range(config["num_hidden_layers"]):
        blk = lambda name: w[f"blk.{i}.{name}.weight"]  # noqa: E731
        qkv = load(f"blk.{i}.attn_norm") @ blk("attn_qkv").T
        for name, part in (("q", qkv[:, : h * hd]), ("k", qkv[:, h * hd : (h + kv) * hd]), ("v", qkv[:, (h + kv) * hd :])):
            expect(f"blk.{i}.{name}", load(f"blk.{i}.{name}"), part)
        gate_up = load(f"blk.{i}.ffn_norm") @ blk("ffn_up").T
        expect(f"blk.{i}.ffn_out", load(f"blk.{i}.ffn_out"), (silu(gate_up[:, :ffn]) * gate_up[:, ffn:]) @ blk("ffn_down").T)
    expect("logits", load("logits"), load("final_norm") @ w["output.weight"].T)
    return expect.worst

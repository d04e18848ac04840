"""What the tinygrad decoders share: tinygrad's model module (imported with its missing AMD kernels
filled in) and the forward over the fixed-capacity KV cache (attention.py), as one base class.

A decoder (llama.py, gemma2.py, phi3.py) sets `n_layers`, `n_kv`, `hd`, `rope_dim` and `freqs`
(tinygrad's RoPE table, as numpy) and defines `_forward(tokens, freqs, mask, row, *masks, tap, n_ctx)`;
`masks` are the extra additive masks of `extra_masks` (Gemma-2's sliding window), data like the
causal one so the TinyJit-captured decode step replays unchanged.
"""

import sys
import types

from attention import KVCache
from tinygrad import Tensor, TinyJit, dtypes, nn


def import_model():
    """Imports tinygrad.llm.model, filling in `tinygrad.llm.kernels.amd` when the wheel lacks it.

    The tinygrad 0.14.0 wheel ships tinygrad/llm/model.py but not the tinygrad/llm/kernels package it
    imports. That module's `Linear` is `nn.Linear` everywhere but on RDNA3 GPUs (its custom kernels are
    gated by `amd_custom_kernels_supported`), so on the CPU device plain `nn.Linear` with the check
    answering False is the same computation.
    """
    try:
        import tinygrad.llm.kernels.amd  # noqa: F401
    except ModuleNotFoundError:

        def _amd_only(*_args, **_kwargs):
            raise RuntimeError("tinygrad.llm.kernels.amd is missing from this tinygrad install; its AMD kernels cannot run")

        kernels = types.ModuleType("tinygrad.llm.kernels")
        amd = types.ModuleType("tinygrad.llm.kernels.amd")
        amd.Linear = nn.Linear
        amd.amd_custom_kernels_supported = lambda device: False
        amd.gated_delta_prefill = amd.flash_attention = _amd_only
        kernels.amd = amd
        sys.modules["tinygrad.llm.kernels"] = kernels
        sys.modules["tinygrad.llm.kernels.amd"] = amd
    import tinygrad.llm.model as model

    return model


class CachedDecoder:
    """The forward of a decoder over the KV cache; subclasses hold the model and its `_forward`."""

    def reset_cache(self, capacity):
        """An empty KV cache for `capacity` positions (prompt + generated tokens)."""
        self.cache = KVCache(self.n_layers, self.n_kv, self.hd, capacity)
        self._decode = TinyJit(lambda *inputs: self._forward(*inputs).realize())

    def extra_masks(self, start, t):
        """Masks beside the causal one for positions start..start+t-1 (none unless a subclass says)."""
        return ()

    def _rope(self, x, freqs):
        """x [heads, T, hd]; tinygrad's RoPE on the first rope_dim dims, as tinygrad's block does."""
        rot = self.tg.apply_rope(x[None, :, :, : self.rope_dim], freqs)[0]
        return rot.cat(x[:, :, self.rope_dim :], dim=-1) if self.rope_dim < self.hd else rot

    def forward(self, ids, tap=None):
        """Runs tokens `ids` after the cached ones; returns logits [T, V]. `tap(name, tensor)` sees
        the checkpoints (lazy tensors), the cache and attention over the `start + len(ids)` positions
        written so far. A single token without taps is a TinyJit-replayed decode step."""
        start, t = self.cache.length(), len(ids)
        mask, row = self.cache.step(t)
        # the rows of tinygrad's RoPE table for these positions, as data (see attention.py)
        inputs = (Tensor([ids], dtype=dtypes.int32), Tensor(self.freqs[start : start + t]), mask, row, *self.extra_masks(start, t))
        logits = self._decode(*inputs) if row is not None and tap is None else self._forward(*inputs, tap=tap, n_ctx=start + t)
        self.cache.pos = start + t
        return logits


def load_gguf(path, build):
    """The model `build(metadata)` makes, its weights read from the GGUF by tinygrad's `gguf_load`
    and `load_state_dict`, every tensor widened to float32; the model's attributes carry the GGUF's
    own tensor names (`token_embd`, `blk`, `output_norm`, `output`). A file without `output.weight`
    has its output read from `token_embd.weight` (tied), as tinygrad's `from_gguf` does. Returns
    (model, metadata); a tensor the model has no place for is refused (its computation would be
    missing)."""
    from attention import as_f32
    from tinygrad.llm.gguf import gguf_load

    kv, state = gguf_load(path)
    model = build(kv)
    if "output.weight" not in state:
        state["output.weight"] = state["token_embd.weight"]
    extra = sorted(set(state) - set(nn.state.get_state_dict(model)))
    if extra:
        raise ValueError(f"GGUF tensors {', '.join(extra)} have no place in this {kv['general.architecture']} model")
    state = {name: as_f32(t).contiguous() for name, t in state.items()}
    nn.state.load_state_dict(model, state, strict=True, verbose=False, realize=False)
    Tensor.realize(*nn.state.get_parameters(model))
    return model, kv


def tap_layer(tap, layer, t, n_ctx, xn, q, k, v, qr, kr, k_all, v_all, probs, **rest):
    """Hands block `layer`'s attention taps to `tap` in the catalog's layouts (q_rope/k_rope as
    [T, heads*hd], the cache and probabilities cut to the `n_ctx` positions written), then `rest`
    (name -> [1, T, d] tensor, in order) as [T, d]."""
    for name, val in (
        ("attn_norm", xn[0]),
        ("q", q),
        ("k", k),
        ("v", v),
        ("q_rope", qr.transpose(0, 1).reshape(t, -1)),
        ("k_rope", kr.transpose(0, 1).reshape(t, -1)),
        ("k_cache", k_all[:, :n_ctx]),
        ("v_cache", v_all[:, :n_ctx]),
        ("attn_probs", probs[:, :, :n_ctx]),
        *((name, val[0]) for name, val in rest.items()),
    ):
        tap(f"blk.{layer}.{name}", val)

"""What the MLX dumper does alike for every family: loading a GGUF into one of mlx-lm's models
(under mlx-lm's names, quantized matrices as MLX's own affine quantization), watching the model's
modules while it runs unchanged, the KV cache, and the attention probabilities MLX never makes.

A module is watched by swapping its class for a subclass whose `__call__` hands the output to a
tap function while a forward with taps is running; it computes exactly as before, and every
attribute (`as_linear` included) is kept.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import KVCache


def meta_value(meta, key, default=None):
    """A GGUF metadata value as plain Python (mx.load gives numbers as MLX scalars)."""
    value = meta.get(key, default)
    if isinstance(value, mx.array):
        return value.item() if value.size == 1 else value.tolist()
    return value


def mlx_names(gguf, family, blocks, per_block, globals_):
    """The GGUF tensors under mlx-lm's names: `blk.L.<name>` as `<blocks>.L.<per_block[name]>`, the
    rest by `globals_`; a tensor with no place in the model (an untied GPT-2 head, say) is refused."""
    out = {}
    for key, value in gguf.items():
        stem, part = key.rsplit(".", 1)
        if stem.startswith("blk."):
            _, layer, name = stem.split(".", 2)
            target = f"{blocks}.{layer}.{per_block[name]}" if name in per_block else None
        else:
            target = globals_.get(stem)
        if target is None:
            raise ValueError(f"GGUF tensor {key} has no place in mlx-lm's {family}")
        out[f"{target}.{part}"] = value
    return out


def quantization(weights):
    """MLX's (group size, bits) per quantized matrix: GGUF's quantized blocks are 32 wide, one
    scale each, so a row of G scales packs G * 32 values into its uint32 words, bits = words / G."""
    found = {}
    for key, scales in weights.items():
        if key.endswith(".scales"):
            prefix = key.removesuffix(".scales")
            found[prefix] = (32, weights[f"{prefix}.weight"].shape[-1] // scales.shape[-1])
    return found


def load_into(model, weights):
    """`weights` (mlx-lm names) into `model`: matrices with scales become MLX-quantized layers of
    the GGUF's group size and bits, float16 is widened to float32 (exact); every parameter must
    find its place and every place a parameter."""
    weights = {k: v.astype(mx.float32) if v.dtype in (mx.float16, mx.bfloat16) else v for k, v in weights.items()}
    quantized = quantization(weights)
    nn.quantize(
        model, class_predicate=lambda path, _: path in quantized and {"group_size": quantized[path][0], "bits": quantized[path][1], "mode": "affine"}
    )
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())


class Watched:
    """One of mlx-lm's models, loaded and watched; subclasses say which module is which checkpoint."""

    def __init__(self, model, n_layers, n_heads, n_kv, hd, context):
        self.model, self.n_layers, self.n_heads, self.n_kv, self.hd, self.context = model, n_layers, n_heads, n_kv, hd, context
        self.cache = None
        self.taps = None
        self.heads = {}  # layer -> the queries [H, T, hd] the attention read, for the probabilities

    def watch(self, module, taps_of, of_input=False):
        """`taps_of(output)` -> {key: array} (or `taps_of(first input)` with `of_input`) is recorded
        whenever `module` runs inside a tapped forward."""
        base, owner = type(module), self

        def __call__(self, *args, **kwargs):
            out = base.__call__(self, *args, **kwargs)
            if owner.taps is not None:
                owner.taps.update(taps_of(args[0] if of_input else out))
            return out

        module.__class__ = type(f"Watched{base.__name__}", (base,), {"__call__": __call__})

    def reset_cache(self):
        self.cache = [KVCache() for _ in range(self.n_layers)]

    def forward(self, ids, tap=None):
        """Runs tokens `ids` after the cached ones through mlx-lm's model; returns logits [T, V] as
        numpy. With `tap`, it gets every checkpoint as a numpy array, the caches and attention over
        all positions written so far."""
        start = self.cache[0].offset
        self.taps, self.heads = ({} if tap else None), {}
        logits = self.model(mx.array([ids], dtype=mx.int32), cache=self.cache)[0]
        mx.eval(logits)
        if tap:
            n_ctx = start + len(ids)
            for i, c in enumerate(self.cache):
                k, v = c.keys[0, :, :n_ctx, :], c.values[0, :, :n_ctx, :]
                self.taps[f"blk.{i}.k_cache"] = k
                self.taps[f"blk.{i}.v_cache"] = v
                self.taps[f"blk.{i}.attn_probs"] = self.probs(self.heads[i], k, start, i)
            mx.eval(list(self.taps.values()))
            for name, value in self.taps.items():
                tap(name, np.array(value, copy=True))
        self.taps = None
        return np.array(logits, copy=True)

    def probs(self, q, k, start, layer):
        """Ours, on MLX ops: softmax(q k^T / sqrt(hd)) over the positions each query may see. q is
        [H, T, hd] (the queries mlx-lm's attention read), k [KV, start+T, hd] (its cache) of block
        `layer` (the same in every block here; Gemma-2's differ: gemma2.py); query head h reads key
        head h // (H / KV), as mlx-lm's attention does."""
        keys = mx.repeat(k, self.n_heads // self.n_kv, axis=0)
        scores = (q @ keys.swapaxes(-1, -2)) * (self.hd**-0.5)
        t, n = q.shape[1], k.shape[1]
        visible = mx.arange(n)[None, :] <= (start + mx.arange(t))[:, None]
        return mx.softmax(mx.where(visible, scores, -mx.inf), axis=-1)


def rows(heads):
    """[1, H, T, hd] as the catalog's [T, H*hd]."""
    return heads[0].transpose(1, 0, 2).reshape(heads.shape[2], -1)

"""The float64 truth's replacements for what transformers computes in float32 whatever the dtype.

transformers' decoder families (Llama, Qwen2, Qwen3, Gemma-2, Phi-3: family.Family) do three
things in float32 even in a float64 model: their RMSNorm upcasts its input to float32 (Gemma-2's
also its (1 + weight)), their rotary embedding builds inv_freq, the angles and cos/sin in float32,
and their eager attention takes its softmax in float32 (Gemma-2's soft-caps the scores first, in
the model's dtype, and so does ours). Gemma-2 also keeps its embedding scale sqrt(d) as a float32
buffer, replaced by sqrt(d) in float64. `computing_in` replaces these, for the run, by the float64
code here, and runs the forward under `dtype_guard`, which fails the dump if any floating-point op
still reads or writes another dtype. GPT-2 needs no replacement (its LayerNorm and softmax run in
the model's dtype); nor do Gemma-2's tanh GELU and final logit soft-cap, which run in the model's
dtype (the guard checks that).

RoPE frequencies: plain RoPE (theta^(-2i/hd)); Llama-3's frequency scaling from an HF config
(rope_type `llama3`: per-pair divisors 1 for wavelengths under original_context / high_freq_factor,
`factor` above original_context / low_freq_factor, and in between the divisor whose reciprocal
interpolates linearly in original_context / wavelength); and per-pair divisors given as a list
(rope_type `longrope` with equal short and long factors and no attention factor: how the PyTorch
dumper hands transformers a GGUF's `rope_freqs` tensor). Anything else, and partial rotary
embeddings, are refused, not left in float32.
"""

import math
from contextlib import contextmanager

from dumpkit import DumpError


def float64_rms_norm(norm, plus_one=False):
    """An RMSNorm's forward in its input's dtype (transformers' own upcasts the input to float32).
    With `plus_one` (Gemma-2) it scales by (1 + weight) and its epsilon is `norm.eps`."""

    if plus_one:

        def forward(x):
            return (x * (x * x).mean(-1, keepdim=True).add(norm.eps).rsqrt()) * (1.0 + norm.weight)

        return forward

    def forward(x):
        return norm.weight * (x * (x * x).mean(-1, keepdim=True).add(norm.variance_epsilon).rsqrt())

    return forward


def rope_divisors(params, inv_freq, head_dim):
    """The per-pair divisors of the RoPE frequencies `inv_freq` (float64, [hd/2]) that
    `params` (a config's rope_parameters) asks for, as a float64 tensor; None for plain RoPE."""
    import torch

    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        return None
    if rope_type == "llama3":
        factor, low, high = (float(params[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
        context = float(params["original_max_position_embeddings"])
        wavelength = 2 * math.pi / inv_freq
        s = (context / wavelength - low) / (high - low)  # 0 at context/low, 1 at context/high
        between = 1 / ((1 - s) / factor + s)
        kept, scaled = wavelength < context / high, wavelength > context / low
        return torch.where(kept, torch.ones_like(inv_freq), torch.where(scaled, torch.full_like(inv_freq, factor), between))
    if rope_type == "longrope":
        short, long = params.get("short_factor"), params.get("long_factor")
        if short is None or list(short) != list(long or []) or float(params.get("attention_factor", 0.0)) != 1.0:
            raise DumpError("RoPE type 'longrope' with distinct short/long factors or an attention factor: the float64 dumper does not rebuild it")
        if len(short) != head_dim // 2:
            raise DumpError(f"RoPE factors: {len(short)} given for {head_dim // 2} frequency pairs")
        return torch.tensor([float(f) for f in short], dtype=torch.float64)
    raise DumpError(f"RoPE type {rope_type!r}: the float64 dumper rebuilds plain, llama3 and per-pair-factor RoPE only")


def float64_rope(rotary, config):
    """A rotary embedding's forward with inv_freq, the angles and cos/sin in float64.

    transformers' builds inv_freq in float32 and computes the angles and cos/sin in float32 (then
    casts them to the model's dtype), so a float64 model would rotate by float32-rounded angles.
    """
    import torch

    params = dict(getattr(config, "rope_parameters", None) or {})
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise DumpError(f"partial RoPE (factor {params['partial_rotary_factor']}): the float64 dumper rotates whole heads only")
    if rotary.attention_scaling != 1.0:
        raise DumpError(
            f"RoPE type {params.get('rope_type')!r} scales cos/sin by {rotary.attention_scaling}: the float64 dumper does not rebuild that"
        )
    if "rope_theta" not in params:
        raise DumpError("the model config has no rope_parameters.rope_theta: the float64 RoPE does not guess a base")
    theta = float(params["rope_theta"])
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    # theta^(-2i/hd) for i < hd/2, the frequency of pair (i, i + hd/2) in HF's rotate-half layout.
    inv_freq = torch.pow(torch.tensor(theta, dtype=torch.float64), -torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    divisors = rope_divisors(params, inv_freq, head_dim)
    if divisors is not None:
        inv_freq = inv_freq / divisors

    def forward(x, position_ids):
        angles = position_ids.to(torch.float64)[..., None] * inv_freq  # [B, T, hd/2]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    return forward


def float64_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **_kwargs):
    """Eager attention with the softmax in the scores' dtype (transformers' decoder families take it
    in float32). Gemma-2 passes `softcap`: the scaled scores become softcap * tanh(scores / softcap)
    before the mask, as in its own. A sliding window, where a model has one, is already in
    `attention_mask`.

    query [B, H, T, hd], key/value [B, KV, S, hd]; returns the output [B, T, H, hd] and the probabilities.
    """
    import torch

    groups = query.shape[1] // key.shape[1]  # query head h reads key/value head h // groups
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def dtype_guard(dtype):
    """A torch dispatch mode that lists every op reading or writing a floating-point tensor of
    another dtype than `dtype`: the check that nothing inside transformers fell back to float32."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Guard(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.offenders = {}  # op name -> the other dtypes it touched

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
                    self.offenders.setdefault(str(func), set()).add(str(t.dtype).removeprefix("torch."))
            return out

    return Guard()


@contextmanager
def computing_in(model, family, dtype):
    """The model's forward passes in `dtype`: as they are for float32; for float64, with the
    family's float32 pieces replaced by our float64 ones and every op checked by `dtype_guard`."""
    import torch

    if dtype == "float32":
        yield
        return
    patched = []  # (module, attribute, original) to put back
    if family.rms_norm is not None:
        norm_class = family.rms_norm_class()
        for m in model.modules():
            if isinstance(m, norm_class):
                patched.append((m, "forward", None))
                m.forward = float64_rms_norm(m, plus_one=family.norm_plus_one)
    if family.embed_scale:
        # transformers keeps sqrt(d) as a float32 buffer (cast with the model, but rounded to
        # float32 first): ours is sqrt(d) in float64.
        embed = model.model.embed_tokens
        patched.append((embed, "embed_scale", embed.embed_scale))
        embed.embed_scale = torch.tensor(math.sqrt(model.config.hidden_size), dtype=getattr(torch, dtype))
    if family.rope:
        rotary = model.model.rotary_emb
        patched.append((rotary, "forward", None))
        rotary.forward = float64_rope(rotary, model.config)
    if family.float32_softmax:
        modeling = family.module()
        patched.append((modeling, "eager_attention_forward", modeling.eager_attention_forward))
        modeling.eager_attention_forward = float64_eager_attention
    guard = dtype_guard(getattr(torch, dtype))
    try:
        with guard:
            yield
    finally:
        for owner, name, original in reversed(patched):
            if original is None:
                delattr(owner, name)  # the instance attribute goes, the class's forward is back
            else:
                setattr(owner, name, original)
    if guard.offenders:
        ops = "; ".join(f"{op} ({', '.join(sorted(d))})" for op, d in sorted(guard.offenders.items()))
        raise DumpError(f"not every op ran in {dtype}: {ops}")

"""Dumps the checkpoint catalog from MLX (Apple's array framework, its CPU build) running mlx-lm's
own model code, in float32 (quantized GGUF types stay MLX-quantized).

    ~/.cache/parity/venv-mlx/bin/python references/mlx/dump.py --model M.gguf --prompt TEXT --out DIR

GGUF Llama (2 and 3), Qwen2, Qwen3, Gemma-2, Phi-3 and GPT-2, through mlx-lm's models (llama.py,
qwen.py, gemma2.py, phi3.py, gpt2.py, watched by watch.py). It runs in its own
environment, $PARITY_CACHE/venv-mlx (references/mlx/requirements.txt). Prompt ids come from our
GGUF tokenizer (references/tinygrad/gguf_tokenizer.py, pure Python), as for tinygrad, matching
llama.cpp. `step_logits` and `generated` feed one token at a time through mlx-lm's KVCache; at
the chosen decode steps that step's taps go to dumpkit.DecodeTaps. Samplers: mlx-lm's own
`apply_top_k` and `apply_top_p` on the tempered log-probabilities, in the catalog's order; `probs`
is a float64 numpy softmax of MLX's logits (see docs/references.md for why). What
is ours and what is MLX's is in llama.py and checkpoints/provenance.toml. The contract is
references/common/dumpkit.py.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "common"))
sys.path.insert(0, str(HERE.parent / "tinygrad"))  # gguf_tokenizer.py only: no tinygrad import
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from dumpkit import EXIT_USAGE, DecodeTaps, Dump, DumpError, decode, main, sample_catalog  # noqa: E402

GGUF_MAGIC = b"GGUF"


def run(args):
    from importlib.metadata import version

    import mlx.core as mx
    from watch import meta_value

    model_path = Path(args.model)
    if model_path.is_dir():
        raise DumpError(f"{model_path} is a folder; the MLX dumper reads GGUF files only", EXIT_USAGE)
    with open(model_path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise DumpError(f"{model_path} is not a GGUF file (the MLX dumper reads GGUF only)", EXIT_USAGE)
    mx.set_default_device(mx.cpu)
    try:
        _, meta = mx.load(str(model_path), return_metadata=True)
    except (RuntimeError, ValueError) as e:
        raise DumpError(f"cannot read {model_path}: {e}", EXIT_USAGE)
    arch = meta.get("general.architecture")
    if arch == "llama":
        from llama import Llama

        model = Llama(str(model_path))
    elif arch in ("qwen2", "qwen3"):
        from qwen import Qwen

        model = Qwen(str(model_path), arch)
    elif arch == "gemma2":
        from gemma2 import Gemma2

        model = Gemma2(str(model_path))
    elif arch == "phi3":
        from phi3 import Phi3

        model = Phi3(str(model_path))
    elif arch == "gpt2":
        from gpt2 import Gpt2

        model = Gpt2(str(model_path))
    else:
        raise DumpError(f"architecture {arch!r} is not supported by the MLX dumper (llama, qwen2, qwen3, gemma2, phi3, gpt2)")
    from gguf_tokenizer import Tokenizer, TokenizerError

    try:
        ids = Tokenizer(_tokenizer_kv(meta)).encode(args.prompt)
    except TokenizerError as e:
        raise DumpError(str(e))
    if not ids:
        raise DumpError("the prompt gives no tokens", EXIT_USAGE)
    if len(ids) + args.n_generate > model.context:
        raise DumpError(f"{len(ids)} prompt + {args.n_generate} generated tokens exceed the context of {model.context}", EXIT_USAGE)

    model.reset_cache()
    dump = Dump("mlx", f"{version('mlx')} (mlx-lm {version('mlx-lm')})", args, arch, model.n_layers)
    dump.put("tokens", np.array(ids))
    logits = model.forward(ids, dump.put)
    dump.put("logits", logits)
    last = logits[-1]
    dump.put("last_logits", last)
    dump.put("argmax", np.array(int(np.argmax(last))))  # the first maximum: ties go to the lowest id
    # Not mx.softmax: MLX's CPU reduction sums the vocabulary's exponentials one after another in
    # f32 (1.4e-4 off on SmolLM2), the defect the engine once had; in float64 here, as llama.cpp's.
    scaled = last.astype(np.float64) / args.temperature
    e = np.exp(scaled - scaled.max())
    dump.put("probs", e / e.sum())

    sizes = dict(d=meta_value(meta, f"{arch}.embedding_length"), H=model.n_heads, KV=model.n_kv, hd=model.hd)
    decode_taps = DecodeTaps(len(ids), args.n_generate, sizes)

    def feed(token, step):
        keep = (lambda name, a: decode_taps.keep(step, name, a) if name.startswith("blk.") else None) if decode_taps.wants(step) else None
        return model.forward([token], keep)[-1]

    step_logits, generated = decode(last, feed, args.n_generate, args.force_tokens)
    decode_taps.put_into(dump)
    dump.put("step_logits", step_logits)
    dump.put("generated", generated)
    sample_catalog(dump, last, mlx_distribution)
    return dump


def _tokenizer_kv(meta):
    """The GGUF's tokenizer metadata as plain Python values, as gguf_tokenizer.Tokenizer reads it."""
    import mlx.core as mx

    out = {}
    for key, value in meta.items():
        if key.startswith("tokenizer.") or key == "general.architecture":
            out[key] = value.tolist() if isinstance(value, mx.array) else value
    return out


def mlx_distribution(logits, temperature, top_k, top_p):
    """mlx-lm's own cuts (`apply_top_k`, `apply_top_p`) on the tempered log-probabilities, in the
    catalog's order (temperature, top-k, top-p), then renormalised by MLX's softmax."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_top_k, apply_top_p

    z = mx.array(logits) / temperature
    logprobs = z - mx.logsumexp(z)
    if 0 < top_k < logprobs.shape[-1]:
        logprobs = apply_top_k(logprobs, top_k)
    if top_p < 1.0:
        logprobs = apply_top_p(logprobs, top_p)
    return np.array(mx.softmax(logprobs), copy=True)


if __name__ == "__main__":
    main("mlx", run)

"""Dumps the checkpoint catalog from tinygrad, on its CPU device, in float32.

    ~/.cache/parity/venv/bin/python references/tinygrad/dump.py --model M.gguf --prompt TEXT --out DIR

GGUF only. Llama (2 and 3), Qwen2 and Qwen3 run through tinygrad's own
`tinygrad.llm.model.Transformer` (llama.py); Gemma-2 and Phi-3 through blocks of ours built from
tinygrad's modules and ops (gemma2.py, phi3.py); GPT-2 through our forward pass on tinygrad
Tensors (gpt2.py). Prompt ids come from the GGUF vocabulary
(gguf_tokenizer.py), matching llama.cpp. `step_logits` and `generated` feed one token at a time
through the models' KV cache (a TinyJit-replayed decode step): the greedy tokens, or the
--force-tokens history. At the chosen decode steps (dumpkit.decode_steps) that one-token step runs
un-replayed with its taps on, over the same fixed-capacity cache, and its layer taps (the cache and
attention row cut to the T+t positions written) go to dumpkit.DecodeTaps for `decode_layers`. The
contract is references/common/dumpkit.py.
"""

import os
import sys
from pathlib import Path

# Before tinygrad is imported: its CPU device, and the GGUF weights kept in their own types
# (tinygrad's loader casts them to float16 unless HALF=0).
os.environ.setdefault("DEV", "CPU")
os.environ["HALF"] = "0"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "common"))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from dumpkit import EXIT_USAGE, DecodeTaps, Dump, DumpError, decode, main, sample_catalog  # noqa: E402

GGUF_MAGIC = b"GGUF"


def gguf_architecture(path):
    """Reads `general.architecture` from the GGUF header without loading the tensors."""
    from tinygrad.llm.gguf import read_int32, read_int64, read_str, readers

    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise DumpError(f"{path} is not a GGUF file (tinygrad's dumper reads GGUF only)", EXIT_USAGE)
        read_int32(f)
        read_int64(f)
        for _ in range(read_int64(f)):
            key, typ = read_str(f), read_int32(f)
            value = readers[typ](f)
            if key == "general.architecture":
                return value
    raise DumpError(f"{path} has no general.architecture", EXIT_USAGE)


def load_model(path, arch):
    from llama import ARCHS, Llama

    if arch in ARCHS:
        return Llama(path)
    if arch == "gemma2":
        from gemma2 import Gemma2

        return Gemma2(path)
    if arch == "phi3":
        from phi3 import Phi3

        return Phi3(path)
    if arch == "gpt2":
        from gpt2 import Gpt2

        return Gpt2(path)
    raise DumpError(f"architecture {arch!r} is not supported ({', '.join(ARCHS)}, gemma2, phi3, gpt2)")


def run(args):
    from importlib.metadata import version

    from gguf_tokenizer import Tokenizer, TokenizerError
    from tinygrad import Tensor

    model_path = Path(args.model)
    if model_path.is_dir():
        raise DumpError(f"{model_path} is a folder; tinygrad's dumper reads GGUF files only", EXIT_USAGE)
    try:
        arch = gguf_architecture(model_path)
    except (OSError, UnicodeDecodeError, KeyError, ValueError) as e:
        raise DumpError(f"cannot read {model_path}: {e}", EXIT_USAGE)
    model = load_model(str(model_path), arch)
    try:
        ids = Tokenizer(model.kv).encode(args.prompt)
    except TokenizerError as e:
        raise DumpError(str(e))
    if not ids:
        raise DumpError("the prompt gives no tokens", EXIT_USAGE)
    context = model.kv[f"{arch}.context_length"]
    if len(ids) + args.n_generate > context:
        raise DumpError(f"{len(ids)} prompt + {args.n_generate} generated tokens exceed the context of {context}", EXIT_USAGE)

    model.reset_cache(len(ids) + args.n_generate)
    dump = Dump("tinygrad", version("tinygrad"), args, arch, model.n_layers)
    dump.put("tokens", np.array(ids))

    taps = {}
    logits = model.forward(ids, lambda name, t: taps.__setitem__(name, t))
    Tensor.realize(logits, *taps.values())
    for name, t in taps.items():
        dump.put(name, t.numpy())
    logits_np = logits.numpy()
    dump.put("logits", logits_np)
    last = logits_np[-1]
    dump.put("last_logits", last)
    first = int(np.argmax(last))  # the first maximum: ties go to the lowest id
    dump.put("argmax", np.array(first))
    dump.put("probs", (Tensor(last) / args.temperature).softmax().numpy())

    heads = model.n_heads
    sizes = dict(d=model.kv[f"{arch}.embedding_length"], H=heads, KV=getattr(model, "n_kv", heads), hd=model.hd)
    decode_taps = DecodeTaps(len(ids), args.n_generate, sizes)

    def feed(token, step):
        """One token through the KV cache: the TinyJit-replayed decode step, or at a chosen decode
        step the same computation run with its taps (not replayed, so the taps can be read)."""
        seen = {}
        out = model.forward([token], seen.__setitem__ if decode_taps.wants(step) else None)
        Tensor.realize(out, *seen.values())
        model.cache.realize()
        for name, t in seen.items():
            if name.startswith("blk."):
                decode_taps.keep(step, name, t.numpy())
        return out.numpy()[-1]

    step_logits, generated = decode(last, feed, args.n_generate, args.force_tokens)
    decode_taps.put_into(dump)
    dump.put("step_logits", step_logits)
    dump.put("generated", generated)
    sample_catalog(dump, last, tinygrad_distribution)
    return dump


def tinygrad_distribution(logits, temperature, top_k, top_p):
    """The catalog's sampler (tinygrad has no sampler of its own): the tempered softmax in tinygrad,
    then the cuts in numpy, in f32 (tinygrad's sort and topk over a 49,152-token vocabulary take
    seconds each on its CPU device): the k largest logits kept (ties to the lowest id), the softmax
    of those, the most likely tokens kept while the mass before them is under p, renormalised."""
    from tinygrad import Tensor

    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    order = np.argsort(-z, kind="stable")
    kept = order[:top_k] if top_k > 0 else order
    probs = np.zeros_like(z)
    probs[kept] = Tensor(z[kept]).softmax().numpy()
    if top_p < 1.0:
        ranked = probs[kept]
        before = np.cumsum(ranked, dtype=np.float32) - ranked
        probs[kept[before >= top_p]] = 0.0
        probs /= probs.sum(dtype=np.float32)
    return probs


if __name__ == "__main__":
    main("tinygrad", run)

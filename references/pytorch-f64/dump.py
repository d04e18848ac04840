"""The float64 ground truth: the PyTorch reference (references/pytorch/dump.py) computing in float64.

    ~/.cache/parity/venv/bin/python references/pytorch-f64/dump.py --model FILE_OR_HF_DIR \
        --prompt TEXT --n-generate N --temperature T --out DIR [--threads 2] [--force-tokens IDS]

Same command line, exit codes and tensors as the PyTorch dumper, computed in float64 on the same
weights (loaded as float32, then cast exactly): every op, the KV cache, the `probs` softmax, the
decode steps and their greedy choices (made on the float64 logits), with transformers'
float32-internal pieces of its decoder families, Llama, Qwen2, Qwen3, Gemma-2 and Phi-3 (RMSNorm's
upcast, Qwen3's q/k norms and Gemma-2's (1 + w) norms included; RoPE's float32 frequencies and
angles, Llama-3's scaling included; the float32 attention softmax, after Gemma-2's soft-cap;
Gemma-2's float32 sqrt(d) embedding scale) replaced by float64 ones (references/pytorch/float64.py) and a guard that fails
the dump if any op still runs in another dtype. The .npy files are float32 like every
other dump (the truth rounded once, at the end); the manifest says reference = "pytorch-f64",
dtype = "float64". A suite's `truth` names this reference: every case is also measured against it,
as the yardstick of how far float32 noise goes, not as one more vote in the verdict.

This file only loads references/pytorch/dump.py by its path (it is a `dump` module too, so
`import dump` would find this file) and runs it in float64 under its own name.
"""

import importlib.util
from pathlib import Path

PYTORCH_DUMPER = Path(__file__).resolve().parents[1] / "pytorch" / "dump.py"


def pytorch_dumper():
    """references/pytorch/dump.py as a module."""
    spec = importlib.util.spec_from_file_location("parity_pytorch_dump", PYTORCH_DUMPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    pytorch_dumper().cli("pytorch-f64", "float64")

"""Makes the long-context fixture `fixtures/models/tiny-llama-8k/model-f32.gguf`, deterministically.

    ~/.cache/parity/venv/bin/python scripts/make-long-context.py

It is tiny-llama's F32 GGUF (scripts/make-fixtures.py: 2 layers, d=64, RoPE theta 10000, vocab
449) byte for byte, but for one metadata value: `llama.context_length` 8192 instead of 128, so
`parity sweep` can take positions past 4,096 on a RoPE model in seconds. The weights were never
trained on any context: a model of seeded random weights has no trained length to stay inside,
and RoPE itself is defined at every position.
"""

import shutil
import sys
from pathlib import Path

from gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "fixtures/models/tiny-llama/model-f32.gguf"
OUT = ROOT / "fixtures/models/tiny-llama-8k/model-f32.gguf"
CONTEXT = 8192


def main():
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_name(OUT.name + ".tmp")
    shutil.copyfile(SOURCE, tmp)
    reader = GGUFReader(tmp, "r+")
    field = reader.fields.get("llama.context_length")
    if field is None:
        print(f"{SOURCE}: no llama.context_length", file=sys.stderr)
        return 2
    # The value is memory-mapped: writing it changes the copy's bytes in place.
    field.parts[field.data[0]][0] = CONTEXT
    del reader
    tmp.rename(OUT)
    print(f"{OUT.relative_to(ROOT)}: context {CONTEXT}, {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

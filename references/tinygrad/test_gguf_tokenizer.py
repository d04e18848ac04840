"""Checks gguf_tokenizer.py against llama.cpp's ids in fixtures/tokenizer/expected.json. A plain script:

    ~/.cache/parity/venv/bin/python references/tinygrad/test_gguf_tokenizer.py

The spm-tiny and bpe-tiny vocabularies are read from their fixture GGUFs, smollm2's from the SmolLM2
model in the parity cache (its cases are skipped, with a message, when that file is absent).
Exits 0 with a printed reason when tinygrad (whose GGUF reader it uses) is not importable. With
PARITY_REQUIRE_REFERENCES set, either is a failure instead (references/common/testkit.py).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
import testkit  # noqa: E402  (stdlib only: it decides skip or fail when the rest cannot import)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "parity"))
VOCABS = {
    "spm-tiny": ROOT / "fixtures" / "tokenizer" / "spm-tiny" / "spm-tiny.gguf",
    "bpe-tiny": ROOT / "fixtures" / "tokenizer" / "bpe-tiny" / "bpe-tiny.gguf",
    "smollm2": CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
}


def main():
    os.environ.setdefault("DEV", "CPU")
    sys.path.insert(0, str(HERE))
    try:
        from tinygrad.llm.gguf import gguf_load
    except ImportError as e:
        testkit.cannot_run(f"tinygrad is not importable ({e}); run scripts/setup-references.sh")
    from gguf_tokenizer import Tokenizer

    cases = json.loads((ROOT / "fixtures" / "tokenizer" / "expected.json").read_text())["cases"]
    failures, checked, mismatches = [], 0, 0
    for vocab, path in VOCABS.items():
        missing = testkit.missing_file(path, f"the {vocab} vocabulary; scripts/fetch-models.sh")
        if missing:
            if testkit.REQUIRED:
                failures.append(missing)
            continue
        tok = Tokenizer(gguf_load(str(path))[0])
        for case in (c for c in cases if c["vocab"] == vocab):
            got = tok.encode(case["text"])
            checked += 1
            if got != case["llama_cpp"]:
                mismatches += 1
                failures.append(f"{vocab} {case['text']!r}: {got} != llama.cpp {case['llama_cpp']}")
    for f in failures:
        print("FAIL", f)
    print(f"{checked - mismatches} of {checked} strings tokenize as llama.cpp does")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

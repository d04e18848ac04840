"""Checks gguf_tokenizer.py against llama.cpp's ids in fixtures/tokenizer/expected.json. A plain script:

    ~/.cache/parity/venv/bin/python references/tinygrad/test_gguf_tokenizer.py

The spm-tiny and bpe-tiny vocabularies are read from their fixture GGUFs, smollm2's from the SmolLM2
model in the parity cache (its cases are skipped, with a message, when that file is absent).

The family vocabularies (Llama-3's `llama-bpe`, Qwen2's `qwen2` pre-tokenizer, from the family models
in the parity cache) have no ids in expected.json: every fixture string, every prompt of
checkpoints/suite-families.toml and a word Llama-3 has as one token that its merges never build
(llama.cpp's `ignore_merges`) is checked against llama.cpp's ids computed here (llama-cpp-python,
vocab only, add_bos=True, special=False, as the fixture script does), and one prompt against ids
pinned below, so the check does not rest on llama-cpp-python alone.
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
FAMILY_VOCABS = {
    "llama3": CACHE / "models" / "families" / "llama3" / "model-f32.gguf",
    "qwen2": CACHE / "models" / "families" / "qwen2" / "model-f32.gguf",
}
# A whole Llama-3 token its merge list cannot build: only llama.cpp's ignore_merges gives one id.
UNMERGEABLE = "ilmektedir"
# llama-cpp-python 0.3.36 on the family GGUFs: Llama-3 adds BOS 128000, Qwen2 no BOS.
FAMILY_IDS = json.loads((HERE / "family_prompt_ids.json").read_text())
PINNED = {vocab: {FAMILY_IDS["prompt"]: FAMILY_IDS["ids"][vocab]} for vocab in FAMILY_VOCABS}
PINNED["llama3"][UNMERGEABLE] = [128000, 108577]


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
    family_checked, family_mismatches = check_families(gguf_load, Tokenizer, [c["text"] for c in cases], failures)
    checked, mismatches = checked + family_checked, mismatches + family_mismatches
    for f in failures:
        print("FAIL", f)
    print(f"{checked - mismatches} of {checked} strings tokenize as llama.cpp does")
    return 1 if failures else 0


def check_families(gguf_load, Tokenizer, fixture_strings, failures):
    """The family vocabularies against llama.cpp's ids (computed) and the pinned ids; (checked, mismatches)."""
    import tomllib

    try:
        from llama_cpp import Llama
    except ImportError as e:
        reason = f"llama-cpp-python is not importable ({e}), so the family vocabularies are not checked"
        print(f"FAIL: {reason}, {testkit.FAIL_SUFFIX}" if testkit.REQUIRED else f"skipped: {reason}")
        if testkit.REQUIRED:
            failures.append(reason)
        return 0, 0
    suite = tomllib.loads((ROOT / "checkpoints" / "suite-families.toml").read_text())
    strings = list(dict.fromkeys(fixture_strings + [p["text"] for p in suite["prompt"]] + [UNMERGEABLE]))
    checked = mismatches = 0
    for vocab, path in FAMILY_VOCABS.items():
        missing = testkit.missing_file(path, f"the {vocab} family model; scripts/make-family-models.py")
        if missing:
            if testkit.REQUIRED:
                failures.append(missing)
            continue
        tok = Tokenizer(gguf_load(str(path))[0])
        llama_cpp = Llama(model_path=str(path), vocab_only=True, verbose=False)
        for text in strings:
            want = llama_cpp.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            pinned = PINNED[vocab].get(text)
            if pinned is not None and want != pinned:
                failures.append(f"{vocab} {text!r}: llama-cpp-python gives {want}, not the pinned {pinned}")
            got = tok.encode(text)
            checked += 1
            if got != want:
                mismatches += 1
                failures.append(f"{vocab} {text!r}: {got} != llama.cpp {want}")
    return checked, mismatches


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end checks of the tinygrad dumper on the tiny fixtures. A plain script:

    ~/.cache/parity/venv/bin/python references/tinygrad/test_dump.py

Runs dump.py on each fixture into a temporary folder and checks the manifest and tensors against the
catalog (shapes with T, d, H, KV, hd, V, N taken from the fixtures' HF config.json), the prompt ids
pinned from llama.cpp, attention probabilities (rows sum to 1, causal), and exit code 2 for a
missing model. Exits 0 with a printed reason when tinygrad is not importable, 1 on any failure.
"""

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DUMPER = HERE / "dump.py"
PROMPT = "The quick brown fox jumps over the lazy dog."
N_GENERATE = 4

# Prompt ids from llama-cpp-python 0.3.36 (`Llama.tokenize(text, add_bos=True, special=False)`) on the
# same GGUF files: BOS for the SentencePiece vocabulary, none for GPT-2's byte-level BPE.
FIXTURES = {
    "tiny-llama/model-f32.gguf": [1, 289, 448, 438, 442, 430, 338, 276, 293, 287, 274, 436, 445, 448, 431, 442, 320,
                                  440, 377, 261, 294, 408, 446, 328, 436, 428, 410],
    "tiny-llama/model-f16.gguf": [1, 289, 448, 438, 442, 430, 338, 276, 293, 287, 274, 436, 445, 448, 431, 442, 320,
                                  440, 377, 261, 294, 408, 446, 328, 436, 428, 410],
    "tiny-gpt2/model-f32.gguf": [279, 220, 80, 84, 72, 334, 271, 289, 283, 272, 78, 87, 220, 73, 84, 315, 82, 373, 258,
                                 291, 405, 88, 323, 78, 70, 13],
}


def dims_from_hf_config(model_dir, n_tokens):
    c = json.loads((model_dir / "hf" / "config.json").read_text())
    if c["model_type"] == "gpt2":
        d, h = c["n_embd"], c["n_head"]
        return "gpt2", c["n_layer"], {"d": d, "H": h, "KV": h, "hd": d // h, "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    d, h = c["hidden_size"], c["num_attention_heads"]
    dims = {"d": d, "H": h, "KV": c["num_key_value_heads"], "hd": c.get("head_dim", d // h), "V": c["vocab_size"],
            "T": n_tokens, "N": N_GENERATE}
    return "llama", c["num_hidden_layers"], dims


def expected_shape(spec, dims):
    out = []
    for s in spec:
        value = 1
        for factor in s.split("*"):
            value *= dims[factor]
        out.append(value)
    return out


def run_dumper(model, out):
    cmd = [sys.executable, str(DUMPER), "--model", str(model), "--prompt", PROMPT, "--n-generate", str(N_GENERATE), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)


def check_fixture(rel, pinned, tmp, fail):
    model = ROOT / "fixtures" / "models" / rel
    arch, n_layers, dims = dims_from_hf_config(model.parent, len(pinned))
    out = tmp / rel.replace("/", "-")
    r = run_dumper(model, out)
    if r.returncode != 0:
        fail(f"{rel}: dumper exited {r.returncode}: {r.stderr.strip()}")
        return
    manifest = tomllib.loads((out / "manifest.toml").read_text())
    catalog = tomllib.loads((ROOT / "checkpoints" / "catalog.toml").read_text())
    if manifest["token_ids"] != pinned:
        fail(f"{rel}: token_ids {manifest['token_ids']} != llama.cpp's {pinned}")
    if manifest["arch"] != arch or manifest["n_layers"] != n_layers:
        fail(f"{rel}: arch/n_layers {manifest['arch']}/{manifest['n_layers']} != {arch}/{n_layers}")
    for t in catalog["tensor"]:
        keys = [f"blk.{i}.{t['name']}" for i in range(n_layers)] if t["scope"] == "layer" else [t["name"]]
        for key in keys:
            entry = manifest["tensors"].get(key, {})
            if arch not in t.get("arch", [arch]):
                if "unavailable" not in entry:
                    fail(f"{rel}: {key} should be unavailable for {arch}")
                continue
            if "file" not in entry:
                fail(f"{rel}: {key} missing ({entry.get('unavailable', 'no entry')})")
                continue
            a = np.load(out / entry["file"])
            want = expected_shape(t["shape"], dims)
            if list(a.shape) != want:
                fail(f"{rel}: {key} shape {list(a.shape)} != catalog {t['shape']} = {want}")
            if a.dtype != (np.int64 if t.get("dtype") == "id" else np.float32):
                fail(f"{rel}: {key} dtype {a.dtype}")
            if t.get("dtype") != "id" and not np.isfinite(a).all():
                fail(f"{rel}: {key} has non-finite values")
    tokens = np.load(out / "tokens.npy")
    if tokens.tolist() != pinned:
        fail(f"{rel}: tokens.npy {tokens.tolist()} != {pinned}")
    for i in range(n_layers):
        p = np.load(out / f"blk.{i}.attn_probs.npy")
        if np.abs(p.sum(-1) - 1).max() > 1e-5:
            fail(f"{rel}: blk.{i}.attn_probs rows do not sum to 1 (max error {np.abs(p.sum(-1) - 1).max():.2e})")
        if (np.triu(np.ones(p.shape[-2:], bool), 1)[None] & (p != 0)).any():
            fail(f"{rel}: blk.{i}.attn_probs has non-zero entries above the diagonal (not causal)")
        kc, kr = np.load(out / f"blk.{i}.k_cache.npy"), None
        if arch == "llama":
            kr = np.load(out / f"blk.{i}.k_rope.npy").reshape(dims["T"], dims["KV"], dims["hd"]).transpose(1, 0, 2)
            if not np.array_equal(kc, kr):
                fail(f"{rel}: blk.{i}.k_cache differs from k_rope in [KV, T, hd] order")
    last, logits = np.load(out / "last_logits.npy"), np.load(out / "logits.npy")
    if not np.array_equal(last, logits[-1]):
        fail(f"{rel}: last_logits is not the last row of logits")
    argmax, generated = np.load(out / "argmax.npy"), np.load(out / "generated.npy")
    if argmax.shape != () or int(argmax) != int(np.argmax(last)) or int(generated[0]) != int(argmax):
        fail(f"{rel}: argmax {argmax} / generated[0] {generated[0]} disagree with last_logits' argmax {np.argmax(last)}")
    probs = np.load(out / "probs.npy")
    if abs(float(probs.sum()) - 1) > 1e-5 or int(np.argmax(probs)) != int(argmax):
        fail(f"{rel}: probs sum {probs.sum()} or argmax {np.argmax(probs)} wrong")
    print(f"ok {rel}: {len(pinned)} tokens, generated {generated.tolist()}")


def check_missing_model_exits_2(tmp, fail):
    r = run_dumper(tmp / "no-such-model.gguf", tmp / "missing")
    if r.returncode != 2:
        fail(f"missing model: exit {r.returncode}, expected 2 ({r.stderr.strip()})")
    else:
        print("ok missing model exits 2")


def main():
    try:
        import tinygrad  # noqa: F401
    except ImportError as e:
        print(f"skipped: tinygrad is not importable ({e}); run scripts/setup-references.sh")
        return 0
    failures = []
    with tempfile.TemporaryDirectory(prefix="tinygrad-dump-test-") as d:
        tmp = Path(d)
        for rel, pinned in FIXTURES.items():
            check_fixture(rel, pinned, tmp, failures.append)
        check_missing_model_exits_2(tmp, failures.append)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

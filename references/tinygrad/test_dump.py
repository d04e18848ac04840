"""End-to-end checks of the tinygrad dumper on the tiny fixtures. A plain script:

    ~/.cache/parity/venv/bin/python references/tinygrad/test_dump.py

Runs dump.py on each fixture into a temporary folder and checks the manifest and tensors against the
catalog (shapes with T, d, H, KV, hd, V, N taken from the fixtures' HF config.json), the prompt ids
pinned from llama.cpp, attention probabilities (rows sum to 1, causal), the decode steps (greedy,
and with --force-tokens on the f32 files) against a prompt forward of the prompt plus the history
before each step, and exit code 2 for a missing model or a wrong-length --force-tokens. Exits 0 with a printed reason when tinygrad or numpy is not importable (1 when PARITY_REQUIRE_REFERENCES
is set: references/common/testkit.py), 1 on any failure.
"""

import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
import testkit  # noqa: E402  (stdlib only: it decides skip or fail when the rest cannot import)

try:
    import numpy as np
except ImportError as e:
    testkit.cannot_run(f"numpy is not importable ({e}); run scripts/setup-references.sh")

# As dump.py, before tinygrad is imported: the CPU device, the GGUF weights in their own types.
os.environ.setdefault("DEV", "CPU")
os.environ["HALF"] = "0"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parents[1]
DUMPER = HERE / "dump.py"
PROMPT = "The quick brown fox jumps over the lazy dog."
N_GENERATE = 4

# Prompt ids from llama-cpp-python 0.3.36 (`Llama.tokenize(text, add_bos=True, special=False)`) on the
# same GGUF files: BOS for the SentencePiece vocabulary, none for GPT-2's byte-level BPE.
LLAMA_IDS = [1, 289, 448, 438, 442, 430, 338, 276, 293, 287, 274, 436, 445, 448, 431, 442, 320, 440, 377, 261, 294, 408, 446, 328, 436, 428, 410]
GPT2_IDS = [279, 220, 80, 84, 72, 334, 271, 289, 283, 272, 78, 87, 220, 73, 84, 315, 82, 373, 258, 291, 405, 88, 323, 78, 70, 13]
FIXTURES = {"tiny-llama/model-f32.gguf": LLAMA_IDS, "tiny-llama/model-f16.gguf": LLAMA_IDS, "tiny-gpt2/model-f32.gguf": GPT2_IDS}


def dims_from_hf_config(model_dir, n_tokens):
    c = json.loads((model_dir / "hf" / "config.json").read_text())
    if c["model_type"] == "gpt2":
        d, h = c["n_embd"], c["n_head"]
        return "gpt2", c["n_layer"], {"d": d, "H": h, "KV": h, "hd": d // h, "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    d, h = c["hidden_size"], c["num_attention_heads"]
    dims = {"d": d, "H": h, "KV": c["num_key_value_heads"], "hd": c.get("head_dim", d // h), "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    return "llama", c["num_hidden_layers"], dims


# A decode history unlike each f32 fixture's own greedy one (checked), fed with --force-tokens.
FORCED = [300, 7, 42, 128]


def run_dumper(model, out, force_tokens=None):
    cmd = [sys.executable, str(DUMPER), "--model", str(model), "--prompt", PROMPT, "--n-generate", str(N_GENERATE), "--out", str(out)]
    if force_tokens is not None:
        cmd += ["--force-tokens", ",".join(map(str, force_tokens))]
    return subprocess.run(cmd, capture_output=True, text=True)


def prefill_logits(model, ids):
    """Our tinygrad model's forward of `ids` as one prompt from an empty cache: logits [len(ids), V].
    Causal, so row i is the last row of a forward of ids[: i + 1]; one forward serves every step
    (each new length would compile new kernels)."""
    model.reset_cache(len(ids))
    return model.forward(ids).numpy()


def relative_rms(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))


def check_decode_steps(rel, arch, out, tmp, fail):
    """step_logits and generated of a dump, greedy and (f32 files) forced on FORCED: row 0 is
    last_logits, generated the rows' argmax, and each row within 1e-4 of a prompt forward of the
    prompt plus the history before it, in a separately loaded model."""
    import dump

    model_path = ROOT / "fixtures" / "models" / rel
    runs = [("greedy", out, None)]
    if rel.endswith("-f32.gguf"):
        forced_out = tmp / (rel.replace("/", "-") + "-forced")
        r = run_dumper(model_path, forced_out, force_tokens=FORCED)
        if r.returncode != 0:
            fail(f"{rel}: dumper --force-tokens exited {r.returncode}: {r.stderr.strip()}")
            return
        runs.append(("forced", forced_out, FORCED))
    model = dump.load_model(str(model_path), arch)
    for label, d, forced in runs:
        steps, generated, tokens = np.load(d / "step_logits.npy"), np.load(d / "generated.npy").tolist(), np.load(d / "tokens.npy").tolist()
        manifest = tomllib.loads((d / "manifest.toml").read_text())
        if manifest.get("force_tokens") != forced:
            fail(f"{rel} {label}: manifest force_tokens {manifest.get('force_tokens')} != {forced}")
        if steps.shape[0] != N_GENERATE or not np.array_equal(steps[0], np.load(d / "last_logits.npy")):
            fail(f"{rel} {label}: step_logits row 0 is not last_logits")
        if generated != np.argmax(steps, axis=1).tolist():
            fail(f"{rel} {label}: generated {generated} != the step rows' argmax {np.argmax(steps, axis=1).tolist()}")
        history = forced if forced is not None else generated
        if forced is not None and generated[:-1] == forced[:-1]:
            fail(f"{rel}: the forced history equals the greedy one and shows nothing")
        prefill = prefill_logits(model, tokens + history[: N_GENERATE - 1])
        for t in range(N_GENERATE):
            rel_rms = relative_rms(steps[t], prefill[len(tokens) - 1 + t])
            if rel_rms > 1e-4:
                fail(f"{rel} {label}: step {t} is {rel_rms:.3g} relative RMS from a forward of the prompt and history[:{t}]")
    print(f"ok {rel}: decode steps " + ", ".join(label for label, _, _ in runs))


def check_wrong_length_force_tokens_exits_2(tmp, fail):
    r = run_dumper(ROOT / "fixtures" / "models" / "tiny-llama" / "model-f32.gguf", tmp / "wrong-length", force_tokens=FORCED[:-1])
    want = f"tinygrad: --force-tokens has {N_GENERATE - 1} ids; it needs exactly --n-generate = {N_GENERATE}"
    if r.returncode != 2 or r.stderr.strip() != want:
        fail(f"wrong-length --force-tokens: exit {r.returncode}, stderr {r.stderr.strip()!r}; expected 2, {want!r}")
    else:
        print("ok wrong-length --force-tokens exits 2")


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
            want = testkit.catalog_shape(t["shape"], dims, catalog)
            if a.shape != want:
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
        # decode_layers: steps 1, 2, 3 of N = 4, each attending over the T+t positions so far, each
        # cache the prompt's keys and values plus one row per step, zeros after.
        dp, dk = np.load(out / f"blk.{i}.dec_attn_probs.npy"), np.load(out / f"blk.{i}.dec_k_cache.npy")
        for s, t in enumerate(sorted({1, N_GENERATE // 2, N_GENERATE - 1})):
            seen = dims["T"] + t
            if np.abs(dp[s, :, :seen].sum(-1) - 1).max() > 1e-5 or (dp[s, :, seen:] != 0).any():
                fail(f"{rel}: blk.{i}.dec_attn_probs at step {t} is not a distribution over the {seen} positions so far")
            if not np.array_equal(dk[s, :, : dims["T"]], kc) or (dk[s, :, seen:] != 0).any():
                fail(f"{rel}: blk.{i}.dec_k_cache at step {t} is not the prompt's cache extended by {t} rows")
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
    check_decode_steps(rel, arch, out, tmp, fail)


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
        testkit.cannot_run(f"tinygrad is not importable ({e}); run scripts/setup-references.sh")
    failures = []
    with tempfile.TemporaryDirectory(prefix="tinygrad-dump-test-") as d:
        tmp = Path(d)
        for rel, pinned in FIXTURES.items():
            check_fixture(rel, pinned, tmp, failures.append)
        check_missing_model_exits_2(tmp, failures.append)
        check_wrong_length_force_tokens_exits_2(tmp, failures.append)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end checks of the MLX dumper on the tiny Llama fixtures. A plain script, run with the
MLX reference's own environment:

    ~/.cache/parity/venv-mlx/bin/python references/mlx/test_dump.py

Runs dump.py on each fixture (Llama F32, F16, Q8_0; GPT-2 F32) into a temporary folder and checks
the manifest and tensors against the catalog (shapes from the fixtures' HF config.json), the prompt
ids pinned from llama.cpp, q against attn_norm times the GGUF's own rows (on Llama with llama.cpp's
Q/K interleave undone by index), q_rope against the textbook half-split RoPE of q, attention
probabilities (rows sum to 1, causal, and equal to the softmax of the queries . k_cache /
sqrt(hd)), the KV cache (k_cache is k_rope, or k on GPT-2), the decode steps against a prompt
forward of the prompt plus the history, the samplers (top-k keeps k tokens), and the exit codes: 2
for a missing model, a file that is not GGUF or a wrong-length --force-tokens.
Exits 0 with a printed reason when mlx is not importable (1 when PARITY_REQUIRE_REFERENCES is set:
references/common/testkit.py), 1 on any failure.
"""

import json
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parents[1]
DUMPER = HERE / "dump.py"
PROMPT = "The quick brown fox jumps over the lazy dog."
N_GENERATE = 4
# Prompt ids from llama-cpp-python 0.3.36 (`Llama.tokenize(text, add_bos=True, special=False)`) on
# the same GGUF files, as in references/tinygrad/test_dump.py.
LLAMA_IDS = [1, 289, 448, 438, 442, 430, 338, 276, 293, 287, 274, 436, 445, 448, 431, 442, 320, 440, 377, 261, 294, 408, 446, 328, 436, 428, 410]
GPT2_IDS = [279, 220, 80, 84, 72, 334, 271, 289, 283, 272, 78, 87, 220, 73, 84, 315, 82, 373, 258, 291, 405, 88, 323, 78, 70, 13]
FIXTURES = {
    "tiny-llama/model-f32.gguf": LLAMA_IDS,
    "tiny-llama/model-f16.gguf": LLAMA_IDS,
    "tiny-llama/model-q8_0.gguf": LLAMA_IDS,
    "tiny-gpt2/model-f32.gguf": GPT2_IDS,
}
FORCED = [300, 7, 42, 128]


def run_dumper(model, out, force_tokens=None):
    cmd = [sys.executable, str(DUMPER), "--model", str(model), "--prompt", PROMPT, "--n-generate", str(N_GENERATE), "--out", str(out)]
    if force_tokens is not None:
        cmd += ["--force-tokens", ",".join(map(str, force_tokens))]
    return subprocess.run(cmd, capture_output=True, text=True)


def dims(model_dir, n_tokens):
    """(arch, layers, RoPE base, sizes) from the fixture's HF config.json."""
    c = json.loads((model_dir / "hf" / "config.json").read_text())
    if c["model_type"] == "gpt2":
        d, h = c["n_embd"], c["n_head"]
        return "gpt2", c["n_layer"], None, {"d": d, "H": h, "KV": h, "hd": d // h, "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    d, h = c["hidden_size"], c["num_attention_heads"]
    sizes = {"d": d, "H": h, "KV": c["num_key_value_heads"], "hd": c.get("head_dim", d // h), "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    return "llama", c["num_hidden_layers"], c.get("rope_theta", 10000.0), sizes


def rope_half_split(x, theta, pos0=0):
    """Textbook RoPE on [T, heads, hd] rows in the half-split (HF) order, in float64."""
    t, _, hd = x.shape
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    angles = (pos0 + np.arange(t))[:, None] * inv[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def relative_rms(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))


def check_tensors(rel, out, fail):
    """Names, shapes, dtypes and finiteness against the catalog; the pinned prompt ids."""
    manifest = tomllib.loads((out / "manifest.toml").read_text())
    catalog = tomllib.loads((ROOT / "checkpoints" / "catalog.toml").read_text())
    pinned = FIXTURES[rel]
    arch, n_layers, theta, sizes = dims((ROOT / "fixtures" / "models" / rel).parent, len(pinned))
    if manifest["token_ids"] != pinned or manifest["reference"] != "mlx" or (manifest["arch"], manifest["n_layers"]) != (arch, n_layers):
        fail(
            f"{rel}: manifest token_ids/reference/arch/n_layers {manifest['token_ids']}/{manifest['reference']}/{manifest['arch']}/{manifest['n_layers']}"
        )
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
            want = testkit.catalog_shape(t["shape"], sizes, catalog)
            if a.shape != want or a.dtype != (np.int64 if t.get("dtype") == "id" else np.float32):
                fail(f"{rel}: {key} is {a.dtype} {list(a.shape)}, catalog {t['shape']} = {want}")
            elif t.get("dtype") != "id" and not np.isfinite(a).all():
                fail(f"{rel}: {key} has non-finite values")
    return arch, n_layers, theta, sizes


def check_attention(rel, out, arch, n_layers, theta, sizes, fail):
    """q from the GGUF's own rows, RoPE, the cache, and the probabilities against their definition."""
    t, h, kv, hd = sizes["T"], sizes["H"], sizes["KV"], sizes["hd"]
    gguf = None
    if rel.endswith("-f32.gguf"):
        import mlx.core as mx

        gguf = {k: np.array(v, dtype=np.float64) for k, v in mx.load(str(ROOT / "fixtures" / "models" / rel)).items()}
    for i in range(n_layers):
        load = lambda name: np.load(out / f"blk.{i}.{name}.npy").astype(np.float64)  # noqa: E731
        q, k, kc = load("q"), load("k"), load("k_cache")
        if gguf is not None and arch == "llama":
            # llama.cpp stores HF row h*hd + s*hd/2 + j of Q at h*hd + 2j + s; undo it by index.
            hf_row = [hh * hd + 2 * j + s for hh in range(h) for s in range(2) for j in range(hd // 2)]
            want = load("attn_norm") @ gguf[f"blk.{i}.attn_q.weight"][hf_row].T
        elif gguf is not None:
            # GPT-2's fused QKV rows: queries first; llama.cpp stores them [out, in] with a bias.
            want = load("attn_norm") @ gguf[f"blk.{i}.attn_qkv.weight"][: h * hd].T + gguf[f"blk.{i}.attn_qkv.bias"][: h * hd]
        if gguf is not None and relative_rms(q, want) > 1e-5:
            fail(f"{rel}: blk.{i}.q is {relative_rms(q, want):.2g} from attn_norm times the GGUF's query rows")
        queries, keys_now = q, k
        if arch == "llama":
            queries, keys_now = load("q_rope"), load("k_rope")
            err = relative_rms(queries, rope_half_split(q.reshape(t, h, hd), theta).reshape(t, -1))
            if err > 1e-5:
                fail(f"{rel}: blk.{i}.q_rope is {err:.2g} relative RMS from the half-split RoPE of q")
        if not np.array_equal(kc, keys_now.reshape(t, kv, hd).transpose(1, 0, 2).astype(np.float32).astype(np.float64)):
            fail(f"{rel}: blk.{i}.k_cache differs from the rotated keys in [KV, T, hd] order")
        p = load("attn_probs")
        scores = np.einsum("thd,hsd->hts", queries.reshape(t, h, hd), np.repeat(kc, h // kv, axis=0)) / np.sqrt(hd)
        scores[:, np.triu(np.ones((t, t), bool), 1)] = -np.inf
        want = np.exp(scores - scores.max(-1, keepdims=True))
        want /= want.sum(-1, keepdims=True)
        if np.abs(p - want).max() > 1e-5 or (np.triu(np.ones((t, t), bool), 1)[None] & (p != 0)).any():
            fail(f"{rel}: blk.{i}.attn_probs is not the causal softmax of the queries . k_cache / sqrt(hd)")
    print(f"ok {rel}: q, RoPE, cache and attention probabilities")


def check_decode(rel, out, arch, tmp, fail):
    """step_logits row 0 is last_logits; each row within 1e-4 of a prompt forward of the prompt plus
    the history before it (greedy, and forced on FORCED for F32)."""
    from gpt2 import Gpt2
    from llama import Llama

    model_path = ROOT / "fixtures" / "models" / rel
    runs = [("greedy", out, None)]
    if rel.endswith("-f32.gguf"):
        forced_out = tmp / (rel.replace("/", "-") + "-forced")
        r = run_dumper(model_path, forced_out, force_tokens=FORCED)
        if r.returncode != 0:
            fail(f"{rel}: dumper --force-tokens exited {r.returncode}: {r.stderr.strip()}")
            return
        runs.append(("forced", forced_out, FORCED))
    model = (Llama if arch == "llama" else Gpt2)(str(model_path))
    pinned = FIXTURES[rel]
    for label, d, forced in runs:
        steps, generated = np.load(d / "step_logits.npy"), np.load(d / "generated.npy").tolist()
        if not np.array_equal(steps[0], np.load(d / "last_logits.npy")) or generated != np.argmax(steps, axis=1).tolist():
            fail(f"{rel} {label}: step_logits row 0 is not last_logits, or generated is not the rows' argmax")
        history = forced if forced is not None else generated
        model.reset_cache()
        prefill = model.forward(pinned + history[: N_GENERATE - 1])
        for step in range(N_GENERATE):
            err = relative_rms(steps[step], prefill[len(pinned) - 1 + step])
            if err > 1e-4:
                fail(f"{rel} {label}: step {step} is {err:.3g} relative RMS from a forward of the prompt and history[:{step}]")
    print(f"ok {rel}: decode steps " + ", ".join(label for label, _, _ in runs))


def check_samplers(rel, out, fail):
    """Each sampler row is a distribution; a top-k row keeps at most k tokens."""
    catalog = tomllib.loads((ROOT / "checkpoints" / "catalog.toml").read_text())
    rows = np.load(out / "sampler_probs.npy")
    for row, s in zip(rows, catalog["sampler"]):
        kept = int((row > 0).sum())
        if abs(float(row.sum()) - 1) > 1e-5 or (s.get("top_k", 0) and kept > s["top_k"]):
            fail(f"{rel}: sampler {s['name']} keeps {kept} tokens summing to {row.sum()}")
    print(f"ok {rel}: samplers")


def check_exit_codes(tmp, fail):
    cases = [
        ("missing model", run_dumper(tmp / "no-such-model.gguf", tmp / "missing"), 2),
        ("not a GGUF file", run_dumper(ROOT / "fixtures" / "models" / "tiny-gpt2" / "hf" / "config.json", tmp / "json"), 2),
        ("wrong-length --force-tokens", run_dumper(ROOT / "fixtures" / "models" / "tiny-llama" / "model-f32.gguf", tmp / "wrong", FORCED[:-1]), 2),
    ]
    for label, r, want in cases:
        if r.returncode != want or len(r.stderr.strip().splitlines()) != 1 or not r.stderr.startswith("mlx: "):
            fail(f"{label}: exit {r.returncode}, stderr {r.stderr.strip()!r}; expected {want} with one line")
        else:
            print(f"ok {label} exits {want}: {r.stderr.strip()}")


def main():
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except ImportError as e:
        testkit.cannot_run(f"mlx is not importable ({e}); run scripts/setup-references.sh")
    failures = []
    with tempfile.TemporaryDirectory(prefix="mlx-dump-test-") as d:
        tmp = Path(d)
        for rel in FIXTURES:
            out = tmp / rel.replace("/", "-")
            r = run_dumper(ROOT / "fixtures" / "models" / rel, out)
            if r.returncode != 0:
                failures.append(f"{rel}: dumper exited {r.returncode}: {r.stderr.strip()}")
                continue
            arch, n_layers, theta, sizes = check_tensors(rel, out, failures.append)
            check_attention(rel, out, arch, n_layers, theta, sizes, failures.append)
            check_decode(rel, out, arch, tmp, failures.append)
            check_samplers(rel, out, failures.append)
        check_exit_codes(tmp, failures.append)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end checks of the tinygrad dumper on the tiny fixtures. A plain script:

    ~/.cache/parity/venv/bin/python references/tinygrad/test_dump.py

Runs dump.py on each fixture into a temporary folder and checks the manifest and tensors against the
catalog (shapes with T, d, H, KV, hd, V, N taken from the fixtures' HF config.json), the prompt ids
pinned from llama.cpp, attention probabilities (rows sum to 1, causal), the decode steps (greedy,
and with --force-tokens on the f32 files) against a prompt forward of the prompt plus the history
before each step, and exit code 2 for a missing model or a wrong-length --force-tokens. Exits 0 with a printed reason when tinygrad or numpy is not importable (1 when PARITY_REQUIRE_REFERENCES
is set: references/common/testkit.py), 1 on any failure.

The family models (Llama-3, Qwen2, Qwen3 in the parity cache; skipped with a message when absent,
failing when PARITY_REQUIRE_REFERENCES is set) are dumped once each (F32, and Llama-3's Q8_0) and
checked against the catalog, llama.cpp's pinned prompt ids, and float64 numpy from the GGUF read by
the `gguf` package (not tinygrad's loader): q/k/v from attn_norm and the file's rows (llama.cpp's
Q/K interleave undone by index on Llama only, Qwen2's biases added), Qwen3's q_norm/k_norm as
per-head RMSNorms (prompt and decode path), and q_rope/k_rope as the half-split RoPE at each pair's
frequency divided by the file's rope_freqs factor (Llama-3; checked to differ from the unscaled one).
Gemma-2 (on a prompt longer than its sliding window) and Phi-3 also go through family_checks.py:
each step of their blocks recomputed in float64 from the dump's own input to it (Gemma-2's scaled
embedding, soft-capped windowed attention on the prompt and decode paths, (1 + w) post-norms, GeGLU,
soft-capped logits; Phi-3's fused q/k/v and gate/up), and Gemma-2's decode steps against a prompt
forward of the prompt plus the history, so the windowed decode agrees with the windowed prompt.
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
import family_checks  # noqa: E402

ROOT = HERE.parents[1]
DUMPER = HERE / "dump.py"
PROMPT = "The quick brown fox jumps over the lazy dog."
N_GENERATE = 4

# Prompt ids from llama-cpp-python 0.3.36 (`Llama.tokenize(text, add_bos=True, special=False)`) on the
# same GGUF files: BOS for the SentencePiece vocabulary, none for GPT-2's byte-level BPE.
LLAMA_IDS = [1, 289, 448, 438, 442, 430, 338, 276, 293, 287, 274, 436, 445, 448, 431, 442, 320, 440, 377, 261, 294, 408, 446, 328, 436, 428, 410]
GPT2_IDS = [279, 220, 80, 84, 72, 334, 271, 289, 283, 272, 78, 87, 220, 73, 84, 315, 82, 373, 258, 291, 405, 88, 323, 78, 70, 13]
FIXTURES = {"tiny-llama/model-f32.gguf": LLAMA_IDS, "tiny-llama/model-f16.gguf": LLAMA_IDS, "tiny-gpt2/model-f32.gguf": GPT2_IDS}


# The family models (scripts/make-family-models.py) dumped, and llama.cpp's ids for their prompt.
CACHE = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "parity"))
FAMILY_IDS = json.loads((HERE / "family_prompt_ids.json").read_text())
FAMILY_PROMPT = FAMILY_IDS["prompt"]
FAMILIES = {
    rel: (FAMILY_PROMPT, FAMILY_IDS["ids"][rel.split("/")[0]])
    for rel in ("llama3/model-f32.gguf", "llama3/model-q8_0.gguf", "qwen2/model-f32.gguf", "qwen3/model-f32.gguf", "phi3/model-f32.gguf")
}
# Gemma-2 on a prompt longer than its sliding window, so the prompt path shows the window too.
FAMILIES["gemma2/model-f32.gguf"] = (FAMILY_IDS["window_prompt"], FAMILY_IDS["window_ids"]["gemma2"])


def dims_from_hf_config(model_dir, n_tokens):
    """(arch, layers, sizes) from the HF config.json beside a GGUF; the arch is GGUF's name for it."""
    c = json.loads((model_dir / "hf" / "config.json").read_text())
    if c["model_type"] == "gpt2":
        d, h = c["n_embd"], c["n_head"]
        return "gpt2", c["n_layer"], {"d": d, "H": h, "KV": h, "hd": d // h, "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    d, h = c["hidden_size"], c["num_attention_heads"]
    dims = {"d": d, "H": h, "KV": c["num_key_value_heads"], "hd": c.get("head_dim") or d // h, "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    return c["model_type"], c["num_hidden_layers"], dims


# A decode history unlike each f32 fixture's own greedy one (checked), fed with --force-tokens.
FORCED = [300, 7, 42, 128]


def run_dumper(model, out, force_tokens=None, prompt=PROMPT):
    cmd = [sys.executable, str(DUMPER), "--model", str(model), "--prompt", prompt, "--n-generate", str(N_GENERATE), "--out", str(out)]
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


def check_decode_steps(rel, arch, out, tmp, fail, model_path=None, forced=True):
    """step_logits and generated of a dump, greedy and (f32 files, unless not `forced`) forced on
    FORCED: row 0 is last_logits, generated the rows' argmax, and each row within 1e-4 of a prompt
    forward of the prompt plus the history before it, in a separately loaded model. `model_path`
    defaults to the fixture `rel`."""
    import dump

    model_path = model_path or ROOT / "fixtures" / "models" / rel
    runs = [("greedy", out, None)]
    if forced and rel.endswith("-f32.gguf"):
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
    out = tmp / rel.replace("/", "-")
    if check_dump(ROOT / "fixtures" / "models" / rel, rel, pinned, out, PROMPT, fail):
        check_decode_steps(rel, dims_from_hf_config((ROOT / "fixtures" / "models" / rel).parent, 0)[0], out, tmp, fail)


def check_dump(model, rel, pinned, out, prompt, fail):
    """Dumps `model` into `out` and checks it against the catalog and its own invariants; False
    when the dumper failed."""
    arch, n_layers, dims = dims_from_hf_config(model.parent, len(pinned))
    r = run_dumper(model, out, prompt=prompt)
    if r.returncode != 0:
        fail(f"{rel}: dumper exited {r.returncode}: {r.stderr.strip()}")
        return False
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
        if arch != "gpt2":
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
    return True


def gguf_tensors(path):
    """Every tensor of a GGUF as float64 [rows, cols] (dequantized) and its metadata, read with the
    `gguf` package (llama.cpp's reader), not tinygrad's loader."""
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    tensors = {t.name: quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in reader.tensors}
    return tensors, meta


def rope_half_split(x, theta, factors=None):
    """Textbook RoPE on [T, heads, hd] in the half-split (HF) order, in float64; pair i turns at
    theta^(-2i/hd), divided by factors[i] when given (llama.cpp's rope_freqs)."""
    t, _, hd = x.shape
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    if factors is not None:
        inv = inv / factors
    angles = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def rms_norm_heads(x, weight, eps, hd):
    """Per-head RMSNorm of [rows, heads*hd] in float64 (Qwen3's q/k norms)."""
    h = x.reshape(x.shape[0], -1, hd)
    return (h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * weight).reshape(x.shape)


def check_family_values(rel, model, out, fail):
    """A family dump's q/k/v, q_norm/k_norm, RoPE and KV cache against float64 numpy from the GGUF."""
    arch, n_layers, dims = dims_from_hf_config(model.parent, len(FAMILIES[rel][1]))
    w, meta = gguf_tensors(model)
    t, h, kv, hd = dims["T"], dims["H"], dims["KV"], dims["hd"]
    config = json.loads((model.parent / "hf" / "config.json").read_text())
    theta = float(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])  # Gemma-2's GGUF has no freq_base
    eps = float(meta[f"{arch}.attention.layer_norm_rms_epsilon"])
    factors = w.get("rope_freqs.weight")
    if (factors is not None) != (arch == "llama"):
        fail(f"{rel}: rope_freqs.weight {'present' if factors is not None else 'absent'} for {arch}")
    tol = 1e-5 if "f32" in rel else 1e-4
    worst = 0.0
    for i in range(n_layers):
        load = lambda name: np.load(out / f"blk.{i}.{name}.npy").astype(np.float64)  # noqa: E731
        xn = load("attn_norm")
        for name, heads in (("q", h), ("k", kv), ("v", kv)) if arch != "phi3" else ():  # Phi-3's fused rows: family_checks
            rows = w[f"blk.{i}.attn_{name}.weight"]
            if arch == "llama" and name != "v":  # llama.cpp stores HF row g*hd + s*hd/2 + j at g*hd + 2j + s
                rows = rows[[g * hd + 2 * j + s for g in range(heads) for s in range(2) for j in range(hd // 2)]]
            want = xn @ rows.T + w.get(f"blk.{i}.attn_{name}.bias", 0.0)
            err = relative_rms(load(name), want)
            worst = max(worst, err)
            if err > tol:
                fail(f"{rel}: blk.{i}.{name} is {err:.2g} from attn_norm times the GGUF's rows (+ bias)")
        q, k = load("q"), load("k")
        if arch == "qwen3":
            q_want, k_want = (rms_norm_heads(x, w[f"blk.{i}.attn_{n}_norm.weight"], eps, hd) for x, n in ((q, "q"), (k, "k")))
            for name, want in (("q_norm", q_want), ("k_norm", k_want)):
                err = relative_rms(load(name), want)
                worst = max(worst, err)
                if err > 1e-5:
                    fail(f"{rel}: blk.{i}.{name} is {err:.2g} from the per-head RMSNorm of {name[0]}")
            dec_q = np.load(out / f"blk.{i}.dec_q.npy").astype(np.float64)
            err = relative_rms(np.load(out / f"blk.{i}.dec_q_norm.npy"), rms_norm_heads(dec_q, w[f"blk.{i}.attn_q_norm.weight"], eps, hd))
            if err > 1e-5:
                fail(f"{rel}: blk.{i}.dec_q_norm is {err:.2g} from the per-head RMSNorm of dec_q")
            q, k = load("q_norm"), load("k_norm")
        for name, x, heads in (("q_rope", q, h), ("k_rope", k, kv)):
            want = rope_half_split(x.reshape(t, heads, hd), theta, factors).reshape(t, -1)
            err = relative_rms(load(name), want)
            worst = max(worst, err)
            if err > 1e-5:
                fail(f"{rel}: blk.{i}.{name} is {err:.2g} from the half-split RoPE of {name[0]}")
            if factors is not None and relative_rms(load(name), rope_half_split(x.reshape(t, heads, hd), theta).reshape(t, -1)) < 1e-3:
                fail(f"{rel}: blk.{i}.{name} is as close to the unscaled RoPE: the prompt cannot show the frequency scaling")
    if arch in ("gemma2", "phi3"):
        check = family_checks.check_gemma2 if arch == "gemma2" else family_checks.check_phi3
        worst = max(worst, check(rel, out, w, config, fail, tol))
    print(
        f"ok {rel}: q/k/v, q/k norms, RoPE{', the ' + arch + ' block' if arch in ('gemma2', 'phi3') else ''} within {worst:.2g} of float64 numpy from the GGUF"
    )


def check_families(tmp, fail):
    for rel, (prompt, pinned) in FAMILIES.items():
        model = CACHE / "models" / "families" / rel
        missing = testkit.missing_file(model, "scripts/make-family-models.py")
        if missing:
            if testkit.REQUIRED:
                fail(missing)
            continue
        out = tmp / rel.replace("/", "-")
        if check_dump(model, rel, pinned, out, prompt, fail):
            check_family_values(rel, model, out, fail)
            if rel.startswith("gemma2/"):  # the windowed decode steps against the windowed prompt path
                check_decode_steps(rel, "gemma2", out, tmp, fail, model_path=model, forced=False)


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
        check_families(tmp, failures.append)
        check_missing_model_exits_2(tmp, failures.append)
        check_wrong_length_force_tokens_exits_2(tmp, failures.append)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

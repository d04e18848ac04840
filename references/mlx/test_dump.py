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

The family models (Llama-3 F32 and Q8_0, Qwen2 and Qwen3 F32, in the parity cache; skipped with a
message when absent, failing when PARITY_REQUIRE_REFERENCES is set) go through the same checks on
llama.cpp's pinned prompt ids, and on F32: q, k and v from the GGUF's own rows (interleave undone on
Llama only, Qwen2's biases added), Qwen3's q_norm/k_norm (prompt and decode path) as per-head
RMSNorms of q and k, RoPE at each pair's frequency divided by the GGUF's rope_freqs factor
(Llama-3), and the RoPE frequencies the dumper gives mlx-lm from those factors against mlx-lm's own
Llama3RoPE built from the HF config.json's llama3 parameters (which the GGUF does not carry).
Gemma-2 (F32 and Q8_0, on a prompt longer than its sliding window) and Phi-3 (F32) too, and on F32
each step of their blocks recomputed in float64 from the dump's own input to it
(references/tinygrad/family_checks.py: Gemma-2's scaled embedding, soft-capped windowed attention
on the prompt and decode paths, (1 + w) post-norms, GeGLU, soft-capped logits; Phi-3's fused q/k/v
and gate/up); the decode steps against a prompt forward show the windowed decode agrees with the
windowed prompt path.
Exits 0 with a printed reason when mlx is not importable (1 when PARITY_REQUIRE_REFERENCES is set:
references/common/testkit.py), 1 on any failure.
"""

import json
import os
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
import testkit  # noqa: E402  (stdlib only: it decides skip or fail when the rest cannot import)

try:
    import numpy as np
except ImportError as e:
    testkit.cannot_run(f"numpy is not importable ({e}); run scripts/setup-references.sh")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "tinygrad"))  # family_checks.py (numpy only), after ours: both have gemma2.py
import family_checks  # noqa: E402

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
# The family models (scripts/make-family-models.py) dumped, and llama.cpp's ids for their prompt
# (pinned beside the tokenizer, shared with references/tinygrad/test_dump.py).
CACHE = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "parity"))
FAMILY_IDS = json.loads((ROOT / "references" / "tinygrad" / "family_prompt_ids.json").read_text())
FAMILY_PROMPT = FAMILY_IDS["prompt"]
FAMILIES = {
    rel: (FAMILY_PROMPT, FAMILY_IDS["ids"][rel.split("/")[0]])
    for rel in ("llama3/model-f32.gguf", "llama3/model-q8_0.gguf", "qwen2/model-f32.gguf", "qwen3/model-f32.gguf", "phi3/model-f32.gguf")
}
# Gemma-2 on a prompt longer than its sliding window (the prompt path shows the window too), F32
# and Q8_0 (MLX-quantized matrices, the norms' 1 + w undone on plain f32 vectors either way).
for _rel in ("gemma2/model-f32.gguf", "gemma2/model-q8_0.gguf"):
    FAMILIES[_rel] = (FAMILY_IDS["window_prompt"], FAMILY_IDS["window_ids"]["gemma2"])


@dataclass(frozen=True)
class Case:
    """One model dumped on one prompt, with llama.cpp's ids for it."""

    rel: str
    path: Path
    prompt: str
    pinned: list


def run_dumper(model, out, force_tokens=None, prompt=PROMPT):
    cmd = [sys.executable, str(DUMPER), "--model", str(model), "--prompt", prompt, "--n-generate", str(N_GENERATE), "--out", str(out)]
    if force_tokens is not None:
        cmd += ["--force-tokens", ",".join(map(str, force_tokens))]
    return subprocess.run(cmd, capture_output=True, text=True)


def hf_config(model_dir):
    return json.loads((model_dir / "hf" / "config.json").read_text())


def dims(model_dir, n_tokens):
    """(arch as GGUF names it, layers, RoPE base, sizes) from the model's HF config.json."""
    c = hf_config(model_dir)
    if c["model_type"] == "gpt2":
        d, h = c["n_embd"], c["n_head"]
        return "gpt2", c["n_layer"], None, {"d": d, "H": h, "KV": h, "hd": d // h, "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    d, h = c["hidden_size"], c["num_attention_heads"]
    sizes = {"d": d, "H": h, "KV": c["num_key_value_heads"], "hd": c.get("head_dim") or d // h, "V": c["vocab_size"], "T": n_tokens, "N": N_GENERATE}
    theta = c.get("rope_theta") or c.get("rope_parameters", {}).get("rope_theta", 10000.0)
    return c["model_type"], c["num_hidden_layers"], theta, sizes


def rope_half_split(x, theta, pos0=0, factors=None):
    """Textbook RoPE on [T, heads, hd] rows in the half-split (HF) order, in float64; pair i turns
    at theta^(-2i/hd), divided by factors[i] when given (llama.cpp's rope_freqs)."""
    t, _, hd = x.shape
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    if factors is not None:
        inv = inv / factors
    angles = (pos0 + np.arange(t))[:, None] * inv[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def relative_rms(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))


def rms_norm_heads(x, weight, eps, hd):
    """Per-head RMSNorm of [rows, heads*hd] in float64 (Qwen3's q/k norms)."""
    h = x.reshape(x.shape[0], -1, hd)
    return (h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * weight).reshape(x.shape)


def check_tensors(case, out, fail):
    """Names, shapes, dtypes and finiteness against the catalog; the pinned prompt ids."""
    rel, pinned = case.rel, case.pinned
    manifest = tomllib.loads((out / "manifest.toml").read_text())
    catalog = tomllib.loads((ROOT / "checkpoints" / "catalog.toml").read_text())
    arch, n_layers, theta, sizes = dims(case.path.parent, len(pinned))
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


def check_attention(case, out, arch, n_layers, theta, sizes, fail):
    """q (k, v) from the GGUF's own rows, Qwen3's q/k norms, RoPE, the cache, and the probabilities
    against their definition."""
    rel = case.rel
    t, h, kv, hd = sizes["T"], sizes["H"], sizes["KV"], sizes["hd"]
    import mlx.core as mx

    weights = mx.load(str(case.path))
    factors = np.array(weights["rope_freqs.weight"], dtype=np.float64) if "rope_freqs.weight" in weights else None
    gguf = {k: np.array(v, dtype=np.float64) for k, v in weights.items()} if rel.endswith("-f32.gguf") else None
    eps = hf_config(case.path.parent).get("rms_norm_eps")
    for i in range(n_layers):
        load = lambda name: np.load(out / f"blk.{i}.{name}.npy").astype(np.float64)  # noqa: E731
        q, k, kc = load("q"), load("k"), load("k_cache")
        checks = []
        if gguf is not None and arch == "gpt2":
            # GPT-2's fused QKV rows: queries first; llama.cpp stores them [out, in] with a bias.
            checks.append(("q", load("attn_norm") @ gguf[f"blk.{i}.attn_qkv.weight"][: h * hd].T + gguf[f"blk.{i}.attn_qkv.bias"][: h * hd]))
        elif gguf is not None and arch != "phi3":  # Phi-3's fused rows: family_checks
            for name, heads in (("q", h), ("k", kv), ("v", kv)):
                rows = gguf[f"blk.{i}.attn_{name}.weight"]
                if arch == "llama" and name != "v":
                    # llama.cpp stores HF row g*hd + s*hd/2 + j of Q/K at g*hd + 2j + s (Llama only); undo it by index.
                    rows = rows[[g * hd + 2 * j + s for g in range(heads) for s in range(2) for j in range(hd // 2)]]
                checks.append((name, load("attn_norm") @ rows.T + gguf.get(f"blk.{i}.attn_{name}.bias", 0.0)))
        for name, want in checks:
            if relative_rms(load(name), want) > 1e-5:
                fail(f"{rel}: blk.{i}.{name} is {relative_rms(load(name), want):.2g} from attn_norm times the GGUF's rows (+ bias)")
        if arch == "qwen3" and gguf is not None:
            for name, x, stem in (("q_norm", q, "attn_q_norm"), ("k_norm", k, "attn_k_norm"), ("dec_q_norm", load("dec_q"), "attn_q_norm")):
                err = relative_rms(load(name), rms_norm_heads(x, gguf[f"blk.{i}.{stem}.weight"], eps, hd))
                if err > 1e-5:
                    fail(f"{rel}: blk.{i}.{name} is {err:.2g} from the per-head RMSNorm of {name.removesuffix('_norm')}")
        if arch == "qwen3":
            q, k = load("q_norm"), load("k_norm")
        queries, keys_now = q, k
        if arch != "gpt2":
            queries, keys_now = load("q_rope"), load("k_rope")
            for name, got, x, heads in (("q_rope", queries, q, h), ("k_rope", keys_now, k, kv)):
                err = relative_rms(got, rope_half_split(x.reshape(t, heads, hd), theta, factors=factors).reshape(t, -1))
                if err > 1e-5:
                    fail(f"{rel}: blk.{i}.{name} is {err:.2g} relative RMS from the half-split RoPE of {name[0]}")
        if not np.array_equal(kc, keys_now.reshape(t, kv, hd).transpose(1, 0, 2).astype(np.float32).astype(np.float64)):
            fail(f"{rel}: blk.{i}.k_cache differs from the rotated keys in [KV, T, hd] order")
        if arch == "gemma2":  # soft-capped and windowed: family_checks
            continue
        p = load("attn_probs")
        scores = np.einsum("thd,hsd->hts", queries.reshape(t, h, hd), np.repeat(kc, h // kv, axis=0)) / np.sqrt(hd)
        scores[:, np.triu(np.ones((t, t), bool), 1)] = -np.inf
        want = np.exp(scores - scores.max(-1, keepdims=True))
        want /= want.sum(-1, keepdims=True)
        if np.abs(p - want).max() > 1e-5 or (np.triu(np.ones((t, t), bool), 1)[None] & (p != 0)).any():
            fail(f"{rel}: blk.{i}.attn_probs is not the causal softmax of the queries . k_cache / sqrt(hd)")
    if gguf is not None and arch in ("gemma2", "phi3"):
        check = family_checks.check_gemma2 if arch == "gemma2" else family_checks.check_phi3
        worst = check(rel, out, gguf, hf_config(case.path.parent), fail)
        print(f"ok {rel}: the {arch} block within {worst:.2g} of float64 numpy from the GGUF")
    print(f"ok {rel}: q, RoPE, cache and attention probabilities")


def check_llama3_rope(case, fail):
    """The RoPE the dumper gives mlx-lm for Llama-3 (longrope from the GGUF's per-pair factors)
    against mlx-lm's own Llama3RoPE from the HF config's llama3 parameters: the same frequencies."""
    from llama import Llama
    from mlx_lm.models.rope_utils import Llama3RoPE

    c = hf_config(case.path.parent)
    params = c["rope_parameters"]
    own = Llama3RoPE(c["head_dim"], c["max_position_embeddings"], base=params["rope_theta"], scaling_config=params)
    ours = Llama(str(case.path)).model.model.layers[0].self_attn.rope
    err = relative_rms(np.array(ours._freqs), np.array(own._freqs))
    if type(ours).__name__ != "WatchedSuScaledRoPE" or err > 1e-6 or float(ours._scale) != 1.0:
        fail(f"{case.rel}: the dumper's RoPE ({type(ours).__name__}, scale {ours._scale}) is {err:.2g} from mlx-lm's Llama3RoPE")
    else:
        print(f"ok {case.rel}: RoPE frequencies {err:.2g} from mlx-lm's Llama3RoPE of the HF config")


def load_model(path, arch):
    from gemma2 import Gemma2
    from gpt2 import Gpt2
    from llama import Llama
    from phi3 import Phi3
    from qwen import Qwen

    if arch in ("gpt2", "gemma2", "phi3"):
        return {"gpt2": Gpt2, "gemma2": Gemma2, "phi3": Phi3}[arch](str(path))
    return Llama(str(path)) if arch == "llama" else Qwen(str(path), arch)


def check_decode(case, out, arch, tmp, fail):
    """step_logits row 0 is last_logits; each row within 1e-4 of a prompt forward of the prompt plus
    the history before it (greedy, and forced on FORCED for F32)."""
    rel, model_path = case.rel, case.path
    runs = [("greedy", out, None)]
    if rel.endswith("-f32.gguf"):
        forced_out = tmp / (rel.replace("/", "-") + "-forced")
        r = run_dumper(model_path, forced_out, force_tokens=FORCED, prompt=case.prompt)
        if r.returncode != 0:
            fail(f"{rel}: dumper --force-tokens exited {r.returncode}: {r.stderr.strip()}")
            return
        runs.append(("forced", forced_out, FORCED))
    model = load_model(model_path, arch)
    pinned = case.pinned
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


def check_samplers(case, out, fail):
    """Each sampler row is a distribution; a top-k row keeps at most k tokens. MLX's softmax sums
    its V exponentials one after another in f32 (docs/references.md), so its normaliser is off by
    about sqrt(V) * 2^-24 (1.0e-5 measured on Llama-3's 128,256 tokens, the same error a sequential
    f32 sum of the same exponentials gives in numpy); the sum is allowed twice that, and at least
    1e-5. A row not renormalised after a top-p cut is off by 1e-2 or more."""
    catalog = tomllib.loads((ROOT / "checkpoints" / "catalog.toml").read_text())
    rows = np.load(out / "sampler_probs.npy")
    tolerance = max(1e-5, 2 * np.sqrt(rows.shape[1]) * 2.0**-24)
    for row, s in zip(rows, catalog["sampler"]):
        kept = int((row > 0).sum())
        if abs(float(row.sum(dtype=np.float64)) - 1) > tolerance or (s.get("top_k", 0) and kept > s["top_k"]):
            fail(f"{case.rel}: sampler {s['name']} keeps {kept} tokens summing to {row.sum()}")
    print(f"ok {case.rel}: samplers")


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
        cases = [Case(rel, ROOT / "fixtures" / "models" / rel, PROMPT, pinned) for rel, pinned in FIXTURES.items()]
        for rel, (prompt, pinned) in FAMILIES.items():
            path = CACHE / "models" / "families" / rel
            missing = testkit.missing_file(path, "scripts/make-family-models.py")
            if missing and testkit.REQUIRED:
                failures.append(missing)
            if not missing:
                cases.append(Case(rel, path, prompt, pinned))
        for case in cases:
            out = tmp / case.rel.replace("/", "-")
            r = run_dumper(case.path, out, prompt=case.prompt)
            if r.returncode != 0:
                failures.append(f"{case.rel}: dumper exited {r.returncode}: {r.stderr.strip()}")
                continue
            arch, n_layers, theta, sizes = check_tensors(case, out, failures.append)
            check_attention(case, out, arch, n_layers, theta, sizes, failures.append)
            if case.rel == "llama3/model-f32.gguf":
                check_llama3_rope(case, failures.append)
            check_decode(case, out, arch, tmp, failures.append)
            check_samplers(case, out, failures.append)
        check_exit_codes(tmp, failures.append)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

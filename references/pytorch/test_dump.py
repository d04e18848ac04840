"""Tests of the PyTorch reference dumper on the tiny fixture models.

    ~/.cache/parity/venv/bin/python references/pytorch/test_dump.py

Runs dump.py on fixtures/models/tiny-llama and tiny-gpt2 (GGUF and HF folder) into a temporary
folder and checks the dumps against checkpoints/catalog.toml and against values fixed elsewhere:
the prompt ids are llama.cpp's (llama-cpp-python 0.3.36, add_bos=True, special=False), the model
sizes are those scripts/make-fixtures.py builds, and embed, norms, projections, attention and the
residual stream are recomputed with numpy from the dumped inputs and the HF checkpoint's weights.
The decode steps (step_logits, generated), greedy and with --force-tokens, are checked against
transformers' own full forward of the prompt plus the history before each step, and the
decode_layers taps at the chosen steps against that forward's taps at the position each step fed.
The family models (when built): catalog shapes, llama.cpp's prompt ids, and each family's mechanism
recomputed in numpy from its F32 GGUF (Llama-3's rope_freqs, Qwen2's biases, Qwen3's q/k norms,
Gemma-2's whole block with its soft-caps and window, Phi-3's fused projections). Also checks the
GGUF tokenizer correction against fixtures/tokenizer/expected.json and the usage exit codes. Skips (exit 0) when the reference environment is not importable or SmolLM2 is not
downloaded, and fails then instead when PARITY_REQUIRE_REFERENCES is set (references/common/testkit.py).
"""

import functools
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
import testkit  # noqa: E402  (stdlib only: it decides skip or fail when the rest cannot import)

ROOT = Path(__file__).resolve().parents[2]
DUMPER = ROOT / "references" / "pytorch" / "dump.py"
MODELS = ROOT / "fixtures" / "models"
CACHE = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "parity"))
SMOLLM2 = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
# The model-family suite's models (scripts/make-family-models.py): seeded random weights, llama.cpp's converter.
FAMILY_MODELS = CACHE / "models" / "families"
FAMILY_HINT = "~/.cache/parity/venv/bin/python scripts/make-family-models.py"

# Two leading spaces: transformers' own GGUF SentencePiece tokenizer drops one of them, llama.cpp does not.
PROMPT = "  The capital of France is"
N_GENERATE = 4

# Sizes from scripts/make-fixtures.py (LLAMA, GPT2, the vocabularies it builds), and llama.cpp's ids for PROMPT.
FIXTURES = {
    "tiny-llama": dict(arch="llama", n_layers=2, d=64, H=4, KV=2, hd=16, V=449, tokens=[1, 448, 448, 289, 333, 277, 448, 389, 303]),
    "tiny-gpt2": dict(arch="gpt2", n_layers=2, d=64, H=4, KV=4, hd=16, V=407, tokens=[220, 290, 328, 273, 220, 385, 300]),
}


def import_problem():
    """Why the reference environment cannot run here, or None."""
    try:
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
        import numpy  # noqa: F401
        import tokenizers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{e} (run with ~/.cache/parity/venv/bin/python after scripts/setup-references.sh)"
    return None


# A decode history unlike either fixture's own greedy one (checked), fed with --force-tokens.
FORCED = [300, 7, 42, 128]


def run_dumper(model, out, prompt=PROMPT, n_generate=N_GENERATE, force_tokens=None):
    cmd = [sys.executable, str(DUMPER), "--model", str(model), "--prompt", prompt, "--n-generate", str(n_generate), "--out", str(out)]
    if force_tokens is not None:
        cmd += ["--force-tokens", ",".join(map(str, force_tokens))]
    return subprocess.run(cmd, capture_output=True, text=True)


def relative_rms(got, want):
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))


def cache_layer(cache, i):
    """(keys, values) of layer i, each [1, KV, T, hd], from a transformers cache of any of its APIs."""
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[i], cache.value_cache[i]
    return cache[i][0], cache[i][1]


@functools.cache
def hf_model(name):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(MODELS / name / "hf", dtype=torch.float32, attn_implementation="eager").eval()


def hf_prefill_last_logits(name, ids):
    """transformers' own full forward of `ids` on the fixture's HF folder (no cache): the last position's logits."""
    import torch

    model = hf_model(name)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


class TinyFixtureDumps(unittest.TestCase):
    """One dump per fixture model and format, made once for all tests."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="parity-pytorch-test-")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.dumps = {}
        for name in FIXTURES:
            for fmt, model in (("gguf", MODELS / name / "model-f32.gguf"), ("hf", MODELS / name / "hf")):
                out = Path(cls.tmp.name) / f"{name}-{fmt}"
                result = run_dumper(model, out)
                if result.returncode != 0:
                    raise AssertionError(f"dump.py on {model} exited {result.returncode}: {result.stderr.strip()}")
                cls.dumps[name, fmt] = out
            out = Path(cls.tmp.name) / f"{name}-forced"
            result = run_dumper(MODELS / name / "model-f32.gguf", out, force_tokens=FORCED)
            if result.returncode != 0:
                raise AssertionError(f"dump.py --force-tokens on {name} exited {result.returncode}: {result.stderr.strip()}")
            cls.dumps[name, "forced"] = out
        with open(ROOT / "checkpoints" / "catalog.toml", "rb") as f:
            cls.catalog = tomllib.load(f)

    def load(self, name, fmt, key):
        import numpy as np

        return np.load(self.dumps[name, fmt] / f"{key}.npy")

    def manifest(self, name, fmt):
        with open(self.dumps[name, fmt] / "manifest.toml", "rb") as f:
            return tomllib.load(f)

    def each_dump(self):
        return [(name, fmt, FIXTURES[name]) for name, fmt in self.dumps]

    def prompt_length(self, name, fmt):
        """T of a dump, from its own tokens, so a tokenizer fault fails the token test only."""
        return len(self.load(name, fmt, "tokens"))

    def test_every_catalog_tensor_of_the_arch_is_dumped_with_its_catalog_shape_and_dtype(self):
        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                sizes = dict(fx, T=self.prompt_length(name, fmt), N=N_GENERATE)
                tensors = self.manifest(name, fmt)["tensors"]
                for entry in self.catalog["tensor"]:
                    keys = [f"blk.{i}.{entry['name']}" for i in range(fx["n_layers"])] if entry["scope"] == "layer" else [entry["name"]]
                    for key in keys:
                        if fx["arch"] not in entry.get("arch", [fx["arch"]]):
                            self.assertIn("unavailable", tensors[key], key)
                            self.assertFalse((self.dumps[name, fmt] / f"{key}.npy").exists(), key)
                            continue
                        a = self.load(name, fmt, key)
                        self.assertEqual(a.shape, testkit.catalog_shape(entry["shape"], sizes, self.catalog), key)
                        self.assertEqual(a.dtype.str, "<i8" if entry.get("dtype") == "id" else "<f4", key)

    def test_prompt_ids_are_llama_cpps(self):
        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                self.assertEqual(self.load(name, fmt, "tokens").tolist(), fx["tokens"])
                self.assertEqual(self.manifest(name, fmt)["token_ids"], fx["tokens"])

    def test_attention_probabilities_are_causal_rows_that_sum_to_one(self):
        import numpy as np

        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                for layer in range(fx["n_layers"]):
                    p = self.load(name, fmt, f"blk.{layer}.attn_probs")
                    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)
                    self.assertTrue((p >= 0).all())
                    future = np.triu(np.ones(p.shape[-2:], dtype=bool), k=1)
                    self.assertTrue((p[:, future] == 0).all(), f"layer {layer} attends to later positions")
                    self.assertTrue((p[:, ~future] > 0).all(), f"layer {layer} masks an earlier position")

    def test_kv_cache_holds_the_projected_keys_and_values_per_kv_head(self):
        import numpy as np

        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                T, KV, hd = self.prompt_length(name, fmt), fx["KV"], fx["hd"]
                # Llama caches keys after RoPE, GPT-2 the projections themselves.
                k_name = "k_rope" if fx["arch"] == "llama" else "k"
                for layer in range(fx["n_layers"]):
                    k = self.load(name, fmt, f"blk.{layer}.{k_name}").reshape(T, KV, hd).transpose(1, 0, 2)
                    v = self.load(name, fmt, f"blk.{layer}.v").reshape(T, KV, hd).transpose(1, 0, 2)
                    np.testing.assert_array_equal(self.load(name, fmt, f"blk.{layer}.k_cache"), k)
                    np.testing.assert_array_equal(self.load(name, fmt, f"blk.{layer}.v_cache"), v)

    def test_rope_leaves_position_zero_unrotated_and_rotates_the_others(self):
        import numpy as np

        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                if fx["arch"] != "llama":
                    continue
                for layer in range(fx["n_layers"]):
                    for raw, rotated in (("q", "q_rope"), ("k", "k_rope")):
                        a, b = self.load(name, fmt, f"blk.{layer}.{raw}"), self.load(name, fmt, f"blk.{layer}.{rotated}")
                        np.testing.assert_allclose(b[0], a[0], rtol=1e-6, atol=1e-6)
                        # A rotation keeps the norm of every (i, i + hd/2) pair within a head.
                        half = fx["hd"] // 2
                        pa, pb = a.reshape(len(a), -1, 2, half), b.reshape(len(b), -1, 2, half)
                        np.testing.assert_allclose(np.hypot(pb[:, :, 0], pb[:, :, 1]), np.hypot(pa[:, :, 0], pa[:, :, 1]), rtol=1e-4, atol=1e-5)
                        self.assertGreater(np.abs(b[1:] - a[1:]).max(), 1e-3)

    def test_attention_probabilities_recompute_from_the_dumped_queries_and_keys(self):
        import numpy as np

        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                T, H, KV, hd = self.prompt_length(name, fmt), fx["H"], fx["KV"], fx["hd"]
                for layer in range(fx["n_layers"]):
                    q = self.load(name, fmt, f"blk.{layer}.{'q_rope' if fx['arch'] == 'llama' else 'q'}").reshape(T, H, hd).transpose(1, 0, 2)
                    k = self.load(name, fmt, f"blk.{layer}.k_cache")
                    # Query head h reads key/value head h // (H / KV).
                    k = np.repeat(k, H // KV, axis=0).astype(np.float64)
                    scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
                    scores[:, np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
                    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
                    np.testing.assert_allclose(self.load(name, fmt, f"blk.{layer}.attn_probs"), e / e.sum(-1, keepdims=True), atol=1e-5)

    def test_embed_is_the_token_rows_plus_learned_positions_for_gpt2(self):
        import numpy as np
        from safetensors.numpy import load_file

        for name, fx in FIXTURES.items():
            with self.subTest(model=name):
                w = load_file(MODELS / name / "hf" / "model.safetensors")
                ids = self.load(name, "hf", "tokens")
                if fx["arch"] == "llama":
                    expected = w["model.embed_tokens.weight"][ids]
                else:
                    expected = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][: len(ids)]
                np.testing.assert_array_equal(self.load(name, "hf", "embed"), expected)

    def test_projections_are_the_normalised_input_times_the_checkpoint_weights(self):
        import numpy as np
        from safetensors.numpy import load_file

        for name, fx in FIXTURES.items():
            with self.subTest(model=name):
                w = load_file(MODELS / name / "hf" / "model.safetensors")
                x = self.load(name, "hf", "blk.1.attn_norm").astype(np.float64)
                if fx["arch"] == "llama":
                    expected = {t: x @ w[f"model.layers.1.self_attn.{t}_proj.weight"].T for t in ("q", "k", "v")}
                else:
                    # GPT-2's Conv1D stores [in, out] and fuses q | k | v along out.
                    qkv = x @ w["transformer.h.1.attn.c_attn.weight"] + w["transformer.h.1.attn.c_attn.bias"]
                    expected = dict(zip(("q", "k", "v"), np.split(qkv, 3, axis=-1)))
                for t, e in expected.items():
                    np.testing.assert_allclose(self.load(name, "hf", f"blk.1.{t}"), e, rtol=1e-4, atol=1e-4, err_msg=t)

    def test_residual_stream_adds_the_attention_and_ffn_outputs(self):
        import numpy as np

        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                entering = self.load(name, fmt, "embed").astype(np.float64)
                for layer in range(fx["n_layers"]):
                    p = f"blk.{layer}."
                    added = entering + self.load(name, fmt, p + "attn_out") + self.load(name, fmt, p + "ffn_out")
                    leaving = self.load(name, fmt, p + "block_out")
                    np.testing.assert_allclose(leaving, added, rtol=1e-5, atol=1e-4, err_msg=p + "block_out")
                    entering = leaving.astype(np.float64)

    def test_norm_checkpoints_normalise_the_residual_stream_with_the_checkpoint_weights(self):
        import numpy as np
        from safetensors.numpy import load_file

        eps = 1e-5  # both fixtures, scripts/make-fixtures.py
        modules = {
            "llama": dict(attn="model.layers.{i}.input_layernorm", ffn="model.layers.{i}.post_attention_layernorm", final="model.norm"),
            "gpt2": dict(attn="transformer.h.{i}.ln_1", ffn="transformer.h.{i}.ln_2", final="transformer.ln_f"),
        }

        for name, fx in FIXTURES.items():
            with self.subTest(model=name):
                w = load_file(MODELS / name / "hf" / "model.safetensors")

                def norm(x, which, i=None):
                    prefix = modules[fx["arch"]][which].format(i=i)
                    if fx["arch"] == "llama":  # RMSNorm
                        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w[prefix + ".weight"]
                    c = x - x.mean(-1, keepdims=True)  # LayerNorm
                    return c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * w[prefix + ".weight"] + w[prefix + ".bias"]

                entering = self.load(name, "hf", "embed").astype(np.float64)
                for i in range(fx["n_layers"]):
                    got = self.load(name, "hf", f"blk.{i}.attn_norm")
                    np.testing.assert_allclose(got, norm(entering, "attn", i), rtol=1e-4, atol=1e-5, err_msg=f"blk.{i}.attn_norm")
                    mid = entering + self.load(name, "hf", f"blk.{i}.attn_out")
                    got = self.load(name, "hf", f"blk.{i}.ffn_norm")
                    np.testing.assert_allclose(got, norm(mid, "ffn", i), rtol=1e-4, atol=1e-5, err_msg=f"blk.{i}.ffn_norm")
                    entering = self.load(name, "hf", f"blk.{i}.block_out").astype(np.float64)
                np.testing.assert_allclose(self.load(name, "hf", "final_norm"), norm(entering, "final"), rtol=1e-4, atol=1e-5, err_msg="final_norm")

    def test_last_position_checkpoints_follow_from_the_logits(self):
        import numpy as np

        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                logits = self.load(name, fmt, "logits")
                last = self.load(name, fmt, "last_logits")
                np.testing.assert_array_equal(last, logits[-1])
                self.assertEqual(int(self.load(name, fmt, "argmax")), int(np.argmax(last)))
                e = np.exp(last.astype(np.float64) - last.max())
                np.testing.assert_allclose(self.load(name, fmt, "probs"), e / e.sum(), rtol=1e-5, atol=1e-7)
                self.assertEqual(int(self.load(name, fmt, "generated")[0]), int(np.argmax(last)))

    def test_step_logits_start_at_the_last_logits_and_generated_is_their_argmax(self):
        import numpy as np

        for name, fmt, fx in self.each_dump():
            with self.subTest(model=name, format=fmt):
                steps = self.load(name, fmt, "step_logits")
                self.assertEqual(steps.shape, (N_GENERATE, fx["V"]))
                # Row 0 is the prompt forward's own last row, not a recomputation.
                np.testing.assert_array_equal(steps[0], self.load(name, fmt, "last_logits"))
                self.assertEqual(self.load(name, fmt, "generated").tolist(), np.argmax(steps, axis=1).tolist())

    def test_each_step_is_a_full_forward_of_the_prompt_and_the_history_before_it(self):
        for name, fmt, fx in self.each_dump():
            if fmt == "hf":
                continue
            with self.subTest(model=name, format=fmt):
                steps, tokens = self.load(name, fmt, "step_logits"), fx["tokens"]
                history = FORCED if fmt == "forced" else self.load(name, fmt, "generated").tolist()
                for t in range(N_GENERATE):
                    want = hf_prefill_last_logits(name, tokens + history[:t])
                    self.assertLess(relative_rms(steps[t], want), 1e-4, f"step {t}")

    def test_decode_layer_taps_are_a_full_forwards_taps_at_the_position_each_step_fed(self):
        import numpy as np
        import torch

        for name, fmt, fx in self.each_dump():
            if fmt == "hf":
                continue
            with self.subTest(model=name, format=fmt):
                tokens, T = fx["tokens"], len(fx["tokens"])
                history = FORCED if fmt == "forced" else self.load(name, fmt, "generated").tolist()
                steps = [1, 2, 3]  # N = 4: first, middle (4 // 2) and last
                for s, t in enumerate(steps):
                    pos = T + t - 1  # decode step t fed history[t-1] there
                    with torch.no_grad():
                        out = hf_model(name)(torch.tensor([tokens + history[:t]]), use_cache=True, output_attentions=True, output_hidden_states=True)
                    for layer in range(fx["n_layers"]):
                        probs = self.load(name, fmt, f"blk.{layer}.dec_attn_probs")[s]  # [H, T+N-1]
                        self.assertTrue((probs[:, pos + 1 :] == 0).all(), f"step {t}: attention beyond position {pos}")
                        self.assertLess(relative_rms(probs[:, : pos + 1], out.attentions[layer][0, :, pos].numpy()), 1e-4, f"step {t} layer {layer}")
                        keys, _ = cache_layer(out.past_key_values, layer)
                        cache = self.load(name, fmt, f"blk.{layer}.dec_k_cache")[s]  # [KV, T+N-1, hd]
                        self.assertTrue((cache[:, pos + 1 :] == 0).all(), f"step {t}: cache rows beyond position {pos}")
                        self.assertLess(relative_rms(cache[:, : pos + 1], keys[0].numpy()), 1e-4, f"step {t} layer {layer}")
                    # hidden_states[1] is what layer 0 hands on (the last entry has the final norm applied).
                    block_out = self.load(name, fmt, "blk.0.dec_block_out")[s]
                    self.assertLess(relative_rms(block_out, out.hidden_states[1][0, pos].numpy()), 1e-4, f"step {t}")
                    self.assertEqual(np.shape(self.load(name, fmt, "blk.1.dec_q")), (3, fx["H"] * fx["hd"]))

    def test_a_forced_history_is_fed_whatever_the_dumper_would_pick_and_recorded(self):
        for name, fx in FIXTURES.items():
            with self.subTest(model=name):
                own = self.load(name, "gguf", "generated").tolist()
                self.assertNotEqual(own[:-1], FORCED[:-1], "the forced history must differ from the greedy one to show anything")
                self.assertEqual(self.manifest(name, "forced")["force_tokens"], FORCED)
                self.assertNotIn("force_tokens", self.manifest(name, "gguf"))
                # The prompt's step is the same; every later one follows the history fed.
                forced, greedy = self.load(name, "forced", "step_logits"), self.load(name, "gguf", "step_logits")
                self.assertEqual(forced[0].tolist(), greedy[0].tolist())
                for t in range(1, N_GENERATE):
                    self.assertNotEqual(forced[t].tolist(), greedy[t].tolist(), f"step {t}")

    def test_gguf_and_hf_folder_of_one_model_give_the_same_tensors(self):
        import numpy as np

        for name, fx in FIXTURES.items():
            with self.subTest(model=name):
                for key in ("blk.0.q", "blk.0.k", "blk.1.attn_probs", "logits"):
                    np.testing.assert_allclose(self.load(name, "gguf", key), self.load(name, "hf", key), rtol=1e-4, atol=1e-4, err_msg=key)
                np.testing.assert_array_equal(self.load(name, "gguf", "generated"), self.load(name, "hf", "generated"))


# llama.cpp's ids (llama-cpp-python 0.3.36) for FAMILY_PROMPT: Llama-3's BPE with BOS 128000, Qwen2's without BOS.
FAMILY_PROMPT = "The capital of France is"
FAMILY_TOKENS = {"llama3": [128000, 791, 6864, 315, 9822, 374], "qwen2": [785, 6722, 315, 9625, 374], "qwen3": [785, 6722, 315, 9625, 374]}


def gguf_weights(path):
    """name -> float64 array of an F32 GGUF's tensors (numpy shape: ggml's axes reversed, so a
    projection is [out, in] as in HF), and its metadata reader."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    return {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}, reader


def rotate_halves(x, inv_freq, head_dim):
    """[T, heads*hd] rotated by position * inv_freq in HF's half-split pairs (i, i + hd/2), in numpy float64."""
    import numpy as np

    T = len(x)
    angles = np.arange(T, dtype=np.float64)[:, None, None] * inv_freq
    heads = x.reshape(T, -1, head_dim).astype(np.float64)
    a, b = heads[..., : head_dim // 2], heads[..., head_dim // 2 :]
    return np.concatenate([a * np.cos(angles) - b * np.sin(angles), b * np.cos(angles) + a * np.sin(angles)], axis=-1).reshape(T, -1)


@testkit.needs_file(FAMILY_MODELS / "qwen3" / "model-f32.gguf", FAMILY_HINT)
class FamilyDumps(unittest.TestCase):
    """Llama-3 from its F32 GGUF (the rope_freqs path), Qwen2 and Qwen3 from their HF folders (their
    GGUF route is the suite's; the F32 GGUF holds the same weights, used here as the independent values)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="parity-pytorch-family-test-")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.dumps = {}
        for family, model in (("llama3", "model-f32.gguf"), ("qwen2", "hf"), ("qwen3", "hf")):
            out = Path(cls.tmp.name) / family
            result = run_dumper(FAMILY_MODELS / family / model, out, prompt=FAMILY_PROMPT, n_generate=3)
            if result.returncode != 0:
                raise AssertionError(f"dump.py on {family} {model} exited {result.returncode}: {result.stderr.strip()}")
            cls.dumps[family] = out

    def load(self, family, key):
        import numpy as np

        return np.load(self.dumps[family] / f"{key}.npy")

    def test_prompt_ids_are_llama_cpps(self):
        for family, out in self.dumps.items():
            with self.subTest(family=family):
                self.assertEqual(self.load(family, "tokens").tolist(), FAMILY_TOKENS[family])

    def test_every_family_tensor_is_dumped_and_qwen3_has_its_q_and_k_norms(self):
        with open(ROOT / "checkpoints" / "catalog.toml", "rb") as f:
            catalog = tomllib.load(f)
        sizes = {"llama3": dict(H=4, KV=1, hd=64), "qwen2": dict(H=4, KV=2, hd=64), "qwen3": dict(H=4, KV=2, hd=128)}
        for family, out in self.dumps.items():
            with self.subTest(family=family):
                with open(out / "manifest.toml", "rb") as f:
                    manifest = tomllib.load(f)
                arch = "llama" if family == "llama3" else family
                self.assertEqual(manifest["arch"], arch)
                dims = dict(sizes[family], d=256, T=len(FAMILY_TOKENS[family]), N=3, V=self.load(family, "logits").shape[-1])
                for entry in catalog["tensor"]:
                    if entry["scope"] != "layer" or arch not in entry.get("arch", [arch]):
                        continue
                    self.assertEqual(
                        self.load(family, f"blk.3.{entry['name']}").shape, testkit.catalog_shape(entry["shape"], dims, catalog), entry["name"]
                    )
                self.assertEqual("file" in manifest["tensors"]["blk.0.q_norm"], family == "qwen3")

    def test_qwen2_q_k_v_are_the_projections_plus_their_biases(self):
        import numpy as np

        w, _ = gguf_weights(FAMILY_MODELS / "qwen2" / "model-f32.gguf")
        for layer in (0, 3):
            x = self.load("qwen2", f"blk.{layer}.attn_norm").astype(np.float64)
            for name in ("q", "k", "v"):
                got, bias = self.load("qwen2", f"blk.{layer}.{name}"), w[f"blk.{layer}.attn_{name}.bias"]
                np.testing.assert_allclose(got - bias, x @ w[f"blk.{layer}.attn_{name}.weight"].T, rtol=1e-4, atol=1e-5, err_msg=f"{layer} {name}")
                self.assertGreater(np.abs(bias).max(), 0.01, "a zero bias would not show it was added")

    def test_qwen3_q_norm_and_k_norm_are_a_per_head_rms_norm_of_q_and_k_before_rope(self):
        import numpy as np

        w, reader = gguf_weights(FAMILY_MODELS / "qwen3" / "model-f32.gguf")
        eps = float(reader.fields["qwen3.attention.layer_norm_rms_epsilon"].contents())
        theta = float(reader.fields["qwen3.rope.freq_base"].contents())
        hd = 128
        inv_freq = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        for layer in (0, 3):
            for raw, normed, weight in (("q", "q_norm", "attn_q_norm"), ("k", "k_norm", "attn_k_norm")):
                x = self.load("qwen3", f"blk.{layer}.{raw}").astype(np.float64)
                heads = x.reshape(len(x), -1, hd)
                expected = (heads / np.sqrt((heads**2).mean(-1, keepdims=True) + eps) * w[f"blk.{layer}.{weight}.weight"]).reshape(x.shape)
                got = self.load("qwen3", f"blk.{layer}.{normed}")
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"layer {layer} {normed}")
                rotated = self.load("qwen3", f"blk.{layer}.{raw}_rope")
                np.testing.assert_allclose(rotated, rotate_halves(got, inv_freq, hd), rtol=1e-4, atol=1e-5, err_msg=f"layer {layer} {raw}_rope")

    def test_llama3_rope_divides_each_frequency_by_the_gguf_rope_freqs_factor(self):
        import numpy as np

        w, reader = gguf_weights(FAMILY_MODELS / "llama3" / "model-f32.gguf")
        theta = float(reader.fields["llama.rope.freq_base"].contents())
        hd = 64
        plain = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        scaled = plain / w["rope_freqs.weight"]
        self.assertEqual(float(w["rope_freqs.weight"].max()), 8.0)
        for layer in (0, 3):
            for name in ("q", "k"):
                x, got = self.load("llama3", f"blk.{layer}.{name}"), self.load("llama3", f"blk.{layer}.{name}_rope")
                np.testing.assert_allclose(got, rotate_halves(x, scaled, hd), rtol=1e-4, atol=1e-5, err_msg=f"layer {layer} {name}_rope")
                # Unscaled frequencies would rotate visibly otherwise (transformers' GGUF loader alone ignores rope_freqs).
                self.assertGreater(np.abs(got - rotate_halves(x, plain, hd)).max(), 1e-2)


# llama.cpp's ids (llama-cpp-python 0.3.36, add_bos=True, special=False) for each one's prompt;
# Gemma-2's is longer than its 8-token window.
GEMMA_PHI_PROMPTS = {"gemma2": "The capital of France is Paris, and the capital of Italy is", "phi3": FAMILY_PROMPT}
GEMMA_PHI_TOKENS = {
    "gemma2": [1, 1576, 7483, 310, 3444, 338, 3681, 29892, 322, 278, 7483, 310, 12730, 338],
    "phi3": [1, 450, 7483, 310, 3444, 338],
}


def rms_norm(x, weight, eps):
    """RMSNorm in numpy float64: x / sqrt(mean(x^2) + eps) * weight (the weight as the GGUF stores it:
    for Gemma-2 llama.cpp's converter has already added the 1)."""
    import numpy as np

    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def softmax_rows(scores):
    import numpy as np

    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@testkit.needs_file(FAMILY_MODELS / "gemma2" / "model-f32.gguf", FAMILY_HINT)
@testkit.needs_file(FAMILY_MODELS / "phi3" / "model-f32.gguf", FAMILY_HINT)
class GemmaPhi3Dumps(unittest.TestCase):
    """Gemma-2 and Phi-3 from their F32 GGUFs (transformers' GGUF loader, the config completed from
    the file), recomputed in numpy float64 from the same GGUF's weights."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="parity-pytorch-gemma-phi-test-")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.dumps = {}
        for family, prompt in GEMMA_PHI_PROMPTS.items():
            out = Path(cls.tmp.name) / family
            result = run_dumper(FAMILY_MODELS / family / "model-f32.gguf", out, prompt=prompt, n_generate=3)
            if result.returncode != 0:
                raise AssertionError(f"dump.py on {family} exited {result.returncode}: {result.stderr.strip()}")
            cls.dumps[family] = out

    def load(self, family, key):
        import numpy as np

        return np.load(self.dumps[family] / f"{key}.npy")

    def test_prompt_ids_are_llama_cpps(self):
        for family in self.dumps:
            with self.subTest(family=family):
                self.assertEqual(self.load(family, "tokens").tolist(), GEMMA_PHI_TOKENS[family])

    def test_every_catalog_tensor_of_the_arch_is_dumped_and_only_gemma2_has_post_norms(self):
        with open(ROOT / "checkpoints" / "catalog.toml", "rb") as f:
            catalog = tomllib.load(f)
        sizes = {"gemma2": dict(H=4, KV=2, hd=128), "phi3": dict(H=4, KV=2, hd=64)}
        for family, out in self.dumps.items():
            with self.subTest(family=family):
                with open(out / "manifest.toml", "rb") as f:
                    manifest = tomllib.load(f)
                self.assertEqual(manifest["arch"], family)
                dims = dict(sizes[family], d=256, T=len(GEMMA_PHI_TOKENS[family]), N=3, V=self.load(family, "logits").shape[-1])
                for entry in catalog["tensor"]:
                    if entry["scope"] != "layer" or family not in entry.get("arch", [family]):
                        continue
                    self.assertEqual(
                        self.load(family, f"blk.3.{entry['name']}").shape, testkit.catalog_shape(entry["shape"], dims, catalog), entry["name"]
                    )
                for name in ("post_attn_norm", "post_ffn_norm", "dec_post_attn_norm", "dec_post_ffn_norm"):
                    self.assertEqual("file" in manifest["tensors"][f"blk.0.{name}"], family == "gemma2", name)

    def test_gemma2_block_recomputes_from_the_gguf_weights_scaled_embedding_to_capped_logits(self):
        import numpy as np

        w, reader = gguf_weights(FAMILY_MODELS / "gemma2" / "model-f32.gguf")
        eps = float(reader.fields["gemma2.attention.layer_norm_rms_epsilon"].contents())
        cap = float(reader.fields["gemma2.final_logit_softcapping"].contents())
        ids = GEMMA_PHI_TOKENS["gemma2"]
        x = w["token_embd.weight"][ids] * np.sqrt(256)
        np.testing.assert_allclose(self.load("gemma2", "embed"), x, rtol=1e-6, err_msg="embed")
        for layer in range(4):
            p = f"blk.{layer}."
            load = lambda name: self.load("gemma2", p + name).astype(np.float64)  # noqa: E731
            close = lambda name, want: np.testing.assert_allclose(load(name), want, rtol=1e-4, atol=1e-5, err_msg=p + name)  # noqa: E731
            close("attn_norm", rms_norm(x, w[p + "attn_norm.weight"], eps))
            close("post_attn_norm", rms_norm(load("attn_out"), w[p + "post_attention_norm.weight"], eps))
            h = x + load("post_attn_norm")
            close("ffn_norm", rms_norm(h, w[p + "ffn_norm.weight"], eps))
            gate, up = load("ffn_norm") @ w[p + "ffn_gate.weight"].T, load("ffn_norm") @ w[p + "ffn_up.weight"].T
            gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
            close("ffn_out", (gelu * up) @ w[p + "ffn_down.weight"].T)
            close("post_ffn_norm", rms_norm(load("ffn_out"), w[p + "post_ffw_norm.weight"], eps))
            close("block_out", h + load("post_ffn_norm"))
            x = load("block_out")
        final = rms_norm(x, w["output_norm.weight"], eps)
        np.testing.assert_allclose(self.load("gemma2", "final_norm"), final, rtol=1e-4, atol=1e-5)
        logits, raw = self.load("gemma2", "logits"), final @ w["token_embd.weight"].T
        np.testing.assert_allclose(logits, cap * np.tanh(raw / cap), rtol=1e-4, atol=1e-5)
        self.assertLessEqual(np.abs(logits).max(), cap)
        self.assertGreater(np.abs(logits - raw).max(), 0.1, "uncapped logits would pass too")

    def test_gemma2_scores_are_soft_capped_then_windowed_on_layers_0_and_2(self):
        import numpy as np

        reader = gguf_weights(FAMILY_MODELS / "gemma2" / "model-f32.gguf")[1]
        cap = float(reader.fields["gemma2.attn_logit_softcapping"].contents())
        window = int(reader.fields["gemma2.attention.sliding_window"].contents())
        T, hd = len(GEMMA_PHI_TOKENS["gemma2"]), 128
        i, j = np.arange(T)[:, None], np.arange(T)[None, :]
        for layer in range(4):
            q = self.load("gemma2", f"blk.{layer}.q_rope").astype(np.float64).reshape(T, 4, hd).transpose(1, 0, 2)
            k = self.load("gemma2", f"blk.{layer}.k_rope").astype(np.float64).reshape(T, 2, hd).transpose(1, 0, 2)
            scores = q @ np.repeat(k, 2, axis=0).transpose(0, 2, 1) / np.sqrt(hd)  # query head h reads KV head h // 2
            scores = cap * np.tanh(scores / cap)
            seen = (j <= i) & ((i - j < window) if layer % 2 == 0 else True)
            want = softmax_rows(np.where(seen, scores, -np.inf))
            got = self.load("gemma2", f"blk.{layer}.attn_probs")
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"layer {layer}")
            self.assertEqual(bool((got[:, -1, : T - window] == 0).all()), layer % 2 == 0, f"layer {layer}: the window")
            # The decode steps (1 and 2, positions T and T+1) see the window too.
            dec = self.load("gemma2", f"blk.{layer}.dec_attn_probs")
            counts = (dec > 0).sum(-1)  # [S, H]
            expected = [[window] * 4, [window] * 4] if layer % 2 == 0 else [[T + 1] * 4, [T + 2] * 4]
            self.assertEqual(counts.tolist(), expected, f"layer {layer}: decode rows")

    def test_phi3_q_k_v_are_slices_of_the_fused_projection_and_its_ffn_gate_comes_first(self):
        import numpy as np

        w, _ = gguf_weights(FAMILY_MODELS / "phi3" / "model-f32.gguf")
        for layer in (0, 3):
            p = f"blk.{layer}."
            qkv = self.load("phi3", p + "attn_norm").astype(np.float64) @ w[p + "attn_qkv.weight"].T
            for name, cut in (("q", slice(0, 256)), ("k", slice(256, 384)), ("v", slice(384, 512))):
                np.testing.assert_allclose(self.load("phi3", p + name), qkv[:, cut], rtol=1e-4, atol=1e-5, err_msg=p + name)
            fused = self.load("phi3", p + "ffn_norm").astype(np.float64) @ w[p + "ffn_up.weight"].T
            gate, up = fused[:, :768], fused[:, 768:]
            want = (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
            np.testing.assert_allclose(self.load("phi3", p + "ffn_out"), want, rtol=1e-4, atol=1e-5, err_msg=p + "ffn_out")


@testkit.needs_file(FAMILY_MODELS / "qwen2" / "model-f32.gguf", FAMILY_HINT)
class FamilyGgufTokenizers(unittest.TestCase):
    """transformers' GGUF tokenizer for Llama-3's llama-bpe and Qwen2's qwen2 pre-tokenizers, left
    uncorrected, and the corrected SentencePiece ones of Gemma-2 (no dummy prefix, merges by score)
    and Phi-3, against llama.cpp's own tokenizer on the fixture strings and the suite prompts."""

    def test_llama_bpe_qwen2_gemma2_and_phi3_give_llama_cpps_ids(self):
        try:
            import llama_cpp
        except ImportError as e:
            if testkit.REQUIRED:
                raise
            self.skipTest(f"llama_cpp is not importable: {e}")

        sys.path.insert(0, str(DUMPER.parent))
        import dump

        cases = json.loads((ROOT / "fixtures" / "tokenizer" / "expected.json").read_text())["cases"]
        texts = [c["text"] for c in cases if c["vocab"] in ("bpe-tiny", "spm-tiny")]
        with open(ROOT / "checkpoints" / "suite-families.toml", "rb") as f:
            texts += [p["text"] for p in tomllib.load(f)["prompt"]]
        quiet = llama_cpp.llama_log_callback(lambda _level, _text, _user_data: None)  # kept alive: llama.cpp holds the pointer
        llama_cpp.llama_log_set(quiet, None)
        llama_cpp.llama_backend_init()
        for family in ("llama3", "qwen2", "gemma2", "phi3"):
            path = FAMILY_MODELS / family / "model-f32.gguf"
            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
            self.assertTrue(model, f"llama.cpp could not load {path}")
            try:
                vocab = llama_cpp.llama_model_get_vocab(model)
                meta = dump.read_gguf_metadata(path)
                tokenizer = dump.gguf_tokenizer(str(path.parent), path.name, meta)
                for text in texts:
                    data = text.encode()
                    buf = (llama_cpp.llama_token * (len(data) + 8))()
                    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
                    with self.subTest(family=family, text=text):
                        self.assertEqual(dump.encode_like_llama_cpp(tokenizer, meta, text), list(buf[:n]))
            finally:
                llama_cpp.llama_model_free(model)


class Usage(unittest.TestCase):
    def test_force_tokens_of_another_length_than_n_generate_exits_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_dumper(MODELS / "tiny-llama" / "model-f32.gguf", Path(tmp) / "out", force_tokens=FORCED[:-1])
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn("exactly --n-generate", result.stderr)
            self.assertFalse((Path(tmp) / "out").exists())

    def test_missing_model_file_exits_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_dumper(Path(tmp) / "no-such-model.gguf", Path(tmp) / "out")
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertIn("model not found", result.stderr)
            self.assertFalse((Path(tmp) / "out").exists())

    def test_gguf_without_weights_exits_2_instead_of_running_random_ones(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_dumper(ROOT / "fixtures" / "tokenizer" / "spm-tiny" / "spm-tiny.gguf", Path(tmp) / "out")
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertIn("lacks", result.stderr)

    def test_folder_without_config_exits_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_dumper(Path(tmp), Path(tmp) / "out")
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertIn("no config.json", result.stderr)

    def test_folder_without_safetensors_exits_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text((MODELS / "tiny-llama" / "hf" / "config.json").read_text())
            result = run_dumper(Path(tmp), Path(tmp) / "out")
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertIn("no *.safetensors", result.stderr)

    def test_missing_packages_exit_3_with_one_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            # -S leaves site-packages (numpy, torch, transformers) off the path.
            cmd = [
                sys.executable,
                "-S",
                str(DUMPER),
                "--model",
                str(MODELS / "tiny-llama" / "hf"),
                "--prompt",
                PROMPT,
                "--out",
                str(Path(tmp) / "out"),
            ]
            result = subprocess.run(cmd, capture_output=True, text=True)
            self.assertEqual(result.returncode, 3, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn("not installed", result.stderr)


class GgufTokenizer(unittest.TestCase):
    """The corrected GGUF tokenizer against llama.cpp's ids in fixtures/tokenizer/expected.json."""

    def check_vocab(self, vocab, gguf_path):
        sys.path.insert(0, str(DUMPER.parent))
        import dump

        meta = dump.read_gguf_metadata(gguf_path)
        tokenizer = dump.gguf_tokenizer(str(gguf_path.parent), gguf_path.name, meta)
        cases = [c for c in json.loads((ROOT / "fixtures" / "tokenizer" / "expected.json").read_text())["cases"] if c["vocab"] == vocab]
        self.assertTrue(cases)
        for case in cases:
            with self.subTest(vocab=vocab, text=case["text"]):
                self.assertEqual(dump.encode_like_llama_cpp(tokenizer, meta, case["text"]), case["llama_cpp"])

    def test_sentencepiece_vocabulary_matches_llama_cpp(self):
        self.check_vocab("spm-tiny", ROOT / "fixtures" / "tokenizer" / "spm-tiny" / "spm-tiny.gguf")

    def test_gpt2_byte_level_vocabulary_matches_llama_cpp(self):
        self.check_vocab("bpe-tiny", ROOT / "fixtures" / "tokenizer" / "bpe-tiny" / "bpe-tiny.gguf")

    @testkit.needs_file(SMOLLM2, "scripts/fetch-models.sh")
    def test_smollm2_vocabulary_matches_llama_cpp(self):
        self.check_vocab("smollm2", SMOLLM2)


if __name__ == "__main__":
    problem = import_problem()
    if problem:
        testkit.cannot_run(f"the reference environment is not importable: {problem}")
    os.environ.setdefault("TQDM_DISABLE", "1")
    unittest.main()

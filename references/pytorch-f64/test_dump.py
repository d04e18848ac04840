"""Tests of the float64 ground-truth dumper on the tiny fixture models.

    ~/.cache/parity/venv/bin/python references/pytorch-f64/test_dump.py

Dumps fixtures/models/tiny-llama and tiny-gpt2 (F32 GGUF) with both references/pytorch/dump.py and
references/pytorch-f64/dump.py into a temporary folder and checks that the truth is the same
computation in another precision: its manifest says so, it has the same prompt ids and tensors, every
tensor is within float32 rounding noise of the float32 dump without being a copy of it, and layer 0's
attn_norm, recomputed in numpy float64 from the GGUF's own weights (read with the `gguf` package), is
what the truth holds to within half a float32 ulp, i.e. correctly rounded, which the float32 dump is
not. The truth's decode steps, greedy and with --force-tokens, follow the history fed: each is within
1e-4 of a full float64 forward of the prompt plus the history before it. Also the exit codes of the
command line. Skips (exit 0) when the reference environment is not importable, and fails then
instead when PARITY_REQUIRE_REFERENCES is set (references/common/testkit.py).
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
DUMPERS = {"pytorch": ROOT / "references" / "pytorch" / "dump.py", "pytorch-f64": ROOT / "references" / "pytorch-f64" / "dump.py"}
MODELS = {name: ROOT / "fixtures" / "models" / name / "model-f32.gguf" for name in ("tiny-llama", "tiny-gpt2")}
# The model-family suite's models (scripts/make-family-models.py): seeded random weights, llama.cpp's converter.
FAMILY_MODELS = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "parity")) / "models" / "families"
FAMILY_HINT = "~/.cache/parity/venv/bin/python scripts/make-family-models.py"
PROMPT = "The quick brown fox jumps over the lazy dog."
N_GENERATE = 4

# Relative RMS difference a tensor of the truth may have from the float32 dump: float32 rounding
# noise through two small layers is ~1e-7..1e-6 (the probs at the end ~2e-6); an error of the
# float64 path itself (a wrong op, a different weight) is orders of magnitude larger.
NOISE = 1e-5


def import_problem():
    """Why the reference environment cannot run here, or None."""
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{e} (run with ~/.cache/parity/venv/bin/python after scripts/setup-references.sh)"
    return None


# A decode history unlike either fixture's own greedy one (checked), fed with --force-tokens.
FORCED = [300, 7, 42, 128]


def dumper_command(reference, model, out, python_flags=(), force_tokens=None):
    return [
        sys.executable,
        *python_flags,
        str(DUMPERS[reference]),
        "--model",
        str(model),
        "--prompt",
        PROMPT,
        "--n-generate",
        str(N_GENERATE),
        "--out",
        str(out),
        *(["--force-tokens", ",".join(map(str, force_tokens))] if force_tokens is not None else []),
    ]


@functools.cache
def float64_hf_model(name):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(MODELS[name].parent / "hf", dtype=torch.float32).to(torch.float64).eval()


def float64_prefill_last_logits(name, ids):
    """transformers' own full forward of `ids` (no cache) on the fixture's HF folder cast to float64:
    the last position's logits. Its Llama still rounds a few steps to float32 (see pytorch/dump.py)."""
    import torch

    with torch.no_grad():
        return float64_hf_model(name)(torch.tensor([ids])).logits[0, -1].numpy()


class TruthBesideFloat32(unittest.TestCase):
    """Both dumps of both fixtures, made once (concurrently) for all tests."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="parity-pytorch-f64-test-")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.dumps, running = {}, {}
        for name, model in MODELS.items():
            for reference in [*DUMPERS, "forced"]:
                out = Path(cls.tmp.name) / f"{name}-{reference}"
                cls.dumps[name, reference] = out
                # "forced": the truth decoding on FORCED.
                command = (
                    dumper_command("pytorch-f64", model, out, force_tokens=FORCED) if reference == "forced" else dumper_command(reference, model, out)
                )
                running[name, reference] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for (name, reference), process in running.items():
            _, stderr = process.communicate()
            if process.returncode != 0:
                raise AssertionError(f"{reference} on {MODELS[name]} exited {process.returncode}: {stderr.strip()}")

    def manifest(self, name, reference):
        with open(self.dumps[name, reference] / "manifest.toml", "rb") as f:
            return tomllib.load(f)

    def load(self, name, reference, key):
        import numpy as np

        return np.load(self.dumps[name, reference] / f"{key}.npy")

    def files(self, name, reference):
        """key -> file of every tensor the dump holds."""
        return {k: t["file"] for k, t in self.manifest(name, reference)["tensors"].items() if "file" in t}

    def test_manifest_names_the_truth_and_its_float64_computation(self):
        for name in MODELS:
            with self.subTest(model=name):
                truth, f32 = self.manifest(name, "pytorch-f64"), self.manifest(name, "pytorch")
                self.assertEqual(truth["reference"], "pytorch-f64")
                self.assertEqual(truth["dtype"], "float64")
                self.assertTrue(truth["version"].startswith("transformers ") and truth["version"].endswith(", float64"), truth["version"])
                self.assertEqual(f32["reference"], "pytorch")
                self.assertEqual(f32["dtype"], "float32")
                self.assertEqual(truth["version"], f32["version"] + ", float64")
                self.assertEqual(truth["model_sha256"], f32["model_sha256"])

    def test_same_prompt_ids_and_tensor_set_as_the_float32_dump(self):
        for name in MODELS:
            with self.subTest(model=name):
                truth, f32 = self.manifest(name, "pytorch-f64"), self.manifest(name, "pytorch")
                self.assertEqual(truth["token_ids"], f32["token_ids"])
                self.assertEqual(self.files(name, "pytorch-f64"), self.files(name, "pytorch"))
                self.assertEqual(truth["tensors"].keys(), f32["tensors"].keys())
                self.assertGreater(len(self.files(name, "pytorch-f64")), 20)

    def test_every_tensor_is_within_float32_noise_of_the_float32_dump_without_being_a_copy(self):
        import numpy as np

        for name in MODELS:
            with self.subTest(model=name):
                identical, floats = [], 0
                for key in self.files(name, "pytorch"):
                    truth, f32 = self.load(name, "pytorch-f64", key), self.load(name, "pytorch", key)
                    self.assertEqual((truth.dtype.str, truth.shape), (f32.dtype.str, f32.shape), key)
                    if truth.dtype.kind == "i":  # tokens, argmax and the greedy ids: no near-ties on these fixtures
                        np.testing.assert_array_equal(truth, f32, err_msg=key)
                        continue
                    floats += 1
                    t, f = truth.astype(np.float64), f32.astype(np.float64)
                    self.assertTrue(np.isfinite(t).all(), key)
                    rel_rms = np.sqrt(np.mean((t - f) ** 2) / np.mean(t**2))
                    self.assertLess(rel_rms, NOISE, f"{key}: relative RMS {rel_rms:.3g} from the float32 dump")
                    if np.array_equal(truth, f32):
                        identical.append(key)
                # embed is rows of the weights (GPT-2: plus position rows, a single addition, which float32
                # already rounds correctly), so it is the same; everything computed after it is not.
                self.assertEqual(identical, ["embed"])
                self.assertGreater(floats, 20)

    def test_layer0_attn_norm_is_the_correctly_rounded_norm_of_the_gguf_embedding_rows(self):
        import gguf
        import numpy as np

        for name, path in MODELS.items():
            with self.subTest(model=name):
                reader = gguf.GGUFReader(str(path))
                arch = reader.fields["general.architecture"].contents()
                weights = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}  # F32 file: exact
                ids = self.load(name, "pytorch-f64", "tokens")
                x = weights["token_embd.weight"][ids]
                if arch == "llama":
                    eps = float(reader.fields["llama.attention.layer_norm_rms_epsilon"].contents())
                    expected = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weights["blk.0.attn_norm.weight"]
                else:
                    eps = float(reader.fields["gpt2.attention.layer_norm_epsilon"].contents())
                    x = x + weights["position_embd.weight"][: len(ids)]
                    c = x - x.mean(axis=-1, keepdims=True)
                    expected = (
                        c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + eps) * weights["blk.0.attn_norm.weight"]
                        + weights["blk.0.attn_norm.bias"]
                    )
                # Correct rounding is at most half an ulp away; the slack covers float64's own last bits.
                self.assertLessEqual(self.worst_ulps(name, "pytorch-f64", "blk.0.attn_norm", expected), 0.5 + 1e-6)
                # And the bound has teeth here: the float32 computation of the same norm misses it.
                self.assertGreater(self.worst_ulps(name, "pytorch", "blk.0.attn_norm", expected), 0.5 + 1e-6)

    def test_the_truth_decodes_through_its_cache_on_the_history_it_is_fed(self):
        import numpy as np

        for name in MODELS:
            for dump in ("pytorch-f64", "forced"):
                with self.subTest(model=name, dump=dump):
                    steps, generated = self.load(name, dump, "step_logits"), self.load(name, dump, "generated")
                    self.assertEqual(steps.shape, (N_GENERATE, self.load(name, dump, "logits").shape[-1]))
                    # Row 0 is the prompt forward's last row, rounded to float32 once like last_logits.
                    np.testing.assert_array_equal(steps[0], self.load(name, dump, "last_logits"))
                    # The choice is made on the float64 logits: after rounding it is a maximum of its row,
                    # the first one unless rounding made a tie.
                    for t in range(N_GENERATE):
                        self.assertEqual(steps[t, generated[t]], steps[t].max(), f"step {t}")
                    history = FORCED if dump == "forced" else generated.tolist()
                    tokens = self.load(name, dump, "tokens").tolist()
                    for t in range(N_GENERATE):
                        want = float64_prefill_last_logits(name, tokens + history[:t])
                        rel_rms = np.sqrt(np.mean((steps[t] - want) ** 2) / np.mean(want**2))
                        self.assertLess(rel_rms, 1e-4, f"step {t}: relative RMS {rel_rms:.3g} from a full forward of the prompt and history[:{t}]")
                self.assertNotEqual(self.load(name, "pytorch-f64", "generated").tolist()[:-1], FORCED[:-1])
                self.assertEqual(self.manifest(name, "forced")["force_tokens"], FORCED)
                self.assertNotIn("force_tokens", self.manifest(name, "pytorch-f64"))

    def worst_ulps(self, name, reference, key, expected):
        """The largest distance of a dumped tensor from float64 `expected`, in float32 ulps of `expected`."""
        import numpy as np

        ulp = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
        return float(np.max(np.abs(self.load(name, reference, key).astype(np.float64) - expected) / ulp))


def float64_module():
    """references/pytorch/float64.py (the truth's float64 replacements) as a module."""
    sys.path.insert(0, str(ROOT / "references" / "pytorch"))
    import float64

    return float64


@testkit.needs_file(FAMILY_MODELS / "llama3" / "model-f32.gguf", FAMILY_HINT)
class Llama3Frequencies(unittest.TestCase):
    def test_float64_llama3_divisors_of_config_json_are_the_gguf_rope_freqs_llama_cpp_computed(self):
        import gguf
        import numpy as np
        import torch

        params = json.loads((FAMILY_MODELS / "llama3" / "hf" / "config.json").read_text())["rope_parameters"]
        self.assertEqual(params["rope_type"], "llama3")
        inv_freq = params["rope_theta"] ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
        ours = float64_module().rope_divisors(params, inv_freq, 64).numpy()
        reader = gguf.GGUFReader(str(FAMILY_MODELS / "llama3" / "model-f32.gguf"))
        file = next(np.asarray(t.data, dtype=np.float64) for t in reader.tensors if t.name == "rope_freqs.weight")
        # llama.cpp's converter computed them from the same parameters and stored float32: equal to its rounding.
        np.testing.assert_allclose(ours, file, rtol=2**-23, atol=0)
        self.assertEqual(sorted({float(d) for d in file if d in (1.0, 8.0)}), [1.0, 8.0])
        self.assertGreater(np.sum((file > 1) & (file < 8)), 1, "interpolated pairs must be there to test the ramp")

    def test_per_pair_factors_are_taken_as_they_are_and_other_scalings_refused(self):
        import torch

        f64 = float64_module()
        inv_freq = 1e4 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
        factors = [1.0, 1.5, 4.0, 8.0]
        given = dict(rope_type="longrope", rope_theta=1e4, short_factor=factors, long_factor=factors, attention_factor=1.0)
        self.assertEqual(f64.rope_divisors(given, inv_freq, 8).tolist(), factors)
        for refused in (dict(given, long_factor=[2.0] * 4), dict(given, attention_factor=1.2), dict(rope_type="yarn", factor=4.0)):
            with self.subTest(params=refused), self.assertRaises(f64.DumpError):
                f64.rope_divisors(refused, inv_freq, 8)


def both_dumps(test, model, tmp):
    """The float32 and float64 dumps of `model` (PROMPT, made concurrently into `tmp`), checked to have
    exited 0 (for the truth: its dtype guard passed); {reference: folder} and the truth's tensor files."""
    outs = {r: Path(tmp) / r for r in DUMPERS}
    running = {r: subprocess.Popen(dumper_command(r, model, out), stderr=subprocess.PIPE, text=True) for r, out in outs.items()}
    for r, process in running.items():
        _, stderr = process.communicate()
        test.assertEqual(process.returncode, 0, f"{r}: {stderr.strip()}")
    with open(outs["pytorch-f64"] / "manifest.toml", "rb") as f:
        return outs, {k: t["file"] for k, t in tomllib.load(f)["tensors"].items() if "file" in t}


@testkit.needs_file(FAMILY_MODELS / "qwen3" / "hf" / "model.safetensors", FAMILY_HINT)
class Qwen3Truth(unittest.TestCase):
    """Qwen3 (its per-head q/k RMSNorms are Qwen3RMSNorm, replaced like the block norms) in float64
    beside float32, from its HF folder."""

    def test_every_tensor_is_within_float32_noise_of_the_float32_dump_and_q_norm_is_recomputed(self):
        import numpy as np

        with tempfile.TemporaryDirectory(prefix="parity-f64-qwen3-") as tmp:
            outs, tensors = both_dumps(self, FAMILY_MODELS / "qwen3" / "hf", tmp)
            self.assertIn("blk.3.q_norm", tensors)
            for key, file in tensors.items():
                truth, f32 = np.load(outs["pytorch-f64"] / file), np.load(outs["pytorch"] / file)
                if truth.dtype.kind == "i":
                    continue
                t, f = truth.astype(np.float64), f32.astype(np.float64)
                rel_rms = np.sqrt(np.mean((t - f) ** 2) / np.mean(t**2))
                self.assertLess(rel_rms, NOISE, f"{key}: relative RMS {rel_rms:.3g} from the float32 dump")
                if key.endswith(("q_norm", "k_norm")):
                    self.assertFalse(np.array_equal(truth, f32), f"{key} is the float32 dump's")


@testkit.needs_file(FAMILY_MODELS / "gemma2" / "model-f32.gguf", FAMILY_HINT)
@testkit.needs_file(FAMILY_MODELS / "phi3" / "model-f32.gguf", FAMILY_HINT)
class GemmaPhi3Truth(unittest.TestCase):
    """Gemma-2 (its (1 + w) RMSNorms, soft-capped attention and sqrt(d) scale replaced by float64
    ones) and Phi-3 in float64 beside float32, from their F32 GGUFs; PROMPT is longer than Gemma-2's
    8-token window."""

    def check_within_noise(self, outs, tensors, computed):
        """Every float tensor within NOISE of the float32 dump; those named in `computed` not copies of it."""
        import numpy as np

        for key, file in tensors.items():
            truth, f32 = np.load(outs["pytorch-f64"] / file), np.load(outs["pytorch"] / file)
            if truth.dtype.kind == "i":
                np.testing.assert_array_equal(truth, f32, err_msg=key)
                continue
            t, f = truth.astype(np.float64), f32.astype(np.float64)
            rel_rms = np.sqrt(np.mean((t - f) ** 2) / np.mean(t**2))
            self.assertLess(rel_rms, NOISE, f"{key}: relative RMS {rel_rms:.3g} from the float32 dump")
            if key in computed:
                self.assertFalse(np.array_equal(truth, f32), f"{key} is the float32 dump's")

    def test_gemma2_truth_is_float32_noise_away_and_its_first_norm_correctly_rounded(self):
        import gguf
        import numpy as np

        path = FAMILY_MODELS / "gemma2" / "model-f32.gguf"
        with tempfile.TemporaryDirectory(prefix="parity-f64-gemma2-") as tmp:
            outs, tensors = both_dumps(self, path, tmp)
            self.assertIn("blk.3.post_ffn_norm", tensors)
            computed = {"blk.0.attn_probs", "blk.0.post_attn_norm", "blk.3.post_ffn_norm", "logits", "blk.0.dec_attn_probs"}
            self.check_within_noise(outs, tensors, computed)
            reader = gguf.GGUFReader(str(path))
            weights = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
            eps = float(reader.fields["gemma2.attention.layer_norm_rms_epsilon"].contents())
            ids = np.load(outs["pytorch-f64"] / "tokens.npy")
            self.assertGreater(len(ids), 8, "the prompt must reach past the window")
            x = weights["token_embd.weight"][ids] * np.sqrt(256)
            # The GGUF's norm weight is llama.cpp's 1 + w: the truth's (1 + w) of transformers' w is it exactly.
            expected = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weights["blk.0.attn_norm.weight"]
            ulp = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
            for reference, correctly_rounded in (("pytorch-f64", True), ("pytorch", False)):
                got = np.load(outs[reference] / "blk.0.attn_norm.npy").astype(np.float64)
                worst = float(np.max(np.abs(got - expected) / ulp))
                self.assertEqual(worst <= 0.5 + 1e-6, correctly_rounded, f"{reference}: {worst} ulps")
            logits = np.load(outs["pytorch-f64"] / "logits.npy")
            self.assertLessEqual(np.abs(logits).max(), float(reader.fields["gemma2.final_logit_softcapping"].contents()))

    def test_phi3_truth_is_float32_noise_away(self):
        with tempfile.TemporaryDirectory(prefix="parity-f64-phi3-") as tmp:
            outs, tensors = both_dumps(self, FAMILY_MODELS / "phi3" / "model-f32.gguf", tmp)
            self.check_within_noise(outs, tensors, {"blk.0.q", "blk.0.attn_probs", "blk.3.ffn_out", "logits"})


class Usage(unittest.TestCase):
    def test_missing_model_file_exits_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run(
                dumper_command("pytorch-f64", Path(tmp) / "no-such-model.gguf", Path(tmp) / "out"), check=False, capture_output=True, text=True
            )
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertIn("pytorch-f64: model not found", result.stderr)
            self.assertFalse((Path(tmp) / "out").exists())

    def test_force_tokens_of_another_length_than_n_generate_exits_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            command = dumper_command("pytorch-f64", MODELS["tiny-llama"], Path(tmp) / "out", force_tokens=FORCED + [1])
            result = subprocess.run(command, check=False, capture_output=True, text=True)
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(
                result.stderr.strip(), f"pytorch-f64: --force-tokens has {N_GENERATE + 1} ids; it needs exactly --n-generate = {N_GENERATE}"
            )
            self.assertFalse((Path(tmp) / "out").exists())

    def test_missing_packages_exit_3_with_one_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            # -S leaves site-packages (numpy, torch, transformers) off the path.
            result = subprocess.run(
                dumper_command("pytorch-f64", MODELS["tiny-llama"], Path(tmp) / "out", ["-S"]), check=False, capture_output=True, text=True
            )
            self.assertEqual(result.returncode, 3, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn("not installed", result.stderr)


if __name__ == "__main__":
    problem = import_problem()
    if problem:
        testkit.cannot_run(f"the reference environment is not importable: {problem}")
    unittest.main()

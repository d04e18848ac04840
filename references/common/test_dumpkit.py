"""Tests of the dump contract's own code (dumpkit.py): manifest strings and the prompt argument.

    ~/.cache/parity/venv/bin/python references/common/test_dumpkit.py

Skips (exit 0) when numpy, which dumpkit needs, is not importable, and fails then instead when
PARITY_REQUIRE_REFERENCES is set (testkit.py).
"""

import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import testkit  # noqa: E402  (stdlib only: it decides skip or fail when the rest cannot import)

ROOT = HERE.parents[1]
MODEL = ROOT / "fixtures" / "models" / "tiny-llama" / "model-f32.gguf"


class ManifestStrings(unittest.TestCase):
    def test_every_control_character_round_trips_through_a_manifest_string(self):
        from dumpkit import _q

        texts = ["\x01\x1b[0m\x7f", "".join(map(chr, range(0x80))), 'quote " backslash \\ tab \t é € 😀', ""]
        for text in texts:
            with self.subTest(text=text):
                self.assertEqual(tomllib.loads(f"prompt = {_q(text)}\n")["prompt"], text)

    def test_a_lone_surrogate_is_refused_as_a_usage_error(self):
        from dumpkit import EXIT_USAGE, DumpError, _q

        with self.assertRaises(DumpError) as caught:
            _q("abc\udcff")
        self.assertEqual(caught.exception.code, EXIT_USAGE)


class PromptArgument(unittest.TestCase):
    def run_parse_args(self, *argv):
        """dumpkit.parse_args on `argv` (bytes allowed), in a child: (exit code, stdout, stderr)."""
        code = (
            "import sys; sys.path.insert(0, sys.argv.pop(1)); import dumpkit\n"
            "try:\n    print(repr(dumpkit.parse_args('test').prompt))\n"
            "except dumpkit.DumpError as e:\n    print(f'test: {e}', file=sys.stderr); sys.exit(e.code)\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-c", code, str(HERE), "--model", str(MODEL), *argv, "--out", str(Path(tmp) / "out")]
            r = subprocess.run(cmd, capture_output=True)
        return r.returncode, r.stdout.decode(), r.stderr.decode(errors="replace")

    def test_a_prompt_starting_with_a_dash_given_as_one_argument_is_the_prompt(self):
        for prompt in ["-1 is negative", "--out /etc", "--prompt"]:
            with self.subTest(prompt=prompt):
                code, out, err = self.run_parse_args(f"--prompt={prompt}")
                self.assertEqual((code, out.strip()), (0, repr(prompt)), err)

    def test_a_prompt_that_is_not_utf8_exits_2_in_one_line(self):
        code, _, err = self.run_parse_args(b"--prompt=caf\xe9")
        self.assertEqual(code, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("not valid UTF-8", err)


if __name__ == "__main__":
    try:
        import numpy  # noqa: F401
    except ImportError as e:
        testkit.cannot_run(f"numpy is not importable ({e}); run scripts/setup-references.sh")
    unittest.main()

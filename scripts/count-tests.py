#!/usr/bin/env python3
"""Counts the project's tests per category from the code itself, so the numbers the docs quote
cannot drift from it (stdlib only).

    python3 scripts/count-tests.py            # print the section
    python3 scripts/count-tests.py --list     # and every test counted, per category
    python3 scripts/count-tests.py --write    # replace the section in docs/reliability.md
    python3 scripts/count-tests.py --check    # exit 1 when docs/reliability.md's section is stale

The rules, by name and body, are deliberately plain so anyone can re-check a count:
- a Rust test is a `fn` right after `#[test]` or `#[tokio::test(...)]` (other attributes between
  are allowed) in engine/, harness/, reports/ and serve/; its body runs to the next `#[test]` or the end of the file;
- bad input: its name says it refuses or reports an error (BAD_INPUT below);
- checks an exit code: a bad-input test whose body looks at one (`.code()`, `exit_code`,
  `Some(2)`, `Some(3)`, `returncode`, or
  `assert_one_line_error`, which asserts exit 2);
- planted bugs: the tests of harness/tests/planted_*.rs; a control is one whose name says nothing
  is planted (`without_a_plant`, `clean_engine`);
- dumper tests: `def test_*` methods (unittest files) or `def check_*` functions (plain scripts) of
  references/**/test_*.py, or 1 for a script with neither; bad input among them by the same name
  rule;
- fuzz targets: fuzz/fuzz_targets/*.rs.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- count-tests: begin -->", "<!-- count-tests: end -->"

BAD_INPUT = re.compile(
    r"refus|reject|hostile|malformed|truncat|symlink|overflow|unsupported|not_one_folder|outside_the|"
    r"is_an_error|are_errors|one_line_error|clear_error|exits?_[23]|is_exit_[23]|error_naming|names_it_in_the_error|"
    r"how_to_install|not_a_panic|syntax_errors|usage_error|not_utf8|lone_surrogate|instead_of_skipping"
)
EXIT_CODE = re.compile(r"\.code\(\)|exit_code|Some\([23]\)|returncode|assert_one_line_error")
RUST_TEST = re.compile(r"#\[(?:tokio::)?test(?:\([^\]]*\))?\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?(?:async\s+)?fn\s+(\w+)")


def rust_tests():
    """(path, name, body) of every Rust #[test]."""
    found = []
    for crate in ("engine", "harness", "reports", "serve"):
        for path in sorted((ROOT / crate).rglob("*.rs")):
            text = path.read_text(encoding="utf-8")
            matches = list(RUST_TEST.finditer(text))
            for i, m in enumerate(matches):
                end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
                found.append((path.relative_to(ROOT).as_posix(), m.group(1), text[m.end() : end]))
    return found


def python_tests():
    """(path, name) of every test in references/**/test_*.py."""
    found = []
    for path in sorted((ROOT / "references").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        names = re.findall(r"^\s+def (test_\w+)\(self", text, re.M) or re.findall(r"^def (check_\w+)\(", text, re.M)
        # A plain script with neither (it checks in `main`) counts as one test.
        found += [(path.relative_to(ROOT).as_posix(), n) for n in names or ["main"]]
    return found


def counts():
    rust = rust_tests()
    bad = [(p, n, b) for p, n, b in rust if BAD_INPUT.search(n)]
    with_code = [(p, n) for p, n, b in bad if EXIT_CODE.search(b)]
    planted = [(p, n) for p, n, _ in rust if re.fullmatch(r"harness/tests/planted_\w+\.rs", p)]
    controls = [(p, n) for p, n in planted if "without_a_plant" in n or "clean_engine" in n]
    py = python_tests()
    py_bad = [(p, n) for p, n in py if BAD_INPUT.search(n)]
    fuzz = sorted(p.stem for p in (ROOT / "fuzz" / "fuzz_targets").glob("*.rs"))
    return {
        "rust": [(p, n) for p, n, _ in rust],
        "bad input": [(p, n) for p, n, _ in bad],
        "bad input, exit code checked": with_code,
        "planted bugs": [x for x in planted if x not in controls],
        "planted-bug controls": controls,
        "dumper tests": py,
        "dumper tests, bad input": py_bad,
        "fuzz targets": [("fuzz/fuzz_targets", f) for f in fuzz],
    }


def section(c):
    per_file = {}
    for p, _ in c["planted bugs"]:
        per_file[p] = per_file.get(p, 0) + 1
    planted = ", ".join(f"{n} in `{p}`" for p, n in sorted(per_file.items()))
    py_files = len({p for p, _ in c["dumper tests"]})
    return "\n".join(
        [
            BEGIN,
            "Counted from the code by `python3 scripts/count-tests.py` (the rules are in its docstring;",
            "`--list` names every test counted):",
            "",
            "| category | tests |",
            "| --- | --- |",
            f"| Rust tests (`cargo nextest run --workspace`) | {len(c['rust'])} |",
            f"| of them bad input (named for a refusal or an error) | {len(c['bad input'])} |",
            f"| of those, checking the exit code | {len(c['bad input, exit code checked'])} |",
            f"| planted bugs, each caught where it enters | {len(c['planted bugs'])} ({planted}) |",
            f"| planted-bug controls (nothing planted, nothing fails) | {len(c['planted-bug controls'])} |",
            f"| dumper tests (`references/**/test_*.py`, {py_files} files) | {len(c['dumper tests'])} |",
            f"| of them bad input | {len(c['dumper tests, bad input'])} |",
            f"| fuzz targets | {len(c['fuzz targets'])} |",
            END,
        ]
    )


def main(argv):
    c = counts()
    text = section(c)
    if "--write" in argv or "--check" in argv:
        doc = DOC.read_text(encoding="utf-8")
        if BEGIN not in doc or END not in doc:
            sys.exit(f"count-tests: {DOC} has no {BEGIN} ... {END} section")
        new = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) :]
        if "--check" in argv:
            if new != doc:
                print(f"count-tests: the counts in {DOC.relative_to(ROOT)} are stale; run python3 scripts/count-tests.py --write", file=sys.stderr)
                return 1
            return 0
        DOC.write_text(new, encoding="utf-8")
    print(text)
    if "--list" in argv:
        for category, tests in c.items():
            print(f"\n{category} ({len(tests)}):")
            for p, n in tests:
                print(f"  {p} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

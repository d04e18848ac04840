"""What a reference's own test does when it cannot run (stdlib only, so it works before anything
else imports).

By default a test that cannot run (its reference does not import, a downloaded model is absent)
skips: it says why and exits 0, so a machine without the reference environment still passes the
tests it can run. With PARITY_REQUIRE_REFERENCES set (CI sets it) the same situation is a failure:
a run that was meant to check the references must not pass by checking nothing.
"""

import functools
import os
import sys
import unittest

REQUIRED = bool(os.environ.get("PARITY_REQUIRE_REFERENCES"))
FAIL_SUFFIX = "and PARITY_REQUIRE_REFERENCES is set, so this fails instead of skipping"


def cannot_run(reason):
    """Ends the test script: exit 0 with "skipped: REASON", or exit 1 when references are required."""
    if REQUIRED:
        print(f"FAIL: {reason}, {FAIL_SUFFIX}", flush=True)
        sys.exit(1)
    print(f"skipped: {reason}", flush=True)
    sys.exit(0)


def missing_file(path, hint):
    """For plain-script tests: None when `path` is a file; else the reason it is not, printed as a
    skip. The caller counts it as a failure when `REQUIRED`."""
    if path.is_file():
        return None
    reason = f"{path} not found ({hint})"
    print(f"FAIL: {reason}, {FAIL_SUFFIX}" if REQUIRED else f"skipped: {reason}", flush=True)
    return reason


def needs_file(path, hint):
    """A unittest decorator (class or test method) for tests of a downloaded file: as is when `path`
    is a file; skipped when it is absent; failing when it is absent and references are required."""
    if path.is_file():
        return lambda obj: obj
    reason = f"{path} not found ({hint})"
    if not REQUIRED:
        return unittest.skip(reason)

    def failing(obj):
        if isinstance(obj, type):
            obj.setUp = lambda self: self.fail(f"{reason}, {FAIL_SUFFIX}")
            return obj

        @functools.wraps(obj)
        def test(self, *_args, **_kwargs):
            self.fail(f"{reason}, {FAIL_SUFFIX}")

        return test

    return failing


def catalog_shape(shape, sizes, catalog):
    """A catalog shape (["T", "H*hd"], ["S", "KV", "T+N-1", "hd"], ...) with the model's `sizes`
    (T, d, H, KV, hd, V, N) and the catalog's own (samplers, draws) substituted: a term is a sum or
    difference of products; S counts the decode steps with layer taps (1, N//2 and N-1, distinct;
    none for N < 2)."""
    n = sizes["N"]
    sizes = dict(sizes, S=len({1, n // 2, n - 1}) if n >= 2 else 0, samplers=len(catalog["sampler"]), draws=catalog["sampling"]["draws"])
    dims = []
    for dim in shape:
        total = 0
        for term in dim.replace(" ", "").replace("-", "+-").split("+"):
            value = 1
            for factor in term.lstrip("-").split("*"):
                value *= int(factor) if factor.isdigit() else sizes[factor]
            total += -value if term.startswith("-") else value
        dims.append(total)
    return tuple(dims)

"""The dump contract every reference dumper follows, written once.

A dumper is `<dumper> --model FILE --prompt TEXT --n-generate N --temperature T --out DIR
[--force-tokens IDS]`. It computes the catalog's tensors (checkpoints/catalog.toml) with its own
implementation and hands them to a `Dump`, which writes one .npy per tensor (little-endian, C order,
f32; ids as i64) and DIR/manifest.toml, into a temporary folder renamed to DIR only when everything
is written.

Decoding (`decode`, shared by every dumper): N steps, one token at a time through the dumper's own
KV cache. Step t's logits (`step_logits` row t) follow the prompt and the decode history's first t
tokens, and `generated[t]` is their argmax. The history is the dumper's own greedy tokens, or with
`--force-tokens a,b,c` (exactly N ids) those ids whatever the dumper would pick (teacher forcing: a
suite's truth's tokens, so every implementation decodes on the same history); the manifest then
records them as `force_tokens`.

Decode-path layer taps (`decode_steps`, `DecodeTaps`, checkpoint `decode_layers`): at the chosen
decode steps, the distinct steps among 1, N//2 and N-1 (first, middle, last; none when N < 2),
every layer's prompt-path taps for the one new position are kept. Decode step t (1 <= t < N) feeds
history token t-1 at position T+t-1 and gives `step_logits` row t. The dumper hands each step's
tensors over in their prompt-path layout for a one-token prompt (`blk.L.q` as [1, H*hd],
`blk.L.attn_probs` as [H, 1, T+t], `blk.L.k_cache` as [KV, T+t, hd]); `DecodeTaps` drops the size-1
position axis, pads the position axis with zeros to T+N-1 (the context after the last step; the
entries of positions not yet written or not attended are 0, as masked entries are) and stacks the
steps in ascending order on a leading axis S as `blk.L.dec_<name>`, `[S, ...]`. With no chosen
step every `dec_` tensor is written empty, `[0, ...]`.

Sampling (`sample_catalog`, shared by every dumper): for each `[[sampler]]` of the catalog, the
distribution the dumper's own sampler code draws from (temperature, then top-k, then top-p, then
renormalised; 0 for tokens cut) as a row of `sampler_probs`, and `draws` tokens drawn from it by
Gumbel-max on the catalog's shared noise stream (`gumbel`; this draw is ours, the same code for
every dumper, so `sampled` checks the engine's draws, not the references'). The logits sampled are
the dumper's own last logits rounded to f32, or with `--sampler-logits FILE` (a .npy of V f32
values: the suite truth's last_logits) those; the manifest records their sha256 as
`sampler_logits_sha256`.

Exit codes: 0 dumped; 2 usage or input error (bad arguments, missing or unreadable model);
3 the reference itself failed (not installed, crashed, unsupported model).
"""

import argparse
import hashlib
import os
import re
import shutil
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

EXIT_USAGE = 2
EXIT_REFERENCE = 3

CATALOG_PATH = Path(__file__).resolve().parents[2] / "checkpoints" / "catalog.toml"


class DumpError(Exception):
    """A failure with a one-line message and the exit code it maps to."""

    def __init__(self, message, code=EXIT_REFERENCE):
        super().__init__(message)
        self.code = code


def load_catalog():
    with open(CATALOG_PATH, "rb") as f:
        return tomllib.load(f)


def parse_args(reference):
    p = argparse.ArgumentParser(prog=f"references/{reference}/dump.py", description=f"Dump the checkpoint catalog from {reference}.")
    p.add_argument("--model", required=True, help="GGUF file, or a folder with HF safetensors + config.json")
    p.add_argument("--prompt", required=True)
    p.add_argument("--n-generate", type=int, default=8, help="greedy tokens to generate through the KV cache")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of the `probs` checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--force-tokens", metavar="IDS", help="comma-separated ids, exactly --n-generate of them: the decode history to feed (teacher forcing)"
    )
    p.add_argument(
        "--sampler-logits", metavar="FILE", help="a .npy of V f32 logits for the samplers to sample instead of the dumper's own last logits"
    )
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    args = p.parse_args()
    # Python carries argv bytes that are not UTF-8 as lone surrogates (surrogateescape): no manifest
    # can hold them and no engine would see the same text, so such a prompt is refused up front.
    if has_lone_surrogate(args.prompt):
        raise DumpError("--prompt is not valid UTF-8 text (it holds bytes Python keeps as lone surrogates)", EXIT_USAGE)
    if not Path(args.model).exists():
        raise DumpError(f"model not found: {args.model}", EXIT_USAGE)
    if args.n_generate < 0 or args.temperature <= 0:
        raise DumpError("--n-generate must be >= 0 and --temperature > 0", EXIT_USAGE)
    args.force_tokens = parse_force_tokens(args.force_tokens, args.n_generate)
    args.sampler_logits = load_sampler_logits(args.sampler_logits)
    return args


def load_sampler_logits(path):
    """`--sampler-logits`' values (None when not given): a 1-D array of finite f32."""
    if path is None:
        return None
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DumpError(f"--sampler-logits {path}: not a readable .npy ({e})", EXIT_USAGE) from None
    if a.ndim != 1 or a.dtype != np.float32 or not np.all(np.isfinite(a)):
        raise DumpError(f"--sampler-logits {path}: need one row of finite f32 logits, got {a.dtype} of shape {a.shape}", EXIT_USAGE)
    return a


def parse_force_tokens(text, n_generate):
    """`--force-tokens`' ids as a list (None when not given); exactly `n_generate` non-negative ids."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise DumpError(f"--force-tokens must be comma-separated non-negative token ids, not {text!r}", EXIT_USAGE)
    if len(parts) != n_generate:
        raise DumpError(f"--force-tokens has {len(parts)} ids; it needs exactly --n-generate = {n_generate}", EXIT_USAGE)
    return [int(p) for p in parts]


def decode_steps(n_generate):
    """The decode steps whose layer taps are dumped: the distinct steps among 1, N//2 and N-1,
    ascending; none when N < 2. Mirrors the engine's `engine::tap::decode_steps`."""
    if n_generate < 2:
        return []
    return sorted({1, n_generate // 2, n_generate - 1})


def shape_term(term, dims):
    """A catalog shape term (a sum or difference of products: `H*hd`, `T+N-1`) for the sizes `dims`."""
    total = 0
    for sign, product in re.findall(r"([+-]?)\s*([^+-]+)", term):
        value = 1
        for sym in product.split("*"):
            sym = sym.strip()
            value *= int(sym) if sym.isdigit() else dims[sym]
        total += -value if sign == "-" else value
    if total < 0:
        raise DumpError(f"internal: shape term {term!r} is negative for {dims}")
    return total


class DecodeTaps:
    """The `decode_layers` tensors of a dump, gathered step by step (see the module docstring).

    `n_prompt` is T; `sizes` gives the model's d, H, KV and hd. `wants(step)` says whether decode
    step `step` is a chosen one; `keep(step, key, array)` takes one of its tensors under the
    prompt-path key (`blk.3.attn_probs`); `put_into(dump)` writes the stacks.
    """

    def __init__(self, n_prompt, n_generate, sizes):
        self.steps = decode_steps(n_generate)
        self.dims = dict(sizes, T=n_prompt, N=n_generate, S=len(self.steps))
        self.rows = {}  # dec key -> {step: array}

    def wants(self, step):
        return step in self.steps

    def keep(self, step, key, array):
        if step not in self.steps:
            raise DumpError(f"internal: decode step {step} is not one of the chosen {self.steps}")
        layer, _, name = key.partition(".")[2].partition(".")
        per_step = self.rows.setdefault(f"blk.{layer}.dec_{name}", {})
        if step in per_step:
            raise DumpError(f"internal: {key} kept twice at decode step {step}")
        per_step[step] = np.array(array)  # a copy: a reference's cache may be written in place later

    def put_into(self, dump):
        """Every dec_ key of the dump's model: stacked when every chosen step has it, `[0, ...]`
        with no chosen step; a key no step has is marked unavailable (unless the dumper said why)."""
        for key, entry in dump.keys():
            if not entry["name"].startswith("dec_") or ("arch" in entry and dump.arch not in entry["arch"]):
                continue
            want = [shape_term(term, self.dims) for term in entry["shape"]]
            per_step = self.rows.get(key, {})
            if not self.steps:
                dump.put(key, np.zeros(want, dtype=np.float32))
            elif per_step:
                missing = [t for t in self.steps if t not in per_step]
                if missing:
                    raise DumpError(f"internal: {key} was kept at decode steps {sorted(per_step)}, not at {missing}")
                dump.put(key, np.stack([pad_to(per_step[t], want[1:], key) for t in self.steps]))
            elif key not in dump.unavailable:
                dump.mark_unavailable(key, f"{dump.reference} dumper kept no {entry['name'].removeprefix('dec_')} at decode steps {self.steps}")


def pad_to(array, want, key):
    """A one-position tensor in the per-step layout `want`: its size-1 position axis dropped (when it
    has one more axis than `want`), every axis shorter than `want`'s padded with zeros at the end."""
    a = np.asarray(array)
    if a.ndim == len(want) + 1 and 1 in a.shape:
        a = a.reshape([n for i, n in enumerate(a.shape) if i != a.shape.index(1)])
    if a.ndim != len(want) or any(n > w for n, w in zip(a.shape, want)):
        raise DumpError(f"internal: {key} at a decode step has shape {list(np.shape(array))}, which does not fit {want}")
    return np.pad(a, [(0, w - n) for n, w in zip(a.shape, want)])


def decode(last_logits, feed, n_generate, forced=None):
    """The decode loop: `(step_logits [N, V], generated [N])`, N = n_generate.

    `last_logits` are the prompt's next-token logits (row 0); `feed(token, step)` runs one token
    through the dumper's KV cache and returns the logits that follow it, step_logits row `step`
    (decode step `step`, the one `DecodeTaps` counts). Row t comes after the history's
    first t tokens: the dumper's own choices, or `forced` (`--force-tokens`) when given. A row stays
    in the dumper's own dtype until the dump rounds it, and its choice is its first maximum (ties go
    to the lowest id). A forced id outside the vocabulary is a usage error, found before any feed.
    """
    n_vocab = np.shape(last_logits)[-1]
    if forced is not None and any(t >= n_vocab for t in forced):
        raise DumpError(f"--force-tokens has id {max(forced)}, outside the model's vocabulary of {n_vocab}", EXIT_USAGE)
    rows, generated = [], []
    logits = last_logits
    for t in range(n_generate):
        row = np.asarray(logits)
        rows.append(row)
        generated.append(int(np.argmax(row)))
        if t + 1 < n_generate:
            logits = feed(forced[t] if forced is not None else generated[-1], t + 1)
    step_logits = np.stack(rows) if rows else np.zeros((0, n_vocab), dtype=np.asarray(last_logits).dtype)
    return step_logits, np.array(generated, dtype=np.int64)


SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(seed, start, n):
    """Outputs start..start+n of SplitMix64 started at `seed` (uint64; its state moves by a constant
    per output, so any stretch is had directly)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(start + 1, start + n + 1, dtype=np.uint64) * SPLITMIX_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def gumbel(seed, start, n):
    """Elements start..start+n of the catalog's Gumbel noise: -ln(-ln u), u = ((x >> 11) + 0.5) / 2^53."""
    u = ((splitmix64(seed, start, n) >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    return -np.log(-np.log(u))


def gumbel_draws(probs, seed, draws):
    """`draws` tokens from `probs` [V]: draw j is the argmax over p > 0 of ln p + gumbel(seed, j * V, V)."""
    p = np.asarray(probs, dtype=np.float64)
    kept = p > 0
    logp = np.where(kept, np.log(np.where(kept, p, 1.0)), -np.inf)
    return [int(np.argmax(logp + gumbel(seed, j * p.size, p.size))) for j in range(draws)]


def sample_catalog(dump, own_last_logits, distribution):
    """The `sampling` checkpoint: `distribution(logits_f32, temperature, top_k, top_p)` is the dumper's
    own sampler (top_k 0 and top_p 1.0 mean no cut) returning V probabilities; it is run for every
    catalog sampler on the given logits (`--sampler-logits`) or the dumper's own rounded to f32."""
    given = getattr(dump.args, "sampler_logits", None)
    logits = given if given is not None else np.asarray(own_last_logits).astype(np.float32)
    if logits.shape != np.shape(own_last_logits):
        raise DumpError(f"--sampler-logits has {logits.size} logits; the model's vocabulary is {np.size(own_last_logits)}", EXIT_USAGE)
    seed, draws = dump.catalog["sampling"]["seed"], dump.catalog["sampling"]["draws"]
    rows, sampled = [], []
    for s in dump.catalog["sampler"]:
        probs = np.asarray(distribution(logits, s["temperature"], s.get("top_k", 0), s.get("top_p", 1.0)))
        if probs.shape != logits.shape:
            raise DumpError(f"internal: sampler {s['name']} gave {probs.shape} probabilities for {logits.shape} logits")
        rows.append(probs)
        sampled.append(gumbel_draws(probs, seed, draws))
    dump.put("sampler_probs", np.stack(rows))
    dump.put("sampled", np.array(sampled, dtype=np.int64))
    dump.sampler_logits_sha256 = hashlib.sha256(logits.astype("<f4").tobytes()).hexdigest()


def sha256_of(path):
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class Dump:
    """Collects a reference's tensors and writes them with their manifest."""

    def __init__(self, reference, version, args, arch, n_layers, dtype="float32"):
        self.catalog = load_catalog()
        self.reference, self.version, self.args = reference, version, args
        self.arch, self.n_layers, self.dtype = arch, n_layers, dtype
        self.tensors = {}  # key -> np.ndarray
        self.unavailable = {}  # key -> reason
        self.token_ids = []
        self.sampler_logits_sha256 = None  # set by sample_catalog
        self.started = time.time()

    def keys(self):
        """Every catalog key this model should have, in catalog order, with its catalog entry."""
        for t in self.catalog["tensor"]:
            if t["scope"] == "layer":
                for layer in range(self.n_layers):
                    yield f"blk.{layer}.{t['name']}", t
            else:
                yield t["name"], t

    def put(self, key, array):
        entry = dict(self.keys()).get(key)
        if entry is None:
            raise DumpError(f"internal: {key} is not a catalog key")
        if key in self.tensors:
            raise DumpError(f"internal: {key} dumped twice")
        a = np.asarray(array)
        # astype(order="C") rather than np.ascontiguousarray, which turns a 0-d scalar (argmax) into shape [1].
        a = a.astype("<i8" if entry.get("dtype") == "id" else "<f4", order="C")
        self.tensors[key] = a
        if key == "tokens":
            self.token_ids = [int(x) for x in a.reshape(-1)]

    def mark_unavailable(self, key, reason):
        self.unavailable[key] = reason

    def write(self):
        out = Path(self.args.out)
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        lines = [
            f"reference = {_q(self.reference)}",
            f"version = {_q(self.version)}",
            f"arch = {_q(self.arch)}",
            f"n_layers = {self.n_layers}",
            f"model = {_q(str(Path(self.args.model).resolve()))}",
            f"model_sha256 = {_q(sha256_of(self.args.model))}",
            f"prompt = {_q(self.args.prompt)}",
            f"token_ids = {self.token_ids}",
            f"dtype = {_q(self.dtype)}",
            f"threads = {self.args.threads}",
            f"n_generate = {self.args.n_generate}",
            f"temperature = {self.args.temperature!r}",
            f"wall_time_s = {time.time() - self.started:.3f}",
            f"command = {_q(' '.join([sys.executable] + sys.argv))}",
            "",
        ]
        forced = getattr(self.args, "force_tokens", None)
        if forced is not None:  # after n_generate
            lines.insert(lines.index(f"n_generate = {self.args.n_generate}") + 1, f"force_tokens = {list(forced)}")
        if self.sampler_logits_sha256 is not None:  # before the tensor tables
            lines.insert(lines.index(f"temperature = {self.args.temperature!r}") + 1, f"sampler_logits_sha256 = {_q(self.sampler_logits_sha256)}")
        for key, entry in self.keys():
            lines.append(f"[tensors.{_q(key)}]")
            if key in self.tensors:
                a = self.tensors[key]
                np.save(tmp / f"{key}.npy", a)
                lines.append(f"file = {_q(key + '.npy')}")
                lines.append(f"shape = {list(a.shape)}")
                lines.append(f"dtype = {_q('i64' if a.dtype.kind == 'i' else 'f32')}")
            elif "arch" in entry and self.arch not in entry["arch"]:
                lines.append(f"unavailable = {_q('not part of ' + self.arch + ' (catalog arch = ' + ','.join(entry['arch']) + ')')}")
            else:
                reason = self.unavailable.get(key, f"{self.reference} dumper did not produce it")
                lines.append(f"unavailable = {_q(reason)}")
            lines.append("")
        (tmp / "manifest.toml").write_text("\n".join(lines))
        old = out.with_name(out.name + f".old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)


def has_lone_surrogate(text):
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _q(s):
    """A TOML basic string holding `s` exactly: TOML allows no control character (U+0000-U+001F,
    U+007F) raw, so each is written as an escape; lone surrogates cannot be written at all."""
    if has_lone_surrogate(s):
        raise DumpError(f"cannot write {s!r} to the manifest: it is not valid UTF-8 text (a lone surrogate)", EXIT_USAGE)
    out = []
    for c in s:
        if c in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def main(reference, run):
    """Runs `run(args) -> Dump` and maps failures to the documented exit codes."""
    try:
        args = parse_args(reference)
        dump = run(args)
        dump.write()
    except DumpError as e:
        print(f"{reference}: {e}", file=sys.stderr)
        sys.exit(e.code)
    except ImportError as e:
        print(f"{reference}: reference not installed ({e}); run scripts/setup-references.sh", file=sys.stderr)
        sys.exit(EXIT_REFERENCE)
    except Exception as e:  # the reference crashed: say so in one line, keep the exit code distinct
        print(f"{reference}: reference failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(EXIT_REFERENCE)

"""Shared plumbing for the scripts that build real-model assets in the cache folder (outside git).

- `fixtures`: the helpers of make-fixtures.py (GGUF/safetensors/JSON writers, the llama Q/K row
  permutation), loaded from that file so both kinds of assets are written the same way.
- `models_dir()`: $PARITY_CACHE/models, default ~/.cache/parity/models (as fetch-models.sh).
- Atomic outputs: every file or folder is built under a temporary name and renamed into place, and
  a manifest of sha256 sums is written last; an output counts as present only when its manifest
  matches, so an interrupted run is redone instead of trusted.
"""

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent


def _load_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", SCRIPTS / "make-fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixtures = _load_fixtures()


def models_dir():
    cache = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "parity"))
    return cache / "models"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# A file output's manifest sits next to it; a folder output's manifest sits inside it.
def _manifest_path(out):
    return out / ".manifest.json" if out.is_dir() else out.with_name(out.name + ".manifest.json")


def is_complete(out):
    """True when `out` exists and every file its manifest lists has the recorded sha256."""
    out = Path(out)
    if not out.exists():
        return False
    manifest = _manifest_path(out)
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except ValueError:
        return False
    base = out if out.is_dir() else out.parent
    return bool(recorded) and all((base / name).is_file() and sha256(base / name) == digest for name, digest in recorded.items())


def _write_manifest(out):
    out = Path(out)
    if out.is_dir():
        files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != ".manifest.json")
        recorded = {str(p.relative_to(out)): sha256(p) for p in files}
    else:
        recorded = {out.name: sha256(out)}
    tmp = _manifest_path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(recorded, indent=2) + "\n")
    tmp.rename(_manifest_path(out))


def build_file(out, write):
    """Runs write(tmp_path), then renames the result to `out` and records its manifest."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    _manifest_path(out).unlink(missing_ok=True)
    write(tmp)
    tmp.rename(out)
    _write_manifest(out)


def build_dir(out, write):
    """Runs write(tmp_dir) on an empty folder, then swaps it in for `out` and records its manifest."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    _write_manifest(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def size_report(paths):
    """Lines 'path  N bytes' for every file under the given files/folders."""
    lines = []
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        lines += [f"  {f}  {f.stat().st_size} bytes" for f in files]
    return lines

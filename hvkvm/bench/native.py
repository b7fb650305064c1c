"""The bench's host C (``hvkvm.bench._hvbench``, csrc/bench_*.c), built on demand.

:func:`load` returns ``(ffi, lib)``. It uses the module ``pip install -e .`` built in the package
when that is at least as new as its sources; otherwise it compiles the sources with cffi into the
cache (``$HVKVM_CACHE_DIR/bench/<hash>/``, keyed by a hash of the sources, headers, cdef and the
compiler's version) and loads that, so a changed ``csrc/bench_*.c`` never runs stale code and the
data-plane extension is never rebuilt by a benchmark.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

_lock = threading.Lock()
_loaded = None


def _gcc_version() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def _key(build) -> str:
    h = hashlib.sha256()
    for p in build.SOURCES + build.HEADERS:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(build.CDEF.encode())
    h.update(_gcc_version().encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:20]


def _from_file(path: Path):
    spec = importlib.util.spec_from_file_location("hvkvm.bench._hvbench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load():
    """(ffi, lib) of the bench's C; builds it first when needed (a few seconds, once)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        from . import _bench_build as build
        newest = max(p.stat().st_mtime for p in build.SOURCES + build.HEADERS)
        here = Path(__file__).resolve().parent
        for so in here.glob("_hvbench*.so"):
            if so.stat().st_mtime >= newest:
                mod = _from_file(so)
                _loaded = (mod.ffi, mod.lib)
                return _loaded
        from ..images import cache_dir
        out = Path(cache_dir()).parent / "bench" / _key(build)
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        found = sorted(out.glob("hvkvm/bench/_hvbench*.so")) if out.exists() else []
        if not found:
            out.mkdir(parents=True, exist_ok=True)
            build.make_builder(absolute=True).compile(tmpdir=str(out), verbose=False)
            found = sorted(out.glob("hvkvm/bench/_hvbench*.so"))
        if not found:
            raise RuntimeError(f"building hvkvm.bench._hvbench left no module in {out} "
                               f"(expected *{suffix})")
        mod = _from_file(found[0])
        _loaded = (mod.ffi, mod.lib)
        return _loaded

"""cffi builder for ``hvkvm.bench._hvbench``: the host C of ``hvkvm bench`` (csrc/bench_*.c).

A separate tiny out-of-line API-mode module, so the bench's C never touches the data-plane
extension (``hvkvm.vmbus._hvring``). Built by ``pip install -e .`` (``setup.py``'s
``cffi_modules``), and on first use by :func:`hvkvm.bench.native.lib` when it is missing or older
than its sources (the way guest images are built on demand).

Run directly (``python hvkvm/bench/_bench_build.py``) to build it in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent
_CSRC = _ROOT / "csrc"
SOURCES = [_CSRC / "bench_run.c", _CSRC / "bench_mem.c"]
HEADERS = [_CSRC / "bench_host.h"]

CDEF = r"""
#define BENCH_RUN_LIMIT ...
struct bench_run_result {
    uint64_t exits; uint64_t pio; uint64_t mmio; uint64_t ns;
    uint32_t exit_reason; int32_t error;
};
int bench_run_loop(int vcpu_fd, void *kvm_run, uint32_t port, uint64_t mmio_base,
                   uint64_t mmio_len, uint64_t max_exits, struct bench_run_result *res);
int bench_memcpy(uint64_t bytes, uint32_t iterations, uint64_t *ns);
struct bench_pingpong {
    volatile uint64_t *counter;
    uint64_t target;
    volatile uint32_t stop;
    uint32_t started;
    uint64_t answered;
    uint64_t idle_spins;
    uint64_t first_ns;
    uint64_t last_ns;
    ...;
};
int bench_pingpong_start(struct bench_pingpong *pp);
void bench_pingpong_stop(struct bench_pingpong *pp);
"""


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def make_builder(absolute: bool = False) -> FFI:
    """The FFI builder; ``absolute`` paths for ``compile(tmpdir=...)`` (which changes
    directory), relative ones for setuptools."""
    path = str if absolute else _rel
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "hvkvm.bench._hvbench",
        '#include "bench_host.h"\n',
        sources=[path(p) for p in SOURCES],
        include_dirs=[path(_CSRC)],
        extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-pthread"],
        extra_link_args=["-pthread"],
        depends=[path(p) for p in HEADERS],
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    import subprocess
    import sys

    raise SystemExit(subprocess.call([sys.executable, "setup.py", "build_ext", "--inplace"],
                                     cwd=_ROOT))

"""setuptools hook for the cffi extension (metadata lives in pyproject.toml).

cffi has no pyproject-only build yet, so ``cffi_modules`` stays here: it builds
``hvkvm.vmbus._hvring`` from ``csrc/vmbus_ring.c`` (see ``hvkvm/vmbus/_ring_build.py``) and the
benchmarks' ``hvkvm.bench._hvbench`` from ``csrc/bench_*.c`` (``hvkvm/bench/_bench_build.py``).
"""

from setuptools import setup

setup(cffi_modules=["hvkvm/vmbus/_ring_build.py:ffibuilder",
                   "hvkvm/bench/_bench_build.py:ffibuilder"])

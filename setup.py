"""setuptools hook for the cffi extension (metadata lives in pyproject.toml).

cffi has no pyproject-only build yet, so ``cffi_modules`` stays here: it builds
``hvkvm.vmbus._hvring`` from ``csrc/vmbus_ring.c`` (see ``hvkvm/vmbus/_ring_build.py``).
"""

from setuptools import setup

setup(cffi_modules=["hvkvm/vmbus/_ring_build.py:ffibuilder"])

"""The one errno choke point: every KVM ioctl goes through :func:`ioctl`.

libc's ``ioctl`` is called through ctypes (``CDLL(None, use_errno=True)``). A foreign call made
this way releases the GIL for its duration, so one Python thread per vCPU can sit in ``KVM_RUN``
while the others (and the exit handlers) keep running. ``errno`` is read from ctypes' per-thread
copy, saved right after the call, so concurrent vCPU threads never see each other's errno.

A return of -1 raises :class:`~hvkvm.kvm.errors.KvmError` naming the ioctl. EINTR is not retried
and not special-cased: it is a KvmError with ``errno == EINTR`` (a signal kicked a vCPU out of
``KVM_RUN``); callers decide.
"""

from __future__ import annotations

import ctypes

from .errors import KvmError

__all__ = ["ioctl"]

_libc = ctypes.CDLL(None, use_errno=True)
# int ioctl(int fd, unsigned long request, ...); the variadic argument is always a pointer-sized
# integer or pointer for KVM. x86-64 passes the first variadic integer argument in a register
# exactly like a fixed one, so declaring it fixed is ABI-correct here.
_libc_ioctl = _libc.ioctl
_libc_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_libc_ioctl.restype = ctypes.c_int

#: The same libc ioctl as a separate function object without argtypes: for the exit loop's
#: ``KVM_RUN`` (three small Python ints, no conversion step: ~0.4 us less per call here). A
#: request number above 2**31 would not survive the default int conversion; KVM_RUN is 0xae80.
run_ioctl = ctypes.CDLL(None, use_errno=True).ioctl
run_ioctl.restype = ctypes.c_int

_get_errno = ctypes.get_errno
_byref = ctypes.byref
_CData = ctypes.Structure.__mro__[-2]  # _ctypes._CData: base of every ctypes instance
_CArgObject = type(ctypes.byref(ctypes.c_int()))
_MASK64 = (1 << 64) - 1


def ioctl(fd: int, name: str, request: int, arg=0) -> int:
    """Call ``ioctl(fd, request, arg)``; return its non-negative result or raise ``KvmError(name, errno)``.

    ``arg`` is an int (passed by value: a capability number, vCPU id, address; negative values
    are passed as their 64-bit two's complement), None (0), a ctypes object (passed by reference,
    i.e. ``ctypes.byref(arg)`` is taken for you), or an existing ``ctypes.byref(...)`` /
    ``ctypes.pointer(...)``. ``name`` is only used for the error message, e.g. ``"KVM_RUN"``.
    """
    if arg.__class__ is int:
        carg = arg & _MASK64 if arg < 0 else arg
    elif arg is None:
        carg = None
    elif isinstance(arg, _CArgObject) or isinstance(arg, ctypes._Pointer):
        carg = arg
    elif isinstance(arg, _CData):
        carg = _byref(arg)
    elif isinstance(arg, int):  # bool, IntEnum, IntFlag
        carg = int(arg) & _MASK64
    else:
        raise TypeError(f"{name}: ioctl argument must be an int or a ctypes object, "
                        f"not {type(arg).__name__}")
    ret = _libc_ioctl(fd, request, carg)
    if ret == -1:
        raise KvmError(name, _get_errno())
    return ret

"""Errors raised by the KVM bindings.

Every failing KVM ioctl becomes a :class:`KvmError` naming the ioctl, raised in exactly one place
(:func:`hvkvm.kvm._ioctl.ioctl`). It is an :class:`OSError`, so ``e.errno`` and ``e.strerror``
work as usual, plus ``e.ioctl``::

    >>> str(KvmError("KVM_CREATE_VCPU", 22))
    'KVM_CREATE_VCPU: Invalid argument (errno 22)'

:class:`KvmUnavailable` is the subclass for "there is no usable KVM here": ``/dev/kvm`` missing
(ENOENT, ENODEV, ENXIO), not permitted (EACCES, EPERM), or the kernel speaking another API version.
Tests and ``hvkvm doctor`` catch it to skip or explain; everything else is a real failure.
Use :meth:`KvmUnavailable.from_open_error` where ``os.open("/dev/kvm")`` fails, and
:func:`is_unavailable_errno` to decide whether an open failure means "no KVM".
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = ["KvmError", "KvmUnavailable", "UNAVAILABLE_ERRNOS", "is_unavailable_errno"]


class KvmError(OSError):
    """A KVM ioctl (or other KVM operation) failed: ``KvmError(ioctl_name, errno)``.

    Attributes: ``ioctl`` (the name, e.g. ``"KVM_RUN"``), ``errno``, ``strerror``, and ``detail``
    (optional extra text appended to the message). EINTR from ``KVM_RUN`` arrives as a KvmError
    with ``errno == errno.EINTR``; vCPU loops treat it as a kick.
    """

    def __init__(self, ioctl: str, errno: int, detail: str | None = None):
        errno = int(errno)
        try:
            strerror = os.strerror(errno)
        except ValueError:  # pragma: no cover - out-of-range errno
            strerror = f"Unknown error {errno}"
        super().__init__(errno, strerror)
        self.ioctl = ioctl
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.ioctl}: {self.strerror} (errno {self.errno})"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __repr__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        extra = f", detail={self.detail!r}" if self.detail else ""
        return f"{type(self).__name__}({self.ioctl!r}, errno.{name}{extra})"

    def __reduce__(self):
        # OSError pickles its (errno, strerror) args; rebuild from ours instead, so the error
        # survives crossing from a worker process to the VM service intact.
        return (type(self), (self.ioctl, self.errno, self.detail))


#: errno values of a failed ``open("/dev/kvm")`` that mean "no usable KVM on this machine".
UNAVAILABLE_ERRNOS = frozenset({_errno.ENOENT, _errno.ENODEV, _errno.ENXIO, _errno.EACCES,
                                _errno.EPERM, _errno.EROFS})


def is_unavailable_errno(err: int) -> bool:
    """True when an ``open("/dev/kvm")`` errno means KVM is absent or not permitted."""
    return err in UNAVAILABLE_ERRNOS


_HINTS = {
    _errno.ENOENT: "no /dev/kvm: load kvm_intel/kvm_amd (or kvm_pvm), or enable nested virtualization",
    _errno.ENODEV: "the KVM module is not loaded or the CPU lacks virtualization support",
    _errno.ENXIO: "the KVM module is not loaded or the CPU lacks virtualization support",
    _errno.EACCES: "permission denied: add the user to the 'kvm' group (or run as root)",
    _errno.EPERM: "operation not permitted: check the 'kvm' group and any sandbox/seccomp policy",
    _errno.EROFS: "read-only /dev: /dev/kvm must be opened read-write",
    _errno.EPROTO: "the kernel's KVM API version is not 12",
}


class KvmUnavailable(KvmError):
    """No usable KVM: ``/dev/kvm`` missing or not permitted, or an incompatible KVM API.

    ``KvmUnavailable(op, errno, detail=None)`` where ``op`` names what failed (``"open /dev/kvm"``,
    ``"KVM_GET_API_VERSION"``). When ``detail`` is omitted a hint for the errno is used, e.g.
    ``open /dev/kvm: Permission denied (errno 13): permission denied: add the user to the 'kvm'
    group (or run as root)``. For a wrong API version use ``errno.EPROTO``.
    """

    def __init__(self, ioctl: str, errno: int, detail: str | None = None):
        super().__init__(ioctl, errno, detail if detail is not None else _HINTS.get(int(errno)))

    @classmethod
    def from_open_error(cls, path: str, exc: OSError) -> "KvmError":
        """Turn ``os.open(path)``'s OSError into KvmUnavailable (or a plain KvmError if the errno
        says something else went wrong, e.g. EMFILE)."""
        err = exc.errno or _errno.ENODEV
        if is_unavailable_errno(err):
            return cls("open " + path, err)
        return KvmError("open " + path, err)

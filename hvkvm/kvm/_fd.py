"""One owner per fd: the shared shape of ``Kvm``, ``Vm`` and ``Vcpu`` (idempotent close, ``with``)."""

from __future__ import annotations

import mmap
import os


def close_mmap(mm: mmap.mmap | None) -> None:
    """Unmap ``mm``; if a caller still holds a view into it, leave the unmap to its last view.

    Either way the owner drops its reference, so no new access goes through it.
    """
    if mm is None:
        return
    try:
        mm.close()
    except BufferError:
        pass


class FdOwner:
    """Owns ``self.fd``: :meth:`close` runs :meth:`_release` then closes the fd, once."""

    fd: int = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _release(self) -> None:
        """Release what hangs off the fd (mappings) before it closes."""

    def close(self) -> None:
        """Release the fd's resources and close it. Safe to call twice."""
        self._release()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

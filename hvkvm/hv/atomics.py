"""Atomic SynIC updates on guest RAM, through the C extension (``csrc/hv_synic.c``)."""

from __future__ import annotations


class Atomics:
    """``event_set_bit`` and ``message_mark_pending`` on host addresses inside guest RAM.

    Callers pass addresses they got from :meth:`hvkvm.memory.GuestMemory.host_address` with the
    whole span checked; these functions trust them.
    """

    def __init__(self):
        from ..vmbus._hvring import ffi, lib
        self._ffi, self._lib = ffi, lib

    def event_set_bit(self, addr: int, bit: int) -> None:
        """Atomically set ``bit`` in the flag array at ``addr``."""
        self._lib.hvr_event_set_bit(self._ffi.cast("uint32_t *", addr), bit)

    def message_mark_pending(self, addr: int) -> int:
        """Set MSG_PENDING in the message slot at ``addr``; return its message_type afterwards."""
        return self._lib.hvr_message_mark_pending(self._ffi.cast("void *", addr))

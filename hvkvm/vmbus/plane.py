"""A channel's C data plane (``csrc/hvr_plane.c``), set up and torn down from Python.

The plane is a host thread that owns the channel's rings while it runs: it drains the guest's
send ring, calls a C handler per packet and posts replies, polling under load and sleeping on the
channel's kick eventfd (KVM's ioeventfd for the connection id) when idle. It interrupts the guest
through an irqfd bound to an MSI route that follows the guest's SINT2 vector. Python only builds
it, reads its counters, and stops it.
"""

from __future__ import annotations

import os

from ..kvm.errors import KvmError
from . import wire as w
from ._hvring import ffi, lib

#: Handlers by name (C functions in csrc/).
HANDLERS = {"echo": "hvr_echo_handler"}


class PlaneError(RuntimeError):
    """The plane could not be set up (the message says why)."""


class CDataPlane:
    """One channel's C data plane; idempotent :meth:`close`."""

    def __init__(self, partition, channel, handler: str = "echo", spin_us: int = 50,
                 ctx=ffi.NULL):
        self.partition = partition
        self.channel = channel
        self.vp = channel.target_vp
        self._gsi = None
        self._irqfd = -1
        self._started = False
        self._closed = False
        hv = partition.hv
        siefp = hv.vps[self.vp].siefp_gpa()
        if siefp is None:
            raise PlaneError("the guest has no SIEFP page: channel interrupts cannot be posted")
        sint = w.VMBUS_MESSAGE_SINT
        flags_addr = partition.memory.host_address(siefp + sint * 256, 256)
        self._irq_enabled = ffi.new("uint32_t *")
        try:
            self._irqfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            msi = hv.sint_msi(self.vp, sint)
            self._irq_enabled[0] = 1 if msi else 0
            self._gsi = partition.msi_routes.add(*(msi or (0xFEE00000, 0xFF)))
            partition.vm.irqfd(self._irqfd, self._gsi)
            hv.sint_listeners.append(self._sint_changed)
            in_map, out_map = channel.mappings
            self._p = ffi.new("struct hvr_plane *")
            fn = ffi.addressof(lib, HANDLERS[handler])
            rc = lib.hvr_plane_init(
                self._p, ffi.cast("struct hv_ring_buffer *", in_map.address), in_map.data_size,
                ffi.cast("struct hv_ring_buffer *", out_map.address), out_map.data_size,
                lib.HVR_DOUBLE_MAPPED, channel.eventfd, self._irqfd,
                ffi.cast("uint32_t *", flags_addr), self._irq_enabled, channel.relid, spin_us,
                fn, ctx)
            if rc != 0:
                raise PlaneError(f"hvr_plane_init failed ({rc}): ring corrupt or bad arguments")
        except BaseException:
            self.close()
            raise

    def _sint_changed(self, vp: int, sint: int) -> None:
        if vp != self.vp or sint not in (-1, w.VMBUS_MESSAGE_SINT):
            return
        msi = self.partition.hv.sint_msi(self.vp, w.VMBUS_MESSAGE_SINT)
        if msi is None:
            self._irq_enabled[0] = 0
        else:
            self.partition.msi_routes.update(self._gsi, *msi)
            self._irq_enabled[0] = 1

    def start(self) -> None:
        """Start the thread (after OPENCHANNEL_RESULT went out)."""
        rc = lib.hvr_plane_start(self._p)
        if rc != 0:
            raise PlaneError(f"cannot start the data-plane thread: {os.strerror(-rc)}")
        self._started = True

    @property
    def stats(self) -> dict[str, int]:
        """The plane's counters."""
        s = self._p.stats
        return {k: getattr(s, k) for k in ("packets", "bytes", "kicks", "sleeps", "signals",
                                           "full_waits", "batches", "retries", "reaped")}

    @property
    def error(self) -> int:
        """Why the plane stopped on its own (a negative hvr status), 0 while it runs."""
        return self._p.error

    @property
    def stop_reason(self) -> str | None:
        """Why the plane stopped on its own, in words (None while it serves the channel)."""
        err = self._p.error
        if not err:
            return None
        if err == lib.HVR_EBROKEN:
            from .ring import BROKEN_REASONS
            b = self._p.broken
            return f"the guest corrupted the ring (bad {BROKEN_REASONS.get(b, f'reason {b}')})"
        if err == lib.HVR_EINVAL:
            return "a request whose answer can never fit the guest's ring"
        return f"error {err}"

    def close(self) -> None:
        """Stop the thread, unbind the irqfd and free the route. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_p", None) is not None:
            lib.hvr_plane_stop(self._p)
            why = self.stop_reason
            if why is not None:
                # The thread stopped serving the channel on its own: say why in the partition's
                # channel errors (the VM Service's event log reads them).
                try:
                    self.channel.server.channels._error(
                        "plane-stopped", f"relid {self.channel.relid}: data plane stopped: {why}")
                except AttributeError:
                    pass
        hv = self.partition.hv
        if self._sint_changed in hv.sint_listeners:
            hv.sint_listeners.remove(self._sint_changed)
        if self._gsi is not None and self._irqfd >= 0:
            try:
                self.partition.vm.irqfd_deassign(self._irqfd, self._gsi)
            except KvmError:
                pass
        if self._gsi is not None:
            self.partition.msi_routes.remove(self._gsi)
        if self._irqfd >= 0:
            os.close(self._irqfd)
            self._irqfd = -1

"""KVM's binary statistics fd (KVM_GET_STATS_FD) read with the structs in :mod:`hvkvm.kvm.abi`.

A stats fd starts with ``struct kvm_stats_header``; ``num_desc`` descriptors (each a
``struct kvm_stats_desc`` followed by ``name_size`` bytes of NUL-padded name) live at
``desc_offset``; the values (``size`` u64s per statistic) at ``data_offset + desc.offset``. The
descriptors never change for the fd's life, so :class:`KvmStats` parses them once and
:meth:`KvmStats.read` is one ``pread`` of the data block.

The benchmarks read the counters of a vCPU (``exits``, ``io_exits``, ``mmio_exits``,
``irq_injections``, ``halt_exits``, ...) at the start and the end of a timed loop and report the
differences per operation.
"""

from __future__ import annotations

import ctypes
import os

from ..kvm import abi

#: vCPU statistics the reports carry (when the kernel has them).
VCPU_KEYS = ("exits", "io_exits", "mmio_exits", "irq_exits", "halt_exits", "signal_exits",
             "irq_injections", "nmi_injections", "irq_window_exits", "request_irq_exits",
             "halt_wakeup", "insn_emulation", "hypercalls")


class KvmStats:
    """One stats fd (owned: :meth:`close`), its descriptors, and one-pread snapshots."""

    def __init__(self, fd: int):
        self.fd = fd
        hdr = abi.kvm_stats_header()
        raw = os.pread(fd, ctypes.sizeof(hdr), 0)
        ctypes.memmove(ctypes.addressof(hdr), raw, ctypes.sizeof(hdr))
        self.header = hdr
        dsize = ctypes.sizeof(abi.kvm_stats_desc) + hdr.name_size
        blob = os.pread(fd, dsize * hdr.num_desc, hdr.desc_offset)
        self.fields: dict[str, tuple[int, int, int]] = {}     # name -> (offset, size, flags)
        end = 0
        for i in range(hdr.num_desc):
            d = abi.kvm_stats_desc()
            base = i * dsize
            ctypes.memmove(ctypes.addressof(d), blob[base:base + ctypes.sizeof(d)],
                           ctypes.sizeof(d))
            name = blob[base + ctypes.sizeof(d):base + dsize].split(b"\0", 1)[0].decode()
            self.fields[name] = (d.offset, d.size, d.flags)
            end = max(end, d.offset + 8 * d.size)
        self._data_size = end

    @classmethod
    def for_vcpu(cls, vcpu) -> "KvmStats | None":
        """The vCPU's stats (None where the kernel has no binary stats fd)."""
        try:
            return cls(vcpu.get_stats_fd())
        except Exception:  # noqa: BLE001 - an old kernel: the report says "n/a"
            return None

    def read(self, keys=VCPU_KEYS) -> dict[str, int]:
        """Current values of the single-value cumulative/instant statistics in ``keys``."""
        data = os.pread(self.fd, self._data_size, self.header.data_offset)
        out = {}
        for k in keys:
            f = self.fields.get(k)
            if f is not None and f[1] == 1:
                out[k] = int.from_bytes(data[f[0]:f[0] + 8], "little")
        return out

    def close(self) -> None:
        """Close the fd (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "KvmStats":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int]:
    """after - before for the keys both have ({} when either is missing)."""
    if not before or not after:
        return {}
    return {k: after[k] - before[k] for k in after if k in before}

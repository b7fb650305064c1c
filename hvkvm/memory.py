"""Guest RAM: memfd-backed regions, GPA -> host translation, bounds-checked access.

Every GPA that reaches this module may come from a hostile guest. Nothing here touches host memory
outside the guest's RAM: an access that is not entirely inside one region raises
:class:`GuestMemoryError`, never a host access.

RAM is one memfd, mapped once in this process. Later work maps the same memfd a second time (C data
planes, worker processes); the fd is kept open for that (:attr:`GuestMemory.memfd`).
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import struct
from ._record import Record

from .kvm._fd import close_mmap

PAGE_SIZE = 4096

#: Start of the 32-bit MMIO hole (LAPIC, IOAPIC, device MMIO live above it); RAM beyond it moves
#: above 4 GiB, as on a PC.
MMIO_HOLE_START = 0xC000_0000
MMIO_HOLE_END = 0x1_0000_0000


class GuestMemoryError(ValueError):
    """A guest-physical access that is not entirely inside guest RAM."""


class MemoryRegion(Record):
    """One contiguous piece of guest RAM: a KVM memory slot backed by a slice of the memfd."""

    slot: int
    gpa: int
    size: int
    memfd_offset: int
    host_addr: int
    _buf: ctypes.Array | None = None

    @property
    def end(self) -> int:
        """One past the last GPA of the region."""
        return self.gpa + self.size


def ram_layout(size: int) -> list[tuple[int, int]]:
    """Split ``size`` bytes of RAM into (gpa, size) pieces around the 32-bit MMIO hole."""
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"memory size {size} must be a positive multiple of {PAGE_SIZE}")
    low = min(size, MMIO_HOLE_START)
    layout = [(0, low)]
    if size > low:
        layout.append((MMIO_HOLE_END, size - low))
    return layout


class GuestMemory:
    """Guest RAM of a child partition.

    Owns the memfd and its mapping; :meth:`close` is idempotent. Regions never overlap and are
    sorted by GPA.
    """

    def __init__(self, size: int, name: str = "hvkvm-ram"):
        layout = ram_layout(size)
        self.size = size
        self.memfd = -1
        self._mm: mmap.mmap | None = None
        self.regions: list[MemoryRegion] = []
        try:
            self.memfd = os.memfd_create(name, os.MFD_CLOEXEC)
            os.ftruncate(self.memfd, size)
            self._mm = mmap.mmap(self.memfd, size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            # One exported ctypes view gives the stable host address KVM needs; it is dropped in
            # close() before the mapping goes, so no dangling address survives.
            whole = (ctypes.c_char * size).from_buffer(self._mm)
            base = ctypes.addressof(whole)
            offset = 0
            for slot, (gpa, length) in enumerate(layout):
                self.regions.append(MemoryRegion(slot, gpa, length, offset, base + offset))
                offset += length
            self.regions[0]._buf = whole
            self._view = memoryview(self._mm)
        except BaseException:
            self.close()
            raise
        self._starts = [r.gpa for r in self.regions]

    def __enter__(self) -> "GuestMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unmap RAM and close the memfd. Safe to call twice."""
        view = getattr(self, "_view", None)
        if view is not None:
            view.release()
            self._view = None
        for r in self.regions:
            r._buf = None
        close_mmap(self._mm)   # a view a caller still holds keeps the mapping until it goes
        self._mm = None
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._mm is None

    # -- translation ---------------------------------------------------------------------------

    def region_of(self, gpa: int) -> MemoryRegion | None:
        """The region holding ``gpa``, or None."""
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i < 0:
            return None
        r = self.regions[i]
        return r if gpa < r.end else None

    def contains(self, gpa: int, length: int = 1) -> bool:
        """True when [gpa, gpa+length) lies entirely inside one RAM region."""
        if gpa < 0 or length < 0:
            return False
        r = self.region_of(gpa)
        return r is not None and gpa + length <= r.end

    def _offset(self, gpa: int, length: int) -> int:
        if self._mm is None:
            raise GuestMemoryError("guest memory is closed")
        if not isinstance(gpa, int) or not isinstance(length, int) or gpa < 0 or length < 0:
            raise GuestMemoryError(f"bad guest access gpa={gpa!r} length={length!r}")
        r = self.region_of(gpa)
        if r is None or gpa + length > r.end:
            raise GuestMemoryError(
                f"GPA range {gpa:#x}+{length:#x} is outside guest RAM")
        return r.memfd_offset + (gpa - r.gpa)

    def host_address(self, gpa: int, length: int = 1) -> int:
        """Host virtual address of ``gpa`` (checked to cover ``length`` bytes)."""
        return self.regions[0].host_addr + self._offset(gpa, length)

    # -- access ------------------------------------------------------------------------------

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of guest RAM; the range must lie inside one region."""
        off = self._offset(gpa, length)
        return self._view[off:off + length]

    def read(self, gpa: int, length: int) -> bytes:
        """Copy ``length`` bytes out of guest RAM."""
        off = self._offset(gpa, length)
        return self._mm[off:off + length]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into guest RAM at ``gpa``."""
        off = self._offset(gpa, len(data))
        self._mm[off:off + len(data)] = bytes(data)

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes at ``gpa`` to ``byte``."""
        off = self._offset(gpa, length)
        self._mm[off:off + length] = bytes([byte]) * length

    def read_u8(self, gpa: int) -> int:
        """Read one byte."""
        return self.read(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        """Read a little-endian u16."""
        return struct.unpack("<H", self.read(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        """Read a little-endian u32."""
        return struct.unpack("<I", self.read(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        """Read a little-endian u64."""
        return struct.unpack("<Q", self.read(gpa, 8))[0]

    def write_u32(self, gpa: int, value: int) -> None:
        """Write a little-endian u32."""
        self.write(gpa, struct.pack("<I", value & 0xFFFF_FFFF))

    def write_u64(self, gpa: int, value: int) -> None:
        """Write a little-endian u64."""
        self.write(gpa, struct.pack("<Q", value & 0xFFFF_FFFF_FFFF_FFFF))

    def read_cstr(self, gpa: int, max_len: int) -> str:
        """Read a NUL-terminated string of at most ``max_len`` bytes (cut there if no NUL).

        Guest strings are untrusted: the result is decoded with replacement characters and never
        reads past ``max_len`` or past RAM.
        """
        r = self.region_of(gpa)
        if r is None:
            raise GuestMemoryError(f"string at GPA {gpa:#x} is outside guest RAM")
        raw = self.read(gpa, min(max_len, r.end - gpa))
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

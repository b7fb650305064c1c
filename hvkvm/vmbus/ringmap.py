"""Host-side mapping of one VMBus ring: its header page, its data pages, then the data pages again.

A ring lives in guest RAM as a GPADL: a header page and ``n`` data pages, possibly scattered. The
parent maps those pages of the guest-RAM memfd into one contiguous host range::

    guard | header | data 0 .. data n-1 | data 0 .. data n-1 | guard

so that a packet that wraps around the end of the data area is contiguous in host memory and can
be parsed in place (``HVR_DOUBLE_MAPPED`` in ``csrc/vmbus_ring.h``; Linux's ``hv_ringbuffer_init``
does the same with ``vmap``). The guard pages are reserved ``PROT_NONE``: an access just outside
the ring faults instead of touching other memory.

How: reserve an anonymous ``PROT_NONE`` range of ``1 + 2 * n`` pages (plus the guards), then
``mmap(MAP_FIXED | MAP_SHARED)`` each run of memfd pages into place. Every PFN is checked against
guest RAM before anything is mapped.

One owner per mapping (ARCHITECTURE decision 6): :class:`RingMapping` has an idempotent
:meth:`RingMapping.close` and is a context manager.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from hvkvm.memory import GuestMemory

PAGE_SIZE = 4096

# Linux x86-64 values (asm-generic/mman-common.h, asm/mman.h).
_PROT_NONE = 0x0
_PROT_READ = 0x1
_PROT_WRITE = 0x2
_MAP_SHARED = 0x01
_MAP_PRIVATE = 0x02
_MAP_FIXED = 0x10
_MAP_ANONYMOUS = 0x20
_MAP_NORESERVE = 0x4000

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long)
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_munmap.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value


class RingMapError(ValueError):
    """A ring's page list cannot be mapped: a PFN outside guest RAM, a bad offset, too few pages."""


def _os_error(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


class RingMapping:
    """A contiguous host view of one ring: header page, data pages, and (double mapped) the data
    pages again, all ``MAP_SHARED`` from a memfd.

    ``page_offsets`` are the memfd offsets of the header page and then of each data page, in ring
    order (page aligned, inside the memfd). ``double=False`` maps the data pages once: the plain
    view a guest has (used by tests). Use :meth:`from_guest` for a ring in guest RAM and
    :meth:`from_memfd` for a ring in a memfd of your own.

    The mapping stays valid until :meth:`close`; the ring views in :mod:`hvkvm.vmbus.ring` keep
    the mapping they were given and refuse to run once it is closed.
    """

    def __init__(self, memfd: int, page_offsets: Sequence[int], *, double: bool = True):
        self._reserve = 0
        self._reserve_len = 0
        offsets = [int(o) for o in page_offsets]
        if len(offsets) < 2:
            raise RingMapError(
                f"a ring needs a header page and at least one data page, got {len(offsets)} pages")
        try:
            fd_size = os.fstat(memfd).st_size
        except OSError as e:
            raise RingMapError(f"memfd {memfd} is not usable: {e}") from e
        for i, off in enumerate(offsets):
            if off < 0 or off % PAGE_SIZE or off + PAGE_SIZE > fd_size:
                raise RingMapError(
                    f"ring page {i}: memfd offset {off:#x} is not a page inside the memfd "
                    f"({fd_size:#x} bytes)")
        self.memfd = memfd
        self.n_data_pages = len(offsets) - 1
        self.double_mapped = bool(double)
        self.data_size = self.n_data_pages * PAGE_SIZE
        layout = offsets + (offsets[1:] if double else [])
        #: bytes of the view: header page + data area (twice when double mapped)
        self.size = len(layout) * PAGE_SIZE

        self._reserve_len = (len(layout) + 2) * PAGE_SIZE
        addr = _mmap(None, self._reserve_len, _PROT_NONE,
                     _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if addr is None or addr == _MAP_FAILED:
            self._reserve_len = 0
            raise _os_error("mmap(reserve)")
        self._reserve = addr
        try:
            base = addr + PAGE_SIZE
            i = 0
            while i < len(layout):
                # map a run of pages that are consecutive in the memfd with one call
                j = i + 1
                while j < len(layout) and layout[j] == layout[j - 1] + PAGE_SIZE:
                    j += 1
                want = base + i * PAGE_SIZE
                got = _mmap(want, (j - i) * PAGE_SIZE, _PROT_READ | _PROT_WRITE,
                            _MAP_SHARED | _MAP_FIXED, memfd, layout[i])
                if got is None or got == _MAP_FAILED:
                    raise _os_error(f"mmap(MAP_FIXED, page {i})")
                if got != want:  # MAP_FIXED never moves; be sure anyway
                    raise OSError(f"mmap(MAP_FIXED) placed page {i} at {got:#x}, not {want:#x}")
                i = j
        except BaseException:
            self.close()
            raise
        #: host address of the header page (struct hv_ring_buffer)
        self.address = base
        #: host address of the data area (header + 4096)
        self.data_address = base + PAGE_SIZE

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def from_guest(cls, mem: "GuestMemory", pfns: Sequence[int], *,
                   double: bool = True) -> "RingMapping":
        """Map the ring whose pages are guest frames ``pfns`` (header page first, then the data
        pages, as the GPADL lists them). Every PFN must be a whole page of guest RAM, else
        :class:`RingMapError` (nothing is mapped)."""
        if mem.closed:
            raise RingMapError("guest memory is closed")
        offsets = []
        for i, pfn in enumerate(pfns):
            if not isinstance(pfn, int) or pfn < 0:
                raise RingMapError(f"ring page {i}: PFN {pfn!r} is not a frame number")
            gpa = pfn * PAGE_SIZE
            region = mem.region_of(gpa)
            if region is None or gpa + PAGE_SIZE > region.end:
                raise RingMapError(f"ring page {i}: PFN {pfn:#x} (GPA {gpa:#x}) is outside "
                                   f"guest RAM")
            offsets.append(region.memfd_offset + (gpa - region.gpa))
        return cls(mem.memfd, offsets, double=double)

    @classmethod
    def from_memfd(cls, memfd: int, n_data_pages: int, offset: int = 0, *,
                   double: bool = True) -> "RingMapping":
        """Map a ring stored contiguously in ``memfd`` at ``offset``: the header page, then
        ``n_data_pages`` data pages (for tests and host-only rings)."""
        if n_data_pages < 1:
            raise RingMapError("a ring needs at least one data page")
        return cls(memfd, [offset + i * PAGE_SIZE for i in range(n_data_pages + 1)],
                   double=double)

    # -- access --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._reserve == 0

    def _check(self, off: int, n: int) -> None:
        if self.closed:
            raise ValueError("ring mapping is closed")
        if off < 0 or n < 0 or off + n > self.size:
            raise IndexError(f"range {off:#x}+{n:#x} is outside the {self.size:#x}-byte view")

    def read(self, off: int, n: int) -> bytes:
        """Copy ``n`` bytes at byte ``off`` of the view (0 = the header page)."""
        self._check(off, n)
        return ctypes.string_at(self.address + off, n)

    def write(self, off: int, data: bytes) -> None:
        """Store ``data`` at byte ``off`` of the view (tests use it to play a hostile peer)."""
        data = bytes(data)
        self._check(off, len(data))
        ctypes.memmove(self.address + off, data, len(data))

    # -- ownership -----------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the whole view (and its guards). Safe to call twice. The memfd is not closed:
        it belongs to whoever passed it in."""
        if self._reserve:
            if _munmap(self._reserve, self._reserve_len) != 0:
                raise _os_error("munmap")
            self._reserve = 0
        self.address = 0
        self.data_address = 0

    def __enter__(self) -> "RingMapping":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"at {self.address:#x}"
        kind = "double" if self.double_mapped else "plain"
        return f"<RingMapping {kind} {self.n_data_pages} data pages {state}>"

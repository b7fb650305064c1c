"""Port-I/O and MMIO buses: route a guest access to the device provider that owns the address.

A child partition has two buses, one for the 16-bit port space and one for the guest-physical
MMIO space. The exit loop hands every ``KVM_EXIT_IO`` / ``KVM_EXIT_MMIO`` to one of them; the bus
finds the device whose range holds the address and calls it with the offset into that range, so a
device (a VSP) never knows where it sits and the same class can back COM1 and COM2.

Behaviour the exit loop can rely on:

* **Unmapped accesses** read as all ones (every byte 0xff, what an ISA/PCI bus returns when nobody
  answers) and writes are dropped. Both are counted (:attr:`Bus.unmapped_reads`,
  :attr:`Bus.unmapped_writes`, :attr:`Bus.unmapped` per address) and logged once per address on
  the ``hvkvm.bus`` logger, so a guest that probes or hammers a hole cannot flood the log. With
  ``strict=True`` the bus raises :class:`UnmappedAccess` instead (tests and hostile-guest checks).
* **Straddling accesses**, which start inside a device's range but end past it (``inl`` at the
  last port of a UART), are treated exactly as unmapped accesses: the device is not called, reads
  return 0xff bytes, writes are dropped, they are counted and logged once (the log line says the
  access straddled), and ``strict=True`` raises :class:`UnmappedAccess`. A device therefore never
  sees ``offset + len(data)`` beyond its length, and no guest access is ever silently split
  across two devices.
* **Thread safety.** Several vCPU threads may call :meth:`Bus.read`, :meth:`Bus.write` and
  :meth:`Bus.pio_string` at the same time without any lock on the hot path. Devices are meant to
  be registered before the vCPUs run. Registration after that is still safe, because
  :meth:`Bus.insert` and :meth:`Bus.remove` publish a new table in one reference assignment; but
  an access already dispatched may still reach a device just removed. A device's own state
  is the device's business: the bus does not serialise calls into it.
"""

from __future__ import annotations

import bisect
import threading
from typing import NamedTuple, Protocol, runtime_checkable

from .._lazy import logger as _lazy_logger

__all__ = [
    "BusDevice",
    "BusError",
    "UnmappedAccess",
    "Bus",
    "PIO_SPACE",
    "MMIO_SPACE",
    "MAX_TRACKED_ADDRESSES",
]

log = _lazy_logger("hvkvm.bus")  # logging is imported on first use

#: Size of the x86 port-I/O space (ports 0x0000-0xffff).
PIO_SPACE = 1 << 16
#: Size of the guest-physical address space an MMIO bus covers.
MMIO_SPACE = 1 << 64
#: How many distinct unmapped addresses a bus keeps a counter (and a log line) for. A guest
#: scanning the MMIO space could otherwise grow :attr:`Bus.unmapped` without bound.
MAX_TRACKED_ADDRESSES = 4096


@runtime_checkable
class BusDevice(Protocol):
    """What a device provider implements to sit on a :class:`Bus`.

    ``offset`` is relative to the base the device was inserted at; ``len(data)`` is the access
    size (1, 2, 4 or 8 for single accesses) and ``offset + len(data)`` never exceeds the length
    the device was inserted with. A write's ``data`` is bytes (or, for string I/O, a view); a
    read's ``data`` is a view into the vCPU's ``kvm_run`` page: fill it, and keep no reference to
    it after returning (the exit loop reuses it for later exits, or releases it).
    """

    def read(self, offset: int, data: memoryview) -> None:
        """Fill ``data`` in place with the value read at ``offset`` (little-endian)."""

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Accept ``data`` (little-endian) written at ``offset``."""


class BusError(Exception):
    """A bus registration was refused (zero length, wraparound, overlap, unknown base)."""


class UnmappedAccess(BusError):
    """A guest access on a ``strict`` bus reached no device (or straddled a device's end).

    Attributes name the bus, the guest address, the access size and its direction, so the
    exit loop can report exactly what the guest did.
    """

    def __init__(self, bus_name: str, addr: int, size: int, is_write: bool):
        self.bus_name = bus_name
        self.addr = addr
        self.size = size
        self.is_write = is_write
        kind = "write" if is_write else "read"
        super().__init__(f"{bus_name}: unmapped {size}-byte {kind} at {addr:#x}")


class _Entry(NamedTuple):
    base: int
    end: int  # last address, inclusive: the range can reach the top of the space
    length: int
    device: BusDevice


def _describe(device: object) -> str:
    name = getattr(device, "name", None)
    cls = type(device).__name__
    return f"{cls}({name!r})" if isinstance(name, str) else cls


def _range_str(base: int, length: int) -> str:
    return f"[{base:#x}-{base + length - 1:#x}]"


class Bus:
    """An address space (port I/O or MMIO) divided into non-overlapping device ranges.

    ``name`` appears in errors and log lines ("pio", "mmio"). ``size`` bounds the space: ranges
    and accesses must fit below it (use :data:`PIO_SPACE` for port I/O). ``strict`` turns
    unmapped and straddling accesses into :class:`UnmappedAccess`.
    """

    def __init__(self, name: str, *, size: int = MMIO_SPACE, strict: bool = False):
        if size <= 0:
            raise ValueError(f"bus size must be positive, not {size}")
        self.name = name
        self.size = size
        self.strict = strict
        #: Unmapped (or straddling) reads seen, each repetition of a string I/O counted.
        self.unmapped_reads = 0
        #: Unmapped (or straddling) writes seen, each repetition of a string I/O counted.
        self.unmapped_writes = 0
        #: Unmapped accesses per guest address (reads and writes together); holds at most
        #: :data:`MAX_TRACKED_ADDRESSES` addresses, later new addresses only reach the totals.
        self.unmapped: dict[int, int] = {}
        # One tuple (bases, entries) replaced wholesale on every change: a reader takes one
        # reference and sees a consistent table without locking.
        self._table: tuple[list[int], list[_Entry]] = ([], [])
        self._reg_lock = threading.Lock()
        # Only the (rare) unmapped path takes this: `+=` on a shared int is not atomic.
        self._stats_lock = threading.Lock()
        self._untracked_logged = False

    # -- registration -------------------------------------------------------------------------

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        """Map ``device`` at ``[base, base + length)``.

        Raises :class:`BusError` if ``length`` is not positive, if the range does not fit in the
        bus (wraps past its top), or if it overlaps a range already mapped; the overlap message
        names both ranges and both devices. Adjacent ranges are fine.
        """
        if length <= 0:
            raise BusError(f"{self.name}: zero-length range at {base:#x} for {_describe(device)}")
        if base < 0 or base + length > self.size:
            raise BusError(
                f"{self.name}: range at {base:#x} length {length:#x} for {_describe(device)} "
                f"does not fit in the {self.size:#x}-byte space"
            )
        end = base + length - 1
        with self._reg_lock:
            bases, entries = self._table
            i = bisect.bisect_right(bases, base)
            # Sorted and disjoint, so only the neighbours on either side can overlap.
            for j in (i - 1, i):
                if 0 <= j < len(entries):
                    other = entries[j]
                    if other.base <= end and base <= other.end:
                        raise BusError(
                            f"{self.name}: range {_range_str(base, length)} for "
                            f"{_describe(device)} overlaps {_range_str(other.base, other.length)} "
                            f"of {_describe(other.device)}"
                        )
            new_bases = bases[:i] + [base] + bases[i:]
            new_entries = entries[:i] + [_Entry(base, end, length, device)] + entries[i:]
            self._table = (new_bases, new_entries)

    def remove(self, base: int) -> BusDevice:
        """Unmap the range that starts at ``base`` and return its device.

        Raises :class:`BusError` if no range starts exactly at ``base``.
        """
        with self._reg_lock:
            bases, entries = self._table
            i = bisect.bisect_left(bases, base)
            if i == len(bases) or bases[i] != base:
                raise BusError(f"{self.name}: no range starts at {base:#x}")
            device = entries[i].device
            self._table = (bases[:i] + bases[i + 1:], entries[:i] + entries[i + 1:])
            return device

    def get(self, addr: int) -> tuple[BusDevice, int, int] | None:
        """Return ``(device, base, length)`` of the range holding ``addr``, or None. O(log n)."""
        bases, entries = self._table
        i = bisect.bisect_right(bases, addr) - 1
        if i >= 0:
            e = entries[i]
            if addr <= e.end:
                return (e.device, e.base, e.length)
        return None

    def ranges(self) -> list[tuple[int, int, BusDevice]]:
        """All mapped ranges as ``(base, length, device)``, sorted by base (for summaries)."""
        return [(e.base, e.length, e.device) for e in self._table[1]]

    def __len__(self) -> int:
        return len(self._table[0])

    # -- dispatch -----------------------------------------------------------------------------

    def _lookup(self, addr: int, size: int) -> _Entry | None:
        bases, entries = self._table
        i = bisect.bisect_right(bases, addr) - 1
        if i >= 0:
            e = entries[i]
            if addr + size - 1 <= e.end:
                return e
        return None

    def read(self, addr: int, data: memoryview) -> bool:
        """Read ``len(data)`` bytes at ``addr`` into ``data`` (a writable byte memoryview).

        Returns True if a device answered; False if the access was unmapped or straddled a
        range's end, in which case ``data`` is filled with 0xff (or, on a strict bus,
        :class:`UnmappedAccess` is raised and ``data`` is left untouched).
        """
        n = len(data)
        if n == 0:
            raise ValueError(f"{self.name}: zero-length read at {addr:#x}")
        e = self._lookup(addr, n)
        if e is not None:
            e.device.read(addr - e.base, data)
            return True
        self._unmapped(addr, n, False, 1)
        data[:] = b"\xff" * n
        return False

    def write(self, addr: int, data: bytes | memoryview) -> bool:
        """Write ``data`` at ``addr``.

        Returns True if a device took it; False if the access was unmapped or straddled a
        range's end and was dropped (a strict bus raises :class:`UnmappedAccess` instead).
        """
        n = len(data)
        if n == 0:
            raise ValueError(f"{self.name}: zero-length write at {addr:#x}")
        e = self._lookup(addr, n)
        if e is not None:
            e.device.write(addr - e.base, data)
            return True
        self._unmapped(addr, n, True, 1)
        return False

    def pio_string(self, port: int, size: int, count: int, data: memoryview, is_write: bool) -> bool:
        """Perform a string port I/O: ``count`` accesses of ``size`` bytes at the same ``port``.

        This is what a ``KVM_EXIT_IO`` with ``count > 1`` (``rep insb``/``rep outsw``...) asks
        for: access ``i`` uses ``data[i*size:(i+1)*size]``, in order, as the CPU would have
        done them one by one. ``data`` must hold at least ``size * count`` bytes and be writable
        for reads. Returns True if a device answered, False if the port is unmapped (then every
        read slot is filled with 0xff and every write dropped, each repetition counted once).
        """
        if size <= 0 or count < 0:
            raise ValueError(f"{self.name}: bad string I/O size={size} count={count}")
        if len(data) < size * count:
            raise ValueError(
                f"{self.name}: string I/O of {count}x{size} bytes given {len(data)}-byte buffer"
            )
        if count == 0:
            return True
        # The port is the same for every repetition, so one lookup serves the whole loop.
        e = self._lookup(port, size)
        if e is None:
            self._unmapped(port, size, is_write, count)
            if not is_write:
                data[: size * count] = b"\xff" * (size * count)
            return False
        offset = port - e.base
        dev = e.device
        if is_write:
            for i in range(0, size * count, size):
                dev.write(offset, data[i:i + size])
        else:
            for i in range(0, size * count, size):
                dev.read(offset, data[i:i + size])
        return True

    # -- the unmapped path --------------------------------------------------------------------

    def _unmapped(self, addr: int, size: int, is_write: bool, count: int) -> None:
        if self.strict:
            raise UnmappedAccess(self.name, addr, size, is_write)
        with self._stats_lock:
            if is_write:
                self.unmapped_writes += count
            else:
                self.unmapped_reads += count
            seen = self.unmapped.get(addr)
            if seen is not None:
                self.unmapped[addr] = seen + count
                return
            if len(self.unmapped) >= MAX_TRACKED_ADDRESSES:
                first_untracked = not self._untracked_logged
                self._untracked_logged = True
                tracked = False
            else:
                self.unmapped[addr] = count
                first_untracked = False
                tracked = True
        # Logging outside the lock: a slow handler must not stall other vCPUs' counting.
        if tracked:
            kind = "write" if is_write else "read"
            straddle = self.get(addr)
            if straddle is not None:
                dev, base, length = straddle
                log.info(
                    "%s: %d-byte %s at %#x straddles the end of %s %s; treated as unmapped "
                    "(logged once per address)",
                    self.name, size, kind, addr, _describe(dev), _range_str(base, length),
                )
            else:
                log.info(
                    "%s: unmapped %d-byte %s at %#x (logged once per address)",
                    self.name, size, kind, addr,
                )
        elif first_untracked:
            log.warning(
                "%s: more than %d distinct unmapped addresses; further ones are only counted",
                self.name, MAX_TRACKED_ADDRESSES,
            )

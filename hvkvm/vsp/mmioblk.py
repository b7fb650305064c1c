"""An MMIO block device with one exit per request, served in Python.

The middle path between the ATA PIO disk (an exit per 2-4 bytes) and virtio (no exit per
request): the guest builds a 32-byte request descriptor in its RAM and writes the descriptor's
guest-physical address to a doorbell register; that one MMIO write is one exit, during which this
module checks the descriptor and the buffer against guest RAM, moves the data between the file
and guest RAM (``preadv``/``pwritev`` on a view of guest RAM), writes the status into the
descriptor and, when enabled, pulses its interrupt. When the guest's write instruction retires
the request is complete.

Registers (32-bit, little endian) at ``MMIOBLK_BASE`` (0xd0200000, one 4 KiB page):

====== ================ ===================================================================
offset name             meaning
====== ================ ===================================================================
0x00   MAGIC            0x4b425648 ("HVBK")
0x04   VERSION          1
0x08   CAPACITY_LO      disk size in 512-byte sectors, low 32 bits
0x0c   CAPACITY_HI      high 32 bits
0x10   MAX_SECTORS      largest request (16384 sectors, 8 MiB)
0x14   FLAGS            bit 0: read-only
0x18   IRQ_ENABLE       bit 0: pulse GSI 16 after every request (read/write)
0x1c   IRQ_COUNT        interrupts raised
0x20   DOORBELL         write (4 or 8 bytes): the descriptor's GPA; the request is served now
0x28   LAST_STATUS      status of the last request (also when the descriptor was unusable)
0x2c   COMPLETED        requests served (low 32 bits)
0x30   ERRORS           requests that ended with a status other than OK
====== ================ ===================================================================

Descriptor (32 bytes, 8-byte aligned, in guest RAM): ``u32 op`` (1 read, 2 write, 3 flush,
4 get id), ``u32 sectors``, ``u64 lba``, ``u64 buf`` (GPA), ``u32 buf_len`` (bytes: sectors *
512 for read/write, at least 1 for get id, which writes up to 20 bytes of the disk's serial),
``u32 status`` (written by the device: 0 OK, 1 I/O error, 2 unsupported op, 3 descriptor or
buffer not in guest RAM, 4 range past the end of the disk, 5 write to a read-only disk, 6 bad
length). The descriptor is read once, then checked; a descriptor outside RAM (or misaligned) only
sets LAST_STATUS to 3.
"""

from __future__ import annotations

import logging
import struct
import threading

from ..partition.config import DeviceSpec
from .disk import Disk

__all__ = ["MmioBlkDevice", "devices_for", "MMIOBLK_BASE", "MMIOBLK_SIZE", "MMIOBLK_IRQ"]

log = logging.getLogger("hvkvm.vsp.mmioblk")

MMIOBLK_BASE = 0xD020_0000
MMIOBLK_SIZE = 0x1000
MMIOBLK_IRQ = 16
MAGIC = 0x4B425648
VERSION = 1
MAX_SECTORS = 16384
SECTOR = 512
ID_BYTES = 20
DESC_SIZE = 32
_DESC = struct.Struct("<IIQQII")

REG_MAGIC, REG_VERSION, REG_CAP_LO, REG_CAP_HI = 0x00, 0x04, 0x08, 0x0C
REG_MAX_SECTORS, REG_FLAGS, REG_IRQ_ENABLE, REG_IRQ_COUNT = 0x10, 0x14, 0x18, 0x1C
REG_DOORBELL, REG_LAST_STATUS, REG_COMPLETED, REG_ERRORS = 0x20, 0x28, 0x2C, 0x30

OP_READ, OP_WRITE, OP_FLUSH, OP_GET_ID = 1, 2, 3, 4
ST_OK, ST_IOERR, ST_UNSUPP, ST_BADADDR, ST_RANGE, ST_RO, ST_BADLEN = range(7)


class MmioBlkDevice:
    """The doorbell block device (a bus device of ``MMIOBLK_SIZE`` bytes). ``own_disk``: close
    the disk in :meth:`detach`."""

    def __init__(self, disk: Disk, *, irq: int = MMIOBLK_IRQ, own_disk: bool = False,
                 name: str = "mmioblk0"):
        self.disk = disk
        self.irq = irq
        self.own_disk = own_disk
        self.name = name
        self.serial = disk.serial.encode()[:ID_BYTES].ljust(ID_BYTES, b"\0")
        self._lock = threading.Lock()
        self._memory = None
        self._irq_line = None
        self.irq_enable = 0
        self.last_status = 0
        #: Counters: requests (doorbells), reads, writes, flushes, get_ids, bytes_read,
        #: bytes_written, errors, interrupts, bad_descriptors.
        self.counters = dict.fromkeys(("requests", "reads", "writes", "flushes", "get_ids",
                                       "bytes_read", "bytes_written", "errors", "interrupts",
                                       "bad_descriptors"), 0)

    def attach(self, partition) -> None:
        """Use ``partition``'s RAM and drive its GSI ``irq``."""
        vm = partition.vm
        self._memory = partition.memory
        self._irq_line = lambda level: vm.irq_line(self.irq, level)

    def detach(self) -> None:
        """Forget the partition (and close the disk when owned). Safe to call twice."""
        with self._lock:
            self._memory = None
            self._irq_line = None
            if self.own_disk:
                self.disk.close()

    close = detach

    # -- registers ------------------------------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        n = len(data)
        base = offset & ~3
        with self._lock:
            value = self._reg(base) | self._reg(base + 4) << 32 | self._reg(base + 8) << 64
        value >>= 8 * (offset - base)
        data[:] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    def _reg(self, offset: int) -> int:
        c = self.counters
        return {
            REG_MAGIC: MAGIC, REG_VERSION: VERSION,
            REG_CAP_LO: self.disk.sectors & 0xFFFFFFFF, REG_CAP_HI: self.disk.sectors >> 32,
            REG_MAX_SECTORS: MAX_SECTORS, REG_FLAGS: 1 if self.disk.readonly else 0,
            REG_IRQ_ENABLE: self.irq_enable, REG_IRQ_COUNT: c["interrupts"] & 0xFFFFFFFF,
            REG_LAST_STATUS: self.last_status, REG_COMPLETED: c["requests"] & 0xFFFFFFFF,
            REG_ERRORS: c["errors"] & 0xFFFFFFFF,
        }.get(offset, 0)

    def write(self, offset: int, data) -> None:
        n = len(data)
        with self._lock:
            if offset == REG_DOORBELL and n in (4, 8):
                self._request(int.from_bytes(bytes(data), "little"))
            elif offset == REG_IRQ_ENABLE and n == 4:
                self.irq_enable = data[0] & 1

    # -- a request ------------------------------------------------------------------------------

    def _request(self, gpa: int) -> None:
        mem = self._memory
        c = self.counters
        c["requests"] += 1
        if mem is None or gpa % 8 or not mem.contains(gpa, DESC_SIZE):
            c["bad_descriptors"] += 1
            self._done(ST_BADADDR, None)
            return
        op, sectors, lba, buf, buf_len, _ = _DESC.unpack(mem.read(gpa, DESC_SIZE))  # read once
        status = ST_OK
        if op in (OP_READ, OP_WRITE):
            if not 1 <= sectors <= MAX_SECTORS or buf_len != sectors * SECTOR:
                status = ST_BADLEN
            elif lba > self.disk.sectors or sectors > self.disk.sectors - lba:
                status = ST_RANGE
            elif not mem.contains(buf, buf_len):
                status = ST_BADADDR
            elif op == OP_WRITE and self.disk.readonly:
                status = ST_RO
            else:
                view = mem.view(buf, buf_len)
                try:
                    if op == OP_READ:
                        c["reads"] += 1
                        if self.disk.readv([view], lba * SECTOR) != buf_len:
                            status = ST_IOERR
                        else:
                            c["bytes_read"] += buf_len
                    else:
                        c["writes"] += 1
                        self.disk.writev([view], lba * SECTOR)
                        c["bytes_written"] += buf_len
                except OSError as e:
                    log.warning("%s: %s at LBA %d: %s", self.name,
                                "read" if op == OP_READ else "write", lba, e)
                    status = ST_IOERR
                finally:
                    view.release()
        elif op == OP_FLUSH:
            c["flushes"] += 1
            try:
                if not self.disk.readonly:
                    self.disk.flush()
            except OSError:
                status = ST_IOERR
        elif op == OP_GET_ID:
            c["get_ids"] += 1
            n = min(buf_len, ID_BYTES)
            if not 1 <= buf_len or not mem.contains(buf, n):
                status = ST_BADADDR if buf_len else ST_BADLEN
            else:
                mem.write(buf, self.serial[:n])
        else:
            status = ST_UNSUPP
        self._done(status, gpa)

    def _done(self, status: int, gpa: int | None) -> None:
        self.last_status = status
        if status != ST_OK:
            self.counters["errors"] += 1
        if gpa is not None:
            self._memory.write_u32(gpa + 28, status)
        if self.irq_enable and self._irq_line is not None:
            self.counters["interrupts"] += 1
            self._irq_line(1)     # a pulse: an edge at the IOAPIC, nothing to acknowledge
            self._irq_line(0)

    def stats(self) -> dict:
        """The counters (see ``counters``)."""
        with self._lock:
            return dict(self.counters)

    def __repr__(self) -> str:
        return f"MmioBlkDevice({self.disk!r} at {MMIOBLK_BASE:#x})"


def devices_for(disk, plane: str = "python", **kw) -> tuple[dict, list[str]]:
    """The partition settings and command-line keys of the doorbell MMIO disk.

    ``disk``: a :class:`~hvkvm.vsp.disk.Disk` (the caller keeps owning it) or a path (opened here
    and closed at detach). ``plane`` must be "python". Returns
    ``({"devices": [DeviceSpec("mmio", 0xd0200000, 0x1000, dev)]}, ["dev=mmio"])``.
    """
    if plane != "python":
        raise ValueError(f"the MMIO block device has only the Python plane, not {plane!r}")
    own = not isinstance(disk, Disk)
    d = Disk(disk) if own else disk
    dev = MmioBlkDevice(d, own_disk=own, **kw)
    return {"devices": [DeviceSpec("mmio", MMIOBLK_BASE, MMIOBLK_SIZE, dev)]}, ["dev=mmio"]

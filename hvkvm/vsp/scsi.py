"""SCSI target emulation for the storage VSP: a direct-access block device (SBC) per disk.

Shared logic of the storvsc VSP's Python data plane, and the oracle that ``csrc/hvr_storage.c``
(the C data plane's twin of this module) is tested against byte for byte.

Commands: INQUIRY (standard data and VPD pages 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2), TEST UNIT
READY, READ CAPACITY (10) and (16), MODE SENSE (6) and (10) (caching and control pages), READ and
WRITE (6), (10), (16) (FUA: fdatasync before completion), SYNCHRONIZE CACHE (10) and (16)
(fdatasync), REPORT LUNS, UNMAP (holes punched in the image). Anything else, and every bad field,
ends in CHECK CONDITION with fixed-format sense data:

=================================  =========  ====  =====
condition                          sense key  ASC   ASCQ
=================================  =========  ====  =====
unsupported operation code         05         20    00
invalid field in the CDB           05         24    00
LBA out of range                   05         21    00
invalid field in parameter list    05         26    00
parameter list length error        05         1A    00
saved mode pages asked for         05         39    00
VPD page of a missing LUN          05         25    00
write / UNMAP to a read-only disk  07         27    00
read failed                        03         11    00
write or flush failed              03         0C    00
out of space in the image's fs     07         27    07
=================================  =========  ====  =====

A command whose data would not fit the buffer the guest described (the SRB's
``data_transfer_length``) is not a SCSI condition but a malformed request:
:class:`InvalidRequest` (the VSP answers SRB_STATUS_INVALID_REQUEST). A LUN that does not exist
answers INQUIRY with peripheral qualifier 3 (SPC's "no logical unit here") and REPORT LUNS like
LUN 0; anything else gets SRB_STATUS_INVALID_LUN.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import storvsc_wire as sw

BLOCK = 512
#: Physical block exponent reported (2^3 logical blocks = 4 KiB physical): a hint to align.
PHYSICAL_BLOCK_EXP = 3
#: UNMAP limits reported in VPD 0xB0 and enforced.
MAX_UNMAP_LBA_COUNT = 0x400000      # 2 GiB per descriptor
MAX_UNMAP_DESCRIPTORS = 256
OPTIMAL_UNMAP_GRANULARITY = 8       # 4 KiB

# SCSI status
GOOD = 0x00
CHECK_CONDITION = 0x02

# Sense keys
NO_SENSE = 0x0
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
DATA_PROTECT = 0x7

# Operation codes
TEST_UNIT_READY = 0x00
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SENSE_6 = 0x1A
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
SYNCHRONIZE_CACHE_10 = 0x35
UNMAP = 0x42
MODE_SENSE_10 = 0x5A
READ_16 = 0x88
WRITE_16 = 0x8A
SYNCHRONIZE_CACHE_16 = 0x91
SERVICE_ACTION_IN_16 = 0x9E
SAI_READ_CAPACITY_16 = 0x10
REPORT_LUNS = 0xA0

#: VPD pages served, in page-code order (page 0x00 lists them).
VPD_PAGES = (0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2)

VENDOR = "HVKVM"
PRODUCT = "Virtual Disk"
REVISION = "0001"


class Sense(NamedTuple):
    """A CHECK CONDITION's sense key and additional sense code/qualifier."""

    key: int
    asc: int
    ascq: int

    def fixed(self) -> bytes:
        """Fixed-format sense data (response code 0x70, current error), 18 bytes."""
        b = bytearray(18)
        b[0] = 0x70
        b[2] = self.key
        b[7] = 10       # additional sense length
        b[12] = self.asc
        b[13] = self.ascq
        return bytes(b)


INVALID_OPCODE = Sense(ILLEGAL_REQUEST, 0x20, 0x00)
INVALID_FIELD_IN_CDB = Sense(ILLEGAL_REQUEST, 0x24, 0x00)
LBA_OUT_OF_RANGE = Sense(ILLEGAL_REQUEST, 0x21, 0x00)
INVALID_FIELD_IN_PARAMETER_LIST = Sense(ILLEGAL_REQUEST, 0x26, 0x00)
PARAMETER_LIST_LENGTH_ERROR = Sense(ILLEGAL_REQUEST, 0x1A, 0x00)
SAVING_PARAMETERS_NOT_SUPPORTED = Sense(ILLEGAL_REQUEST, 0x39, 0x00)
LOGICAL_UNIT_NOT_SUPPORTED = Sense(ILLEGAL_REQUEST, 0x25, 0x00)
WRITE_PROTECTED = Sense(DATA_PROTECT, 0x27, 0x00)
UNRECOVERED_READ_ERROR = Sense(MEDIUM_ERROR, 0x11, 0x00)
WRITE_ERROR = Sense(MEDIUM_ERROR, 0x0C, 0x00)
SPACE_ALLOCATION_FAILED = Sense(DATA_PROTECT, 0x27, 0x07)


class InvalidRequest(Exception):
    """The request disagrees with itself (buffer vs CDB): not a SCSI condition."""


@dataclass
class ScsiResult:
    """What a command produced: SRB status, SCSI status, bytes moved, sense data."""

    srb_status: int = sw.SRB_STATUS_SUCCESS
    scsi_status: int = GOOD
    transferred: int = 0
    sense: bytes = b""

    @classmethod
    def good(cls, transferred: int = 0) -> "ScsiResult":
        return cls(sw.SRB_STATUS_SUCCESS, GOOD, transferred)

    @classmethod
    def check(cls, sense: Sense) -> "ScsiResult":
        return cls(sw.SRB_STATUS_ERROR | sw.SRB_STATUS_AUTOSENSE_VALID, CHECK_CONDITION, 0,
                   sense.fixed())

    @classmethod
    def invalid_lun(cls) -> "ScsiResult":
        return cls(sw.SRB_STATUS_INVALID_LUN, GOOD, 0)

    @classmethod
    def invalid_request(cls) -> "ScsiResult":
        return cls(sw.SRB_STATUS_INVALID_REQUEST, GOOD, 0)


class _Check(Exception):
    def __init__(self, sense: Sense):
        super().__init__(sense)
        self.sense = sense


class DataBuffer:
    """The guest's data buffer of one command: writable views of guest RAM, in order."""

    def __init__(self, segments: list[memoryview] | None = None):
        self.segments = [s.cast("B") if s.format != "B" else s for s in (segments or [])]
        self.length = sum(s.nbytes for s in self.segments)

    @classmethod
    def of(cls, buf: bytearray | memoryview) -> "DataBuffer":
        """A buffer over one host bytearray (tests)."""
        return cls([memoryview(buf)])

    def views(self, offset: int, length: int) -> list[memoryview]:
        """Views of bytes [offset, offset+length) of the buffer."""
        if offset < 0 or length < 0 or offset + length > self.length:
            raise InvalidRequest(f"{offset}+{length} outside a {self.length}-byte buffer")
        out = []
        for s in self.segments:
            if length == 0:
                break
            if offset >= s.nbytes:
                offset -= s.nbytes
                continue
            take = min(s.nbytes - offset, length)
            out.append(s[offset:offset + take])
            length -= take
            offset = 0
        return out

    def fill(self, data: bytes) -> int:
        """Copy ``data`` to the start of the buffer (as much as fits); returns bytes copied."""
        n = min(len(data), self.length)
        pos = 0
        for v in self.views(0, n):
            v[:] = data[pos:pos + v.nbytes]
            pos += v.nbytes
        return n

    def read(self, length: int) -> bytes:
        """The first ``length`` bytes of the buffer (copied once: guest memory)."""
        return b"".join(bytes(v) for v in self.views(0, length))


def cdb_size(opcode: int) -> int:
    """CDB length by the operation code's group."""
    group = opcode >> 5
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(group, 6)


def _be(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _pad(text: str, n: int) -> bytes:
    return text.encode("ascii", "replace")[:n].ljust(n, b" ")


class LogicalUnit:
    """One disk as a SCSI logical unit (direct-access block device, 512-byte blocks)."""

    def __init__(self, disk, lun: int = 0, max_transfer_bytes: int = 1 << 20,
                 vendor: str = VENDOR, product: str = PRODUCT, revision: str = REVISION):
        self.disk = disk
        self.lun = lun
        self.blocks = disk.sectors
        self.readonly = disk.readonly
        self.max_transfer_bytes = max_transfer_bytes
        self.vendor = _pad(vendor, 8)
        self.product = _pad(product, 16)
        self.revision = _pad(revision, 4)
        self.serial = disk.serial.encode("ascii", "replace")[:32]
        self.naa = bytes(disk.naa)[:8].ljust(8, b"\0")

    # -- dispatch ----------------------------------------------------------------------------

    def execute(self, cdb: bytes, buf: DataBuffer) -> ScsiResult:
        """Run one command; ``buf`` is the guest's data buffer (empty for none)."""
        if not cdb:
            raise InvalidRequest("empty CDB")
        handler = self._COMMANDS.get(cdb[0])
        try:
            if handler is None:
                raise _Check(INVALID_OPCODE)
            if len(cdb) < cdb_size(cdb[0]):
                raise _Check(INVALID_FIELD_IN_CDB)
            return handler(self, cdb, buf)
        except _Check as c:
            return ScsiResult.check(c.sense)

    # -- commands ----------------------------------------------------------------------------

    def _test_unit_ready(self, cdb, buf):
        return ScsiResult.good()

    def _data_in(self, data: bytes, alloc: int, buf: DataBuffer) -> ScsiResult:
        return ScsiResult.good(buf.fill(data[:min(len(data), alloc)]))

    def standard_inquiry(self) -> bytes:
        """Standard INQUIRY data (36 bytes): SPC-4, disk, command queueing."""
        head = bytes([0x00, 0x00, 0x06, 0x12, 31, 0x00, 0x00, 0x02])
        return head + self.vendor + self.product + self.revision

    def vpd_page(self, page: int) -> bytes | None:
        """VPD page ``page`` (header included), None if not served."""
        if page == 0x00:
            body = bytes(VPD_PAGES)
        elif page == 0x80:
            body = self.serial
        elif page == 0x83:
            t10 = self.vendor + self.serial
            body = bytes([0x02, 0x01, 0x00, len(t10)]) + t10
            body += bytes([0x01, 0x03, 0x00, 8]) + self.naa
        elif page == 0xB0:
            body = bytearray(0x3C)
            struct.pack_into(">H", body, 2, PHYSICAL_BLOCK_GRAN)
            struct.pack_into(">I", body, 4, self.max_transfer_bytes // BLOCK)
            if not self.readonly:
                struct.pack_into(">I", body, 16, MAX_UNMAP_LBA_COUNT)
                struct.pack_into(">I", body, 20, MAX_UNMAP_DESCRIPTORS)
            struct.pack_into(">I", body, 24, OPTIMAL_UNMAP_GRANULARITY)
            struct.pack_into(">I", body, 28, 0x80000000)   # UGAVALID, alignment 0
            body = bytes(body)
        elif page == 0xB1:
            body = bytearray(0x3C)
            struct.pack_into(">H", body, 0, 0x0001)       # non-rotating medium
            body = bytes(body)
        elif page == 0xB2:
            lbpu = 0x00 if self.readonly else 0x80
            body = bytes([0x00, lbpu | 0x04, 0x02, 0x00])   # LBPRZ=1, thin provisioned
        else:
            return None
        return bytes([0x00, page]) + struct.pack(">H", len(body)) + body

    def _inquiry(self, cdb, buf):
        evpd, page, alloc = cdb[1] & 0x01, cdb[2], _be(cdb[3:5])
        if cdb[1] & 0xFE:
            raise _Check(INVALID_FIELD_IN_CDB)
        if not evpd:
            if page:
                raise _Check(INVALID_FIELD_IN_CDB)
            return self._data_in(self.standard_inquiry(), alloc, buf)
        data = self.vpd_page(page)
        if data is None:
            raise _Check(INVALID_FIELD_IN_CDB)
        return self._data_in(data, alloc, buf)

    def _read_capacity_10(self, cdb, buf):
        last = min(self.blocks - 1, 0xFFFFFFFF)
        return self._data_in(struct.pack(">II", last, BLOCK), 8, buf)

    def _service_action_in(self, cdb, buf):
        if cdb[1] & 0x1F != SAI_READ_CAPACITY_16:
            raise _Check(INVALID_FIELD_IN_CDB)
        data = bytearray(32)
        struct.pack_into(">QI", data, 0, self.blocks - 1, BLOCK)
        data[13] = PHYSICAL_BLOCK_EXP
        if not self.readonly:
            data[14] = 0x80 | 0x40   # LBPME (UNMAP works), LBPRZ (unmapped blocks read zero)
        return self._data_in(bytes(data), _be(cdb[10:14]), buf)

    def mode_pages(self, pc: int, page: int, subpage: int) -> bytes:
        """The mode pages asked for (page control ``pc``), CHECK CONDITION if not served."""
        if pc == 3:
            raise _Check(SAVING_PARAMETERS_NOT_SUPPORTED)
        if subpage not in (0x00, 0xFF):
            raise _Check(INVALID_FIELD_IN_CDB)
        changeable = pc == 1
        caching = bytearray(20)
        caching[0:2] = b"\x08\x12"
        if not changeable:
            caching[2] = 0x04                               # WCE: flush to make durable
        control = bytearray(12)
        control[0:2] = b"\x0a\x0a"
        if not changeable:
            control[3] = 0x10                               # unrestricted reordering
            control[8:10] = b"\xff\xff"                     # busy timeout: unlimited
        pages = {0x08: bytes(caching), 0x0A: bytes(control)}
        if page == 0x3F:
            return b"".join(pages[k] for k in sorted(pages))
        if page not in pages:
            raise _Check(INVALID_FIELD_IN_CDB)
        return pages[page]

    def _device_specific(self) -> int:
        return (0x80 if self.readonly else 0x00) | 0x10   # WP, DPOFUA

    def _mode_sense_6(self, cdb, buf):
        dbd, pc, page, subpage, alloc = cdb[1] & 0x08, cdb[2] >> 6, cdb[2] & 0x3F, cdb[3], cdb[4]
        pages = self.mode_pages(pc, page, subpage)
        bd = b"" if dbd else struct.pack(">IxBH", min(self.blocks, 0xFFFFFFFF), 0, BLOCK)
        data = bytes([3 + len(bd) + len(pages), 0, self._device_specific(), len(bd)]) + bd + pages
        return self._data_in(data, alloc, buf)

    def _mode_sense_10(self, cdb, buf):
        dbd, llbaa = cdb[1] & 0x08, cdb[1] & 0x10
        pc, page, subpage, alloc = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3], _be(cdb[7:9])
        pages = self.mode_pages(pc, page, subpage)
        if dbd:
            bd = b""
        elif llbaa:
            bd = struct.pack(">QII", self.blocks, 0, BLOCK)
        else:
            bd = struct.pack(">IxBH", min(self.blocks, 0xFFFFFFFF), 0, BLOCK)
        head = struct.pack(">HBBBBH", 6 + len(bd) + len(pages), 0, self._device_specific(),
                           1 if (bd and llbaa) else 0, 0, len(bd))
        return self._data_in(head + bd + pages, alloc, buf)

    def _check_range(self, lba: int, count: int) -> None:
        if lba > self.blocks or count > self.blocks - lba:
            raise _Check(LBA_OUT_OF_RANGE)

    def _rw(self, buf: DataBuffer, write: bool, lba: int, count: int, flags: int) -> ScsiResult:
        if flags & 0xE0:        # RDPROTECT / WRPROTECT: no protection information here
            raise _Check(INVALID_FIELD_IN_CDB)
        nbytes = count * BLOCK
        if nbytes > self.max_transfer_bytes:
            raise _Check(INVALID_FIELD_IN_CDB)
        if nbytes > buf.length:
            raise InvalidRequest(f"{count} blocks do not fit a {buf.length}-byte buffer")
        self._check_range(lba, count)
        if write and self.readonly:
            raise _Check(WRITE_PROTECTED)
        if count == 0:
            return ScsiResult.good()
        views = buf.views(0, nbytes)
        if write:
            try:
                self.disk.writev(views, lba * BLOCK)
                if flags & 0x08:    # FUA
                    self.disk.flush()
            except OSError as e:
                raise _Check(SPACE_ALLOCATION_FAILED if e.errno == errno.ENOSPC
                             else WRITE_ERROR) from None
        else:
            try:
                got = self.disk.readv(views, lba * BLOCK)
            except OSError:
                raise _Check(UNRECOVERED_READ_ERROR) from None
            if got != nbytes:
                raise _Check(UNRECOVERED_READ_ERROR)
        return ScsiResult.good(nbytes)

    def _read_6(self, cdb, buf):
        return self._rw(buf, False, _be(cdb[1:4]) & 0x1FFFFF, cdb[4] or 256, 0)

    def _write_6(self, cdb, buf):
        return self._rw(buf, True, _be(cdb[1:4]) & 0x1FFFFF, cdb[4] or 256, 0)

    def _read_10(self, cdb, buf):
        return self._rw(buf, False, _be(cdb[2:6]), _be(cdb[7:9]), cdb[1])

    def _write_10(self, cdb, buf):
        return self._rw(buf, True, _be(cdb[2:6]), _be(cdb[7:9]), cdb[1])

    def _read_16(self, cdb, buf):
        return self._rw(buf, False, _be(cdb[2:10]), _be(cdb[10:14]), cdb[1])

    def _write_16(self, cdb, buf):
        return self._rw(buf, True, _be(cdb[2:10]), _be(cdb[10:14]), cdb[1])

    def _sync(self, lba: int, count: int) -> ScsiResult:
        self._check_range(lba, count)
        if not self.readonly:
            try:
                self.disk.flush()
            except OSError:
                raise _Check(WRITE_ERROR) from None
        return ScsiResult.good()

    def _sync_10(self, cdb, buf):
        return self._sync(_be(cdb[2:6]), _be(cdb[7:9]))

    def _sync_16(self, cdb, buf):
        return self._sync(_be(cdb[2:10]), _be(cdb[10:14]))

    def _report_luns(self, cdb, buf):
        raise AssertionError("REPORT LUNS is answered by the target")

    def _unmap(self, cdb, buf):
        if cdb[1] & 0x01:       # ANCHOR
            raise _Check(INVALID_FIELD_IN_CDB)
        plen = _be(cdb[7:9])
        if plen > buf.length:
            raise InvalidRequest(f"UNMAP parameter list of {plen} bytes in a {buf.length}-byte "
                                 f"buffer")
        if self.readonly:
            raise _Check(WRITE_PROTECTED)
        if plen == 0:
            return ScsiResult.good()
        if plen < 8:
            raise _Check(PARAMETER_LIST_LENGTH_ERROR)
        data = buf.read(plen)
        ndesc = min(_be(data[2:4]), plen - 8) // 16
        if ndesc > MAX_UNMAP_DESCRIPTORS:
            raise _Check(INVALID_FIELD_IN_PARAMETER_LIST)
        ranges = []
        for i in range(ndesc):
            lba, count = struct.unpack_from(">QI", data, 8 + 16 * i)
            if count > MAX_UNMAP_LBA_COUNT:
                raise _Check(INVALID_FIELD_IN_PARAMETER_LIST)
            self._check_range(lba, count)
            ranges.append((lba, count))
        try:
            for lba, count in ranges:
                self.disk.punch(lba * BLOCK, count * BLOCK)
        except OSError:
            raise _Check(WRITE_ERROR) from None
        return ScsiResult.good()

    _COMMANDS = {
        TEST_UNIT_READY: _test_unit_ready,
        READ_6: _read_6,
        WRITE_6: _write_6,
        INQUIRY: _inquiry,
        MODE_SENSE_6: _mode_sense_6,
        READ_CAPACITY_10: _read_capacity_10,
        READ_10: _read_10,
        WRITE_10: _write_10,
        SYNCHRONIZE_CACHE_10: _sync_10,
        UNMAP: _unmap,
        MODE_SENSE_10: _mode_sense_10,
        READ_16: _read_16,
        WRITE_16: _write_16,
        SYNCHRONIZE_CACHE_16: _sync_16,
        SERVICE_ACTION_IN_16: _service_action_in,
        REPORT_LUNS: _report_luns,
    }


#: VPD 0xB0 optimal transfer length granularity (blocks): 4 KiB.
PHYSICAL_BLOCK_GRAN = 1 << PHYSICAL_BLOCK_EXP


class ScsiTarget:
    """The logical units of one storvsc channel: path 0, target 0, LUNs as given."""

    def __init__(self, units: list[LogicalUnit]):
        self.units = {u.lun: u for u in units}
        if len(self.units) != len(units):
            raise ValueError("two logical units with the same LUN")

    def report_luns(self, cdb: bytes, buf: DataBuffer) -> ScsiResult:
        """REPORT LUNS (answered for any LUN of the target, as SPC allows)."""
        if len(cdb) < 12:
            return ScsiResult.check(INVALID_FIELD_IN_CDB)
        select, alloc = cdb[2], _be(cdb[6:10])
        if select not in (0x00, 0x01, 0x02) or alloc < 4:
            return ScsiResult.check(INVALID_FIELD_IN_CDB)
        luns = [] if select == 0x01 else sorted(self.units)
        data = struct.pack(">II", 8 * len(luns), 0)
        data += b"".join(bytes([0x00, lun, 0, 0, 0, 0, 0, 0]) for lun in luns)
        return ScsiResult.good(buf.fill(data[:alloc]))

    def execute(self, path_id: int, target_id: int, lun: int, cdb: bytes,
                buf: DataBuffer) -> ScsiResult:
        """Run ``cdb`` on the addressed LUN. Raises InvalidRequest for a malformed request."""
        if not cdb:
            raise InvalidRequest("empty CDB")
        op = cdb[0]
        unit = self.units.get(lun) if (path_id, target_id) == (0, 0) else None
        if op == REPORT_LUNS and (path_id, target_id) == (0, 0):
            return self.report_luns(cdb, buf)
        if unit is not None:
            return unit.execute(cdb, buf)
        if op == INQUIRY and len(cdb) >= 6:
            if cdb[1] & 0x01:
                return ScsiResult.check(LOGICAL_UNIT_NOT_SUPPORTED)
            data = bytes([0x7F, 0x00, 0x06, 0x12, 31]) + bytes(31)
            return ScsiResult.good(buf.fill(data[:_be(cdb[3:5])]))
        return ScsiResult.invalid_lun()

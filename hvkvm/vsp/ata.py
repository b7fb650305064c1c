"""A legacy emulated disk: an ATA (IDE) PIO device on the primary channel's ports, served in Python.

The slowest storage path hvkvm has, on purpose: every 2 or 4 bytes of data are one port-I/O exit
to this module (the data port is 16-bit as in ATA, or 32-bit as IDE controllers allow), the way
an unenlightened guest talks to an emulated disk. Enough of ATA/ATAPI-7 for a PIO driver:

* ports ``0x1f0-0x1f7`` (data, error/features, sector count, LBA low/mid/high, device,
  status/command) and ``0x3f6`` (alternate status / device control: nIEN, SRST, HOB); GSI 14;
* LBA28 and LBA48 addressing (the count and LBA registers are two-deep, HOB reads the older
  byte); device 0 only (device 1 reads status 0, "no device", and ignores commands);
* commands IDENTIFY DEVICE (0xEC: model, serial, firmware, LBA28/LBA48 sizes, checksum),
  READ SECTORS (0x20/0x21) / READ SECTORS EXT (0x24), WRITE SECTORS (0x30/0x31) / WRITE
  SECTORS EXT (0x34), FLUSH CACHE (0xE7) / FLUSH CACHE EXT (0xEA), READ VERIFY (0x40/0x42),
  SET FEATURES (0xEF) and INITIALIZE DEVICE PARAMETERS (0x91) as no-ops; anything else is
  aborted (ERR, error ABRT);
* the device is never busy: a command's data is ready at once (BSY never reads 1); a READ reads
  the whole transfer from the file when issued, a WRITE writes it when its last sector arrived;
  a range past the end is ERR with IDNF, a write to a read-only disk ERR/ABRT, an I/O error
  ERR/UNC;
* INTRQ as ATA's PIO protocols raise it: for each sector of a data-in command when its DRQ
  comes up, after each sector of a data-out command (the last one: command completion), at the
  end of a non-data command; reading the status register clears it, the alternate status does
  not; nIEN gates the line. The line is driven with ``KVM_IRQ_LINE`` only on changes (the guest
  routes GSI 14 edge-triggered in its IOAPIC).

Use :func:`devices_for` (or two ``DeviceSpec`` entries: the command block and :class:`AtaControl`).
"""

from __future__ import annotations

import logging
import struct
import threading

from ..partition.config import DeviceSpec
from .disk import Disk

__all__ = ["AtaDevice", "AtaControl", "devices_for", "ATA_BASE", "ATA_CTRL", "ATA_IRQ"]

log = logging.getLogger("hvkvm.vsp.ata")

ATA_BASE = 0x1F0
ATA_CTRL = 0x3F6
ATA_IRQ = 14
SECTOR = 512

# Status bits.
BSY, DRDY, DF, DSC, DRQ, ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
# Error bits.
ABRT, IDNF, UNC = 0x04, 0x10, 0x40
# Device control bits.
NIEN, SRST, HOB = 0x02, 0x04, 0x80

CMD_READ = (0x20, 0x21)
CMD_READ_EXT = 0x24
CMD_WRITE = (0x30, 0x31)
CMD_WRITE_EXT = 0x34
CMD_VERIFY = (0x40, 0x41)
CMD_VERIFY_EXT = 0x42
CMD_IDENTIFY = 0xEC
CMD_FLUSH = 0xE7
CMD_FLUSH_EXT = 0xEA
CMD_SET_FEATURES = 0xEF
CMD_INIT_PARAMS = 0x91

#: The largest LBA28 transfer (count 0) and LBA48 transfer (count 0).
MAX_SECTORS_28 = 256
MAX_SECTORS_48 = 65536


def _ata_string(text: str, nbytes: int) -> bytes:
    """An IDENTIFY string: ASCII, space-padded, two characters per word, first one high."""
    raw = text.encode("ascii", "replace")[:nbytes].ljust(nbytes, b" ")
    return b"".join(raw[i + 1:i + 2] + raw[i:i + 1] for i in range(0, nbytes, 2))


class AtaDevice:
    """ATA device 0 on a primary-channel command block (8 ports at ``base``). ``disk`` is a
    :class:`~hvkvm.vsp.disk.Disk`; ``own_disk`` closes it in :meth:`detach`."""

    def __init__(self, disk: Disk, *, irq: int = ATA_IRQ, own_disk: bool = False,
                 model: str = "hvkvm ATA PIO disk", firmware: str = "hvkvm1",
                 name: str = "ata0"):
        self.disk = disk
        self.irq = irq
        self.own_disk = own_disk
        self.name = name
        self.model = model
        self.firmware = firmware
        self.control = AtaControl(self)
        self._lock = threading.Lock()
        self._irq_line = None
        self._line = 0
        #: Counters: commands, reads/writes/flushes/identifies (commands), sectors_read,
        #: sectors_written, data_accesses (data-port exits), status_reads, intrq (INTRQ asserted,
        #: whether or not nIEN lets it out), interrupts (the IRQ line raised to the guest),
        #: errors (commands ended with ERR).
        self.counters = dict.fromkeys(
            ("commands", "reads", "writes", "flushes", "identifies", "sectors_read",
             "sectors_written", "data_accesses", "status_reads", "intrq", "interrupts",
             "errors"), 0)
        self._reset()

    # -- partition hooks ------------------------------------------------------------------------

    def attach(self, partition) -> None:
        """Drive GSI ``irq`` of ``partition``'s in-kernel irqchip."""
        vm = partition.vm
        self._irq_line = lambda level: vm.irq_line(self.irq, level)

    def detach(self) -> None:
        """Forget the partition (and close the disk when owned). Safe to call twice."""
        with self._lock:
            self._irq_line = None
            if self.own_disk:
                self.disk.close()

    close = detach

    # -- state ----------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.features = self.error = 0
        self.count = [0, 0]           # [current, previous (HOB)]
        self.lba = [[0, 0], [0, 0], [0, 0]]
        self.device = 0xA0
        self.dev_ctl = 0
        self.status = DRDY | DSC
        self.error = 0x01             # diagnostic code after reset: no error
        self._buf = bytearray()
        self._pos = 0
        self._end = 0
        self._dir = None              # "in", "out" or None
        self._lba_start = 0
        self._intrq = False

    def _set_intrq(self, on: bool) -> None:
        self._intrq = on
        if on:
            self.counters["intrq"] += 1
        self._update_line()

    def _update_line(self) -> None:
        level = 1 if self._intrq and not self.dev_ctl & NIEN else 0
        if level != self._line:
            self._line = level
            self.counters["interrupts"] += level
            if self._irq_line is not None:
                self._irq_line(level)

    def _selected(self) -> bool:
        return not self.device & 0x10

    # -- the control block (0x3f6) -------------------------------------------------------------

    def ctrl_read(self, data: memoryview) -> None:
        with self._lock:
            value = self.status if self._selected() else 0
        data[:] = bytes([value]) * len(data)

    def ctrl_write(self, data) -> None:
        v = data[0]
        with self._lock:
            old = self.dev_ctl
            self.dev_ctl = v & (NIEN | SRST | HOB)
            if v & SRST and not old & SRST:
                ctl = self.dev_ctl
                self._reset()
                self.dev_ctl = ctl
                self._intrq = False
            self._update_line()

    # -- the command block (0x1f0-0x1f7) -------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        """A port read: data (2 or 4 bytes at offset 0) or a one-byte register."""
        with self._lock:
            if offset == 0:
                self._data_in(data)
                return
            if not self._selected():
                value = 0
            elif offset == 7:
                value = self.status
                self.counters["status_reads"] += 1
                if self._intrq:
                    self._intrq = False
                    self._update_line()
            else:
                hob = 1 if self.dev_ctl & HOB else 0
                if offset == 1:
                    value = self.error
                elif offset == 2:
                    value = self.count[hob]
                elif offset in (3, 4, 5):
                    value = self.lba[offset - 3][hob]
                else:
                    value = self.device
        data[:] = bytes([value]) * len(data)

    def write(self, offset: int, data) -> None:
        """A port write: data (2 or 4 bytes at offset 0), a register, or a command (offset 7)."""
        with self._lock:
            if offset == 0:
                self._data_out(data)
                return
            v = data[0]
            if offset != 7 and offset != 6:
                self.dev_ctl &= ~HOB          # any command-block write clears HOB
            if offset == 1:
                self.features = v
            elif offset == 2:
                self.count = [v, self.count[0]]
            elif offset in (3, 4, 5):
                reg = self.lba[offset - 3]
                reg[1], reg[0] = reg[0], v
            elif offset == 6:
                self.device = v | 0xA0
            elif offset == 7:
                if self._selected():
                    self._command(v)

    # -- data transfer ----------------------------------------------------------------------------

    def _data_in(self, data: memoryview) -> None:
        n = len(data)
        self.counters["data_accesses"] += 1
        if self._dir != "in":
            data[:] = b"\xff" * n
            return
        p = self._pos
        data[:] = self._buf[p:p + n]
        p += n
        self._pos = p
        if p >= self._end:
            self._dir = None
            self.status = DRDY | DSC
        elif p % SECTOR == 0:
            self._set_intrq(True)         # the next sector's DRQ

    def _data_out(self, data) -> None:
        n = len(data)
        self.counters["data_accesses"] += 1
        if self._dir != "out":
            return
        p = self._pos
        self._buf[p:p + n] = data
        p += n
        self._pos = p
        if p >= self._end:
            self._dir = None
            self._finish_write()
        elif p % SECTOR == 0:
            self._set_intrq(True)

    def _finish_write(self) -> None:
        try:
            self.disk.writev([memoryview(self._buf)[:self._end]], self._lba_start * SECTOR)
        except OSError as e:
            log.warning("%s: write at LBA %d: %s", self.name, self._lba_start, e)
            self._abort(UNC)
            return
        self.counters["sectors_written"] += self._end // SECTOR
        self.status = DRDY | DSC
        self._set_intrq(True)

    # -- commands -------------------------------------------------------------------------------

    def _abort(self, error: int = ABRT) -> None:
        self.counters["errors"] += 1
        self.error = error
        self.status = DRDY | DSC | ERR
        self._dir = None
        self._set_intrq(True)

    def _lba28(self) -> tuple[int, int]:
        lba = self.lba[0][0] | self.lba[1][0] << 8 | self.lba[2][0] << 16 | \
            (self.device & 0x0F) << 24
        return lba, self.count[0] or MAX_SECTORS_28

    def _lba48(self) -> tuple[int, int]:
        lba = 0
        for i in range(3):
            lba |= self.lba[i][0] << (8 * i) | self.lba[i][1] << (8 * (i + 3))
        return lba, (self.count[0] | self.count[1] << 8) or MAX_SECTORS_48

    def _command(self, cmd: int) -> None:
        self.counters["commands"] += 1
        self.error = 0
        self._intrq = False
        self._update_line()
        if cmd in CMD_READ or cmd == CMD_READ_EXT:
            if not self.device & 0x40:
                self._abort()              # CHS addressing: not supported
                return
            lba, n = self._lba48() if cmd == CMD_READ_EXT else self._lba28()
            self.counters["reads"] += 1
            if lba + n > self.disk.sectors:
                self._abort(IDNF)
                return
            buf = bytearray(n * SECTOR)
            try:
                got = self.disk.readv([memoryview(buf)], lba * SECTOR)
            except OSError as e:
                log.warning("%s: read at LBA %d: %s", self.name, lba, e)
                self._abort(UNC)
                return
            if got != len(buf):
                self._abort(UNC)
                return
            self.counters["sectors_read"] += n
            self._start_in(buf)
        elif cmd in CMD_WRITE or cmd == CMD_WRITE_EXT:
            if not self.device & 0x40:
                self._abort()
                return
            lba, n = self._lba48() if cmd == CMD_WRITE_EXT else self._lba28()
            self.counters["writes"] += 1
            if self.disk.readonly:
                self._abort()
                return
            if lba + n > self.disk.sectors:
                self._abort(IDNF)
                return
            self._buf = bytearray(n * SECTOR)
            self._pos, self._end, self._lba_start = 0, n * SECTOR, lba
            self._dir = "out"
            self.status = DRDY | DSC | DRQ   # the first sector's DRQ raises no INTRQ
        elif cmd == CMD_IDENTIFY:
            self.counters["identifies"] += 1
            self._start_in(self.identify())
        elif cmd in (CMD_FLUSH, CMD_FLUSH_EXT):
            self.counters["flushes"] += 1
            try:
                if not self.disk.readonly:
                    self.disk.flush()
            except OSError:
                self._abort(UNC)
                return
            self.status = DRDY | DSC
            self._set_intrq(True)
        elif cmd in CMD_VERIFY or cmd == CMD_VERIFY_EXT:
            lba, n = self._lba48() if cmd == CMD_VERIFY_EXT else self._lba28()
            if lba + n > self.disk.sectors:
                self._abort(IDNF)
                return
            self.status = DRDY | DSC
            self._set_intrq(True)
        elif cmd in (CMD_SET_FEATURES, CMD_INIT_PARAMS):
            self.status = DRDY | DSC
            self._set_intrq(True)
        else:
            self._abort()

    def _start_in(self, buf: bytes | bytearray) -> None:
        self._buf = buf
        self._pos, self._end = 0, len(buf)
        self._dir = "in"
        self.status = DRDY | DSC | DRQ
        self._set_intrq(True)

    def identify(self) -> bytes:
        """The 512-byte IDENTIFY DEVICE data (words little-endian, checksum in word 255)."""
        w = [0] * 256
        sectors = self.disk.sectors
        w[0] = 0x0040                                   # fixed device
        cyl = min(sectors // (16 * 63), 16383)
        w[1], w[3], w[6] = cyl, 16, 63
        w[47] = 0x8000                                  # no READ/WRITE MULTIPLE
        w[49] = 0x0200                                  # LBA supported
        w[53] = 0x0002                                  # words 64-70 valid
        lba28 = min(sectors, 0x0FFFFFFF)
        w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
        w[64] = 0x0003                                  # PIO modes 3 and 4
        w[80] = 0x00F0                                  # ATA-4 .. ATA/ATAPI-7
        w[82], w[83], w[84] = 0x0020, 0x7400, 0x4000    # write cache; LBA48, FLUSH (EXT)
        w[85], w[86], w[87] = 0x0020, 0x3400, 0x4000
        for i in range(4):
            w[100 + i] = (sectors >> (16 * i)) & 0xFFFF
        w[106] = 0x4000                                 # 512-byte logical sectors
        data = bytearray(struct.pack("<256H", *w))
        data[20:40] = _ata_string(self.disk.serial, 20)
        data[46:54] = _ata_string(self.firmware, 8)
        data[54:94] = _ata_string(self.model, 40)
        data[510] = 0xA5
        data[511] = (-sum(data[:511])) & 0xFF
        return bytes(data)

    def stats(self) -> dict:
        """The counters (see ``counters``)."""
        with self._lock:
            return dict(self.counters)

    def __repr__(self) -> str:
        return f"AtaDevice({self.disk!r})"


class AtaControl:
    """The control block register (alternate status / device control) of an :class:`AtaDevice`,
    one port (0x3f6) on the PIO bus."""

    def __init__(self, ata: AtaDevice):
        self.ata = ata
        self.name = f"{ata.name}-ctl"

    def read(self, offset: int, data: memoryview) -> None:
        self.ata.ctrl_read(data)

    def write(self, offset: int, data) -> None:
        self.ata.ctrl_write(data)


def devices_for(disk, plane: str = "python", **kw) -> tuple[dict, list[str]]:
    """The partition settings and command-line keys of an ATA PIO disk on the primary channel.

    ``disk``: a :class:`~hvkvm.vsp.disk.Disk` (the caller keeps owning it) or a path (opened here
    and closed at detach). ``plane`` must be "python" (every access is an exit served here).
    Returns ``({"devices": [command block, control block]}, ["dev=ata"])``.
    """
    if plane != "python":
        raise ValueError(f"the ATA device has only the Python plane, not {plane!r}")
    own = not isinstance(disk, Disk)
    d = Disk(disk) if own else disk
    dev = AtaDevice(d, own_disk=own, **kw)
    return ({"devices": [DeviceSpec("pio", ATA_BASE, 8, dev),
                         DeviceSpec("pio", ATA_CTRL, 1, dev.control)]}, ["dev=ata"])

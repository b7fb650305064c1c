"""The block I/O paths besides storvsc, and the same guest workload over each of them:

1. the legacy ATA PIO disk (``hvkvm/vsp/ata.py``: an exit per 2-4 bytes, served in Python),
2. the doorbell MMIO disk (``hvkvm/vsp/mmioblk.py``: one exit per request, served in Python),
3. virtio-blk on virtio-mmio (``hvkvm/vsp/virtio_blk.py`` + ``csrc/hvr_virtio_blk.c``: a split
   virtqueue with EVENT_IDX, a C data plane, ioeventfd kicks and an irqfd interrupt),

driven by the guest's drivers (``guest_images/rt/*_{virtio_blk,ata,mmioblk}.c`` under
``include/blkdev.h``) in ``disk_bench``, ``disk_fill`` and ``disk_check`` with ``dev=``, in ring 3
(polling) and ring 0 (interrupts); and the same guest image under QEMU's microvm virtio-blk.

Without KVM: a Python driver pokes the virtio device's registers and rings in real guest RAM and
feeds it hostile descriptors; the ATA and MMIO devices are driven register by register.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time

import pytest

from hvkvm import images
from hvkvm.memory import GuestMemory
from hvkvm.partition.config import PartitionConfig
from hvkvm.vsp import ata as ata_mod
from hvkvm.vsp import mmioblk as mmio_mod
from hvkvm.vsp import virtio_blk as vb
from hvkvm.vsp.disk import Disk, create_disk
from qemu_marks import QEMU, qemu_test

kvm = pytest.mark.kvm

KiB, MiB = 1 << 10, 1 << 20
SECTOR = 512


# -- a partition without KVM -----------------------------------------------------------------


class StubVm:
    """The VM calls the block devices make, recorded."""

    def __init__(self):
        self.ioeventfds = []
        self.irqfds = []
        self.lines = []

    def ioeventfd(self, fd, addr, length, datamatch=0, flags=0):
        self.ioeventfds.append((fd, addr, length, flags))

    def irqfd(self, fd, gsi, *a):
        self.irqfds.append((fd, gsi))

    def irqfd_deassign(self, fd, gsi):
        self.irqfds.append((fd, -gsi))

    def irq_line(self, gsi, level):
        self.lines.append((gsi, level))


class StubPartition:
    def __init__(self, memory=16 * MiB):
        self.memory = GuestMemory(memory)
        self.vm = StubVm()

    def close(self):
        self.memory.close()


@pytest.fixture
def part():
    p = StubPartition()
    yield p
    p.close()


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "d.img"
    create_disk(path, 1 * MiB)
    with open(path, "r+b") as f:              # recognisable contents: sector n starts with n
        for n in range(2 * KiB):
            f.seek(n * SECTOR)
            f.write(struct.pack("<Q", n) + b"\xa5" * 8)
    d = Disk(path)
    yield d
    d.close()


# -- a virtio driver in Python ---------------------------------------------------------------


class Driver:
    """Enough of a virtio-mmio driver to set a device up and put chains on its queue."""

    DESC, AVAIL, USED = 0x100000, 0x101000, 0x102000
    HDR, STATUS, DATA = 0x103000, 0x104000, 0x200000

    def __init__(self, dev, mem, qsize=32, event_idx=True, start=True):
        self.dev, self.mem, self.q = dev, mem, qsize
        self.avail_idx = 0
        self.last_used = 0
        if start:
            self.setup(event_idx)

    def r(self, off):
        b = bytearray(4)
        self.dev.read(off, memoryview(b))
        return int.from_bytes(b, "little")

    def w(self, off, v):
        self.dev.write(off, (v & 0xFFFFFFFF).to_bytes(4, "little"))

    def features(self):
        self.w(vb.REG_DEVICE_FEATURES_SEL, 0)
        lo = self.r(vb.REG_DEVICE_FEATURES)
        self.w(vb.REG_DEVICE_FEATURES_SEL, 1)
        return lo | self.r(vb.REG_DEVICE_FEATURES) << 32

    def negotiate(self, feats):
        self.w(vb.REG_STATUS, 0)
        self.w(vb.REG_STATUS, vb.STATUS_ACKNOWLEDGE)
        self.w(vb.REG_STATUS, vb.STATUS_ACKNOWLEDGE | vb.STATUS_DRIVER)
        self.w(vb.REG_DRIVER_FEATURES_SEL, 0)
        self.w(vb.REG_DRIVER_FEATURES, feats)
        self.w(vb.REG_DRIVER_FEATURES_SEL, 1)
        self.w(vb.REG_DRIVER_FEATURES, feats >> 32)
        self.w(vb.REG_STATUS, vb.STATUS_ACKNOWLEDGE | vb.STATUS_DRIVER | vb.STATUS_FEATURES_OK)
        return self.r(vb.REG_STATUS)

    def setup(self, event_idx=True, desc=None, avail=None, used=None):
        feats = self.features() & ~(0 if event_idx else 1 << vb.VIRTIO_RING_F_EVENT_IDX)
        assert self.negotiate(feats) & vb.STATUS_FEATURES_OK
        self.mem.fill(self.DESC, 0x5000, 0)
        self.w(vb.REG_QUEUE_SEL, 0)
        self.w(vb.REG_QUEUE_NUM, self.q)
        for reg, addr in ((vb.REG_QUEUE_DESC_LOW, desc or self.DESC),
                          (vb.REG_QUEUE_DRIVER_LOW, avail or self.AVAIL),
                          (vb.REG_QUEUE_DEVICE_LOW, used or self.USED)):
            self.w(reg, addr)
            self.w(reg + 4, addr >> 32)
        self.w(vb.REG_QUEUE_READY, 1)
        self.w(vb.REG_STATUS, 15)

    # rings
    def desc(self, i, addr, length, flags=0, nxt=0):
        self.mem.write(self.DESC + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def publish(self, *heads, kick=True):
        for h in heads:
            self.mem.write(self.AVAIL + 4 + 2 * (self.avail_idx % self.q), struct.pack("<H", h))
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write(self.AVAIL + 2, struct.pack("<H", self.avail_idx))
        if kick:
            self.kick()

    def kick(self):
        os.eventfd_write(self.dev._kick_fd, 1)      # what KVM's ioeventfd does

    def used_idx(self):
        return self.mem.read_u16(self.USED + 2)

    def used_event(self, v):
        self.mem.write(self.AVAIL + 4 + 2 * self.q, struct.pack("<H", v & 0xFFFF))

    def avail_event(self):
        return self.mem.read_u16(self.USED + 4 + 8 * self.q)

    def wait_used(self, n, timeout=5.0):
        end = time.monotonic() + timeout
        while ((self.used_idx() - self.last_used) & 0xFFFF) < n:
            if time.monotonic() > end:
                return False
            time.sleep(0.001)
        return True

    def take(self):
        """(id, len) of every new used entry."""
        out = []
        while self.last_used != self.used_idx():
            e = self.mem.read(self.USED + 4 + 8 * (self.last_used % self.q), 8)
            out.append(struct.unpack("<II", e))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def request(self, slot, rtype, sector, length=0, write_data=None, device_writes=True):
        """A three-descriptor request at descriptors 3*slot..; returns the head."""
        h = 3 * slot
        hdr, st, data = self.HDR + 16 * slot, self.STATUS + slot, self.DATA + 0x10000 * slot
        self.mem.write(hdr, struct.pack("<IIQ", rtype, 0, sector))
        self.mem.write(st, b"\xee")
        if write_data is not None:
            self.mem.write(data, write_data)
        if length:
            self.desc(h, hdr, 16, 1, h + 1)
            self.desc(h + 1, data, length, 1 | (2 if device_writes else 0), h + 2)
            self.desc(h + 2, st, 1, 2, 0)
        else:
            self.desc(h, hdr, 16, 1, h + 2)
            self.desc(h + 2, st, 1, 2, 0)
        return h

    def status(self, slot):
        return self.mem.read_u8(self.STATUS + slot)

    def data(self, slot, n):
        return self.mem.read(self.DATA + 0x10000 * slot, n)


def settle(dev, spin_s: float) -> None:
    """Until the C plane is asleep for good: its sleep count unchanged for longer than a spin."""
    deadline = time.monotonic() + 10
    last = dev.stats()["sleeps"]
    while time.monotonic() < deadline:
        time.sleep(spin_s + 0.1)
        now = dev.stats()["sleeps"]
        if now == last and now > 0:
            return
        last = now
    raise AssertionError("the C plane never settled asleep")


def irqs(dev) -> int:
    """Interrupts the device raised since the last call (its irqfd's counter)."""
    try:
        return os.eventfd_read(dev._irq_fd)
    except BlockingIOError:
        return 0


@pytest.fixture
def vdev(part, disk):
    dev = vb.VirtioBlkDevice(disk, spin_us=2000)
    dev.attach(part)
    yield dev
    dev.detach()


# -- virtio: the device without KVM ----------------------------------------------------------


def test_virtio_identity_features_and_config(part, disk):
    dev = vb.VirtioBlkDevice(disk)
    dev.attach(part)
    try:
        d = Driver(dev, part.memory, start=False)
        assert (d.r(0), d.r(4), d.r(8)) == (vb.MAGIC, 2, 2)
        feats = d.features()
        for bit in (vb.VIRTIO_F_VERSION_1, vb.VIRTIO_RING_F_EVENT_IDX, vb.VIRTIO_BLK_F_FLUSH,
                    vb.VIRTIO_BLK_F_SEG_MAX, vb.VIRTIO_BLK_F_BLK_SIZE):
            assert feats >> bit & 1, bit
        assert not feats >> vb.VIRTIO_BLK_F_RO & 1
        assert not feats >> vb.VIRTIO_RING_F_INDIRECT_DESC & 1
        assert d.r(vb.REG_CONFIG) | d.r(vb.REG_CONFIG + 4) << 32 == disk.sectors
        assert d.r(vb.REG_CONFIG + 20) == 512 and d.r(vb.REG_CONFIG + 12) == 254
        b = bytearray(1)
        dev.read(vb.REG_CONFIG + 1, memoryview(b))           # byte access to the config space
        assert b[0] == (disk.sectors >> 8) & 0xFF
        # a driver without VERSION_1, or asking for more than offered, gets no FEATURES_OK
        assert not d.negotiate(feats & ~(1 << vb.VIRTIO_F_VERSION_1)) & vb.STATUS_FEATURES_OK
        assert not d.negotiate(feats | 1 << vb.VIRTIO_RING_F_INDIRECT_DESC) & \
            vb.STATUS_FEATURES_OK
        assert d.negotiate(feats) & vb.STATUS_FEATURES_OK
        # the QueueNotify ioeventfd and the irqfd on the slot's GSI (QEMU's first slot)
        assert dev.base == 0xFEB00E00 and dev.irq == 12
        assert part.vm.ioeventfds[0][1:3] == (0xFEB00E50, 4)
        assert part.vm.irqfds == [(dev._irq_fd, 12)]
    finally:
        dev.detach()
    assert part.vm.irqfds[-1][1] == -12                   # irqfd deassigned
    assert part.vm.ioeventfds[-1][3] & 4                   # deassigned


def test_virtio_requests_read_write_flush_get_id_and_errors(part, disk, vdev):
    d = Driver(vdev, part.memory)
    d.publish(d.request(0, 0, 5, 2 * SECTOR))                          # IN
    d.publish(d.request(1, 1, 7, SECTOR, b"\x42" * SECTOR, False))      # OUT
    d.publish(d.request(2, 4, 0))                                        # FLUSH
    d.publish(d.request(3, 8, 0, 20))                                   # GET_ID
    d.publish(d.request(4, 0, disk.sectors - 1, 2 * SECTOR))           # past the end
    d.publish(d.request(5, 0, 0, 100))                                  # not whole sectors
    d.publish(d.request(6, 99, 0))                                       # unknown type
    assert d.wait_used(7)
    used = dict(d.take())
    assert used[0] == 2 * SECTOR + 1 and d.status(0) == 0
    assert d.data(0, 16) == struct.pack("<Q", 5) + b"\xa5" * 8
    assert d.data(0, SECTOR + 8)[SECTOR:] == struct.pack("<Q", 6)
    assert used[3] == 1 and d.status(1) == 0
    with open(disk.path, "rb") as f:
        f.seek(7 * SECTOR)
        assert f.read(SECTOR) == b"\x42" * SECTOR
    assert d.status(2) == 0 and used[6] == 1
    assert d.status(3) == 0 and used[9] == 21 and d.data(3, 20) == disk.serial.encode()[:20]
    assert [d.status(s) for s in (4, 5, 6)] == [1, 1, 2]
    st = vdev.stats()
    assert (st["reads"], st["writes"], st["flushes"], st["get_ids"], st["unsupported"],
            st["io_errors"]) == (3, 1, 1, 1, 1, 2)
    assert st["broken"] is None and d.r(vb.REG_STATUS) == 15


def test_virtio_read_only_disk_fails_writes(part, tmp_path):
    path = tmp_path / "ro.img"
    create_disk(path, 64 * KiB)
    with Disk(path, readonly=True) as disk:
        dev = vb.VirtioBlkDevice(disk)
        dev.attach(part)
        try:
            d = Driver(dev, part.memory)
            assert d.features() >> vb.VIRTIO_BLK_F_RO & 1
            d.publish(d.request(0, 1, 0, SECTOR, b"x" * SECTOR, False))
            d.publish(d.request(1, 0, 0, SECTOR))
            assert d.wait_used(2)
            assert (d.status(0), d.status(1)) == (1, 0)
        finally:
            dev.detach()


def test_virtio_header_and_data_split_anywhere(part, disk, vdev):
    """No framing assumptions (virtio 1.x 2.7.4): header split over two descriptors, data in
    three, the status byte at the end of the last data descriptor."""
    d = Driver(vdev, part.memory)
    hdr = struct.pack("<IIQ", 0, 0, 9)
    part.memory.write(0x300000, hdr[:5])
    part.memory.write(0x300100, hdr[5:])
    d.desc(0, 0x300000, 5, 1, 1)
    d.desc(1, 0x300100, 11, 1, 2)
    d.desc(2, 0x310000, 100, 3, 3)
    d.desc(3, 0x320000, 300, 3, 4)
    d.desc(4, 0x330000, 113, 2, 0)                         # 112 data bytes + the status
    part.memory.write(0x330070, b"\xee")
    d.publish(0)
    assert d.wait_used(1)
    assert d.take() == [(0, 513)]
    data = part.memory.read(0x310000, 100) + part.memory.read(0x320000, 300) + \
        part.memory.read(0x330000, 112)
    assert data[:16] == struct.pack("<Q", 9) + b"\xa5" * 8
    assert part.memory.read_u8(0x330070) == 0


def test_virtio_event_idx_interrupts_follow_used_event(part, disk, vdev):
    d = Driver(vdev, part.memory)
    # used_event far behind: no interrupt for any of these
    d.used_event(0xFFFF)
    for s in range(4):
        d.publish(d.request(s, 0, s, SECTOR))
    assert d.wait_used(4)
    d.take()
    assert irqs(vdev) == 0
    # "interrupt me at the next one": exactly one for the next batch of three
    d.used_event(d.last_used)
    d.publish(*(d.request(s, 0, s, SECTOR) for s in range(3)), kick=True)
    assert d.wait_used(3)
    time.sleep(0.01)
    d.take()
    assert irqs(vdev) == 1
    assert d.r(vb.REG_INTERRUPT_STATUS) & vb.ISR_USED
    d.w(vb.REG_INTERRUPT_ACK, vb.ISR_USED)
    assert d.r(vb.REG_INTERRUPT_STATUS) == 0
    st = vdev.stats()
    assert st["interrupts"] == 1 and st["interrupts_suppressed"] == 6


def test_virtio_without_event_idx_uses_the_flags(part, disk):
    dev = vb.VirtioBlkDevice(disk, spin_us=1000)
    dev.attach(part)
    try:
        d = Driver(dev, part.memory, event_idx=False)
        assert not dev.stats()["features"] >> vb.VIRTIO_RING_F_EVENT_IDX & 1
        part.memory.write(d.AVAIL, struct.pack("<H", 1))      # VRING_AVAIL_F_NO_INTERRUPT
        d.publish(d.request(0, 0, 0, SECTOR))
        assert d.wait_used(1)
        time.sleep(0.01)
        assert irqs(dev) == 0
        part.memory.write(d.AVAIL, struct.pack("<H", 0))
        d.publish(d.request(1, 0, 0, SECTOR))
        assert d.wait_used(2)
        time.sleep(0.01)
        assert irqs(dev) == 1
        # asleep, the device clears VRING_USED_F_NO_NOTIFY: the driver must kick
        settle(dev, 0.001)
        assert part.memory.read_u16(d.USED) == 0
    finally:
        dev.detach()


def test_virtio_notifications_needed_only_when_the_device_sleeps(part, disk):
    dev = vb.VirtioBlkDevice(disk, spin_us=200_000)     # polls 200 ms after each request
    dev.attach(part)
    try:
        d = Driver(dev, part.memory)
        d.publish(d.request(0, 0, 0, SECTOR))
        assert d.wait_used(1)
        # still polling: a request without a kick is served
        d.publish(d.request(1, 0, 1, SECTOR), kick=False)
        assert d.wait_used(2, timeout=0.15)
        # once asleep it published avail_event = its position, and waits for a kick
        settle(dev, 0.2)
        assert d.avail_event() == 2
        d.publish(d.request(2, 0, 2, SECTOR), kick=False)
        time.sleep(0.1)
        assert d.used_idx() == 2, "served without a kick while asleep?"
        d.kick()
        assert d.wait_used(3)
    finally:
        dev.detach()
    assert dev.last_stats["notifies"] == 2


BAD = [
    # (what, how to break the first request, what the broken reason says)
    ("buffer past the end of RAM", lambda d, m: d.desc(1, 16 * MiB - 512, 1024, 3, 2),
     "is not inside guest RAM"),
    ("buffer in the MMIO hole", lambda d, m: d.desc(1, 0xFEB00000, 512, 3, 2),
     "is not inside guest RAM"),
    ("address + length wraps", lambda d, m: d.desc(1, (1 << 64) - 256, 512, 3, 2),
     "is not inside guest RAM"),
    ("huge length", lambda d, m: d.desc(1, 0x200000, 0xFFFFFFFF, 3, 2),
     "is not inside guest RAM"),
    ("header outside RAM", lambda d, m: d.desc(0, 1 << 40, 16, 1, 1),
     "is not inside guest RAM"),
    ("status outside RAM", lambda d, m: d.desc(2, 0xFFFFFFFFF000, 1, 2, 0),
     "is not inside guest RAM"),
    ("next out of range", lambda d, m: d.desc(1, 0x200000, 512, 3, 999), "next 999"),
    ("a loop", lambda d, m: d.desc(2, Driver.STATUS, 1, 3, 1), "a loop"),
    ("indirect", lambda d, m: d.desc(1, 0x200000, 512, 4 | 1, 2), "INDIRECT"),
    ("zero length", lambda d, m: d.desc(1, 0x200000, 0, 3, 2), "length 0"),
    ("readable after writable", lambda d, m: d.desc(2, Driver.STATUS, 1, 0, 0),
     "device-readable after"),
    ("short header", lambda d, m: (d.desc(0, Driver.HDR, 8, 1, 1),
                                   d.desc(1, 0x200000, 512, 2, 2)), "header is 8 bytes"),
    ("no status byte", lambda d, m: (d.desc(1, 0x200000, 512, 1, 2),
                                     d.desc(2, Driver.STATUS, 16, 0, 0)), "no device-writable"),
]


@pytest.mark.parametrize("what,breakit,reason", BAD, ids=[b[0] for b in BAD])
def test_virtio_malformed_chain_breaks_the_device(part, disk, vdev, what, breakit, reason):
    d = Driver(vdev, part.memory)
    d.publish(d.request(1, 0, 3, SECTOR))                 # a good one first (descs 3..5)
    assert d.wait_used(1)
    d.take()
    h = d.request(0, 0, 0, SECTOR)
    breakit(d, part.memory)
    d.publish(h)
    deadline = time.monotonic() + 5
    while vdev.broken() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert reason in (vdev.broken() or ""), vdev.broken()
    assert d.r(vb.REG_STATUS) & vb.STATUS_NEEDS_RESET
    assert d.r(vb.REG_INTERRUPT_STATUS) & vb.ISR_CONFIG
    assert irqs(vdev) >= 1
    assert d.used_idx() == 1                              # nothing completed for it
    # a broken device serves nothing more; a reset brings it back
    d.publish(d.request(1, 0, 4, SECTOR))
    time.sleep(0.05)
    assert d.used_idx() == 1
    d.w(vb.REG_STATUS, 0)
    assert d.r(vb.REG_STATUS) == 0 and vdev.broken() is None
    d2 = Driver(vdev, part.memory)
    d2.publish(d2.request(0, 0, 11, SECTOR))
    assert d2.wait_used(1) and d2.status(0) == 0
    assert d2.data(0, 8) == struct.pack("<Q", 11)


def test_virtio_avail_ring_garbage_breaks_the_device(part, disk, vdev):
    d = Driver(vdev, part.memory)
    part.memory.write(d.AVAIL + 4, struct.pack("<H", 500))   # head >= queue size
    part.memory.write(d.AVAIL + 2, struct.pack("<H", 1))
    d.kick()
    deadline = time.monotonic() + 5
    while vdev.broken() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert "entry 500 is not below the queue size 32" in vdev.broken()
    d.w(vb.REG_STATUS, 0)
    d = Driver(vdev, part.memory)
    part.memory.write(d.AVAIL + 2, struct.pack("<H", 40000))  # index jumps by more than 32
    d.kick()
    deadline = time.monotonic() + 5
    while vdev.broken() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert "moved by more than the queue size" in vdev.broken()


@pytest.mark.parametrize("where", ["desc", "avail", "used", "misaligned"])
def test_virtio_queue_outside_ram_needs_reset(part, disk, vdev, where):
    d = Driver(vdev, part.memory, start=False)
    kw = {"desc": {"desc": 16 * MiB - 64}, "avail": {"avail": 0xFEC00000},
          "used": {"used": 1 << 50}, "misaligned": {"desc": Driver.DESC + 8}}[where]
    feats = d.features()
    assert d.negotiate(feats) & vb.STATUS_FEATURES_OK
    d.w(vb.REG_QUEUE_NUM, 16)
    for reg, name, default in ((vb.REG_QUEUE_DESC_LOW, "desc", d.DESC),
                               (vb.REG_QUEUE_DRIVER_LOW, "avail", d.AVAIL),
                               (vb.REG_QUEUE_DEVICE_LOW, "used", d.USED)):
        addr = kw.get(name, default)
        d.w(reg, addr)
        d.w(reg + 4, addr >> 32)
    d.w(vb.REG_QUEUE_READY, 1)
    assert d.r(vb.REG_QUEUE_READY) == 0
    d.w(vb.REG_STATUS, 15)
    assert d.r(vb.REG_STATUS) & vb.STATUS_NEEDS_RESET
    assert vdev.stats()["plane_starts"] == 0
    assert "misaligned" in vdev.broken() if where == "misaligned" else \
        "not inside guest RAM" in vdev.broken()


def test_virtio_queue_size_must_be_a_power_of_two(part, disk, vdev):
    d = Driver(vdev, part.memory, qsize=12, start=False)
    d.negotiate(d.features())
    d.w(vb.REG_QUEUE_NUM, 12)
    d.w(vb.REG_QUEUE_READY, 1)
    assert d.r(vb.REG_QUEUE_READY) == 0 and "power of two" in vdev.broken()


# -- ATA and the MMIO disk without KVM -------------------------------------------------------


class Ata:
    def __init__(self, dev):
        self.dev = dev

    def outb(self, off, v):
        self.dev.write(off, bytes([v]))

    def inb(self, off):
        b = bytearray(1)
        self.dev.read(off, memoryview(b))
        return b[0]

    def data_in(self, n, width=2):
        out = bytearray()
        for _ in range(n // width):
            b = bytearray(width)
            self.dev.read(0, memoryview(b))
            out += b
        return bytes(out)

    def lba48(self, cmd, lba, count):
        self.outb(2, count >> 8)
        self.outb(3, (lba >> 24) & 0xFF)
        self.outb(4, (lba >> 32) & 0xFF)
        self.outb(5, (lba >> 40) & 0xFF)
        self.outb(2, count & 0xFF)
        self.outb(3, lba & 0xFF)
        self.outb(4, (lba >> 8) & 0xFF)
        self.outb(5, (lba >> 16) & 0xFF)
        self.outb(6, 0x40)
        self.outb(7, cmd)


def test_ata_identify_read_write_and_errors(part, disk):
    dev = ata_mod.AtaDevice(disk)
    dev.attach(part)
    a = Ata(dev)
    a.outb(6, 0xA0)
    a.outb(7, 0xEC)
    assert a.inb(7) & 0x08                                   # DRQ
    ident = a.data_in(512)
    assert ident[510] == 0xA5 and sum(ident) % 256 == 0
    words = struct.unpack("<256H", ident)
    assert words[83] & (1 << 10)
    assert words[100] | words[101] << 16 == disk.sectors
    model = b"".join(struct.pack(">H", w) for w in words[27:47]).decode().strip()
    assert model == "hvkvm ATA PIO disk"
    # LBA48 read of 2 sectors at 3, through the 32-bit data port; HOB reads the older bytes
    a.lba48(0x24, 3, 2)
    dev.ctrl_write(bytes([0x80]))                            # HOB
    assert a.inb(2) == 0 and a.inb(3) == 0
    dev.ctrl_write(bytes([0x00]))
    assert a.inb(2) == 2 and a.inb(3) == 3
    data = a.data_in(1024, width=4)
    assert data[:8] == struct.pack("<Q", 3) and data[512:520] == struct.pack("<Q", 4)
    assert not a.inb(7) & 0x08
    # write 1 sector at 9
    a.lba48(0x34, 9, 1)
    assert a.inb(7) & 0x08
    for i in range(256):
        dev.write(0, struct.pack("<H", 0x1234 + i))
    assert a.inb(7) == 0x50
    dev.disk.flush()
    with open(disk.path, "rb") as f:
        f.seek(9 * SECTOR)
        assert f.read(4) == struct.pack("<HH", 0x1234, 0x1235)
    # past the end: ERR with IDNF; unknown command: ABRT
    a.lba48(0x24, disk.sectors, 1)
    assert a.inb(7) & 0x01 and a.inb(1) == 0x10
    a.outb(7, 0x99)
    assert a.inb(7) & 0x01 and a.inb(1) == 0x04
    # device 1 is absent
    a.outb(6, 0xB0)
    assert a.inb(7) == 0
    dev.detach()


def test_ata_intrq_follows_nien_and_status_reads(part, disk):
    dev = ata_mod.AtaDevice(disk)
    dev.attach(part)
    a = Ata(dev)
    dev.ctrl_write(bytes([0x02]))                            # nIEN: no line
    a.outb(6, 0xE0)
    a.outb(2, 1)
    a.outb(7, 0x20)
    assert part.vm.lines == []
    a.inb(7)
    a.data_in(512)
    dev.ctrl_write(bytes([0x00]))
    a.outb(2, 2)
    a.outb(7, 0x20)                                          # INTRQ for sector 1
    assert part.vm.lines == [(14, 1)]
    dev.ctrl_read(memoryview(bytearray(1)))                  # alternate status: no effect
    assert part.vm.lines == [(14, 1)]
    a.inb(7)
    assert part.vm.lines == [(14, 1), (14, 0)]
    a.data_in(512)                                           # sector 2's DRQ: INTRQ again
    assert part.vm.lines[-1] == (14, 1)
    a.inb(7)
    a.data_in(512)
    assert part.vm.lines[-1] == (14, 0)                      # no INTRQ after the last one
    st = dev.stats()
    assert st["interrupts"] == 2 and st["reads"] == 2
    dev.detach()


def test_ata_read_only_disk_aborts_writes(part, tmp_path):
    path = tmp_path / "ro.img"
    create_disk(path, 64 * KiB)
    with Disk(path, readonly=True) as d:
        dev = ata_mod.AtaDevice(d)
        a = Ata(dev)
        a.lba48(0x34, 0, 1)
        assert a.inb(7) & 0x01 and a.inb(1) == 0x04


def test_mmioblk_requests_and_hostile_descriptors(part, disk):
    dev = mmio_mod.MmioBlkDevice(disk)
    dev.attach(part)
    mem = part.memory

    def reg(off, n=4):
        b = bytearray(n)
        dev.read(off, memoryview(b))
        return int.from_bytes(b, "little")

    def doorbell(gpa, n=4):
        dev.write(0x20, gpa.to_bytes(n, "little"))

    def desc(gpa, op, sectors, lba, buf, length):
        mem.write(gpa, struct.pack("<IIQQII", op, sectors, lba, buf, length, 0xFFFFFFFF))

    assert reg(0) == mmio_mod.MAGIC and reg(4) == 1
    assert reg(8, 8) == disk.sectors and reg(0x10) == 16384
    desc(0x1000, 1, 2, 5, 0x300000, 1024)
    doorbell(0x1000)
    assert mem.read_u32(0x1000 + 28) == 0
    assert mem.read(0x300000, 8) == struct.pack("<Q", 5)
    desc(0x1040, 2, 1, 6, 0x300000, 512)                     # write back sector 5's data at 6
    doorbell(0x1040, 8)
    desc(0x1080, 4, 0, 0, 0x310000, 20)
    doorbell(0x1080)
    assert mem.read(0x310000, 20) == disk.serial.encode()[:20]
    cases = [  # (descriptor, expected status)
        ((1, 1, 0, 16 * MiB - 256, 512), 3),                 # buffer crosses the end of RAM
        ((1, 1, 0, 0xFEB00000, 512), 3),                     # buffer in the MMIO hole
        ((1, 1, disk.sectors, 0x300000, 512), 4),            # past the end
        ((1, 2, 0, 0x300000, 512), 6),                       # length disagrees
        ((1, 0, 0, 0x300000, 0), 6),                         # zero sectors
        ((7, 0, 0, 0, 0), 2),                                # unknown op
    ]
    for i, (fields, want) in enumerate(cases):
        desc(0x2000 + 64 * i, *fields)
        doorbell(0x2000 + 64 * i)
        assert mem.read_u32(0x2000 + 64 * i + 28) == want, fields
        assert reg(0x28) == want
    doorbell(16 * MiB - 16)                                  # descriptor itself outside RAM
    assert reg(0x28) == 3
    doorbell(0x1004)                                         # misaligned descriptor
    assert reg(0x28) == 3
    st = dev.stats()
    assert st["bad_descriptors"] == 2 and st["reads"] == 1 and st["writes"] == 1
    with open(disk.path, "rb") as f:
        f.seek(6 * SECTOR)
        assert f.read(8) == struct.pack("<Q", 5)
    # interrupts: a pulse per request when enabled
    dev.write(0x18, (1).to_bytes(4, "little"))
    desc(0x1000, 3, 0, 0, 0, 0)
    doorbell(0x1000)
    assert part.vm.lines == [(16, 1), (16, 0)]
    dev.detach()


def test_devices_for_returns_config_and_cmdline_keys(tmp_path):
    path = tmp_path / "x.img"
    create_disk(path, 64 * KiB)
    kw, keys = vb.devices_for(path)
    dev = kw["devices"][0].device
    assert (kw["devices"][0].bus, kw["devices"][0].base, kw["devices"][0].length) == \
        ("mmio", 0xFEB00E00, 0x200)
    assert keys == ["dev=virtio", "virtio_mmio.device=512@0xfeb00e00:12"]
    dev.detach()                                              # owns the disk it opened
    assert dev.disk.closed
    kw, keys = vb.devices_for(path, index=1)
    assert keys[1] == "virtio_mmio.device=512@0xfeb00c00:11"
    kw["devices"][0].device.detach()
    kw, keys = ata_mod.devices_for(path)
    assert [(s.bus, s.base, s.length) for s in kw["devices"]] == [("pio", 0x1F0, 8),
                                                                  ("pio", 0x3F6, 1)]
    assert keys == ["dev=ata"]
    kw["devices"][0].device.detach()
    kw, keys = mmio_mod.devices_for(path)
    assert [(s.bus, s.base, s.length) for s in kw["devices"]] == [("mmio", 0xD0200000, 0x1000)]
    assert keys == ["dev=mmio"]
    kw["devices"][0].device.detach()
    with pytest.raises(ValueError):
        vb.devices_for(path, plane="python")
    with pytest.raises(ValueError):
        ata_mod.devices_for(path, plane="c")


# -- the guest's drivers in real partitions ------------------------------------------------------

MODULES = {"virtio": vb, "ata": ata_mod, "mmio": mmio_mod}


@pytest.fixture(scope="module")
def image():
    return {n: str(images.image_path(n)) for n in ("disk_fill", "disk_check", "disk_bench")}


class Paths:
    """Partitions over one bus each; devices detached (and disks closed) after each run."""

    def __init__(self, make_partition, tmp_path, image):
        self.make_partition = make_partition
        self.tmp = tmp_path
        self.image = image

    def new_disk(self, name="disk.img", size=1 * MiB) -> str:
        path = str(self.tmp / name)
        create_disk(path, size)
        return path

    def run(self, name, dev, cmdline, path, timeout=120, memory=64 * MiB, direct=False, **kw):
        """Boot ``name`` with ``path`` on bus ``dev``; (result, syncs, device stats)."""
        if dev == "storvsc":
            from hvkvm.vsp.storvsc import StorvscVsp
            disk = Disk(path)
            vsp = StorvscVsp(disk, plane="c")
            cfg = PartitionConfig(image=self.image[name], cmdline=f"{name} dev=storvsc "
                                  f"{cmdline}", vsps=[vsp], timeout=timeout, memory=memory)
            p = self.make_partition(cfg)
            r = p.run()
            p.close()
            disk.close()
            return r, syncs_of(r), {}
        mod = MODULES[dev]
        disk = Disk(path, direct=True) if direct else path
        cfgkw, keys = mod.devices_for(disk, "c" if dev == "virtio" else "python", **kw)
        device = cfgkw["devices"][0].device
        cfg = PartitionConfig(image=self.image[name], cmdline=f"{name} {' '.join(keys)} "
                              f"{cmdline}", timeout=timeout, memory=memory, **cfgkw)
        p = self.make_partition(cfg)
        r = p.run()
        p.close()                     # detaches the device: its final counters stay
        if direct:
            disk.close()
        st = device.stats() if dev != "virtio" else device.last_stats
        return r, syncs_of(r), st


def syncs_of(r) -> dict:
    return {args[0]: tuple(args[1:]) for _, args in r.syncs}


@pytest.fixture
def paths(make_partition, tmp_path, image):
    return Paths(make_partition, tmp_path, image)


def ok(r):
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs) + \
        r.serial.decode(errors="replace")[-2000:]


def bench_json(r) -> dict:
    lines = [ln for ln in r.serial.decode(errors="replace").splitlines()
             if ln.startswith('{"image":"disk_bench"')]
    assert len(lines) == 1, r.serial
    return json.loads(lines[0])


def filled(seed: int, sectors: int) -> bytes:
    zero = bytes(SECTOR - 16)
    return b"".join(struct.pack("<QQ", lba, seed) + zero for lba in range(sectors))


#: (bus, ring, disk_bench keys): every path, both rings, reads and writes, all verified. ATA moves
#: 4 bytes per exit, so its runs are a few KiB.
SMOKE = [
    ("virtio", 3, "mode=randread bs=4096 qd=8 count=400 verify=1"),
    ("virtio", 3, "mode=randwrite bs=8192 qd=4 count=200 verify=1 buf_offset=100"),
    ("virtio", 0, "mode=randread bs=4096 qd=2 count=20 verify=1 span=128k"),
    ("virtio", 0, "mode=write bs=4096 qd=1 count=10 verify=1 span=64k"),
    ("mmio", 3, "mode=randread bs=4096 qd=4 count=300 verify=1"),
    ("mmio", 3, "mode=randwrite bs=4096 qd=1 count=100 verify=1 buf_offset=3000"),
    ("mmio", 0, "mode=randread bs=4096 qd=2 count=20 verify=1 span=128k"),
    ("mmio", 0, "mode=write bs=2048 qd=1 count=10 verify=1 span=64k"),
    ("ata", 3, "mode=randread bs=1024 count=6 verify=1 span=16k"),
    ("ata", 3, "mode=randwrite bs=512 count=6 verify=1 span=16k pio=16"),
    ("ata", 0, "mode=randread bs=1024 count=3 verify=1 span=8k"),
    ("ata", 0, "mode=write bs=512 count=3 verify=1 span=8k pio=16"),
]


@kvm
@pytest.mark.parametrize("bus,ring,keys", SMOKE,
                         ids=[f"{b}-ring{r}-{k.split()[0][5:]}" for b, r, k in SMOKE])
def test_disk_bench_verify_over_each_path(paths, bus, ring, keys):
    path = paths.new_disk(size=1 * MiB)
    r, syncs, st = paths.run("disk_bench", bus, f"{keys} ring={ring} stall_s=60", path)
    ok(r)
    j = bench_json(r)
    n = int(keys.split("count=")[1].split()[0])
    assert (j["dev"], j["ring"], j["verify"], j["ios"]) == (bus, ring, 1, n)
    assert j["verified_ios"] > 0
    assert syncs[12][0] == j["verified_ios"]
    assert syncs[1][1] == 2048                     # blocks
    assert j["protocol"] == {"virtio": "virtio-mmio 2", "mmio": "mmioblk 1",
                             "ata": "ata-pio16" if "pio=16" in keys else "ata-pio32"}[bus]
    if ring == 0:
        assert any("ring 0 (interrupts)" in ln for ln in r.logs), r.logs
        assert j["interrupts"] >= j["waits"]
    else:
        assert j["all_waits"] == 0 and j["interrupts"] == 0
    if bus == "virtio":
        assert st["broken"] is None and st["io_errors"] == 0
        if ring == 3:
            assert st["interrupts"] == 0           # all suppressed: used_event behind
    elif bus == "mmio":
        assert st["errors"] == 0 and st["bad_descriptors"] == 0
        assert st["requests"] >= n
    else:
        assert st["errors"] == 0
        # one data-port exit per 2 or 4 bytes
        width = 2 if "pio=16" in keys else 4
        assert st["data_accesses"] >= n * int(keys.split("bs=")[1].split()[0]) // width


@kvm
def test_virtio_event_idx_notifications_and_exits(paths):
    """Ring 3 at QD 32: every QueueNotify the guest writes reaches the device through the
    ioeventfd (no userspace exit per I/O), no interrupts at all; and while the C plane polls
    (a long spin) the guest's kicks are suppressed, with EVENT_IDX and with the flags."""
    path = paths.new_disk(size=4 * MiB)
    r, syncs, st = paths.run("disk_bench", "virtio", "mode=randread bs=4096 qd=32 count=20000",
                             path)
    ok(r)
    j = bench_json(r)
    assert j["ios"] == 20000 and j["max_inflight"] == 32
    assert st["notifies"] == j["kicks"] + 1, (st, j)        # + GET_ID's at open
    assert st["notify_exits"] == 0
    assert j["kicks"] + j["kicks_suppressed"] <= j["ios"]  # at most one publication per I/O
    assert st["requests"] == 20001 and st["interrupts"] == 0, \
        (st["interrupts"], hex(st["last_irq"]), st["used_idx"])
    mmio_exits = sum(v for k, v in r.exits[0].get("mmio", {}).items())
    assert mmio_exits < 100, r.exits                       # set-up only, none per I/O
    for event_idx in (1, 0):
        r, _, st = paths.run("disk_bench", "virtio", f"mode=randread bs=4096 qd=32 count=5000 "
                             f"event_idx={event_idx}", path, spin_us=2_000_000)
        ok(r)
        j = bench_json(r)
        assert (st["features"] >> vb.VIRTIO_RING_F_EVENT_IDX & 1) == event_idx
        # GET_ID's kick at open is needed only if the plane had not set NO_NOTIFY yet
        assert j["kicks"] <= st["notifies"] <= j["kicks"] + 1
        assert j["kicks"] <= 3 and j["kicks_suppressed"] >= 5000 / 64, j
        assert st["interrupts"] == 0


@kvm
@pytest.mark.parametrize("bus", ["virtio", "mmio", "ata"])
def test_ring0_sleeps_for_the_interrupt(paths, bus):
    """Ring 0 sleeps in `sti; hlt` until the device's interrupt: made certain with requests
    the host takes a while over (8 MiB; ATA: its INTRQ for every sector)."""
    path = paths.new_disk(size=16 * MiB)
    keys = "bs=8M count=3" if bus != "ata" else "bs=2048 count=2 span=64k"
    r, _, st = paths.run("disk_bench", bus, f"mode=read {keys} ring=0", path)
    ok(r)
    j = bench_json(r)
    assert j["waits"] > 0 and j["interrupts"] >= j["waits"], j
    if bus == "virtio":
        # an interrupt only when the guest asked for one, never one per request
        assert 0 < st["interrupts"] < st["requests"]
        assert st["interrupts_suppressed"] > 0


@kvm
def test_fill_on_one_path_check_on_the_others(paths):
    """The bytes disk_fill writes over one path are what disk_check reads over every other,
    and what the file holds."""
    path = paths.new_disk(size=128 * KiB)
    r, syncs, _ = paths.run("disk_fill", "virtio", "seed=77 bs=8192 qd=4", path)
    ok(r)
    assert syncs[2][:2] == (256, 128 * KiB)
    assert open(path, "rb").read() == filled(77, 256)
    for bus, keys in (("mmio", "bs=4096 qd=2"), ("storvsc", "bs=16384 qd=2"),
                      ("ata", "bs=8192 ring=0"), ("virtio", "bs=65536 qd=2 ring=0")):
        r, syncs, _ = paths.run("disk_check", bus, f"seed=77 {keys}", path)
        ok(r)
        assert syncs[3][:2] == (256, 128 * KiB), bus
    # and the other way round: fill over mmio in ring 0, check over virtio and ata in ring 3
    r, _, _ = paths.run("disk_fill", "mmio", "seed=5 bs=4096 qd=1 ring=0", path)
    ok(r)
    for bus in ("virtio", "ata"):
        r, syncs, _ = paths.run("disk_check", bus, "seed=5 bs=32768", path)
        ok(r)
    r, _, _ = paths.run("disk_check", "virtio", "seed=6", path)
    assert r.status == "assert" and "expected the seed" in r.reason


@kvm
@pytest.mark.parametrize("ring", [3, 0])
def test_virtio_broken_device_reaches_the_guest(make_partition, tmp_path, image, ring):
    """At SYNC 10 the host puts garbage in the guest's available ring: the C plane breaks the
    device (no host access outside RAM), the guest sees DEVICE_NEEDS_RESET (ring 0: through the
    configuration-change interrupt; ring 3: by polling Status) and says so."""
    path = tmp_path / "b.img"
    create_disk(path, 1 * MiB)
    cfgkw, keys = vb.devices_for(path)
    dev = cfgkw["devices"][0].device
    holder = {}

    def on_sync(vcpu, uc):
        if uc.args[0] == 10:
            mem = holder["p"].memory
            mem.write(dev.queue_driver + 2, struct.pack("<H", 0x7777))   # avail idx jumps
            os.eventfd_write(dev._kick_fd, 1)
            deadline = time.monotonic() + 5
            while dev.broken() is None and time.monotonic() < deadline:
                time.sleep(0.001)

    cfg = PartitionConfig(image=image["disk_bench"], cmdline=f"disk_bench {' '.join(keys)} "
                          f"count=100 ring={ring} stall_s=30", on_sync=on_sync, timeout=120,
                          **cfgkw)
    p = make_partition(cfg)
    holder["p"] = p
    r = p.run()
    p.close()
    assert "moved by more than the queue size" in dev.last_stats["broken"]
    assert r.status == "assert", (r.status, r.reason)
    assert "device needs reset" in r.reason, r.reason
    assert dev.last_stats["config_interrupts"] == 1


@kvm
@pytest.mark.parametrize("bus", ["virtio", "mmio"])
def test_o_direct_disk_with_unaligned_buffers(paths, bus):
    """O_DIRECT images take guest buffers that are not 512-byte aligned through a bounce
    buffer (the C plane's own, or Disk's for the Python devices); the bytes are the same."""
    from hvkvm.vsp.disk import DiskError
    path = paths.new_disk(size=512 * KiB)
    try:
        Disk(path, direct=True).close()
    except DiskError as e:
        pytest.skip(str(e))
    r, _, st = paths.run("disk_fill", bus, "seed=12 bs=6144 buf_offset=100 qd=2", path,
                         direct=True)
    ok(r)
    if bus == "virtio":
        assert st["bounced"] > 0
    assert open(path, "rb").read() == filled(12, 1024)
    r, syncs, _ = paths.run("disk_check", bus, "seed=12 bs=3584 buf_offset=7", path,
                            direct=True)
    ok(r)
    assert syncs[3][0] == 1024


@kvm
def test_cli_disk_bus_options(tmp_path):
    path = tmp_path / "c.img"
    create_disk(path, 256 * KiB)
    # the image's default command line gets dev= and virtio_mmio.device= (5 s of disk_bench)
    res = subprocess.run(["hvkvm", "run", "disk_bench", "--disk", f"{path},bus=virtio",
                          "--timeout", "60"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert '"dev":"virtio"' in res.stdout
    # a given command line only gets the device's address (what QEMU's microvm appends)
    res = subprocess.run(["hvkvm", "run", "disk_bench", "--disk", f"{path},bus=mmio",
                          "--cmdline", "disk_bench dev=mmio count=100", "--timeout", "60"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert '"dev":"mmio"' in res.stdout and '"ios":100' in res.stdout
    res = subprocess.run(["hvkvm", "run", "hello", "--disk", f"{path},bus=virtio",
                          "--cmdline", "hello"], capture_output=True, text=True, timeout=120)
    assert "cmdline: hello virtio_mmio.device=512@0xfeb00e00:12" in res.stdout, res.stdout
    res = subprocess.run(["hvkvm", "run", "hello", "--disk", f"{path},bus=scsi"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "unknown bus 'scsi'" in res.stderr
    other = tmp_path / "d.img"
    create_disk(other, 64 * KiB)
    res = subprocess.run(["hvkvm", "run", "hello", "--disk", f"{path},bus=ata",
                          "--disk", f"{other},bus=ata"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and "only one disk can be on bus=ata" in res.stderr


# -- QEMU: the same guest driver against QEMU's virtio-blk ----------------------------------

#: The pinned peer: microvm without ACPI (QEMU then appends virtio_mmio.device= to the command
#: line) and modern virtio-mmio (QEMU 7.2 defaults to the legacy version 1 transport).
QEMU_BASE = ["-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host,-arch-capabilities",
             "-smp", "1", "-m", "128M", "-nodefaults", "-no-user-config", "-nographic",
             "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
             "-global", "virtio-mmio.force-legacy=false"]


def run_qemu(image: str, append: str, disk: str, machine: str | None = None) -> tuple[int, str]:
    cmd = [QEMU, *QEMU_BASE, "-kernel", image, "-append", append,
           "-drive", f"id=d0,file={disk},format=raw,if=none",
           "-device", "virtio-blk-device,drive=d0"]
    if machine:
        cmd[cmd.index("microvm,acpi=off")] = machine
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    return res.returncode, res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")


def _qemu_json(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.startswith('{"image":"disk_bench"')]
    assert len(lines) == 1, out[-3000:]
    return json.loads(lines[0])


@qemu_test
@pytest.mark.parametrize("ring,machine", [(3, None), (0, None), (0, "microvm")],
                         ids=["ring3", "ring0", "ring0-acpi-ioapic2"])
def test_qemu_runs_disk_bench_over_its_virtio_blk(tmp_path, image, ring, machine):
    path = str(tmp_path / "q.img")
    create_disk(path, 1 * MiB)
    count = 300 if ring == 3 else 30
    code, out = run_qemu(image["disk_bench"], f"disk_bench dev=virtio mode=randwrite qd=4 "
                         f"count={count} verify=1 ring={ring} log=serial", path, machine)
    assert code == 1, out[-3000:]                          # DONE(0)
    j = _qemu_json(out)
    assert (j["dev"], j["protocol"], j["ios"], j["ring"]) == ("virtio", "virtio-mmio 2",
                                                              count, ring)
    assert j["verified_ios"] > 0
    assert "QEMU virtio-blk" in out
    if ring == 0:
        assert j["all_waits"] > 0          # slept in `sti; hlt`: QEMU's interrupt woke it


@kvm
@qemu_test
def test_qemu_fill_then_hvkvm_check(tmp_path, image, paths):
    """disk_fill under QEMU's virtio-blk, disk_check under hvkvm's: the same bytes."""
    path = str(tmp_path / "x.img")
    create_disk(path, 256 * KiB)
    code, out = run_qemu(image["disk_fill"], "disk_fill dev=virtio seed=4242 log=serial", path)
    assert code == 1, out[-3000:]
    assert open(path, "rb").read() == filled(4242, 512)
    r, syncs, _ = paths.run("disk_check", "virtio", "seed=4242", path)
    ok(r)
    assert syncs[3][:2] == (512, 256 * KiB)


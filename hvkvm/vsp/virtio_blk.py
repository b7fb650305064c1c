"""virtio-blk over virtio-mmio: the path the rest of the world uses, served by hvkvm.

The transport is virtio 1.x's modern MMIO register layout (``Version`` = 2), placed the way QEMU's
``microvm`` machine places it, so one guest driver finds the device under both hosts:

* slot ``n`` (0-7) at ``0xfeb00000 + 512 * n`` with IOAPIC GSI ``5 + n``; QEMU gives its first
  ``-device virtio-blk-device`` the last slot (``0xfeb00e00``, GSI 12), the next one slot 6, ...,
  and so does :func:`devices_for`;
* the guest learns where from its command line: ``virtio_mmio.device=512@0xfeb00e00:12`` (Linux's
  ``virtio_mmio.device=SIZE@BASE:IRQ``; QEMU appends it with ``-M microvm,acpi=off``).

Split between the planes (ARCHITECTURE.md, decision 1):

* **Control plane (this module, Python)**: every register access is an MMIO exit served here:
  identification, feature negotiation (``VIRTIO_F_VERSION_1`` required; ``VIRTIO_RING_F_EVENT_IDX``,
  ``VIRTIO_BLK_F_FLUSH``, ``SEG_MAX``, ``BLK_SIZE`` and ``RO`` offered), the device status state
  machine (a driver feature set that is not a subset of the offer, or lacks VERSION_1, does not
  get FEATURES_OK), queue 0's set-up (size a power of two up to ``QueueNumMax``; the three areas
  must be aligned and inside guest RAM, else the device needs a reset), the interrupt status and
  its acknowledgement, the configuration space (capacity, ``seg_max``, ``blk_size``), reset.
* **Data plane (``csrc/hvr_virtio_blk.c``, a C thread)**: started at DRIVER_OK with a ready queue,
  stopped by a reset, ``QueueReady = 0`` or :meth:`VirtioBlkDevice.detach`. It drains the
  available ring, does the I/O between the file and guest RAM (every descriptor checked against
  the RAM regions first), fills the used ring and honours EVENT_IDX both ways. The guest's
  ``QueueNotify`` write is a KVM ioeventfd (no exit); the interrupt is an irqfd on the slot's
  IOAPIC GSI (an edge, no exit). A malformed ring or chain breaks the device: ``Status`` then
  shows DEVICE_NEEDS_RESET and a configuration-change interrupt is raised (QEMU's virtio_error).

Requests: ``VIRTIO_BLK_T_IN``, ``OUT``, ``FLUSH`` (fdatasync) and ``GET_ID`` (the disk's serial,
20 bytes); others complete with ``VIRTIO_BLK_S_UNSUPP``; out-of-range, partial-sector and
read-only writes with ``VIRTIO_BLK_S_IOERR``. The disk is :class:`hvkvm.vsp.disk.Disk` (the same
backend as storvsc; ``,direct`` images get an aligned bounce buffer where needed).

The C plane is built on first use with gcc into the cache (``$HVKVM_CACHE_DIR/../native/``,
keyed by a hash of the source and the compiler) and loaded with ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import struct
import subprocess
import threading
from pathlib import Path

from ..partition.config import DeviceSpec
from .disk import Disk

__all__ = [
    "VirtioBlkDevice", "VirtioBlkError", "devices_for", "slot_address", "cmdline_key",
    "VIRTIO_MMIO_BASE", "VIRTIO_MMIO_SLOT_SIZE", "VIRTIO_MMIO_SLOTS", "VIRTIO_MMIO_IRQ_BASE",
    "load_plane",
]

log = logging.getLogger("hvkvm.vsp.virtio_blk")

VIRTIO_MMIO_BASE = 0xFEB0_0000
VIRTIO_MMIO_SLOT_SIZE = 0x200
VIRTIO_MMIO_SLOTS = 8
VIRTIO_MMIO_IRQ_BASE = 5

MAGIC = 0x74726976          # "virt"
VERSION = 2                 # the modern (virtio 1.x) MMIO transport
DEVICE_ID_BLOCK = 2
VENDOR_ID = 0x564B5648      # "HVKV"

# Register offsets (virtio 1.2, 4.2.2).
REG_MAGIC = 0x000
REG_VERSION = 0x004
REG_DEVICE_ID = 0x008
REG_VENDOR_ID = 0x00C
REG_DEVICE_FEATURES = 0x010
REG_DEVICE_FEATURES_SEL = 0x014
REG_DRIVER_FEATURES = 0x020
REG_DRIVER_FEATURES_SEL = 0x024
REG_QUEUE_SEL = 0x030
REG_QUEUE_NUM_MAX = 0x034
REG_QUEUE_NUM = 0x038
REG_QUEUE_READY = 0x044
REG_QUEUE_NOTIFY = 0x050
REG_INTERRUPT_STATUS = 0x060
REG_INTERRUPT_ACK = 0x064
REG_STATUS = 0x070
REG_QUEUE_DESC_LOW = 0x080
REG_QUEUE_DESC_HIGH = 0x084
REG_QUEUE_DRIVER_LOW = 0x090
REG_QUEUE_DRIVER_HIGH = 0x094
REG_QUEUE_DEVICE_LOW = 0x0A0
REG_QUEUE_DEVICE_HIGH = 0x0A4
REG_CONFIG_GENERATION = 0x0FC
REG_CONFIG = 0x100

# Device status bits.
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 64
STATUS_FAILED = 128

# Feature bits.
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

ISR_USED = 1
ISR_CONFIG = 2

ID_BYTES = 20
SECTOR = 512

#: Why the C plane broke the device (csrc/hvr_virtio_blk.c, enum hvr_vblk_broken).
BROKEN_REASONS = {
    1: "available index moved by more than the queue size (idx {a}, last seen {b})",
    2: "available ring entry {a} is not below the queue size {b}",
    3: "descriptor next {a} is not below the queue size {b}",
    4: "descriptor chain longer than the queue ({a} > {b}): a loop",
    5: "descriptor buffer {a:#x}+{b:#x} is not inside guest RAM",
    6: "descriptor {a} is INDIRECT (not offered)",
    7: "descriptor {a} has length 0",
    8: "descriptor {a} is device-readable after a device-writable one",
    9: "request header is {a} bytes, not 16",
    10: "request has no device-writable status byte",
}


class VirtioBlkError(ValueError):
    """The C data plane cannot be built or loaded (one line; a ValueError, so the partition's
    callers report it as a configuration that cannot work)."""


def slot_address(slot: int) -> tuple[int, int]:
    """(base GPA, IOAPIC GSI) of virtio-mmio slot ``slot`` (QEMU microvm's convention)."""
    if not 0 <= slot < VIRTIO_MMIO_SLOTS:
        raise ValueError(f"virtio-mmio slot must be 0..{VIRTIO_MMIO_SLOTS - 1}, not {slot}")
    return VIRTIO_MMIO_BASE + VIRTIO_MMIO_SLOT_SIZE * slot, VIRTIO_MMIO_IRQ_BASE + slot


def cmdline_key(base: int, irq: int, size: int = VIRTIO_MMIO_SLOT_SIZE) -> str:
    """``virtio_mmio.device=SIZE@BASE:IRQ`` as QEMU's microvm writes it."""
    return f"virtio_mmio.device={size}@{base:#x}:{irq}"


# -- the C plane (built on demand, ctypes) ---------------------------------------------------------


class Stats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "requests", "reads", "writes", "flushes", "get_ids", "unsupported", "io_errors",
        "bytes_read", "bytes_written", "notifies", "sleeps", "interrupts",
        "interrupts_suppressed", "batches", "bounced", "config_interrupts", "last_irq")]


_SOURCE = Path(__file__).resolve().parent.parent.parent / "csrc" / "hvr_virtio_blk.c"
_CFLAGS = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-fPIC", "-shared", "-pthread"]
#: Same instrumentation as the cffi extension (hvkvm/vmbus/_ring_build.py) under HVKVM_SANITIZE=1.
_SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
_lib = None
_lib_lock = threading.Lock()


def _gcc_version() -> str:
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def _cflags() -> list[str]:
    """gcc flags for the C plane; ``HVKVM_SANITIZE=1`` adds ASan + UBSan (libasan must then be
    preloaded into the interpreter, as ``ci/sanitize.sh`` does)."""
    if os.environ.get("HVKVM_SANITIZE") == "1":
        return [*_CFLAGS, *_SANITIZE_FLAGS]
    return list(_CFLAGS)


def plane_path(cflags: list[str] | None = None) -> Path:
    """The cached shared object of ``csrc/hvr_virtio_blk.c`` for ``cflags`` (default: ``_cflags()``),
    compiled first when missing.

    The cache key covers the source, every gcc flag and gcc's version, so a sanitized and a plain
    build never share a file."""
    from ..images import cache_dir
    cflags = _cflags() if cflags is None else list(cflags)
    try:
        src = _SOURCE.read_bytes()
    except OSError as e:
        raise VirtioBlkError(f"virtio-blk C plane source {_SOURCE}: {e.strerror}") from None
    key = hashlib.sha256(src + " ".join(cflags).encode() +
                         _gcc_version().encode()).hexdigest()[:20]
    out_dir = Path(cache_dir()).parent / "native"
    so = out_dir / f"hvr_virtio_blk-{key}.so"
    if not so.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".hvr_virtio_blk-{key}.{os.getpid()}.so"
        try:
            res = subprocess.run(["gcc", *cflags, "-o", str(tmp), str(_SOURCE)],
                                 capture_output=True, text=True, timeout=120)
        except OSError as e:
            raise VirtioBlkError(f"cannot run gcc for the virtio-blk C plane: {e}") from None
        if res.returncode != 0:
            first = next((ln for ln in res.stderr.splitlines() if "error" in ln),
                         res.stderr.strip()[:200])
            raise VirtioBlkError(f"cannot build the virtio-blk C plane: {first}")
        os.replace(tmp, so)
    return so


def load_plane():
    """The ctypes library of ``csrc/hvr_virtio_blk.c``, compiled first when needed."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        so = plane_path()
        lib = ctypes.CDLL(str(so))
        P, u32, u64, vp = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p
        for name, res_t, args in (
            ("hvr_vblk_stats_size", u32, []),
            ("hvr_vblk_new", P, []),
            ("hvr_vblk_add_region", ctypes.c_int, [P, u64, u64, vp]),
            ("hvr_vblk_set_disk", ctypes.c_int, [P, ctypes.c_int, u64, u32, ctypes.c_char_p]),
            ("hvr_vblk_set_queue", ctypes.c_int, [P, u32, u64, u64, u64, u32]),
            ("hvr_vblk_start", ctypes.c_int, [P, ctypes.c_int, ctypes.c_int, u32]),
            ("hvr_vblk_stop", None, [P]),
            ("hvr_vblk_reset", None, [P]),
            ("hvr_vblk_poll", ctypes.c_int, [P]),
            ("hvr_vblk_isr", u32, [P]),
            ("hvr_vblk_isr_ack", None, [P, u32]),
            ("hvr_vblk_raise", None, [P, u32, ctypes.c_int]),
            ("hvr_vblk_broken", u32, [P, ctypes.POINTER(u64), ctypes.POINTER(u64),
                                      ctypes.POINTER(u32)]),
            ("hvr_vblk_get_stats", None, [P, ctypes.POINTER(Stats)]),
            ("hvr_vblk_indexes", u32, [P]),
            ("hvr_vblk_free", None, [P]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res_t, args
        if lib.hvr_vblk_stats_size() != ctypes.sizeof(Stats):
            raise VirtioBlkError("virtio-blk C plane: struct hvr_vblk_stats does not match")
        _lib = lib
        return lib


# -- the device -------------------------------------------------------------------------------------


class VirtioBlkDevice:
    """One virtio-blk device on the virtio-mmio transport (a :class:`~hvkvm.partition.bus.Bus`
    device, ``VIRTIO_MMIO_SLOT_SIZE`` bytes at :attr:`base`), backed by ``disk``.

    Add it with ``DeviceSpec("mmio", dev.base, VIRTIO_MMIO_SLOT_SIZE, dev)``; the partition calls
    :meth:`attach` (RAM, ioeventfd, irqfd) and, at close, :meth:`detach`. ``own_disk``: close the
    disk in :meth:`detach`. ``queue_max``: QueueNumMax (QEMU's default 256). ``spin_us``: how long
    the C thread polls an empty ring before sleeping for a kick. ``event_idx``: offer
    VIRTIO_RING_F_EVENT_IDX.
    """

    plane = "c"

    def __init__(self, disk: Disk, slot: int = VIRTIO_MMIO_SLOTS - 1, *, queue_max: int = 256,
                 spin_us: int = 50, event_idx: bool = True, own_disk: bool = False,
                 name: str | None = None):
        if queue_max < 1 or queue_max > 32768 or queue_max & (queue_max - 1):
            raise ValueError(f"queue_max must be a power of two up to 32768, not {queue_max}")
        self.disk = disk
        self.slot = slot
        self.base, self.irq = slot_address(slot)
        self.queue_max = queue_max
        self.spin_us = spin_us
        self.own_disk = own_disk
        self.name = name or f"virtio-blk@{self.base:#x}"
        self.features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_SEG_MAX) | \
            (1 << VIRTIO_BLK_F_BLK_SIZE) | (1 << VIRTIO_BLK_F_FLUSH)
        if event_idx:
            self.features |= 1 << VIRTIO_RING_F_EVENT_IDX
        if disk.readonly:
            self.features |= 1 << VIRTIO_BLK_F_RO
        self.serial = disk.serial.encode()[:ID_BYTES].ljust(ID_BYTES, b"\0")
        self.config = self._config_space()
        self._lock = threading.Lock()
        self._lib = None
        self._p = None
        self._vm = None
        self._kick_fd = -1
        self._irq_fd = -1
        self._ioeventfd_on = False
        self._irqfd_on = False
        #: Control-plane counters: MMIO register reads and writes, resets, QueueNotify writes
        #: that reached Python (not the ioeventfd), plane starts.
        self.counters = {"mmio_reads": 0, "mmio_writes": 0, "resets": 0, "notify_exits": 0,
                         "plane_starts": 0}
        #: Why the control plane refused the driver (queue outside RAM, ...), or None.
        self.control_error: str | None = None
        #: The feature set the driver last got FEATURES_OK for (kept across resets).
        self.negotiated = 0
        self.last_stats: dict = {}
        self._reset_state()

    # -- configuration ------------------------------------------------------------------------

    def _config_space(self) -> bytes:
        cfg = bytearray(0x40)
        struct.pack_into("<QII", cfg, 0, self.disk.sectors, 0, self.queue_max - 2)
        struct.pack_into("<I", cfg, 20, SECTOR)           # blk_size
        struct.pack_into("<H", cfg, 34, 1)                # num_queues
        return bytes(cfg)

    def _reset_state(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.queue_num = 0
        self.queue_ready = 0
        self.queue_desc = 0
        self.queue_driver = 0
        self.queue_device = 0
        self.control_error = None
        self._running = False

    # -- partition hooks ----------------------------------------------------------------------

    def attach(self, partition) -> None:
        """Bind to ``partition``: guest RAM for the C plane, an ioeventfd on QueueNotify and an
        irqfd on the slot's GSI. Called once by the partition (see PartitionConfig.devices)."""
        if self._p is not None:
            raise RuntimeError(f"{self.name}: already attached")
        lib = load_plane()
        p = lib.hvr_vblk_new()
        if not p:
            raise MemoryError("hvr_vblk_new")
        try:
            for r in partition.memory.regions:
                if lib.hvr_vblk_add_region(p, r.gpa, r.size, r.host_addr):
                    raise ValueError(f"{self.name}: cannot add RAM region {r.gpa:#x}+{r.size:#x}")
            flags = (1 if self.disk.readonly else 0) | (2 if self.disk.direct else 0)
            if lib.hvr_vblk_set_disk(p, self.disk.fileno(), self.disk.sectors, flags, self.serial):
                raise ValueError(f"{self.name}: cannot set the disk")
            self._kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._irq_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._vm = partition.vm
            self._vm.ioeventfd(self._kick_fd, self.base + REG_QUEUE_NOTIFY, 4)
            self._ioeventfd_on = True
            self._vm.irqfd(self._irq_fd, self.irq)
            self._irqfd_on = True
        except BaseException:
            self._lib, self._p = lib, p
            self.detach()
            raise
        self._lib, self._p = lib, p

    def detach(self) -> None:
        """Stop the C plane and release the ioeventfd, irqfd and eventfds (and the disk when
        owned). Safe to call twice; the rings in guest RAM are not touched after it returns."""
        with self._lock:
            if self._p is not None:
                self.last_stats = self._stats_locked()
                self._lib.hvr_vblk_free(self._p)
                self._p = None
            vm, self._vm = self._vm, None
            if vm is not None and self._ioeventfd_on:
                from ..kvm import abi
                try:
                    vm.ioeventfd(self._kick_fd, self.base + REG_QUEUE_NOTIFY, 4,
                                 flags=abi.KVM_IOEVENTFD_FLAG_DEASSIGN)
                except OSError:
                    pass
            self._ioeventfd_on = False
            if vm is not None and self._irqfd_on:
                try:
                    vm.irqfd_deassign(self._irq_fd, self.irq)
                except OSError:
                    pass
            self._irqfd_on = False
            for fd in (self._kick_fd, self._irq_fd):
                if fd >= 0:
                    os.close(fd)
            self._kick_fd = self._irq_fd = -1
            if self.own_disk:
                self.disk.close()

    close = detach

    # -- registers ------------------------------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        """An MMIO read: 32-bit registers below 0x100, any width in the configuration space."""
        n = len(data)
        with self._lock:
            self.counters["mmio_reads"] += 1
            if offset >= REG_CONFIG:
                off = offset - REG_CONFIG
                chunk = self.config[off:off + n] if off < len(self.config) else b""
                data[:] = chunk.ljust(n, b"\0")
                return
            value = self._read_reg(offset) if n == 4 and offset % 4 == 0 else 0
        data[:] = value.to_bytes(4, "little")[:n].ljust(n, b"\0")

    def _read_reg(self, offset: int) -> int:
        if offset == REG_MAGIC:
            return MAGIC
        if offset == REG_VERSION:
            return VERSION
        if offset == REG_DEVICE_ID:
            return DEVICE_ID_BLOCK
        if offset == REG_VENDOR_ID:
            return VENDOR_ID
        if offset == REG_DEVICE_FEATURES:
            sel = self.device_features_sel
            return (self.features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
        if offset == REG_QUEUE_NUM_MAX:
            return self.queue_max if self.queue_sel == 0 else 0
        if offset == REG_QUEUE_READY:
            return self.queue_ready if self.queue_sel == 0 else 0
        if offset == REG_INTERRUPT_STATUS:
            return self._lib.hvr_vblk_isr(self._p) if self._p is not None else 0
        if offset == REG_STATUS:
            return self.status | (STATUS_NEEDS_RESET if self._broken_locked() else 0)
        if offset == REG_CONFIG_GENERATION:
            return 0
        return 0

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """An MMIO write: 32-bit registers only (configuration space writes are ignored)."""
        n = len(data)
        with self._lock:
            self.counters["mmio_writes"] += 1
            if offset >= REG_CONFIG or n != 4 or offset % 4:
                return
            self._write_reg(offset, int.from_bytes(bytes(data), "little"))

    def _write_reg(self, offset: int, v: int) -> None:
        queue_locked = self.queue_ready and self.queue_sel == 0
        if offset == REG_DEVICE_FEATURES_SEL:
            self.device_features_sel = v
        elif offset == REG_DRIVER_FEATURES:
            if self.driver_features_sel < 2 and not self.status & STATUS_FEATURES_OK:
                shift = 32 * self.driver_features_sel
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | \
                    (v << shift)
        elif offset == REG_DRIVER_FEATURES_SEL:
            self.driver_features_sel = v
        elif offset == REG_QUEUE_SEL:
            self.queue_sel = v
        elif offset == REG_QUEUE_NUM:
            if self.queue_sel == 0 and not queue_locked:
                self.queue_num = v
        elif offset in (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, REG_QUEUE_DRIVER_LOW,
                        REG_QUEUE_DRIVER_HIGH, REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH):
            if self.queue_sel == 0 and not queue_locked:
                attr = {0x80: "queue_desc", 0x90: "queue_driver", 0xA0: "queue_device"}[
                    offset & ~0xF]
                cur = getattr(self, attr)
                if offset & 4:
                    cur = (cur & 0xFFFFFFFF) | (v << 32)
                else:
                    cur = (cur & ~0xFFFFFFFF) | v
                setattr(self, attr, cur)
        elif offset == REG_QUEUE_READY:
            if self.queue_sel == 0:
                if v & 1 and not self.queue_ready:
                    self._queue_ready()
                elif not v & 1 and self.queue_ready:
                    self._stop_plane()
                    self.queue_ready = 0
        elif offset == REG_QUEUE_NOTIFY:
            # Only a notify the ioeventfd did not take (another width) gets here: serve it by
            # waking the C plane the same way.
            self.counters["notify_exits"] += 1
            if self._kick_fd >= 0:
                os.eventfd_write(self._kick_fd, 1)
        elif offset == REG_INTERRUPT_ACK:
            if self._p is not None:
                self._lib.hvr_vblk_isr_ack(self._p, v & (ISR_USED | ISR_CONFIG))
        elif offset == REG_STATUS:
            self._write_status(v & 0xFF)

    def _write_status(self, v: int) -> None:
        if v == 0:
            self.counters["resets"] += 1
            self._stop_plane()
            if self._p is not None:
                self._lib.hvr_vblk_reset(self._p)
            self._reset_state()
            return
        old = self.status
        if v & STATUS_FEATURES_OK and not old & STATUS_FEATURES_OK:
            drv = self.driver_features
            if drv & ~self.features or not drv & (1 << VIRTIO_F_VERSION_1):
                log.info("%s: driver features %#x refused (offer %#x, VERSION_1 required)",
                         self.name, drv, self.features)
                v &= ~STATUS_FEATURES_OK
            else:
                self.negotiated = drv
        self.status = v & ~STATUS_NEEDS_RESET
        if v & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK:
            self._maybe_start()

    def _queue_ready(self) -> None:
        num = self.queue_num
        if not 1 <= num <= self.queue_max or num & (num - 1):
            self._fail(f"queue size {num} is not a power of two up to {self.queue_max}")
            return
        event_idx = 1 if self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) else 0
        rc = self._lib.hvr_vblk_set_queue(self._p, num, self.queue_desc, self.queue_driver,
                                          self.queue_device, event_idx) if self._p else -errno.EINVAL
        if rc:
            why = "misaligned" if rc == -errno.EINVAL else "not inside guest RAM"
            self._fail(f"queue areas desc {self.queue_desc:#x} driver {self.queue_driver:#x} "
                       f"device {self.queue_device:#x} for {num} entries are {why}")
            return
        self.queue_ready = 1
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self.status & STATUS_DRIVER_OK and self.queue_ready and not self._running \
                and self._p is not None and not self._broken_locked():
            rc = self._lib.hvr_vblk_start(self._p, self._kick_fd, self._irq_fd, self.spin_us)
            if rc:
                self._fail(f"C plane did not start: {os.strerror(-rc)}")
                return
            self._running = True
            self.counters["plane_starts"] += 1

    def _stop_plane(self) -> None:
        if self._running and self._p is not None:
            self._lib.hvr_vblk_stop(self._p)
        self._running = False

    def _fail(self, why: str) -> None:
        """The driver did something the device cannot accept: DEVICE_NEEDS_RESET and a
        configuration-change interrupt."""
        log.warning("%s: %s; device needs reset", self.name, why)
        self.control_error = why
        if self._p is not None:
            self._lib.hvr_vblk_raise(self._p, ISR_CONFIG, self._irq_fd)

    def _broken_locked(self) -> bool:
        if self.control_error is not None:
            return True
        return self._p is not None and self._lib.hvr_vblk_broken(self._p, None, None, None) != 0

    # -- reporting ------------------------------------------------------------------------------

    def broken(self) -> str | None:
        """Why the device needs a reset (a one-line reason), or None."""
        with self._lock:
            return self._broken_text_locked()

    def _broken_text_locked(self) -> str | None:
        if self.control_error is not None:
            return self.control_error
        if self._p is None:
            return self.last_stats.get("broken")
        a, b, head = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint32()
        why = self._lib.hvr_vblk_broken(self._p, ctypes.byref(a), ctypes.byref(b),
                                        ctypes.byref(head))
        if not why:
            return None
        text = BROKEN_REASONS.get(why, "reason {a} {b}").format(a=a.value, b=b.value)
        return f"chain at head {head.value}: {text}"

    def stats(self) -> dict:
        """Counters: the C plane's (requests, reads, writes, notifies = guest kicks, interrupts,
        interrupts_suppressed, sleeps, last_irq, ...), the control plane's, ``status``,
        ``features`` (the last feature set negotiated) and ``broken``."""
        with self._lock:
            if self._p is None:
                return dict(self.last_stats)
            return self._stats_locked()

    def _stats_locked(self) -> dict:
        out = dict(self.counters)
        if self._p is not None:
            st = Stats()
            self._lib.hvr_vblk_get_stats(self._p, ctypes.byref(st))
            out.update({name: getattr(st, name) for name, _ in Stats._fields_})
            idx = self._lib.hvr_vblk_indexes(self._p)
            out["last_avail"], out["used_idx"] = idx & 0xFFFF, idx >> 16
        out["status"] = self.status
        out["features"] = self.negotiated
        out["broken"] = self._broken_text_locked()
        return out

    def __repr__(self) -> str:
        return f"VirtioBlkDevice({self.disk!r} at {self.base:#x} irq {self.irq})"


def devices_for(disk, plane: str = "c", index: int = 0, **kw) -> tuple[dict, list[str]]:
    """The partition settings and guest command-line keys of one virtio-blk disk.

    ``disk``: a :class:`~hvkvm.vsp.disk.Disk` (the caller keeps owning it) or a path (opened
    read-write here; the device closes it at detach). ``index`` 0 is QEMU's first device (slot 7,
    0xfeb00e00, GSI 12), 1 the next (slot 6), ... ``plane`` must be "c" (the only data plane).
    Returns ``({"devices": [DeviceSpec]}, ["dev=virtio", "virtio_mmio.device=512@BASE:IRQ"])``:
    pass the dict's items to :class:`~hvkvm.partition.config.PartitionConfig` (extend
    ``devices`` when combining) and append the keys to the command line.
    """
    if plane != "c":
        raise ValueError(f"virtio-blk has only the C data plane, not {plane!r}")
    if not 0 <= index < VIRTIO_MMIO_SLOTS:
        raise ValueError(f"virtio-blk index must be 0..{VIRTIO_MMIO_SLOTS - 1}, not {index}")
    own = not isinstance(disk, Disk)
    d = Disk(disk) if own else disk
    dev = VirtioBlkDevice(d, slot=VIRTIO_MMIO_SLOTS - 1 - index, own_disk=own, **kw)
    return ({"devices": [DeviceSpec("mmio", dev.base, VIRTIO_MMIO_SLOT_SIZE, dev)]},
            ["dev=virtio", cmdline_key(dev.base, dev.irq)])

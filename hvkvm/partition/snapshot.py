"""Snapshots of a child partition: fast reset from KVM's dirty log, and snapshot files.

:meth:`ChildPartition.snapshot` captures

- every vCPU: general registers, segment/control registers, FPU (XSAVE area when KVM can restore
  it, else the legacy FXSAVE image: see :attr:`Snapshot.fpu_mode`), XCRs, every MSR of
  KVM_GET_MSR_INDEX_LIST that this vCPU can read, the LAPIC page, pending events, the MP state
  and the debug registers;
- the VM: both 8259 PICs and the IOAPIC, the PIT, the kvmclock;
- the serial UART's registers and receive FIFO;
- guest RAM (one private copy).

The first snapshot turns on dirty-page logging for every memory slot (KVM_MEM_LOG_DIRTY_PAGES,
with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 where the kernel has it, so pages are write-protected only
from the first snapshot on) and restarts the log. :meth:`ChildPartition.restore` of the latest
snapshot then copies back only the pages the guest wrote since (KVM_GET_DIRTY_LOG), plus the pages
the host declared with :func:`mark_dirty`, and re-protects those (KVM_CLEAR_DIRTY_LOG), except
the pages the guest wrote again after an earlier restore had copied them (up to
:data:`KEEP_WRITABLE_MAX`): those stay writable and logged as dirty, so a guest that keeps writing
the same pages (a test's stack, its data) takes no write-protection fault for them and every
restore copies them back.
Restoring any other snapshot (an older one, or one loaded from a file) copies all of RAM once and
makes it the new base.

Host writes to guest RAM do not reach KVM's dirty log. Code that writes guest RAM directly between
a snapshot and a restore must call :func:`mark_dirty` (the gdb stub and the guest-test runner do).
Partitions with the Hyper-V interface (VMBus devices) are refused: their SynIC, channel and ring
state lives in the parent and is not captured.

A pending exit (a port or MMIO access the vCPU thread serviced but KVM has not completed yet) is
completed first, with KVM_RUN and ``immediate_exit`` set, as KVM's API asks before saving state.

Files (:meth:`Snapshot.save`, :meth:`Snapshot.load`): ``HVKVMSNP``, a format version, a JSON
header (memory size, vCPU count, image name and SHA-256, notes), the binary state, the non-zero
pages of RAM, and a SHA-256 of everything before it. Loading refuses another format version or a
damaged file; restoring refuses a different memory size, vCPU count or image, each with a one-line
:class:`SnapshotError` that says what differs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import hashlib
import io
import json
import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..kvm import abi
from ..kvm.errors import KvmError

FORMAT_VERSION = 1
MAGIC = b"HVKVMSNP"
PAGE_SIZE = 4096
_FULL = (1 << 64) - 1
MSR_IA32_TSC_DEADLINE = 0x6E0
#: Pages a restore may leave writable because the guest keeps writing them (8 MiB).
KEEP_WRITABLE_MAX = 2048

#: Exits after which KVM still has to finish the instruction on the next KVM_RUN.
_PENDING_EXITS = {abi.KVM_EXIT_IO, abi.KVM_EXIT_MMIO, abi.KVM_EXIT_X86_RDMSR,
                  abi.KVM_EXIT_X86_WRMSR, abi.KVM_EXIT_HYPERCALL, abi.KVM_EXIT_XEN,
                  abi.KVM_EXIT_HYPERV}


class SnapshotError(Exception):
    """A snapshot that cannot be taken, loaded or restored here (one-line message)."""


@dataclass
class VcpuState:
    """One vCPU's architectural state as KVM's structs (raw bytes) and an MSR map."""

    index: int
    regs: bytes
    sregs: bytes
    fpu: bytes
    xsave: bytes | None
    xcrs: bytes | None
    msrs: dict[int, int]
    lapic: bytes
    events: bytes
    mp_state: int
    debugregs: bytes
    #: ctypes structs built from the bytes on the first restore, reused by the next ones.
    _prepared: dict | None = field(default=None, repr=False, compare=False)

    def prepared(self, refused: set[int]) -> dict:
        """The state as ready-to-pass ctypes structs (MSRs: those KVM has not refused)."""
        prep = self._prepared
        if prep is None or prep["refused"] != refused:
            msrs = {i: v for i, v in self.msrs.items()
                    if i not in refused and i != MSR_IA32_TSC_DEADLINE}
            bulk = abi.make_kvm_msrs(len(msrs))
            for n, (i, v) in enumerate(msrs.items()):
                bulk.entries[n].index, bulk.entries[n].data = i, v
            xsave = None
            if self.xsave is not None:
                xsave = abi.make_kvm_xsave(len(self.xsave))
                ctypes.memmove(ctypes.addressof(xsave), self.xsave, len(self.xsave))
            prep = self._prepared = {
                "refused": set(refused), "msr_list": list(msrs), "msrs": bulk,
                "regs": abi.kvm_regs.from_buffer_copy(self.regs),
                "sregs": abi.kvm_sregs.from_buffer_copy(self.sregs),
                "fpu": abi.kvm_fpu.from_buffer_copy(self.fpu), "xsave": xsave,
                "xcrs": abi.kvm_xcrs.from_buffer_copy(self.xcrs) if self.xcrs else None,
                "lapic": abi.kvm_lapic_state.from_buffer_copy(self.lapic),
                "events": abi.kvm_vcpu_events.from_buffer_copy(self.events),
                "debugregs": abi.kvm_debugregs.from_buffer_copy(self.debugregs),
                "tsc_deadline": self.msrs.get(MSR_IA32_TSC_DEADLINE, 0),
            }
        return prep

    @property
    def rip(self) -> int:
        """RIP at the snapshot."""
        return abi.kvm_regs.from_buffer_copy(self.regs).rip


@dataclass
class Snapshot:
    """A partition's state at one instant; see the module docstring."""

    memory_size: int
    vcpus: list[VcpuState]
    irqchip: list[bytes]
    pit: bytes | None
    clock: bytes | None
    serial: dict | None
    #: RAM in memfd order (regions back to back): an anonymous mapping, zero outside
    #: :attr:`data_ranges`.
    ram: mmap.mmap
    #: (offset, length) of the page-aligned parts of :attr:`ram` that may hold non-zero bytes
    #: (the guest memfd's populated ranges when the snapshot was taken); the rest is zero.
    data_ranges: list[tuple[int, int]] = field(default_factory=list)
    image_name: str = ""
    image_sha256: str = ""
    #: "xsave" (KVM_GET/SET_XSAVE) or "fpu" (KVM_GET/SET_FPU: x87 and SSE only).
    fpu_mode: str = "xsave"
    #: What could not be captured exactly (said once, kept with the snapshot).
    notes: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    version: int = FORMAT_VERSION
    _ram_c: object = field(default=None, repr=False)
    _vm_prepared: tuple | None = field(default=None, repr=False)

    def vm_prepared(self) -> tuple:
        """(irqchips, pit, clock) as ctypes structs, built once."""
        if self._vm_prepared is None:
            clock = None
            if self.clock is not None:
                clock = abi.kvm_clock_data.from_buffer_copy(self.clock)
                clock.flags = 0
            self._vm_prepared = (
                [abi.kvm_irqchip.from_buffer_copy(b) for b in self.irqchip],
                abi.kvm_pit_state2.from_buffer_copy(self.pit) if self.pit is not None else None,
                clock)
        return self._vm_prepared

    def ram_address(self) -> int:
        """Host address of the snapshot's RAM copy (pinned for the snapshot's lifetime)."""
        if self._ram_c is None:
            self._ram_c = (ctypes.c_char * len(self.ram)).from_buffer(self.ram)
        return ctypes.addressof(self._ram_c)

    # -- files ---------------------------------------------------------------------------------

    def header(self) -> dict:
        """The JSON header of the file form."""
        return {"format_version": self.version, "memory_size": self.memory_size,
                "vcpus": len(self.vcpus), "image_name": self.image_name,
                "image_sha256": self.image_sha256, "fpu_mode": self.fpu_mode,
                "notes": self.notes, "created": self.created,
                "vcpu_rip": [v.rip for v in self.vcpus]}

    def save(self, path: str | Path) -> int:
        """Write the snapshot to ``path``; returns the file size in bytes."""
        body = io.BytesIO()
        state = {
            "vcpus": [{"index": v.index, "regs": v.regs.hex(), "sregs": v.sregs.hex(),
                       "fpu": v.fpu.hex(), "xsave": v.xsave.hex() if v.xsave else None,
                       "xcrs": v.xcrs.hex() if v.xcrs else None,
                       "msrs": {str(k): val for k, val in v.msrs.items()},
                       "lapic": v.lapic.hex(), "events": v.events.hex(),
                       "mp_state": v.mp_state, "debugregs": v.debugregs.hex()}
                      for v in self.vcpus],
            "irqchip": [c.hex() for c in self.irqchip],
            "pit": self.pit.hex() if self.pit else None,
            "clock": self.clock.hex() if self.clock else None,
            "serial": self.serial,
        }
        head = json.dumps(self.header()).encode()
        st = json.dumps(state).encode()
        body.write(MAGIC + struct.pack("<II", self.version, len(head)) + head)
        body.write(struct.pack("<Q", len(st)) + st)
        # RAM: a bitmap of non-zero pages, then those pages.
        npages = self.memory_size // PAGE_SIZE
        view = memoryview(self.ram)
        zero = bytes(PAGE_SIZE)
        bitmap = bytearray((npages + 7) // 8)
        pages = []
        for off, length in self.data_ranges:
            for i in range(off // PAGE_SIZE, (off + length) // PAGE_SIZE):
                page = view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
                if page != zero:
                    bitmap[i >> 3] |= 1 << (i & 7)
                    pages.append(page)
        body.write(struct.pack("<Q", npages) + bitmap)
        for page in pages:
            body.write(page)
        data = body.getbuffer()
        digest = hashlib.sha256(data).digest()
        with open(path, "wb") as f:
            f.write(data)
            f.write(digest)
        return len(data) + len(digest)

    @classmethod
    def load(cls, path: str | Path) -> "Snapshot":
        """Read a snapshot file; :class:`SnapshotError` for another format, version or damage."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}") from None
        if len(data) < len(MAGIC) + 8 + 32 or not data.startswith(MAGIC):
            raise SnapshotError(f"{path} is not an hvkvm snapshot (no {MAGIC.decode()} header)")
        version, head_len = struct.unpack_from("<II", data, len(MAGIC))
        if version != FORMAT_VERSION:
            raise SnapshotError(f"{path}: snapshot format version {version}; this hvkvm reads "
                                f"version {FORMAT_VERSION}")
        if hashlib.sha256(data[:-32]).digest() != data[-32:]:
            raise SnapshotError(f"{path}: snapshot is damaged or truncated (checksum mismatch)")
        try:
            off = len(MAGIC) + 8
            head = json.loads(data[off:off + head_len])
            off += head_len
            (st_len,) = struct.unpack_from("<Q", data, off)
            off += 8
            st = json.loads(data[off:off + st_len])
            off += st_len
            (npages,) = struct.unpack_from("<Q", data, off)
            off += 8
            if npages * PAGE_SIZE != head["memory_size"]:
                raise ValueError("RAM section does not match the memory size")
            bitmap = data[off:off + (npages + 7) // 8]
            off += len(bitmap)
            ram = new_ram(head["memory_size"])
            ranges: list[tuple[int, int]] = []
            for i in range(npages):
                if bitmap[i >> 3] >> (i & 7) & 1:
                    ram[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = data[off:off + PAGE_SIZE]
                    off += PAGE_SIZE
                    if ranges and ranges[-1][0] + ranges[-1][1] == i * PAGE_SIZE:
                        ranges[-1] = (ranges[-1][0], ranges[-1][1] + PAGE_SIZE)
                    else:
                        ranges.append((i * PAGE_SIZE, PAGE_SIZE))
            if off != len(data) - 32:
                raise ValueError("trailing bytes after RAM")
            h = bytes.fromhex
            vcpus = [VcpuState(v["index"], h(v["regs"]), h(v["sregs"]), h(v["fpu"]),
                               h(v["xsave"]) if v["xsave"] else None,
                               h(v["xcrs"]) if v["xcrs"] else None,
                               {int(k): val for k, val in v["msrs"].items()}, h(v["lapic"]),
                               h(v["events"]), v["mp_state"], h(v["debugregs"]))
                     for v in st["vcpus"]]
            return cls(memory_size=head["memory_size"], vcpus=vcpus,
                       irqchip=[h(c) for c in st["irqchip"]],
                       pit=h(st["pit"]) if st["pit"] else None,
                       clock=h(st["clock"]) if st["clock"] else None, serial=st["serial"],
                       ram=ram, data_ranges=ranges, image_name=head["image_name"],
                       image_sha256=head["image_sha256"], fpu_mode=head["fpu_mode"],
                       notes=list(head["notes"]), created=head["created"], version=version)
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise SnapshotError(f"{path}: malformed snapshot ({e})") from None


# -- dirty tracking -----------------------------------------------------------------------------


class _Tracker:
    """Per-partition dirty-log state (``ChildPartition._snap_tracker``)."""

    def __init__(self, partition):
        p = partition
        self.manual = False
        self.base: Snapshot | None = None
        #: memfd page numbers the host wrote since the base snapshot
        self.host_dirty: set[int] = set()
        self.msr_indices: list[int] | None = None
        #: slot -> every page (bits of an int) the guest dirtied since the base snapshot, as seen
        #: by the restores so far
        self.previous: dict[int, int] = {}
        self.msr_refused: set[int] = set()
        self.image_name, self.image_sha256 = image_identity(p)
        self.xsave_size = 0
        self.notes: list[str] = []
        vm = p.vm
        supported = vm.check_extension(abi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        if supported & abi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE:
            flags = supported & (abi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
                                 abi.KVM_DIRTY_LOG_INITIALLY_SET)
            vm.enable_cap(abi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, flags)
            self.manual = True
        for r in p.memory.regions:
            vm.set_user_memory_region(r.slot, r.gpa, r.size, r.host_addr,
                                      abi.KVM_MEM_LOG_DIRTY_PAGES)
        try:
            size = vm.check_extension(abi.KVM_CAP_XSAVE2)
        except KvmError:
            size = 0
        self.xsave_size = size if size > ctypes.sizeof(abi.kvm_xsave) else 0

    def dirty_bitmaps(self, vm, memory, keep_hot: bool = False) -> list[tuple[object, bytearray]]:
        """(region, bitmap) per region: pages the guest wrote since the last clear, plus the
        pages the host declared; the log is re-armed for the guest's pages.

        With ``keep_hot`` (restores, manual-protect mode), a page the guest writes again after an
        earlier restore had to copy it stays writable: its bit stays set, so every restore copies
        it back, and the guest's next write to it costs no write-protection fault. Past
        :data:`KEEP_WRITABLE_MAX` such pages, everything is re-protected.
        """
        out = []
        for r in memory.regions:
            npages = r.size // PAGE_SIZE
            bm = vm.get_dirty_log(r.slot, npages)
            if self.manual:
                cur = int.from_bytes(bm, "little")
                keep = cur & self.previous.get(r.slot, 0) if keep_hot else 0
                if keep and keep.bit_count() > KEEP_WRITABLE_MAX:
                    keep = 0
                clear = cur & ~keep
                if clear:
                    vm.clear_dirty_log(r.slot, 0, npages,
                                       bytearray(clear.to_bytes(len(bm), "little")))
                self.previous[r.slot] = (self.previous.get(r.slot, 0) | cur) if keep_hot else 0
            out.append((r, bm))
        if self.host_dirty:
            for r, bm in out:
                first = r.memfd_offset // PAGE_SIZE
                last = first + r.size // PAGE_SIZE
                for page in self.host_dirty:
                    if first <= page < last:
                        i = page - first
                        bm[i >> 3] |= 1 << (i & 7)
        return out


def _tracker(p) -> _Tracker:
    t = p._snap_tracker
    if t is None:
        if p.hv is not None:
            raise SnapshotError("this partition has the Hyper-V interface (VMBus devices): its "
                                "SynIC, channel and ring state lives in the parent and cannot be "
                                "snapshotted yet")
        t = p._snap_tracker = _Tracker(p)
    return t


def mark_dirty(partition, gpa: int, length: int) -> None:
    """Tell the snapshot tracker that the host wrote ``[gpa, gpa+length)`` of guest RAM.

    A no-op until the partition's first snapshot. KVM's dirty log sees only guest writes.
    """
    t = partition._snap_tracker
    if t is None or length <= 0:
        return
    end = gpa + length
    while gpa < end:
        r = partition.memory.region_of(gpa)
        if r is None:
            return
        stop = min(end, r.end)
        first = (r.memfd_offset + gpa - r.gpa) // PAGE_SIZE
        last = (r.memfd_offset + stop - 1 - r.gpa) // PAGE_SIZE
        t.host_dirty.update(range(first, last + 1))
        gpa = stop


def dirty_runs(bitmap) -> list[tuple[int, int]]:
    """(first page, page count) for each run of set bits of a dirty bitmap (64-bit words)."""
    runs: list[tuple[int, int]] = []
    start = end = -1
    for wi, w in enumerate(memoryview(bitmap).cast("Q")):
        if not w:
            continue
        base = wi << 6
        if w == _FULL:
            if base == end:
                end += 64
            else:
                if start >= 0:
                    runs.append((start, end - start))
                start, end = base, base + 64
            continue
        if not w & (w - 1):  # one page in this word (the sparse case)
            page = base + w.bit_length() - 1
            if page == end:
                end += 1
            else:
                if start >= 0:
                    runs.append((start, end - start))
                start, end = page, page + 1
            continue
        while w:
            low = w & -w
            page = base + low.bit_length() - 1
            w ^= low
            if page == end:
                end += 1
            else:
                if start >= 0:
                    runs.append((start, end - start))
                start, end = page, page + 1
    if start >= 0:
        runs.append((start, end - start))
    return runs


def new_ram(size: int) -> mmap.mmap:
    """An anonymous, zero-filled mapping for a snapshot's RAM (huge pages where the kernel
    gives them: fewer TLB misses when a restore copies scattered pages back)."""
    m = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_NOHUGEPAGE)
    except (AttributeError, OSError):
        pass
    return m


def populated_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the parts of a memfd that have pages (SEEK_DATA / SEEK_HOLE),
    page-aligned; the whole file when the kernel cannot say."""
    ranges = []
    off = 0
    try:
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == _errno.ENXIO:
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            start -= start % PAGE_SIZE
            end += -end % PAGE_SIZE
            ranges.append((start, min(end, size) - start))
            off = end
    except OSError:
        return [(0, size)]
    return ranges


_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Zero ``[offset, offset+length)`` of a memfd by freeing its pages; False if refused."""
    rc = _libc.fallocate(ctypes.c_int(fd), ctypes.c_int(_FALLOC_FL_PUNCH_HOLE |
                                                        _FALLOC_FL_KEEP_SIZE),
                         ctypes.c_long(offset), ctypes.c_long(length))
    return rc == 0


def _complement(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    for off, length in sorted(ranges):
        if off > pos:
            out.append((pos, off - pos))
        pos = max(pos, off + length)
    if pos < size:
        out.append((pos, size - pos))
    return out


def image_identity(p) -> tuple[str, str]:
    """(name, SHA-256 hex) of what the partition booted: the ELF file, or the raw code."""
    cfg = p.config
    if cfg.image is not None:
        path = Path(cfg.image)
        return path.name, hashlib.sha256(path.read_bytes()).hexdigest()
    return f"raw code at {cfg.raw_gpa:#x} ({cfg.raw_mode} mode)", \
        hashlib.sha256(bytes(cfg.raw)).hexdigest()


# -- quiescing ----------------------------------------------------------------------------------


def complete_pending(vcpu) -> None:
    """Finish the instruction of the last exit inside KVM (KVM_RUN with ``immediate_exit``).

    KVM completes port/MMIO/MSR exits on the next KVM_RUN; state read before that is mid
    instruction, and state written before it would be overwritten by the completion.
    """
    run = vcpu.run_struct
    if run.exit_reason not in _PENDING_EXITS:
        return
    run.immediate_exit = 1
    try:
        reason = vcpu.run()
    finally:
        run.immediate_exit = 0
    run.kvm_dirty_regs = 0
    if reason != abi.KVM_EXIT_INTR:
        raise SnapshotError(f"vCPU{vcpu.index} is in the middle of an instruction that needs "
                            f"another exit ({abi.exit_reason_name(reason)}); try again")
    run.exit_reason = abi.KVM_EXIT_INTR


@contextlib.contextmanager
def quiesced(p, timeout: float = 5.0):
    """Hold every vCPU of ``p`` outside KVM_RUN for the body (no-op when nothing runs).

    From a vCPU thread of ``p`` (an ``on_sync`` callback), the other vCPUs are held and the
    caller's own vCPU is, by definition, outside KVM_RUN.
    """
    threads = getattr(p, "_threads", None) or []
    live = [t for t in threads if t.thread is not None and t.thread.is_alive()]
    if not live:
        yield
        return
    from .partition import current_vcpu_thread
    me = current_vcpu_thread()
    if me is not None and me.partition is not p:
        me = None
    already = p._pause_requested
    if me is None:
        if not p.pause(timeout):
            if not already:
                p.resume()
            raise SnapshotError(f"vCPUs did not stop within {timeout:g} s")
    else:
        with p._pause_cv:
            p._pause_requested = True
        others = [t for t in live if t is not me]
        for t in others:
            t.kick()
        deadline = time.monotonic() + timeout
        with p._pause_cv:
            while not all(t.held or not t.thread.is_alive() for t in others):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                p._pause_cv.wait(min(left, 0.05))
        if not all(t.held or not t.thread.is_alive() for t in others):
            if not already:
                p.resume()
            raise SnapshotError(f"vCPUs did not stop within {timeout:g} s")
    try:
        yield
    finally:
        if not already:
            p.resume()


# -- capture ------------------------------------------------------------------------------------

_UART_FIELDS = ("_ier", "_lcr", "_mcr", "_scr", "_divisor", "_fifo_enabled", "_fcr_sticky",
                "_trigger", "_oe", "_thr_pending", "_msr_delta", "_msr_in", "_irq_level")


def _serial_state(serial) -> dict | None:
    if serial is None:
        return None
    with serial._lock:
        st = {f: getattr(serial, f) for f in _UART_FIELDS if hasattr(serial, f)}
        st["rx"] = list(serial._rx)
        cap = getattr(serial, "_capture", None)
        st["captured_len"] = len(cap) if cap is not None else None
    return st


def _restore_serial(serial, st: dict | None) -> None:
    if serial is None or st is None:
        return
    with serial._lock:
        for f in _UART_FIELDS:
            if f in st:
                setattr(serial, f, st[f])
        serial._rx.clear()
        serial._rx.extend(st.get("rx", []))
        cap = getattr(serial, "_capture", None)
        n = st.get("captured_len")
        if cap is not None and n is not None and len(cap) > n:
            # The captured output follows the guest's timeline: back to the snapshot's.
            del cap[n:]


def _readable_msrs(vcpu, indices: list[int]) -> list[int]:
    ok: list[int] = []
    rest = list(dict.fromkeys(indices))
    while rest:
        got = vcpu.get_msrs(rest)
        n = len(got)
        ok += rest[:n]
        rest = rest[n + 1:]  # KVM stopped at the one it cannot read: skip it
    return ok


def _vcpu_state(p, t: _Tracker, vcpu, snap_notes: list[str]) -> tuple[VcpuState, str]:
    if t.msr_indices is None:
        t.msr_indices = _readable_msrs(vcpu, p.kvm.get_msr_index_list())
    regs = bytes(vcpu.get_regs())
    sregs = bytes(vcpu.get_sregs())
    fpu = bytes(vcpu.get_fpu())
    xsave = None
    mode = "fpu"
    try:
        xs = vcpu.get_xsave2(t.xsave_size) if t.xsave_size else vcpu.get_xsave()
        # KVM_SET_XSAVE is where kvm_pvm can fail (xrstor): prove it works before relying on it.
        vcpu.set_xsave(xs)
        xsave, mode = bytes(xs), "xsave"
    except KvmError as e:
        note = f"XSAVE state unavailable ({e}): x87/SSE state kept through KVM_GET/SET_FPU only"
        if note not in snap_notes:
            snap_notes.append(note)
    try:
        xcrs = bytes(vcpu.get_xcrs())
    except KvmError:
        xcrs = None
    msrs = vcpu.get_msrs(t.msr_indices)
    return VcpuState(vcpu.index, regs, sregs, fpu, xsave, xcrs, msrs, bytes(vcpu.get_lapic()),
                     bytes(vcpu.get_vcpu_events()), vcpu.get_mp_state(),
                     bytes(vcpu.get_debugregs())), mode


def take_snapshot(p) -> Snapshot:
    """:meth:`ChildPartition.snapshot`."""
    if p._closed:
        raise SnapshotError("partition is closed")
    t = _tracker(p)
    with quiesced(p):
        for v in p.vcpus:
            complete_pending(v)
        notes = list(t.notes)
        states, modes = [], set()
        for v in p.vcpus:
            st, mode = _vcpu_state(p, t, v, notes)
            states.append(st)
            modes.add(mode)
        irqchip = [bytes(p.vm.get_irqchip(i)) for i in range(abi.KVM_NR_IRQCHIPS)]
        pit = bytes(p.vm.get_pit2())
        clock = bytes(p.vm.get_clock())
        serial = _serial_state(p.serial)
        # Restart the dirty log, then copy RAM: nothing runs in between.
        t.dirty_bitmaps(p.vm, p.memory)
        ram = new_ram(p.memory.size)
        ranges = populated_ranges(p.memory.memfd, p.memory.size)
        snap = Snapshot(memory_size=p.memory.size, vcpus=states, irqchip=irqchip, pit=pit,
                        clock=clock, serial=serial, ram=ram, data_ranges=ranges,
                        image_name=t.image_name,
                        image_sha256=t.image_sha256,
                        fpu_mode="xsave" if modes == {"xsave"} else "fpu", notes=notes)
        src = p.memory.host_address(0)  # memfd offset 0
        dst = snap.ram_address()
        for off, length in ranges:
            ctypes.memmove(dst + off, src + off, length)
        t.base = snap
        t.host_dirty.clear()
        t.notes = notes
    return snap


# -- restore ------------------------------------------------------------------------------------


def check_compatible(p, snap: Snapshot) -> None:
    """Raise :class:`SnapshotError` naming what differs between ``snap`` and the partition."""
    if snap.version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format version {snap.version}; this hvkvm restores "
                            f"version {FORMAT_VERSION}")
    if snap.memory_size != p.memory.size:
        raise SnapshotError(f"snapshot has {snap.memory_size >> 20} MiB of RAM, this partition "
                            f"{p.memory.size >> 20} MiB (use --memory {snap.memory_size >> 20}M)")
    if len(snap.vcpus) != len(p.vcpus):
        raise SnapshotError(f"snapshot has {len(snap.vcpus)} vCPUs, this partition "
                            f"{len(p.vcpus)} (use --vcpus {len(snap.vcpus)})")
    t = p._snap_tracker
    name, sha = (t.image_name, t.image_sha256) if t is not None else image_identity(p)
    if snap.image_sha256 != sha:
        raise SnapshotError(f"snapshot was taken of {snap.image_name} (sha256 "
                            f"{snap.image_sha256[:12]}), this partition runs {name} "
                            f"(sha256 {sha[:12]})")


def _copy_pages(dst_base: int, src_base: int, runs) -> int:
    memmove = ctypes.memmove
    n = 0
    for first, count in runs:
        off = first * PAGE_SIZE
        memmove(dst_base + off, src_base + off, count * PAGE_SIZE)
        n += count
    return n


def _set_msrs(vcpu, values: dict[int, int], refused: set[int]) -> None:
    items = [(i, v) for i, v in values.items() if i not in refused and i != MSR_IA32_TSC_DEADLINE]
    while items:
        n = vcpu.set_msrs(dict(items))
        if n >= len(items):
            return
        refused.add(items[n][0])
        items = items[n + 1:]


def _restore_vcpu(vcpu, st: VcpuState, t: _Tracker) -> None:
    # QEMU's order (kvm_arch_put_registers): regs, FPU, XCRs, sregs, MSRs, MP state, LAPIC, the
    # TSC deadline (the LAPIC write resets it), events, debug registers.
    prep = st.prepared(t.msr_refused)
    regs, sregs = prep["regs"], prep["sregs"]
    vcpu.set_regs(regs)
    if prep["xsave"] is not None:
        try:
            vcpu.set_xsave(prep["xsave"])
        except KvmError:
            vcpu.set_fpu(prep["fpu"])
    else:
        vcpu.set_fpu(prep["fpu"])
    if prep["xcrs"] is not None:
        try:
            vcpu.set_xcrs(prep["xcrs"])
        except KvmError:
            pass
    vcpu.set_sregs(sregs)
    n = vcpu.set_msrs(prep["msrs"])
    if n < len(prep["msr_list"]):
        # KVM refused one: remember it, set the rest one list at a time.
        _set_msrs(vcpu, {i: st.msrs[i] for i in prep["msr_list"][n:]}, t.msr_refused)
        t.msr_refused.add(prep["msr_list"][n])
    vcpu.set_mp_state(st.mp_state)
    vcpu.set_lapic(prep["lapic"])
    if prep["tsc_deadline"] and MSR_IA32_TSC_DEADLINE not in t.msr_refused:
        # Restoring the LAPIC disarmed the deadline timer; a zero deadline needs no write.
        _set_msrs(vcpu, {MSR_IA32_TSC_DEADLINE: prep["tsc_deadline"]}, set())
    vcpu.set_vcpu_events(prep["events"])
    vcpu.set_debugregs(prep["debugregs"])
    # The sync-regs area must not carry stale values into the next entry; refresh its view.
    run = vcpu.run_struct
    run.kvm_dirty_regs = 0
    run.immediate_exit = 0
    run.s.regs.regs = regs
    run.s.regs.sregs = sregs


def restore_snapshot(p, snap: Snapshot) -> dict:
    """:meth:`ChildPartition.restore`; returns what it did (pages copied, whether full, ms)."""
    if p._closed:
        raise SnapshotError("partition is closed")
    t0 = time.perf_counter()
    check_compatible(p, snap)
    t = _tracker(p)
    with quiesced(p):
        for v in p.vcpus:
            complete_pending(v)
        src = snap.ram_address()
        copied = 0
        full = t.base is not snap
        if full:
            # Copy what the snapshot holds; zero the rest by freeing the memfd's pages there.
            dst = p.memory.host_address(0)
            for off, length in snap.data_ranges:
                ctypes.memmove(dst + off, src + off, length)
                copied += length // PAGE_SIZE
            for off, length in _complement(snap.data_ranges, p.memory.size):
                if not punch_hole(p.memory.memfd, off, length):
                    ctypes.memset(dst + off, 0, length)
            t.dirty_bitmaps(p.vm, p.memory)  # restart the log from here
            t.base = snap
        else:
            for r, bm in t.dirty_bitmaps(p.vm, p.memory, keep_hot=True):
                copied += _copy_pages(r.host_addr, src + r.memfd_offset, dirty_runs(bm))
        t.host_dirty.clear()
        vm = p.vm
        chips, pit, clock = snap.vm_prepared()
        for chip in chips:
            vm.set_irqchip(chip)
        if pit is not None:
            vm.set_pit2(pit)
        if clock is not None:
            vm.set_clock(clock)
        for v, st in zip(p.vcpus, snap.vcpus):
            _restore_vcpu(v, st, t)
        _restore_serial(p.serial, snap.serial)
    return {"pages_copied": copied, "full": full, "ms": (time.perf_counter() - t0) * 1000}

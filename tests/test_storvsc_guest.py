"""The guest's storvsc VSC (guest_images/rt/k_storvsc.c, u_storvsc.c) against hvkvm's storvsc VSP
(both data planes), in real partitions: the ``disk_fill``, ``disk_check`` and ``disk_bench``
images drive raw image files through the Linux-style handshake and GPA-direct SRBs, from a ring-3
task polling the rings and from ring 0 with interrupt-driven completions.

What the images report (PROTOCOL.md, "Command line"), SYNC values are ``args[1..]``:
  1 probed: protocol version, blocks, max transfer bytes, qd max for the I/O size, write protected
  2 disk_fill flushed: sectors, bytes, WRITEs, flushes
  3 disk_check done: sectors, bytes, READs
  10/11/12 disk_bench: before the timed loop (mode, bs, qd, count, seconds), after it (I/Os,
     bytes, microseconds, kicks, interrupt waits), after verifying (I/Os and bytes verified,
     prefill I/Os, unexpected and unsolicited completions)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from hvkvm import images
from hvkvm.partition.config import PartitionConfig
from hvkvm.vsp import storvsc as storvsc_mod
from hvkvm.vsp import storvsc_wire as sw
from hvkvm.vsp.disk import Disk, create_disk
from hvkvm.vsp.storvsc import StorvscVsp

kvm = pytest.mark.kvm

MiB = 1 << 20
SECTOR = 512
PLANES = ["c", "python"]
WIN10 = sw.VMSTOR_PROTO_VERSION_WIN10
WIN8_1 = sw.VMSTOR_PROTO_VERSION_WIN8_1
WIN8 = sw.VMSTOR_PROTO_VERSION_WIN8
RQST_INIT = (1 << 64) - 3            # Linux's VMBUS_RQST_INIT


@pytest.fixture(scope="module")
def image():
    """name -> ELF path of the three storage images (built once)."""
    return {n: str(images.image_path(n)) for n in ("disk_fill", "disk_check", "disk_bench")}


class Storage:
    """Disks and partitions of one test; partitions are closed before their disks."""

    def __init__(self, make_partition, tmp_path, image):
        self.make_partition = make_partition
        self.tmp = tmp_path
        self.image = image
        self.parts = []
        self.disks = []

    def new_disk(self, name="disk.img", size=8 * MiB) -> str:
        path = str(self.tmp / name)
        create_disk(path, size)
        return path

    def open(self, path, readonly=False, direct=False) -> Disk:
        d = Disk(path, readonly=readonly, direct=direct)
        self.disks.append(d)
        return d

    def run(self, name, cmdline, paths, plane="c", readonly=False, direct=False, timeout=60,
            vsp_kw=None, memory=64 * MiB):
        """Boot image ``name`` with one storvsc controller per path; returns (result, syncs,
        vsps). The partition and disks are closed afterwards (disks are free for the next
        run)."""
        paths = paths if isinstance(paths, list) else [paths]
        disks = [self.open(p, readonly, direct) for p in paths]
        vsps = [StorvscVsp(d, plane=plane, **(vsp_kw or {})) for d in disks]
        cfg = PartitionConfig(image=self.image[name], cmdline=f"{name} {cmdline}", vsps=vsps,
                              timeout=timeout, memory=memory)
        p = self.make_partition(cfg)
        self.parts.append(p)
        r = p.run()
        p.close()
        for d in disks:
            d.close()
        syncs = {}
        for _vcpu, args in r.syncs:
            syncs[args[0]] = tuple(args[1:])     # always 5 values (unused ones 0)
        return r, syncs, vsps

    def close(self):
        for p in reversed(self.parts):
            p.close()
        for d in self.disks:
            d.close()


@pytest.fixture
def storage(make_partition, tmp_path, image):
    s = Storage(make_partition, tmp_path, image)
    yield s
    s.close()


def ok(r):
    assert r.passed, f"{r.status}: {r.reason}\n" + "\n".join(r.logs) + \
        r.serial.decode(errors="replace")[-2000:]


def stats(vsp) -> dict:
    """Counters of the VSP's (only, closed) channel."""
    assert len(vsp.closed_stats) == 1, vsp.closed_stats
    return vsp.closed_stats[0]


def bench_json(r) -> dict:
    lines = [ln for ln in r.serial.decode(errors="replace").splitlines()
             if ln.startswith('{"image":"disk_bench"')]
    assert len(lines) == 1, r.serial
    return json.loads(lines[0])


def filled(seed: int, sectors: int, first: int = 0) -> bytes:
    """What disk_fill writes to sectors [first, first + sectors)."""
    zero = bytes(SECTOR - 16)
    return b"".join(struct.pack("<QQ", lba, seed) + zero for lba in range(first, first + sectors))


def host_check_filled(path: str, seed: int) -> None:
    data = open(path, "rb").read()
    n = len(data) // SECTOR
    if data != filled(seed, n):
        bad = next(i for i in range(n)
                   if data[i * SECTOR:(i + 1) * SECTOR] != filled(seed, 1, i))
        pytest.fail(f"sector {bad} is not what disk_fill writes: "
                    f"{data[bad * SECTOR:bad * SECTOR + 32].hex()}")


def sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---- disk_fill / disk_check -----------------------------------------------------------------

@kvm
@pytest.mark.parametrize("fill_plane,check_plane", [("c", "python"), ("python", "c")])
def test_a_disk_filled_by_one_run_is_checked_by_another(storage, fill_plane, check_plane):
    path = storage.new_disk(size=8 * MiB)
    sectors = 8 * MiB // SECTOR
    r, syncs, (vsp,) = storage.run("disk_fill", "seed=0x5eed", path, plane=fill_plane)
    ok(r)
    version, blocks, max_transfer, _qd_max, wp = syncs[1]
    assert (version, blocks, max_transfer, wp) == (WIN10, sectors, 1 << 20, 0)
    assert syncs[2][:4] == (sectors, 8 * MiB, 8 * MiB // 65536, 1)
    st = stats(vsp)
    assert st["srbs"] == 3 + 128 + 1 and st["errors"] == 0   # probe, WRITEs, SYNC CACHE
    if fill_plane == "c":
        assert st["writes"] == 128 and st["flushes"] == 1
    # The host sees exactly disk_fill's format in the file ...
    host_check_filled(path, 0x5EED)
    # ... and a second partition, on the other data plane, reads it back.
    r, syncs, (vsp,) = storage.run("disk_check", "seed=0x5eed", path, plane=check_plane)
    ok(r)
    assert syncs[3][:3] == (sectors, 8 * MiB, 128)
    assert any(f"{sectors} sectors ({8 * MiB} bytes) good" in ln for ln in r.logs), r.logs


@kvm
@pytest.mark.parametrize("plane", PLANES)
def test_fill_and_check_from_ring0_with_interrupts(storage, plane):
    path = storage.new_disk(size=1 * MiB)
    r, syncs, _ = storage.run("disk_fill", "seed=3 ring=0 qd=4 bs=32768", path, plane=plane)
    ok(r)
    assert syncs[2][:4] == (2048, MiB, 32, 1)
    host_check_filled(path, 3)
    r, syncs, _ = storage.run("disk_check", "seed=3 ring=0 qd=3", path, plane=plane)
    ok(r)
    assert syncs[3][:3] == (2048, MiB, 16)


@kvm
@pytest.mark.parametrize("bs,buf_offset", [(6144, 1000), (512, 3840), (1536, 4095)])
def test_transfers_that_cross_page_boundaries(storage, bs, buf_offset):
    """Buffers that start inside a page and end in another (a 512-byte sector split 256/256,
    6 KiB over three pages): the PFN lists are right both ways."""
    path = storage.new_disk(size=2 * MiB)
    r, _, _ = storage.run("disk_fill", f"seed=11 bs={bs} buf_offset={buf_offset} qd=7", path)
    ok(r)
    host_check_filled(path, 11)
    r, syncs, _ = storage.run("disk_check", f"seed=11 bs={bs} buf_offset={buf_offset} qd=5",
                              path, plane="python")
    ok(r)
    assert syncs[3][0] == 4096


@kvm
def test_a_disk_whose_size_is_no_multiple_of_the_io_size(storage):
    """1 MiB + 3 sectors: the last WRITE and READ are short ones that end at the last LBA."""
    size = MiB + 3 * SECTOR
    path = storage.new_disk(size=size)
    r, syncs, _ = storage.run("disk_fill", "seed=8 bs=65536", path)
    ok(r)
    assert syncs[1][1] == 2051 and syncs[2][:3] == (2051, size, 17)
    host_check_filled(path, 8)
    r, syncs, _ = storage.run("disk_check", "seed=8 bs=4096 qd=32", path, plane="python")
    ok(r)
    assert syncs[3][:3] == (2051, size, 257)


@kvm
@pytest.mark.parametrize("plane", PLANES)
def test_o_direct_disk_with_unaligned_buffers(storage, plane):
    """O_DIRECT images take guest buffers that are not 512-byte aligned through the bounce
    buffer; the bytes are the same."""
    from hvkvm.vsp.disk import DiskError
    path = storage.new_disk(size=1 * MiB)
    try:
        Disk(path, direct=True).close()
    except DiskError as e:
        pytest.skip(str(e))
    r, _, (vsp,) = storage.run("disk_fill", "seed=12 bs=6144 buf_offset=100", path, plane=plane,
                               direct=True)
    ok(r)
    if plane == "c":
        assert stats(vsp)["bounced"] > 0
    host_check_filled(path, 12)
    r, syncs, _ = storage.run("disk_check", "seed=12 bs=3584 buf_offset=7", path, plane=plane,
                              direct=True)
    ok(r)
    assert syncs[3][0] == 2048


@kvm
@pytest.mark.parametrize("what,expect", [
    ("seed", "LBA 0: bytes 8-15 hold 0x2a, expected the seed 0x2b"),
    ("lba", "LBA 1234: bytes 0-7 hold 0x4c2"),
    ("zero", "LBA 777: byte 100 is not zero"),
])
def test_check_names_the_first_bad_lba(storage, what, expect):
    path = storage.new_disk(size=4 * MiB)
    n = 4 * MiB // SECTOR
    data = bytearray(filled(42, n))
    seed = 42
    if what == "seed":
        seed = 43
    elif what == "lba":
        # sectors 1234 and 5000 claim other LBAs; the lower one is reported
        data[1234 * SECTOR:1234 * SECTOR + 8] = struct.pack("<Q", 1234 ^ 0x10)
        data[5000 * SECTOR:5000 * SECTOR + 8] = struct.pack("<Q", 7)
    else:
        data[777 * SECTOR + 100] = 1
        data[3000 * SECTOR + 400] = 1
    with open(path, "r+b") as f:
        f.write(data)
    r, syncs, _ = storage.run("disk_check", f"seed={seed} qd=16 bs=8192", path)
    assert r.status == "assert", r.reason
    assert expect in r.reason, r.reason
    assert 3 not in syncs


_KILL9_CHILD = textwrap.dedent("""
    import os, signal, sys
    from hvkvm.partition.config import PartitionConfig
    from hvkvm.partition.partition import ChildPartition
    from hvkvm.vsp.disk import Disk
    from hvkvm.vsp.storvsc import StorvscVsp
    image, path, plane, seed = sys.argv[1:5]

    def on_sync(vcpu, uc):
        if uc.args[0] == 2:      # the guest has the SYNCHRONIZE CACHE completion
            os.kill(os.getpid(), signal.SIGKILL)

    disk = Disk(path)
    cfg = PartitionConfig(image=image, cmdline=f"disk_fill seed={seed} qd=16 bs=131072",
                          vsps=[StorvscVsp(disk, plane=plane)], on_sync=on_sync, timeout=60)
    r = ChildPartition(cfg).run()
    print("not killed:", r.status, r.reason, flush=True)
""")


@kvm
def test_a_flushed_fill_survives_kill_9_of_the_parent(storage, tmp_path):
    """The parent process is SIGKILLed the moment the guest holds the flush's completion (in its
    SYNC 2 callback); the image has every sector of that fill. Several rounds on one image, each
    rewriting every sector, alternating data planes; then a guest reads the last one back.
    (kill -9 loses what the process held, not the page cache: nothing may be held back.)"""
    rounds = int(os.environ.get("HVKVM_KILL9_ROUNDS", "4"))
    path = storage.new_disk(size=4 * MiB)
    script = tmp_path / "kill9_child.py"
    script.write_text(_KILL9_CHILD)
    for seed in range(100, 100 + rounds):
        plane = PLANES[seed % 2]
        child = subprocess.run([sys.executable, str(script), storage.image["disk_fill"], path,
                                plane, str(seed)], capture_output=True, text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
        host_check_filled(path, seed)
    r, syncs, _ = storage.run("disk_check", f"seed={seed}", path)
    ok(r)
    assert syncs[3][0] == 8192


# ---- read-only disks ------------------------------------------------------------------------

@kvm
@pytest.mark.parametrize("plane", PLANES)
def test_a_read_only_disk_refuses_writes_with_data_protect(storage, plane):
    path = storage.new_disk(size=1 * MiB)
    with open(path, "r+b") as f:
        f.write(filled(9, 2048))
    before = sha(path)
    r, syncs, (vsp,) = storage.run("disk_fill", "seed=10", path, plane=plane, readonly=True)
    assert r.status == "assert", r.reason
    assert ("WRITE(16) (0x8a) LBA 0 x 128: CHECK CONDITION, sense key 0x7 DATA PROTECT, "
            "ASC 0x27 ASCQ 0x00") in r.reason, r.reason
    assert syncs[1][4] == 1                      # MODE SENSE's WP bit: write protected
    assert 2 not in syncs
    assert sha(path) == before
    # The bench's writes too, from ring 0 ...
    r, _, _ = storage.run("disk_bench", "mode=randwrite count=10 qd=2 ring=0", path,
                          plane=plane, readonly=True)
    assert r.status == "assert" and "sense key 0x7 DATA PROTECT" in r.reason, r.reason
    assert sha(path) == before
    # ... while reads work.
    r, syncs, _ = storage.run("disk_check", "seed=9", path, plane=plane, readonly=True)
    ok(r)
    assert syncs[1][4] == 1 and syncs[3][0] == 2048


# ---- disk_bench -----------------------------------------------------------------------------

def check_bench(r, syncs, vsp, mode, bs, qd, count, verify=1, ring=3):
    ok(r)
    j = bench_json(r)
    modes = {"read": 1, "write": 2, "randread": 3, "randwrite": 4}
    assert (j["mode"], j["bs"], j["qd"], j["ring"], j["verify"]) == (mode, bs, qd, ring, verify)
    assert j["ios"] == count and j["bytes"] == count * bs
    assert j["iops"] > 0 and j["seconds"] > 0 and j["mb_per_s"] > 0
    assert 0 < j["p50_us"] <= j["p99_us"] <= j["max_us"] and 0 < j["mean_us"] <= j["max_us"]
    assert j["max_inflight"] == qd and j["ring_full"] == 0
    assert syncs[10] == (modes[mode], bs, qd, count, 0)
    ios, nbytes, us, _kicks, _waits = syncs[11]
    assert (ios, nbytes) == (count, count * bs) and us > 0
    verified, vbytes, prefill, unexpected, unsolicited = syncs[12]
    assert (unexpected, unsolicited) == (0, 0)
    reads = mode.endswith("read")
    if verify and reads:
        assert verified == count and prefill > 0
    elif verify:
        assert 0 < verified <= count and vbytes == verified * bs and prefill == 0
    # Every request reached the host exactly once: probe (3), prefill + its flush, the timed
    # I/Os, the flush and read-back after writes.
    st = stats(vsp)
    expect = 3 + count + ((prefill + 1) if verify and reads else 0) + \
        ((1 + verified) if verify and not reads else 0)
    assert st["srbs"] == expect and st["errors"] == 0 and st["invalid"] == 0
    return j


@kvm
@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("mode", ["read", "write", "randread", "randwrite"])
def test_bench_smoke_each_mode_with_verify(storage, mode, plane):
    path = storage.new_disk(size=4 * MiB)
    count, bs, qd = 400, 4096, 8
    r, syncs, (vsp,) = storage.run(
        "disk_bench", f"mode={mode} bs={bs} qd={qd} count={count} verify=1", path, plane=plane)
    check_bench(r, syncs, vsp, mode, bs, qd, count)


def qd_max(ring_pages: int, bs: int) -> int:
    """The deepest queue two rings of ring_pages data pages hold for bs-byte I/Os at any buffer
    alignment (the guest's storvsc_qd_max, computed independently)."""
    size = ring_pages * 4096
    pfns = (bs + 4095) // 4096 + 1
    request = 16 + (16 + 8 * pfns) + 64 + 8       # descriptor, mpb range, vstor_packet, trailer
    completion = 16 + 64 + 8
    return min(256, (size - 8) // request, (size - 8) // completion)


@kvm
@pytest.mark.parametrize("mode", ["read", "randwrite"])
def test_bench_large_transfers(storage, mode):
    path = storage.new_disk(size=16 * MiB)
    r, syncs, (vsp,) = storage.run(
        "disk_bench", f"mode={mode} bs=1048576 qd=4 count=40 verify=1", path)
    check_bench(r, syncs, vsp, mode, 1 << 20, 4, 40)
    assert syncs[1][3] == qd_max(32, 1 << 20) == 60


@kvm
@pytest.mark.parametrize("qd", [1, 2, 3, 16, "max"])
def test_queue_depth_from_one_to_what_the_ring_holds(storage, qd):
    """With 2-page rings the ring, not the slot table, is the limit: at qd=max every request's
    packet (buffers 512 bytes into a page: 2 PFNs each) is in the send ring at once."""
    path = storage.new_disk(size=4 * MiB)
    limit = qd_max(2, 4096)
    assert limit == 68
    n = limit if qd == "max" else qd
    count = 4 * n + 37
    r, syncs, (vsp,) = storage.run(
        "disk_bench", f"mode=randwrite bs=4096 qd={qd} count={count} verify=1 ring_pages=2 "
        f"buf_offset=512", path)
    assert syncs[1][3] == limit
    check_bench(r, syncs, vsp, "randwrite", 4096, n, count)


@kvm
def test_a_queue_deeper_than_the_ring_is_refused(storage):
    path = storage.new_disk(size=1 * MiB)
    r, _, _ = storage.run("disk_bench", "mode=randread qd=69 count=10 ring_pages=2", path)
    assert r.status == "assert"
    assert "qd 69: the rings hold 1..68 requests of 4096 bytes" in r.reason, r.reason


class SlowProtocol(storvsc_mod.Protocol):
    """The Python plane answering every SRB 50 ms late: a ring-0 guest is asleep by then."""

    def handle(self, pkt):
        if self.ready:
            time.sleep(0.05)
        return super().handle(pkt)


@kvm
def test_ring0_sleeps_until_the_completion_interrupt(storage, monkeypatch):
    monkeypatch.setattr(storvsc_mod, "Protocol", SlowProtocol)
    path = storage.new_disk(size=1 * MiB)
    r, syncs, (vsp,) = storage.run("disk_bench", "mode=randread qd=1 count=8 ring=0", path,
                                   plane="python")
    check_bench(r, syncs, vsp, "randread", 4096, 1, 8, verify=0, ring=0)
    _ios, _bytes, _us, kicks, waits = syncs[11]
    # each I/O's completion comes 50 ms later: the guest sleeps for it (all but a descheduled
    # few) and the interrupt wakes it
    assert waits >= 4, "ring 0 did not sleep for the completions' interrupts"
    assert kicks >= 1
    assert bench_json(r)["mean_us"] >= 50000
    assert any("ring 0 (interrupts)" in ln for ln in r.logs), r.logs


@kvm
def test_ring0_takes_the_c_planes_completion_interrupts(storage):
    """8 MiB reads: the C plane's copy takes long enough that the ring-0 guest (emulated on
    kvm_pvm, native on VT-x/AMD-V) is often asleep when the completion comes through the irqfd."""
    path = storage.new_disk(size=16 * MiB)
    bs = 8 * MiB
    r, syncs, (vsp,) = storage.run("disk_bench", f"mode=read bs={bs} qd=1 count=16 ring=0",
                                   path, vsp_kw={"max_transfer_bytes": bs})
    check_bench(r, syncs, vsp, "read", bs, 1, 16, verify=0, ring=0)
    assert syncs[11][4] > 0, "no completion arrived while ring 0 slept"


@kvm
@pytest.mark.parametrize("plane", PLANES)
def test_bench_from_ring0_with_verify(storage, plane):
    path = storage.new_disk(size=1 * MiB)
    r, syncs, (vsp,) = storage.run("disk_bench", "mode=randread qd=2 count=30 verify=1 ring=0 "
                                   "span=65536", path, plane=plane)
    check_bench(r, syncs, vsp, "randread", 4096, 2, 30, ring=0)
    # Polling from ring 0 never sleeps in the loop.
    r, syncs, (vsp,) = storage.run("disk_bench", "mode=randwrite qd=3 count=20 ring=0 poll=1",
                                   path, plane=plane)
    check_bench(r, syncs, vsp, "randwrite", 4096, 3, 20, verify=0, ring=0)
    assert syncs[11][4] == 0
    assert any("ring 0 (polling)" in ln for ln in r.logs), r.logs


@kvm
def test_bench_runs_for_a_time(storage):
    path = storage.new_disk(size=4 * MiB)
    r, syncs, _ = storage.run("disk_bench", "mode=randread qd=4 seconds=1", path)
    ok(r)
    j = bench_json(r)
    assert syncs[10] == (3, 4096, 4, 0, 1)
    assert 1.0 <= j["seconds"] < 3.0 and j["ios"] > 100
    assert r.wall_ms >= 1000


# ---- protocol -------------------------------------------------------------------------------

class RecordingProtocol(storvsc_mod.Protocol):
    """The VSP's protocol state, recording (operation, version, payload bytes, trans_id, flags
    of every request the guest sends before the data path starts."""

    log: list = []

    def handle(self, pkt):
        raw = bytes(pkt.payload[:sw.VSTOR_PACKET_SIZE]).ljust(sw.VSTOR_PACKET_SIZE, b"\0")
        req = sw.vstor_packet.from_buffer_copy(raw)
        if req.operation != sw.VSTOR_OPERATION_EXECUTE_SRB:
            self.log.append((req.operation, req.version.major_minor, len(pkt.payload),
                             pkt.trans_id, req.flags))
        return super().handle(pkt)


@kvm
@pytest.mark.parametrize("offered,expect", [
    ((WIN10, WIN8_1, WIN8), WIN10),
    ((WIN8_1, WIN8), WIN8_1),
    ((WIN8,), WIN8),
    ((sw.VMSTOR_PROTO_VERSION_WIN7, sw.VMSTOR_PROTO_VERSION_WIN6), None),
])
def test_handshake_as_linux_newest_version_first(storage, monkeypatch, offered, expect):
    monkeypatch.setattr(sw, "SUPPORTED_VERSIONS", offered)
    monkeypatch.setattr(storvsc_mod, "Protocol", RecordingProtocol)
    RecordingProtocol.log = []
    path = storage.new_disk(size=1 * MiB)
    r, syncs, _ = storage.run("disk_bench", "mode=randread count=20 qd=2 verify=1", path)
    asked = [WIN10, WIN8_1, WIN8]
    tried = asked[:asked.index(expect) + 1] if expect else asked
    ops = [(sw.VSTOR_OPERATION_BEGIN_INITIALIZATION, 0)] + \
        [(sw.VSTOR_OPERATION_QUERY_PROTOCOL_VERSION, v) for v in tried]
    if expect:
        ops += [(sw.VSTOR_OPERATION_QUERY_PROPERTIES, 0),
                (sw.VSTOR_OPERATION_END_INITIALIZATION, 0)]
    log = RecordingProtocol.log
    assert [(op, v) for op, v, *_ in log] == ops
    # Linux's storvsc_execute_vstor_op: whole 64-byte packets, VMBUS_RQST_INIT, completion flag
    assert all(n == 64 and tid == RQST_INIT and flags == sw.REQUEST_COMPLETION_FLAG
               for _op, _v, n, tid, flags in log)
    if expect is None:
        assert r.status == "assert" and "storvsc_open: -107 (protocol error" in r.reason, r.reason
        return
    ok(r)
    assert syncs[1][0] == expect
    assert bench_json(r)["protocol"] == f"{expect >> 8}.{expect & 0xff}"


class MeddlingProtocol(storvsc_mod.Protocol):
    """Before answering the n-th SRB, the host also sends what a VSC must survive: an
    unsolicited ENUMERATE_BUS (in-band, trans_id 0, as Hyper-V does after a LUN change), a
    completion for a request that was never made, and a completion repeating the previous
    SRB's trans_id (already completed)."""

    vsp = None
    at = 50

    def handle(self, pkt):
        if self.ready and pkt.type != storvsc_mod.VM_PKT_COMP:
            self.srbs_seen = getattr(self, "srbs_seen", 0) + 1
            if self.srbs_seen == self.at:
                out = next(ch.oc.outring for ch in self.vsp.channels.values()
                           if ch.protocol is self)
                p = sw.vstor_packet()
                p.operation = sw.VSTOR_OPERATION_ENUMERATE_BUS
                assert out.write(bytes(p), trans_id=0)
                p.operation = sw.VSTOR_OPERATION_COMPLETE_IO
                assert out.write_completion(bytes(p), trans_id=(0x7777 << 16) | 3)
                assert out.write_completion(bytes(p), trans_id=self.previous)
            self.previous = pkt.trans_id
        return super().handle(pkt)


@kvm
def test_unsolicited_and_unmatched_completions_are_dropped(storage, monkeypatch):
    monkeypatch.setattr(storvsc_mod, "Protocol", MeddlingProtocol)
    path = storage.new_disk(size=1 * MiB)
    disk = storage.open(path)
    vsp = StorvscVsp(disk, plane="python")
    MeddlingProtocol.vsp = vsp
    cfg = PartitionConfig(image=storage.image["disk_bench"], timeout=60, vsps=[vsp],
                          cmdline="disk_bench mode=randread qd=1 count=100 verify=1 span=65536")
    p = storage.make_partition(cfg)
    r = p.run()
    p.close()
    ok(r)
    syncs = {args[0]: tuple(args[1:]) for _v, args in r.syncs}
    _verified, _vbytes, _prefill, unexpected, unsolicited = syncs[12]
    assert (unexpected, unsolicited) == (2, 1)
    assert syncs[11][0] == 100


@kvm
def test_the_second_controller_is_a_different_disk(storage):
    a = storage.new_disk("a.img", 1 * MiB)
    b = storage.new_disk("b.img", 2 * MiB)
    r, syncs, vsps = storage.run("disk_fill", "seed=21 disk=1", [a, b])
    ok(r)
    assert syncs[1][1] == 4096 and syncs[2][0] == 4096
    host_check_filled(b, 21)
    assert open(a, "rb").read() == bytes(MiB)
    assert len(vsps[0].closed_stats) == 0 and stats(vsps[1])["srbs"] == 3 + 32 + 1
    assert os.path.getsize(a) == MiB

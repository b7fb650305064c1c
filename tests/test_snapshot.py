"""Snapshots: what a restore puts back, what the dirty log makes it copy, files and their checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from hvkvm.bench.boot import CODE_GPA, UCALL_DONE, UCALL_READY, _dirty_code
from hvkvm.guesttests import FastReset, discover, outcome, run_test
from hvkvm.images import image_path
from hvkvm.kvm import abi
from hvkvm.partition.config import PartitionConfig
from hvkvm.partition.snapshot import (FORMAT_VERSION, Snapshot, SnapshotError, dirty_runs,
                                      mark_dirty)
from hvkvm.partition.ucall import UCALL_SYNC, encode

PAGE = 4096


def test_dirty_runs_merge_adjacent_pages_across_words():
    bm = bytearray(32)
    for page in (0, 1, 2, 63, 64, 65, 200):
        bm[page >> 3] |= 1 << (page & 7)
    assert dirty_runs(bm) == [(0, 3), (63, 3), (200, 1)]
    assert dirty_runs(bytearray(b"\xff" * 16)) == [(0, 128)]
    assert dirty_runs(bytearray(16)) == []


# -- a raw guest that dirties pages on request -------------------------------------------------


INC_BYTE_RDI = b"\xfe\x07\x90"    # inc byte [rdi]; nop: every write changes the page


def dirtier(make_partition, memory=16 << 20):
    """Raw long-mode code: SYNC 0, then ``inc byte [RDI + i*RSI]`` for RCX pages, SYNC 1."""
    cfg = PartitionConfig(raw=_dirty_code(INC_BYTE_RDI), raw_gpa=CODE_GPA, raw_mode="long",
                          memory=memory, timeout=60, on_sync=lambda i, uc: "stop")
    p = make_partition(cfg)
    p.memory.write(UCALL_READY, encode(UCALL_SYNC, (0,)))
    p.memory.write(UCALL_DONE, encode(UCALL_SYNC, (1,)))
    r = p.run()
    assert r.syncs == [(0, (0, 0, 0, 0, 0, 0))], r.reason
    return p


def dirty(p, first_page: int, count: int, stride: int = 1):
    v = p.vcpus[0]
    regs = v.get_regs()
    regs.rcx, regs.rsi, regs.rdi = count, stride * PAGE, first_page * PAGE
    v.set_regs(regs)
    r = p.run()
    assert r.syncs == [(0, (1, 0, 0, 0, 0, 0))], r.reason


def ram_hash(p) -> str:
    return hashlib.sha256(p.memory.read(0, p.memory.size)).hexdigest()


@pytest.mark.kvm
def test_restore_copies_back_only_the_pages_the_guest_wrote(make_partition):
    p = dirtier(make_partition)
    snap = p.snapshot()
    before = ram_hash(p)
    dirty(p, 1024, 37, stride=3)                  # 37 scattered pages above the code
    assert ram_hash(p) != before
    info = p.restore(snap)
    assert not info["full"]
    # ... plus the page directory, where the CPU sets the 2 MiB pages' dirty bits
    assert info["pages_copied"] == 37 + 1
    assert ram_hash(p) == before
    dirty(p, 2048, 512)                           # one contiguous run
    assert p.restore(snap)["pages_copied"] == 512 + 1
    assert ram_hash(p) == before


@pytest.mark.kvm
def test_pages_the_guest_keeps_writing_stay_writable_and_are_still_restored(make_partition):
    p = dirtier(make_partition)
    snap = p.snapshot()
    before = ram_hash(p)
    for _ in range(3):
        dirty(p, 1024, 20)                        # the same 20 pages (+ the page directory)
        assert ram_hash(p) != before
        assert p.restore(snap)["pages_copied"] == 21
        assert ram_hash(p) == before
    kept = p._snap_tracker.previous[0].bit_count()
    assert kept == 21
    p.restore(snap)                               # nothing written: kept pages copied anyway
    assert ram_hash(p) == before
    dirty(p, 2048, 5)                             # others: copied with the kept ones
    assert p.restore(snap)["pages_copied"] == 21 + 5
    assert ram_hash(p) == before


@pytest.mark.kvm
def test_a_restored_guest_runs_the_same_path_again(make_partition):
    p = dirtier(make_partition)
    snap = p.snapshot()
    for _ in range(3):
        dirty(p, 1024, 10)                        # the run ends at SYNC 1 each time
        p.restore(snap)
    assert p.vcpus[0].get_regs().rip == snap.vcpus[0].rip


@pytest.mark.kvm
def test_host_writes_need_mark_dirty_and_then_are_restored(make_partition):
    p = dirtier(make_partition)
    snap = p.snapshot()
    p.memory.write(0x300000, b"host")             # not in KVM's dirty log
    p.memory.write(0x301000, b"also")
    mark_dirty(p, 0x301000, 4)
    info = p.restore(snap)
    assert info["pages_copied"] == 1
    assert p.memory.read(0x301000, 4) == bytes(4)
    assert p.memory.read(0x300000, 4) == b"host"  # the documented contract: unmarked stays


@pytest.mark.kvm
def test_registers_lapic_ioapic_pit_and_uart_come_back(make_partition):
    p = dirtier(make_partition)
    snap = p.snapshot()
    v = p.vcpus[0]
    regs = v.get_regs()
    regs.rax, regs.r15 = 0x1111, 0x2222
    v.set_regs(regs)
    sregs = v.get_sregs()
    sregs.cr2 = 0xBAD000
    v.set_sregs(sregs)
    lapic = v.get_lapic()
    lapic.regs[0x80] = 0x70                       # TPR
    v.set_lapic(lapic)
    io = p.vm.get_irqchip(abi.KVM_IRQCHIP_IOAPIC)
    io.chip.ioapic.redirtbl[4].bits = 0x44        # unmasked, vector 0x44
    p.vm.set_irqchip(io)
    dr = v.get_debugregs()
    dr.db[0] = 0x1234
    v.set_debugregs(dr)
    KERNEL_GS_BASE = 0xC0000102
    v.set_msrs({KERNEL_GS_BASE: 0xFFFF_8000_0000_1234})
    p.serial.write(3, b"\x83")                    # LCR: DLAB, 8 bits
    p.restore(snap)
    regs2 = v.get_regs()
    assert bytes(regs2) == snap.vcpus[0].regs
    assert v.get_sregs().cr2 == abi.kvm_sregs.from_buffer_copy(snap.vcpus[0].sregs).cr2
    assert v.get_lapic().regs[0x80] != 0x70
    assert p.vm.get_irqchip(abi.KVM_IRQCHIP_IOAPIC).chip.ioapic.redirtbl[4].bits != 0x44
    assert v.get_debugregs().db[0] == 0
    assert p.serial._lcr == snap.serial["_lcr"]
    # MSRs: every one of KVM_GET_MSR_INDEX_LIST that reads was captured, and is put back.
    msrs = snap.vcpus[0].msrs
    assert len(msrs) > 10
    assert v.get_msrs([KERNEL_GS_BASE])[KERNEL_GS_BASE] == msrs[KERNEL_GS_BASE] == 0


@pytest.mark.kvm
def test_snapshot_from_a_sync_callback_pauses_the_other_vcpus(make_partition):
    holder = {}

    def on_sync(index, uc):
        if uc.args[0] == 1 and "snap" not in holder:
            holder["snap"] = holder["p"].snapshot()

    cfg = PartitionConfig(image=image_path("smp"), cmdline="smp cpus=2", vcpus=2, timeout=60,
                          on_sync=on_sync)
    p = holder["p"] = make_partition(cfg)
    first = p.run()
    assert first.passed, first.reason
    snap = holder["snap"]
    assert len(snap.vcpus) == 2
    p.restore(snap)
    again = p.run()                               # continues from the first check-in
    assert again.passed, again.reason
    assert [a for _, a in again.syncs if a[0] == 2][0][1] == 2   # both vCPUs counted


@pytest.mark.kvm
def test_a_full_restore_zeroes_what_the_snapshot_did_not_have(make_partition):
    p = dirtier(make_partition)
    snap = p.snapshot()
    dirty(p, 1024, 4)
    later = p.snapshot()                          # the tracker's base moves to `later`
    p.memory.write(0x500000, b"junk")             # unmarked host write, any page
    info = p.restore(snap)                        # not the base: everything is copied
    assert info["full"]
    assert p.memory.read(0x500000, 4) == bytes(4)
    assert p.restore(snap)["pages_copied"] == 0   # and now it is the base again
    del later


# -- files -----------------------------------------------------------------------------------------


@pytest.mark.kvm
def test_a_snapshot_file_resumes_in_a_new_partition(make_partition, tmp_path):
    holder = {}

    def on_sync(index, uc):
        if uc.args[0] == 1:
            holder["p"].snapshot().save(tmp_path / "s.snap")

    cfg = dict(image=image_path("exits"), cmdline="exits kind=cpuid count=1000 ring=3",
               timeout=60)
    p = holder["p"] = make_partition(PartitionConfig(on_sync=on_sync, **cfg))
    assert p.run().passed
    snap = Snapshot.load(tmp_path / "s.snap")
    assert snap.version == FORMAT_VERSION and len(snap.vcpus) == 1
    q = make_partition(PartitionConfig(**cfg))
    assert q.restore(snap)["full"]
    r = q.run()
    assert r.passed, r.reason
    assert [a[0] for _, a in r.syncs] == [2]      # resumed after SYNC 1


@pytest.mark.kvm
def test_mismatched_or_damaged_snapshot_files_are_refused_with_the_reason(make_partition,
                                                                          tmp_path):
    p = dirtier(make_partition, memory=8 << 20)
    path = tmp_path / "s.snap"
    p.snapshot().save(path)
    snap = Snapshot.load(path)
    bigger = make_partition(PartitionConfig(raw=_dirty_code(), raw_gpa=CODE_GPA, raw_mode="long",
                                            memory=16 << 20))
    with pytest.raises(SnapshotError, match="8 MiB of RAM, this partition 16 MiB"):
        bigger.restore(snap)
    two = make_partition(PartitionConfig(raw=_dirty_code(), raw_gpa=CODE_GPA, raw_mode="long",
                                         memory=8 << 20, vcpus=2))
    with pytest.raises(SnapshotError, match="1 vCPUs, this partition 2"):
        two.restore(snap)
    other = make_partition(PartitionConfig(raw=b"\xf4", raw_gpa=CODE_GPA, raw_mode="long",
                                           memory=8 << 20))
    with pytest.raises(SnapshotError, match="snapshot was taken of raw code"):
        other.restore(snap)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "bad.snap").write_bytes(data)
    with pytest.raises(SnapshotError, match="damaged or truncated"):
        Snapshot.load(tmp_path / "bad.snap")
    (tmp_path / "short.snap").write_bytes(bytes(path.read_bytes()[:1000]))
    with pytest.raises(SnapshotError, match="damaged or truncated"):
        Snapshot.load(tmp_path / "short.snap")
    future = bytearray(path.read_bytes())
    future[8:12] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    (tmp_path / "v2.snap").write_bytes(future)
    with pytest.raises(SnapshotError, match=f"format version {FORMAT_VERSION + 1}"):
        Snapshot.load(tmp_path / "v2.snap")
    (tmp_path / "not.snap").write_bytes(b"hello")
    with pytest.raises(SnapshotError, match="not an hvkvm snapshot"):
        Snapshot.load(tmp_path / "not.snap")


@pytest.mark.kvm
def test_partitions_with_vmbus_devices_are_refused(make_partition):
    from hvkvm.vsp.echo import EchoVsp
    p = make_partition(PartitionConfig(image=image_path("hello"), cmdline="hello",
                                       vsps=[EchoVsp(plane="python")]))
    with pytest.raises(SnapshotError, match="Hyper-V interface"):
        p.snapshot()


def hvkvm(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hvkvm.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.kvm
def test_cli_snapshot_out_at_a_sync_stage_and_restore(tmp_path):
    snap = tmp_path / "exits.snap"
    cmd = ["--cmdline", "exits kind=pio count=50 ring=3"]
    r = hvkvm("run", "exits", *cmd, "--snapshot-out", str(snap), "--snapshot-at", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert f"snapshot at SYNC 1 written to {snap}" in r.stderr
    r = hvkvm("run", "exits", "--restore", str(snap), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "pass"
    assert "restored" in r.stderr and "exits_loop" not in doc["serial"]
    r = hvkvm("run", "hello", "--restore", str(snap))
    assert r.returncode == 2 and "snapshot was taken of exits" in r.stderr
    r = hvkvm("run", "exits", "--restore", str(snap), "--vcpus", "2")
    assert r.returncode == 2 and "use --vcpus 1" in r.stderr
    r = hvkvm("run", "exits", *cmd, "--snapshot-out", str(snap), "--snapshot-at", "7")
    assert r.returncode == 1 and "never sent SYNC 7" in r.stderr
    r = hvkvm("run", "exits", "--snapshot-at", "1")
    assert r.returncode == 2 and "needs --snapshot-out" in r.stderr


# -- guest tests from a snapshot -----------------------------------------------------------------


@pytest.mark.kvm
def test_guest_tests_from_the_dispatch_snapshot_match_booted_outcomes():
    tests = discover(image_path("selftest"))
    with FastReset(image_path("selftest")) as fast:
        got = {t.name: outcome(t, run_test(t, fast_reset=fast)) for t in tests}
        assert not fast.unavailable
        # one boot per vCPU count, then only the pages a test wrote come back
        assert len(fast.restores) == len(tests)
        assert all(not r["full"] and r["pages_copied"] < 64 for r in fast.restores)
    assert got == {t.name: "xfail" if t.xfail else "pass" for t in tests}


@pytest.mark.kvm
def test_hvkvm_test_reset_snapshot():
    r = hvkvm("test", "selftest", "--reset", "snapshot", "-k", "cmdline or printf or ring3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS  cmdline_reaches_the_test" in r.stdout and "fell back" not in r.stderr


@pytest.mark.kvm
def test_without_a_working_kvm_set_xsave_fpu_state_goes_through_kvm_set_fpu(make_partition,
                                                                           monkeypatch):
    from hvkvm.kvm.errors import KvmError
    from hvkvm.kvm.vcpu import Vcpu

    def set_xsave_fails(self, xsave):     # what kvm_pvm may do (xrstor)
        raise KvmError("KVM_SET_XSAVE", 22)

    monkeypatch.setattr(Vcpu, "set_xsave", set_xsave_fails)
    p = dirtier(make_partition)
    snap = p.snapshot()
    assert snap.fpu_mode == "fpu" and snap.vcpus[0].xsave is None
    assert any("KVM_GET/SET_FPU" in n for n in snap.notes)     # said, and kept with it
    fpu = p.vcpus[0].get_fpu()
    fpu.fcw = 0x27F
    p.vcpus[0].set_fpu(fpu)
    p.restore(snap)
    assert bytes(p.vcpus[0].get_fpu()) == snap.vcpus[0].fpu


@pytest.mark.kvm
def test_bench_boot_pieces_measure_restores_and_the_first_instruction():
    from hvkvm.bench import boot
    p = boot._partition()
    try:
        assert p.run().syncs == [(0, (0, 0, 0, 0, 0, 0))]
        snap = p.snapshot()
        row = boot.restore_case(p, snap, 0.01, repeats=1)
    finally:
        p.close()
    assert row["pages_dirtied"] == 164 and row["pages_copied"] >= 164
    assert row["restore_ms"] > 0
    first = boot.first_instruction(None)
    assert 0 < first["create_ms"] < first["total_ms"]
    text = boot.format_report({"memory_mib": 64, "restore": [row], "snapshot_ms": 1.0,
                               "later_snapshot_ms": 1.0,
                               "first_instruction": [{"guest": "raw", **first}],
                               "process": {"run_hello_ms": 1.0, "python_and_imports_ms": 1.0},
                               "goal_restore_1pct_under_1ms": True})
    assert "restore ms" in text and "first guest instruction" in text

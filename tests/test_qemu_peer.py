"""QEMU as a peer: it boots the same guest images (``-M microvm -kernel``, PVH), a cross-check that
the images are standard and that the runtime's boot, ring-3, SMP (INIT-SIPI-SIPI) and fault paths
work independently of hvkvm's host code.

Each case runs under TCG (QEMU's emulation of the architecture) and, where /dev/kvm is usable,
under KVM (``-cpu host,-arch-capabilities``: plain ``-cpu host`` aborts on MSR 0x10a on kvm_pvm).
QEMU ignores the ucall port, so the tests read the serial console and the isa-debug-exit status:
``(value << 1) | 1`` for the value the guest writes to port 0xf4 (hv_done(code) writes code,
an ASSERT 0x10, a FAULT 0x11); a triple fault with -no-reboot exits 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from hvkvm import images

QEMU = shutil.which("qemu-system-x86_64")
KVM_USABLE = os.access("/dev/kvm", os.R_OK | os.W_OK)

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                                            "(Debian: apt-get install qemu-system-x86)"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed"),
]

ACCELS = [
    pytest.param("tcg", id="tcg"),
    pytest.param("kvm", id="kvm",
                 marks=pytest.mark.skipif(not KVM_USABLE, reason="/dev/kvm is not usable")),
]

EXIT_DONE_0 = (0 << 1) | 1
EXIT_ASSERT = (0x10 << 1) | 1
EXIT_FAULT = (0x11 << 1) | 1
EXIT_TRIPLE_FAULT = 0
TIMEOUT = 120


def run_qemu(image: str, append: str, accel: str, smp: int = 1) -> tuple[int, str]:
    cmd = [QEMU, "-M", "microvm", "-m", "128M", "-smp", str(smp),
           "-kernel", str(images.image_path(image)), "-append", append,
           "-nographic", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]
    if accel == "kvm":
        cmd += ["-enable-kvm", "-cpu", "host,-arch-capabilities"]
    else:
        cmd += ["-accel", "tcg"]
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        pytest.fail(f"QEMU did not exit within {TIMEOUT} s; console so far:\n{out}")
    out = res.stdout.decode(errors="replace")
    if res.returncode not in (0, 1) and not out:
        err = res.stderr.decode(errors="replace")
        pytest.fail(f"QEMU failed ({res.returncode}): {err.strip()}")
    return res.returncode, out


def source_line(path: str, marker: str) -> int:
    text = (images.GUEST_IMAGES_DIR / path).read_text().splitlines()
    return next(i for i, ln in enumerate(text, 1) if marker in ln)


@pytest.mark.parametrize("accel", ACCELS)
def test_hello(accel):
    code, out = run_qemu("hello", "hello greeting=yes", accel)
    assert "Hello from the child partition (ring 0)" in out
    assert "cmdline: hello greeting=yes" in out
    assert "Hello from ring 3" in out
    assert "ring-3 task exited with 0" in out
    assert code == EXIT_DONE_0, out


@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("cpus", [2, 4])
def test_smp_brings_up_all_vcpus(accel, cpus):
    code, out = run_qemu("smp", f"cpus={cpus}", accel, smp=cpus)
    assert f"smp: {cpus} vCPUs checked in (mask {hex((1 << cpus) - 1)})" in out, out
    for i in range(cpus):
        assert f"smp: vCPU {i} checked in" in out
    assert code == EXIT_DONE_0, out


def test_smp_counts_check_ins_without_cpus():
    code, out = run_qemu("smp", "settle_ms=300", "tcg", smp=3)
    assert "smp: 3 vCPUs checked in (mask 0x7)" in out, out
    assert code == EXIT_DONE_0


def test_smp_missing_vcpu_is_an_assert():
    code, out = run_qemu("smp", "cpus=3 timeout_ms=200", "tcg", smp=2)
    assert "ASSERT failed" in out and "2 of 3 vCPUs checked in" in out, out
    assert code == EXIT_ASSERT


@pytest.mark.parametrize("accel", ACCELS)
def test_fault_triple_faults(accel):
    code, out = run_qemu("fault", "log=serial", accel)
    assert "expect a triple fault" in out
    assert "fault: triple-faulting on purpose" in out, "hv_log mirrored with log=serial"
    assert "still running" not in out
    assert code == EXIT_TRIPLE_FAULT, out


@pytest.mark.parametrize("accel", ACCELS)
def test_assert_from_ring3(accel):
    code, out = run_qemu("asserts", "", accel)
    line = source_line("images/asserts/u_asserts.c", "ASSERT-LINE cond")
    assert (f"ASSERT failed on vCPU 0 in ring 3 at images/asserts/u_asserts.c:{line}: "
            "one + one == 3: expected failure from ring 3") in out, out
    assert code == EXIT_ASSERT


@pytest.mark.parametrize("accel", ACCELS)
def test_assert_eq_from_ring0(accel):
    code, out = run_qemu("asserts", "ring=0 kind=eq", accel)
    line = source_line("images/asserts/u_asserts.c", "ASSERT-LINE eq")
    assert (f"in ring 0 at images/asserts/u_asserts.c:{line}: "
            "one + one == 3 (0x2 != 0x3): expected failure from ring 0") in out, out
    assert code == EXIT_ASSERT


@pytest.mark.parametrize("accel", ACCELS)
def test_ring3_write_to_kernel_page_faults(accel):
    code, out = run_qemu("ufault", "", accel)
    target = re.search(r"target=0x([0-9a-f]+)", out)
    assert target, out
    assert "FAULT: #PF page fault (vector 14) in ring 3 on vCPU 0, error code 0x7" in out, out
    assert f"cr2={int(target.group(1), 16):016x}" in out
    assert "cs=0033" in out
    assert code == EXIT_FAULT


@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("kind,ring,vector", [("ud", 0, 6), ("ud", 3, 6), ("gp", 3, 13),
                                              ("de", 3, 0), ("null", 0, 14)])
def test_faults_are_reported(accel, kind, ring, vector):
    code, out = run_qemu("ufault", f"kind={kind} ring={ring}", accel)
    assert re.search(rf"FAULT: .* \(vector {vector}\) in ring {ring} on vCPU 0", out), out
    assert code == EXIT_FAULT


@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("args", ["kind=cpuid count=200 ring=3", "kind=pio count=200 ring=3",
                                  "kind=mmio count=200 ring=3", "kind=pio count=200 ring=0",
                                  "kind=mmio count=200 ring=0", "kind=hlt count=50 ring=0"])
def test_exits(accel, args):
    code, out = run_qemu("exits", args, accel)
    assert f"exits: {args}" in out
    assert code == EXIT_DONE_0, out


@pytest.mark.parametrize("accel", ACCELS)
def test_timer_interrupts(accel):
    code, out = run_qemu("timer", "ticks=5 period_us=1000", accel)
    assert "timer: 6 interrupts (periodic every 1000 us, then one-shot)" in out, out
    assert code == EXIT_DONE_0


def test_exits_hlt_in_ring3_is_an_assert():
    code, out = run_qemu("exits", "kind=hlt ring=3", "tcg")
    assert "kind=hlt needs ring=0" in out
    assert code == EXIT_ASSERT

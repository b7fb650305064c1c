"""The hvkvm command: exit codes, one-line errors, summaries, JSON, on real KVM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HVKVM = [sys.executable, "-m", "hvkvm.cli"]


def hvkvm(*args, env=None, timeout=120):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(HVKVM + list(args), capture_output=True, text=True, timeout=timeout,
                          env=e)


def one_line_error(r):
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.kvm
def test_run_hello_greets_from_both_rings_and_exits_0():
    r = hvkvm("run", "hello", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert "Hello from the child partition (ring 0)" in r.stdout
    assert "Hello from ring 3" in r.stdout
    assert "cmdline: hello" in r.stdout
    summary = r.stderr.strip().splitlines()[-1]
    assert summary.startswith("hvkvm: pass:") and "exits: io" in summary and "r3" in summary


@pytest.mark.kvm
def test_run_fault_exits_1_with_registers_and_symbolized_rip():
    r = hvkvm("run", "fault", "--timeout", "60")
    assert r.returncode == 1
    assert "triple fault" in r.stderr
    assert "<hv_main+0x" in r.stderr
    assert "RIP=" in r.stderr and "RAX=" in r.stderr and "CR3=" in r.stderr


@pytest.mark.kvm
def test_run_json_prints_the_result_on_stdout():
    r = hvkvm("run", "hello", "--json", "--cmdline", "hello from json", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "pass" and doc["exit_code"] == 0
    assert "cmdline: hello from json" in doc["serial"]
    assert doc["exit_totals"]["io"]["ring3"] > 0
    assert "Hello from ring 3" in r.stderr   # COM1 moves to stderr under --json


@pytest.mark.kvm
def test_run_serial_to_file(tmp_path):
    out = tmp_path / "com1.txt"
    r = hvkvm("run", "hello", "--serial", str(out), "--timeout", "60")
    assert r.returncode == 0
    assert "Hello from ring 3" in out.read_text()
    assert "Hello" not in r.stdout


@pytest.mark.kvm
def test_run_past_timeout_exits_124_and_says_where():
    r = hvkvm("run", "exits", "--cmdline", "exits kind=cpuid count=4000000000 ring=3",
              "--timeout", "1")
    assert r.returncode == 124, r.stderr
    assert "timeout" in r.stderr and "RIP 0x" in r.stderr and "ring 3" in r.stderr


@pytest.mark.kvm
def test_failed_guest_assert_exits_1_with_file_and_line():
    r = hvkvm("run", "asserts", "--timeout", "60")
    assert r.returncode == 1
    assert "u_asserts.c:" in r.stderr and "ring 3" in r.stderr


@pytest.mark.kvm
def test_smp_guest_with_two_vcpus_passes():
    r = hvkvm("run", "smp", "--vcpus", "2", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "vCPU 1 checked in" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["run", "/no/such/image"], "no such image file"),
    (["run", "hello", "--memory", "12X"], "bad size"),
    (["run", "hello", "--memory", "3M"], "multiple of 2 MiB"),
    (["run", "hello", "--vcpus", "0"], "must be at least 1"),
    (["run", "hello", "--vcpus", "100"], "vcpus must be between"),
    (["run", "hello", "--timeout", "-1"], "must be positive"),
    (["run", "hello", "--serial", "/no/such/dir/x"], "cannot open serial output"),
    (["images", "path", "nonesuch"], "known images"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_usage_is_one_line_and_exit_2(args, needle):
    r = hvkvm(*args)
    assert r.returncode == 2, r.stderr
    assert needle in one_line_error(r)


def test_non_elf_file_is_refused_with_exit_2(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("not a kernel")
    r = hvkvm("run", str(f))
    assert r.returncode == 2
    assert "not an ELF file" in one_line_error(r)


def test_truncated_elf_is_refused_with_exit_2(tmp_path):
    from hvkvm.images import image_path
    data = image_path("hello").read_bytes()
    f = tmp_path / "cut.elf"
    f.write_bytes(data[: len(data) // 3])
    r = hvkvm("run", str(f))
    assert r.returncode == 2
    assert "truncated" in one_line_error(r) or "malformed" in r.stderr


def test_missing_kvm_exits_3_with_the_fix():
    r = hvkvm("run", "hello", env={"HVKVM_KVM_DEVICE": "/nonexistent/kvm"})
    assert r.returncode == 3
    assert "KVM unavailable" in one_line_error(r)


def test_doctor_without_kvm_names_the_problem_and_exits_3():
    r = hvkvm("doctor", env={"HVKVM_KVM_DEVICE": "/nonexistent/kvm"})
    assert r.returncode == 3
    assert "does not exist" in r.stdout and "fix:" in r.stdout


@pytest.mark.kvm
def test_doctor_names_the_backend_and_probes_both_rings():
    r = hvkvm("doctor", "--json")
    assert r.returncode == 0, r.stdout
    rep = json.loads(r.stdout)
    assert rep["backend"] in ("kvm_intel", "kvm_amd", "kvm_pvm", "hardware")
    assert rep["probe"]["ok"], rep["probe"]
    assert rep["probe"]["ring0_ns_per_iter"] > 0 and rep["probe"]["ring3_ns_per_iter"] > 0
    if rep["backend"] == "kvm_pvm":
        assert rep["probe"]["ring0_emulated"]
    assert not rep["missing_required"]


def test_images_list_names_the_built_in_images():
    r = hvkvm("images", "list")
    assert r.returncode == 0
    assert {"hello", "smp", "fault", "exits"} <= set(r.stdout.split())


# -- hvkvm doctor --ci: exit codes a CI script branches on (ci/README.md) ----------------------------


def test_doctor_ci_without_kvm_exits_3_with_a_one_line_fix():
    r = hvkvm("doctor", "--ci", env={"HVKVM_KVM_DEVICE": "/nonexistent/kvm"})
    assert r.returncode == 3
    line = one_line_error(r)
    assert "no KVM device" in line and "fix: load KVM" in line


def test_doctor_ci_without_permission_exits_4(tmp_path, monkeypatch, capsys):
    import errno

    from hvkvm.cli import main
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    monkeypatch.setenv("HVKVM_KVM_DEVICE", str(dev))
    real_open = os.open

    def open_as_an_unprivileged_user(path, flags, *args, **kw):
        if os.fspath(path) == str(dev):
            raise PermissionError(errno.EACCES, "Permission denied", str(dev))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", open_as_an_unprivileged_user)
    assert main(["doctor", "--ci", "--no-probe"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("hvkvm doctor: no permission:") and "kvm group" in err
    assert len(err.splitlines()) == 1


@pytest.mark.kvm
def test_doctor_ci_missing_required_capability_exits_5(monkeypatch, capsys):
    from hvkvm.cli import main
    from hvkvm.kvm import abi
    from hvkvm.kvm.system import Kvm
    real = Kvm.check_extension
    monkeypatch.setattr(Kvm, "check_extension",
                        lambda self, cap: 0 if cap == abi.KVM_CAP_SYNC_REGS else real(self, cap))
    assert main(["doctor", "--ci", "--no-probe"]) == 5
    err = capsys.readouterr().err
    assert "missing required capability: KVM_CAP_SYNC_REGS" in err and "fix:" in err


@pytest.mark.kvm
def test_doctor_ci_ok_exits_0_with_one_line():
    r = hvkvm("doctor", "--ci", "--no-probe")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hvkvm doctor: ok:") and len(r.stdout.splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["run", "hello", "--gdb-wait"], "--gdb-wait needs --gdb"),
    (["run", "hello", "--gdb", "127.0.0.1:notaport"], "--gdb takes [HOST:]PORT"),
    (["run", "hello", "--snapshot-at", "3"], "--snapshot-at needs --snapshot-out"),
    (["run", "hello", "--snapshot-out", "/tmp/x.snap", "--snapshot-at", "soon"],
     "--snapshot-at takes a SYNC stage number"),
    (["run", "hello", "--restore", "/no/such.snap"], "cannot read snapshot"),
    (["run", "hello", "--restore", "/etc/hostname"], "not an hvkvm snapshot"),
])
def test_snapshot_and_gdb_usage_errors_are_one_line_and_exit_2(args, needle):
    r = hvkvm(*args)
    assert r.returncode == 2, r.stderr
    assert needle in one_line_error(r)


#: Modules `hvkvm run hello` must not import: NICs, disks, VMBus, the Hyper-V interface, the
#: service (FastAPI), the benchmarks, snapshots, pyelftools, and the build machinery of images
#: (a cached image is used as is). Start-up time is a goal (BENCHMARKS.md); this guards what
#: it rests on without timing anything.
LAZY = ("hvkvm.vsp.netvsc", "hvkvm.vsp.storvsc", "hvkvm.vsp.disk", "hvkvm.vsp.virtio_blk",
        "hvkvm.vsp.ata", "hvkvm.vsp.mmioblk", "hvkvm.vmbus", "hvkvm.hv", "hvkvm.service.api",
        "hvkvm.service.manager", "hvkvm.bench", "hvkvm.partition.snapshot", "hvkvm.gdbstub",
        "elftools", "fastapi", "uvicorn", "subprocess", "hashlib", "concurrent", "logging",
        "json", "traceback", "dataclasses", "inspect")


@pytest.mark.kvm
def test_run_hello_imports_no_device_service_or_build_module():
    hvkvm("images", "build", "hello")
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "hvkvm.cli", "run", "hello"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "hvkvm.partition.partition" in imported and "hvkvm.vsp.serial" in imported
    early = {m for m in imported for lazy in LAZY if m == lazy or m.startswith(lazy + ".")}
    # what the interpreter's own start-up (site) imported is not hvkvm's doing
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True,
                          text=True, timeout=60).stderr
    site = {line.rsplit("|", 1)[1].strip() for line in bare.splitlines() if "|" in line}
    assert early - site == set()

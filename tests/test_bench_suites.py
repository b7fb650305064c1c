"""``hvkvm bench``: every suite runs with --quick and its JSON has every field; compare and plot
work on sample JSON. Numbers are printed, never asserted (the machines are shared and noisy).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest

from hvkvm.bench import report

kvm = pytest.mark.kvm


def bench(tmp_path, *args, timeout=900):
    out = tmp_path / f"{args[0]}.json"
    env = dict(os.environ, HVKVM_BENCH_PLAIN="1")
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "bench", *args, "--json", str(out)],
                       capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["suite"] == args[0] and doc["schema"] == 2
    m = doc["machine"]
    for key in ("cpu", "cpus", "kernel", "nested", "backend", "kvm_caps", "python", "gcc", "qemu",
                "git_revision", "date", "load_average"):
        assert key in m, key
    assert m["kvm_caps"]
    assert isinstance(doc["goals"], list)
    return doc, r.stdout, r.stderr


def _has(row: dict, keys) -> None:
    missing = [k for k in keys if k not in row]
    assert not missing, (missing, row)


@kvm
def test_exits_quick_has_c_runner_ioeventfd_and_the_goal(tmp_path):
    doc, text, err = bench(tmp_path, "exits", "--quick")
    rows = {(c["kind"], c["ring"], c["runner"]): c for c in doc["cases"]}
    for key in [("ioeventfd", 0, "python"), ("ioeventfd", 3, "python"), ("pio", 3, "c"),
                ("mmio", 0, "c"), ("pio", 0, "python-lean")]:
        assert key in rows, key
    for c in doc["cases"]:
        _has(c, ("ns_per_iter", "userspace_exits_per_iter", "kvm_exits_per_iter", "samples_ns",
                 "count", "spread"))
    # the ioeventfd port never reaches userspace; the null device port always does
    assert rows[("ioeventfd", 3, "python")]["userspace_exits_per_iter"] == 0
    assert rows[("pio", 3, "c")]["userspace_exits_per_iter"] >= 1.0
    assert len(doc["python_vs_c"]) == 4
    assert [g["id"] for g in doc["goals"]] == ["exits.python_within_1.3x_c"]
    assert "python_over_c" in doc["python_vs_c"][0]
    assert "ns/iter" in text and "goals" in text
    assert "[1] exits:" in err          # progress lines while it runs


@kvm
def test_storage_quick_covers_every_available_path_and_reports_the_rest(tmp_path):
    doc, text, _ = bench(tmp_path, "storage", "--quick")
    paths = {p["name"]: p for p in doc["paths"]}
    assert {"storvsc-c", "storvsc-py", "qemu-virtio-blk", "ata", "mmioblk",
            "virtio-blk"} <= paths.keys()
    assert paths["storvsc-c"]["available"] and paths["storvsc-py"]["available"]
    q = paths["qemu-virtio-blk"]
    if not q["available"]:
        assert q["reason"].startswith("unavailable:")
        assert q["reason"] in text
    assert doc["qemu"]["machine"].startswith("-M microvm -enable-kvm -cpu host,-arch-capabilities")
    assert {b["name"] for b in doc["backings"]} == {"tmpfs", "fs"}
    ok = [c for c in doc["cases"] if c["status"] == "ok"]
    assert {(c["path"], c["backing"], c["ring"]) for c in ok} >= {
        (p, b, r) for p in ("storvsc-c", "storvsc-py") for b, r in (("tmpfs", 3), ("tmpfs", 0),
                                                                    ("fs", 3))}
    for c in ok:
        _has(c, ("iops", "mb_per_s", "mean_us", "p99_us", "user_exits_per_io",
                 "kvm_exits_per_io", "interrupts_per_io", "irq_injections_per_io",
                 "host_cpu_us_per_io", "process_cpu_us_per_io", "samples", "guest", "workload",
                 "bs", "qd"))
        assert c["iops"] > 0 and c["guest"][0]["image"] == "disk_bench"
    ids = {g["id"] for g in doc["goals"]}
    assert {"storage.c_under_0.1_exits_per_io", "storage.seq_read_half_memcpy",
            "storage.c_2x_qemu_iops_4k_qd32.tmpfs", "storage.c_2x_qemu_iops_4k_qd32.fs"} <= ids
    assert doc["ceilings"]["memcpy"]["gb_per_s"] > 0


@kvm
def test_net_quick_echo_and_oneway_per_path(tmp_path):
    doc, text, _ = bench(tmp_path, "net", "--quick")
    if doc.get("unavailable"):
        pytest.skip(doc["unavailable"])
    paths = {p["name"]: p for p in doc["paths"]}
    assert paths["netvsc-c"]["available"] and paths["netvsc-py"]["available"]
    hv = ["netvsc-c", "netvsc-py"]
    q = paths["qemu-virtio-net"]
    if q["available"]:
        hv_and_peer = hv + ["qemu-virtio-net"]
        # the pinned QEMU configuration is printed and in the JSON
        assert doc["qemu"]["virtio_net"].startswith("-netdev tap,id=n0,ifname=TAP,script=no")
        assert "QEMU peer: " in text and doc["qemu"]["machine"] in text
    else:
        hv_and_peer = hv
        assert q["reason"].startswith("unavailable:") and q["reason"] in text
    echo = [r for r in doc["echo"] if r["status"] == "ok"]
    assert {(r["path"], r["ring"], r["size"]) for r in echo} >= {
        (p, ring, s) for p in hv_and_peer for ring in (3, 0) for s in (64, 1472)}
    for r in echo:
        _has(r, ("p50_us", "p99_us", "round_trips_per_s", "user_exits_per_echo",
                 "interrupts_per_echo", "kvm_exits_per_echo", "kicks_per_echo",
                 "host_cpu_us_per_echo"))
        assert r["lost"] == 0 and r["bad"] == 0
        if r["path"] == "qemu-virtio-net":
            # QEMU's exits are not hvkvm's counters: null in the JSON, n/a in the table
            assert r["user_exits_per_echo"] is None and r["kvm_exits_per_echo"] is None
            assert r["kicks_per_echo"] > 0 and r["host_cpu_us_per_echo"] is not None
        else:
            assert r["user_exits_per_echo"] is not None
    one = [r for r in doc["oneway"] if r["status"] == "ok"]
    assert {(r["path"], r["ring"], r["size"]) for r in one} == {
        (p, ring, s) for p in hv_and_peer for ring, s in ((3, 64), (3, 1472), (0, 64))}
    for r in one:
        _has(r, ("pps", "mbit_per_s", "delivered", "user_exits_per_packet",
                 "interrupts_per_packet", "kicks_per_packet", "host_cpu_us_per_packet"))
        assert r["packets"] > 0 and r["guest"]["ring"] == r["ring"]
        assert r["guest"]["dev"] == ("virtio" if r["path"] == "qemu-virtio-net" else "netvsc")
    if q["available"]:
        assert " n/a " in text


@kvm
def test_vmbus_quick_has_samples_and_the_floor_goal(tmp_path):
    doc, _, _ = bench(tmp_path, "vmbus", "--quick")
    assert len(doc["cases"]) == 12
    for c in doc["cases"]:
        assert c["samples"] and c["runs"] == 1
    assert doc["ceilings"]["pingpong"]["round_trips_per_s"] > 0
    assert "vmbus.echo64_half_floor" in {g["id"] for g in doc["goals"]}


@kvm
def test_boot_quick_has_python_baseline_teardown_and_qemu(tmp_path):
    doc, text, _ = bench(tmp_path, "boot", "--quick")
    pr = doc["process"]
    _has(pr, ("run_hello_ms", "python_pass_ms", "hvkvm_own_ms", "run_over_python",
              "samples_python_pass_ms"))
    assert doc["teardown"]["teardown_ms"] > 0
    assert doc["qemu"]["status"] in ("ok", "unavailable")
    ids = {g["id"] for g in doc["goals"]}
    assert {"boot.run_hello_1.5x_python", "boot.hvkvm_own_under_80ms"} <= ids


@kvm
def test_ceilings_quick(tmp_path):
    doc, text, _ = bench(tmp_path, "ceilings", "--quick")
    assert doc["memcpy"]["bytes"] == 64 << 20 and doc["memcpy"]["samples_gb_per_s"]
    assert doc["pingpong"]["round_trips_per_s"] > 0 and doc["pingpong"]["samples_per_s"]
    assert "zero-exit ping-pong" in text


# -- compare and plot on sample JSON (no KVM) ---------------------------------------------------

def sample_doc() -> dict:
    """A small two-suite document in the real layout."""
    case = {"path": "storvsc-c", "backing": "tmpfs", "ring": 3, "workload": "randread-4k-qd32",
            "mode": "randread", "bs": 4096, "qd": 32, "status": "ok", "iops": 100000.0,
            "mb_per_s": 409.6, "mean_us": 300.0, "p99_us": 900.0,
            "samples": {"iops": [98000.0, 100000.0, 101000.0], "mb_per_s": [401, 409.6, 413],
                        "mean_us": [290, 300, 310], "p99_us": [880, 900, 950]}}
    exits = {"kind": "pio", "ring": 3, "runner": "python", "count": 100, "ns_per_iter": 40000.0,
             "samples_ns": [39000.0, 40000.0, 41000.0]}
    return {"schema": 2, "suite": "all", "machine": {"cpu": "test", "backend": "kvm_pvm",
                                                     "date": "2026-01-01", "git_revision": "x"},
            "suites": {"storage": {"cases": [case], "paths": []},
                       "exits": {"cases": [exits]}},
            "ceilings": {"memcpy": {"gb_per_s": 8.0, "gb_per_s_best": 8.1,
                                    "samples_gb_per_s": [7.9, 8.0, 8.1]},
                         "pingpong": {"round_trips_per_s": 3e6, "samples_per_s": [3e6]}}}


def test_compare_flags_only_changes_beyond_the_noise(tmp_path):
    a = sample_doc()
    b = copy.deepcopy(a)
    st = b["suites"]["storage"]["cases"][0]
    st["iops"] = 50000.0                      # halved: a regression far beyond 3 % spread
    st["samples"]["iops"] = [49000.0, 50000.0, 51000.0]
    st["mean_us"] = 302.0                     # +0.7 %: inside the noise
    b["suites"]["exits"]["cases"][0]["ns_per_iter"] = 20000.0   # twice as fast
    b["suites"]["exits"]["cases"][0]["samples_ns"] = [19900.0, 20000.0, 20100.0]
    res = report.compare(a, b)
    by = {r["id"]: r for r in res["rows"]}
    assert by["storage/storvsc-c/tmpfs/r3/randread-4k-qd32/iops"]["verdict"] == "regression"
    assert by["storage/storvsc-c/tmpfs/r3/randread-4k-qd32/iops"]["ratio"] == 0.5
    assert by["storage/storvsc-c/tmpfs/r3/randread-4k-qd32/mean_us"]["verdict"] == "same"
    assert by["exits/pio/r3/python/ns_per_iter"]["verdict"] == "improvement"
    assert by["ceilings/pingpong/round_trips_per_s"]["noise_assumed"]
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "bench", "compare", str(pa), str(pb)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "REGRESSION" in r.stdout and "B/A" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "bench", "compare", str(pa), str(pb),
                        "--fail-on-regression"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "bench", "compare", str(pa),
                        str(tmp_path / "missing.json")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_plot_writes_pngs_or_says_matplotlib_is_missing(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(sample_doc()))
    out = tmp_path / "charts"
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "bench", "plot", str(p), "--out",
                        str(out)], capture_output=True, text=True, timeout=120)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.returncode == 2
        assert r.stderr.strip().count("\n") == 0 and "matplotlib" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in pngs)
    assert {f.name.split("-")[0] for f in pngs} == {"storage", "exits", "ceilings"}


def test_plot_without_matplotlib_is_one_line_and_exit_2(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(sample_doc()))
    # a sitecustomize that hides matplotlib from the child
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['matplotlib'] = None\n")
    env = dict(os.environ, PYTHONPATH=str(hide) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "bench", "plot", str(p), "--out",
                        str(tmp_path / "c")], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == ("hvkvm: bench plot needs matplotlib: pip install 'hvkvm[plot]' "
                                "(or pip install matplotlib)")


def test_goals_state_missed_by_how_much():
    doc = sample_doc()
    doc["suites"]["exits"]["python_vs_c"] = [
        {"kind": "pio", "ring": 3, "python_ns": 40000, "c_ns": 20000, "python_over_c": 2.0,
         "python_overhead_ns": 20000}]
    doc["suites"]["storage"]["cases"].append(
        {"path": "storvsc-c", "backing": "tmpfs", "ring": 3, "workload": "read-1m-qd4",
         "status": "ok", "mb_per_s": 3000.0, "user_exits_per_io": 0.0})
    doc["suites"]["storage"]["cases"][0]["user_exits_per_io"] = 0.01
    gs = {g["id"]: g for g in report.goals(doc)}
    e = gs["exits.python_within_1.3x_c"]
    assert e["met"] is False and e["missed_by"] == "54% over the limit"
    s = gs["storage.seq_read_half_memcpy"]      # against the best copy: 8.1 GB/s
    assert s["met"] is False and "0.37 x memcpy" in s["measured"] and s["missed_by"] == "26% short"
    assert gs["storage.c_under_0.1_exits_per_io"]["met"] is True
    assert gs["storage.c_2x_qemu_iops_4k_qd32.tmpfs"]["met"] is None
    text = report.format_goals(list(gs.values()))
    assert "[MISSED]" in text and "[MET]" in text and "[NOT MEASURED]" in text


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_bench_images_declare_the_devices_their_rows_pick_and_a_bad_elf_is_refused(tmp_path):
    """A row's guest driver is known from the built image (HV_ARG_VALUES, section .hvkvm.args),
    never from the image's source text."""
    from hvkvm.bench import common, net, storage
    from hvkvm.images import image_path
    assert common.elf_arg_values(image_path("disk_bench")) == {
        "dev": ["storvsc", "virtio", "ata", "mmio"]}
    for image in ("net_echo", "net_bench"):
        assert common.elf_arg_values(image_path(image)) == {"dev": ["netvsc", "virtio"]}
    assert common.elf_arg_values(image_path("hello")) == {}
    assert storage.disk_bench_knows("mmio") and not storage.disk_bench_knows("nvme")
    assert not common.image_accepts("net_echo", "dev", "e1000")
    assert all(p.unavailable() is None or "driver" not in p.unavailable()
               for p in net.PATHS + storage.PATHS)
    cut = tmp_path / "cut.elf"
    whole = image_path("net_echo").read_bytes()
    cut.write_bytes(whole[:len(whole) // 2])       # the section header table is at the end
    with pytest.raises(ValueError):
        common.elf_arg_values(cut)

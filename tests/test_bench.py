"""Benchmarks run end to end and report what they promise (numbers are printed, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kvm


def bench(tmp_path, suite):
    out = tmp_path / f"{suite}.json"
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "bench", suite, "--quick", "--json",
                        str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["suite"] == suite and doc["machine"]["backend"]
    return doc, r.stdout


def test_bench_exits_reports_every_kind_and_ring(tmp_path):
    doc, text = bench(tmp_path, "exits")
    kinds = {(c["kind"], c["ring"]) for c in doc["cases"]}
    assert {("cpuid", 0), ("pio", 0), ("pio", 3), ("mmio", 3), ("hlt", 0)} <= kinds
    pio = next(c for c in doc["cases"] if c["kind"] == "pio" and c["ring"] == 3)
    assert pio["userspace_exits_per_iter"] >= 1.0      # every PIO to the null device exits
    assert "ns/iter" in text


def test_bench_vmbus_covers_both_planes_sizes_and_modes(tmp_path):
    doc, text = bench(tmp_path, "vmbus")
    cases = {(c["plane"], c["size"], c["mode"]) for c in doc["cases"]}
    assert len(cases) == 12
    for c in doc["cases"]:
        assert c["packets"] > 0 and c["exits_per_packet"] >= 0
        assert ("mb_per_s" in c) == (c["mode"] == "one-way")
    assert "goal_c_exits_per_packet_below_0.1" in doc
    assert "rtt_c_over_python_64" in doc["ratios"]

"""Exit metrics: counters and the per-vCPU host service-time histogram, library, CLI and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hvkvm.images import image_path
from hvkvm.partition.config import PartitionConfig
from hvkvm.partition.metrics import bucket_range, format_table, histogram


def test_log2_buckets_cover_every_nanosecond_count_once():
    assert bucket_range(0) == (0, 1)
    assert bucket_range(1) == (1, 2)
    assert bucket_range(14) == (8192, 16384)
    for ns in (0, 1, 2, 3, 999, 1000, 8191, 8192, 10**9):
        lo, hi = bucket_range(ns.bit_length())
        assert lo <= ns < hi


def test_histogram_dict_has_buckets_count_and_quantile_bounds():
    hist = [0] * 64
    hist[14] = 90           # [8.2 us, 16.4 us)
    hist[20] = 10           # [0.5 ms, 1 ms)
    h = histogram(hist)
    assert h["count"] == 100 and h["unit"] == "ns"
    assert h["buckets"] == [{"lo_ns": 8192, "hi_ns": 16384, "count": 90},
                            {"lo_ns": 524288, "hi_ns": 1048576, "count": 10}]
    assert h["p50_ns_max"] == 16384 and h["p99_ns_max"] == 1048576
    assert histogram([0] * 64)["p50_ns_max"] is None


@pytest.mark.kvm
def test_run_result_carries_counters_and_one_service_time_per_reentry(make_partition):
    p = make_partition(PartitionConfig(image=image_path("hello"), cmdline="hello", timeout=60))
    r = p.run()
    assert r.passed
    m = r.exit_metrics
    v0 = m["vcpus"]["0"]
    assert v0["exits"] == r.exits[0]                       # the same counters as RunResult.exits
    assert v0["total_exits"] == sum(a + b for a, b in
                                    ((x["ring0"], x["ring3"]) for x in r.exits[0].values()))
    # every exit but the last (done) was followed by an entry: one service time each
    assert v0["service_time"]["count"] == v0["total_exits"] - 1
    assert sum(b["count"] for b in v0["service_time"]["buckets"]) == v0["service_time"]["count"]
    assert m["totals"]["total_exits"] == v0["total_exits"]
    json.dumps(r.to_json())                                 # JSON-ready, as a service sends it
    assert r.to_json()["exit_metrics"] == m
    table = format_table(m)
    assert "vCPU0:" in table and "io" in table and "p50 <" in table


@pytest.mark.kvm
def test_metrics_are_readable_while_the_guest_runs_and_per_vcpu(make_partition):
    seen = {}

    def on_sync(index, uc):
        if uc.args[0] == 1:
            seen.setdefault(index, p.exit_metrics())

    p = make_partition(PartitionConfig(image=image_path("smp"), cmdline="smp cpus=2", vcpus=2,
                                       timeout=60, on_sync=on_sync))
    r = p.run()
    assert r.passed
    assert set(r.exit_metrics["vcpus"]) == {"0", "1"}
    live = seen[0]["vcpus"]["0"]
    assert 0 < live["total_exits"] <= r.exit_metrics["vcpus"]["0"]["total_exits"]
    assert r.exit_metrics["vcpus"]["1"]["total_exits"] > 0


@pytest.mark.kvm
def test_hvkvm_run_stats_prints_the_table():
    r = subprocess.run([sys.executable, "-m", "hvkvm.cli", "run", "hello", "--stats"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "host service time per exit" in r.stderr and "vCPU0:" in r.stderr
    assert "Hello from ring 3" in r.stdout                  # serial output stays clean

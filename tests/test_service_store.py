"""VM Service pieces without a service process: the SQLite store and event log, time parsing,
run-result classification, the worker's console ring and identity checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hvkvm.service import proto
from hvkvm.service.paths import PathError, check_unix_path, private_dir
from hvkvm.service.store import Store, VmDefinition, parse_duration, parse_time
from hvkvm.service.worker import ConsoleRing


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "t.db", max_event_rows=50, max_event_age=3600)
    yield s
    s.close()


def test_definitions_round_trip_and_survive_reopen(tmp_path):
    s = Store(tmp_path / "d.db")
    d = VmDefinition(name="a", vcpus=2, memory=8 << 20, image="idle", cmdline="idle x=1",
                     disks=[{"path": "/tmp/d.img", "readonly": True, "direct": False}],
                     nics=[{"tap": "tap0"}], autostart=True, created=1.5)
    s.add_vm(d)
    with pytest.raises(Exception):
        s.add_vm(d)
    s.update_runtime("a", state="Running", pid=123, instance="abc", event_seq=7,
                     last_result={"status": "pass"})
    s.close()
    s = Store(tmp_path / "d.db")
    assert s.get_vm("a") == d
    rt = s.get_runtime("a")
    assert (rt.state, rt.pid, rt.instance, rt.event_seq, rt.last_result) == \
        ("Running", 123, "abc", 7, {"status": "pass"})
    assert s.delete_vm("a") and s.get_vm("a") is None and not s.delete_vm("a")
    assert s.get_runtime("a").state == "Off"      # the runtime row went with it
    s.close()


def test_event_queries_by_partition_severity_time_and_source(store):
    now = time.time()
    store.add_event("info", "api", "old", "a", when=now - 1800)
    store.add_event("error", "guest", "crash a", "a", {"rip": 1}, when=now - 60)
    store.add_event("warning", "vsp", "disk slow", "b", when=now - 30)
    store.add_event("critical", "service", "bad", None, when=now - 5)
    msgs = lambda **q: [e["message"] for e in store.query_events(**q)]  # noqa: E731
    assert msgs() == ["old", "crash a", "disk slow", "bad"]
    assert msgs(partition="a") == ["old", "crash a"]
    assert msgs(severity="error") == ["crash a", "bad"]
    assert msgs(severity="warning", partition="b") == ["disk slow"]
    assert msgs(since=now - 600) == ["crash a", "disk slow", "bad"]
    assert msgs(until=now - 45) == ["old", "crash a"]
    assert msgs(source="guest") == ["crash a"]
    assert msgs(limit=2) == ["disk slow", "bad"]          # the newest two, oldest first
    ev = store.query_events(source="guest")[0]
    assert ev["details"] == {"rip": 1} and ev["iso_time"].endswith("+00:00")


def test_event_retention_caps_rows_and_age(store):
    now = time.time()
    store.add_event("info", "x", "ancient", when=now - 7200)
    for i in range(120):
        store.add_event("info", "x", f"e{i}")
    store.prune_events()
    evs = store.query_events(limit=1000)
    assert len(evs) == 50 and evs[-1]["message"] == "e119" and evs[0]["message"] == "e70"
    assert store.count_events() == 50


def test_durations_and_times():
    assert parse_duration("10m") == 600 and parse_duration("2h") == 7200
    assert parse_duration("30") == 30 and parse_duration("1.5d") == 1.5 * 86400
    assert parse_time("10m", now=1000.0) == 400.0
    assert parse_time("@1700000000") == 1700000000.0
    assert parse_time("2026-01-01T00:00:00") == parse_time("2026-01-01T00:00:00+00:00")
    for bad in ("soon", "10 parsecs", "@x", ""):
        with pytest.raises(ValueError):
            parse_time(bad)


@pytest.mark.parametrize("result,state,source,words", [
    ({"status": "pass", "reason": "guest done(0)"}, "Off", "worker", "run ended"),
    ({"status": "stopped", "reason": "stopped by the administrator"}, "Off", "worker", "ended"),
    ({"status": "fail", "reason": "done(3)"}, "Off", "worker", "fail"),
    ({"status": "crash", "reason": "triple fault"}, "Crashed", "guest", "guest crash: triple"),
    ({"status": "fault", "reason": "#PF"}, "Crashed", "guest", "guest crash"),
    ({"status": "guest-error", "reason": "ucall outside RAM"}, "Crashed", "guest",
     "hostile guest detected"),
    ({"status": "host-error", "reason": "bug"}, "Crashed", "worker", "worker failed"),
    ({"status": "start-error", "reason": "no disk"}, "Off", "worker", "start failed"),
])
def test_classify_result(result, state, source, words):
    out = proto.classify_result(result)
    assert (out.state, out.source) == (state, source) and words in out.message


def test_classify_a_worker_that_died_or_was_killed():
    out = proto.classify_result(None, returncode=-9)
    assert out.state == "Crashed" and "SIGKILL" in out.message and out.severity == "error"
    assert proto.classify_result(None, killed=True).state == "Off"


def test_console_ring_keeps_recent_output_with_absolute_offsets(tmp_path):
    ring = ConsoleRing(limit=16, log_path=tmp_path / "c.log", log_limit=20)
    assert ring.write(b"0123456789") == 10
    ring.write(memoryview(b"abcdefghij"))
    assert ring.end == 20 and ring.start == 4
    assert ring.read(0) == (4, b"456789abcdefghij")
    assert ring.read(18) == (18, b"ij")
    t0 = time.monotonic()
    assert ring.read(20, timeout=0.1) == (20, b"")
    assert time.monotonic() - t0 >= 0.09
    ring.close()
    assert (tmp_path / "c.log").read_bytes() == b"0123456789abcdefghij"[:20]


def test_identity_checks_reject_other_processes_and_reused_pids(tmp_path):
    assert proto.verify_process(os.getpid(), None, "nope") is not None    # not a worker
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                          "-m", proto.WORKER_MODULE, "inst1"])
    try:
        st = proto.proc_stat(p.pid)
        # (until the child has exec'd, its command line is still pytest's)
        assert proto.wait_until(lambda: proto.verify_process(p.pid, st[1], "inst1") is None, 10)
        assert "reused" in proto.verify_process(p.pid, st[1] + 1, "inst1")
        assert proto.verify_process(p.pid, st[1], "inst2") is not None
        assert proto.verify_worker(tmp_path, "inst1")[1] == "no pidfile"
    finally:
        p.kill()
        p.wait()
    assert not proto.proc_alive(p.pid)


def test_private_dirs_and_socket_path_limits(tmp_path):
    d = tmp_path / "a" / "b"
    os.makedirs(d, mode=0o755)
    os.chmod(d, 0o755)
    assert private_dir(d) == d and (os.stat(d).st_mode & 0o777) == 0o700
    with pytest.raises(PathError, match="at most"):
        check_unix_path("/tmp/" + "x" * 120)
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(PathError, match="not a directory"):
        private_dir(link)


class _Sink:
    def __init__(self):
        self.events = []

    def emit(self, event, **fields):
        self.events.append((event, fields))


def test_device_errors_become_rate_limited_events():
    import logging

    from hvkvm.service.worker import _EventHandler
    sink = _Sink()
    h = _EventHandler(sink, burst=3, window=60)
    logger = logging.getLogger("hvkvm")
    logger.addHandler(h)
    try:
        logging.getLogger("hvkvm.storvsc").error("storvsc: channel %d failed", 5)
        logging.getLogger("hvkvm.vmbus").error("vmbus: guest error: %s", "bad GPADL")
        logging.getLogger("hvkvm.hv").info("not forwarded (below WARNING)")
        for i in range(5):
            logging.getLogger("hvkvm.vsp.serial").warning("flood %d", i)
    finally:
        logger.removeHandler(h)
    got = [(f["severity"], f["source"], f["message"]) for _, f in sink.events]
    assert got[0] == ("error", "vsp", "storvsc: channel 5 failed")
    assert got[1] == ("error", "guest", "hostile guest detected: vmbus: guest error: bad GPADL")
    assert got[2][1:] == ("vsp", "flood 0") and len(got) == 3 and h.suppressed == 4

"""The VM Service for real: a service process, its Unix socket, VM Worker processes, KVM.

Guests are the ``idle`` image (halts until stopped; ``tick_ms`` prints a line every N ms), the
``fault`` image (triple fault) and a hand-made ELF whose ucall points outside RAM (a hostile
guest). Every service is started as ``python -m hvkvm.cli service`` in a short /tmp state dir;
teardown kills only the workers these tests started.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from hvkvm import cli
from hvkvm.service import proto
from hvkvm.service import cli as service_cli  # noqa: F401  (imported before any fork)
from hvkvm.service.client import AccessDenied, ApiError, Client, ServiceUnavailable

MEM = 8 << 20
NOBODY = 65534


class Service:
    """A ``hvkvm service`` process on its own state directory."""

    def __init__(self, state_dir: Path, *extra: str, env: dict | None = None):
        self.state_dir = state_dir
        self.sock = state_dir / "run" / "api.sock"
        self.log = open(state_dir.parent / f"service-{time.monotonic_ns()}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hvkvm.cli", "service", "--state-dir", str(state_dir), "-v",
             *extra], stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        _started.append(self)
        self.client = Client(self.sock, timeout=120)
        end = time.monotonic() + 30
        while True:
            try:
                self.client.call("GET", "/v1/service")
                break
            except (ServiceUnavailable, ApiError):
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"service did not come up:\n{self.output()}")
                time.sleep(0.05)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.log.close()
        return rc

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def _worker_pids(state_dir: Path) -> list[int]:
    """Live worker processes of this state dir (pidfile + /proc identity check)."""
    pids = []
    for d in (state_dir / "workers").glob("*"):
        ident = proto.read_pidfile(d)
        if ident and proto.verify_process(ident.pid, ident.starttime, ident.instance) is None:
            pids.append(ident.pid)
    return pids


def _kill_workers(state_dir: Path) -> None:
    for pid in _worker_pids(state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


_started: list[Service] = []


@pytest.fixture
def state_dir():
    """A fresh state dir; every service and worker started on it is gone after the test."""
    d = Path(tempfile.mkdtemp(prefix="hvs", dir="/tmp"))
    del _started[:]
    yield d / "s"
    for s in _started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
    _kill_workers(d / "s")
    shutil.rmtree(d, ignore_errors=True)


#: A stand-in for the integration services (another engineer's VSPs): loaded into every worker
#: of the module's service through $HVKVM_WORKER_PLUGINS, active when the guest command line
#: says ``fakeic=graceful|hang|refuse``.
FAKE_IC = """
import os, signal, threading, time, uuid
from hvkvm.vmbus.server import Vsp

class FakeShutdownIc(Vsp):
    class_id = uuid.UUID("0e0b6031-5213-4934-818b-38d90ced39db")   # Hyper-V's shutdown IC
    name = "fake-shutdown"

    def __init__(self, mode):
        self.mode, self.requests = mode, 0
        self.last_heartbeat = time.time() - 1.5

    def request_shutdown(self):
        self.requests += 1
        if self.mode == "refuse":
            return False
        if self.mode == "graceful":   # the guest "powers off" 0.3 s later
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return True                   # hang: nothing happens; the worker hard-stops

    def stats(self):
        return {"shutdown_requests": self.requests}

def vsp_factory(spec):
    words = (spec.get("cmdline") or "").split()
    if "realic" in words:          # the real heartbeat and shutdown VSPs (hvkvm/vsp/ic.py)
        from hvkvm.vsp.ic import HeartbeatVsp, ShutdownVsp
        return [ShutdownVsp(), HeartbeatVsp(interval=0.5)]
    for word in words:
        if word.startswith("fakeic="):
            return [FakeShutdownIc(word[len("fakeic="):])]
    return []
"""


@pytest.fixture(scope="module")
def svc():
    """One service for the tests that do not restart it."""
    d = Path(tempfile.mkdtemp(prefix="hvs", dir="/tmp"))
    (d / "plugins").mkdir()
    (d / "plugins" / "hvs_fake_ic.py").write_text(FAKE_IC)
    s = Service(d / "s", env={"HVKVM_WORKER_PLUGINS": "hvs_fake_ic",
                              "PYTHONPATH": str(d / "plugins")})
    yield s
    with contextlib.suppress(Exception):
        for vm in s.client.list():
            if vm["state"] in proto.ACTIVE_STATES:
                s.client.kill(vm["name"])
    rc = s.terminate()
    _kill_workers(d / "s")
    out = s.output()
    shutil.rmtree(d, ignore_errors=True)
    assert rc == 0, out
    assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def idle_image():
    """Build the guest images these tests use before any timing starts."""
    from hvkvm.images import resolve_image
    resolve_image("fault")
    return resolve_image("idle")


def wait_state(client: Client, name: str, states, timeout: float = 30) -> dict:
    end = time.monotonic() + timeout
    while True:
        vm = client.show(name)
        if vm["state"] in states:
            return vm
        assert time.monotonic() < end, f"{name} stuck in {vm['state']}: {vm}"
        time.sleep(0.05)


def events(client: Client, **q) -> list[dict]:
    return client.events(limit=1000, **q)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``hvkvm ARGV`` in this process (a thin client: only the API is behind it)."""
    out, err = io.StringIO(), io.StringIO()

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


# -- no KVM needed ---------------------------------------------------------------------------


def test_socket_is_private_and_openapi_is_served(svc):
    st = os.stat(svc.sock)
    assert oct(st.st_mode & 0o777) == "0o600"
    assert oct(os.stat(svc.sock.parent).st_mode & 0o777) == "0o700"
    assert oct(os.stat(svc.state_dir).st_mode & 0o777) == "0o700"
    doc = svc.client.call("GET", "/openapi.json")
    paths = doc["paths"]
    for p in ("/v1/vms", "/v1/vms/{name}", "/v1/vms/{name}/start", "/v1/vms/{name}/pause",
              "/v1/vms/{name}/resume", "/v1/vms/{name}/stop", "/v1/vms/{name}/kill",
              "/v1/vms/{name}/console", "/v1/vms/{name}/stats", "/v1/events"):
        assert p in paths, p
    assert "VmCreate" in doc["components"]["schemas"]
    info = svc.client.call("GET", "/v1/service")
    assert info["uid"] == os.geteuid() and info["on_exit"] == "detach"


@pytest.mark.parametrize("body,field,status", [
    ({"name": "x", "image": "idle", "memory": "lots"}, "memory", 422),
    ({"name": "x", "image": "idle", "vcpus": 0}, "vcpus", 422),
    ({"name": "x", "image": "idle", "vcpus": "two"}, "vcpus", 422),
    ({"name": "-x", "image": "idle"}, "name", 422),
    ({"name": "x" * 49, "image": "idle"}, "name", 422),
    ({"image": "idle"}, "name", 422),
    ({"name": "x", "image": "idle", "colour": "red"}, "colour", 422),
    ({"name": "x", "image": "idle", "disks": [{"path": "/d", "ro": 1}]}, "disks.0.ro", 422),
    ({"name": "x", "image": "idle", "memory": 3 << 20}, "memory", 400),
    ({"name": "x", "image": "nonesuch"}, "image", 400),
    ({"name": "x", "image": "rel/path.elf"}, "image", 400),
    ({"name": "x", "image": "idle", "disks": [{"path": "d.img"}]}, "disks.0.path", 400),
    ({"name": "x", "image": "idle", "disks": [{"path": "/nonexistent.img"}]}, "disks.0.path",
     400),
])
def test_bad_definitions_are_refused_naming_the_field(svc, body, field, status):
    with pytest.raises(ApiError) as ei:
        svc.client.call("POST", "/v1/vms", body)
    assert ei.value.status == status
    assert str(ei.value).startswith(f"{field}:"), str(ei.value)
    if status == 422:
        assert ei.value.body["field"] == field


def test_bad_requests(svc):
    c = svc.client
    with pytest.raises(ApiError) as ei:
        c.show("nosuch")
    assert ei.value.status == 404 and "nosuch" in str(ei.value)
    for verb in ("start", "pause", "resume", "stop", "kill", "stats"):
        with pytest.raises(ApiError) as ei:
            c.call("GET" if verb == "stats" else "POST", c.vm_path("nosuch", verb))
        assert ei.value.status == 404, verb
    c.create(name="bad1", image="idle", memory=MEM)
    with pytest.raises(ApiError) as ei:
        c.create(name="bad1", image="idle", memory=MEM)
    assert ei.value.status == 409 and str(ei.value).startswith("name:")
    for verb in ("pause", "resume", "stop", "kill"):
        with pytest.raises(ApiError) as ei:
            getattr(c, verb)("bad1")
        assert ei.value.status == 409 and "Off" in str(ei.value), verb
    with pytest.raises(ApiError) as ei:
        c.call("POST", c.vm_path("bad1", "stop"), {"timeout": -1})
    assert ei.value.status == 422 and ei.value.body["field"] == "timeout"
    with pytest.raises(ApiError) as ei:
        c.call("POST", c.vm_path("bad1", "start"), query={"timeout": "soon"})
    assert ei.value.status == 422 and ei.value.body["field"] == "timeout"
    for q, field in (({"since": "yesterday-ish"}, "since"), ({"severity": "loud"}, "severity"),
                     ({"limit": 0}, "limit")):
        with pytest.raises(ApiError) as ei:
            c.call("GET", "/v1/events", query=q)
        assert ei.value.status == 422 and str(ei.value).startswith(f"{field}:"), q
    # A body that is not JSON at all.
    conn = __import__("hvkvm.service.client", fromlist=["_UnixConnection"])._UnixConnection(
        str(svc.sock), 10)
    conn.request("POST", "/v1/vms", body=b"{not json", headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 422 and "error" in json.loads(r.read())
    conn.close()
    c.delete("bad1")
    with pytest.raises(ApiError):
        c.delete("bad1")
    refused = [e for e in events(c, partition="bad1", source="api") if "refused" in e["message"]]
    assert len(refused) >= 4


def test_cli_errors_are_one_line_with_clear_codes(svc, tmp_path):
    rc, out, err = run_cli("vm", "show", "nosuch", "--socket", str(svc.sock))
    assert rc == 2 and err.count("\n") == 1 and "no partition named 'nosuch'" in err
    rc, out, err = run_cli("vm", "create", "x", "--image", "idle", "--memory", "lots",
                           "--socket", str(svc.sock))
    assert rc == 2 and err.startswith("hvkvm: error: memory:") and err.count("\n") == 1
    rc, out, err = run_cli("vm", "list", "--socket", str(tmp_path / "none.sock"))
    assert rc == 4 and "not running" in err and err.count("\n") == 1
    rc, out, err = run_cli("vm", "frobnicate", "x")
    assert rc == 2 and err.count("\n") == 1
    rc, out, err = run_cli("events", "--since", "whenever", "--socket", str(svc.sock))
    assert rc == 2 and "since:" in err


def _as_other_user(fn, *, keep_fs_root: bool) -> tuple[int, str]:
    """Run ``fn() -> (code, text)`` in a forked child as uid 65534.

    keep_fs_root: only the effective uid changes (the filesystem uid stays 0, so the socket's
    0600 mode lets the connect through and the service's SO_PEERCRED check has to refuse it);
    otherwise every uid and gid changes (the socket's permissions refuse it).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code, text = 99, "child failed"
        try:
            os.close(r)
            if keep_fs_root:
                os.setegid(NOBODY)
                os.seteuid(NOBODY)
                libc = ctypes.CDLL(None)
                libc.setfsuid(0)
            else:
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            code, text = fn()
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            text = f"{type(e).__name__}: {e}"
        finally:
            os.write(w, json.dumps([code, text]).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    code, text = json.loads(data)
    return code, text


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_a_second_user_is_refused(svc):
    sock = str(svc.sock)

    def api_call():
        try:
            Client(sock, timeout=10).list()
            return 0, "allowed"
        except AccessDenied as e:
            return 403, str(e)

    code, text = _as_other_user(api_call, keep_fs_root=True)
    assert code == 403 and "uid 65534 may not use this service" in text, text
    refused = [e for e in events(svc.client, source="api") if "uid 65534" in e["message"]]
    assert refused and refused[-1]["severity"] == "warning"

    def cli_call():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(["vm", "list", "--socket", sock])
        return rc, err.getvalue()

    code, text = _as_other_user(cli_call, keep_fs_root=False)
    assert code == 5 and "permission denied" in text and text.count("\n") == 1, text


# -- with KVM ---------------------------------------------------------------------------------


def _hostile_elf(path: Path) -> Path:
    """Long-mode code whose first ucall points outside guest RAM."""
    sys.path.insert(0, str(Path(__file__).parent))
    from asm import assemble
    from elfgen import PF_R, PF_X, make_elf
    code = assemble("mov $0xbffff000, %eax\nmov $0xe8, %dx\nout %eax, %dx\n1: jmp 1b\n",
                    "long", 0x100000)
    path.write_bytes(make_elf([(0x100000, code, len(code), PF_R | PF_X)], 0x100000))
    return path


@pytest.mark.kvm
def test_lifecycle_through_the_api(svc, idle_image):
    c = svc.client
    vm = c.create(name="life", image="idle", memory=MEM, cmdline="idle tick_ms=100")
    assert vm["state"] == "Off" and vm["memory"] == MEM
    vm = c.start("life")
    assert vm["state"] == "Running" and vm["pid"]
    pid = vm["pid"]
    assert pid != svc.proc.pid and proto.WORKER_MODULE in proto.proc_cmdline(pid)
    with pytest.raises(ApiError) as ei:
        c.start("life")
    assert ei.value.status == 409
    with pytest.raises(ApiError) as ei:
        c.delete("life")
    assert ei.value.status == 409

    # console: the ring first, then new output as it comes
    resp = c.stream(c.vm_path("life", "console"), {"follow": True, "tail": 4096})
    got = b""
    end = time.monotonic() + 10
    while b"idle: tick 3\n" not in got and time.monotonic() < end:
        got += resp.read1(4096)
    resp.close()
    assert got.startswith(b"idle: ready") and b"idle: tick 3\n" in got, got

    # console input reaches the guest's UART (idle does not read it: it stays in the FIFO)
    assert c.call("POST", c.vm_path("life", "console/input"), {"data": "hi\n"}) == {"bytes": 3}
    assert c.stats("life")["serial"]["rx_bytes"] == 3

    vm = c.pause("life")
    assert vm["state"] == "Paused"
    st = c.stats("life")
    assert st["live"] and all(v["held"] for v in st["vcpus"].values())
    tx = st["serial"]["tx_bytes"]
    time.sleep(0.4)
    assert c.stats("life")["serial"]["tx_bytes"] == tx          # nothing runs while paused
    assert c.resume("life")["state"] == "Running"
    time.sleep(0.3)
    st = c.stats("life")
    assert st["serial"]["tx_bytes"] > tx
    assert st["exits_total"] > 0 and st["exit_totals"]["io"]["ring0"] > 0
    assert st["exit_metrics"]      # per-vCPU service-time histograms through the API
    assert st["cpu"]["total_s"] > 0 and st["rss_bytes"] > MEM // 4 and st["pid"] == pid

    vm = c.stop("life", timeout=5)
    assert vm["state"] == "Off" and vm["graceful"] is False
    assert "shutdown integration service cannot reach the guest" in vm["reason"]   # idle has no IC drivers
    assert not proto.proc_alive(pid)
    assert vm["last_result"]["status"] == "stopped"
    st = c.stats("life")
    assert not st["live"] and st["exit_totals"]["io"]["ring0"] > 0
    # the last run's console stays readable
    resp = c.stream(c.vm_path("life", "console"), {"follow": True})
    assert resp.getheader("X-Hvkvm-Live") == "0" and b"idle: ready" in resp.read()

    # start again, then kill
    vm = c.start("life")
    assert vm["state"] == "Running" and vm["pid"] != pid
    vm = c.kill("life")
    assert vm["state"] == "Off" and "killed by the administrator" in vm["reason"]
    c.delete("life")

    evs = events(c, partition="life")
    msgs = [e["message"] for e in evs]
    for want in ("create requested", "state Off -> Starting", "state Starting -> Running",
                 "state Running -> Paused", "state Paused -> Running", "state Running -> Stopping",
                 "state Stopping -> Off", "kill requested", "worker killed by the administrator",
                 "partition deleted"):
        assert any(want in m for m in msgs), (want, msgs)
    assert all(e["partition"] == "life" for e in evs)


@pytest.mark.kvm
def test_every_verb_through_the_cli(svc, idle_image, tmp_path):
    s = ["--socket", str(svc.sock)]
    disk = tmp_path / "d.img"
    assert run_cli("disk", "create", str(disk), "1M")[0] == 0
    # A NIC needs a TAP device, which needs CAP_NET_ADMIN (root here).
    tap = f"hvs{os.getpid() % 100000}" if os.geteuid() == 0 else None
    nic = ["--nic", f"tap={tap},mac=00:15:5d:01:02:03"] if tap else []
    rc, out, err = run_cli("vm", "create", "clivm", "--image", "idle", "--memory", "8M",
                           "--cmdline", "idle tick_ms=50", "--disk", f"{disk},ro", *nic,
                           "--json", *s)
    assert rc == 0, err
    d = json.loads(out)
    assert d["disks"] == [{"path": str(disk), "readonly": True, "direct": False}]
    assert d["nics"] == ([{"tap": tap, "mac": "00:15:5d:01:02:03"}] if tap else [])
    rc, out, err = run_cli("vm", "create", "badnic", "--image", "idle", "--nic", "tap=", *s)
    assert rc == 2 and err.count("\n") == 1
    rc, out, err = run_cli("vm", "start", "clivm", *s)
    assert (rc, out.strip()) == (0, "clivm: Running"), err
    rc, out, _ = run_cli("vm", "list", *s)
    assert rc == 0 and "clivm" in out and "Running" in out
    rc, out, _ = run_cli("vm", "list", "--json", *s)
    assert [v["state"] for v in json.loads(out) if v["name"] == "clivm"] == ["Running"]
    rc, out, _ = run_cli("vm", "show", "clivm", *s)
    assert rc == 0 and "clivm: Running" in out and "disk " + str(disk) + " (readonly)" in out
    assert run_cli("vm", "pause", "clivm", *s)[1].startswith("clivm: Paused")
    assert run_cli("vm", "resume", "clivm", *s)[1].strip() == "clivm: Running"
    time.sleep(0.3)
    rc, out, _ = run_cli("vm", "stats", "clivm", *s)
    assert rc == 0 and "worker CPU" in out and "exits:" in out and "StorvscVsp" in out
    rc, out, _ = run_cli("vm", "stats", "clivm", "--json", *s)
    st = json.loads(out)
    assert [v["class"] for v in st["vsps"]] == ["StorvscVsp"] + (["NetvscVsp"] if tap else []) + \
        ["ShutdownVsp", "HeartbeatVsp"]    # every partition gets the integration services
    assert "stats" in st["vsps"][0]
    if tap:
        assert tap in subprocess.run(["ip", "-o", "link", "show", tap], capture_output=True,
                                     text=True).stdout
    assert st["hv"] is not None                      # a disk brings the Hyper-V interface
    buf = io.BytesIO()
    old, wrapper = sys.stdout, io.TextIOWrapper(buf)
    sys.stdout = wrapper
    try:
        rc = cli.main(["vm", "console", "clivm", "--no-follow", *s])
        wrapper.flush()
        console = buf.getvalue()
    finally:
        sys.stdout = old
    assert rc == 0 and console.startswith(b"idle: ready"), console
    rc, out, _ = run_cli("vm", "stop", "clivm", "--timeout", "5", *s)
    assert rc == 0 and out.startswith("clivm: Off (hard stop)")
    rc, out, _ = run_cli("vm", "start", "clivm", "--no-wait", "--json", *s)
    assert json.loads(out)["state"] in ("Starting", "Running")
    wait_state(svc.client, "clivm", {"Running"})
    rc, out, _ = run_cli("vm", "kill", "clivm", *s)
    assert rc == 0 and out.startswith("clivm: Off")
    rc, out, _ = run_cli("vm", "delete", "clivm", *s)
    assert (rc, out.strip()) == (0, "clivm: deleted")
    rc, out, _ = run_cli("events", "--partition", "clivm", "--since", "10m", "--severity",
                         "info", *s)
    assert rc == 0 and "[clivm]" in out and "state Running -> Paused" in out
    rc, out, _ = run_cli("events", "--partition", "clivm", "--since", "10m", "--severity",
                         "error", *s)
    assert rc == 0 and out == ""                        # nothing went wrong with clivm
    rc, out, _ = run_cli("events", "--partition", "clivm", "--json", "--source", "api", *s)
    assert {e["source"] for e in json.loads(out)} == {"api"}


@pytest.mark.kvm
def test_guest_crash_and_hostile_guest_are_crashed_with_decoded_events(svc, idle_image):
    c = svc.client
    c.create(name="crasher", image="fault", memory=MEM)
    elf = _hostile_elf(Path(tempfile.mkdtemp(prefix="hvs", dir="/tmp")) / "hostile.elf")
    c.create(name="hostile", image=str(elf), memory=MEM)
    for name in ("crasher", "hostile"):
        c.start(name, wait=False)
    vm = wait_state(c, "crasher", {"Crashed", "Off"})
    assert vm["state"] == "Crashed" and vm["last_result"]["status"] == "crash"
    ev = events(c, partition="crasher", severity="error", source="guest")
    assert ev and "guest crash" in ev[-1]["message"] and "triple fault" in ev[-1]["message"]
    assert ev[-1]["details"]["result"]["registers"]
    vm = wait_state(c, "hostile", {"Crashed", "Off"})
    assert vm["state"] == "Crashed" and vm["last_result"]["status"] == "guest-error"
    ev = events(c, partition="hostile", severity="error", source="guest")
    assert ev and "hostile guest detected" in ev[-1]["message"]
    assert "outside guest RAM" in ev[-1]["message"]
    # severity is a minimum: error includes these, critical does not
    assert not events(c, partition="hostile", severity="critical")
    for name in ("crasher", "hostile"):
        c.delete(name)
    shutil.rmtree(elf.parent, ignore_errors=True)

    # A partition whose devices cannot be built does not start; the reason is one line.
    disk = Path(tempfile.mkdtemp(prefix="hvs", dir="/tmp")) / "gone.img"
    disk.write_bytes(bytes(1 << 20))
    c.create(name="nodisk", image="idle", memory=MEM, disks=[{"path": str(disk)}])
    shutil.rmtree(disk.parent)
    with pytest.raises(ApiError) as ei:
        c.start("nodisk")
    assert ei.value.status == 409 and "did not start: start failed: DiskError" in str(ei.value)
    assert c.show("nodisk")["state"] == "Off"
    assert any("start failed" in e["message"] for e in
               events(c, partition="nodisk", severity="error"))
    c.delete("nodisk")


@pytest.mark.kvm
def test_kill9_of_a_worker_crashes_only_that_partition(svc, idle_image):
    c = svc.client
    for name in ("k1", "k2"):
        c.create(name=name, image="idle", memory=MEM)
        c.start(name)
    pid1, pid2 = c.show("k1")["pid"], c.show("k2")["pid"]
    os.kill(pid1, signal.SIGKILL)
    vm = wait_state(c, "k1", {"Crashed", "Off"})
    assert vm["state"] == "Crashed" and "SIGKILL" in vm["reason"]
    ev = events(c, partition="k1", severity="error")
    assert any("worker process died without a result (killed by SIGKILL)" in e["message"]
               for e in ev), ev
    assert c.show("k2")["state"] == "Running" and proto.proc_alive(pid2)
    assert c.stats("k2")["live"]
    vm = c.start("k1")
    assert vm["state"] == "Running" and vm["pid"] != pid1
    assert c.pause("k2")["state"] == "Paused"          # a paused partition stops too
    for name in ("k1", "k2"):
        assert c.stop(name, timeout=5)["state"] == "Off"
        c.delete(name)
    assert not proto.proc_alive(pid2)


@pytest.mark.kvm
def test_eight_partitions_start_concurrently_and_stop_cleanly(svc, idle_image):
    c = svc.client
    names = [f"oct{i}" for i in range(8)]
    for n in names:
        c.create(name=n, image="idle", memory=MEM)
    results: dict = {}

    def go(fn, n):
        try:
            results[n] = fn(n)
        except Exception as e:  # noqa: BLE001
            results[n] = e

    threads = [threading.Thread(target=go, args=(c.start, n)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, dict) and r["state"] == "Running" for r in results.values()), results
    pids = {c.show(n)["pid"] for n in names}
    assert len(pids) == 8 and all(proto.proc_alive(p) for p in pids)
    assert {v["state"] for v in c.list() if v["name"] in names} == {"Running"}
    results.clear()
    threads = [threading.Thread(target=go, args=(lambda n: c.stop(n, timeout=5), n))
               for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, dict) and r["state"] == "Off" for r in results.values()), results
    assert not any(proto.proc_alive(p) for p in pids)
    for n in names:
        assert c.show(n)["last_result"]["status"] == "stopped"
        c.delete(n)


@pytest.mark.kvm
def test_service_kill9_restart_finds_workers_and_definitions(state_dir, idle_image):
    s1 = Service(state_dir)
    c = s1.client
    c.create(name="keep", image="idle", memory=MEM, cmdline="idle tick_ms=200")
    c.create(name="lost", image="idle", memory=MEM)
    c.create(name="ends", image="idle", memory=MEM, cmdline="idle tick_ms=50 exit_after=6")
    c.create(name="never", image="idle", memory=MEM, vcpus=2)
    for n in ("keep", "lost", "ends"):
        c.start(n)
    pid_keep, pid_lost, pid_ends = (c.show(n)["pid"] for n in ("keep", "lost", "ends"))
    s1.kill9()

    # The workers are their own processes: they outlive the service.
    assert proto.proc_alive(pid_keep) and proto.proc_alive(pid_lost)
    os.kill(pid_lost, signal.SIGKILL)           # dies while no service watches
    assert proto.wait_until(lambda: not proto.proc_alive(pid_ends), 15)   # ends by itself
    assert proto.wait_until(lambda: not proto.proc_alive(pid_lost), 5)

    s2 = Service(state_dir)
    c = s2.client
    vms = {v["name"]: v for v in c.list()}
    assert set(vms) == {"keep", "lost", "ends", "never"}
    assert vms["never"]["vcpus"] == 2 and vms["never"]["state"] == "Off"
    assert vms["keep"]["state"] == "Running" and vms["keep"]["pid"] == pid_keep
    assert vms["lost"]["state"] == "Crashed" and "lost" in vms["lost"]["reason"]
    assert vms["ends"]["state"] == "Off" and "while the service was down" in vms["ends"]["reason"]
    assert c.show("ends")["last_result"]["status"] == "pass"
    msgs = [e["message"] for e in events(c)]
    assert any("found running worker again" in m for m in msgs)
    assert any(e["partition"] == "lost" and "worker lost" in e["message"]
               for e in events(c, severity="error"))
    # the re-attached worker is fully controllable
    assert c.pause("keep")["state"] == "Paused"
    assert c.resume("keep")["state"] == "Running"
    resp = c.stream(c.vm_path("keep", "console"), {"follow": False})
    assert resp.read().startswith(b"idle: ready")
    resp.close()
    # a crashed partition starts again
    assert c.start("lost")["state"] == "Running"
    pid_lost2 = c.show("lost")["pid"]

    # One service per state directory.
    p = subprocess.run([sys.executable, "-m", "hvkvm.cli", "service", "--state-dir",
                        str(state_dir)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "another service" in p.stderr and p.stderr.count("\n") == 1

    # SIGTERM with the default (detach): the workers keep running for the next service
    assert s2.terminate() == 0, s2.output()
    assert proto.proc_alive(pid_keep) and proto.proc_alive(pid_lost2)

    # SIGTERM with --on-exit stop: every worker is stopped, the service exits 0
    s3 = Service(state_dir, "--on-exit", "stop")
    vms = {v["name"]: v for v in s3.client.list()}
    assert (vms["keep"]["pid"], vms["lost"]["pid"]) == (pid_keep, pid_lost2)
    assert s3.terminate() == 0, s3.output()
    assert not proto.proc_alive(pid_keep) and not proto.proc_alive(pid_lost2)
    assert "Traceback" not in s1.output() + s2.output() + s3.output()


@pytest.mark.kvm
def test_stop_is_graceful_through_a_shutdown_hook_and_hard_after_the_timeout(svc, idle_image):
    c = svc.client
    for mode in ("graceful", "hang", "refuse"):
        c.create(name=f"ic-{mode}", image="idle", memory=MEM, cmdline=f"idle fakeic={mode}")
        c.start(f"ic-{mode}")
    vm = c.show("ic-hang")
    assert 1.0 < vm["heartbeat"]["age_s"] < 60          # the heartbeat an IC reports
    st = c.stats("ic-hang")
    assert st["heartbeat"]["last"] and "FakeShutdownIc" in [v["class"] for v in st["vsps"]]

    t0 = time.monotonic()
    vm = c.stop("ic-graceful", timeout=20)
    assert vm["state"] == "Off" and vm["graceful"] is True
    assert time.monotonic() - t0 < 10                  # ended by the guest, not the timeout

    t0 = time.monotonic()
    vm = c.stop("ic-hang", timeout=1)
    assert vm["state"] == "Off" and vm["graceful"] is True
    assert time.monotonic() - t0 >= 1.0
    assert "did not shut down within 1 s" in vm["last_result"]["reason"]

    vm = c.stop("ic-refuse", timeout=20)
    assert vm["state"] == "Off" and vm["graceful"] is False
    assert "cannot reach the guest" in vm["reason"]
    msgs = [e["message"] for e in events(c, partition="ic-hang")]
    assert any("graceful shutdown requested; hard stop in 1 s" in m for m in msgs), msgs
    for mode in ("graceful", "hang", "refuse"):
        c.delete(f"ic-{mode}")


@pytest.mark.kvm
def test_stop_is_graceful_with_the_real_integration_services(svc):
    from hvkvm.images import resolve_image
    resolve_image("ic_demo")
    c = svc.client
    c.create(name="icreal", image="ic_demo", memory=MEM, cmdline="ic_demo realic")
    c.start("icreal")

    def negotiated():
        st = c.stats("icreal")
        return st["heartbeat"] and st["heartbeat"]["last"] and \
            all(v["stats"]["state"] == "ready" for v in st["vsps"])

    assert proto.wait_until(negotiated, 30, 0.1), c.stats("icreal")
    assert c.show("icreal")["heartbeat"]["age_s"] < 10
    vm = c.stop("icreal", timeout=20)
    assert vm["state"] == "Off" and vm["graceful"] is True, vm
    assert vm["last_result"]["status"] == "pass"          # the guest acknowledged and stopped
    c.delete("icreal")

"""``hvkvm bench net``: UDP echo latency and one-way packet rate over every network path.

Traffic only ever flows inside a network namespace this suite creates (``hvkvm-b<pid>``, deleted
at the end): the TAP lives there with the host address, and the clients run there through
``ip netns exec``. Nothing touches the root namespace.

**Paths** are rows of :data:`PATHS` (as in :mod:`hvkvm.bench.storage`): VMBus netvsc with the C
and the Python data plane, and the peer: QEMU's virtio-net (virtio-mmio, microvm + KVM, the
configuration pinned in :mod:`hvkvm.bench.qemu`) on a TAP in the same namespace, QEMU itself run
there with ``ip netns exec``, booting the same guest images with their virtio-net driver
(``dev=virtio``, ``guest_images/include/virtio_net.h``).

- **echo**: the ``net_echo`` guest (ring 3 polling, and ring 0 with interrupts) echoes UDP on
  port 7; a Python client in the namespace sends ``count`` datagrams one at a time (64 and 1472
  bytes) and times each round trip (``perf_counter_ns``): p50, p99, mean, round trips/s. The
  client's own socket path is part of every number (it is the same for every path).
- **one-way**: the ``net_bench`` guest (ring 3, and ring 0) sends 64- or 1472-byte datagrams as
  fast as it can for ``seconds`` to a sink in the namespace: the guest's pps and Mbit/s (UDP
  payload), and the share the sink received.

Per packet, in each timed window. hvkvm's paths: userspace exits (hvkvm's counters), KVM exits
and interrupt injections (stats fd), the interrupts hvkvm raised and the guest's kicks (the VSP's
counters), and this process's CPU time outside guest mode (the client's is not counted). QEMU:
its exits and injections are not hvkvm's counters and are reported as n/a (null); kicks
(QueueNotify writes) and interrupts are the guest driver's own counts (net_echo answers "STAT"
on port 9; net_bench reports its kicks), host CPU is QEMU's process CPU time outside guest mode
(clock ticks: about 10 ms per window).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .common import cpu_delta, cpu_times, image_accepts, measure, progress, summarize, table

GUEST_IP = "10.83.0.2"
HOST_IP = "10.83.0.1"
TAP = "hvb0"
GUEST_MAC = bytes.fromhex("00155d83a0b2")
SIZES = (64, 1472)
SINK_PORT = 9000


@dataclass
class Built:
    vsps: list = field(default_factory=list)
    counters: Callable | None = None       # (partition) -> {"interrupts", "kicks"}


@dataclass(frozen=True)
class NetPath:
    """One network path: a row of the suite."""

    name: str
    title: str
    runner: str = "hvkvm"
    build: Callable | None = None          # (TapDevice) -> Built
    keys: dict = field(default_factory=dict)
    module: str | None = None
    guest_key: str | None = None

    def unavailable(self) -> str | None:
        """Why this path cannot run here (None: it can)."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"{self.module.replace('.', '/')}.py is not in the tree yet"
        if self.guest_key and not all(image_accepts(i, "dev", self.guest_key)
                                      for i in ("net_echo", "net_bench")):
            return (f"needs a guest {self.guest_key}-net driver (net_echo/net_bench "
                    f"dev={self.guest_key})")
        if self.runner == "qemu":
            from . import qemu
            return qemu.unavailable()
        return None if self.build else "no build function in hvkvm/bench/net.py PATHS"


def _netvsc(plane: str):
    def build(tap) -> Built:
        from ..vsp.netvsc import NetvscVsp
        vsp = NetvscVsp(tap, plane=plane, mac=GUEST_MAC)

        def counters(p) -> dict:
            t = vsp.totals()
            return {"interrupts": t["signals"] + (p.hv.stats.get("sint_interrupts", 0)
                                                  if p.hv else 0),
                    "kicks": t["kicks"]}
        return Built(vsps=[vsp], counters=counters)
    return build


PATHS: list[NetPath] = [
    NetPath("netvsc-py", "VMBus netvsc, Python data plane", build=_netvsc("python")),
    NetPath("netvsc-c", "VMBus netvsc, C data plane", build=_netvsc("c")),
    NetPath("qemu-virtio-net", "QEMU virtio-net (virtio-mmio) on a TAP, microvm + KVM",
            runner="qemu", keys={"dev": "virtio"}, guest_key="virtio"),
]

ECHO_CLIENT = r"""
import json, socket, sys, time
dst, sizes = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
count, warm = int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((dst, 7))
s.settimeout(float(sys.argv[5]) if len(sys.argv) > 5 else 2.0)
st = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
st.settimeout(1.0)
seq = 0
def stat():
    # the guest NIC's counters (net_echo answers "STAT" on port 9), or None
    for _ in range(3):
        st.sendto(b"STAT", (dst, 9))
        try:
            return json.loads(st.recv(4096))
        except (socket.timeout, ValueError):
            pass
    return None
def echo(payload):
    global seq
    seq += 1
    tag = seq.to_bytes(8, "little")
    data = tag + payload[8:]
    t = time.perf_counter_ns()
    s.send(data)
    while True:
        try:
            got = s.recv(4096)
        except socket.timeout:
            return None
        if got[:8] == tag:
            return (time.perf_counter_ns() - t) if got == data else -1
s.settimeout(0.2)
up = time.monotonic() + 60
while echo(bytes(64)) is None:
    if time.monotonic() > up:
        print(json.dumps({"error": "no echo within 60 s"}), flush=True); sys.exit(1)
s.settimeout(2.0)
for size in sizes:
    payload = bytes((i * 7 + 1) & 255 for i in range(size)) if size >= 8 else bytes(8)
    for _ in range(warm):
        echo(payload)
    g0 = stat()
    print(json.dumps({"ready": size}), flush=True)
    sys.stdin.readline()
    rtts, lost, bad = [], 0, 0
    t0 = time.perf_counter()
    for _ in range(count):
        r = echo(payload)
        if r is None:
            lost += 1
        elif r < 0:
            bad += 1
        else:
            rtts.append(r)
    el = time.perf_counter() - t0
    g1 = stat()
    rtts.sort()
    n = len(rtts)
    pct = lambda q: rtts[min(n - 1, int(q * n))] / 1000 if n else None
    print(json.dumps({"size": size, "n": n, "lost": lost, "bad": bad, "seconds": el,
                      "p50_us": pct(0.50), "p99_us": pct(0.99), "min_us": pct(0.0),
                      "mean_us": sum(rtts) / n / 1000 if n else None,
                      "guest_before": g0, "guest_after": g1}), flush=True)
    sys.stdin.readline()
"""

SINK = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(300)
print("ready", flush=True)
n = b = 0
try:
    while True:
        d, addr = s.recvfrom(4096)
        if addr[0] == "127.0.0.1" and d == b"SINK-STOP":
            s.settimeout(0.2)      # the guest is gone: take what is still queued, then stop
            continue
        n += 1
        b += len(d)
except socket.timeout:
    pass
print(json.dumps({"n": n, "bytes": b}))
"""

SINK_STOP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"SINK-STOP", ("127.0.0.1", int(sys.argv[1])))
"""

STOP = r"""
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"STOP", (sys.argv[1], 9))
"""


# -- namespace ----------------------------------------------------------------------------------

def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Namespace:
    """A network namespace of this suite (IPv6 off, lo up); deleted by :meth:`close`."""

    def __init__(self):
        from ..vsp.netns import NetNamespace
        self._ns = NetNamespace(f"hvkvm-b{os.getpid()}")
        self.name = self._ns.name

    def popen(self, script: str, *args: str, stdin=None) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", script,
                                 *args], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def python(self, script: str, *args: str, timeout: float = 60):
        return subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-c", script,
                               *args], capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        """Delete the namespace (idempotent)."""
        self._ns.close()


def unavailable() -> str | None:
    """Why the suite cannot run at all here (None: it can)."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if os.geteuid() != 0:
        return "needs root (network namespaces and TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


# -- counters -----------------------------------------------------------------------------------

class _Window:
    """Counter snapshots of a running partition, from any thread."""

    def __init__(self, p, built: Built, stats):
        self.p, self.built, self.stats = p, built, stats

    def snap(self) -> dict:
        user, tids = 0, []
        for t in list(getattr(self.p, "_threads", None) or []):
            user += sum(r0 + r3 for name, (r0, r3) in list(t.exits.items()) if name != "intr")
            if t.thread is not None and t.thread.native_id is not None:
                tids.append(t.thread.native_id)
        out = {"t": time.perf_counter(), "cpu": cpu_times(vcpu_tids=tids), "user": user,
               "kvm": self.stats.read() if self.stats else None}
        if self.built.counters:
            out.update(self.built.counters(self.p))
        return out

    @staticmethod
    def per_packet(a: dict, b: dict, packets: int, sync_exits: int = 0) -> dict:
        from .kvmstats import delta
        n = max(1, packets)
        kvm = delta(a["kvm"], b["kvm"])
        cpu = cpu_delta(a["cpu"], b["cpu"])
        return {"user_exits_per_packet": max(0, b["user"] - a["user"] - sync_exits) / n,
                "kvm_exits_per_packet": kvm["exits"] / n if "exits" in kvm else None,
                "irq_injections_per_packet": (kvm["irq_injections"] / n
                                              if "irq_injections" in kvm else None),
                "interrupts_per_packet": ((b["interrupts"] - a["interrupts"]) / n
                                          if "interrupts" in a else None),
                "kicks_per_packet": (b["kicks"] - a["kicks"]) / n if "kicks" in a else None,
                "host_cpu_us_per_packet": cpu["host"] / n * 1e6}


def _partition(ns: Namespace, path: NetPath, image: str, cmdline: str, on_sync):
    from ..images import image_path
    from ..partition.config import PartitionConfig
    from ..partition.partition import ChildPartition
    from ..vsp.netvsc import TapDevice
    from .kvmstats import KvmStats
    tap = TapDevice(TAP, netns=ns.name)
    try:
        _ip("-n", ns.name, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
        built = path.build(tap)
        cfg = PartitionConfig(image=image_path(image), cmdline=cmdline, hyperv=True,
                              vsps=built.vsps, timeout=600, on_sync=on_sync)
        p = ChildPartition(cfg)
    except BaseException:
        tap.close()
        raise
    return p, tap, built, KvmStats.for_vcpu(p.vcpus[0])


# -- echo ---------------------------------------------------------------------------------------

def _echo_client(ns: Namespace, count: int, warm: int, snap: Callable[[], dict],
                 counts: Callable[[dict, dict, dict], dict]) -> list[dict]:
    """ECHO_CLIENT in the namespace against a running net_echo guest, every size in turn: a row
    per size, ``counts(a, b, result)`` added, where ``a`` and ``b`` are ``snap()`` taken just
    before and after the client's timed round trips (so the counters cover only those)."""
    rows = []
    cl = ns.popen(ECHO_CLIENT, GUEST_IP, ",".join(map(str, SIZES)), str(count), str(warm),
                  stdin=subprocess.PIPE)
    try:
        for _ in SIZES:
            line = json.loads(cl.stdout.readline() or "{}")
            if "ready" not in line:
                raise RuntimeError(f"echo client: {line} {cl.stderr.read()[-300:]}")
            a = snap()
            cl.stdin.write("\n")
            cl.stdin.flush()
            res = json.loads(cl.stdout.readline() or "{}")
            b = snap()
            cl.stdin.write("\n")
            cl.stdin.flush()
            if "size" not in res:
                raise RuntimeError(f"echo client: {res}")
            row = _echo_row(res)
            row.update(counts(a, b, res))
            rows.append(row)
        cl.wait(30)
    finally:
        if cl.poll() is None:
            cl.kill()
            cl.wait()
    return rows


def run_echo(ns: Namespace, path: NetPath, ring: int, count: int, warm: int) -> list[dict]:
    """One net_echo partition; the client runs every size. Returns a row per size."""
    if path.runner == "qemu":
        return _run_echo_qemu(ns, path, ring, count, warm)
    state: dict = {"rows": [], "error": None}
    started = threading.Event()

    def traffic():
        try:
            started.wait(120)
            win = state["win"]

            def counts(a, b, res):
                # a round trip is two packets (in and out); counts are per round trip
                return {k.replace("_per_packet", "_per_echo"): v
                        for k, v in _Window.per_packet(a, b, res["n"]).items()}
            state["rows"] = _echo_client(ns, count, warm, win.snap, counts)
        except BaseException as e:  # noqa: BLE001 - reported after the run
            state["error"] = e
        finally:
            ns.python(STOP, GUEST_IP, timeout=30)

    def on_sync(vp, uc):
        if uc.args[0] == 1:
            started.set()

    p, tap, built, stats = _partition(ns, path, "net_echo",
                                      f"net_echo ip={GUEST_IP}/24 ring={ring} "
                                      + " ".join(f"{k}={v}" for k, v in path.keys.items()),
                                      on_sync)
    state["win"] = _Window(p, built, stats)
    th = threading.Thread(target=traffic, name="bench-net-echo", daemon=True)
    th.start()
    try:
        result = p.run()
    finally:
        started.set()
        th.join(120)
        if stats:
            stats.close()
        p.close()
        tap.close()
    if state["error"] is not None:
        raise RuntimeError(f"echo {path.name} ring {ring}: {state['error']}")
    if not result.passed:
        raise RuntimeError(f"echo {path.name} ring {ring}: {result.status}: {result.reason}")
    return state["rows"]


def _echo_row(res: dict) -> dict:
    """The client's result for one size as a row (counters added by the caller)."""
    return {"size": res["size"], "echoes": res["n"], "lost": res["lost"], "bad": res["bad"],
            "seconds": res["seconds"], "p50_us": res["p50_us"], "p99_us": res["p99_us"],
            "mean_us": res["mean_us"], "min_us": res["min_us"],
            "round_trips_per_s": res["n"] / res["seconds"] if res["seconds"] else None}


QEMU_TAP = "hvq0"


class _Qemu:
    """QEMU booting a guest image in the namespace with virtio-net on a TAP made there; its
    console read line by line (``marks``: a line starting with a key snapshots QEMU's CPU times
    under that key's value). :meth:`finish` waits for the guest's exit and deletes the TAP."""

    def __init__(self, ns: Namespace, image: str, cmdline: str, marks: dict | None = None):
        from ..images import image_path
        from . import qemu
        self.ns, self.lines, self.marks, self.at = ns, [], dict(marks or {}), {}
        _ip("-n", ns.name, "tuntap", "add", "dev", QEMU_TAP, "mode", "tap")
        _ip("-n", ns.name, "addr", "add", f"{HOST_IP}/24", "dev", QEMU_TAP)
        _ip("-n", ns.name, "link", "set", QEMU_TAP, "up")
        self.command = qemu.command(str(image_path(image)), cmdline + " log=serial",
                                    qemu.net_args(QEMU_TAP, GUEST_MAC))
        try:
            # `ip netns exec` execs QEMU in place: the pid is QEMU's (its CPU times)
            self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *self.command],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, errors="replace")
        except BaseException:
            _ip("-n", ns.name, "link", "del", QEMU_TAP, check=False)
            raise
        self.up = threading.Event()
        self._reader = threading.Thread(target=self._read, name="bench-net-qemu", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            for key, name in self.marks.items():
                if line.startswith(key):
                    self.at[name] = self.cpu()
            if line.startswith(("net_echo: link up", "net_bench: timed loop")):
                self.up.set()
            self.lines.append(line)
        self.up.set()

    def cpu(self) -> dict:
        """QEMU's CPU times now, per thread (schedstat: ns resolution), its vCPU threads
        ("CPU n/KVM") marked "vcpu" so :func:`cpu_delta`'s ``host`` is QEMU's own work: every
        other thread plus the vCPU threads' time outside guest mode, as for hvkvm."""
        return _qemu_cpu(self.proc.pid)

    def tail(self, n: int = 15) -> str:
        return " | ".join(self.lines[-n:])

    def finish(self, timeout: float) -> int | None:
        """The exit status (None: killed after ``timeout``); the TAP is deleted."""
        try:
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(10)
            _ip("-n", self.ns.name, "link", "del", QEMU_TAP, check=False)


def _qemu_cpu(pid: int) -> dict:
    from .common import _stat_fields, _TICK
    out = cpu_times(pid)
    threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(base + "/comm") as f:
                comm = f.read().strip()
            with open(base + "/schedstat") as f:
                ns = int(f.read().split()[0])
            fields = _stat_fields(base + "/stat")
            guest = int(fields[40]) / _TICK if len(fields) > 40 else 0.0
        except (OSError, IndexError, ValueError):
            continue
        name = "vcpu" if comm.startswith("CPU ") and comm.endswith("/KVM") else comm
        threads[int(tid)] = (name, ns / 1e9, guest)
    out["threads"] = threads
    return out


def _qemu_counts(a_cpu: dict, b_cpu: dict, n: int, kicks=None, interrupts=None,
                 unit: str = "packet") -> dict:
    """Per-``unit`` counters of a QEMU window: hvkvm's exit counters do not exist there (None,
    printed n/a); kicks and interrupts are the guest's counts when it reported them."""
    n = max(1, n)
    return {f"user_exits_per_{unit}": None, f"kvm_exits_per_{unit}": None,
            f"irq_injections_per_{unit}": None,
            f"interrupts_per_{unit}": None if interrupts is None else interrupts / n,
            f"kicks_per_{unit}": None if kicks is None else kicks / n,
            f"host_cpu_us_per_{unit}": cpu_delta(a_cpu, b_cpu)["host"] / n * 1e6}


def _run_echo_qemu(ns: Namespace, path: NetPath, ring: int, count: int, warm: int):
    """The peer: QEMU's virtio-net on a TAP made in the namespace, the same client."""
    from . import qemu
    q = _Qemu(ns, "net_echo", f"net_echo ip={GUEST_IP}/24 ring={ring} "
              + " ".join(f"{k}={v}" for k, v in path.keys.items()))
    rows: list[dict] = []
    try:
        q.up.wait(120)

        def counts(a, b, res):
            g0, g1 = res.get("guest_before"), res.get("guest_after")
            have = bool(g0 and g1)
            out = _qemu_counts(a, b, res["n"],
                               kicks=g1["kicks"] - g0["kicks"] if have else None,
                               interrupts=g1["interrupts"] - g0["interrupts"] if have else None,
                               unit="echo")
            out["counters"] = "guest driver (kicks, interrupts), QEMU process CPU"
            return out
        rows = _echo_client(ns, count, warm, q.cpu, counts)
    finally:
        ns.python(STOP, GUEST_IP, timeout=30)
        rc = q.finish(60)
    if rc != qemu.EXIT_DONE_0:
        raise RuntimeError(f"QEMU net_echo exit status {rc}: {q.tail()}")
    if len(rows) != len(SIZES):
        raise RuntimeError(f"QEMU echo: {q.tail()}")
    return rows


# -- one-way ------------------------------------------------------------------------------------

def _oneway_row(g: dict, got: dict, size: int) -> dict:
    return {"size": size, "packets": g["packets"], "seconds": g["elapsed_us"] / 1e6,
            "pps": g["pps"], "mbit_per_s": g["mbps"], "frame_mbit_per_s": g.get("frame_mbps"),
            "received": got["n"], "delivered": round(got["n"] / g["packets"], 4)
            if g["packets"] else None, "no_section": g.get("no_section"),
            "ring_full": g.get("ring_full"), "guest": g}


def _sink(ns: Namespace) -> subprocess.Popen:
    sink = ns.popen(SINK, "0.0.0.0", str(SINK_PORT))
    if sink.stdout.readline().strip() != "ready":
        sink.kill()
        raise RuntimeError(f"sink: {sink.communicate()[1][-300:]}")
    return sink


def _oneway_cmdline(path: "NetPath", size: int, seconds: int, ring: int) -> str:
    """net_bench's command line for one one-way row (the same for hvkvm and QEMU)."""
    return (f"net_bench ip={GUEST_IP}/24 peer={HOST_IP} port={SINK_PORT} size={size} "
            f"seconds={seconds} ring={ring} "
            + " ".join(f"{k}={v}" for k, v in path.keys.items()))


def _run_oneway_qemu(ns: Namespace, path: NetPath, size: int, seconds: int, ring: int) -> dict:
    """net_bench under QEMU: the window is the guest's "timed loop" console lines."""
    from . import qemu
    sink = _sink(ns)
    try:
        q = _Qemu(ns, "net_bench", _oneway_cmdline(path, size, seconds, ring),
                  marks={"net_bench: timed loop starts": 10, "net_bench: timed loop ended": 11})
        rc = q.finish(seconds + 300)
        ns.python(SINK_STOP, str(SINK_PORT), timeout=30)
        got = json.loads(sink.communicate(timeout=60)[0].strip().splitlines()[-1])
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    lines = [ln for ln in q.lines if ln.startswith('{"bench": "net_tx"')]
    if rc != qemu.EXIT_DONE_0 or not lines or not {10, 11} <= q.at.keys():
        raise RuntimeError(f"QEMU net_bench exit status {rc}: {q.tail()}")
    g = json.loads(lines[-1])
    row = _oneway_row(g, got, size)
    row.update(_qemu_counts(q.at[10], q.at[11], g["packets"], kicks=g.get("kicks")))
    row["counters"] = "guest driver (kicks), QEMU process CPU"
    return row


def run_oneway(ns: Namespace, path: NetPath, size: int, seconds: int, ring: int = 3) -> dict:
    """One net_bench guest sending ``size``-byte datagrams for ``seconds``."""
    if path.runner == "qemu":
        return _run_oneway_qemu(ns, path, size, seconds, ring)
    marks: dict = {}
    holder: dict = {}

    def on_sync(vp, uc):
        if uc.args[0] in (10, 11):
            marks[uc.args[0]] = holder["win"].snap()

    sink = _sink(ns)
    try:
        p, tap, built, stats = _partition(
            ns, path, "net_bench", _oneway_cmdline(path, size, seconds, ring), on_sync)
        holder["win"] = _Window(p, built, stats)
        try:
            result = p.run()
        finally:
            if stats:
                stats.close()
            p.close()
            tap.close()
        ns.python(SINK_STOP, str(SINK_PORT), timeout=30)
        got = json.loads(sink.communicate(timeout=60)[0].strip().splitlines()[-1])
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    if not result.passed or not {10, 11} <= marks.keys():
        raise RuntimeError(f"one-way {path.name} {size}: {result.status}: {result.reason}")
    lines = [ln for ln in result.logs if ln.startswith('{"bench": "net_tx"')]
    g = json.loads(lines[-1])
    row = _oneway_row(g, got, size)
    row.update(_Window.per_packet(marks[10], marks[11], g["packets"], sync_exits=1))
    return row


# -- the suite ----------------------------------------------------------------------------------

ECHO_FIELDS = ("round_trips_per_s", "p50_us", "p99_us", "mean_us", "user_exits_per_echo",
               "kvm_exits_per_echo", "interrupts_per_echo", "irq_injections_per_echo",
               "kicks_per_echo", "host_cpu_us_per_echo")
ONEWAY_FIELDS = ("pps", "mbit_per_s", "delivered", "user_exits_per_packet",
                 "kvm_exits_per_packet", "interrupts_per_packet", "irq_injections_per_packet",
                 "kicks_per_packet", "host_cpu_us_per_packet")


def _merge(rows: list[dict], fields) -> dict:
    """Medians over repetitions; every repetition's value in ``samples``."""
    out = dict(rows[0])
    out["samples"] = {}
    for k in fields:
        vals = [r.get(k) for r in rows]
        if any(v is None for v in vals):
            out[k] = None
            continue
        s = summarize([float(v) for v in vals])
        out[k] = round(s["median"], 4)
        out["samples"][k] = [round(float(v), 4) for v in vals]
    s = summarize([float(r[fields[0]]) for r in rows if r.get(fields[0]) is not None])
    out["spread"] = s["spread"] if s["n"] > 1 else None
    out["runs"] = len(rows)
    return out


def run(quick: bool = False, repeat: int | None = None) -> dict:
    """Echo and one-way over every available path."""
    from . import qemu
    repeat = repeat or 1
    paths = []
    for p in PATHS:
        why = p.unavailable()
        paths.append({"name": p.name, "title": p.title, "runner": p.runner, "keys": p.keys,
                      "available": why is None,
                      "reason": None if why is None else f"unavailable: {why}"})
    q = qemu.describe()
    q["virtio_net"] = " ".join(qemu.net_args("TAP", GUEST_MAC))    # exactly what the rows ran
    section = {"paths": paths, "sizes": list(SIZES), "echo": [], "oneway": [],
               "qemu": q, "client": "python3 UDP socket in the namespace, one datagram in "
                                    "flight"}
    why = unavailable()
    if why:
        section["unavailable"] = why
        return section
    ns = Namespace()
    try:
        for p in PATHS:
            if p.unavailable():
                continue
            for ring in (3, 0):
                # ring 0 and the Python plane are slow here: fewer round trips
                count = (100 if quick else 2000) if ring == 3 else (15 if quick else 300)
                if p.name.endswith("-py"):
                    count = max(15 if quick else 30, count // 4)
                with progress.step(f"net: echo {p.name} ring {ring}, {count} x "
                                   f"{'/'.join(map(str, SIZES))} bytes x {repeat}"):
                    try:
                        warm = (10 if ring == 3 else 3) if quick else 100
                        reps = [run_echo(ns, p, ring, count, warm)
                                for _ in range(repeat)]
                        for i, size in enumerate(SIZES):
                            row = _merge([r[i] for r in reps], ECHO_FIELDS)
                            row.update(path=p.name, ring=ring, status="ok")
                            section["echo"].append(row)
                    except Exception as e:  # noqa: BLE001 - the row says what failed
                        section["echo"].append({"path": p.name, "ring": ring, "size": None,
                                                "status": "failed", "reason": str(e)[:500]})
            for ring in (3, 0):
                # ring 0 (emulated here) one-way: the small size only in a quick run
                for size in (SIZES if ring == 3 or not quick else SIZES[:1]):
                    secs = 1 if quick else 3
                    with progress.step(f"net: one-way {p.name} ring {ring} {size} bytes, "
                                       f"{secs} s x {repeat}"):
                        try:
                            row = _merge([run_oneway(ns, p, size, secs, ring)
                                          for _ in range(repeat)], ONEWAY_FIELDS)
                            row.update(path=p.name, ring=ring, status="ok")
                            section["oneway"].append(row)
                        except Exception as e:  # noqa: BLE001
                            section["oneway"].append({"path": p.name, "ring": ring,
                                                      "size": size, "status": "failed",
                                                      "reason": str(e)[:500]})
    finally:
        ns.close()
    return section


_COUNTERS = ("user_exits_per_", "kvm_exits_per_", "irq_injections_per_", "interrupts_per_",
             "kicks_per_")


def _shown(rows: list[dict], section: dict) -> list[dict]:
    """Rows for the table: a QEMU row's counters that do not exist there read "n/a"."""
    qemu_paths = {p["name"] for p in section["paths"] if p["runner"] == "qemu"}
    out = []
    for r in rows:
        if r["path"] in qemu_paths:
            r = {k: ("n/a" if v is None and k.startswith(_COUNTERS) else v) for k, v in r.items()}
        out.append(r)
    return out


def format_report(section: dict) -> str:
    """Paths, the QEMU configuration, the echo table, the one-way table."""
    lines = ["network paths:"]
    for p in section["paths"]:
        lines.append(f"  {p['name']:16} {p['title']}" + ("" if p["available"]
                                                         else f"  -- {p['reason']}"))
    if section.get("unavailable"):
        lines.append(f"net suite skipped: {section['unavailable']}")
        return "\n".join(lines)
    q = section.get("qemu") or {}
    if any(p["runner"] == "qemu" and p["available"] for p in section["paths"]):
        lines.append(f"QEMU peer: {q.get('binary')} ({q.get('version')}) {q.get('machine')} "
                     f"{q.get('virtio_net')}; in the namespace (ip netns exec), guest "
                     f"dev=virtio; exits/injections n/a (not hvkvm's counters), kicks and irqs "
                     f"counted by the guest driver, host CPU = QEMU's process")
    lines.append(f"echo client: {section['client']}")
    lines += ["", "UDP echo (round trips):", table(
        _shown([r for r in section["echo"] if r["status"] == "ok"], section),
        [("path", "path", "s"), ("ring", "ring", "d"), ("size", "bytes", "d"),
         ("round_trips_per_s", "RT/s", ",.0f"), ("p50_us", "p50 us", ".1f"),
         ("p99_us", "p99 us", ".1f"), ("user_exits_per_echo", "exits/RT", ".3f"),
         ("kvm_exits_per_echo", "KVM exits/RT", ".2f"),
         ("interrupts_per_echo", "irqs/RT", ".3f"), ("kicks_per_echo", "kicks/RT", ".3f"),
         ("host_cpu_us_per_echo", "host CPU us/RT", ".1f")])]
    lines += ["", "one-way, guest to namespace:", table(
        _shown([r for r in section["oneway"] if r["status"] == "ok"], section),
        [("path", "path", "s"), ("ring", "ring", "d"), ("size", "bytes", "d"),
         ("pps", "pps", ",.0f"), ("mbit_per_s", "Mbit/s", ".1f"),
         ("delivered", "delivered", ".1%"), ("user_exits_per_packet", "exits/pkt", ".4f"),
         ("kvm_exits_per_packet", "KVM exits/pkt", ".3f"),
         ("interrupts_per_packet", "irqs/pkt", ".4f"), ("kicks_per_packet", "kicks/pkt", ".4f"),
         ("host_cpu_us_per_packet", "host CPU us/pkt", ".2f")])]
    for r in section["echo"] + section["oneway"]:
        if r["status"] != "ok":
            lines.append(f"{r['path']} ring {r['ring']} size {r['size']}: {r['status']}: "
                         f"{r['reason']}")
    return "\n".join(lines)


def measures(section: dict) -> list[dict]:
    """Echo rate and latency, one-way pps and Mbit/s."""
    out = []
    for r in section.get("echo", []):
        if r["status"] != "ok":
            continue
        base = f"net/echo/{r['path']}/r{r['ring']}/{r['size']}"
        grp = f"echo {r['size']} B r{r['ring']}"
        s = r.get("samples", {})
        out.append(measure(base + "/round_trips_per_s", r["round_trips_per_s"], "RT/s",
                           "higher", s.get("round_trips_per_s"), group=grp, label=r["path"]))
        out.append(measure(base + "/p50_us", r["p50_us"], "us (p50)", "lower", s.get("p50_us"),
                           group=grp, label=r["path"]))
        out.append(measure(base + "/p99_us", r["p99_us"], "us (p99)", "lower", s.get("p99_us"),
                           group=grp, label=r["path"]))
    for r in section.get("oneway", []):
        if r["status"] != "ok":
            continue
        ring = "" if r["ring"] == 3 else f"/r{r['ring']}"
        base = f"net/oneway/{r['path']}{ring}/{r['size']}"
        grp = f"one-way {r['size']} B r{r['ring']}"
        s = r.get("samples", {})
        out.append(measure(base + "/pps", r["pps"], "pps", "higher", s.get("pps"), group=grp,
                           label=r["path"]))
        out.append(measure(base + "/mbit_per_s", r["mbit_per_s"], "Mbit/s", "higher",
                           s.get("mbit_per_s"), group=grp, label=r["path"]))
    return out

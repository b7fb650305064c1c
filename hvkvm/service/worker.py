"""The VM Worker process: one per running child partition.

Started by the VM Service as ``python -m hvkvm.service.worker --run-dir DIR --instance ID`` in a
session of its own (so it outlives the service), it reads ``DIR/spec.json``, builds the
partition's devices and :class:`~hvkvm.partition.partition.ChildPartition`, runs its exit loop in
the main thread and answers the service on ``DIR/sock`` (the protocol is in
:mod:`hvkvm.service.proto`). When the run ends it closes the partition and its disks, writes
``DIR/result.json``, sends the ``exit`` event and exits.

Integration-service hooks (for the VSPs that provide them; the worker does not depend on them):

* graceful stop: the first of the partition object and its VSPs (``spec`` devices, in order)
  with a callable ``request_shutdown([reason])`` is asked to shut the guest down
  (:class:`hvkvm.vsp.ic.ShutdownVsp` is one); returning ``False`` means it cannot now (e.g. the
  guest has not negotiated the channel) and the worker hard-stops at once.
  Otherwise the worker waits up to the stop timeout for the run to end, then hard-stops.
* heartbeat: the newest ``last_heartbeat`` among them (wall-clock epoch seconds or
  None) is reported in ``status`` and ``stats``.
* more VSPs: append a factory ``f(spec: dict) -> list[Vsp]`` to :data:`VSP_FACTORIES`, or
  name a module in ``$HVKVM_WORKER_PLUGINS`` (comma-separated; the service passes its
  environment to its workers) whose ``vsp_factory(spec)`` is then appended at start-up.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

from . import proto
from .proto import LineReader, peer_credentials, send_msg

log = logging.getLogger("hvkvm.service.worker")

#: Extra VSP factories: ``f(spec) -> list`` of VMBus device providers to offer.
def integration_services(spec: dict) -> list:
    """Hyper-V's heartbeat and shutdown ICs for every partition the service starts: the service
    shows the last heartbeat, and ``stop`` asks the guest to shut down before a hard stop. A
    guest without IC drivers simply leaves the offers unopened."""
    from ..vsp.ic import HeartbeatVsp, ShutdownVsp
    return [ShutdownVsp(), HeartbeatVsp()]


VSP_FACTORIES: list[Callable[[dict], list]] = [integration_services]

CONSOLE_RING = 256 << 10
CONSOLE_LOG_LIMIT = 8 << 20
SERIAL_TAIL = 4096


class ConsoleRing:
    """The serial sink: a ring of recent output (with absolute offsets), a capped log file and
    a condition that wakes console readers. ``write``/``flush`` make it a BinaryIO for
    :class:`~hvkvm.vsp.serial.Serial16550`; it never blocks on a reader."""

    def __init__(self, limit: int = CONSOLE_RING, log_path: Path | None = None,
                 log_limit: int = CONSOLE_LOG_LIMIT):
        self.limit = limit
        self.buf = bytearray()
        self.start = 0          # absolute offset of buf[0]
        self.cond = threading.Condition()
        self.closed = False
        self._log_fd = None
        self._log_left = log_limit
        if log_path is not None:
            self._log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                   0o600)

    @property
    def end(self) -> int:
        """Absolute offset just past the newest byte."""
        return self.start + len(self.buf)

    def write(self, data) -> int:
        """Append output (called by the UART with its lock held: must be quick)."""
        b = bytes(data)
        with self.cond:
            self.buf += b
            over = len(self.buf) - self.limit
            if over > 0:
                del self.buf[:over]
                self.start += over
            self.cond.notify_all()
        if self._log_fd is not None and self._log_left > 0:
            chunk = b[:self._log_left]
            try:
                os.write(self._log_fd, chunk)
                self._log_left -= len(chunk)
            except OSError:
                self._log_left = 0
        return len(b)

    def flush(self) -> None:
        """Nothing is buffered."""

    def read(self, offset: int, timeout: float = 0.0) -> tuple[int, bytes]:
        """Bytes from ``offset`` on (from the oldest kept byte if it is gone), waiting up to
        ``timeout`` for some; returns (offset of the first byte returned, bytes)."""
        with self.cond:
            if offset >= self.end and timeout > 0 and not self.closed:
                self.cond.wait(timeout)
            offset = max(offset, self.start)
            return offset, bytes(self.buf[offset - self.start:])

    def close(self) -> None:
        """No more output: wake readers so they end their streams."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


def _source_for(logger_name: str) -> str:
    if logger_name.startswith(("hvkvm.vsp", "hvkvm.storvsc", "hvkvm.netvsc", "hvkvm.echo")):
        return "vsp"
    if logger_name.startswith("hvkvm.vmbus"):
        return "vmbus"
    if logger_name.startswith("hvkvm.hv"):
        return "hv"
    return "worker"


class _EventHandler(logging.Handler):
    """Forwards WARNING and worse from hvkvm's loggers (VSP, VMBus, SynIC errors) as events,
    at most ``burst`` per ``window`` seconds (a guest must not flood the event log)."""

    def __init__(self, worker: "Worker", burst: int = 20, window: float = 10.0):
        super().__init__(logging.WARNING)
        self.worker = worker
        self.burst, self.window = burst, window
        self.t0 = time.monotonic()
        self.count = 0
        self.suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("hvkvm.service"):
            return
        now = time.monotonic()
        if now - self.t0 > self.window:
            if self.suppressed:
                self.worker.emit("log", severity="warning", source="worker",
                                 message=f"{self.suppressed} more device/log events suppressed "
                                         f"(rate limit {self.burst} per {self.window:g} s)",
                                 details=None)
            self.t0, self.count, self.suppressed = now, 0, 0
        self.count += 1
        if self.count > self.burst:
            self.suppressed += 1
            return
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not take a vCPU thread down
            msg = str(record.msg)
        source = _source_for(record.name)
        details = {"logger": record.name}
        if record.exc_info and record.exc_info[1] is not None:
            details["exception"] = "".join(
                traceback.format_exception(*record.exc_info))[-4000:]
        if "guest error" in msg or "hostile" in msg:
            source, msg = "guest", f"hostile guest detected: {msg}"
        sev = "error" if record.levelno >= logging.ERROR else "warning"
        self.worker.emit("log", severity=sev, source=source, message=msg[:2000], details=details)


def nic_spec_string(nic: dict) -> str:
    """A NIC definition (``{"tap", "mac", "netns", "vnet_hdr"}``) in ``hvkvm run --net``'s
    ``tap=NAME[,mac=..][,netns=NS][,vnet_hdr]`` form."""
    items = [f"tap={nic.get('tap') or ''}"]
    if nic.get("mac"):
        items.append(f"mac={nic['mac']}")
    if nic.get("netns"):
        items.append(f"netns={nic['netns']}")
    if nic.get("vnet_hdr"):
        items.append("vnet_hdr")
    return ",".join(items)


def _call_shutdown(hook, reason: str):
    """``hook(reason)`` when it takes an argument (hvkvm.vsp.ic.ShutdownVsp does), else
    ``hook()``."""
    import inspect
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return hook()
    takes = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                for p in params)
    return hook(reason) if takes else hook()


class Worker:
    """One VM Worker: the partition, its devices, its control socket and its event stream."""

    def __init__(self, run_dir: str | os.PathLike, instance: str):
        self.run_dir = Path(run_dir)
        self.instance = instance
        with open(self.run_dir / "spec.json") as f:
            self.spec = json.load(f)
        self.name = self.spec["name"]
        self.lock = threading.RLock()        # state, events, subscribers
        self.ctl = threading.Lock()          # serializes pause/resume/stop
        self.state = "Starting"
        self.reason = "worker started"
        self.since = time.time()
        self.seq = 0
        self.backlog: collections.deque = collections.deque(maxlen=proto.EVENT_BACKLOG)
        self.subscribers: list[queue.Queue] = []
        self.part = None
        self.vsps: list = []
        self.started = time.monotonic()
        self.stop_pending: str | None = None
        self.stop_timer: threading.Timer | None = None
        self.finished = threading.Event()
        self.console = ConsoleRing(log_path=self.run_dir / "console.log")
        self.listener: socket.socket | None = None
        self.threads: list[threading.Thread] = []

    # -- events ---------------------------------------------------------------------------------

    def emit(self, event: str, **fields) -> dict:
        """Record a worker event and queue it for every subscriber."""
        with self.lock:
            self.seq += 1
            msg = {"seq": self.seq, "time": time.time(), "event": event, **fields}
            self.backlog.append(msg)
            for q in self.subscribers:
                q.put(msg)
        return msg

    def set_state(self, state: str, reason: str) -> None:
        """Change state and tell subscribers."""
        with self.lock:
            if state == self.state and reason == self.reason:
                return
            self.state, self.reason, self.since = state, reason, time.time()
            self.emit("state", state=state, reason=reason)

    # -- the control socket ---------------------------------------------------------------------

    def listen(self) -> None:
        """Bind ``sock`` (0600), start accepting, then write the pidfile."""
        path = self.run_dir / "sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(str(path))
        finally:
            os.umask(old)
        s.listen(64)
        self.listener = s
        t = threading.Thread(target=self._accept_loop, name="worker-accept", daemon=True)
        t.start()
        st = proto.proc_stat(os.getpid())
        ident = {"pid": os.getpid(), "starttime": st[1] if st else 0,
                 "instance": self.instance, "name": self.name}
        tmp = self.run_dir / "pid.tmp"
        tmp.write_text(json.dumps(ident))
        os.replace(tmp, self.run_dir / "pid")

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="worker-conn",
                                 daemon=True)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            _, uid, _ = peer_credentials(conn)
            if uid not in (os.geteuid(), 0):
                send_msg(conn, {"ok": False, "error": f"uid {uid} may not control this worker"})
                return
            conn.settimeout(30)
            reader = LineReader(conn)
            msg = reader.read_msg()
            if msg is None:
                return
            conn.settimeout(None)
            op = msg.get("op")
            handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                send_msg(conn, {"ok": False, "error": f"unknown op {op!r}"})
                return
            try:
                reply = handler(conn, reader, msg)
            except proto.WorkerError as e:
                reply = {"ok": False, "error": str(e)}
            except Exception as e:  # a bug must answer, not hang the service
                log.exception("worker: %s failed", op)
                reply = {"ok": False, "error": f"{op} failed: {type(e).__name__}: {e}"}
            if reply is not None:
                send_msg(conn, reply)
        except (OSError, proto.WorkerError):
            pass
        finally:
            conn.close()

    # -- operations -----------------------------------------------------------------------------

    def _op_hello(self, conn, reader, msg) -> dict:
        return {"ok": True, "protocol": proto.PROTOCOL_VERSION, "name": self.name,
                "pid": os.getpid(), "instance": self.instance, "state": self.state}

    def _op_status(self, conn, reader, msg) -> dict:
        return {"ok": True, "state": self.state, "reason": self.reason, "since": self.since,
                "heartbeat": self.heartbeat()}

    def _op_subscribe(self, conn, reader, msg) -> None:
        since = int(msg.get("since", 0) or 0)
        q: queue.Queue = queue.Queue()
        with self.lock:
            # Replay and registration under one lock: no event falls between them.
            if since > self.seq:
                since = 0   # another instance's numbering: replay what we have
            for ev in self.backlog:
                if ev["seq"] > since:
                    q.put(ev)
            self.subscribers.append(q)
            send_msg(conn, {"ok": True, "state": self.state, "seq": self.seq})
        try:
            while True:
                try:
                    ev = q.get(timeout=1.0)
                except queue.Empty:
                    if self._peer_gone(conn):
                        return
                    continue
                send_msg(conn, ev)
                if ev["event"] == "exit":
                    return
        except OSError:
            return
        finally:
            with self.lock:
                self.subscribers.remove(q)

    @staticmethod
    def _peer_gone(conn: socket.socket) -> bool:
        try:
            r, _, _ = select.select([conn], [], [], 0)
            return bool(r) and conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _op_pause(self, conn, reader, msg) -> dict:
        with self.ctl:
            if self.state == "Paused":
                return {"ok": True, "state": "Paused"}
            if self.state != "Running" or self.part is None:
                raise proto.WorkerError(f"cannot pause: the partition is {self.state}")
            if not self.part.pause(timeout=float(msg.get("timeout", 5.0))):
                self.part.resume()
                raise proto.WorkerError("cannot pause: the vCPUs did not reach a safe point")
            self.set_state("Paused", "paused by the administrator")
            return {"ok": True, "state": "Paused"}

    def _op_resume(self, conn, reader, msg) -> dict:
        with self.ctl:
            if self.state == "Running":
                return {"ok": True, "state": "Running"}
            if self.state != "Paused":
                raise proto.WorkerError(f"cannot resume: the partition is {self.state}")
            self.part.resume()
            self.set_state("Running", "resumed by the administrator")
            return {"ok": True, "state": "Running"}

    def _op_stop(self, conn, reader, msg) -> dict:
        timeout = float(msg.get("timeout", 30.0))
        with self.ctl:
            if self.state == "Stopping":
                return {"ok": True, "graceful": self.stop_timer is not None, "state": "Stopping"}
            if self.state == "Starting" or self.part is None:
                self.stop_pending = "stopped by the administrator while starting"
                self.set_state("Stopping", self.stop_pending)
                return {"ok": True, "graceful": False, "state": "Stopping"}
            if self.state == "Paused":
                self.part.resume()
            hook = self._hook("request_shutdown")
            graceful = False
            if hook is not None:
                try:
                    graceful = _call_shutdown(hook, "stop requested by the administrator") \
                        is not False
                except Exception as e:
                    self.emit("log", severity="error", source="vsp",
                              message=f"shutdown request failed: {type(e).__name__}: {e}",
                              details=None)
            if graceful:
                self.set_state("Stopping", f"graceful shutdown requested; hard stop in "
                                           f"{timeout:g} s")
                self.stop_timer = threading.Timer(
                    timeout, self.hard_stop,
                    args=(f"hard stop: the guest did not shut down within {timeout:g} s",))
                self.stop_timer.daemon = True
                self.stop_timer.start()
            else:
                why = "no shutdown integration service" if hook is None else \
                    "the shutdown integration service cannot reach the guest"
                self.set_state("Stopping", f"hard stop ({why})")
                self.hard_stop(f"stopped by the administrator ({why})")
            return {"ok": True, "graceful": graceful, "state": "Stopping"}

    def _op_hard_stop(self, conn, reader, msg) -> dict:
        reason = str(msg.get("reason") or "hard stop requested")
        with self.ctl:
            if self.part is None:
                self.stop_pending = reason
            if self.state != "Stopping":
                self.set_state("Stopping", reason)
            self.hard_stop(reason)
        return {"ok": True, "state": "Stopping"}

    def hard_stop(self, reason: str) -> None:
        """End the run now (idempotent); the main thread then tears the partition down."""
        part = self.part
        if part is None:
            self.stop_pending = self.stop_pending or reason
            return
        part.resume()
        part.request_stop(reason, status="stopped")

    def _op_stats(self, conn, reader, msg) -> dict:
        return {"ok": True, "stats": self.stats()}

    def _op_console(self, conn, reader, msg) -> None:
        follow = bool(msg.get("follow", True))
        tail = max(0, int(msg.get("tail", 65536)))
        pos = max(0, self.console.end - tail)
        pos, data = self.console.read(pos)
        send_msg(conn, {"ok": True, "offset": pos})
        if data:
            conn.sendall(data)
        pos += len(data)
        while follow:
            first, data = self.console.read(pos, timeout=0.5)
            if data:
                conn.sendall(data)
                pos = first + len(data)
            elif self.console.closed or self._peer_gone(conn):
                return
        return None

    def _op_input(self, conn, reader, msg) -> dict:
        data = msg.get("data")
        if not isinstance(data, str):
            raise proto.WorkerError("input needs data (a string)")
        part = self.part
        if part is None or part.serial is None or self.state not in ("Running", "Paused"):
            raise proto.WorkerError(f"cannot send input: the partition is {self.state}")
        raw = data.encode()
        part.serial.queue_input(raw)
        return {"ok": True, "bytes": len(raw)}

    # -- hooks and stats ------------------------------------------------------------------------

    def _hook_owners(self) -> list:
        return [o for o in [self.part, *self.vsps] if o is not None]

    def _hook(self, name: str):
        for o in self._hook_owners():
            fn = getattr(o, name, None)
            if callable(fn):
                return fn
        return None

    def heartbeat(self) -> dict | None:
        """The guest's last heartbeat as an integration service reports it, or None."""
        owners = [o for o in self._hook_owners() if hasattr(o, "last_heartbeat")]
        if not owners:
            return None
        # The newest heartbeat any integration service has seen (a default one may be silent).
        beats = [o.last_heartbeat for o in owners if o.last_heartbeat is not None]
        t = max(beats) if beats else None
        return {"last": t, "age_s": None if t is None else round(time.time() - t, 3)}

    def stats(self) -> dict:
        """Exit counts, CPU time, memory, serial, SynIC and VSP counters, right now."""
        t = os.times()
        out: dict = {"state": self.state, "pid": os.getpid(),
                     "uptime_s": round(time.monotonic() - self.started, 3),
                     "cpu": {"user_s": round(t.user, 3), "system_s": round(t.system, 3),
                             "total_s": round(t.user + t.system, 3)},
                     "heartbeat": self.heartbeat()}
        try:
            with open("/proc/self/statm") as f:
                out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        part = self.part
        exits: dict = {}
        totals: dict = {}
        vcpus: dict = {}
        for th in (getattr(part, "_threads", None) or []) if part is not None else []:
            per = {k: {"ring0": v[0], "ring3": v[1]} for k, v in dict(th.exits).items()}
            exits[str(th.index)] = per
            for k, v in per.items():
                tt = totals.setdefault(k, {"ring0": 0, "ring3": 0})
                tt["ring0"] += v["ring0"]
                tt["ring3"] += v["ring3"]
            vcpus[str(th.index)] = {"state": th.state, "held": th.held}
        out["exits"], out["exit_totals"], out["vcpus"] = exits, totals, vcpus
        out["exits_total"] = sum(v["ring0"] + v["ring3"] for v in totals.values())
        if part is not None and hasattr(part, "exit_metrics"):
            try:
                out["exit_metrics"] = part.exit_metrics()   # per-vCPU service-time histograms
            except Exception:  # a metrics read must never break a stats request
                log.debug("exit metrics unavailable", exc_info=True)
        if part is not None and part.serial is not None:
            s = part.serial
            out["serial"] = {"tx_bytes": s.tx_bytes, "rx_bytes": s.rx_bytes,
                             "overruns": s.overruns, "input_dropped": s.input_dropped}
        if part is not None and getattr(part, "hv", None) is not None:
            out["hv"] = dict(part.hv.stats)
        vsps = []
        for v in self.vsps:
            entry = {"class": type(v).__name__}
            st = getattr(v, "stats", None)
            if st is not None:
                try:
                    entry["stats"] = st() if callable(st) else st
                except Exception as e:
                    entry["error"] = f"{type(e).__name__}: {e}"
            vsps.append(entry)
        out["vsps"] = vsps
        return json.loads(json.dumps(out, default=str))

    # -- building and running -------------------------------------------------------------------

    def build(self, stack: contextlib.ExitStack):
        """Open the disks, make the VSPs, build the partition."""
        from ..partition.config import PartitionConfig
        from ..partition.partition import ChildPartition
        spec = self.spec
        vsps = []
        disks = []
        if spec.get("disks"):
            from ..vsp.disk import Disk
            for d in spec["disks"]:
                disks.append(stack.enter_context(
                    Disk(d["path"], readonly=bool(d.get("readonly")),
                         direct=bool(d.get("direct")))))
        if disks:
            from ..vmbus.wire import HV_SCSI_GUID
            from ..vsp.storvsc import StorvscVsp
            plane = spec.get("dataplane", "c")
            vsps += [StorvscVsp(d, plane=plane, instance_id=uuid.uuid5(HV_SCSI_GUID, f"disk{i}"))
                     for i, d in enumerate(disks)]
        if spec.get("nics"):
            from ..vmbus.wire import HV_NIC_GUID
            from ..vsp.netvsc import NetvscVsp, TapDevice, parse_net_spec
            plane = spec.get("dataplane", "c")
            for i, nic in enumerate(spec["nics"]):
                ns = parse_net_spec(nic_spec_string(nic))
                tap = stack.enter_context(TapDevice(ns.tap, netns=ns.netns,
                                                    vnet_hdr=ns.vnet_hdr))
                vsps.append(NetvscVsp(tap, mac=ns.mac, plane=plane,
                                      instance_id=uuid.uuid5(HV_NIC_GUID, f"nic{i}:{ns.tap}")))
        for f in VSP_FACTORIES:
            vsps += list(f(spec))
        # One device per class: a plugin's VSP (appended later) replaces a default one.
        last = {getattr(v, "class_id", None): v for v in vsps}
        vsps = [v for v in vsps if getattr(v, "class_id", None) is None
                or last[v.class_id] is v]
        self.vsps = vsps
        cfg = PartitionConfig(image=spec["image"], memory=int(spec["memory"]),
                              vcpus=int(spec["vcpus"]), cmdline=spec.get("cmdline") or "",
                              serial_out=self.console, vsps=vsps)
        cfg.validate()
        return stack.enter_context(ChildPartition(cfg))

    def _on_signal(self, signum, frame) -> None:
        # Not in the handler itself: it interrupts the main thread, which may hold a lock that
        # request_stop() takes.
        threading.Thread(target=self.hard_stop, name="worker-signal", daemon=True,
                         args=(f"worker got {signal.Signals(signum).name}",)).start()

    def main(self) -> int:
        """Run the worker; returns the process exit code."""
        handler = _EventHandler(self)
        logging.getLogger("hvkvm").addHandler(handler)
        self.listen()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.emit("state", state="Starting", reason="worker started")
        try:
            load_plugins()
        except Exception as e:  # the partition still starts, without that plugin's VSPs
            self.emit("log", severity="error", source="worker",
                      message=f"worker plugin failed to load: {type(e).__name__}: {e}",
                      details={"plugins": os.environ.get("HVKVM_WORKER_PLUGINS")})
        result: dict
        with contextlib.ExitStack() as stack:
            try:
                self.part = self.build(stack)
            except Exception as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                result = {"status": "start-error", "reason": f"{type(e).__name__}: {msg}",
                          "detail": traceback.format_exc()[-4000:]}
            else:
                if self.stop_pending:
                    result = {"status": "stopped", "reason": self.stop_pending}
                else:
                    with self.ctl:
                        self.set_state("Running", "partition running")
                    r = self.part.run()
                    result = r.to_json()
                    serial = result.pop("serial", "")
                    result["serial_tail"] = serial[-SERIAL_TAIL:]
                    result["logs"] = result.get("logs", [])[-100:]
                    result["stats"] = self.stats()
            if self.stop_timer is not None:
                self.stop_timer.cancel()
            # Leaving the stack closes the partition (vCPUs, VMBus, RAM, VM), then the disks.
        self.console.close()
        outcome = proto.classify_result(result)
        result["state"] = outcome.state
        result["instance"] = self.instance
        result["ended"] = time.time()
        tmp = self.run_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result, default=str))
        os.replace(tmp, self.run_dir / "result.json")
        self.emit("exit", result=result)
        # Let subscribers drain the exit event, then go.
        end = time.monotonic() + 3
        while time.monotonic() < end:
            with self.lock:
                if not self.subscribers:
                    break
            time.sleep(0.01)
        for name in ("sock", "pid"):
            with contextlib.suppress(OSError):
                (self.run_dir / name).unlink()
        with contextlib.suppress(OSError):
            self.listener.close()
        logging.getLogger("hvkvm").removeHandler(handler)
        return 0


def load_plugins(names: str | None = None) -> None:
    """Import the modules named in ``$HVKVM_WORKER_PLUGINS`` and register their
    ``vsp_factory``."""
    import importlib
    names = os.environ.get("HVKVM_WORKER_PLUGINS", "") if names is None else names
    for name in filter(None, (n.strip() for n in names.split(","))):
        mod = importlib.import_module(name)
        factory = getattr(mod, "vsp_factory", None)
        if callable(factory) and factory not in VSP_FACTORIES:
            VSP_FACTORIES.append(factory)


def main(argv: list[str] | None = None) -> int:
    """``python -m hvkvm.service.worker --run-dir DIR --instance ID``."""
    ap = argparse.ArgumentParser(prog="hvkvm-worker")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--instance", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s worker[%(process)d] %(name)s: %(message)s")
    try:
        w = Worker(args.run_dir, args.instance)
    except (OSError, ValueError, KeyError) as e:
        print(f"hvkvm worker: cannot read the spec in {args.run_dir}: {e}", file=sys.stderr)
        return 2

    return w.main()


if __name__ == "__main__":
    sys.exit(main())

"""The VM Service's core: definitions, worker processes, their supervision and the event log.

:class:`VmService` is transport-free (the HTTP API in :mod:`hvkvm.service.api` is a thin layer
over it). For every started partition it spawns a VM Worker process
(``python -m hvkvm.service.worker``, its own session, so it outlives the service) and runs a
monitor thread that holds the worker's ``subscribe`` stream: state changes, device errors and the
final result arrive there and become runtime records and events. When the stream ends the monitor
waits for the process to go, then decides Off or Crashed (:func:`~hvkvm.service.proto.classify_result`).

Restart: runtime records live in SQLite. A new service re-attaches to every worker whose pidfile,
/proc entry and socket still prove it is the same process (:func:`~hvkvm.service.proto.verify_worker`)
and catches up on the events it missed (subscribe ``since`` the last sequence number applied).
A worker that ended meanwhile left ``result.json``; one that left nothing is reported lost
(Crashed, an error event).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import proto
from .paths import check_unix_path, private_dir
from .proto import ACTIVE_STATES, WorkerError
from .store import Store, VmDefinition

log = logging.getLogger("hvkvm.service")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
#: How long a worker may take from spawn to answering on its socket.
CONNECT_TIMEOUT = 60.0
_PKG_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


@dataclass
class WorkerHandle:
    """The service's view of one worker process."""

    name: str
    instance: str
    run_dir: Path
    pid: int
    starttime: int | None = None
    popen: subprocess.Popen | None = None
    pidfd: int | None = None
    event_seq: int = 0
    result: dict | None = None
    kill_requested: bool = False
    detached: bool = False
    sock: socket.socket | None = None
    thread: threading.Thread | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def sock_path(self) -> Path:
        return self.run_dir / "sock"

    def alive(self) -> bool:
        """Is the process still there (not exited, not a zombie)?"""
        if self.popen is not None:
            return self.popen.poll() is None
        if self.pidfd is not None:
            r, _, _ = select.select([self.pidfd], [], [], 0)
            if r:
                return False
        return proto.proc_alive(self.pid, self.starttime)

    def wait_exit(self, timeout: float) -> bool:
        """Wait for the process to exit; True if it did."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        if self.pidfd is not None:
            r, _, _ = select.select([self.pidfd], [], [], timeout)
            return bool(r) or not proto.proc_alive(self.pid, self.starttime)
        return proto.wait_until(lambda: not proto.proc_alive(self.pid, self.starttime), timeout)

    def signal(self, sig: int) -> None:
        """Send a signal to the worker (through its pidfd: never to a reused pid)."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.popen is not None:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            pass

    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


class VmService:
    """All partitions of one state directory."""

    def __init__(self, state_dir: str | os.PathLike, on_exit: str = "detach",
                 max_event_rows: int = 10_000, max_event_age: float = 30 * 86400.0,
                 worker_python: str | None = None):
        if on_exit not in ("detach", "stop"):
            raise ValueError("on_exit must be detach or stop")
        self.state_dir = private_dir(state_dir)
        self.workers_dir = private_dir(self.state_dir / "workers")
        self.on_exit = on_exit
        self.store = Store(self.state_dir / "hvkvm.db", max_event_rows, max_event_age)
        self.python = worker_python or sys.executable
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.handles: dict[str, WorkerHandle] = {}
        self.closing = False
        self.started = time.time()

    # -- events ---------------------------------------------------------------------------------

    def event(self, severity: str, source: str, message: str, partition: str | None = None,
              details: dict | None = None, when: float | None = None) -> None:
        """Append to the event log (and the service's own log)."""
        self.store.add_event(severity, source, message, partition, details, when)
        level = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                 "error": logging.ERROR, "critical": logging.CRITICAL}.get(severity, logging.INFO)
        log.log(level, "%s%s: %s", f"[{partition}] " if partition else "", source, message)

    def _set_state(self, name: str, state: str, reason: str, source: str = "service",
                   details: dict | None = None, **runtime) -> None:
        with self.lock:
            rt = self.store.get_runtime(name)
            changed = rt.state != state
            if changed or runtime or rt.reason != reason:
                self.store.update_runtime(name, state=state, reason=reason,
                                          since=time.time() if changed else rt.since, **runtime)
            if changed:
                sev = "error" if state == "Crashed" else "info"
                self.event(sev, source, f"state {rt.state} -> {state}: {reason}", name,
                           details)
            self.cond.notify_all()

    # -- start-up and shut-down -----------------------------------------------------------------

    def open(self) -> None:
        """Find the workers of a previous service, then start autostart partitions."""
        self.event("info", "service", f"service started (pid {os.getpid()}, state dir "
                                      f"{self.state_dir})")
        for d in self.store.list_vms():
            rt = self.store.get_runtime(d.name)
            if rt.state in ACTIVE_STATES:
                self._recover(d.name, rt)
        for d in self.store.list_vms():
            if d.autostart and self.store.get_runtime(d.name).state in ("Off", "Crashed"):
                try:
                    self.start(d.name, wait=False, origin="autostart")
                except ServiceError as e:
                    self.event("error", "service", f"autostart failed: {e}", d.name)

    def _recover(self, name: str, rt) -> None:
        run_dir = self.workers_dir / name
        ident, why = proto.verify_worker(run_dir, rt.instance)
        if ident is None and rt.pid and rt.instance and \
                proto.verify_process(rt.pid, rt.starttime, rt.instance) is None:
            # The worker process is there but not ready (the last service died while it was
            # starting): give it time to open its socket rather than orphan it.
            end = time.monotonic() + CONNECT_TIMEOUT
            while ident is None and time.monotonic() < end and \
                    proto.verify_process(rt.pid, rt.starttime, rt.instance) is None:
                time.sleep(0.1)
                ident, why = proto.verify_worker(run_dir, rt.instance)
            if ident is None and proto.verify_process(rt.pid, rt.starttime, rt.instance) is None:
                with contextlib.suppress(OSError):
                    fd = os.pidfd_open(rt.pid)
                    if proto.verify_process(rt.pid, rt.starttime, rt.instance) is None:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    os.close(fd)
                why = f"worker {rt.pid} never answered ({why}); killed it"
        pidfd = None
        if ident is not None:
            try:
                pidfd = os.pidfd_open(ident.pid)
            except OSError:
                ident, why = None, f"pid {rt.pid} went away"
            # The pidfd names the process from now on; re-check it is still the worker.
            if ident is not None and proto.verify_process(ident.pid, ident.starttime,
                                                          ident.instance):
                os.close(pidfd)
                ident, why = None, f"pid {ident.pid} went away"
        if ident is None:
            result = self._read_result(run_dir, rt.instance)
            if result is not None:
                out = proto.classify_result(result)
                self.event(out.severity, out.source,
                           f"{out.message} (ended while the service was down)", name,
                           {"result": _summary(result)})
                self._set_state(name, out.state, f"{out.message} (ended while the service "
                                                 f"was down)", pid=None, starttime=None,
                                last_result=_summary(result))
            else:
                self._set_state(name, "Crashed", f"worker lost while the service was down "
                                                 f"({why})", pid=None, starttime=None)
                self.event("error", "service", f"worker lost: {why}", name,
                           {"pid": rt.pid, "instance": rt.instance})
            return
        h = WorkerHandle(name=name, instance=ident.instance, run_dir=run_dir, pid=ident.pid,
                         starttime=ident.starttime, pidfd=pidfd, event_seq=rt.event_seq)
        with self.lock:
            self.handles[name] = h
        self.event("info", "service", f"found running worker again (pid {ident.pid}, state "
                                      f"{rt.state})", name, {"instance": ident.instance})
        self._start_monitor(h)

    def close(self) -> None:
        """Shut down: stop every partition (on_exit=stop) or leave the workers running."""
        with self.lock:
            self.closing = True
            handles = list(self.handles.values())
        if self.on_exit == "stop":
            for h in handles:
                with contextlib.suppress(WorkerError):
                    proto.request(h.sock_path, "stop", {"timeout": 10.0}, timeout=5)
            for h in handles:
                if not h.done.wait(20):
                    h.kill_requested = True
                    h.signal(signal.SIGKILL)
                    h.done.wait(5)
        else:
            for h in handles:
                h.detached = True
                s = h.sock
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
            for h in handles:
                if h.thread is not None:
                    h.thread.join(5)
            if handles:
                self.event("info", "service", f"service stopping; {len(handles)} worker(s) "
                                              f"left running")
        for h in handles:
            h.close()
        self.event("info", "service", "service stopped")
        self.store.close()

    # -- definitions ----------------------------------------------------------------------------

    def create(self, name: str, image: str, vcpus: int = 1, memory: int = 64 << 20,
               cmdline: str | None = None, disks: list[dict] | None = None,
               nics: list[dict] | None = None, autostart: bool = False) -> dict:
        """Store a new definition (validated); returns it with its state."""
        from ..images import list_images
        from ..partition.config import MAX_MEMORY, MAX_VCPUS
        if not NAME_RE.match(name or ""):
            raise ServiceError("name: use 1-48 letters, digits, '.', '_' or '-' (not first)")
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ServiceError(f"vcpus: must be between 1 and {MAX_VCPUS}, not {vcpus}")
        if not 6 << 20 <= memory <= MAX_MEMORY or memory % (2 << 20):
            raise ServiceError(f"memory: must be a multiple of 2 MiB between 6 MiB and "
                               f"{MAX_MEMORY >> 30} GiB, not {memory} bytes")
        if not image:
            raise ServiceError("image: required")
        if "/" in image:
            if not os.path.isabs(image):
                raise ServiceError(f"image: {image} must be an absolute path or an image name")
            if not os.path.isfile(image):
                raise ServiceError(f"image: {image} is not a file")
        elif image not in list_images():
            raise ServiceError(f"image: unknown image {image!r} (known: "
                               f"{', '.join(list_images())})")
        disks = [dict(d) for d in disks or []]
        for i, d in enumerate(disks):
            p = d.get("path", "")
            if not os.path.isabs(p):
                raise ServiceError(f"disks.{i}.path: {p!r} must be an absolute path")
            if not os.path.isfile(p):
                raise ServiceError(f"disks.{i}.path: {p} is not a file "
                                   f"(create one with `hvkvm disk create`)")
            d["readonly"], d["direct"] = bool(d.get("readonly")), bool(d.get("direct"))
        nics = [{k: v for k, v in dict(n).items() if v not in (None, False)} for n in nics or []]
        if nics:
            from ..vsp.netvsc import NetError, parse_net_spec
            from .worker import nic_spec_string
            for i, n in enumerate(nics):
                try:
                    parse_net_spec(nic_spec_string(n))
                except NetError as e:
                    raise ServiceError(f"nics.{i}: {e}") from None
        d = VmDefinition(name=name, vcpus=vcpus, memory=memory, image=image, cmdline=cmdline,
                         disks=disks, nics=nics, autostart=autostart,
                         created=time.time())
        try:
            self.store.add_vm(d)
        except sqlite3.IntegrityError:
            raise Conflict(f"name: a partition named {name!r} exists") from None
        self.event("info", "service", "partition created", name, d.to_json())
        return self.show(name)

    def _definition(self, name: str) -> VmDefinition:
        d = self.store.get_vm(name)
        if d is None:
            raise NotFound(f"no partition named {name!r}")
        return d

    def delete(self, name: str) -> None:
        """Remove a definition; only when no worker runs it."""
        with self.lock:
            self._definition(name)
            rt = self.store.get_runtime(name)
            if rt.state in ACTIVE_STATES or name in self.handles:
                raise Conflict(f"{name} is {rt.state}: stop it before deleting")
            self.store.delete_vm(name)
        shutil.rmtree(self.workers_dir / name, ignore_errors=True)
        self.event("info", "service", "partition deleted", name)

    def show(self, name: str) -> dict:
        """Definition + state (+ the worker's heartbeat while it runs)."""
        d = self._definition(name)
        rt = self.store.get_runtime(name)
        out = d.to_json()
        out.update({"state": rt.state, "reason": rt.reason, "since": rt.since,
                    "pid": rt.pid if rt.state in ACTIVE_STATES else None,
                    "instance": rt.instance, "last_result": rt.last_result,
                    "heartbeat": None})
        h = self.handles.get(name)
        if h is not None and rt.state in ("Running", "Paused"):
            with contextlib.suppress(WorkerError):
                out["heartbeat"] = proto.request(h.sock_path, "status", timeout=2).get("heartbeat")
        return out

    def list(self) -> list[dict]:
        """Every partition with its state."""
        out = []
        for d in self.store.list_vms():
            rt = self.store.get_runtime(d.name)
            out.append({"name": d.name, "state": rt.state, "reason": rt.reason,
                        "since": rt.since, "vcpus": d.vcpus, "memory": d.memory,
                        "image": d.image, "autostart": d.autostart,
                        "pid": rt.pid if rt.state in ACTIVE_STATES else None})
        return out

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, name: str, wait: bool = True, timeout: float = 60.0,
              origin: str = "api") -> dict:
        """Spawn the partition's worker; with ``wait``, until it runs (or fails)."""
        from ..images import ImageError, resolve_image
        with self.lock:
            if self.closing:
                raise Conflict("the service is shutting down")
            d = self._definition(name)
            rt = self.store.get_runtime(name)
            if rt.state in ACTIVE_STATES or name in self.handles:
                raise Conflict(f"{name} is already {rt.state}")
            self._set_state(name, "Starting", f"start requested ({origin})")
        try:
            image = resolve_image(d.image)
        except ImageError as e:
            self._set_state(name, "Off", f"start failed: {e}")
            raise ServiceError(f"image: {e}") from None
        run_dir = self.workers_dir / name
        instance = uuid.uuid4().hex
        try:
            private_dir(run_dir)
            check_unix_path(run_dir / "sock")
            for stale in ("sock", "pid", "result.json", "console.log"):
                with contextlib.suppress(FileNotFoundError):
                    (run_dir / stale).unlink()
            cmdline = d.cmdline
            if cmdline is None:
                base = d.image if "/" not in d.image else \
                    os.path.splitext(os.path.basename(d.image))[0]
                cmdline = base + (f" cpus={d.vcpus}" if d.vcpus > 1 else "")
            spec = {"name": name, "image": str(image), "memory": d.memory, "vcpus": d.vcpus,
                    "cmdline": cmdline, "disks": d.disks, "nics": d.nics, "instance": instance}
            (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
            env = dict(os.environ)
            env["PYTHONPATH"] = _PKG_ROOT + (os.pathsep + env["PYTHONPATH"]
                                             if env.get("PYTHONPATH") else "")
            with open(run_dir / "worker.log", "ab") as logf:
                popen = subprocess.Popen(
                    [self.python, "-m", proto.WORKER_MODULE, "--run-dir", str(run_dir),
                     "--instance", instance],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=str(run_dir),
                    env=env, start_new_session=True, close_fds=True)
        except Exception as e:
            self._set_state(name, "Off", f"start failed: {e}")
            raise ServiceError(f"cannot start {name}: {e}") from None
        pidfd = None
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(popen.pid)
        st = proto.proc_stat(popen.pid)
        h = WorkerHandle(name=name, instance=instance, run_dir=run_dir, pid=popen.pid,
                         starttime=st[1] if st else None, popen=popen, pidfd=pidfd)
        with self.lock:
            self.handles[name] = h
            self.store.update_runtime(name, pid=h.pid, starttime=h.starttime, instance=instance,
                                      event_seq=0)
        self.event("info", "service", f"worker process {h.pid} spawned", name,
                   {"instance": instance, "image": str(image), "cmdline": cmdline})
        self._start_monitor(h)
        if wait:
            state = self.wait_state(name, {"Running", "Paused", "Off", "Crashed"}, timeout)
            if state not in ("Running", "Paused"):
                rt = self.store.get_runtime(name)
                raise Conflict(f"{name} did not start: {rt.reason}" if state in ("Off", "Crashed")
                               else f"{name} is still {state} after {timeout:g} s")
        return self.show(name)

    def wait_state(self, name: str, states: set[str], timeout: float) -> str:
        """Wait until the partition's state is one of ``states``; returns the state then."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                state = self.store.get_runtime(name).state
                if state in states:
                    return state
                left = end - time.monotonic()
                if left <= 0:
                    return state
                self.cond.wait(min(left, 0.5))

    def _handle(self, name: str, verb: str) -> WorkerHandle:
        self._definition(name)
        with self.lock:
            h = self.handles.get(name)
            if h is None:
                raise Conflict(f"cannot {verb} {name}: it is "
                               f"{self.store.get_runtime(name).state}")
            return h

    def _worker_request(self, h: WorkerHandle, op: str, args: dict | None = None,
                        timeout: float = 10.0) -> dict:
        try:
            return proto.request(h.sock_path, op, args, timeout=timeout)
        except WorkerError as e:
            raise Conflict(f"{h.name}: {e}") from None

    def pause(self, name: str) -> dict:
        """Hold the vCPUs at a safe point."""
        h = self._handle(name, "pause")
        self._worker_request(h, "pause")
        self.wait_state(name, {"Paused", "Off", "Crashed"}, 5)
        return self.show(name)

    def resume(self, name: str) -> dict:
        """Let a paused partition run again."""
        h = self._handle(name, "resume")
        self._worker_request(h, "resume")
        self.wait_state(name, {"Running", "Off", "Crashed"}, 5)
        return self.show(name)

    def stop(self, name: str, timeout: float = 30.0, wait: bool = True) -> dict:
        """Graceful stop (shutdown integration service), hard stop after ``timeout``."""
        h = self._handle(name, "stop")
        reply = self._worker_request(h, "stop", {"timeout": timeout})
        if wait:
            state = self.wait_state(name, {"Off", "Crashed"}, timeout + 15)
            if state in ACTIVE_STATES:
                self.event("error", "service", f"worker did not end {timeout + 15:g} s after "
                                               f"stop; killing it", name)
                self.kill(name)
        out = self.show(name)
        out["graceful"] = reply.get("graceful", False)
        return out

    def kill(self, name: str) -> dict:
        """SIGKILL the worker (no teardown by the worker; the kernel frees the VM)."""
        h = self._handle(name, "kill")
        h.kill_requested = True
        h.signal(signal.SIGKILL)
        if not h.done.wait(15):
            raise Conflict(f"{name}: worker {h.pid} did not die")
        return self.show(name)

    def console_input(self, name: str, data: str) -> dict:
        """Queue text for the guest's COM1."""
        h = self._handle(name, "send input to")
        return {"bytes": self._worker_request(h, "input", {"data": data})["bytes"]}

    def stats(self, name: str) -> dict:
        """Live stats from the worker, or the last run's if none runs."""
        d = self._definition(name)
        h = self.handles.get(name)
        rt = self.store.get_runtime(name)
        if h is not None:
            try:
                st = proto.request(h.sock_path, "stats", timeout=5)["stats"]
                return {"name": d.name, "state": rt.state, "live": True, **st}
            except WorkerError:
                pass
        last = rt.last_result or {}
        return {"name": d.name, "state": rt.state, "live": False,
                **(last.get("stats") or {}), "exit_totals": last.get("exit_totals", {})}

    def console_source(self, name: str) -> tuple[Path | None, Path]:
        """(worker socket if one runs, the last run's console.log)."""
        self._definition(name)
        h = self.handles.get(name)
        return (h.sock_path if h is not None else None), self.workers_dir / name / "console.log"

    # -- supervision ----------------------------------------------------------------------------

    def _start_monitor(self, h: WorkerHandle) -> None:
        h.thread = threading.Thread(target=self._monitor, args=(h,), name=f"monitor-{h.name}",
                                    daemon=True)
        h.thread.start()

    def _connect(self, h: WorkerHandle) -> socket.socket | None:
        """Connect to the worker's socket once it listens; None if it died or never came up."""
        end = time.monotonic() + CONNECT_TIMEOUT
        while not h.detached:
            if not h.alive():
                return None
            try:
                return proto.connect(h.sock_path, timeout=10)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            except OSError as e:
                log.warning("%s: worker socket: %s", h.name, e)
            if time.monotonic() > end:
                self.event("error", "service", f"worker {h.pid} did not open its socket within "
                                               f"{CONNECT_TIMEOUT:g} s; killing it", h.name)
                h.signal(signal.SIGKILL)
                return None
            time.sleep(0.05)
        return None

    def _monitor(self, h: WorkerHandle) -> None:
        try:
            while not h.detached:
                s = self._connect(h)
                if s is None:
                    break
                h.sock = s
                try:
                    self._follow(h, s)
                except (OSError, WorkerError) as e:
                    if not h.detached:
                        log.info("%s: worker stream ended: %s", h.name, e)
                finally:
                    h.sock = None
                    s.close()
                if h.result is not None or h.detached:
                    break
                # Stream ended without a result: the worker died, or only its socket did.
                if h.wait_exit(1.0):
                    break
            if h.detached:
                return
            self._finish(h)
        except Exception:
            log.exception("%s: monitor failed", h.name)
            if not h.detached:
                self._finish(h)
        finally:
            h.done.set()

    def _follow(self, h: WorkerHandle, s: socket.socket) -> None:
        reader = proto.LineReader(s)
        proto.send_msg(s, {"op": "hello"})
        hello = reader.read_msg()
        if not hello or not hello.get("ok") or hello.get("instance") != h.instance:
            raise WorkerError(f"socket answered for another worker: {hello}")
        s.close()
        s = proto.connect(h.sock_path, timeout=10)
        h.sock = s
        try:
            reader = proto.LineReader(s)
            proto.send_msg(s, {"op": "subscribe", "since": h.event_seq})
            reply = reader.read_msg()
            if not reply or not reply.get("ok"):
                raise WorkerError(f"subscribe refused: {reply}")
            s.settimeout(None)
            while True:
                msg = reader.read_msg()
                if msg is None:
                    return
                self._apply(h, msg)
                if msg.get("event") == "exit":
                    return
        finally:
            s.close()

    def _apply(self, h: WorkerHandle, msg: dict) -> None:
        kind = msg.get("event")
        seq = int(msg.get("seq", 0))
        when = msg.get("time")
        if kind == "state":
            state = msg.get("state")
            if state in proto.STATES:
                self._set_state(h.name, state, str(msg.get("reason", "")), source="worker",
                                event_seq=seq)
        elif kind == "log":
            self.store.add_event(msg.get("severity", "warning"), msg.get("source", "worker"),
                                 str(msg.get("message", "")), h.name, msg.get("details"), when)
            self.store.update_runtime(h.name, event_seq=seq)
        elif kind == "exit":
            h.result = msg.get("result") or {}
            self.store.update_runtime(h.name, event_seq=seq)
        h.event_seq = seq

    def _finish(self, h: WorkerHandle) -> None:
        """The worker's stream ended: wait for the process, then settle Off or Crashed."""
        if not h.wait_exit(10):
            if h.result is None:
                # Alive but unreachable and without a result: do not leave a half-dead worker.
                self.event("error", "service", f"worker {h.pid} stopped answering; killing it",
                           h.name)
            h.signal(signal.SIGKILL)
            h.wait_exit(5)
        result = h.result
        if result is None and not h.kill_requested:
            result = self._read_result(h.run_dir, h.instance)
        out = proto.classify_result(result, killed=h.kill_requested, returncode=h.returncode())
        details = {"pid": h.pid, "instance": h.instance}
        if result is not None:
            details["result"] = _summary(result)
        elif h.returncode() is not None:
            details["returncode"] = h.returncode()
        if out.state == "Crashed" or out.severity != "info":
            self.event(out.severity, out.source, out.message, h.name, details)
        with self.lock:
            self.handles.pop(h.name, None)
            if self.store.get_vm(h.name) is not None:
                self._set_state(h.name, out.state, out.message, source="service", pid=None,
                                starttime=None,
                                last_result=_summary(result) if result is not None else None)
            self.cond.notify_all()
        h.close()

    @staticmethod
    def _read_result(run_dir: Path, instance: str | None) -> dict | None:
        try:
            with open(run_dir / "result.json") as f:
                result = json.load(f)
        except (OSError, ValueError):
            return None
        if instance is not None and result.get("instance") != instance:
            return None
        return result


def _summary(result: dict) -> dict:
    """The parts of a final result worth keeping in the runtime record and events."""
    keep = ("status", "reason", "detail", "guest_code", "wall_ms", "exit_totals", "symbol",
            "registers", "backtrace", "assert", "state", "ended", "serial_tail", "stats",
            "instance", "exit_metrics")
    out = {k: result[k] for k in keep if k in result}
    if isinstance(out.get("detail"), str):
        out["detail"] = out["detail"][-4000:]
    return out

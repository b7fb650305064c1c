"""The protocol between the VM Service and a VM Worker process, and worker identity checks.

Transport: a Unix stream socket per worker, ``workers/NAME/sock`` (mode 0600 in a 0700
directory; the worker also refuses peers whose SO_PEERCRED uid is not its own). Messages are
JSON objects, one per line (UTF-8, at most :data:`MAX_LINE` bytes). A connection carries one
request and then either one reply or, for ``subscribe`` and ``console``, a stream.

Requests (``{"op": NAME, ...}``) and replies (``{"ok": true, ...}`` or
``{"ok": false, "error": "one line"}``):

``hello``
    ``{"ok", "protocol", "name", "pid", "instance", "state"}``: who the worker is.
``status``
    ``{"ok", "state", "reason", "since", "heartbeat"}``.
``subscribe`` ``{"since": SEQ}``
    reply ``{"ok", "state", "seq"}``, then every worker event with a sequence number above SEQ
    (the worker keeps the last :data:`EVENT_BACKLOG`; a service that was away catches up), then
    live events, one per line:
    ``{"seq", "time", "event": "state", "state", "reason"}``,
    ``{"seq", "time", "event": "log", "severity", "source", "message", "details"}``,
    ``{"seq", "time", "event": "exit", "result": {...}}`` (the last one; then EOF).
``pause`` / ``resume``
    hold the vCPUs at a safe point / let them go; reply ``{"ok", "state"}``.
``stop`` ``{"timeout": S}``
    graceful stop: calls the partition's ``request_shutdown()`` hook if it has one (the
    shutdown integration service) and hard-stops after ``S`` seconds; without a hook, a hard
    stop now. Reply ``{"ok", "graceful", "state"}``; the end comes as the ``exit`` event.
``hard_stop`` ``{"reason"}``
    end the run now (the vCPUs stop, devices close, the worker exits).
``stats``
    ``{"ok", "stats": {...}}``: exit counts, CPU time, RSS, serial and VSP counters.
``console`` ``{"follow": bool, "tail": BYTES}``
    reply ``{"ok", "offset"}``, then raw serial output bytes (the last ``tail`` bytes of the
    worker's ring, then new output while ``follow``); EOF when the run ends.
``input`` ``{"data": TEXT}``
    queue bytes (UTF-8) for the guest's COM1 receiver; reply ``{"ok", "bytes"}``.

Identity: the worker writes ``workers/NAME/pid`` (JSON: pid, starttime, instance, name) once
its socket listens. The service believes a pid is that worker only if ``/proc/PID/stat`` shows
the same start time (not a reused pid), the process is not a zombie, its command line is
``-m hvkvm.service.worker`` with the same ``--instance``, and its socket's ``hello`` answers with
that pid and instance.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

PROTOCOL_VERSION = 1
WORKER_MODULE = "hvkvm.service.worker"
MAX_LINE = 1 << 20
EVENT_BACKLOG = 512

#: Partition states, as the service reports them.
STATES = ("Off", "Starting", "Running", "Paused", "Stopping", "Crashed")
#: States in which a worker process exists.
ACTIVE_STATES = frozenset({"Starting", "Running", "Paused", "Stopping"})


class WorkerError(Exception):
    """A worker refused a request or could not be reached (one line)."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def send_msg(sock: socket.socket, msg: dict) -> None:
    """Send one JSON line."""
    sock.sendall(json.dumps(msg, separators=(",", ":"), default=str).encode() + b"\n")


class LineReader:
    """Reads JSON lines (and, after them, raw bytes) from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def read_msg(self) -> dict | None:
        """The next JSON object, or None at EOF. WorkerError for a malformed or huge line."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                try:
                    msg = json.loads(line)
                except ValueError:
                    raise WorkerError("malformed message (not JSON)") from None
                if not isinstance(msg, dict):
                    raise WorkerError("malformed message (not an object)")
                return msg
            if len(self.buf) > MAX_LINE:
                raise WorkerError("message too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def read_raw(self, n: int = 65536) -> bytes:
        """Raw bytes after the JSON part (b"" at EOF)."""
        if self.buf:
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        return self.sock.recv(n)


def connect(path: str | os.PathLike, timeout: float | None = 5.0) -> socket.socket:
    """A connected Unix socket to ``path`` (OSError as the kernel reports it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(os.fspath(path))
    except BaseException:
        s.close()
        raise
    return s


def request(path: str | os.PathLike, op: str, args: dict | None = None,
            timeout: float = 10.0) -> dict:
    """One request (``op`` plus ``args``), one reply. WorkerError if the worker refuses or
    cannot be reached."""
    args = args or {}
    try:
        s = connect(path, timeout)
    except OSError as e:
        raise WorkerError(f"worker unreachable: {e.strerror or e}") from None
    try:
        send_msg(s, {"op": op, **args})
        reply = LineReader(s).read_msg()
    except (OSError, socket.timeout) as e:
        raise WorkerError(f"worker did not answer {op}: {e}") from None
    finally:
        s.close()
    if reply is None:
        raise WorkerError(f"worker closed the connection on {op}")
    if not reply.get("ok"):
        raise WorkerError(str(reply.get("error", "refused")))
    return reply


# -- process identity ---------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


def proc_alive(pid: int, starttime: int | None = None) -> bool:
    """True if ``pid`` is a live (not zombie) process, with that start time if given."""
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    return starttime is None or st[1] == starttime


def proc_cmdline(pid: int) -> list[str]:
    """A process's argv ([] if unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


@dataclass
class WorkerIdentity:
    """What a worker's pidfile says."""

    pid: int
    starttime: int
    instance: str
    name: str


def read_pidfile(run_dir: str | os.PathLike) -> WorkerIdentity | None:
    """The pidfile of a worker directory, or None if absent or unreadable."""
    try:
        with open(Path(run_dir) / "pid") as f:
            d = json.load(f)
        return WorkerIdentity(int(d["pid"]), int(d["starttime"]), str(d["instance"]),
                              str(d["name"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_process(pid: int, starttime: int | None, instance: str) -> str | None:
    """None if ``pid`` is the live worker process of ``instance``, else why not (one line)."""
    if not proc_alive(pid):
        return f"pid {pid} is not running"
    st = proc_stat(pid)
    if starttime is not None and st is not None and st[1] != starttime:
        return f"pid {pid} was reused by another process"
    argv = proc_cmdline(pid)
    if WORKER_MODULE not in argv or instance not in argv:
        return f"pid {pid} is not the worker of instance {instance}"
    return None


def verify_worker(run_dir: str | os.PathLike, instance: str | None) -> tuple[WorkerIdentity | None, str]:
    """Find a live worker in ``run_dir`` whose instance is ``instance`` (any if None).

    Returns (identity, "") or (None, why not). Checks the pidfile, /proc and the socket.
    """
    ident = read_pidfile(run_dir)
    if ident is None:
        return None, "no pidfile"
    if instance is not None and ident.instance != instance:
        return None, f"pidfile is of instance {ident.instance}, not {instance}"
    why = verify_process(ident.pid, ident.starttime, ident.instance)
    if why:
        return None, why
    try:
        hello = request(Path(run_dir) / "sock", "hello", timeout=5)
    except WorkerError as e:
        return None, str(e)
    if hello.get("pid") != ident.pid or hello.get("instance") != ident.instance:
        return None, "socket answered for another worker"
    return ident, ""


# -- how a run ended ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a finished run means for the partition: its new state and the event to log."""

    state: str
    severity: str
    source: str
    message: str


def classify_result(result: dict | None, killed: bool = False,
                    returncode: int | None = None) -> Outcome:
    """Turn a worker's final result (or its absence) into a state and an event.

    Guest crashes (triple fault, failed entry, KVM internal error, faults, asserts) and
    protocol violations by the guest ("guest-error": the hostile-guest detections) leave the
    partition Crashed; so do host-side failures and a worker that died without a result.
    A run that ended by request, by the guest's own done()/power-off or by halting is Off.
    """
    if killed:
        return Outcome("Off", "warning", "service", "worker killed by the administrator")
    if result is None:
        if returncode is not None and returncode < 0:
            import signal as _signal
            try:
                sig = _signal.Signals(-returncode).name
            except ValueError:
                sig = f"signal {-returncode}"
            how = f"killed by {sig}"
        elif returncode is not None:
            how = f"exit status {returncode}"
        else:
            how = "gone"
        return Outcome("Crashed", "error", "service",
                       f"worker process died without a result ({how})")
    status = result.get("status", "?")
    reason = result.get("reason", "")
    if status in ("pass", "stopped"):
        return Outcome("Off", "info", "worker", f"run ended: {reason}")
    if status in ("fail", "timeout"):
        return Outcome("Off", "warning", "worker", f"run ended ({status}): {reason}")
    if status in ("crash", "fault", "assert"):
        return Outcome("Crashed", "error", "guest", f"guest crash: {reason}")
    if status == "guest-error":
        return Outcome("Crashed", "error", "guest", f"hostile guest detected: {reason}")
    if status == "start-error":
        return Outcome("Off", "error", "worker", f"start failed: {reason}")
    return Outcome("Crashed", "error", "worker", f"worker failed ({status}): {reason}")


def wait_until(pred, timeout: float, step: float = 0.02) -> bool:
    """Poll ``pred()`` until true or ``timeout`` seconds pass; its last value."""
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(step)

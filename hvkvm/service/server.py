"""``hvkvm service``: the daemon. Runs in the foreground until SIGTERM or SIGINT.

Order of start-up: take ``STATE_DIR/service.lock`` (one service per state directory), open the
database, find the workers of a previous service (:meth:`VmService.open`), bind the API socket
(0600 in a 0700 directory; a stale socket file is replaced, a live one means another service),
then serve with uvicorn. Each connection's peer credentials (SO_PEERCRED) are read when it is
accepted; a uid other than the service's own is answered 403 and logged.

On SIGTERM: uvicorn stops accepting and finishes requests (3 s grace for console streams), then
the service stops every worker (``--on-exit stop``) or leaves them running for the next service
to find (``--on-exit detach``, the default, as Hyper-V's VMMS does), and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from .manager import VmService
from .paths import PathError, check_unix_path, default_socket, private_dir
from .proto import peer_credentials

log = logging.getLogger("hvkvm.service")


class ServiceStartError(Exception):
    """The service cannot start (one line)."""


def make_protocol(svc: VmService, allowed_uids: set[int]):
    """uvicorn's h11 protocol, which tags each connection with its SO_PEERCRED credentials
    and answers 403 to users other than ``allowed_uids``."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class PeerCredProtocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            pid = uid = gid = None
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError, TypeError):
                if sock is not None and sock.family == socket.AF_UNIX:
                    pid, uid, gid = peer_credentials(sock)
            peer = {"pid": pid, "uid": uid, "gid": gid}
            inner = self.app
            allowed = uid in allowed_uids
            if not allowed:
                svc.event("warning", "api", f"refused a connection from uid {uid} (pid {pid}): "
                                            f"not the service's user", None, {"peer": peer})

            async def app(scope, receive, send):
                if scope["type"] == "http":
                    scope["hvkvm.peer"] = peer
                    if not allowed:
                        body = json.dumps({"error": f"uid {uid} may not use this service (it "
                                                    f"serves uid {os.geteuid()} only)"}).encode()
                        await send({"type": "http.response.start", "status": 403,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(body)).encode())]})
                        await send({"type": "http.response.body", "body": body})
                        return
                await inner(scope, receive, send)

            self.app = app

    return PeerCredProtocol


def _lock(state_dir: Path) -> int:
    fd = os.open(state_dir / "service.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise ServiceStartError(f"another service (pid {other or '?'}) uses {state_dir}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _bind(path: Path) -> socket.socket:
    private_dir(path.parent)
    spath = check_unix_path(path)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(spath)
        except OSError:
            path.unlink()       # stale: nobody listens
        else:
            raise ServiceStartError(f"another service listens on {path}")
        finally:
            probe.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        s.bind(spath)
    finally:
        os.umask(old)
    os.chmod(spath, 0o600)
    s.listen(128)
    return s


def serve(state_dir: str | os.PathLike, socket_path: str | os.PathLike | None = None,
          on_exit: str = "detach", max_event_rows: int = 10_000,
          max_event_age: float = 30 * 86400.0, ready=None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit code."""
    try:
        state = private_dir(state_dir)
        lock_fd = _lock(state)
    except PathError as e:
        raise ServiceStartError(str(e)) from None
    sock_path = Path(socket_path) if socket_path else default_socket(state)
    svc = None
    sock = None
    try:
        svc = VmService(state, on_exit=on_exit, max_event_rows=max_event_rows,
                        max_event_age=max_event_age)
        try:
            sock = _bind(sock_path)
        except PathError as e:
            raise ServiceStartError(str(e)) from None
        import uvicorn          # imported once the lock and the socket are ours: a refused

        from .api import create_app   # second service fails fast
        svc.open()
        app = create_app(svc)
        config = uvicorn.Config(app, http=make_protocol(svc, {os.geteuid()}), lifespan="off",
                                log_level="warning", access_log=False,
                                timeout_graceful_shutdown=3, ws="none")
        server = uvicorn.Server(config)
        stop_signal = []
        # uvicorn re-raises the signal that stopped it once it restores these handlers: make
        # that a no-op so a SIGTERM ends in a clean exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop_signal.append(signum))
        log.warning("hvkvm service: pid %d, state %s, API on %s (on exit: %s)", os.getpid(),
                    state, sock_path, on_exit)
        if ready is not None:
            ready()
        asyncio.run(server.serve(sockets=[sock]))
        return 0
    finally:
        if svc is not None:
            svc.close()
        if sock is not None:
            sock.close()
            with contextlib.suppress(OSError):
                sock_path.unlink()
        os.close(lock_fd)


def main_service(state_dir: str | None, socket_path: str | None, on_exit: str,
                 max_event_rows: int, max_event_age: float, verbose: bool) -> int:
    """Entry point for ``hvkvm service``."""
    from .paths import default_state_dir
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    return serve(state_dir or default_state_dir(), socket_path, on_exit, max_event_rows,
                 max_event_age)

"""Where the VM Service keeps its state and its socket, and the private-directory rules.

State directory (``--state-dir``, else ``$HVKVM_STATE_DIR``, else ``$XDG_STATE_HOME/hvkvm``, else
``~/.local/state/hvkvm``), mode 0700::

    hvkvm.db            SQLite: partition definitions, runtime records, event log
    service.lock        flock: one service per state directory
    run/api.sock        the management API socket (0600, in the 0700 run/ directory), unless
                        --socket names another path
    workers/NAME/       one per partition (0700): spec.json (what the worker runs), pid (its
                        identity), sock (its control socket), result.json (how the last run
                        ended), console.log (serial output of the last run), worker.log (stderr)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: sun_path is 108 bytes including the NUL.
MAX_UNIX_PATH = 107


class PathError(Exception):
    """A state directory or socket path that cannot be used safely (one line)."""


def default_state_dir() -> Path:
    """``$HVKVM_STATE_DIR``, else ``$XDG_STATE_HOME/hvkvm``, else ``~/.local/state/hvkvm``."""
    env = os.environ.get("HVKVM_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "hvkvm"


def default_socket(state_dir: str | os.PathLike | None = None) -> Path:
    """``$HVKVM_SOCKET`` when no state dir is given, else ``STATE_DIR/run/api.sock``."""
    if state_dir is None:
        env = os.environ.get("HVKVM_SOCKET")
        if env:
            return Path(env)
        state_dir = default_state_dir()
    return Path(state_dir) / "run" / "api.sock"


def private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700; it must be ours.

    Refuses a directory owned by another user or a symlink (the socket or the database would
    otherwise sit where someone else controls them).
    """
    p = Path(path)
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(p)
    except OSError as e:
        raise PathError(f"{p}: cannot create directory: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PathError(f"{p}: not a directory")
    if st.st_uid != os.geteuid():
        raise PathError(f"{p}: owned by uid {st.st_uid}, not by this user ({os.geteuid()})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(p, 0o700)
    return p


def check_unix_path(path: str | os.PathLike) -> str:
    """The path as a string, or PathError if it is too long for a Unix socket address."""
    s = os.fspath(path)
    if len(s.encode()) > MAX_UNIX_PATH:
        raise PathError(f"socket path {s} is {len(s.encode())} bytes; a Unix socket path "
                        f"holds at most {MAX_UNIX_PATH} (use a shorter --state-dir or --socket)")
    return s

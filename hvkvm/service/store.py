"""The service's SQLite database: partition definitions, their runtime records, the event log.

One file (``STATE_DIR/hvkvm.db``, WAL journal) and one connection shared by the service's threads
under a lock. Three tables:

``vms``
    the definitions (name, vcpus, memory, image, cmdline, disks, nics, autostart, created).
``runtime``
    what the service last knew of each partition's worker: state, why, since when, the worker's
    pid, process start time and instance id, the last worker event sequence number applied and the
    last run's result. A new service reads it to find running workers again.
``events``
    the event log (time, partition, severity, source, message, details JSON), with bounded
    retention: at most ``max_rows`` rows and nothing older than ``max_age`` seconds.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1

#: Severities, lowest first; a query's ``severity`` is a minimum.
SEVERITIES = ("debug", "info", "warning", "error", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

DEFAULT_EVENT_ROWS = 10_000
DEFAULT_EVENT_AGE = 30 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vms (
    name TEXT PRIMARY KEY,
    vcpus INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    image TEXT NOT NULL,
    cmdline TEXT,
    disks TEXT NOT NULL DEFAULT '[]',
    nics TEXT NOT NULL DEFAULT '[]',
    autostart INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runtime (
    name TEXT PRIMARY KEY REFERENCES vms(name) ON DELETE CASCADE,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    pid INTEGER,
    starttime INTEGER,
    instance TEXT,
    event_seq INTEGER NOT NULL DEFAULT 0,
    last_result TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    partition TEXT,
    severity TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_partition_time ON events(partition, time);
"""


@dataclass
class VmDefinition:
    """A partition definition as stored."""

    name: str
    vcpus: int
    memory: int
    image: str
    cmdline: str | None = None
    disks: list[dict] = field(default_factory=list)
    nics: list[dict] = field(default_factory=list)
    autostart: bool = False
    created: float = 0.0

    def to_json(self) -> dict:
        """JSON-ready dict."""
        return {"name": self.name, "vcpus": self.vcpus, "memory": self.memory,
                "image": self.image, "cmdline": self.cmdline, "disks": self.disks,
                "nics": self.nics, "autostart": self.autostart, "created": self.created}


@dataclass
class Runtime:
    """The service's runtime record of one partition."""

    name: str
    state: str = "Off"
    reason: str = ""
    since: float = 0.0
    pid: int | None = None
    starttime: int | None = None
    instance: str | None = None
    event_seq: int = 0
    last_result: dict | None = None


class Store:
    """The database. Thread-safe (one connection, one lock)."""

    def __init__(self, path: str | Path, max_event_rows: int = DEFAULT_EVENT_ROWS,
                 max_event_age: float = DEFAULT_EVENT_AGE):
        self.path = Path(path)
        self.max_event_rows = max_event_rows
        self.max_event_age = max_event_age
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema {row[0]} is newer than this hvkvm "
                                   f"understands ({SCHEMA_VERSION})")
        self._inserts = 0
        self.prune_events()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    # -- definitions ---------------------------------------------------------------------------

    def add_vm(self, d: VmDefinition) -> None:
        """Insert a definition (and an Off runtime record); sqlite3.IntegrityError if taken."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO vms VALUES (?,?,?,?,?,?,?,?,?)",
                    (d.name, d.vcpus, d.memory, d.image, d.cmdline, json.dumps(d.disks),
                     json.dumps(d.nics), int(d.autostart), d.created))
                self._db.execute("INSERT INTO runtime (name, state, reason, since) "
                                 "VALUES (?, 'Off', 'created', ?)", (d.name, d.created))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get_vm(self, name: str) -> VmDefinition | None:
        """One definition, or None."""
        with self._lock:
            row = self._db.execute("SELECT * FROM vms WHERE name=?", (name,)).fetchone()
        return self._vm(row) if row else None

    def list_vms(self) -> list[VmDefinition]:
        """Every definition, by name."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM vms ORDER BY name").fetchall()
        return [self._vm(r) for r in rows]

    def delete_vm(self, name: str) -> bool:
        """Remove a definition and its runtime record; False if there was none."""
        with self._lock:
            cur = self._db.execute("DELETE FROM vms WHERE name=?", (name,))
        return cur.rowcount > 0

    @staticmethod
    def _vm(row) -> VmDefinition:
        return VmDefinition(name=row["name"], vcpus=row["vcpus"], memory=row["memory"],
                            image=row["image"], cmdline=row["cmdline"],
                            disks=json.loads(row["disks"]), nics=json.loads(row["nics"]),
                            autostart=bool(row["autostart"]), created=row["created"])

    # -- runtime --------------------------------------------------------------------------------

    def get_runtime(self, name: str) -> Runtime:
        """The runtime record (an Off one if none is stored)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM runtime WHERE name=?", (name,)).fetchone()
        if row is None:
            return Runtime(name)
        return Runtime(name=row["name"], state=row["state"], reason=row["reason"],
                       since=row["since"], pid=row["pid"], starttime=row["starttime"],
                       instance=row["instance"], event_seq=row["event_seq"],
                       last_result=json.loads(row["last_result"]) if row["last_result"] else None)

    def update_runtime(self, name: str, **fields) -> None:
        """Set some runtime fields (``last_result`` is stored as JSON)."""
        if not fields:
            return
        if "last_result" in fields and fields["last_result"] is not None:
            fields["last_result"] = json.dumps(fields["last_result"], default=str)
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE runtime SET {cols} WHERE name=?",
                             (*fields.values(), name))

    # -- events ---------------------------------------------------------------------------------

    def add_event(self, severity: str, source: str, message: str, partition: str | None = None,
                  details: dict | None = None, when: float | None = None) -> int:
        """Append an event; returns its id. Prunes to the retention bounds now and then."""
        if severity not in SEVERITY_RANK:
            severity = "info"
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO events (time, partition, severity, source, message, details) "
                "VALUES (?,?,?,?,?,?)",
                (time.time() if when is None else when, partition, severity, source,
                 message[:4000], json.dumps(details, default=str) if details else None))
            self._inserts += 1
            if self._inserts % 100 == 0:
                self.prune_events()
            return cur.lastrowid

    def prune_events(self) -> int:
        """Apply retention (age, then row cap); returns the rows removed."""
        removed = 0
        with self._lock:
            if self.max_event_age:
                removed += self._db.execute("DELETE FROM events WHERE time < ?",
                                            (time.time() - self.max_event_age,)).rowcount
            if self.max_event_rows:
                removed += self._db.execute(
                    "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC "
                    "LIMIT 1 OFFSET ?)", (self.max_event_rows,)).rowcount
        return removed

    def query_events(self, partition: str | None = None, severity: str | None = None,
                     since: float | None = None, until: float | None = None,
                     source: str | None = None, limit: int = 100) -> list[dict]:
        """Events matching every given filter (severity: that level or worse), the newest
        ``limit`` of them, oldest first."""
        where, args = [], []
        if partition is not None:
            where.append("partition = ?")
            args.append(partition)
        if severity is not None:
            where.append("severity IN (%s)" % ",".join("?" * len(_at_least(severity))))
            args.extend(_at_least(severity))
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if until is not None:
            where.append("time <= ?")
            args.append(until)
        if source is not None:
            where.append("source = ?")
            args.append(source)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [event_json(r) for r in reversed(rows)]

    def count_events(self) -> int:
        """Rows in the event log."""
        with self._lock:
            return self._db.execute("SELECT count(*) FROM events").fetchone()[0]


def _at_least(severity: str) -> list[str]:
    rank = SEVERITY_RANK[severity]
    return [s for s in SEVERITIES if SEVERITY_RANK[s] >= rank]


def event_json(row) -> dict:
    """An event row as a JSON-ready dict (time as epoch seconds and ISO 8601 UTC)."""
    return {"id": row["id"], "time": row["time"], "iso_time": iso(row["time"]),
            "partition": row["partition"], "severity": row["severity"],
            "source": row["source"], "message": row["message"],
            "details": json.loads(row["details"]) if row["details"] else None}


def iso(t: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``10m``, ``2h``, ``1d``, ``1w`` -> seconds; ValueError otherwise."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 10m, 2h, 1d)")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def parse_time(text: str, now: float | None = None) -> float:
    """A point in time: a duration ago (``10m``), epoch seconds (``@1700000000``) or ISO 8601
    (``2026-11-25T20:00:00``, UTC unless it carries an offset). ValueError otherwise."""
    now = time.time() if now is None else now
    text = text.strip()
    if text.startswith("@"):
        try:
            return float(text[1:])
        except ValueError:
            raise ValueError(f"not epoch seconds: {text!r}") from None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use a duration ago like 10m, "
                         f"@EPOCH or ISO 8601)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()

"""What every benchmark report carries: the machine, the timing helpers, the JSON writer."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path


def describe_machine(probe: bool = True) -> dict:
    """The machine and KVM backend a run measured (from ``hvkvm doctor``)."""
    from .. import __version__
    from ..doctor import diagnose
    rep = diagnose(probe=probe)
    return {
        "hvkvm": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": f"{rep.vendor} {rep.cpu_model}".strip(),
        "host_is_vm": rep.nested,
        "backend": rep.backend,
        "probe": rep.probe,
    }


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return statistics.median(values)


def write_json(path: str | None, doc: dict) -> None:
    """Write ``doc`` to ``path`` (if given) as indented JSON."""
    if path:
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: columns are (key, heading, format)."""
    heads = [h for _, h, _ in columns]
    cells = [[format(r.get(k, ""), f) if r.get(k) is not None else "-" for k, _, f in columns]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)

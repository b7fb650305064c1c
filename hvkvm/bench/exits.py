"""``hvkvm bench exits``: what one exit costs, by kind and by guest ring.

The ``exits`` guest image runs a loop of N cpuid / port I/O / MMIO / hlt (self-IPI) in ring 0 or
ring 3 between two SYNC ucalls; the host times the loop between them. cpuid and hlt are handled
inside KVM; PIO and MMIO to the null device reach Python. On kvm_pvm, ring-3 cpuid runs natively
(no exit at all), which the exit counts show.
"""

from __future__ import annotations

import time

from .common import median, table

CASES = [
    ("cpuid", 0), ("cpuid", 3), ("pio", 0), ("pio", 3), ("mmio", 0), ("mmio", 3), ("hlt", 0),
]


class _Null:
    """The benchmark's null device: reads return zeros, writes vanish."""

    def read(self, offset, data):
        """Zeros."""
        data[:] = bytes(len(data))

    def write(self, offset, data):
        """Dropped."""


def run_case(kind: str, ring: int, count: int, repeats: int) -> dict:
    """Run one loop ``repeats`` times; median ns per iteration and exits per iteration."""
    from ..images import image_path
    from ..partition.config import DeviceSpec, PartitionConfig
    from ..partition.partition import ChildPartition
    per_iter, exits_per_iter = [], []
    for _ in range(repeats):
        marks: dict[int, float] = {}

        def on_sync(vp, uc):
            marks[uc.args[0]] = time.perf_counter()

        cfg = PartitionConfig(image=image_path("exits"), cmdline=f"exits kind={kind} count={count} "
                                                                 f"ring={ring}",
                              timeout=300, on_sync=on_sync,
                              devices=[DeviceSpec("pio", 0x5A0, 4, _Null()),
                                       DeviceSpec("mmio", 0xD000_0000, 0x1000, _Null())])
        with ChildPartition(cfg) as p:
            result = p.run()
        if not result.passed or not {1, 2} <= marks.keys():
            raise RuntimeError(f"exits {kind} ring {ring}: {result.reason}")
        per_iter.append((marks[2] - marks[1]) / count * 1e9)
        totals = result.exit_totals()
        exits = sum(sum(v.values()) for k, v in totals.items() if k not in ("intr",))
        exits_per_iter.append(exits / count)
    return {"kind": kind, "ring": ring, "count": count, "ns_per_iter": round(median(per_iter), 1),
            "userspace_exits_per_iter": round(median(exits_per_iter), 3),
            "samples_ns": [round(x, 1) for x in per_iter]}


def run(quick: bool = False) -> dict:
    """All cases; returns the report section."""
    count = 2000 if quick else 20000
    repeats = 1 if quick else 3
    rows = []
    for kind, ring in CASES:
        n = count if kind in ("pio", "mmio") or ring == 0 else count * 100
        rows.append(run_case(kind, ring, n, repeats))
    return {"cases": rows}


def format_report(section: dict) -> str:
    """The exits table."""
    return table(section["cases"], [("kind", "exit", "s"), ("ring", "ring", "d"),
                                    ("count", "loop", "d"), ("ns_per_iter", "ns/iter", ".1f"),
                                    ("userspace_exits_per_iter", "user exits/iter", ".3f")])

"""``hvkvm bench vmbus``: echo round trips and one-way throughput over a VMBus channel.

The ``vmbus_bench`` guest runs its loop in ring 3 (the hot path on every backend: on kvm_pvm ring
0 is emulated) against hvkvm's echo device, once with the C data plane and once with the Python
data plane on the same ring code. The host times the loop between two SYNC ucalls and counts,
inside the same window, the userspace exits the guest caused, the guest's kicks (HvSignalEvent
through the ioeventfd: no userspace exit) and the interrupts the host raised. Goal for the C plane:
fewer than 0.1 userspace exits per packet in steady state.
"""

from __future__ import annotations

import time

from .common import measure, progress, summarize, table

SIZES = (64, 4096, 65536)
PLANES = ("c", "python")


def _exits(thread) -> int:
    return sum(r0 + r3 for name, (r0, r3) in thread.exits.items() if name != "intr")


def run_case(plane: str, size: int, oneway: bool, count: int, ring: int = 3) -> dict:
    """One loop of ``count`` packets; returns rates and per-packet costs."""
    from ..images import image_path
    from ..partition.config import PartitionConfig
    from ..partition.partition import ChildPartition, current_vcpu_thread
    from ..vsp.echo import EchoVsp
    echo = EchoVsp(plane=plane)
    marks: dict[int, tuple] = {}
    holder = {}

    def interrupts() -> int:
        p = holder["p"]
        if plane == "c":
            return sum(pl.stats["signals"] for pl in echo.planes.values())
        return p.hv.stats["sint_interrupts"]

    def on_sync(vp, uc):
        stage = uc.args[0]
        if stage in (10, 11):
            marks[stage] = (time.perf_counter(), _exits(current_vcpu_thread()), interrupts(),
                            uc.args)

    cmd = (f"vmbus_bench size={size} count={count} window=1 oneway={int(oneway)} ring={ring} "
           f"ring_pages=64")
    cfg = PartitionConfig(image=image_path("vmbus_bench"), cmdline=cmd, timeout=600,
                          on_sync=on_sync, vsps=[echo])
    with ChildPartition(cfg) as p:
        holder["p"] = p
        result = p.run()
    if not result.passed or not {10, 11} <= marks.keys():
        raise RuntimeError(f"vmbus bench {plane} {size}: {result.reason}")
    (t0, e0, i0, _), (t1, e1, i1, args) = marks[10], marks[11]
    packets, nbytes, kicks = args[1], args[2], args[3]
    secs = t1 - t0
    # SYNC 11 itself is one exit inside the window.
    exits = max(0, e1 - e0 - 1)
    row = {"plane": plane, "size": size, "mode": "one-way" if oneway else "round trip",
           "ring": ring, "packets": packets, "seconds": round(secs, 4),
           "exits_per_packet": round(exits / packets, 4),
           "kicks_per_packet": round(kicks / packets, 4),
           "interrupts_per_packet": round((i1 - i0) / packets, 4)}
    if oneway:
        row["mb_per_s"] = round(nbytes / secs / 1e6, 1)
        row["packets_per_s"] = round(packets / secs)
    else:
        row["round_trips_per_s"] = round(packets / secs)
        row["mean_rtt_us"] = round(secs / packets * 1e6, 2)
    return row


def run_repeated(plane: str, size: int, oneway: bool, count: int, repeat: int) -> dict:
    """``repeat`` runs of one case: medians, every sample in ``samples``."""
    runs = [run_case(plane, size, oneway, count) for _ in range(repeat)]
    row = dict(runs[0])
    row["samples"] = {}
    for k in ("round_trips_per_s", "mean_rtt_us", "mb_per_s", "packets_per_s",
              "exits_per_packet", "kicks_per_packet", "interrupts_per_packet"):
        if k in row:
            vals = [r[k] for r in runs]
            row[k] = summarize(vals)["median"]
            row["samples"][k] = vals
    lead = "packets_per_s" if oneway else "round_trips_per_s"
    s = summarize(row["samples"][lead])
    row["spread"] = s["spread"] if s["n"] > 1 else None
    row["runs"] = repeat
    return row


def run(quick: bool = False, repeat: int | None = None) -> dict:
    """Every plane, size and mode; the report section."""
    repeat = repeat or 1
    # Counts sized for roughly a quarter second per case on kvm_pvm; --quick divides by 20.
    counts = {("c", False): 100_000, ("python", False): 5_000,
              ("c", True): 200_000, ("python", True): 20_000}
    rows = []
    for oneway in (False, True):
        for size in SIZES:
            for plane in PLANES:
                count = counts[(plane, oneway)] // (4 if size >= 65536 else 1)
                count = max(50, count // (20 if quick else 1))
                with progress.step(f"vmbus: {plane} plane {'one-way' if oneway else 'echo'} "
                                   f"{size} bytes, {count} packets x {repeat}"):
                    rows.append(run_repeated(plane, size, oneway, count, repeat))
    by = {(r["plane"], r["size"], r["mode"]): r for r in rows}
    ratios = {}
    for size in SIZES:
        c, py = by[("c", size, "round trip")], by[("python", size, "round trip")]
        ratios[f"rtt_c_over_python_{size}"] = round(c["round_trips_per_s"] /
                                                    py["round_trips_per_s"], 2)
    steady = [r["exits_per_packet"] for r in rows if r["plane"] == "c"]
    return {"cases": rows, "ratios": ratios,
            "goal_c_exits_per_packet_below_0.1": all(e < 0.1 for e in steady)}


def format_report(section: dict) -> str:
    """The vmbus table and the headline ratios."""
    cols = [("plane", "plane", "s"), ("mode", "mode", "s"), ("size", "bytes", "d"),
            ("packets", "packets", "d"), ("round_trips_per_s", "RT/s", "d"),
            ("mean_rtt_us", "RTT us", ".2f"), ("mb_per_s", "MB/s", ".1f"),
            ("exits_per_packet", "exits/pkt", ".4f"), ("kicks_per_packet", "kicks/pkt", ".4f"),
            ("interrupts_per_packet", "irqs/pkt", ".4f"), ("spread", "spread", ".0%")]
    lines = [table(section["cases"], cols), ""]
    for k, v in section["ratios"].items():
        lines.append(f"{k}: {v}x")
    lines.append(f"C plane under 0.1 userspace exits per packet: "
                 f"{section['goal_c_exits_per_packet_below_0.1']}")
    return "\n".join(lines)


def measures(section: dict) -> list[dict]:
    """Round trips/s (echo) and MB/s (one-way) per plane and size."""
    out = []
    for r in section["cases"]:
        s = r.get("samples", {})
        if r["mode"] == "round trip":
            out.append(measure(f"vmbus/echo/{r['plane']}/{r['size']}/round_trips_per_s",
                               r["round_trips_per_s"], "RT/s", "higher",
                               s.get("round_trips_per_s"), group=f"echo {r['size']} B",
                               label=f"{r['plane']} plane"))
            out.append(measure(f"vmbus/echo/{r['plane']}/{r['size']}/mean_rtt_us",
                               r["mean_rtt_us"], "us (mean RTT)", "lower", s.get("mean_rtt_us"),
                               group=f"echo {r['size']} B", label=f"{r['plane']} plane"))
        else:
            out.append(measure(f"vmbus/oneway/{r['plane']}/{r['size']}/mb_per_s", r["mb_per_s"],
                               "MB/s", "higher", s.get("mb_per_s"),
                               group=f"one-way {r['size']} B", label=f"{r['plane']} plane"))
    return out

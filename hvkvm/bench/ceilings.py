"""The ceilings every report carries: memory bandwidth of the box and the zero-exit floor.

- **memcpy**: C ``memcpy`` between two pre-faulted 64 MiB buffers (csrc/bench_mem.c), GB/s
  (10^9 bytes/s). No copying I/O path can beat it; the storage goal for 1 MiB sequential reads
  from page cache is half of it.
- **ping-pong**: the ``pingpong`` guest (a ring-3 task) and a host C thread pass a counter back
  and forth through shared guest RAM: round trip i is the guest storing 2i+1 and spinning until
  the host stored 2i+2. No exit and no interrupt per round trip: the limit of any message rate
  between a polling guest and a polling host, which the VMBus echo goal is measured against.
"""

from __future__ import annotations

import time

from .common import measure, progress, summarize

MEMCPY_BYTES = 64 << 20


def memcpy_case(repeat: int, iterations: int) -> dict:
    """GB/s of memcpy, one sample per copy."""
    from .native import load
    ffi, lib = load()
    samples = []
    for _ in range(repeat):
        ns = ffi.new("uint64_t[]", iterations)
        if lib.bench_memcpy(MEMCPY_BYTES, iterations, ns) != 0:
            raise RuntimeError("bench_memcpy: cannot allocate two 64 MiB buffers")
        samples += [MEMCPY_BYTES / ns[i] for i in range(iterations)]     # bytes/ns = GB/s
    s = summarize(samples)
    return {"bytes": MEMCPY_BYTES, "gb_per_s": round(s["median"], 2),
            "gb_per_s_best": round(s["max"], 2), "spread": s["spread"],
            "samples_gb_per_s": [round(x, 3) for x in samples]}


def pingpong_once(count: int, ring: int = 3) -> dict:
    """One ``pingpong`` run; round trips per second from the host's clock between SYNC 10/11."""
    from ..images import image_path
    from ..partition.config import PartitionConfig
    from ..partition.partition import ChildPartition
    from .native import load
    ffi, lib = load()
    pp = ffi.new("struct bench_pingpong *")
    marks: dict[int, tuple] = {}
    holder = {}

    def on_sync(vp, uc):
        stage = uc.args[0]
        if stage == 1:
            gpa, n = uc.args[1], uc.args[2]
            host = holder["p"].memory.host_address(gpa, 8)
            pp.counter = ffi.cast("uint64_t *", host)
            pp.target = 2 * n
            if lib.bench_pingpong_start(pp) != 0:
                raise RuntimeError("pingpong: cannot start the host thread")
        elif stage in (10, 11):
            marks[stage] = (time.perf_counter(), uc.args)

    cfg = PartitionConfig(image=image_path("pingpong"), cmdline=f"pingpong count={count} "
                                                               f"ring={ring}",
                          timeout=300, on_sync=on_sync)
    with ChildPartition(cfg) as p:
        holder["p"] = p
        try:
            result = p.run()
        finally:
            lib.bench_pingpong_stop(pp)
    if not result.passed or not {10, 11} <= marks.keys():
        raise RuntimeError(f"pingpong: {result.reason}")
    secs = marks[11][0] - marks[10][0]
    n = marks[11][1][1]
    if pp.answered != n:
        raise RuntimeError(f"pingpong: the host answered {pp.answered} of {n} round trips")
    return {"round_trips": n, "seconds": secs, "per_s": n / secs, "rtt_ns": secs / n * 1e9}


def pingpong_case(repeat: int, count: int) -> dict:
    """Ring-3 ping-pong, ``repeat`` runs."""
    runs = [pingpong_once(count) for _ in range(repeat)]
    rates = summarize([r["per_s"] for r in runs])
    return {"ring": 3, "round_trips": count, "round_trips_per_s": round(rates["median"]),
            "round_trips_per_s_best": round(rates["max"]),
            "rtt_ns": round(1e9 / rates["median"], 1), "spread": rates["spread"],
            "samples_per_s": [round(r["per_s"]) for r in runs]}


def run(quick: bool = False, repeat: int | None = None) -> dict:
    """Both ceilings."""
    repeat = repeat or (1 if quick else 3)
    with progress.step("ceilings: memcpy 64 MiB"):
        mem = memcpy_case(repeat, 3 if quick else 8)
    count = 20_000 if quick else 1_000_000
    with progress.step(f"ceilings: zero-exit ping-pong, {count} round trips"):
        pp = pingpong_case(repeat, count)
    return {"memcpy": mem, "pingpong": pp}


def format_report(section: dict) -> str:
    """Two lines."""
    m, p = section["memcpy"], section["pingpong"]
    return (f"ceilings: memcpy of 64 MiB buffers {m['gb_per_s']} GB/s (best {m['gb_per_s_best']}, "
            f"spread {m['spread']:.0%}); zero-exit ping-pong (ring-3 guest <-> host C thread, "
            f"shared memory) {p['round_trips_per_s']:,} round trips/s ({p['rtt_ns']} ns each, "
            f"best {p.get('round_trips_per_s_best', 0):,}/s, spread {p['spread']:.0%}); a ceiling "
            f"is the best run (load only lowers it)")


def measures(section: dict) -> list[dict]:
    """Comparable measures (for compare and plot)."""
    m, p = section["memcpy"], section["pingpong"]
    return [measure("ceilings/memcpy/gb_per_s", m["gb_per_s"], "GB/s", "higher",
                    m["samples_gb_per_s"], group="memcpy", label="memcpy 64 MiB"),
            measure("ceilings/pingpong/round_trips_per_s", p["round_trips_per_s"], "1/s",
                    "higher", p["samples_per_s"], group="pingpong", label="ping-pong ring 3")]



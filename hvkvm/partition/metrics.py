"""Exit metrics: per-exit-reason counters and a host service-time histogram per vCPU.

Each vCPU thread counts its exits by reason and guest ring (``VcpuThread.exits``) and, for every
exit, the host service time: from KVM_RUN's return to the next entry (Python handling, device
emulation, pauses excluded). The time costs one clock read per exit and lands in log2 buckets of
nanoseconds: slot ``k`` of ``VcpuThread.service_hist`` counts times in ``[2**(k-1), 2**k)`` ns
(slot 0: under 1 ns). :func:`collect` turns that into a plain, JSON-ready dict: what
:attr:`RunResult.exit_metrics` holds, what ``hvkvm run --stats`` prints with :func:`format_table`
and what a management service can expose as is.
"""

from __future__ import annotations


def bucket_range(k: int) -> tuple[int, int]:
    """``(lo_ns, hi_ns)``: the half-open range of histogram slot ``k``."""
    return (0, 1) if k == 0 else (1 << (k - 1), 1 << k)


def _quantile(hist: list[int], total: int, q: float) -> int | None:
    """Upper bound (ns) of the bucket holding the q-quantile: an upper estimate."""
    if not total:
        return None
    rank = q * total
    seen = 0
    for k, n in enumerate(hist):
        seen += n
        if n and seen >= rank:
            return bucket_range(k)[1]
    return None


def histogram(hist: list[int]) -> dict:
    """A service-time histogram as a dict: non-empty buckets, count, p50/p90/p99 upper bounds."""
    total = sum(hist)
    return {
        "unit": "ns",
        "count": total,
        "buckets": [{"lo_ns": bucket_range(k)[0], "hi_ns": bucket_range(k)[1], "count": n}
                    for k, n in enumerate(hist) if n],
        "p50_ns_max": _quantile(hist, total, 0.50),
        "p90_ns_max": _quantile(hist, total, 0.90),
        "p99_ns_max": _quantile(hist, total, 0.99),
    }


def collect(threads) -> dict:
    """Metrics of a run's vCPU threads: ``{"vcpus": {"0": {...}}, "totals": {...}}``.

    Per vCPU: ``exits`` (reason -> {"ring0", "ring3"}), ``total_exits`` and ``service_time`` (a
    :func:`histogram`). ``totals`` sums the exits over vCPUs and merges the histograms.
    """
    vcpus = {}
    merged = [0] * 64
    totals: dict[str, dict[str, int]] = {}
    for t in threads:
        exits = {name: {"ring0": v[0], "ring3": v[1]} for name, v in sorted(t.exits.items())}
        hist = list(t.service_hist)
        for k, n in enumerate(hist):
            merged[k] += n
        for name, rings in exits.items():
            tot = totals.setdefault(name, {"ring0": 0, "ring3": 0})
            tot["ring0"] += rings["ring0"]
            tot["ring3"] += rings["ring3"]
        vcpus[str(t.index)] = {
            "exits": exits,
            "total_exits": sum(r["ring0"] + r["ring3"] for r in exits.values()),
            "service_time": histogram(hist),
        }
    return {"vcpus": vcpus,
            "totals": {"exits": totals,
                       "total_exits": sum(r["ring0"] + r["ring3"] for r in totals.values()),
                       "service_time": histogram(merged)}}


def _fmt_ns(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns < 1000:
        return f"{ns} ns"
    if ns < 1_000_000:
        return f"{ns / 1000:.3g} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.3g} ms"
    return f"{ns / 1e9:.3g} s"


def format_table(metrics: dict) -> str:
    """``hvkvm run --stats``: exits by reason and ring, then the service-time histogram per vCPU."""
    lines = []
    for idx, m in sorted(metrics.get("vcpus", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"vCPU{idx}: {m['total_exits']} exits")
        width = max((len(n) for n in m["exits"]), default=6)
        lines.append(f"  {'reason':<{width}}  {'ring 0':>9}  {'ring 3':>9}")
        for name, rings in m["exits"].items():
            lines.append(f"  {name:<{width}}  {rings['ring0']:>9}  {rings['ring3']:>9}")
        st = m["service_time"]
        lines.append(f"  host service time per exit (KVM_RUN return to next entry), "
                     f"{st['count']} samples; p50 < {_fmt_ns(st['p50_ns_max'])}, "
                     f"p90 < {_fmt_ns(st['p90_ns_max'])}, p99 < {_fmt_ns(st['p99_ns_max'])}")
        peak = max((b["count"] for b in st["buckets"]), default=0)
        for b in st["buckets"]:
            bar = "#" * max(1, round(40 * b["count"] / peak)) if peak else ""
            rng = f"[{_fmt_ns(b['lo_ns'])}, {_fmt_ns(b['hi_ns'])})"
            lines.append(f"  {rng:>22}  {b['count']:>9}  {bar}")
    return "\n".join(lines)

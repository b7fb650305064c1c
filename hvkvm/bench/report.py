"""Running suites into one JSON document, the goals of issue 6 against a run's own numbers,
``compare`` (ratios per measure, regressions beyond the runs' own noise) and ``plot`` (PNG).

Document layout (``schema`` 2): ``suite`` (a suite name or "all"), ``machine``
(:func:`~hvkvm.bench.common.describe_machine`), ``quick``, ``repeat``, ``command``; for one suite
its section's keys at the top level (as before), for "all" ``suites``: {name: section};
``ceilings`` where a goal needs them (storage, vmbus, all); ``goals``: a list of
{id, goal, measured, target, met (true/false/null = not measurable), missed_by, note}.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
from pathlib import Path

from .common import SCHEMA, describe_machine, machine_line, progress

SUITES = ("exits", "vmbus", "storage", "net", "boot")
#: Suites whose goals need the ceilings measured in the same run.
NEEDS_CEILINGS = {"storage", "vmbus"}


def suite_module(name: str):
    """The module of a suite (``ceilings`` too)."""
    return importlib.import_module(f".{name}", __package__)


def sections(doc: dict) -> dict[str, dict]:
    """{suite name: section} of a document of one suite or of all."""
    out = dict(doc.get("suites", {}))
    if doc.get("suite") in SUITES and doc["suite"] not in out:
        out[doc["suite"]] = doc
    if doc.get("suite") == "ceilings":
        out["ceilings"] = doc
    elif doc.get("ceilings"):
        out["ceilings"] = doc["ceilings"]
    return out


def run_suites(name: str, quick: bool, repeat: int | None, argv: list[str] | None = None) -> dict:
    """Run one suite (or all) and return the document."""
    machine = describe_machine()
    progress.note(machine_line(machine))
    doc = {"schema": SCHEMA, "suite": name, "machine": machine, "quick": quick,
           "repeat": repeat, "command": "hvkvm bench " + " ".join(argv or [name])}
    t0 = time.perf_counter()
    names = list(SUITES) if name == "all" else [name]
    if name == "ceilings" or name == "all" or name in NEEDS_CEILINGS:
        doc["ceilings"] = _run_one("ceilings", quick, repeat, alone=name == "ceilings")
    if name == "ceilings":
        doc.update(doc.pop("ceilings"))
        names = []
    results = {}
    for n in names:
        results[n] = _run_one(n, quick, repeat, alone=name != "all")
    if name == "all":
        doc["suites"] = results
    elif names:
        doc.update(results[name])
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    doc["goals"] = goals(doc)
    return doc


def _run_one(name: str, quick: bool, repeat: int | None, alone: bool) -> dict:
    """One suite's section; in a run of several, a suite that fails becomes {"error": ...} and
    the others go on (their numbers are not lost)."""
    if alone:
        return suite_module(name).run(quick=quick, repeat=repeat)
    try:
        return suite_module(name).run(quick=quick, repeat=repeat)
    except Exception as e:  # noqa: BLE001 - recorded in the document and the report
        import traceback
        progress.note(f"{name}: FAILED: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-4000:]}


def format_document(doc: dict) -> str:
    """The report: machine, ceilings, each suite's tables, the goals."""
    load = ", ".join(f"{x:.2f}" for x in doc["machine"].get("load_average", []))
    lines = [machine_line(doc["machine"]),
             f"load average at start: {load}; "
             f"{'quick run (smoke test, noisy)' if doc.get('quick') else 'full run'}"]
    secs = sections(doc)
    if "ceilings" in secs:
        c = secs["ceilings"]
        lines += [f"ceilings: FAILED: {c['error']}" if "error" in c
                  else suite_module("ceilings").format_report(c), ""]
    for n in SUITES:
        if n in secs:
            body = (f"FAILED: {secs[n]['error']}" if "error" in secs[n]
                    else suite_module(n).format_report(secs[n]))
            lines += [f"== {n} ==", body, ""]
    if doc.get("goals"):
        lines += ["== goals (issue 6), against this run's own numbers ==",
                  format_goals(doc["goals"])]
    return "\n".join(lines)


# -- goals --------------------------------------------------------------------------------------

def _goal(gid: str, text: str, measured, target, met, missed_by=None, note="") -> dict:
    return {"id": gid, "goal": text, "measured": measured, "target": target, "met": met,
            "missed_by": missed_by, "note": note}


def goals(doc: dict) -> list[dict]:
    """Every goal whose suite ran, against this document's numbers."""
    secs = {k: v for k, v in sections(doc).items() if "error" not in v}
    ceil = secs.get("ceilings")
    out = []
    ex = secs.get("exits")
    if ex and ex.get("python_vs_c"):
        worst = max(ex["python_vs_c"], key=lambda r: r["python_over_c"])
        ratio = worst["python_over_c"]
        detail = "; ".join(f"{r['kind']} r{r['ring']} {r['python_over_c']:.2f}x "
                           f"(+{r['python_overhead_ns'] / 1000:.1f} us)"
                           for r in ex["python_vs_c"])
        out.append(_goal("exits.python_within_1.3x_c",
                         "Python exit path within 1.3x the C runner's exit cost",
                         f"worst {ratio:.2f}x ({worst['kind']} ring {worst['ring']})", "<= 1.3x",
                         ratio <= 1.3,
                         None if ratio <= 1.3 else f"{ratio / 1.3 - 1:.0%} over the limit",
                         detail))
    st = secs.get("storage")
    if st:
        ok = [r for r in st["cases"] if r.get("status") == "ok"]
        c = [r for r in ok if r["path"] == "storvsc-c"]
        q = [r for r in ok if r["path"] == "qemu-virtio-blk"]
        qemu_why = next((p["reason"] for p in st["paths"] if p["name"] == "qemu-virtio-blk"
                         and not p["available"]), None)
        for backing in [b["name"] for b in st.get("backings", [])] or ["tmpfs"]:
            mine = next((r for r in c if r["workload"] == "randread-4k-qd32" and r["ring"] == 3
                         and r["backing"] == backing), None)
            peer = next((x for x in q if x["workload"] == "randread-4k-qd32" and x["ring"] == 3
                         and x["backing"] == backing), None)
            gid = f"storage.c_2x_qemu_iops_4k_qd32.{backing}"
            text = (f"VMBus C data plane >= 2x QEMU virtio-blk IOPS at 4 KiB QD32 ({backing}, "
                    f"ring 3)")
            if mine and peer:
                ratio = mine["iops"] / peer["iops"]
                out.append(_goal(gid, text, f"{ratio:.2f}x ({mine['iops']:,.0f} vs "
                                            f"{peer['iops']:,.0f} IOPS)", ">= 2x", ratio >= 2,
                                 None if ratio >= 2 else f"{1 - ratio / 2:.0%} short"))
            else:
                out.append(_goal(gid, text, None, ">= 2x", None,
                                 note=f"not measurable: QEMU row "
                                      f"{qemu_why or 'missing or failed in this run'}"))
        r3 = [r for r in c if r["ring"] == 3 and r.get("user_exits_per_io") is not None]
        if r3:
            worst = max(r3, key=lambda r: r["user_exits_per_io"])
            v = worst["user_exits_per_io"]
            r0 = [r["user_exits_per_io"] for r in c if r["ring"] == 0
                  and r.get("user_exits_per_io") is not None]
            out.append(_goal("storage.c_under_0.1_exits_per_io",
                             "VMBus C data plane under 0.1 userspace exits per I/O",
                             f"worst {v:.4f} ({worst['workload']} {worst['backing']}, ring 3)",
                             "< 0.1", v < 0.1, None if v < 0.1 else f"{v / 0.1 - 1:.0%} over",
                             f"ring-0 (interrupt) rows: max {max(r0):.4f}" if r0 else ""))
        seq = next((r for r in c if r["workload"] == "read-1m-qd4" and r["backing"] == "tmpfs"
                    and r["ring"] == 3), None)
        if seq and ceil:
            # a ceiling is the best the box did in this run (load only ever lowers it)
            mem = ceil["memcpy"].get("gb_per_s_best", ceil["memcpy"]["gb_per_s"]) * 1000
            ratio = seq["mb_per_s"] / mem
            out.append(_goal("storage.seq_read_half_memcpy",
                             "1 MiB sequential read from page cache >= half of memcpy bandwidth",
                             f"{seq['mb_per_s']:,.0f} MB/s = {ratio:.2f} x memcpy "
                             f"({mem:,.0f} MB/s, best copy)", ">= 0.5 x memcpy", ratio >= 0.5,
                             None if ratio >= 0.5 else f"{1 - ratio / 0.5:.0%} short",
                             "storvsc C plane, tmpfs, ring 3, QD4"))
    vm = secs.get("vmbus")
    if vm and ceil:
        echo = next((r for r in vm["cases"] if r["plane"] == "c" and r["size"] == 64
                     and r["mode"] == "round trip"), None)
        if echo:
            floor = ceil["pingpong"].get("round_trips_per_s_best",
                                         ceil["pingpong"]["round_trips_per_s"])
            ratio = echo["round_trips_per_s"] / floor
            out.append(_goal("vmbus.echo64_half_floor",
                             "VMBus C path 64-byte echo (ring-3 polling guest) >= half the "
                             "zero-exit floor's rate",
                             f"{echo['round_trips_per_s']:,.0f} RT/s = {ratio:.2f} x floor "
                             f"({floor:,.0f} RT/s, best run)", ">= 0.5 x floor", ratio >= 0.5,
                             None if ratio >= 0.5 else f"{1 - ratio / 0.5:.0%} short",
                             f"floor median {ceil['pingpong']['round_trips_per_s']:,.0f} RT/s, "
                             f"spread {ceil['pingpong']['spread']:.0%}"))
    bt = secs.get("boot")
    if bt and "run_over_python" in bt.get("process", {}):
        pr = bt["process"]
        r = pr["run_over_python"]
        out.append(_goal("boot.run_hello_1.5x_python",
                         "`hvkvm run hello` whole process within 1.5x a bare `python3 -c pass`",
                         f"{pr['run_hello_ms']} ms vs {pr['python_pass_ms']} ms = {r:.2f}x",
                         "<= 1.5x", r <= 1.5, None if r <= 1.5 else f"{r / 1.5 - 1:.0%} over"))
        own = pr["hvkvm_own_ms"]
        out.append(_goal("boot.hvkvm_own_under_80ms",
                         "hvkvm's own start, boot and teardown under ~80 ms",
                         f"{own} ms (run hello minus bare python)", "< 80 ms", own < 80,
                         None if own < 80 else f"{own - 80:.0f} ms over",
                         f"imports alone: {pr['python_and_imports_ms'] - pr['python_pass_ms']:.0f}"
                         f" ms of it"))
    return out


def format_goals(gs: list[dict]) -> str:
    """One line per goal: MET / MISSED (by how much) / NOT MEASURED."""
    lines = []
    for g in gs:
        verdict = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[g["met"]]
        s = f"[{verdict}] {g['goal']}: "
        s += g["measured"] if g["measured"] else "-"
        s += f" (target {g['target']})"
        if g["missed_by"]:
            s += f"; missed by {g['missed_by']}"
        if g.get("note"):
            s += f"; {g['note']}"
        lines.append(s)
    return "\n".join(lines)


# -- measures, compare --------------------------------------------------------------------------

def all_measures(doc: dict) -> list[dict]:
    """Every comparable measure of a document."""
    out = []
    for name, sec in sections(doc).items():
        if "error" in sec:
            continue
        mod = suite_module(name)
        if hasattr(mod, "measures"):
            try:
                out += mod.measures(sec)
            except (KeyError, TypeError):
                continue        # a section of an older layout: nothing comparable
    return out


#: Relative noise assumed for a measure with one sample.
DEFAULT_NOISE = 0.10
#: Changes smaller than this are never flagged.
MIN_NOISE = 0.03


def _spread(m: dict) -> float | None:
    s = [x for x in m.get("samples") or [] if x is not None]
    if len(s) < 2:
        return None
    s.sort()
    med = s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
    return (s[-1] - s[0]) / med if med else None


def compare(a: dict, b: dict) -> dict:
    """B against A per measure: ratio B/A, the noise band (the larger relative spread of the two
    runs' samples, at least 3 %; 10 % where a run has one sample) and a verdict: "regression"
    (worse by more than the band), "improvement", or "same"."""
    ma = {m["id"]: m for m in all_measures(a)}
    mb = {m["id"]: m for m in all_measures(b)}
    rows = []
    for mid in [k for k in ma if k in mb]:
        x, y = ma[mid], mb[mid]
        if not x["value"] or y["value"] is None:
            continue
        ratio = y["value"] / x["value"]
        spreads = [s for s in (_spread(x), _spread(y)) if s is not None]
        assumed = len(spreads) < 2
        noise = max([MIN_NOISE, *spreads] + ([DEFAULT_NOISE] if assumed else []))
        change = ratio - 1 if x["better"] == "higher" else 1 / ratio - 1 if ratio else -1
        verdict = ("regression" if change < -noise else "improvement" if change > noise
                   else "same")
        rows.append({"id": mid, "unit": x["unit"], "better": x["better"], "a": x["value"],
                     "b": y["value"], "ratio": round(ratio, 4), "noise": round(noise, 4),
                     "noise_assumed": assumed, "verdict": verdict})
    return {"rows": rows, "only_in_a": sorted(set(ma) - set(mb)),
            "only_in_b": sorted(set(mb) - set(ma)),
            "regressions": sum(r["verdict"] == "regression" for r in rows),
            "improvements": sum(r["verdict"] == "improvement" for r in rows)}


def format_compare(res: dict, a_name: str, b_name: str) -> str:
    from .common import table
    rows = [dict(r, flag={"regression": "REGRESSION", "improvement": "better",
                          "same": ""}[r["verdict"]],
                 band=f"±{r['noise']:.0%}{'*' if r['noise_assumed'] else ''}")
            for r in res["rows"]]
    lines = [f"A = {a_name}", f"B = {b_name}",
             table(rows, [("id", "measure", "s"), ("unit", "unit", "s"), ("a", "A", ",.4g"),
                          ("b", "B", ",.4g"), ("ratio", "B/A", ".3f"), ("band", "noise", "s"),
                          ("flag", "", "s")]),
             "noise: the larger relative spread (max - min) / median of the two runs' samples, "
             "at least 3%; * = a run had one sample, 10% assumed (use --repeat 3 or more)",
             f"{len(res['rows'])} measures compared: {res['regressions']} regressions beyond "
             f"noise, {res['improvements']} improvements"]
    if res["only_in_a"] or res["only_in_b"]:
        lines.append(f"not in both: {len(res['only_in_a'])} only in A, "
                     f"{len(res['only_in_b'])} only in B")
    return "\n".join(lines)


# -- plot ---------------------------------------------------------------------------------------

class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def plot(doc: dict, out_dir: str) -> list[str]:
    """One PNG per (suite, chart, unit): bars per group and label, whiskers min..max of the
    samples. Returns the files written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable(str(e)) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    charts: dict[tuple[str, str], list[dict]] = {}
    for m in all_measures(doc):
        suite = m["id"].split("/", 1)[0]
        charts.setdefault((suite, m["unit"]), []).append(m)
    files = []
    machine = doc.get("machine", {})
    subtitle = (f"{machine.get('cpu', '?')}, {machine.get('backend', '?')}, "
                f"{machine.get('date', '')[:10]}, hvkvm {str(machine.get('git_revision'))[:10]}")
    for (suite, unit), ms in sorted(charts.items()):
        groups = list(dict.fromkeys(m["group"] for m in ms))
        labels = list(dict.fromkeys(m["label"] for m in ms))
        # wide charts split into pages (fewer groups per page when there are many bars each)
        per_page = 12 if len(labels) <= 3 else 6
        for page in range(0, len(groups), per_page):
            gs = groups[page:page + per_page]
            fig, ax = plt.subplots(figsize=(min(14, max(6, len(gs) * (0.5 + 0.22 * len(labels))
                                                        + 2)), 4.8))
            width = 0.8 / max(1, len(labels))
            for li, lab in enumerate(labels):
                xs, ys, lo, hi = [], [], [], []
                for gi, g in enumerate(gs):
                    m = next((x for x in ms if x["group"] == g and x["label"] == lab), None)
                    if m is None or m["value"] is None:
                        continue
                    s = [v for v in m.get("samples") or [] if v is not None] or [m["value"]]
                    xs.append(gi + li * width)
                    ys.append(m["value"])
                    lo.append(max(0, m["value"] - min(s)))
                    hi.append(max(0, max(s) - m["value"]))
                if xs:
                    ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=lab)
            ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(gs))])
            ax.set_xticklabels(gs, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(unit)
            better = ms[0]["better"]
            ax.set_title(f"{suite}: {unit} ({better} is better)\n{subtitle}", fontsize=9)
            if any(m["value"] and m["value"] > 0 for m in ms):
                vals = [m["value"] for m in ms if m["value"]]
                if max(vals) / max(min(vals), 1e-9) > 100:
                    ax.set_yscale("log")
            if len(labels) > 1:
                ax.legend(fontsize=8)
            fig.tight_layout()
            name = f"{suite}-{_slug(unit)}{'' if page == 0 else f'-{page // per_page + 1}'}.png"
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            files.append(str(out / name))
    return files


def load(path: str) -> dict:
    """A bench JSON document (UsageError-style ValueError when it is not one)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict) or "suite" not in doc or "machine" not in doc:
        raise ValueError(f"{path} is not an `hvkvm bench` report (no suite/machine)")
    return doc


def main_compare(a: str, b: str, fail: bool, json_out: str | None = None) -> int:
    da, db = load(a), load(b)
    res = compare(da, db)
    print(format_compare(res, a, b))
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=2) + "\n")
    return 1 if fail and res["regressions"] else 0


def main_plot(path: str, out_dir: str) -> int:
    doc = load(path)
    try:
        files = plot(doc, out_dir)
    except PlotUnavailable:
        print("hvkvm: bench plot needs matplotlib: pip install 'hvkvm[plot]' (or pip install "
              "matplotlib)", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0

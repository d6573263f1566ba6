"""Medians over several runs of run.py or vs_aws.py (their --json outputs).

The machines these run on are shared: one run can land on a burst of someone
else's tests. Running the bench several times and taking each figure's median
is the cheap defence; this prints that median beside every run's value (so
the spread is visible), and for each target row how many runs met it.

With --plot, also draws run.py's chart from the median of each sweep point.

Usage: python bench/combine.py RUN.json [RUN.json ...] [--json] [--plot PATH [--loopback GBPS]]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import _fmt, plot  # noqa: E402


def combine(runs: list[dict]) -> list[dict]:
    order: list[tuple[str, str]] = []
    rows: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        for r in run["rows"]:
            k = (r["section"], r["name"])
            if k not in rows:
                order.append(k)
                rows[k] = []
            rows[k].append(r)
    out = []
    for k in order:
        rs = rows[k]
        values = [r["value"] for r in rs if r["value"] is not None]
        notes = {r["note"] for r in rs}
        note = rs[0]["note"] if len(notes) == 1 else f"run 1: {rs[0]['note']}"  # notes with figures differ
        row = {"section": k[0], "name": k[1], "unit": rs[0]["unit"], "values": values,
               "median": statistics.median(values) if values else None, "note": note}
        if k[0] == "targets":
            met = sum(1 for r in rs if r["note"].startswith("met"))
            row["note"] = f"met in {met} of {len(rs)} runs" + rs[0]["note"][rs[0]["note"].find(" ("):]
        out.append(row)
    return out


def table(rows: list[dict], n: int) -> str:
    lines = ["| section | measure | median | unit | each run | note |",
             "|---|---|---:|---|---|---|"]
    for r in rows:
        each = " / ".join(_fmt(v) for v in r["values"])
        lines.append(f"| {r['section']} | {r['name']} | {_fmt(r['median'])} | {r['unit']} | {each} | "
                     f"{r['note'] if len(r['values']) <= 1 or r['section'] != 'load' else ''} |")
    return "\n".join(lines)


def plot_median(path: str, runs: list[dict], loopback: float | None = None) -> None:
    points: dict = {}
    loopbacks = []
    for run in runs:
        res = run.get("results", {})
        for tool, ops in res.get("sweep", {}).items():
            for op, sizes in ops.items():
                for size, v in sizes.items():
                    points.setdefault(tool, {}).setdefault(op, {}).setdefault(int(size), []).append(v)
        if res.get("big", {}).get("loopback"):
            loopbacks.append(res["big"]["loopback"] / 1000)
    curves = {t: {o: {s: statistics.median(v) for s, v in sz.items()} for o, sz in ops.items()}
              for t, ops in points.items()}
    date = runs[0].get("machine", {}).get("date", "")[:10]
    cpus = runs[0].get("machine", {}).get("nproc", "?")
    plot(path, curves, loopback or (statistics.median(loopbacks) if loopbacks else 0),
         f"s4 on a local 3-node cluster, {cpus} cores, {date}: median of {len(runs)} runs",
         "moto, local stand-in, not AWS")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="JSON outputs of run.py / vs_aws.py (--json)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", metavar="PATH", help="chart of the median sweep (run.py outputs)")
    ap.add_argument("--loopback", type=float, metavar="GBPS",
                    help="the chart's loopback line, when the runs have no big step (run.py --only sweep)")
    a = ap.parse_args()
    runs = [json.load(open(p)) for p in a.runs]
    rows = combine(runs)
    if a.plot:
        plot_median(a.plot, runs, a.loopback)
    if a.json:
        print(json.dumps({"runs": [{"file": p, "machine": r.get("machine"), "code": r.get("code"),
                                    "load_avg_1min": r.get("load_avg_1min")} for p, r in zip(a.runs, runs)],
                          "rows": rows}, indent=1))
    else:
        print(table(rows, len(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shuffle path alone: map-to-n, whose outputs move between nodes by push.

Two workloads, each against its floor measured in the same window:
- small: map-to-n over N 1-KiB text keys, 3 outputs each (`split -n r/3`,
  named 000/001/002 so each output lands on a different node: two of every
  three are pushed). Floor: the same N `bash -c cat` spawns run MAX_CPU_JOBS
  at a time (the daemons' default --max-cpu-jobs), each reading one such key.
  Target: map-to-n at most 3x the floor. Also the daemons' own CPU per key
  (utime+stime of the 3 daemons, commands excluded).
- big: map-to-n over K x 16 MiB text keys with the same command. Floor: a
  local sequential run of the same command over the same files, writing the
  same output files into a local directory. Target: map-to-n no slower.

With --old REV, every timed step also runs on a second cluster running REV's
s4d/ and s4ctl/ (as bench/ab.py does: `git archive`, first on PYTHONPATH),
alternating A and B (ABBA) so both see the same load; B is the working tree.

Usage: python bench/push.py [--old REV] [--only small,big] [--keys N]
                            [--big-keys K] [--big-mib M] [--reps R] [--json]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import daemons_cpu, export, order  # noqa: E402
from common import (MiB, Cluster, CodeWatch, Report, filesystem, machine, make_text_file, median, ready,  # noqa: E402
                    rmtree)

# 3 outputs named 000, 001, 002: numeric names, so output i lands on node i
SPLIT = "split -n r/3 -d -a 3 - ''; printf '%s\\n' 00?"
MAX_CPU_JOBS = (os.cpu_count() or 1) + 2  # s4d's default --max-cpu-jobs


def spawn_floor(files: list[Path], out: Path, width: int) -> float:
    """Wall seconds of one `bash -c cat` per file, `width` at a time."""
    def one(i: int) -> None:
        with open(files[i], "rb") as fin, open(out / f"{i}", "wb") as fout:
            subprocess.run(["bash", "-c", "cat"], stdin=fin, stdout=fout, check=True)

    t = time.perf_counter()
    with ThreadPoolExecutor(width) as pool:
        list(pool.map(one, range(len(files))))
    return time.perf_counter() - t


def local_split(files: list[Path], out: Path) -> float:
    """Wall seconds of the map-to-n command run locally, one file after another,
    each in a fresh directory under out (as the daemons do)."""
    t = time.perf_counter()
    for i, f in enumerate(files):
        d = out / f"{i}"
        d.mkdir()
        with open(f, "rb") as fin:
            subprocess.run(["bash", "-euo", "pipefail", "-c", SPLIT], stdin=fin, cwd=d, check=True,
                           stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def step(cl: dict, r: Report, work: Path, name: str, count: int, size: int, reps: int,
         floor_name: str, floor) -> None:
    local = work / f"{name}-in"
    local.mkdir()
    for i in range(count):
        make_text_file(local / f"{i:05d}", size, line=16 if size < MiB else 100)
    files = sorted(local.iterdir())
    for c in cl.values():
        c.s4ctl("cp", "-r", local, f"s4://push/{name}")
    t = {s: [] for s in cl}
    cpu = {s: [] for s in cl}
    floors = []
    for rep in range(reps):
        out = work / f"{name}-floor"
        ready(files)
        out.mkdir()
        floors.append(floor(files, out))
        rmtree(out)
        for s in order(rep):
            ready(cl[s].stored(f"push/{name}"))
            before = daemons_cpu(cl[s].pids)
            t[s].append(cl[s].timed("map-to-n", f"s4://push/{name}", f"s4://push/{name}-out{rep}", SPLIT))
            cpu[s].append(daemons_cpu(cl[s].pids) - before)
            cl[s].s4ctl("rm", "-r", f"s4://push/{name}-out{rep}/")
    fl = median(floors)
    r.add(name, floor_name, fl, "s", f"median of {reps}: " + " ".join(f"{x:.2f}" for x in floors))
    for s in cl:
        wall = median(t[s])
        r.add(name, f"map-to-n {count} x {_size(size)}, 3 outputs each: {s}", wall, "s",
              f"{wall / fl:.2f}x the floor; runs " + " ".join(f"{x:.2f}" for x in t[s]))
    for s in cl:
        r.add(name, f"the daemons' own CPU per input key: {s}", median(cpu[s]) / count * 1000, "ms/key",
              "utime+stime of the 3 daemons, median")
    rmtree(local)
    for c in cl.values():
        c.s4ctl("rm", "-r", f"s4://push/{name}/")


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // 1024} KiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", help="git revision for side A (B is the working tree); none: B alone")
    ap.add_argument("--only", default="small,big", help="comma-separated: small,big")
    ap.add_argument("--keys", type=int, default=1000, help="1-KiB keys of the small step")
    ap.add_argument("--big-keys", type=int, default=48)
    ap.add_argument("--big-mib", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", help="scratch directory (default: a temp dir)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = a.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="s4-push-", dir=a.dir))
    report = Report("s4 bench: the push path (map-to-n)")
    report.extra.update(machine=machine(), command=" ".join(["python", *sys.argv]))
    code = CodeWatch()
    try:
        clusters = {}
        if a.old:
            commit = export(a.old, work / "old")
            report.add("ab", f"A = {a.old} ({commit}), s4d/ + s4ctl/ via git archive", None, "-")
            clusters["A"] = Cluster(work / "A", code=str(work / "old"))
        report.add("ab", "B = working tree at " + code.info["commit"]
                   + (" + uncommitted changes" if code.info["dirty"] else ""), None, "-")
        clusters["B"] = Cluster(work / "B")
        report.add("setup", "data dirs and floors on " + filesystem(work), None, "-")
        for c in clusters.values():
            c.__enter__()
        try:
            if "small" in only:
                step(clusters, report, work, "small", a.keys, 1024, a.reps,
                     f"floor: {a.keys} `bash -c cat` spawns, {MAX_CPU_JOBS} at a time",
                     lambda files, out: spawn_floor(files, out, MAX_CPU_JOBS))
            if "big" in only:
                step(clusters, report, work, "big", a.big_keys, a.big_mib * MiB, a.reps,
                     "floor: the same command run locally, sequentially", local_split)
        finally:
            for c in clusters.values():
                c.__exit__(None, None, None)
        report.add("load", "1-min load average at the end", os.getloadavg()[0], "")
        changed = code.changed()
        if changed:
            report.add("code", "s4 sources edited DURING this run", len(changed), "files",
                       "side B mixes two versions; re-run: " + " ".join(changed))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report.json() if a.json else report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

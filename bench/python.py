"""The fsspec filesystem against local disk: pandas and parquet through s4://.

Measured on a local 3-node cluster (the installed s4d), interleaved, medians:
- csv: pandas `read_csv` of a ~256 MiB taxi-like CSV (examples/taxi/gen_taxi.py)
  from s4 against the same file from local disk; the ratio's target is <= 1.3.
  pandas 3.x parses a local path with threads and every other source (a URL,
  a file object) on one thread, so the local path is also read with
  mode.max_threads=1: the same parse s4:// gets;
- parquet: a ~256 MiB parquet file of 16 float64 columns: `read_parquet` of one
  column against the whole file, from s4 (time and the bytes the nodes sent,
  counted from their logs' `bytes=`) and from local disk (time);
- imports: what a small `s4ctl cp` imports (`python -X importtime`): none of
  fsspec, s4ctl.fsspec, pandas, numpy; the module count and the import time.
  Its wall time against an older revision is bench/ab.py's `--only small`.

Both sides are warmed (the local file, the node's stored file) before every
timed read: the machines drop file cache left idle for ~30 s.

Usage: python bench/python.py [--mib 256] [--reps 5] [--json] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import S4CTL, Cluster, MiB, Report, machine, median, rmtree, warm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CSV_TARGET_RATIO = 1.3


def sent_bytes(cluster: Cluster, key: str) -> int:
    """Bytes the nodes have sent for gets of key so far (their logs' `bytes=`)."""
    pattern = re.compile(rf" get s4://{re.escape(key)} ok .* bytes=(\d+)")
    total = 0
    for i in range(len(cluster.ports)):
        total += sum(int(m[1]) for m in pattern.finditer((cluster.root / f"node{i}.log").read_text()))
    return total


def settled_sent(cluster: Cluster, key: str) -> int:
    """sent_bytes once the logs have caught up (a node logs a get after its last byte)."""
    last = -1
    while True:
        now = sent_bytes(cluster, key)
        if now == last:
            return now
        last = now
        time.sleep(0.1)


def make_csv(path: Path, size: int) -> None:
    """A taxi-like CSV of about `size` bytes, by the taxi example's generator."""
    gen = REPO / "examples" / "taxi" / "gen_taxi.py"
    probe = path.parent / "probe"
    subprocess.run([sys.executable, str(gen), str(probe), "--rows", "20000", "--files", "1"], check=True)
    row = sum(f.stat().st_size for f in probe.iterdir()) / 20000
    rmtree(probe)
    out = path.parent / "gen"
    subprocess.run([sys.executable, str(gen), str(out), "--rows", str(int(size / row)), "--files", "1"],
                   check=True)
    (next(out.iterdir())).rename(path)
    rmtree(out)


def step_csv(cl: Cluster, fs, r: Report, work: Path, size: int, reps: int) -> None:
    import pandas as pd
    local = work / "trips.csv"
    make_csv(local, size)
    cl.s4ctl("cp", local, "s4://bench/trips.csv")
    stored = cl.stored("bench/trips.csv")
    r.add("csv", "file size", local.stat().st_size / MiB, "MiB")
    # pandas (3.x) parses a local *path* with threads, and only a local path: a URL or a
    # file object (s3fs's too) is parsed on one thread. "local, one thread" is the local
    # path with mode.max_threads=1, the parse every non-local source gets.
    sides = {"local": lambda: pd.read_csv(local),
             "s4": lambda: pd.read_csv("s4://bench/trips.csv", storage_options={"conf": str(cl.conf)})}
    if "max_threads" in dir(pd.options.mode):
        def serial():
            with pd.option_context("mode.max_threads", 1):
                return pd.read_csv(local)
        sides["local, one thread"] = serial
    times = {side: [] for side in sides}
    cpu = {side: [] for side in sides}  # this process's CPU: steadier than wall on a loaded machine
    for rep in range(reps):
        for side in (list(sides) if rep % 2 == 0 else list(reversed(sides))):
            warm(stored if side == "s4" else [local])
            t, c = time.perf_counter(), time.process_time()
            df = sides[side]()
            times[side].append(time.perf_counter() - t)
            cpu[side].append(time.process_time() - c)
            del df
    lo, s4 = median(times["local"]), median(times["s4"])
    for side in sides:
        r.add("csv", f"pandas read_csv, {'s4://' if side == 's4' else side}", median(times[side]), "s",
              f"median of {reps}")
    for side in sides:
        r.add("csv", f"reader's CPU, {'s4://' if side == 's4' else side}", median(cpu[side]), "s",
              "(the nodes' CPU not counted)" if side == "s4" else f"median of {reps}")
    ratio = r.add("csv", "s4 / local", s4 / lo, "x", f"target <= {CSV_TARGET_RATIO}")
    r.extra["csv_target_met"] = ratio <= CSV_TARGET_RATIO
    if "local, one thread" in sides:
        r.add("csv", "s4 / local, one thread", s4 / median(times["local, one thread"]), "x",
              "the same parse on both sides")


def step_parquet(cl: Cluster, r: Report, work: Path, size: int, reps: int) -> None:
    import numpy as np
    import pandas as pd
    columns = 16
    rows = size // (8 * columns)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({f"c{i:02d}": rng.random(rows) for i in range(columns)})
    local = work / "wide.parquet"
    df.to_parquet(local)
    del df
    key = "bench/wide.parquet"
    cl.s4ctl("cp", local, f"s4://{key}")
    stored = cl.stored(key)
    opts = {"conf": str(cl.conf)}
    file_size = local.stat().st_size
    r.add("parquet", f"file size ({columns} float64 columns, {rows} rows)", file_size / MiB, "MiB")
    cases = {"one column": ["c07"], "whole file": None}
    times = {(where, case): [] for where in ("local", "s4") for case in cases}
    fetched = {case: [] for case in cases}
    for rep in range(reps):
        for case, cols in cases.items():
            for where in (["local", "s4"] if rep % 2 == 0 else ["s4", "local"]):
                warm([local] if where == "local" else stored)
                before = settled_sent(cl, key) if where == "s4" else 0
                t = time.perf_counter()
                pd.read_parquet(local if where == "local" else f"s4://{key}", columns=cols,
                                storage_options=None if where == "local" else opts)
                times[(where, case)].append(time.perf_counter() - t)
                if where == "s4":
                    fetched[case].append(settled_sent(cl, key) - before)
    for case in cases:
        got = median(fetched[case])
        r.add("parquet", f"{case}: bytes fetched from s4", got / MiB, "MiB",
              f"{100 * got / file_size:.1f}% of the file")
        r.add("parquet", f"{case}: read_parquet, s4://", median(times[("s4", case)]), "s", f"median of {reps}")
        r.add("parquet", f"{case}: read_parquet, local disk", median(times[("local", case)]), "s",
              f"median of {reps}")
    r.add("parquet", "one column / whole file, time from s4",
          median(times[("s4", "one column")]) / median(times[("s4", "whole file")]), "x")


def step_imports(cl: Cluster, r: Report, work: Path) -> None:
    src = work / "small"
    src.write_bytes(b"x" * 1024)
    proc = subprocess.run([sys.executable, "-X", "importtime", S4CTL, "cp", str(src), "s4://bench/small"],
                          env=cl.env, capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in proc.stderr.splitlines() if line.startswith("import time:")][1:]
    modules = {row[2].strip(): int(row[1]) for row in rows}
    heavy = sorted(m for m in modules if m == "s4ctl.fsspec" or m.split(".")[0] in
                   ("fsspec", "pandas", "numpy", "pyarrow", "duckdb", "dask"))
    r.add("imports", "small cp: modules imported", len(modules), "")
    r.add("imports", "small cp: import time (sum of top-level, self+children)",
          sum(int(row[1]) for row in rows if not row[2].startswith("  ")) / 1000, "ms")
    r.add("imports", "small cp: fsspec, pandas, numpy ... imported", len(heavy), "", " ".join(heavy) or "none")
    r.extra["small_cp_modules"] = sorted(modules)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="size of the CSV and parquet files")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", help="comma-separated: csv,parquet,imports")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", help="scratch directory (default: a temp dir)")
    a = ap.parse_args()
    only = a.only.split(",") if a.only else ["csv", "parquet", "imports"]
    work = Path(tempfile.mkdtemp(prefix="s4-python-", dir=a.dir))
    report = Report("s4 bench: Python through fsspec, against local disk")
    report.extra.update(machine=machine(), command=" ".join(["python", *sys.argv]))
    try:
        with Cluster(work / "cluster", log_level="info") as cl:
            import fsspec
            fs = fsspec.filesystem("s4", conf=str(cl.conf))
            if "csv" in only:
                step_csv(cl, fs, report, work, a.mib * MiB, a.reps)
            if "parquet" in only:
                step_parquet(cl, report, work, a.mib * MiB, a.reps)
            if "imports" in only:
                step_imports(cl, report, work)
            fs.client.close()
    finally:
        rmtree(work)
    print(report.json() if a.json else report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The compute path against the machine's own floors, measured in the same run.

Starts a 3-node local cluster (the installed `s4d`, default job limits) and
times each workload beside its floor, interleaved, repeat by repeat:

- tiny: 1,000 keys of 1 KiB.
  - `map cat` against the floor: the same 1,000 `bash -c cat` spawns (stdin
    and stdout redirected to files, as the daemon does), run --max-cpu-jobs
    (cpus + 2) at a time by `xargs -P`. Target: at most 1.2x.
  - `map-to-n` with `split -n r/3` into 3 outputs each against the same
    floor. Target: at most 3x.
  - the daemons' own CPU per key over each map (utime + stime of the three
    s4d, their commands excluded).
- big: 48 keys of 16 MiB of text, inputs re-read into the cache before each
  timed step.
  - `map 'wc -l'` against a local sequential `wc -l` of the same files.
    Target: at least 90%.
  - `map-to-n` with `split -n r/3` (shuffling parts to the nodes) against a
    local sequential run of the same command writing the same files.
    Target: at least 100%.
  - `map-from-n 'xargs cat'` over those 144 parts against a local `cat` of
    the same parts into the same 3 files. Target: at least 90%.
- curve: `map cat` over 1,000, 10,000 and 100,000 tiny keys: keys/s, and the
  growth of the daemons' RSS over each map (the biggest of the three, peak
  VmHWM during the map less RSS before it). Targets: keys/s at 100,000
  within 20% of the 1,000 figure; RSS growth under 50 MiB.

Figures are medians over --reps; ratios are s4's time against the floor's
(so 1.10x is 10% slower than the floor; "% of floor" is a throughput ratio).

Usage: python bench/maps.py [--only tiny,big,curve] [--reps N] [--curve 1000,10000,100000]
                            [--tiny N] [--big-keys N] [--big-mib N] [--json] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import daemons_cpu  # noqa: E402
from push import SPLIT  # noqa: E402  split -n r/3 into 000 001 002: one output per node
from common import (KiB, MiB, Cluster, CodeWatch, Report, RssSampler, cpu_times, filesystem,  # noqa: E402
                    machine, make_text_file, median, ready, rmtree, warm)

JOBS = (os.cpu_count() or 1) + 2  # s4d's default --max-cpu-jobs


def bash(script: str, cwd: Path | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, cwd=cwd,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _runs(times: list[float]) -> str:
    """Every repeat's figure, in order: the spread the median hides."""
    return "runs " + " ".join(f"{x:.2f}" for x in times)


def _cpu(deltas: list[dict]) -> str:
    """The medians of a step's CPU seconds (both CPUs), by kind: busy, idle, and
    iowait and steal, which are time neither s4 nor the floor could use."""
    return "CPU s " + " ".join(f"{k} {median([d[k] for d in deltas]):.2f}" for k in deltas[0])


def tiny_tree(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    block = os.urandom(KiB)
    for i in range(n):
        (root / f"{i:06d}").write_bytes(block)
    return root


def spawn_floor(tree: Path, out: Path) -> float:
    """The same `bash -c cat` per file, JOBS at a time, stdin and stdout redirected."""
    rmtree(out)
    out.mkdir()
    return bash(f"cd {tree} && ls | xargs -P {JOBS} -I@ bash -c 'cat < @ > {out}/@'")


def timed_map(c: Cluster, *args) -> tuple[float, float]:
    """(wall s, daemons' CPU s) of one s4ctl map-like command."""
    before = daemons_cpu(c.pids)
    wall = c.timed(*args)
    return wall, daemons_cpu(c.pids) - before


def step_tiny(c: Cluster, r: Report, work: Path, n: int, reps: int) -> None:
    tree = tiny_tree(work / "tiny", n)
    c.s4ctl("cp", "-r", tree, "s4://bt/in")
    t = {k: [] for k in ("floor", "map", "to-n", "map cpu", "to-n cpu")}
    for rep in range(reps):
        warm(tree.iterdir())
        t["floor"].append(spawn_floor(tree, work / "tiny-out"))
        wall, cpu = timed_map(c, "map", "s4://bt/in", f"s4://bt/cat{rep}", "cat")
        t["map"].append(wall)
        t["map cpu"].append(cpu)
        wall, cpu = timed_map(c, "map-to-n", "s4://bt/in", f"s4://bt/split{rep}", SPLIT)
        t["to-n"].append(wall)
        t["to-n cpu"].append(cpu)
        c.s4ctl("rm", "-r", f"s4://bt/cat{rep}")
        c.s4ctl("rm", "-r", f"s4://bt/split{rep}")
    c.s4ctl("rm", "-r", "s4://bt/")
    rmtree(tree)
    rmtree(work / "tiny-out")
    floor = median(t["floor"])
    r.add("tiny", f"floor: {n} `bash -c cat` spawns, {JOBS} at a time", floor, "s",
          f"median of {reps}; {_runs(t['floor'])}")
    m = median(t["map"])
    r.add("tiny", f"map cat over {n} x 1 KiB", m, "s",
          f"{m / floor:.2f}x the floor (target <= 1.2x); {_runs(t['map'])}")
    r.add("tiny", "  the daemons' own CPU over it", median(t["map cpu"]) / n * 1000, "ms/key")
    m = median(t["to-n"])
    r.add("tiny", f"map-to-n split -n r/3 over {n} x 1 KiB", m, "s",
          f"{m / floor:.2f}x the floor (target <= 3x); {3 * n} outputs; {_runs(t['to-n'])}")
    r.add("tiny", "  the daemons' own CPU over it", median(t["to-n cpu"]) / n * 1000, "ms/key")


def step_big(c: Cluster, r: Report, work: Path, keys: int, size: int, reps: int) -> None:
    local = work / "bigin"
    local.mkdir()
    for i in range(keys):
        make_text_file(local / f"{i:03d}", size)
    c.s4ctl("cp", "-r", local, "s4://bb/in")
    files = sorted(local.iterdir())
    lout, parts, merged = work / "bigout", work / "parts", work / "merged"
    t = {k: [] for k in ("local wc", "map wc", "local split", "to-n", "local cat", "from-n")}
    cpu = {k: [] for k in t}  # the machine's CPU seconds over each step, by kind
    for rep in range(reps):
        for d in (lout, parts, merged):
            rmtree(d)
            d.mkdir()
        # each step: (make its inputs cached, the timed run)
        steps = {
            "local wc": (lambda: warm(files), lambda: bash(f"for f in {local}/*; do wc -l < $f > {lout}/${{f##*/}}; done")),
            "map wc": (lambda: warm(c.stored("bb/in")), lambda: c.timed("map", "s4://bb/in", f"s4://bb/wc{rep}", "wc -l")),
            "local split": (lambda: ready(files), lambda: bash(f"for f in {local}/*; do d={parts}/${{f##*/}}; mkdir $d; "
                                                                f"(cd $d && {SPLIT}) < $f >/dev/null; done")),
            "to-n": (lambda: ready(c.stored("bb/in")),
                     lambda: c.timed("map-to-n", "s4://bb/in", f"s4://bb/split{rep}", SPLIT)),
            "local cat": (lambda: ready(list(parts.glob("*/00?"))),
                          lambda: bash(f"for g in 000 001 002; do ls {parts}/*/$g | xargs cat > {merged}/$g; done")),
            "from-n": (lambda: ready(c.stored(f"bb/split{rep}")),
                       lambda: c.timed("map-from-n", f"s4://bb/split{rep}", f"s4://bb/merged{rep}", "xargs cat")),
        }
        # each floor and its s4 step in turn, the order swapped every repeat: writes cost
        # more into memory the VM has not touched lately, so neither side always goes first
        for floor, s4 in (("local wc", "map wc"), ("local split", "to-n"), ("local cat", "from-n")):
            for name in ((floor, s4) if rep % 2 == 0 else (s4, floor)):
                prepare, run = steps[name]
                prepare()
                before = cpu_times()
                t[name].append(run())
                after = cpu_times()
                cpu[name].append({k: after[k] - before[k] for k in after})
        for out in ("wc", "split", "merged"):
            c.s4ctl("rm", "-r", f"s4://bb/{out}{rep}")
    c.s4ctl("rm", "-r", "s4://bb/")
    for d in (local, lout, parts, merged):
        rmtree(d)
    what = f"{keys} x {size // MiB} MiB"
    rows = [("local wc", "map wc", f"map 'wc -l' over {what}", "target >= 90%"),
            ("local split", "to-n", f"map-to-n split -n r/3 over {what}", "target >= 100%"),
            ("local cat", "from-n", f"map-from-n 'xargs cat' over the {3 * keys} parts", "target >= 90%")]
    for floor, s4, name, target in rows:
        f, s = median(t[floor]), median(t[s4])
        r.add("big", f"floor: {floor}", f, "s", f"median of {reps}; sequential, warm cache; {_runs(t[floor])}; "
              + _cpu(cpu[floor]))
        r.add("big", name, s, "s", f"{f / s:.0%} of the floor's speed ({target}); {_runs(t[s4])}; "
              + _cpu(cpu[s4]))


def step_curve(c: Cluster, rss: RssSampler, r: Report, work: Path, counts: list[int]) -> None:
    first = None
    for n in counts:
        tree = tiny_tree(work / f"curve{n}", n)
        c.s4ctl("cp", "-r", tree, f"s4://bc{n}/in")
        rmtree(tree)
        before = max(rss.now())
        rss.label = f"curve{n}"
        wall = c.timed("map", f"s4://bc{n}/in", f"s4://bc{n}/out", "cat")
        rss.label = f"after{n}"
        growth = (rss.peak(f"curve{n}") - before) / MiB
        rate = n / wall
        first = first or rate
        r.add("curve", f"map cat over {n} x 1 KiB", rate, "keys/s",
              f"{rate / first:.0%} of the {counts[0]}-key rate (target >= 80%)")
        r.add("curve", f"  s4d RSS growth over it ({n} keys)", growth, "MiB",
              f"{rss.source()} (target < 50 MiB)")
        c.s4ctl("rm", "-r", f"s4://bc{n}/")


STEPS = ["tiny", "big", "curve"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated: " + ",".join(STEPS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tiny", type=int, default=1000, help="keys of the tiny step")
    ap.add_argument("--big-keys", type=int, default=48)
    ap.add_argument("--big-mib", type=int, default=16)
    ap.add_argument("--curve", default="1000,10000,100000", help="key counts of the curve")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", help="scratch directory (default: a temp dir)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = a.only.split(",") if a.only else STEPS
    work = Path(tempfile.mkdtemp(prefix="s4-maps-", dir=a.dir))
    report = Report("s4 bench: the compute path against its floors")
    report.extra.update(machine=machine(), command=" ".join(["python", *sys.argv]))
    code = CodeWatch()
    report.add("code", "working tree at " + code.info["commit"]
               + (" + uncommitted changes" if code.info["dirty"] else ""), None, "-")
    report.add("setup", "data dirs and floors on " + filesystem(work), None, "-")
    loads = {"start": os.getloadavg()[0]}
    try:
        with Cluster(work / "cluster") as c, RssSampler(c.pids) as rss:
            if "tiny" in only:
                step_tiny(c, report, work, a.tiny, a.reps)
                loads["tiny"] = os.getloadavg()[0]
            if "big" in only:
                step_big(c, report, work, a.big_keys, a.big_mib * MiB, a.reps)
                loads["big"] = os.getloadavg()[0]
            if "curve" in only:
                step_curve(c, rss, report, work, [int(x) for x in a.curve.split(",")])
                loads["curve"] = os.getloadavg()[0]
        report.extra["load_avg_1min"] = loads
        report.add("load", "1-min load average, start .. end", max(loads.values()), "",
                   " ".join(f"{k}={v:.1f}" for k, v in loads.items()))
        changed = code.changed()
        if changed:
            report.add("code", "s4 sources edited DURING this run", len(changed), "files", " ".join(changed))
    finally:
        rmtree(work)
    print(report.json() if a.json else report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

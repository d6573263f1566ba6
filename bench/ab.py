"""A/B: the s4 of an older git revision against the working tree, interleaved.

Figures taken at different times on a shared machine differ by 2x from load
alone, so "what did this change buy" is answered here in one window: two
3-node clusters side by side, A running the older revision's s4d/ and s4ctl/
(exported with `git archive`, byte-compiled, first on PYTHONPATH), B the
installed working tree; every measurement alternates A and B (ABBA order per
repeat), each side's own s4ctl against its own cluster. Nothing else differs:
same interpreter, venv, files, ports range, machine.

Measured (medians):
- small: 1 KiB `cp` put and get, wall ms per op, and the s4ctl process's own
  CPU (user + sys, from getrusage of children; steadier than wall under load);
- big: 1 GiB put, get to a new file, get to stdout > /dev/null (MB/s), and
  the daemons' peak RSS over those transfers (VmHWM, reset between sides);
- map: per-key wall of a map `cat` over N tiny keys (ms/key), and the
  daemons' own CPU over it (ms/key; steadier than wall under other load);
  and the wall of a map over one key (a map's fixed cost), 30 times each;
- ls/rm: `ls -r` and `rm -r` of N keys (made by `cp -r`, then `sync`).

Usage: python bench/ab.py --old REV [--only small,big,map,lsrm] [--keys N]
                          [--small N] [--reps N] [--json] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GiB, KiB, Cluster, CodeWatch, Report, RssSampler, machine, make_file,  # noqa: E402
                    make_tree, mbps, median, ready, rmtree)

REPO = Path(__file__).resolve().parent.parent


def export(rev: str, dest: Path) -> str:
    """s4d/ and s4ctl/ of rev into dest, byte-compiled; returns the full commit."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "s4d", "s4ctl"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest)], check=True)
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev],
                          check=True, capture_output=True, text=True).stdout.strip()


def order(rep: int) -> list[str]:
    return ["A", "B"] if rep % 2 == 0 else ["B", "A"]


def step_small(cl: dict, r: Report, work: Path, n: int) -> None:
    src = work / "1k.bin"
    src.write_bytes(os.urandom(KiB))
    out = work / "small-out"
    out.mkdir(exist_ok=True)
    t = {(s, op): [] for s in cl for op in ("put", "get")}
    cpu = {(s, op): [] for s in cl for op in ("put", "get")}  # the client's own CPU: steadier under load

    def run(s: str, op: str, *args) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t[s, op].append(cl[s].timed(*args))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[s, op].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

    for i in range(n):
        for s in order(i):
            run(s, "put", "cp", src, f"s4://ab/small/f{i:04d}")
            run(s, "get", "cp", f"s4://ab/small/f{i:04d}", f"{out}/")
    for op in ("put", "get"):
        a, b = (median(t[s, op]) * 1000 for s in ("A", "B"))
        r.add("small", f"1 KiB cp {op}, median wall: A", a, "ms", f"min {min(t['A', op]) * 1000:.1f}")
        r.add("small", f"1 KiB cp {op}, median wall: B", b, "ms",
              f"min {min(t['B', op]) * 1000:.1f}; B-A {b - a:+.1f} ms")
        a, b = (sum(cpu[s, op]) / len(cpu[s, op]) * 1000 for s in ("A", "B"))
        r.add("small", f"1 KiB cp {op}, s4ctl's CPU (user+sys), mean: A", a, "ms")
        r.add("small", f"1 KiB cp {op}, s4ctl's CPU (user+sys), mean: B", b, "ms", f"B-A {b - a:+.1f} ms")
    for c in cl.values():
        c.s4ctl("rm", "-r", "s4://ab/small/")
    rmtree(out)


def step_big(cl: dict, rss: dict, r: Report, work: Path, size: int, reps: int) -> None:
    src = make_file(work / "big.bin", size)
    dst = work / "big.out"
    t = {(s, k): [] for s in cl for k in ("put", "file", "stdout")}
    for s in cl:
        rss[s].label = "big"
    for rep in range(reps):
        for s in order(rep):
            c, key = cl[s], f"s4://ab/big/r{rep}/big.bin"
            ready([src])
            t[s, "put"].append(c.timed("cp", src, key))
            ready(c.stored(key[5:]))
            dst.unlink(missing_ok=True)
            t[s, "file"].append(c.timed("cp", key, dst))
            dst.unlink()
            ready(c.stored(key[5:]))
            t[s, "stdout"].append(c.timed("cp", key, "-"))
            c.s4ctl("rm", key)
    for s in cl:
        rss[s].label = "after-big"
    src.unlink()
    for k, what in (("put", "put"), ("file", "get to a new file"), ("stdout", "get to stdout")):
        a, b = (mbps(size, median(t[s, k])) for s in ("A", "B"))
        r.add("big", f"{size // GiB} GiB {what}: A", a, "MB/s")
        r.add("big", f"{size // GiB} GiB {what}: B", b, "MB/s", f"B/A {b / a:.2f}x")
    for s in ("A", "B"):
        r.add("big", f"s4d peak RSS over those: {s}", rss[s].peak("big") / 2**20, "MiB", rss[s].source())


def step_map(cl: dict, r: Report, work: Path, n: int, reps: int) -> None:
    tree = work / "tiny"
    tree.mkdir()
    for i in range(n):
        (tree / f"{i:05d}").write_bytes(b"x\n")
    for c in cl.values():
        c.s4ctl("cp", "-r", tree, "s4://ab/tiny/in")
        ready(c.stored("ab/tiny/in"))
    rmtree(tree)
    spawn = []
    for _ in range(200):
        t = time.perf_counter()
        subprocess.run(["bash", "-c", "true"], check=True)
        spawn.append(time.perf_counter() - t)
    t = {s: [] for s in cl}
    cpu = {s: [] for s in cl}  # the daemons' own CPU: less swayed by other load than wall time
    for rep in range(reps):
        for s in order(rep):
            before = daemons_cpu(cl[s].pids)
            t[s].append(cl[s].timed("map", "s4://ab/tiny/in", f"s4://ab/tiny/out{rep}", "cat"))
            cpu[s].append(daemons_cpu(cl[s].pids) - before)
    sp = median(spawn) * 1000
    r.add("map", "bare `bash -c true` spawn", sp, "ms", "median of 200, in this window")
    for s in ("A", "B"):
        ms = median(t[s]) / n * 1000
        r.add("map", f"map cat over {n} tiny keys: {s}", ms, "ms/key", f"{ms / sp:.2f}x a bare spawn")
    for s in ("A", "B"):
        r.add("map", f"the daemons' own CPU over it: {s}", median(cpu[s]) / n * 1000, "ms/key",
              "utime+stime of the 3 daemons (commands excluded), median")
    # a map's fixed cost: one key, `wc -l`, alternating A and B (its client start, connections,
    # listing, one spawn, the replies); and a command with quotes, which its request must escape
    one = {s: [] for s in cl}
    quoted = {s: [] for s in cl}
    for i in range(30):
        for s in order(i):
            one[s].append(cl[s].timed("map", "s4://ab/tiny/in/00000*", f"s4://ab/tiny/one{i}/", "wc -l"))
            quoted[s].append(cl[s].timed("map", "s4://ab/tiny/in/00000*", f"s4://ab/tiny/q{i}/", 'grep -c "x"'))
    for s in ("A", "B"):
        r.add("map", f"map 'wc -l' over 1 key, wall: {s}", median(one[s]) * 1000, "ms", "median of 30")
    for s in ("A", "B"):
        r.add("map", f"map 'grep -c \"x\"' over 1 key, wall: {s}", median(quoted[s]) * 1000, "ms", "median of 30")
    for c in cl.values():
        c.s4ctl("rm", "-r", "s4://ab/tiny/")


def daemons_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used themselves, children excluded."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            total += sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
    return total / os.sysconf("SC_CLK_TCK")


def step_lsrm(cl: dict, r: Report, work: Path, n: int, reps: int) -> None:
    tree = make_tree(work / "lsrm", n, 10, per_dir=1000)
    for s in ("A", "B"):
        cl[s].s4ctl("cp", "-r", tree, f"s4://ab/ls{n}")
    rmtree(tree)
    os.sync()  # both sides' keys written back: the same state for rm
    t = {s: [] for s in cl}
    for rep in range(reps):
        for s in order(rep):
            t[s].append(cl[s].timed("ls", "-r", f"s4://ab/ls{n}/"))
    for s in ("A", "B"):
        r.add("ls/rm", f"ls -r of {n} keys: {s}", median(t[s]), "s", f"median of {reps}")
    for s in ("A", "B"):
        r.add("ls/rm", f"rm -r of {n} keys: {s}", cl[s].timed("rm", "-r", f"s4://ab/ls{n}/"), "s",
              "synced keys; A first")


STEPS = ["small", "big", "map", "lsrm"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="git revision for side A (B is the working tree)")
    ap.add_argument("--only", help="comma-separated: " + ",".join(STEPS))
    ap.add_argument("--small", type=int, default=100, help="1 KiB cp ops per side")
    ap.add_argument("--reps", type=int, default=3, help="repeats of the big, map and ls steps")
    ap.add_argument("--keys", type=int, default=10000, help="keys for ls/rm")
    ap.add_argument("--map-keys", type=int, default=2000, help="tiny keys for the map step")
    ap.add_argument("--big-gib", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", help="scratch directory (default: a temp dir)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = a.only.split(",") if a.only else STEPS
    work = Path(tempfile.mkdtemp(prefix="s4-ab-", dir=a.dir))
    report = Report("s4 bench: A/B, interleaved")
    report.extra.update(machine=machine(), command=" ".join(["python", *sys.argv]))
    code = CodeWatch()
    loads = {"start": os.getloadavg()[0]}
    try:
        commit = export(a.old, work / "old")
        # side B's bytecode up to date too: with PYTHONDONTWRITEBYTECODE set, a module edited
        # since the last compile is compiled again at every s4ctl start (~ms a module)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "s4d"), str(REPO / "s4ctl")],
                       check=True)
        report.extra["A"] = f"{a.old} ({commit}), s4d/ + s4ctl/ via git archive"
        report.extra["B"] = f"working tree: {code.info}"
        report.add("ab", "A = " + report.extra["A"], None, "-")
        report.add("ab", "B = working tree at " + code.info["commit"]
                   + (" + uncommitted changes" if code.info["dirty"] else ""), None, "-")
        with Cluster(work / "A", code=str(work / "old")) as ca, Cluster(work / "B") as cb, \
                RssSampler(ca.pids) as ra, RssSampler(cb.pids) as rb:
            cl, rss = {"A": ca, "B": cb}, {"A": ra, "B": rb}
            if "small" in only:
                loads["small"] = os.getloadavg()[0]
                step_small(cl, report, work, a.small)
            if "big" in only:
                loads["big"] = os.getloadavg()[0]
                step_big(cl, rss, report, work, a.big_gib * GiB, a.reps)
            if "map" in only:
                loads["map"] = os.getloadavg()[0]
                step_map(cl, report, work, a.map_keys, a.reps)
            if "lsrm" in only:
                loads["lsrm"] = os.getloadavg()[0]
                step_lsrm(cl, report, work, a.keys, a.reps)
        loads["end"] = os.getloadavg()[0]
        report.extra["load_avg_1min"] = loads
        report.add("load", "1-min load average, start .. end", max(loads.values()), "",
                   " ".join(f"{k}={v:.1f}" for k, v in loads.items()))
        changed = code.changed()
        if changed:
            report.add("code", "s4 sources edited DURING this run", len(changed), "files",
                       "side B mixes two versions; re-run: " + " ".join(changed))
    finally:
        rmtree(work)
    print(report.json() if a.json else report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

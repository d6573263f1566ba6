"""s4's figures on this machine, beside its raw limits measured in the same run.

Starts its own 3-node cluster on loopback (the installed `s4d`), drives it
with the installed `s4ctl` exactly as a user would (every figure includes
process start), and measures:

- limits: loopback sendfile, disk, interpreter start, imports (bench/limits.py);
- big: put and get of 1 GiB, to a file and to stdout > /dev/null (MB/s), each
  repeat interleaved with a fresh loopback measurement (the "same run" limit);
- small: 200 sequential 1 KiB `cp` puts and gets (ops/s, median ms per op);
  8 parallel clients each doing small puts (and gets);
- sweep: put / get-to-file MB/s against file size, 1 KiB ... 1 GiB;
- cp -r: a directory of 1,000 1 KiB files, up and down (files/s);
- maps: 48 keys x 16 MiB of text spread over the nodes: map `cat`, map
  `wc -l` (MB/s of input) against `cat` / `wc -l` of the same files locally;
  map-to-n splitting each input into 3 outputs by name, then map-from-n
  `xargs cat` over them (MB/s of input);
- map overhead: a map `cat` over 200 and 2,000 tiny keys (ms/key) against a
  bare `bash -c true` spawn;
- ls -r and rm -r against key count (1k, 10k, 100k; keys made by `cp -r`, then
  `sync`, so that every count deletes keys in the same, written-back state);
- memory: daemon RSS idle, during the big transfers, and during 64
  concurrent 256 MiB transfers (32 puts + 32 gets): the kernel's peak (VmHWM,
  reset per step through /proc/PID/clear_refs), so a short peak is never
  missed, beside a 50 ms psutil poll; and the peak of every step.

The code measured is recorded in the JSON (commit, dirty files); if s4d/ or
s4ctl/ change while it runs, a `code` row says so (the figures then mix two
versions, and edited modules ran without .pyc). Combine several runs with
bench/combine.py (medians, and every run's value beside them).

Then checks each figure against the targets of issues 2, 3 and 4 and the
older Go implementation's figures.

Usage: python bench/run.py [--quick] [--json] [--plot PATH] [--aws] [--dir DIR]
  --quick  smaller sizes and counts (about a minute)
  --aws    also put the `aws s3 cp` curve (local moto stand-in) on the chart
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
import limits  # noqa: E402
import vs_aws  # noqa: E402
from common import (S4CTL, CodeWatch, GiB, KiB, MiB, Cluster, Report, RssSampler, machine, make_file,  # noqa: E402
                    make_text_file, make_tree, mbps, median, parallel, per_op, plot, ready, rmtree,
                    size_label, warm)

# The older Go implementation on this 2-core machine (issue 4).
GO = {"put 1 GiB": 420, "get 1 GiB to stdout": 800, "get 1 GiB to a file": 210,
      "small put": 135, "small get": 155, "8-way small puts": 245,
      "map cat": 430, "map-to-n": 210, "map-from-n": 620}


def step_big(c: Cluster, r: Report, work: Path, size: int, reps: int) -> dict:
    src = make_file(work / "big.bin", size)
    dst = work / "big.out"
    t: dict = {"put": [], "file": [], "stdout": [], "loopback": [], "newfile": []}
    for rep in range(reps):
        t["loopback"].append(limits.loopback(src, repeats=1))
        t["newfile"].append(limits.new_file_write(work / "newfile", size))
        key = f"s4://big/r{rep}/big.bin"
        ready([src])
        t["put"].append(c.timed("cp", src, key))
        ready(c.stored(key[5:]))
        t["file"].append(c.timed("cp", key, dst))
        dst.unlink()
        ready(c.stored(key[5:]))
        t["stdout"].append(c.timed("cp", key, "-"))
        c.s4ctl("rm", key)
    src.unlink()
    lb = median(t["loopback"]) * 1000
    label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    nf = median(t["newfile"])
    r.add("big", "loopback limit, interleaved with these", lb, "MB/s", f"median of {reps}")
    r.add("big", "new-file write (page cache), interleaved", nf, "MB/s", "reference; noisy: fresh memory")
    out = {"loopback": lb, "newfile": nf, "label": label}
    for k, what in (("put", f"put {label} (file -> s4)"), ("file", f"get {label} to a file"),
                    ("stdout", f"get {label} to stdout > /dev/null")):
        out[k] = mbps(size, median(t[k]))
        note = f"{out[k] / lb:.0%} of loopback" + (f", {out[k] / nf:.0%} of new-file write" if k != "stdout" else "")
        r.add("big", what, out[k], "MB/s", note)
    return out


def step_small(c: Cluster, r: Report, work: Path, n: int, par_clients: int, par_n: int) -> dict:
    src = work / "1k.bin"
    src.write_bytes(os.urandom(KiB))
    out = work / "small-out"
    out.mkdir(exist_ok=True)
    puts, gets = [], []
    start = time.perf_counter()
    for i in range(n):  # interleaved: put one, get it back
        puts.append(c.timed("cp", src, f"s4://small/seq/f{i:04d}"))
        gets.append(c.timed("cp", f"s4://small/seq/f{i:04d}", f"{out}/"))
    wall = time.perf_counter() - start
    res = {"put_ms": median(puts) * 1000, "get_ms": median(gets) * 1000,
           "put_ops": n / sum(puts), "get_ops": n / sum(gets)}
    r.add("small", f"{n} sequential 1 KiB puts", res["put_ops"], "ops/s", f"{wall:.1f}s for puts+gets")
    r.add("small", "  median put, wall", res["put_ms"], "ms", f"min {min(puts) * 1000:.1f} ms")
    r.add("small", f"{n} sequential 1 KiB gets (to a file)", res["get_ops"], "ops/s")
    r.add("small", "  median get, wall", res["get_ms"], "ms", f"min {min(gets) * 1000:.1f} ms")
    secs = parallel(lambda cl, i: c.s4ctl("cp", src, f"s4://small/par/c{cl}/f{i:04d}"), par_clients, par_n)
    res["par_put_ops"] = r.add("small", f"{par_clients} parallel clients x {par_n} 1 KiB puts",
                               par_clients * par_n / secs, "ops/s")
    secs = parallel(lambda cl, i: c.s4ctl("cp", f"s4://small/par/c{cl}/f{i:04d}", "-"), par_clients, par_n)
    res["par_get_ops"] = r.add("small", f"{par_clients} parallel clients x {par_n} 1 KiB gets",
                               par_clients * par_n / secs, "ops/s")
    # the same puts with a process per client instead of per op: each client one `cp -r`
    dirs = [make_tree(work / f"par-tree{cl}", par_n, KiB) for cl in range(par_clients)]
    secs = parallel(lambda cl, i: c.s4ctl("cp", "-r", dirs[cl], f"s4://small/parr/c{cl}"), par_clients, 1)
    res["par_put_ops_cp_r"] = r.add("small", f"{par_clients} parallel clients x {par_n} 1 KiB puts, one cp -r each",
                                    par_clients * par_n / secs, "ops/s", "a process per client, not per op")
    for d in dirs:
        rmtree(d)
    c.s4ctl("rm", "-r", "s4://small/")
    rmtree(out)
    return res


def step_cp_r(c: Cluster, r: Report, work: Path, count: int, reps: int) -> dict:
    tree = make_tree(work / "tree", count, KiB, per_dir=100)
    up, down = [], []
    for rep in range(reps):
        warm(p for p in tree.rglob("*") if p.is_file())
        up.append(c.timed("cp", "-r", tree, f"s4://cpr/r{rep}"))
        down.append(c.timed("cp", "-r", f"s4://cpr/r{rep}", work / f"cpr-out{rep}"))
        rmtree(work / f"cpr-out{rep}")
    c.s4ctl("rm", "-r", "s4://cpr/")
    rmtree(tree)
    res = {"up": count / median(up), "down": count / median(down)}
    r.add("cp -r", f"cp -r of {count} x 1 KiB files, local -> s4", res["up"], "files/s")
    r.add("cp -r", f"cp -r of {count} x 1 KiB files, s4 -> local", res["down"], "files/s")
    return res


MAP_TO_N = ("split -n l/3 -d -a 1 - part; "
            "for i in 0 1 2; do mv part$i ${i}_part; echo ${i}_part; done")


def step_maps(c: Cluster, r: Report, work: Path, keys: int, size: int, reps: int) -> dict:
    local = work / "mapin"
    local.mkdir()
    for i in range(keys):
        make_text_file(local / f"{i:03d}", size)
    c.s4ctl("cp", "-r", local, "s4://maps/in")
    total = keys * size
    files = sorted(local.iterdir())
    lout = work / "mapout"
    lout.mkdir()
    t: dict = {k: [] for k in ("local cat", "map cat", "local wc", "map wc", "to-n", "from-n")}
    for rep in range(reps):  # interleave local and s4 runs
        ready(files)
        t["local cat"].append(_bash(f"for f in {local}/*; do cat $f > {lout}/$(basename $f); done"))
        ready(c.stored("maps/in"))
        t["map cat"].append(c.timed("map", "s4://maps/in", f"s4://maps/cat{rep}", "cat"))
        ready(files)
        t["local wc"].append(_bash(f"for f in {local}/*; do wc -l < $f > {lout}/$(basename $f); done"))
        ready(c.stored("maps/in"))
        t["map wc"].append(c.timed("map", "s4://maps/in", f"s4://maps/wc{rep}", "wc -l"))
        ready(c.stored("maps/in"))
        t["to-n"].append(c.timed("map-to-n", "s4://maps/in", f"s4://maps/split{rep}", MAP_TO_N))
        ready(c.stored(f"maps/split{rep}"))
        t["from-n"].append(c.timed("map-from-n", f"s4://maps/split{rep}", f"s4://maps/merged{rep}",
                                   "xargs cat"))
        c.s4ctl("rm", "-r", f"s4://maps/cat{rep}")
        c.s4ctl("rm", "-r", f"s4://maps/wc{rep}")
        c.s4ctl("rm", "-r", f"s4://maps/split{rep}")
        c.s4ctl("rm", "-r", f"s4://maps/merged{rep}")
    c.s4ctl("rm", "-r", "s4://maps/")
    rmtree(local)
    rmtree(lout)
    res = {k: mbps(total, median(v)) for k, v in t.items()}
    what = f"{keys} x {size // MiB} MiB"
    r.add("maps", f"local `cat` of the same files ({what})", res["local cat"], "MB/s", "sequential loop")
    r.add("maps", f"map cat ({what})", res["map cat"], "MB/s",
          f"{res['map cat'] / res['local cat']:.0%} of local cat")
    r.add("maps", "local `wc -l` of the same files", res["local wc"], "MB/s")
    r.add("maps", "map wc -l", res["map wc"], "MB/s", f"{res['map wc'] / res['local wc']:.0%} of local")
    r.add("maps", "map-to-n: split each input into 3 by name", res["to-n"], "MB/s", "of input")
    r.add("maps", "map-from-n: xargs cat of the 3 groups", res["from-n"], "MB/s", "of input")
    return res


def _bash(script: str) -> float:
    t = time.perf_counter()
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True)
    return time.perf_counter() - t


def step_overhead(c: Cluster, r: Report, work: Path, counts: list[int]) -> dict:
    spawn, _ = per_op(lambda i: subprocess.run(["bash", "-c", "true"], check=True), 200)
    res = {"spawn_ms": r.add("map ovh", "bare `bash -c true` spawn", median(spawn) * 1000, "ms",
                             "sequential, median of 200")}
    for n in counts:
        tree = work / f"tiny{n}"
        tree.mkdir()
        for i in range(n):
            (tree / f"{i:05d}").write_bytes(b"x\n")
        c.s4ctl("cp", "-r", tree, f"s4://tiny{n}/in")
        ready(c.stored(f"tiny{n}/in"))
        secs = median([c.timed("map", f"s4://tiny{n}/in", f"s4://tiny{n}/out{rep}", "cat")
                       for rep in range(2)])
        res[n] = r.add("map ovh", f"map `cat` over {n} tiny keys", secs / n * 1000, "ms/key",
                       f"{secs / n * 1000 / res['spawn_ms']:.1f}x a bare spawn")
        c.s4ctl("rm", "-r", f"s4://tiny{n}/")
        rmtree(tree)
    return res


def step_listing(c: Cluster, r: Report, work: Path, counts: list[int]) -> dict:
    res = {}
    for n in counts:
        tree = work / f"ls{n}"
        make_tree(tree, n, 10, per_dir=1000)
        up = c.timed("cp", "-r", tree, f"s4://ls{n}")
        r.add("ls/rm", f"cp -r of {n} x 10 B files (making the keys)", n / up, "files/s")
        rmtree(tree)
        # Every count in the same state: written back, as keys older than ~30 s are.
        # Deleting a file still in delayed allocation is ~10x cheaper than deleting one
        # with blocks on disk (ext4 frees and, mounted with `discard`, trims them), so
        # without this the small counts (made in seconds) measured unflushed keys and
        # the 100k count (made in a minute) flushed ones: a curve of two different costs.
        os.sync()
        ls = median([c.timed("ls", "-r", f"s4://ls{n}/") for _ in range(3)])
        res[f"ls {n}"] = r.add("ls/rm", f"ls -r of {n} keys", ls, "s", "median of 3, > /dev/null")
        res[f"rm {n}"] = r.add("ls/rm", f"rm -r of {n} keys", c.timed("rm", "-r", f"s4://ls{n}/"), "s",
                               "keys synced to disk first")
    return res


def step_memory(c: Cluster, r: Report, rss: RssSampler, work: Path, count: int, size: int) -> dict:
    src = make_file(work / "rss.bin", size)
    for i in range(3):  # one source key per node for the gets
        c.s4ctl("cp", src, f"s4://rss/src/{i:03d}")
    os.sync()
    rss.label = "concurrent"
    procs = []
    for i in range(count):
        args = ([src, f"s4://rss/put/{i:03d}"] if i % 2 == 0 else [f"s4://rss/src/{i % 3:03d}", "-"])
        procs.append(subprocess.Popen([S4CTL, "cp", *map(str, args)],
                                      env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    t = time.perf_counter()
    failed = [p.stderr.read().decode().strip() for p in procs if p.wait() != 0]
    secs = time.perf_counter() - t
    rss.label = "after"
    c.s4ctl("rm", "-r", "s4://rss/")
    src.unlink()
    label = f"{count} concurrent {size // MiB} MiB transfers"
    r.add("memory", f"{label} (half put, half get)", mbps(count * size, secs), "MB/s",
          f"{len(failed)} failed" + (f": {failed[0]}" if failed else ""))
    peak = r.add("memory", f"s4d peak RSS during {label}", rss.peak("concurrent") / MiB, "MiB",
                 f"max over the 3 daemons; {rss.source()} (polled: {rss.peaks.get('concurrent', 0) / MiB:.1f})")
    return {"peak_mib": peak, "failed": len(failed)}


def check_targets(r: Report, res: dict, quick: bool) -> None:
    """One row per target of issues 2/3/4 and per Go figure: met or not."""
    lb = res["big"]["loopback"]
    big, small, maps = res["big"], res["small"], res["maps"]

    def verdict(name: str, value: float, unit: str, ok: bool, target: str) -> None:
        r.add("targets", name, value, unit, ("met" if ok else "NOT MET") + f" ({target})")

    size = big.get("label", "1 GiB")
    for k, what in (("put", f"put {size}"), ("file", f"get {size} to a file"), ("stdout", f"get {size} to stdout")):
        verdict(f"{what}, % of loopback", big[k] / lb * 100, "%", big[k] >= 0.7 * lb, ">= 70%; issue 2: >= 60%")
    verdict("1 KiB cp put, median wall", small["put_ms"], "ms", small["put_ms"] < 30, "< 30 ms; issue 2: < 35")
    verdict("1 KiB cp get, median wall", small["get_ms"], "ms", small["get_ms"] < 30, "< 30 ms; issue 2: < 35")
    verdict("cp -r 1,000 files, up", res["cp_r"]["up"], "files/s", res["cp_r"]["up"] >= 400, ">= 400")
    verdict("cp -r 1,000 files, down", res["cp_r"]["down"], "files/s", res["cp_r"]["down"] >= 400, ">= 400")
    ls_n = max(int(k.split()[1]) for k in res["ls"] if k.startswith("ls "))
    verdict(f"ls -r of {ls_n} keys", res["ls"][f"ls {ls_n}"], "s", res["ls"][f"ls {ls_n}"] < 2,
            "< 2 s for 100k")
    ovh = res["overhead"]
    n = max(k for k in ovh if isinstance(k, int))
    verdict(f"map overhead per key ({n} keys)", ovh[n] / ovh["spawn_ms"], "x spawn",
            ovh[n] <= 2 * ovh["spawn_ms"], "<= 2x bash -c true")
    verdict("map cat, % of local cat", maps["map cat"] / maps["local cat"] * 100, "%",
            maps["map cat"] >= 0.5 * maps["local cat"], ">= 50%")
    verdict("map-to-n", maps["to-n"], "MB/s", maps["to-n"] >= 400, ">= 400 MB/s")
    verdict("s4d RSS idle", res["idle_mib"], "MiB", res["idle_mib"] < 60, "< 60 MiB")
    if "big_rss_mib" in res:
        verdict(f"s4d RSS, peak during the {size} transfers", res["big_rss_mib"], "MiB",
                res["big_rss_mib"] < 60, "< 60 MiB, flat")
    verdict("s4d RSS, peak under concurrent transfers", res["memory"]["peak_mib"], "MiB",
            res["memory"]["peak_mib"] < 60, "< 60 MiB, flat")
    ours = {"put 1 GiB": big["put"], "get 1 GiB to stdout": big["stdout"], "get 1 GiB to a file": big["file"],
            "small put": small["put_ops"], "small get": small["get_ops"],
            "8-way small puts": small["par_put_ops"], "map cat": maps["map cat"],
            "map-to-n": maps["to-n"], "map-from-n": maps["from-n"]}
    for name, go in GO.items():
        unit = "ops/s" if "small" in name else "MB/s"
        if name in ("small put", "small get"):
            ok, target = ours[name] * 4 >= go, f"Go {go} {unit}; within 4x"
        else:
            ok, target = ours[name] > go, f"Go {go} {unit}; beat it"
        verdict(f"vs Go: {name}", ours[name], unit, ok, target)
    verdict("vs Go: 8-way small puts, one cp -r per client", small["par_put_ops_cp_r"], "ops/s",
            small["par_put_ops_cp_r"] > GO["8-way small puts"], f"Go {GO['8-way small puts']} ops/s; beat it")
    if quick:
        r.add("targets", "(--quick: smaller sizes, not comparable)", None, "-")


def settle(max_wait_s: float, below: float = 1.0) -> float:
    """Wait (up to max_wait_s) for the 1-minute load average to drop below `below`."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and counts")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG chart of throughput against size")
    ap.add_argument("--aws", action="store_true", help="add aws s3 cp (local moto) to the size sweep")
    ap.add_argument("--dir", help="scratch directory (default: a temp dir)")
    ap.add_argument("--settle", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for the load average to fall below 1")
    ap.add_argument("--only", help="comma-separated steps to run (debugging): " + ",".join(STEPS))
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the cluster on kill
    q = a.quick
    only = set(a.only.split(",")) if a.only else set(STEPS)
    work = Path(tempfile.mkdtemp(prefix="s4-bench-", dir=a.dir))
    report = Report("s4 bench" + (" (--quick)" if q else ""))
    report.extra["machine"] = machine()
    report.extra["command"] = " ".join(["python", *sys.argv])
    code = CodeWatch()
    report.extra["code"] = code.info
    print(f"s4 bench: {report.extra['machine']}, scratch {work}", file=sys.stderr)
    res: dict = {}
    s3 = None
    if a.settle:
        settle(a.settle)
    loads = report.extra["load_avg_1min"] = {"start": os.getloadavg()[0]}
    try:
        with Cluster(work / "cluster") as c, RssSampler(c.pids) as rss:
            time.sleep(0.5)
            res["idle_mib"] = report.add("memory", "s4d RSS idle, just started", max(rss.now()) / MiB,
                                         "MiB", "max over the 3 daemons")
            if "limits" not in only:
                limits.ensure_bytecode(report)
            if "limits" in only:
                loads['limits'] = os.getloadavg()[0]
                rss.label = "limits"
                res["limits"] = limits.measure(report, work, size=(256 if q else 1024) * MiB)
            if "big" in only:
                loads['big'] = os.getloadavg()[0]
                rss.label = "big"
                res["big"] = step_big(c, report, work, (256 * MiB) if q else GiB, 2 if q else 3)
                rss.label = "other"
                res["big_rss_mib"] = report.add(
                    "memory", "s4d peak RSS during the big transfers", rss.peak("big") / MiB, "MiB",
                    f"max over the 3 daemons; {rss.source()} (polled: {rss.peaks.get('big', 0) / MiB:.1f})")
            rss.label = "other"
            if "small" in only:
                loads['small'] = os.getloadavg()[0]
                rss.label = 'small'
                res["small"] = step_small(c, report, work, 50 if q else 200, 8, 10 if q else 25)
            if "sweep" in only:
                loads['sweep'] = os.getloadavg()[0]
                rss.label = 'sweep'
                if a.aws:
                    s3 = vs_aws.S3(work, None)
                    report.extra["s3_endpoint"] = s3.label
                sizes = [KiB, 64 * KiB, MiB, 16 * MiB, 256 * MiB] + ([] if q else [GiB])
                res["sweep"] = vs_aws.sweep(c, s3, sizes, work, reps=2 if q else 3)
                for tool, ops in res["sweep"].items():
                    for op, points in ops.items():
                        for size, v in points.items():
                            report.add("sweep", f"{tool} {op} {size_label(size)}", v, "MB/s",
                                       s3.label if tool == "aws" else "")
            if "cp_r" in only:
                loads['cp_r'] = os.getloadavg()[0]
                rss.label = 'cp_r'
                res["cp_r"] = step_cp_r(c, report, work, 1000, 3 if not q else 2)
            if "maps" in only:
                loads['maps'] = os.getloadavg()[0]
                rss.label = 'maps'
                res["maps"] = step_maps(c, report, work, 48, (4 if q else 16) * MiB, 2 if q else 3)
            if "overhead" in only:
                loads['overhead'] = os.getloadavg()[0]
                rss.label = 'overhead'
                res["overhead"] = step_overhead(c, report, work, [200, 500] if q else [200, 2000])
            if "ls" in only:
                loads['ls'] = os.getloadavg()[0]
                rss.label = 'ls'
                res["ls"] = step_listing(c, report, work, [1000, 10000] if q else [1000, 10000, 100000])
            if "memory" in only:
                loads['memory'] = os.getloadavg()[0]
                res["memory"] = step_memory(c, report, rss, work, 16 if q else 64, (64 if q else 256) * MiB)
                time.sleep(1)
                report.add("memory", "s4d RSS idle, after everything", max(rss.now()) / MiB, "MiB")
            rss.label = "end"
            if rss.hwm_ok:
                steps = {k: v for k, v in rss.hwm.items() if k not in ("idle", "other", "end")}
                res["run_rss_mib"] = report.add(
                    "memory", "s4d peak RSS, whole run", max(rss.hwm.values()) / MiB, "MiB",
                    "VmHWM per step: " + " ".join(f"{k}={v / MiB:.0f}" for k, v in steps.items()))
            loads["end"] = os.getloadavg()[0]
            changed = report.extra["code"]["changed_during_run"] = code.changed()
            if changed:  # figures before and after the edit are not comparable
                report.add("code", "s4 sources edited DURING this run", len(changed), "files",
                           "figures mix two versions; re-run: " + " ".join(changed))
            report.add("load", "1-min load average, start .. end of the run",
                       max(loads.values()), "", " ".join(f"{k}={v:.1f}" for k, v in loads.items()))
            if only >= set(STEPS) - {"limits"}:
                check_targets(report, res, q)
    finally:
        if s3:
            s3.close()
        rmtree(work)
    report.extra["results"] = _jsonable(res)
    if a.plot and "sweep" in res:
        lb = res.get("big", {}).get("loopback", 0) / 1000 or res.get("limits", {}).get("loopback_gbps", 0)
        plot(a.plot, res["sweep"], lb, f"s4 on a local 3-node cluster, {os.cpu_count()} cores, "
             f"{report.extra['machine']['date'][:10]}", "moto, local stand-in, not AWS")
    print(report.json() if a.json else report.table())
    return 0


STEPS = ["limits", "big", "small", "sweep", "cp_r", "maps", "overhead", "ls", "memory"]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return x


if __name__ == "__main__":
    sys.exit(main())

"""S3 in and out: `s4ctl cp -r s3://... s4://...` (import) and back (export)
against the ways people do it without it, on one S3 endpoint.

The S3 side is --endpoint-url or, by default, a local moto_server started
here (vs_aws.S3): a LOCAL STAND-IN, NOT AWS. Its own limit matters, so it is
measured in the same run: (c) a plain parallel GET / PUT client (boto3,
--threads threads, bytes read and dropped / sent from memory). The s4 side
is a 3-node local cluster started here, its daemons with the credentials.

Measured, interleaved per repeat, medians:
- big: --objects objects of --size (default 64 x 16 MiB), import and export
  MB/s, beside (a) the object-by-object loop `aws s3 cp s3://... - | s4ctl
  cp - s4://...` (and back), (b) `aws s3 cp --recursive` to local disk then
  `s4ctl cp -r` (and back), (c) the plain parallel client;
- small: --small objects of 1 KiB (default 1,000), import and export
  objects/s beside (a), whose loop runs over a sample of --sample objects
  (one aws process per object: the rate is the same, the wait is not);
- curve: import / export / plain GET / plain PUT MB/s against object size
  (1 KiB .. 256 MiB; as many objects of a size as make ~--curve-bytes, at
  least one), drawn with --plot; for objects over the multipart threshold
  also "plain ranged GET": the same objects fetched as s4 fetches them, in
  S3_PART_BYTES ranges (moto_server reads a whole object for each range, so
  its ranged GETs cost far more than AWS's).

Usage: python bench/s3.py [--endpoint-url URL] [--quick] [--reps N] [--json]
                          [--plot PATH] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import KiB, MiB, Cluster, Report, RssSampler, machine, mbps, median, rmtree  # noqa: E402
from vs_aws import S3  # noqa: E402

CURVE_SIZES = [KiB, 16 * KiB, 256 * KiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB]


class Plain:
    """(c): a plain parallel boto3 client against the same endpoint."""

    def __init__(self, s3: S3, threads: int):
        import boto3
        from botocore.config import Config
        self.threads = threads
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=s3.endpoint, config=Config(max_pool_connections=threads))
        self.bucket = s3.bucket

    def _each(self, fn, names) -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(fn, names))
        return time.perf_counter() - t

    def put(self, names: list[str], data: bytes) -> float:
        return self._each(lambda n: self.client.put_object(Bucket=self.bucket, Key=n, Body=data), names)

    def get(self, names: list[str]) -> float:
        def get(n: str) -> None:
            body = self.client.get_object(Bucket=self.bucket, Key=n)["Body"]
            while body.read(MiB):
                pass
        return self._each(get, names)

    def get_ranged(self, names: list[str], size: int, part: int) -> float:
        """The objects fetched as s4 fetches a big one: GETs of `part`-byte ranges."""
        def get(item: tuple[str, int]) -> None:
            n, start = item
            rng = f"bytes={start}-{min(size, start + part) - 1}"
            body = self.client.get_object(Bucket=self.bucket, Key=n, Range=rng)["Body"]
            while body.read(MiB):
                pass
        return self._each(get, [(n, start) for n in names for start in range(0, size, part)])

    def delete(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            objs = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if objs:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objs})


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}_obj" for i in range(n)]


def big(c: Cluster, s3: S3, plain: Plain, report: Report, work: Path, n: int, size: int,
        reps: int, sec: str, rss: RssSampler) -> dict:
    """Import and export of n objects of size: s4 beside (a), (b), (c)."""
    data = os.urandom(size)
    src = _names(f"{sec}/src/", n)
    plain.put(src, data)
    total = n * size
    ep = ("--endpoint-url", s3.endpoint)
    b = s3.bucket
    runs: dict[str, list[float]] = {}

    def run(name: str, seconds: float) -> None:
        runs.setdefault(name, []).append(mbps(total, seconds))

    # the export's source: imported once (the daemons' first S3 copy: boto3 is imported)
    before = max(rss.now())
    c.s4ctl("cp", "-r", *ep, f"s3://{b}/{sec}/src/", f"s4://bench/{sec}/src/")
    report.add("memory", "s4d RSS before / after its first S3 copy", before / MiB, "MiB",
               f"after: {max(rss.now()) / MiB:.1f} MiB (max over the 3 daemons)")
    names = " ".join(n.rsplit("/", 1)[1] for n in src)
    aws = s3.shell()
    for r in range(reps):
        # --- import
        rss.label = "import"
        run("import s4ctl cp -r s3:// s4://", c.timed("cp", "-r", *ep, f"s3://{b}/{sec}/src/", f"s4://bench/{sec}/i{r}/"))
        rss.label = "other"
        c.s4ctl("rm", "-r", f"s4://bench/{sec}/i{r}/")
        run("import (a) aws s3 cp - | s4ctl cp - loop", c.bash(
            f"for k in {names}; do {aws} cp s3://{b}/{sec}/src/$k - | s4ctl cp - s4://bench/{sec}/a{r}/$k; done"))
        c.s4ctl("rm", "-r", f"s4://bench/{sec}/a{r}/")
        local = work / f"{sec}-b{r}"
        run("import (b) aws s3 cp --recursive, s4ctl cp -r", s3.timed("cp", "--recursive", "--quiet", f"s3://{b}/{sec}/src/", local)
            + c.timed("cp", "-r", local, f"s4://bench/{sec}/b{r}/"))
        rmtree(local)
        c.s4ctl("rm", "-r", f"s4://bench/{sec}/b{r}/")
        run("import (c) plain parallel GET", plain.get(src))
        # --- export
        rss.label = "export"
        run("export s4ctl cp -r s4:// s3://", c.timed("cp", "-r", *ep, f"s4://bench/{sec}/src/", f"s3://{b}/{sec}/e{r}/"))
        rss.label = "other"
        plain.delete(f"{sec}/e{r}/")
        run("export (a) s4ctl cp - | aws s3 cp - loop", c.bash(
            f"for k in {names}; do s4ctl cp s4://bench/{sec}/src/$k - | {aws} cp - s3://{b}/{sec}/a{r}/$k; done"))
        plain.delete(f"{sec}/a{r}/")
        local = work / f"{sec}-eb{r}"
        run("export (b) s4ctl cp -r, aws s3 cp --recursive", c.timed("cp", "-r", f"s4://bench/{sec}/src/", local)
            + s3.timed("cp", "--recursive", "--quiet", local, f"s3://{b}/{sec}/b{r}/"))
        rmtree(local)
        plain.delete(f"{sec}/b{r}/")
        run("export (c) plain parallel PUT", plain.put(_names(f"{sec}/c{r}/", n), data))
        plain.delete(f"{sec}/c{r}/")
    out = {}
    for name, values in runs.items():
        out[name] = median(values)
        report.add(sec, name, out[name], "MB/s", f"{n} x {size // KiB} KiB, runs {', '.join(f'{v:.0f}' for v in values)}")
    for way in ("import", "export"):
        report.add("memory", f"s4d peak RSS during the {way}", rss.peak(way) / MiB, "MiB",
                   f"max over the 3 daemons; {rss.source()}")
    for way in ("import", "export"):
        s4 = out[f"{way} s4ctl cp -r " + ("s3:// s4://" if way == "import" else "s4:// s3://")]
        a = next(v for k, v in out.items() if k.startswith(f"{way} (a)"))
        cc = next(v for k, v in out.items() if k.startswith(f"{way} (c)"))
        report.add(sec, f"{way}: s4 / (a)", s4 / a, "x", "target >= 2x" if sec == "big" else "target >= 10x")
        report.add(sec, f"{way}: s4 / (c)", s4 / cc, "x", "target >= 0.8" if sec == "big" else "")
    c.s4ctl("rm", "-r", f"s4://bench/{sec}/")
    plain.delete(f"{sec}/")
    return out


def small(c: Cluster, s3: S3, plain: Plain, report: Report, n: int, sample: int, reps: int) -> None:
    """n 1 KiB objects: import and export objects/s, beside (a) over a sample."""
    sec = "small"
    src = _names(f"{sec}/src/", n)
    plain.put(src, os.urandom(KiB))
    ep = ("--endpoint-url", s3.endpoint)
    b, aws = s3.bucket, s3.shell()
    some = " ".join(x.rsplit("/", 1)[1] for x in src[:sample])
    runs: dict[str, list[float]] = {}
    c.s4ctl("cp", "-r", *ep, f"s3://{b}/{sec}/src/", f"s4://bench/{sec}/src/")
    for r in range(reps):
        runs.setdefault("import s4ctl cp -r", []).append(
            n / c.timed("cp", "-r", *ep, f"s3://{b}/{sec}/src/", f"s4://bench/{sec}/i{r}/"))
        c.s4ctl("rm", "-r", f"s4://bench/{sec}/i{r}/")
        runs.setdefault("import (a) loop", []).append(sample / c.bash(
            f"for k in {some}; do {aws} cp s3://{b}/{sec}/src/$k - | s4ctl cp - s4://bench/{sec}/a{r}/$k; done"))
        c.s4ctl("rm", "-r", f"s4://bench/{sec}/a{r}/")
        runs.setdefault("export s4ctl cp -r", []).append(
            n / c.timed("cp", "-r", *ep, f"s4://bench/{sec}/src/", f"s3://{b}/{sec}/e{r}/"))
        plain.delete(f"{sec}/e{r}/")
        runs.setdefault("export (a) loop", []).append(sample / c.bash(
            f"for k in {some}; do s4ctl cp s4://bench/{sec}/src/$k - | {aws} cp - s3://{b}/{sec}/a{r}/$k; done"))
        plain.delete(f"{sec}/a{r}/")
    out = {k: median(v) for k, v in runs.items()}
    for k, v in out.items():
        report.add(sec, k, v, "objects/s", f"{n} x 1 KiB" if "(a)" not in k else f"a sample of {sample}")
    for way in ("import", "export"):
        report.add(sec, f"{way}: s4 / (a)", out[f"{way} s4ctl cp -r"] / out[f"{way} (a) loop"], "x",
                   "target >= 10x")
    c.s4ctl("rm", "-r", f"s4://bench/{sec}/")
    plain.delete(f"{sec}/")


def curve(c: Cluster, s3: S3, plain: Plain, report: Report, sizes: list[int], curve_bytes: int,
          reps: int) -> dict:
    """{line: {size: MB/s}} for import, export, plain GET, plain PUT."""
    ep = ("--endpoint-url", s3.endpoint)
    b = s3.bucket
    from s4d import limits
    part = limits.S3_PART_BYTES  # an object over the threshold is imported as ranged GETs of this
    out: dict = {"s4 import": {}, "s4 export": {}, "plain GET": {}, "plain PUT": {}, "plain ranged GET": {}}
    for size in sizes:
        n = max(1, min(256, curve_bytes // size))
        sec = f"curve{size}"
        data = os.urandom(size)
        src = _names(f"{sec}/src/", n)
        plain.put(src, data)
        c.s4ctl("cp", "-r", *ep, f"s3://{b}/{sec}/src/", f"s4://bench/{sec}/src/")
        runs: dict = {k: [] for k in out if k != "plain ranged GET" or size > limits.S3_MULTIPART_THRESHOLD_BYTES}
        for r in range(reps):
            if "plain ranged GET" in runs:  # the endpoint's own cost of the requests s4 makes
                runs["plain ranged GET"].append(plain.get_ranged(src, size, part))
            runs["s4 import"].append(c.timed("cp", "-r", *ep, f"s3://{b}/{sec}/src/", f"s4://bench/{sec}/i{r}/"))
            c.s4ctl("rm", "-r", f"s4://bench/{sec}/i{r}/")
            runs["plain GET"].append(plain.get(src))
            runs["s4 export"].append(c.timed("cp", "-r", *ep, f"s4://bench/{sec}/src/", f"s3://{b}/{sec}/e{r}/"))
            plain.delete(f"{sec}/e{r}/")
            runs["plain PUT"].append(plain.put(_names(f"{sec}/p{r}/", n), data))
            plain.delete(f"{sec}/p{r}/")
        for line, times in runs.items():
            out[line][size] = mbps(n * size, median(times))
            note = f"{n} objects" + (f", in {part // MiB} MiB ranges" if line == "plain ranged GET" else "")
            report.add("curve", f"{line} {size // KiB} KiB", out[line][size], "MB/s", note)
        c.s4ctl("rm", "-r", f"s4://bench/{sec}/")
        plain.delete(f"{sec}/")
    return out


def plot(path: str, lines: dict, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, points in lines.items():
        sizes = sorted(points)
        ax.plot(sizes, [points[s] for s in sizes], marker="o",
                linestyle="--" if name.startswith("plain") else "-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({s for p in lines.values() for s in p}))
    ax.set_xticklabels([f"{s // MiB} MiB" if s >= MiB else f"{s // KiB} KiB"
                        for s in sorted({s for p in lines.values() for s in p})])
    ax.set_xlabel("object size")
    ax.set_ylabel("MB/s (whole copy, all nodes)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint-url", help="an S3 endpoint (default: start a local moto_server)")
    ap.add_argument("--objects", type=int, default=64)
    ap.add_argument("--size", type=int, default=16 * MiB)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=50, help="objects in (a)'s small loop")
    ap.add_argument("--curve-bytes", type=int, default=256 * MiB)
    ap.add_argument("--threads", type=int, default=24, help="(c)'s threads")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="big,small,curve")
    ap.add_argument("--quick", action="store_true", help="16 x 16 MiB, 200 small, 1 rep, 4 sizes")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", metavar="PATH")
    ap.add_argument("--dir", help="work dir (default: a temp dir)")
    a = ap.parse_args()
    if a.quick:
        a.objects, a.small, a.sample, a.reps, a.curve_bytes = 16, 200, 20, 1, 64 * MiB
    sizes = CURVE_SIZES if not a.quick else [KiB, 256 * KiB, 16 * MiB, 64 * MiB]
    only = set(a.only.split(","))
    work = Path(a.dir or tempfile.mkdtemp(prefix="s4-bench-s3-"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report("s4 S3 import / export")
    s3 = S3(work, a.endpoint_url)
    try:
        # the daemons (and this process's plain client) use the endpoint's credentials
        os.environ.update({k: v for k, v in s3.env.items() if k.startswith("AWS_")})
        report.add("setup", "S3 endpoint", None, "-", s3.label)
        report.add("setup", "load at start", os.getloadavg()[0], "1-min", "a shared machine: noisy")
        plain = Plain(s3, a.threads)
        with Cluster(work / "cluster") as c, RssSampler(c.pids) as rss:
            if "big" in only:
                big(c, s3, plain, report, work, a.objects, a.size, a.reps, "big", rss)
            if "small" in only:
                small(c, s3, plain, report, a.small, a.sample, a.reps)
            if "curve" in only:
                lines = curve(c, s3, plain, report, sizes, a.curve_bytes, a.reps)
                if a.plot:
                    plot(a.plot, lines, f"S3 in and out of a local 3-node s4 cluster, {os.cpu_count()} cores; "
                         f"S3: {s3.label}")
        report.add("setup", "load at end", os.getloadavg()[0], "1-min", "")
    finally:
        s3.close()
        if not a.dir:
            rmtree(work)
    report.extra["machine"] = machine()
    if a.json:
        print(report.json())
    else:
        print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`s4ctl cp` against `aws s3 cp` on the same files, as people run them from bash.

The S3 side is the endpoint given by --endpoint-url or, by default, a local
moto server (`moto_server` on a free loopback port, fake credentials) that
this script starts: a LOCAL STAND-IN, NOT AWS, and every output says so.
Its figures show the cost of the awscli client and an S3-shaped HTTP server
on this machine, not what AWS itself would do. The s4 side is a 3-node
local cluster started here.

Measured, s4 and aws interleaved, medians of repeats:
- a big file (default 256 MiB) put, and get to a new file (MB/s; replacing an
  existing file would add the filesystem's cost of freeing it, ~0.5 s per GiB
  on ext4 here, inside rename(2));
- a bash loop of N 1 KiB puts, then of N gets (ops/s);
- 8 parallel bash loops of small puts (ops/s);
- `sweep()`: put/get MB/s against file size, used by run.py's chart.

Usage: python bench/vs_aws.py [--endpoint-url URL] [--quick] [--json] [--dir DIR]
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
from common import (BIN, CodeWatch, KiB, MiB, Cluster, Report, free_port, machine, make_file,  # noqa: E402
                    mbps, median, parallel, ready, rmtree)

LOCAL_LABEL = "moto_server on loopback: a local stand-in, NOT AWS"


class S3:
    """An S3 endpoint for `aws s3`: the given URL, or a moto server started here."""

    def __init__(self, work: Path, endpoint: str | None = None, bucket: str = "s4-bench"):
        self.proc = None
        if endpoint is None:
            port = free_port()
            self.proc = subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                stdout=open(work / "moto.log", "ab"), stderr=subprocess.STDOUT)
            endpoint = f"http://127.0.0.1:{port}"
            self.label = LOCAL_LABEL
        else:
            self.label = f"{endpoint} (given by --endpoint-url)"
        self.endpoint = endpoint
        self.bucket = bucket
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        if self.proc:  # fake credentials, no user config: moto accepts anything
            self.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                            AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                            AWS_CONFIG_FILE=str(work / "no-aws-config"),
                            AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"))
            self._wait_ready()
        self.aws("mb", f"s3://{bucket}", check=False)

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.aws("ls", check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("moto_server did not start; see moto.log")
            time.sleep(0.2)

    def cmd(self, *args) -> list[str]:
        return ["aws", "--endpoint-url", self.endpoint, "s3", *map(str, args)]

    def shell(self) -> str:
        """The `aws ... s3` prefix for bash loops."""
        return " ".join(self.cmd())

    def aws(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(self.cmd(*args), env=self.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        if check and r.returncode != 0:
            raise RuntimeError(f"aws s3 {' '.join(map(str, args))} failed: {r.stderr.decode().strip()}")
        return r

    def timed(self, *args) -> float:
        t = time.perf_counter()
        self.aws(*args)
        return time.perf_counter() - t

    def bash(self, script: str) -> float:
        t = time.perf_counter()
        subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - t

    def close(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


def sweep(c: Cluster, s3: S3 | None, sizes: list[int], work: Path, reps: int,
          aws_max: int = 256 * MiB) -> dict:
    """{tool: {op: {size: MB/s}}}: put and get-to-file against size, s4 and aws interleaved."""
    out: dict = {"s4": {"put": {}, "get": {}}, "aws": {"put": {}, "get": {}}}
    dst = work / "sweep.out"
    for size in sizes:
        src = make_file(work / f"sweep-{size}", size)
        runs: dict = {(t, op): [] for t in ("s4", "aws") for op in ("put", "get")}
        for r in range(reps):
            key = f"sweep/{size}/r{r}/f"
            ready([src])
            runs["s4", "put"].append(c.timed("cp", src, f"s4://{key}"))
            ready(c.stored(key))
            dst.unlink(missing_ok=True)  # replacing a file costs its freeing (0.5 s per GiB here)
            runs["s4", "get"].append(c.timed("cp", f"s4://{key}", dst))
            if s3 and size <= aws_max:
                ready([src])
                runs["aws", "put"].append(s3.timed("cp", src, f"s3://{s3.bucket}/{key}"))
                dst.unlink(missing_ok=True)
                runs["aws", "get"].append(s3.timed("cp", f"s3://{s3.bucket}/{key}", dst))
                s3.aws("rm", f"s3://{s3.bucket}/{key}")
            # Delete as we go: keys left in place fill the page cache, and on this VM a
            # put into memory the guest has not touched yet (or has handed back to the
            # host) runs ~5x slower (the memcpy into the new pages faults on the host):
            # 1 GiB puts took 0.64, 1.66, 3.38, 3.80 s with every key kept.
            c.s4ctl("rm", f"s4://{key}")
            dst.unlink(missing_ok=True)
        for (tool, op), times in runs.items():
            if times:
                out[tool][op][size] = mbps(size, median(times))
        src.unlink()
        dst.unlink(missing_ok=True)
    return out


def compare(c: Cluster, s3: S3, report: Report, work: Path, big: int, small_n: int,
            par_n: int, reps: int) -> None:
    sec = "vs aws"
    report.add(sec, "S3 endpoint", None, "-", s3.label)
    # --- big file ---
    src = make_file(work / "big.bin", big)
    dst = work / "big.out"
    t: dict = {k: [] for k in ("s4 put", "aws put", "s4 get", "aws get")}
    for r in range(reps):
        key = f"vsaws/big/r{r}/big.bin"
        ready([src])
        t["s4 put"].append(c.timed("cp", src, f"s4://{key}"))
        ready([src])
        t["aws put"].append(s3.timed("cp", src, f"s3://{s3.bucket}/{key}"))
        ready(c.stored(key))
        dst.unlink(missing_ok=True)  # both to a new file: replacing one costs its freeing
        t["s4 get"].append(c.timed("cp", f"s4://{key}", dst))
        dst.unlink()
        t["aws get"].append(s3.timed("cp", f"s3://{s3.bucket}/{key}", dst))
        c.s4ctl("rm", f"s4://{key}")  # as we go: see sweep()
        s3.aws("rm", f"s3://{s3.bucket}/{key}")
    label = f"{big // MiB} MiB"
    for op in ("put", "get"):
        s4, aws = mbps(big, median(t[f"s4 {op}"])), mbps(big, median(t[f"aws {op}"]))
        report.add(sec, f"s4ctl cp {op} {label}", s4, "MB/s", "to a file" if op == "get" else "")
        report.add(sec, f"aws s3 cp {op} {label}", aws, "MB/s", s3.label)
        report.add(sec, f"big file {op}: s4 / aws", s4 / aws, "x", "target >= 10x")
    src.unlink()
    dst.unlink(missing_ok=True)
    # --- bash loops of small files ---
    small = work / "small.bin"
    small.write_bytes(os.urandom(KiB))
    out = work / "small-out"
    out.mkdir(exist_ok=True)
    a = s3.shell()
    loops = {
        "s4 put": f"for i in $(seq {small_n}); do s4ctl cp {small} s4://vsaws/loop/f$i; done",
        "aws put": f"for i in $(seq {small_n}); do {a} cp {small} s3://{s3.bucket}/loop/f$i; done",
        "s4 get": f"for i in $(seq {small_n}); do s4ctl cp s4://vsaws/loop/f$i {out}/; done",
        "aws get": f"for i in $(seq {small_n}); do {a} cp s3://{s3.bucket}/loop/f$i {out}/; done",
    }
    rates = {name: small_n / (c.bash(script) if name.startswith("s4") else s3.bash(script))
             for name, script in loops.items()}
    for op in ("put", "get"):
        report.add(sec, f"s4ctl cp {op}, bash loop of {small_n} x 1 KiB", rates[f"s4 {op}"], "ops/s")
        report.add(sec, f"aws s3 cp {op}, bash loop of {small_n} x 1 KiB", rates[f"aws {op}"], "ops/s",
                   s3.label)
        report.add(sec, f"small-file loop {op}: s4 / aws", rates[f"s4 {op}"] / rates[f"aws {op}"], "x",
                   "target >= 20x")
    # --- 8 parallel clients, small puts ---
    par = {}
    for tool in ("s4", "aws"):
        def one(client: int, _i: int, tool=tool) -> None:
            if tool == "s4":
                c.bash(f"for i in $(seq {par_n}); do s4ctl cp {small} s4://vsaws/par/c{client}/f$i; done")
            else:
                s3.bash(f"for i in $(seq {par_n}); do {a} cp {small} s3://{s3.bucket}/par/c{client}/f$i; done")
        par[tool] = 8 * par_n / parallel(one, 8, 1)
    report.add(sec, f"s4ctl cp put, 8 parallel loops of {par_n}", par["s4"], "ops/s")
    report.add(sec, f"aws s3 cp put, 8 parallel loops of {par_n}", par["aws"], "ops/s", s3.label)
    report.add(sec, "8 parallel small puts: s4 / aws", par["s4"] / par["aws"], "x")
    c.s4ctl("rm", "-r", "s4://vsaws/")
    rmtree(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint-url", help="an S3 endpoint (default: a local moto server)")
    ap.add_argument("--quick", action="store_true", help="smaller files, fewer ops")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--dir", help="scratch directory (default: a temp dir)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the cluster on kill
    work = Path(tempfile.mkdtemp(prefix="s4-vs-aws-", dir=a.dir))
    report = Report("s4 bench: s4ctl cp vs aws s3 cp")
    report.extra["machine"] = machine()
    report.extra["command"] = " ".join(["python", *sys.argv])
    code = CodeWatch()
    report.extra["code"] = code.info
    s3 = None
    start_load = os.getloadavg()[0]
    try:
        import limits
        limits.ensure_bytecode(report)
        with Cluster(work / "cluster") as c:
            s3 = S3(work, a.endpoint_url)
            report.extra["s3_endpoint"] = s3.label
            compare(c, s3, report, work, big=(64 if a.quick else 256) * MiB,
                    small_n=20 if a.quick else 100, par_n=5 if a.quick else 10, reps=1 if a.quick else 3)
            report.add("load", "1-min load average, start .. end", os.getloadavg()[0], "",
                       f"start={start_load:.1f}")
            changed = report.extra["code"]["changed_during_run"] = code.changed()
            if changed:
                report.add("code", "s4 sources edited DURING this run", len(changed), "files",
                           "figures mix two versions; re-run: " + " ".join(changed))
    finally:
        if s3:
            s3.close()
        rmtree(work)
    print(report.json() if a.json else report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The machine's raw limits, measured in this run: what s4's figures are judged against.

- loopback: one process `os.sendfile`s a page-cached file into a TCP socket on
  127.0.0.1, another `recv_into`s a 1 MiB buffer and drops the bytes (GB/s);
  a second variant also `os.write`s what it receives to a file (a copying
  receiver; s4's downloads splice, so they can beat it).
- new file: write a file of the same size, no fsync (the page cache's
  speed at taking new data, which a put and a get to a file both need).
- disk: write a file with 1 MiB writes then fsync (MB/s); read it back with
  the page cache dropped (root only, via /proc/sys/vm/drop_caches; otherwise
  the row says "cached"), and once more from the cache.
- interpreter start from this venv: `python -c pass`, `python -S -c pass`,
  and `bash -c true` (the floor of a map command); medians of 20 runs.
- import costs of what `s4ctl` loads (`python -X importtime`, cumulative us).

Usage: python bench/limits.py [--size-mib N] [--json] [--dir DIR]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MiB, Report, drop_caches, machine, make_file, median, stale_bytecode, warm  # noqa: E402


IMPORTS = "import s4ctl.cli, s4ctl.client, s4d.conf"  # what a `cp` loads (docopt only for other commands)


def _receiver(listener: socket.socket, out_path: str | None) -> None:
    conn, _ = listener.accept()
    buf = bytearray(MiB)
    view = memoryview(buf)
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if out_path else None
    while n := conn.recv_into(buf):
        if fd is not None:
            os.write(fd, view[:n])
    if fd is not None:
        os.close(fd)
    conn.sendall(b"k")
    conn.close()


def loopback(path: Path, to_file: Path | None = None, repeats: int = 3) -> float:
    """Median GB/s of sendfile -> recv_into between two processes over loopback TCP."""
    size = path.stat().st_size
    rates = []
    for _ in range(repeats):
        warm([path])
        listener = socket.create_server(("127.0.0.1", 0))
        rx = multiprocessing.get_context("fork").Process(
            target=_receiver, args=(listener, str(to_file) if to_file else None))
        rx.start()
        with open(path, "rb") as f:
            t = time.perf_counter()
            s = socket.create_connection(listener.getsockname())
            offset = 0
            while offset < size:
                offset += os.sendfile(s.fileno(), f.fileno(), offset, min(size - offset, 8 * MiB))
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
            rates.append(size / (time.perf_counter() - t) / 1e9)
        s.close()
        listener.close()
        rx.join()
        if to_file:
            to_file.unlink()
    return median(rates)


def new_file_write(path: Path, size: int) -> float:
    """MB/s of writing `size` bytes to a new file, no fsync: page cache only.

    A reference for a put or a get to a file (both land a new file). On
    machines that hand freed memory back to the host, fresh page cache is
    slow to get, so this varies a lot from one minute to the next."""
    block = os.urandom(MiB)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for _ in range(size // MiB):
        os.write(fd, block)
    os.close(fd)
    rate = size / (time.perf_counter() - t) / 1e6
    path.unlink()
    return rate


def disk(path: Path, size: int) -> tuple[float, float | None, float]:
    """(fsync'd write MB/s, cold read MB/s or None without root, cached read MB/s)."""
    block = os.urandom(MiB)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for _ in range(size // MiB):
        os.write(fd, block)
    os.fsync(fd)
    os.close(fd)
    write = size / (time.perf_counter() - t) / 1e6

    def read() -> float:
        t = time.perf_counter()
        warm([path])
        return size / (time.perf_counter() - t) / 1e6

    cold = read() if drop_caches() else None
    cached = read()
    cached = max(cached, read())
    path.unlink()
    return write, cold, cached


def start_ms(cmd: list[str], runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return median(times) * 1000


def import_costs(modules: str = IMPORTS[len("import "):]) -> list[tuple[str, float]]:
    """(module, cumulative ms) of the top-level imports, as -X importtime reports them (median of 5)."""
    runs: dict[str, list[float]] = {}
    for _ in range(5):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {modules}"],
                             capture_output=True, text=True, check=True).stderr
        for line in err.splitlines():
            fields = line[len("import time:"):].split("|")
            if not line.startswith("import time:") or len(fields) != 3 or "cumulative" in line:
                continue
            depth = (len(fields[2]) - len(fields[2].lstrip()) - 1) // 2  # 2 spaces per level
            if depth == 0:
                runs.setdefault(fields[2].strip(), []).append(int(fields[1]) / 1000)
    costs = [(name, median(v)) for name, v in runs.items()]
    return sorted(costs, key=lambda c: -c[1])


def ensure_bytecode(report: Report) -> None:
    """Compile s4d/ and s4ctl/ to .pyc if they are not (an editable install run with
    PYTHONDONTWRITEBYTECODE=1 never writes them, so every `s4ctl` would compile its
    source at start); report the import cost before and after."""
    import importlib.util
    dirs = [importlib.util.find_spec(p).submodule_search_locations[0] for p in ("s4ctl", "s4d")]
    tag = sys.implementation.cache_tag
    missing = not os.path.exists(os.path.join(dirs[0], "__pycache__", f"client.{tag}.pyc"))
    if missing:
        report.add("limits", "import what `cp` needs, s4 without .pyc", start_ms([sys.executable, "-c", IMPORTS]),
                   "ms", "as run here before compileall: PYTHONDONTWRITEBYTECODE=%s"
                   % os.environ.get("PYTHONDONTWRITEBYTECODE", ""))
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True)  # stale ones too
    left = stale_bytecode()
    if left:
        report.add("limits", "s4 modules still without fresh .pyc", len(left), "", " ".join(left))
    report.add("limits", "import what `cp` needs, with .pyc", start_ms([sys.executable, "-c", IMPORTS]), "ms",
               "compiled by the bench" if missing else "")


def measure(report: Report, work: Path, big: Path | None = None, size: int = 1024 * MiB) -> dict:
    """Add every limit to report; return the headline figures."""
    if big is None:
        big = make_file(work / "limits.bin", size)
    size = big.stat().st_size
    gbps = report.add("limits", f"loopback sendfile -> recv_into ({size // MiB} MiB)",
                      loopback(big), "GB/s", "2 processes, median of 3")
    report.add("limits", "loopback sendfile -> recv_into -> write(file)",
               loopback(big, work / "limits.rx"), "GB/s", "reference: a copying receiver (s4 splices)")
    report.add("limits", "new file write, page cache, no fsync", new_file_write(work / "limits.nf", size),
               "MB/s", "reference; noisy: fresh memory")
    write, cold, cached = disk(work / "limits.disk", size)
    report.add("limits", "disk write (1 MiB writes + fsync)", write, "MB/s")
    if cold is not None:
        report.add("limits", "disk read, page cache dropped", cold, "MB/s")
    report.add("limits", "disk read, cached" + ("" if cold is not None else " (not root: no drop)"),
               cached, "MB/s")
    py = sys.executable
    ensure_bytecode(report)
    interp = report.add("limits", "python -c pass", start_ms([py, "-c", "pass"]), "ms", "median of 20")
    report.add("limits", "python -S -c pass", start_ms([py, "-S", "-c", "pass"]), "ms", "median of 20")
    spawn = report.add("limits", "bash -c true", start_ms(["bash", "-c", "true"]), "ms", "median of 20")
    for name, ms in import_costs()[:8]:
        report.add("imports", f"import {name}", ms, "ms", "cumulative, -X importtime")
    return {"loopback_gbps": gbps, "interp_ms": interp, "spawn_ms": spawn}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="file size for loopback and disk")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--dir", help="scratch directory (default: a temp dir)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s4-limits-", dir=a.dir))
    report = Report("s4 bench: machine limits")
    report.extra["machine"] = machine()
    try:
        measure(report, work, size=a.size_mib * MiB)
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    print(report.json() if a.json else report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

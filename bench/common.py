"""Shared plumbing for the bench scripts: a local cluster, timers, files, RSS, output.

Nothing here measures anything by itself. `Cluster` starts N real `s4d`
processes on loopback ports (the installed ones, from this interpreter's
bin dir) with their data under one directory, by s4d.local's LocalCluster
(the one implementation `s4d local` and the tests use too); `s4ctl()` runs the installed
`s4ctl` against it, so every figure includes what a user pays: interpreter
start, imports, connect, transfer, verify. Timings are wall clock
(`time.perf_counter`) around whole commands; figures are medians of repeats.

The machines this runs on drop file cache left idle for ~30 s, so callers
`warm()` their inputs just before each timed step; before a step that writes
a lot they `ready()` them instead, which first flushes dirty pages (see there).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from s4d.local import LocalCluster, free_port, wait_port  # noqa: F401 (bench scripts use them)

BIN = Path(sys.executable).parent
S4D = str(BIN / "s4d")
S4CTL = str(BIN / "s4ctl")
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class Cluster(LocalCluster):
    """N `s4d` daemons on 127.0.0.1, data and logs under root/ (s4d.local's
    LocalCluster, as `s4d local` and the tests start them), as a context manager."""

    def __init__(self, root: Path, nodes: int = 3, log_level: str = "warning", code: str | None = None):
        """code: a directory holding other s4d/ and s4ctl/ packages to run instead of
        the installed ones (put first on PYTHONPATH for the daemons and s4ctl)."""
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        if code:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")]))
        super().__init__(root, nodes, ("--log-level", log_level), command=[S4D], env=self.env)
        self.env["S4_CONF_PATH"] = str(self.conf)
        self.data = self.data_dirs

    def __enter__(self) -> "Cluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(timeout=15)

    def s4ctl(self, *args, stdout=subprocess.DEVNULL, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([S4CTL, *map(str, args)], env=self.env, stdout=stdout,
                           stderr=subprocess.PIPE)
        if check and r.returncode != 0:
            raise RuntimeError(f"s4ctl {' '.join(map(str, args))} failed: {r.stderr.decode().strip()}")
        return r

    def timed(self, *args, stdout=subprocess.DEVNULL) -> float:
        """Wall seconds of one `s4ctl ARGS` (raises if it fails)."""
        t = time.perf_counter()
        self.s4ctl(*args, stdout=stdout)
        return time.perf_counter() - t

    def bash(self, script: str) -> float:
        """Wall seconds of one bash script run with the cluster's env."""
        t = time.perf_counter()
        subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - t

    def stored(self, key: str) -> list[Path]:
        """The on-disk files of every key under `bucket/prefix` (for warming)."""
        out = []
        for d in self.data:
            p = d / key
            if p.is_file():
                out.append(p)
            elif p.is_dir():
                out.extend(f for f in p.rglob("*") if f.is_file())
        return out


# --- files ---------------------------------------------------------------------------
_BLOCK = os.urandom(MiB)


def make_file(path: Path, size: int) -> Path:
    """A file of `size` incompressible-ish bytes (a random MiB, repeated with a counter)."""
    with open(path, "wb") as f:
        left, i = size, 0
        while left:
            chunk = (i.to_bytes(8, "little") + _BLOCK[8:])[:min(left, MiB)]
            f.write(chunk)
            left -= len(chunk)
            i += 1
    return path


def make_text_file(path: Path, size: int, line: int = 100) -> Path:
    """`size` bytes of `line`-byte text lines (for wc -l and line-wise split)."""
    row = (b"%0*d\n" % (line - 1, 0))
    block = b"".join(b"%0*d\n" % (line - 1, i) for i in range(MiB // line)) or row
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = block[:left]
            f.write(chunk)
            left -= len(chunk)
    return path


def make_tree(root: Path, count: int, size: int = 1024, per_dir: int = 0) -> Path:
    """`count` files of `size` bytes under root (in subdirs of per_dir files if given)."""
    data = _BLOCK[:size]
    for i in range(count):
        d = root / f"d{i // per_dir:04d}" if per_dir else root
        if per_dir and i % per_dir == 0 or i == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}").write_bytes(data)
    return root


def warm(paths) -> None:
    """Read files so they are in the page cache for the next timed step."""
    buf = bytearray(MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def ready(paths) -> None:
    """Before a timed step that writes a lot: flush dirty pages (os.sync), then warm
    the inputs. Once the page cache holds more dirty data than the kernel's
    background threshold (10% of memory, ~2.3 GB here) writers are throttled to
    the disk's writeback speed: a 1 GiB put that takes 0.67 s took 3.8 s as the
    third of a series (dirty 2.3 GB before it). That measures the disk, not s4;
    the disk has its own rows."""
    os.sync()
    warm(paths)


def drop_caches() -> bool:
    """Drop the page cache (root only); False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


# --- statistics and timing -----------------------------------------------------------------
def median(xs) -> float:
    return statistics.median(xs)


def per_op(fn, n: int) -> tuple[list[float], float]:
    """Run fn(i) for i < n; (seconds of each call, total wall seconds)."""
    times = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return times, time.perf_counter() - start


def parallel(fn, clients: int, per_client: int) -> float:
    """`clients` threads each calling fn(client, i) per_client times; wall seconds."""
    errors = []

    def run(c: int) -> None:
        try:
            for i in range(per_client):
                fn(c, i)
        except BaseException as e:  # noqa: BLE001 - reported after join
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


# --- daemon memory ------------------------------------------------------------------------
class RssSampler:
    """The daemons' peak RSS per labelled stretch of the run.

    Two sources: the kernel's own high-water mark (`VmHWM` in /proc/PID/status,
    reset at every label change by writing 5 to /proc/PID/clear_refs), which
    cannot miss a short peak; and psutil polls every `every` s (the fallback
    where clear_refs is not writable, and a cross-check). `peak(label)` is the
    exact high-water mark when available, else the polled maximum."""

    def __init__(self, pids: list[int], every: float = 0.05):
        import psutil
        self.pids = list(pids)
        self.procs = [psutil.Process(p) for p in pids]
        self.every = every
        self._label = "idle"
        self.peaks: dict[str, int] = {}  # label -> max single-daemon RSS polled
        self.hwm: dict[str, int] = {}  # label -> max single-daemon VmHWM (exact)
        self.hwm_ok = self._reset_hwm()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> list[int]:
        return [p.memory_info().rss for p in self.procs]

    def _read_hwm(self) -> int:
        top = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        top = max(top, int(line.split()[1]) * 1024)
        return top

    def _reset_hwm(self) -> bool:
        try:
            for pid in self.pids:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5\n")
            return True
        except OSError:
            return False

    @property
    def label(self) -> str:
        return self._label

    @label.setter
    def label(self, new: str) -> None:
        """Close the current stretch (record its exact peak), reset the mark, start `new`."""
        old = self._label
        if self.hwm_ok:
            try:
                self.hwm[old] = max(self.hwm.get(old, 0), self._read_hwm())
            except OSError:
                self.hwm_ok = False
            self._reset_hwm()
        self._label = new

    def peak(self, label: str) -> int:
        """Peak single-daemon RSS during `label` (a stretch already closed)."""
        if self.hwm_ok and label in self.hwm:
            return self.hwm[label]
        return self.peaks.get(label, 0)

    def source(self) -> str:
        return "VmHWM, reset per step" if self.hwm_ok else f"polled every {self.every * 1000:.0f} ms"

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                top = max(self.now())
            except Exception:  # noqa: BLE001 - a daemon gone at shutdown
                return
            label = self._label
            self.peaks[label] = max(self.peaks.get(label, 0), top)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- output ------------------------------------------------------------------------------
class Report:
    """Rows of (section, name, value, unit, note), printed as a table or dumped as JSON."""

    def __init__(self, title: str):
        self.title = title
        self.rows: list[dict] = []
        self.extra: dict = {}

    def add(self, section: str, name: str, value: float, unit: str, note: str = "") -> float:
        self.rows.append({"section": section, "name": name, "value": value, "unit": unit, "note": note})
        print(f"  {section:<10} {name:<46} {_fmt(value):>10} {unit:<8} {note}", file=sys.stderr, flush=True)
        return value

    def get(self, section: str, name: str) -> float | None:
        for r in self.rows:
            if r["section"] == section and r["name"] == name:
                return r["value"]
        return None

    def table(self) -> str:
        lines = [f"# {self.title}", "",
                 f"| {'section':<10} | {'measure':<46} | {'value':>10} | {'unit':<8} | note |",
                 f"|{'-' * 12}|{'-' * 48}|{'-' * 12}:|{'-' * 10}|------|"]
        for r in self.rows:
            lines.append(f"| {r['section']:<10} | {r['name']:<46} | {_fmt(r['value']):>10} | "
                         f"{r['unit']:<8} | {r['note']} |")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps({"title": self.title, "rows": self.rows, **self.extra}, indent=1)


def _fmt(v: float) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def machine() -> dict:
    """nproc, memory, kernel, python: the facts a figure needs beside it."""
    import platform
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(),
            "mem_gib": round(mem / GiB, 1), "kernel": platform.release(),
            "python": platform.python_version(), "root": os.geteuid() == 0}


def filesystem(path) -> str:
    """The filesystem a path lives on, as a figure needs it said: its type, its
    device and, for ext4, whether it has a journal (without one, every new
    inode walks past the inodes freed in the last minute: see bench/RESULTS.md)."""
    path = os.path.realpath(path)
    best = ("", "?", "?", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, kind, options = line.split()[:4]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, dev, kind, options)
    except OSError:
        return "?"
    mnt, dev, kind, options = best
    if kind == "ext4":
        name = os.path.basename(dev)
        journal = os.path.isdir("/proc/fs/jbd2") and any(e.startswith(name + "-") for e in os.listdir("/proc/fs/jbd2"))
        kind += " with a journal" if journal else " WITHOUT a journal"
    if "discard" in options.split(","):  # each freed extent trimmed as it is freed (without a journal: in unlink)
        kind += " (mount option discard)"
    return f"{kind} on {dev} (mounted at {mnt})"


def cpu_times() -> dict[str, float]:
    """Seconds the machine's CPUs have spent so far (/proc/stat): busy (user, nice,
    system, irq, softirq), idle, iowait (idle with a task waiting on the disk)
    and steal (taken by the host). Deltas over a step show where its time went."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) / tick for x in f.readline().split()[1:9])
    return {"busy": user + nice + system + irq + softirq, "idle": idle, "iowait": iowait, "steal": steal}


def _sources() -> dict[str, float]:
    """mtime of every .py of the installed s4d and s4ctl packages."""
    import importlib.util
    out = {}
    for pkg in ("s4d", "s4ctl"):
        d = importlib.util.find_spec(pkg).submodule_search_locations[0]
        for name in os.listdir(d):
            if name.endswith(".py"):
                out[os.path.join(d, name)] = os.stat(os.path.join(d, name)).st_mtime
    return out


def stale_bytecode() -> list[str]:
    """Sources of s4d/s4ctl whose .pyc is missing or older than the source: with
    PYTHONDONTWRITEBYTECODE set, each of these is compiled again by every s4ctl run."""
    tag = sys.implementation.cache_tag
    stale = []
    for path, mtime in _sources().items():
        d, name = os.path.split(path)
        pyc = os.path.join(d, "__pycache__", f"{name[:-3]}.{tag}.pyc")
        if not os.path.exists(pyc) or os.stat(pyc).st_mtime < mtime:
            stale.append(os.path.relpath(path))
    return sorted(stale)


class CodeWatch:
    """What code a run measured: the git commit and dirty files of s4d/ and s4ctl/
    at the start, and whether any of their sources changed during the run (then
    the figures mix two versions, and the edited modules ran without .pyc)."""

    def __init__(self):
        self.start = time.time()
        self.mtimes = _sources()
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        def git(*args: str) -> str:
            r = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
            return r.stdout.strip() if r.returncode == 0 else ""
        self.info = {"commit": git("rev-parse", "--short", "HEAD"),
                     "dirty": git("status", "--porcelain", "--", "s4d", "s4ctl").splitlines()}

    def changed(self) -> list[str]:
        now = _sources()
        return sorted(os.path.relpath(p) for p, m in now.items() if self.mtimes.get(p) != m)


def plot(path: str, curves: dict, loopback_gbps: float, title: str, aws_label: str = "") -> None:
    """Throughput against file size: s4 (and aws s3 cp) put/get, the loopback limit as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
    styles = {("s4", "put"): "o-", ("s4", "get"): "s-", ("aws", "put"): "o--", ("aws", "get"): "s--"}
    for (tool, op), style in styles.items():
        points = sorted(curves.get(tool, {}).get(op, {}).items())
        if points:
            name = f"s4ctl cp {op}" if tool == "s4" else f"aws s3 cp {op} ({aws_label})"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name)
    if loopback_gbps:  # not measured by `run.py --only sweep`
        ax.axhline(loopback_gbps * 1000, color="grey", linestyle=":",
                   label=f"loopback sendfile reference ({loopback_gbps:.2f} GB/s)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({s for t in curves.values() for o in t.values() for s in o})
    ax.set_xticks(sizes, [size_label(s) for s in sizes])
    ax.set_xlabel("file size (one `cp`, wall time incl. process start)")
    ax.set_ylabel("MB/s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def size_label(n: int) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= div:
            return f"{n // div} {unit}"
    return f"{n} B"

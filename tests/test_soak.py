"""Load: many clients at once on a 3-node cluster, every byte checked, nothing lost.

N client threads share the cluster: most call `s4ctl.client.Client` directly,
every fourth drives the installed `s4ctl` in subprocesses. Each owns a prefix
and mixes put / get / ls / rm / eval / map over keys of random sizes (0 to
8 MiB, skewed small), remembering the size and xxh3 of everything it wrote.
Every read is compared with what was written; every listing with what should
be there; a deleted key must be gone; map and eval outputs are checked
against the inputs' sizes. At the end every surviving key is read back once
more and the whole listing must be exactly the keys the clients kept: zero
lost, zero corrupted, zero left over. The daemons' RSS and open fds are
sampled (psutil) and must come back flat.

The short soak (16 clients, ~25 s) runs by default. The long one (32
clients, 90 s) is marked `soak` and excluded by default (setup.cfg):

    .venv/bin/python -m pytest -m soak -s tests/test_soak.py

`-s` prints the figures; set S4_SOAK_REPORT=path to also get them as JSON.
"""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil
import pytest
import xxhash

from s4d.errors import NotFound, S4Error
from s4ctl.client import Client
from tests.cluster import S4CTL

MiB = 1024 * 1024
MAX_KEYS_PER_CLIENT = 24   # above this a client deletes more than it writes
OPS = {"put": 30, "get": 30, "ls": 8, "rm": 12, "eval": 8, "map": 2}
POOL = os.urandom(9 * MiB)  # key contents are slices of this, each with a unique head


def random_size(rng: random.Random) -> int:
    tier = rng.random()
    if tier < 0.05:
        return 0
    if tier < 0.40:
        return rng.randint(1, 4096)
    if tier < 0.70:
        return rng.randint(4096, 256 * 1024)
    if tier < 0.90:
        return rng.randint(256 * 1024, 2 * MiB)
    return rng.randint(2 * MiB, 8 * MiB)


def content(rng: random.Random, size: int) -> bytes:
    head = rng.randbytes(min(size, 16))
    start = rng.randint(0, len(POOL) - size)
    return head + POOL[start:start + size - len(head)]


@dataclass
class Stats:
    ops: Counter = field(default_factory=Counter)
    bytes_in: int = 0    # written to the cluster
    bytes_out: int = 0   # read back and verified
    bytes_processed: int = 0  # inputs of eval and map commands
    failures: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, op: str, written: int = 0, read: int = 0, processed: int = 0) -> None:
        with self.lock:
            self.ops[op] += 1
            self.bytes_in += written
            self.bytes_out += read
            self.bytes_processed += processed


class Worker(threading.Thread):
    """One client: its own prefix, its own record of what it stored."""

    def __init__(self, n: int, cluster, stats: Stats, stop_at: float, use_cli: bool, tmp):
        super().__init__(name=f"soak-{n}", daemon=True)
        self.n, self.cluster, self.stats, self.stop_at = n, cluster, stats, stop_at
        self.use_cli = use_cli
        self.rng = random.Random(n)
        self.client = Client([("127.0.0.1", p) for p in cluster.ports])
        self.prefix = f"soak/w{n:02d}/"
        self.kept: dict[str, tuple[int, str]] = {}   # key -> (size, xxh3)
        self.serial = 0
        self.tmp = tmp / f"w{n:02d}"
        self.tmp.mkdir()

    # --- plumbing ----------------------------------------------------------------
    def s4ctl(self, *args, input: bytes = b"") -> bytes:
        proc = subprocess.run([S4CTL, *args], input=input, capture_output=True, timeout=120,
                              env=self.cluster.env)
        if proc.returncode != 0:
            raise AssertionError(f"s4ctl {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
        return proc.stdout

    def read(self, key: str) -> bytes:
        if self.use_cli:
            return self.s4ctl("cp", "s4://" + key, "-")
        fd = os.memfd_create("soak")
        try:
            size = self.client.get(key, fd)
            return os.pread(fd, size + 1, 0)
        finally:
            os.close(fd)

    def pick(self) -> str | None:
        return self.rng.choice(sorted(self.kept)) if self.kept else None

    # --- ops -----------------------------------------------------------------------
    def op_put(self) -> None:
        self.serial += 1
        key = f"{self.prefix}{self.rng.choice(['', 'd1/', 'd1/d2/'])}k{self.serial:05d}"
        data = content(self.rng, random_size(self.rng))
        how = self.rng.choice(["file", "stream"])
        if how == "file":
            path = self.tmp / "put"
            path.write_bytes(data)
        if self.use_cli:
            if how == "file":
                self.s4ctl("cp", str(path), "s4://" + key)
            else:
                self.s4ctl("cp", "-", "s4://" + key, input=data)
        elif how == "file":
            self.client.put(key, path=str(path))
        else:
            self.client.put(key, stream=io.BytesIO(data))
        self.kept[key] = (len(data), xxhash.xxh3_64_hexdigest(data))
        self.stats.count("put", written=len(data))

    def op_get(self) -> None:
        key = self.pick()
        if key is None:
            return self.op_put()
        data = self.read(key)
        self.verify(key, data)
        self.stats.count("get", read=len(data))

    def verify(self, key: str, data: bytes) -> None:
        size, digest = self.kept[key]
        if len(data) != size or xxhash.xxh3_64_hexdigest(data) != digest:
            raise AssertionError(f"CORRUPT {key}: read {len(data)} bytes, wrote {size}")

    def op_ls(self) -> None:
        if self.use_cli:
            out = self.s4ctl("ls", "-r", "s4://" + self.prefix) if self.kept else b""
            listed = {"soak/" + line.split()[3]: int(line.split()[2]) for line in out.decode().splitlines()}
        else:
            listed = {name: size for name, size, _ in self.client.ls(self.prefix, recursive=True)}
        want = {k: size for k, (size, _) in self.kept.items()}
        if listed != want:
            raise AssertionError(f"ls {self.prefix}: missing {sorted(set(want) - set(listed))}, "
                                 f"extra {sorted(set(listed) - set(want))}, sizes differ "
                                 f"{sorted(k for k in want if k in listed and listed[k] != want[k])}")
        self.stats.count("ls")

    def op_rm(self) -> None:
        key = self.pick()
        if key is None:
            return self.op_put()
        if self.use_cli:
            self.s4ctl("rm", "s4://" + key)
        else:
            assert self.client.rm(key) == 1
        del self.kept[key]
        try:
            fd = os.memfd_create("gone")
            try:
                self.client.get(key, fd)
            finally:
                os.close(fd)
            raise AssertionError(f"{key} still readable after rm")
        except NotFound:
            pass
        self.stats.count("rm")

    def op_eval(self) -> None:
        key = self.pick()
        if key is None:
            return self.op_put()
        if self.use_cli:
            out = self.s4ctl("eval", "s4://" + key, "wc -c")
        else:
            fd = os.memfd_create("eval")
            try:
                n = self.client.eval(key, "wc -c", fd)
                out = os.pread(fd, n + 1, 0)
            finally:
                os.close(fd)
        if int(out) != self.kept[key][0]:
            raise AssertionError(f"eval {key}: wc -c says {out!r}, wrote {self.kept[key][0]} bytes")
        self.stats.count("eval", processed=self.kept[key][0])

    def op_map(self) -> None:
        if not self.kept:
            return self.op_put()
        self.serial += 1
        outdir = f"soak/w{self.n:02d}-out{self.serial:05d}/"
        if self.use_cli:
            self.s4ctl("map", "s4://" + self.prefix, "s4://" + outdir, "wc -c")
        else:
            result = self.client.map(self.prefix, outdir, "wc -c")
            assert result["done"] == result["total"] == len(self.kept), (result, len(self.kept))
        listed = {name: size for name, size, _ in self.client.ls(outdir, recursive=True)}
        want = {outdir + k[len(self.prefix):] for k in self.kept}
        if set(listed) != want:
            raise AssertionError(f"map into {outdir}: missing {sorted(want - set(listed))}, "
                                 f"extra {sorted(set(listed) - want)}")
        for key, (size, _) in self.rng.sample(sorted(self.kept.items()), min(4, len(self.kept))):
            got = self.read(outdir + key[len(self.prefix):])
            if int(got) != size:
                raise AssertionError(f"map output for {key}: {got!r}, input has {size} bytes")
        assert self.client.rm(outdir, recursive=True) == len(want)
        self.stats.count("map", processed=sum(size for size, _ in self.kept.values()))

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        names, weights = zip(*OPS.items())
        try:
            while time.monotonic() < self.stop_at:
                op = self.rng.choices(names, weights)[0]
                if len(self.kept) >= MAX_KEYS_PER_CLIENT and op == "put":
                    op = "rm"
                try:
                    getattr(self, f"op_{op}")()
                except (S4Error, AssertionError, OSError, subprocess.SubprocessError) as e:
                    with self.stats.lock:
                        self.stats.failures.append(f"client {self.n} {op}: {type(e).__name__}: {e}")
        finally:
            self.client.close()

    def final_check(self) -> tuple[int, int]:
        """Read every kept key once more: (lost, corrupted)."""
        lost = corrupted = 0
        for key in sorted(self.kept):
            fd = os.memfd_create("final")
            try:
                size = self.client.get(key, fd)
                data = os.pread(fd, size + 1, 0)
            except NotFound:
                lost += 1
                continue
            except S4Error:
                corrupted += 1
                continue
            finally:
                os.close(fd)
            try:
                self.verify(key, data)
            except AssertionError:
                corrupted += 1
        self.client.close()
        return lost, corrupted


def daemon_figures(cluster) -> list[dict]:
    out = []
    for i in range(len(cluster.ports)):
        p = psutil.Process(cluster.pid(i))
        out.append({"rss": p.memory_info().rss, "fds": p.num_fds()})
    return out


def settle_fds(cluster, baseline: list[dict], timeout: float = 20) -> list[dict]:
    """Daemon figures once open connections have wound down (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        now = daemon_figures(cluster)
        if all(n["fds"] <= b["fds"] for n, b in zip(now, baseline)) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def soak(make_cluster, tmp_path, clients: int, duration_s: float) -> dict:
    cluster = make_cluster(nodes=3)
    # warm-up: every kind of work once, so lazily made threads and fds exist before the baseline
    warm = Worker(99, cluster, Stats(), 0, False, tmp_path)
    for op in ("put", "put", "get", "ls", "eval", "map", "rm"):
        getattr(warm, f"op_{op}")()
    warm.client.rm(warm.prefix, recursive=True)
    warm.client.close()
    time.sleep(1)
    before = daemon_figures(cluster)

    stats = Stats()
    started = time.monotonic()
    workers = [Worker(n, cluster, stats, started + duration_s, use_cli=(n % 4 == 3), tmp=tmp_path)
               for n in range(clients)]
    for w in workers:
        w.start()
    samples = []
    while any(w.is_alive() for w in workers):
        samples.append((time.monotonic() - started, daemon_figures(cluster)))
        time.sleep(1)
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started

    lost = corrupted = 0
    for w in workers:
        lo, co = w.final_check()
        lost += lo
        corrupted += co
    kept = {k for w in workers for k in w.kept}
    checker = Client([("127.0.0.1", p) for p in cluster.ports])
    listed = {name for name, _, _ in checker.ls("soak/", recursive=True)} if kept else set()
    checker.close()
    after = settle_fds(cluster, before)

    peak = [max(s[1][i]["rss"] for s in samples) if samples else 0 for i in range(3)]
    report = {
        "clients": clients, "cli_clients": sum(w.use_cli for w in workers), "nodes": 3,
        "duration_s": round(elapsed, 1), "ops": sum(stats.ops.values()), "by_op": dict(stats.ops),
        "mb_written": round(stats.bytes_in / 1e6, 1), "mb_read_verified": round(stats.bytes_out / 1e6, 1),
        "mb_through_commands": round(stats.bytes_processed / 1e6, 1),
        "keys_kept": len(kept), "keys_lost": lost, "keys_corrupted": corrupted,
        "keys_left_over": len(listed - kept), "failures": len(stats.failures),
        "rss_mb_before": [round(b["rss"] / MiB, 1) for b in before],
        "rss_mb_peak": [round(p / MiB, 1) for p in peak],
        "rss_mb_after": [round(a["rss"] / MiB, 1) for a in after],
        "fds_before": [b["fds"] for b in before], "fds_after": [a["fds"] for a in after],
        "temp_files_left": len(cluster.temp_files()),
    }
    print("\nsoak:", json.dumps(report))
    if os.environ.get("S4_SOAK_REPORT"):
        with open(os.environ["S4_SOAK_REPORT"], "w") as f:
            json.dump(report, f, indent=1)

    assert not stats.failures, "\n".join(stats.failures[:20])
    assert lost == 0 and corrupted == 0, report
    assert listed == kept, f"left over: {sorted(listed - kept)[:10]}, missing: {sorted(kept - listed)[:10]}"
    assert report["temp_files_left"] == 0, cluster.temp_files()
    assert min(stats.ops[op] for op in OPS) > 0, stats.ops
    for i, (b, a) in enumerate(zip(before, after)):
        assert a["fds"] <= b["fds"], f"node{i} fds {b['fds']} -> {a['fds']}"
        # flat memory: whatever the load took, it is bounded and does not keep growing
        assert a["rss"] < b["rss"] + 64 * MiB, f"node{i} rss {b['rss'] >> 20} -> {a['rss'] >> 20} MiB"
    for i in range(3):
        p = psutil.Process(cluster.pid(i))
        assert p.is_running() and cluster.procs[i].poll() is None
    return report


def test_a_short_soak_of_16_clients_loses_and_corrupts_nothing_and_leaves_the_daemons_flat(make_cluster, tmp_path):
    soak(make_cluster, tmp_path, clients=16, duration_s=20)


@pytest.mark.soak
def test_a_long_soak_of_32_clients_for_90_s_loses_and_corrupts_nothing_and_leaves_the_daemons_flat(
        make_cluster, tmp_path):
    soak(make_cluster, tmp_path, clients=32, duration_s=90)

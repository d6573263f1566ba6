"""Faults inflicted on real daemons: crashes, stalls, full disks, busy nodes, stops, map faults.

Every test starts real `s4d` processes (tests/cluster.py), drives them with
the installed `s4ctl` or raw sockets, inflicts one fault for real (SIGKILL,
SIGSTOP, SIGTERM, a full tmpfs, a held io slot) and asserts on what is left:
the keys on disk and as read back, the temp dir, exit codes, the one-line
error on stderr, and how long the fault took to clear. The bounds are
generous: other suites run beside these on two cores.

The contract under test (README "How" and docs/reliability.md): a key is either complete and
verified or absent; a client that dies or stalls frees its slot after a
timeout and leaves no key and no temp file; a full disk, a busy node, a dead
node each give a clear one-line error and a non-zero exit, never a hang.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import xxhash

from s4d import limits, protocol
from tests.cluster import S4CTL, recv_frame

IDLE_S = 2.0     # --idle-timeout of the stall tests
MARGIN_S = 6.0   # slack on every time bound: loaded 2-core machine, other suites beside us
MiB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------------
def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def random_file(path: Path, size: int) -> str:
    """Write size random bytes to path; return their xxh3."""
    h = xxhash.xxh3_64()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, MiB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def digest_of(data: bytes) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def read_key(cluster, url: str, **kw) -> subprocess.CompletedProcess:
    return cluster.s4ctl("cp", url, "-", input=b"", check=False, **kw)


def one_line_error(proc) -> str:
    """The single stderr line of a failed s4ctl, as text."""
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    assert proc.returncode != 0, f"expected a failure, got exit 0 (stderr {err!r})"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert "Traceback" not in err
    return lines[0]


def put_temp_files(cluster, i: int) -> list[Path]:
    tmp = cluster.data_dirs[i] / "_tmp"
    return [p for p in tmp.iterdir() if p.name.startswith("put-")] if tmp.exists() else []


class SlowUpload:
    """`s4ctl cp - URL` fed through a pipe at the test's own pace: a big upload
    that stays in flight for as long as the test wants."""

    def __init__(self, cluster, url: str, env: dict | None = None):
        self.proc = subprocess.Popen([S4CTL, "cp", "-", url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**cluster.env, **(env or {})})
        self.hash = xxhash.xxh3_64()
        self.sent = 0
        self._stop = threading.Event()
        self._trickler: threading.Thread | None = None

    def feed(self, nbytes: int) -> bool:
        """Write nbytes more; False once the client is gone."""
        while nbytes:
            block = os.urandom(min(nbytes, MiB))
            try:
                self.proc.stdin.write(block)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return False
            self.hash.update(block)
            self.sent += len(block)
            nbytes -= len(block)
        return True

    def trickle(self, nbytes: int = 64 * 1024, every_s: float = 0.1) -> None:
        """Keep feeding in the background until finish(): a slow but live upload."""
        def run():
            while not self._stop.is_set() and self.feed(nbytes):
                self._stop.wait(every_s)
        self._trickler = threading.Thread(target=run, daemon=True)
        self._trickler.start()

    def stop_trickle(self) -> None:
        self._stop.set()
        if self._trickler:
            self._trickler.join()

    def finish(self, timeout: float = 60) -> subprocess.CompletedProcess:
        self.stop_trickle()
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.stdin = None  # closed (maybe broken): communicate() must not flush it
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        self.stop_trickle()
        self.proc.kill()
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass


def wait_temp_growing(cluster, i: int, at_least: int = 1, timeout: float = 20) -> Path:
    """Wait until a put temp file on node i holds at least `at_least` bytes."""
    def grown():
        for p in put_temp_files(cluster, i):
            try:
                if p.stat().st_size >= at_least:
                    return p
            except FileNotFoundError:
                pass
        return None
    return wait_until(grown, timeout, f"a put temp file of {at_least}+ bytes on node{i}")


def raw_put_then_silence(cluster, i: int, key: str, send_data: bytes = b"") -> socket.socket:
    """A raw peer: a put request, the node's go-ahead, optionally some bytes, then nothing."""
    sock = socket.create_connection(("127.0.0.1", cluster.ports[i]), timeout=30)
    sock.sendall(protocol.encode({"op": "put", "key": key}))
    reply = recv_frame(sock)
    assert reply == {"ok": True}, reply
    if send_data:
        sock.sendall(protocol.encode_chunk_header(len(send_data) + 10 * MiB) + send_data)
    return sock





def wait_closed_by_peer(sock: socket.socket, timeout: float) -> tuple[float, list[dict]]:
    """Read until the node closes the connection; (seconds it took, frames it sent)."""
    started = time.monotonic()
    sock.settimeout(timeout)
    frames = []
    try:
        while (frame := recv_frame(sock)) is not None:
            frames.append(frame)
    except ConnectionResetError:
        pass
    return time.monotonic() - started, frames


# --- crashes: clients ---------------------------------------------------------------------
def test_a_client_killed_mid_put_leaves_no_key_no_temp_file_and_frees_its_slot_at_once(make_cluster, tmp_path):
    # idle timeout 30 s: everything below clears in a few seconds, so the daemon saw
    # the connection drop; it did not wait for a timeout
    cluster = make_cluster(nodes=1, args=("--max-io-jobs", "1", "--idle-timeout", "30"))
    upload = SlowUpload(cluster, "s4://b/killed")
    assert upload.feed(3 * MiB)
    wait_temp_growing(cluster, 0, at_least=MiB)
    upload.kill()

    wait_until(lambda: not put_temp_files(cluster, 0), MARGIN_S, "the temp file of the dead put to go")
    assert read_key(cluster, "s4://b/killed").returncode == 1
    assert not cluster.key_path(0, "s4://b/killed").exists()

    src = tmp_path / "src"
    digest = random_file(src, 2 * MiB)
    started = time.monotonic()
    cluster.s4ctl("cp", str(src), "s4://b/killed", timeout=30)  # the only io slot is free again
    assert time.monotonic() - started < MARGIN_S
    assert digest_of(read_key(cluster, "s4://b/killed").stdout) == digest


def test_a_client_killed_mid_get_leaves_the_key_intact_and_frees_its_slot_at_once(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1, args=("--max-io-jobs", "1", "--idle-timeout", "30"))
    src = tmp_path / "big"
    digest = random_file(src, 64 * MiB)
    cluster.s4ctl("cp", str(src), "s4://b/big")

    reader = subprocess.Popen([S4CTL, "cp", "s4://b/big", "-"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=cluster.env)
    assert len(reader.stdout.read(MiB)) == MiB  # the get is under way, the rest sits in buffers
    reader.kill()
    reader.wait()
    reader.stdout.close()
    reader.stderr.close()

    started = time.monotonic()
    got = read_key(cluster, "s4://b/big", timeout=30)
    assert got.returncode == 0, got.stderr
    assert time.monotonic() - started < MARGIN_S
    assert digest_of(got.stdout) == digest
    assert not put_temp_files(cluster, 0)


# --- crashes: the daemon -------------------------------------------------------------------
def test_a_daemon_killed_mid_put_restarts_with_published_keys_intact_the_partial_key_absent_and_temps_swept(
        make_cluster, tmp_path):
    cluster = make_cluster(nodes=3)
    published = {}
    for name in ("000_a", "003_b", "006_empty", "009_c"):  # numeric prefixes: all on node 0
        src = tmp_path / name
        published[f"s4://b/in/{name}"] = random_file(src, 0 if "empty" in name else 3 * MiB + 17)
        cluster.s4ctl("cp", str(src), f"s4://b/in/{name}")
    on_other = tmp_path / "001_x"
    other_digest = random_file(on_other, MiB)
    cluster.s4ctl("cp", str(on_other), "s4://b/in/001_x")  # node 1: unaffected throughout

    upload = SlowUpload(cluster, "s4://b/in/012_partial")
    assert upload.feed(4 * MiB)
    temp = wait_temp_growing(cluster, 0, at_least=2 * MiB)
    cluster.kill(0)
    assert temp.exists(), "SIGKILL gives the daemon no chance to clean up: the temp file is left"
    upload.feed(MiB)
    failed = upload.finish(timeout=30)
    line = one_line_error(failed)
    assert cluster.address(0) in line, line

    cluster.start(0)
    assert not put_temp_files(cluster, 0), "temp files of the crashed daemon are swept at start"
    assert not temp.exists()
    for url, digest in published.items():
        got = read_key(cluster, url)
        assert got.returncode == 0, got.stderr
        assert digest_of(got.stdout) == digest, f"{url} changed across the crash"
    assert digest_of(read_key(cluster, "s4://b/in/001_x").stdout) == other_digest
    missing = read_key(cluster, "s4://b/in/012_partial")
    assert missing.returncode == 1 and "no such key" in one_line_error(missing)
    assert not cluster.key_path(0, "s4://b/in/012_partial").exists()
    listed = cluster.s4ctl("ls", "-r", "s4://b/in/").stdout
    assert "012_partial" not in listed
    assert sorted(l.split()[-1] for l in listed.splitlines()) == sorted(
        ["in/" + u.rsplit("/", 1)[1] for u in published] + ["in/001_x"])

    fresh = tmp_path / "012_partial"
    digest = random_file(fresh, 5 * MiB)
    cluster.s4ctl("cp", str(fresh), "s4://b/in/012_partial")
    assert digest_of(read_key(cluster, "s4://b/in/012_partial").stdout) == digest


# --- stalls --------------------------------------------------------------------------------
def test_a_stopped_uploader_is_cut_at_the_idle_timeout_and_the_only_io_slot_serves_the_next_put(
        make_cluster, tmp_path):
    cluster = make_cluster(nodes=1, args=("--max-io-jobs", "1", "--idle-timeout", f"{IDLE_S:g}"))
    upload = SlowUpload(cluster, "s4://b/stalled")
    assert upload.feed(3 * MiB)
    wait_temp_growing(cluster, 0, at_least=MiB)
    upload.proc.send_signal(signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        src = tmp_path / "next"
        digest = random_file(src, MiB)
        nxt = cluster.s4ctl("cp", str(src), "s4://b/next", check=False, timeout=60)
        took = time.monotonic() - stopped_at
        assert nxt.returncode == 0, nxt.stderr
        assert took < IDLE_S + limits.BUSY_WAIT_S + MARGIN_S, f"the next put took {took:.1f}s"
        assert not put_temp_files(cluster, 0), "the stalled put's temp file is gone once it is cut"
        assert not cluster.key_path(0, "s4://b/stalled").exists()
    finally:
        upload.proc.send_signal(signal.SIGCONT)
    upload.feed(MiB)
    line = one_line_error(upload.finish(timeout=30))  # its connection was cut while it slept
    assert cluster.address(0) in line or "no progress" in line, line
    assert read_key(cluster, "s4://b/stalled").returncode == 1
    assert digest_of(read_key(cluster, "s4://b/next").stdout) == digest


def test_a_stopped_downloader_is_cut_at_the_idle_timeout_and_the_only_io_slot_serves_the_next_get(
        make_cluster, tmp_path):
    cluster = make_cluster(nodes=1, args=("--max-io-jobs", "1", "--idle-timeout", f"{IDLE_S:g}"))
    src = tmp_path / "big"
    # far more than the socket buffers hold, and more than a loopback splice moves in
    # the moments between seeing the download start and stopping it (64 MiB was not)
    digest = random_file(src, 256 * MiB)
    cluster.s4ctl("cp", str(src), "s4://b/big")

    out = tmp_path / "out"
    reader = subprocess.Popen([S4CTL, "cp", "s4://b/big", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=cluster.env)
    try:
        wait_until(lambda: any(p.stat().st_size > MiB for p in tmp_path.glob(".out.s4tmp*")), 20,
                   "the download to be under way", interval=0.002)
        reader.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        got = read_key(cluster, "s4://b/big", timeout=60)
        took = time.monotonic() - stopped_at
        assert got.returncode == 0, got.stderr
        assert took < IDLE_S + limits.BUSY_WAIT_S + MARGIN_S, f"the next get took {took:.1f}s"
        assert digest_of(got.stdout) == digest
    finally:
        reader.send_signal(signal.SIGCONT)
    # woken up, it finds its connection cut: one line, and no partial file left behind
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 1 and cluster.address(0) in err.decode(), err
    assert not out.exists() and not list(tmp_path.glob(".out.s4tmp*"))


@pytest.mark.parametrize("sent", [b"", b"x" * 100_000], ids=["nothing", "a partial chunk"])
def test_a_peer_that_opens_a_put_and_goes_silent_is_cut_at_the_idle_timeout(make_cluster, tmp_path, sent):
    cluster = make_cluster(nodes=1, args=("--max-io-jobs", "1", "--idle-timeout", f"{IDLE_S:g}"))
    sock = raw_put_then_silence(cluster, 0, "b/silent", sent)
    with sock:
        opened = time.monotonic()
        assert put_temp_files(cluster, 0), "the put is in flight"
        src = tmp_path / "next"
        digest = random_file(src, MiB)
        nxt = cluster.s4ctl("cp", str(src), "s4://b/next", check=False, timeout=60)
        assert nxt.returncode == 0, nxt.stderr
        assert time.monotonic() - opened < IDLE_S + limits.BUSY_WAIT_S + MARGIN_S
        took, frames = wait_closed_by_peer(sock, timeout=IDLE_S + MARGIN_S)
        assert time.monotonic() - opened < IDLE_S + MARGIN_S
        assert [f.get("error") for f in frames] == ["timeout"], frames
    assert not put_temp_files(cluster, 0)
    assert read_key(cluster, "s4://b/silent").returncode == 1
    assert digest_of(read_key(cluster, "s4://b/next").stdout) == digest


@pytest.mark.parametrize("direction", ["put", "get"])
def test_a_node_that_stops_answering_mid_transfer_fails_the_client_at_its_idle_timeout_naming_the_node(
        make_cluster, tmp_path, direction):
    cluster = make_cluster(nodes=1)
    src = tmp_path / "big"
    random_file(src, 256 * MiB)
    if direction == "get":
        cluster.s4ctl("cp", str(src), "s4://b/big")
        args = [S4CTL, "cp", "s4://b/big", str(tmp_path / "out")]
    else:
        args = [S4CTL, "cp", str(src), "s4://b/big"]
    cluster.signal(0, signal.SIGSTOP)  # the node accepts (the kernel does) and then says nothing
    try:
        started = time.monotonic()
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60,
                              env={**cluster.env, "S4_IDLE_TIMEOUT_S": "2"})
        took = time.monotonic() - started
    finally:
        cluster.signal(0, signal.SIGCONT)
    line = one_line_error(proc)
    assert cluster.address(0) in line, line
    assert took < 2 + MARGIN_S, f"the client took {took:.1f}s to give up"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.s4tmp*"))
    if direction == "put":
        wait_until(lambda: not put_temp_files(cluster, 0), 40, "the node to drop the abandoned put")
        assert read_key(cluster, "s4://b/big").returncode == 1


# --- full disk -----------------------------------------------------------------------------
@pytest.fixture
def small_disk_cluster(make_cluster):
    """One node whose data dir is a 20 MiB tmpfs (root only; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the data dir needs root")
    cluster = make_cluster(nodes=1, start=False)
    data = cluster.data_dirs[0]
    data.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(data)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_a_full_disk_gives_a_one_line_no_space_error_naming_the_node_and_leaves_nothing(
        small_disk_cluster, tmp_path):
    cluster = small_disk_cluster
    small = tmp_path / "small"
    small_digest = random_file(small, 4 * MiB)
    cluster.s4ctl("cp", str(small), "s4://b/small")

    big = tmp_path / "big"
    random_file(big, 32 * MiB)
    failed = cluster.s4ctl("cp", str(big), "s4://b/big", check=False, timeout=60)
    line = one_line_error(failed)
    assert failed.returncode == 1
    assert f"no space left on {cluster.address(0)}" in line, line

    assert not cluster.key_path(0, "s4://b/big").exists()
    wait_until(lambda: not put_temp_files(cluster, 0), MARGIN_S, "the failed put's temp file to go")
    assert read_key(cluster, "s4://b/big").returncode == 1

    # from a pipe too: the size is not known up front
    piped = cluster.s4ctl("cp", "-", "s4://b/piped", input=os.urandom(24 * MiB), check=False, timeout=60)
    assert f"no space left on {cluster.address(0)}" in one_line_error(piped)
    wait_until(lambda: not put_temp_files(cluster, 0), MARGIN_S, "the failed put's temp file to go")
    assert not cluster.key_path(0, "s4://b/piped").exists()

    # a command whose output fills the disk: a failed map or eval, nothing half-made
    fill = "cat > x; cat x x x x x"  # 5 x 4 MiB out of a 4 MiB key: more than is left
    for args in (["map", "s4://b/", "s4://out/", fill], ["eval", "s4://b/small", fill]):
        failed = cluster.s4ctl(*args, check=False, timeout=60)
        line = one_line_error(failed)
        assert cluster.address(0) in line and "No space left" in line, line
        wait_until(lambda: not list((cluster.data_dirs[0] / "_tmp").iterdir()), MARGIN_S,
                   "the failed command's temp files to go")
    assert not (cluster.data_dirs[0] / "out").exists()

    got = read_key(cluster, "s4://b/small")
    assert got.returncode == 0 and digest_of(got.stdout) == small_digest
    smaller = tmp_path / "smaller"
    digest = random_file(smaller, 2 * MiB)
    cluster.s4ctl("cp", str(smaller), "s4://b/smaller")
    assert digest_of(read_key(cluster, "s4://b/smaller").stdout) == digest
    assert cluster.procs[0].poll() is None


# --- busy ----------------------------------------------------------------------------------
def test_clients_of_a_busy_node_retry_with_backoff_then_fail_with_a_busy_error_within_a_bound(
        make_cluster, tmp_path):
    cluster = make_cluster(nodes=1, args=("--max-io-jobs", "1", "--idle-timeout", "60"))
    src = tmp_path / "src"
    random_file(src, MiB)
    cluster.s4ctl("cp", str(src), "s4://b/stored")
    holder = raw_put_then_silence(cluster, 0, "b/held")  # takes the only io slot
    with holder:
        env = {**cluster.env, "S4_BUSY_TIMEOUT_S": "3"}
        started = time.monotonic()
        procs = [subprocess.Popen([S4CTL, "cp", str(src), f"s4://b/k{i}"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env) for i in range(3)]
        procs.append(subprocess.Popen([S4CTL, "cp", "s4://b/stored", "-"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env))
        bound = 3 + limits.BUSY_WAIT_S + limits.BACKOFF_MAX_S + MARGIN_S
        for p in procs:
            out, err = p.communicate(timeout=bound + 30)  # a hang fails here, not forever
            line = one_line_error(subprocess.CompletedProcess(p.args, p.returncode, out, err))
            assert p.returncode == 1
            assert "busy" in line and cluster.address(0) in line, line
        assert time.monotonic() - started < bound
    log = cluster.logs[0].read_text()
    assert log.count(" busy ") >= 2 * len(procs) - 1, "each client asked more than once"
    assert not any(cluster.key_path(0, f"s4://b/k{i}").exists() for i in range(3))


def test_a_client_of_a_busy_node_gets_through_once_a_slot_frees(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1, args=("--max-io-jobs", "1", "--idle-timeout", "60"))
    holder = raw_put_then_silence(cluster, 0, "b/held")
    src = tmp_path / "src"
    digest = random_file(src, MiB)
    waiting = subprocess.Popen([S4CTL, "cp", str(src), "s4://b/waited"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**cluster.env, "S4_BUSY_TIMEOUT_S": "30"})
    time.sleep(limits.BUSY_WAIT_S + 1)  # it has been told "busy" at least once by now
    assert waiting.poll() is None, "still retrying"
    holder.close()
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert digest_of(read_key(cluster, "s4://b/waited").stdout) == digest
    assert " busy " in cluster.logs[0].read_text()


# --- graceful stop ---------------------------------------------------------------------------
def test_sigterm_during_a_slow_upload_aborts_it_within_the_grace_period_and_exits_0_leaving_nothing(make_cluster):
    cluster = make_cluster(nodes=1)
    upload = SlowUpload(cluster, "s4://b/slow")
    assert upload.feed(2 * MiB)
    wait_temp_growing(cluster, 0, at_least=MiB)
    upload.trickle()  # keeps going for longer than the grace period
    proc = cluster.procs[0]
    cluster.signal(0, signal.SIGTERM)
    started = time.monotonic()
    code = proc.wait(timeout=limits.STOP_GRACE_S + MARGIN_S + 30)
    took = time.monotonic() - started
    assert code == 0, cluster.logs[0].read_text()[-2000:]
    assert took < limits.STOP_GRACE_S + MARGIN_S, f"stopping took {took:.1f}s"
    cluster.procs[0] = None
    one_line_error(upload.finish(timeout=30))
    assert not put_temp_files(cluster, 0), "an aborted upload leaves no temp file"
    assert not cluster.key_path(0, "s4://b/slow").exists()
    assert not any(cluster.data_dirs[0].glob("b/**/*"))


def test_sigterm_lets_an_upload_that_ends_within_the_grace_period_finish_and_refuses_new_work(
        make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    upload = SlowUpload(cluster, "s4://b/short")
    assert upload.feed(2 * MiB)
    wait_temp_growing(cluster, 0, at_least=MiB)
    proc = cluster.procs[0]
    cluster.signal(0, signal.SIGTERM)
    time.sleep(0.5)
    src = tmp_path / "late"
    random_file(src, 1000)
    late = cluster.s4ctl("cp", str(src), "s4://b/late", check=False, timeout=30)
    assert late.returncode == 1 and cluster.address(0) in one_line_error(late)
    upload.feed(MiB)
    done = upload.finish(timeout=30)
    assert done.returncode == 0, done.stderr
    assert proc.wait(timeout=limits.STOP_GRACE_S + MARGIN_S) == 0
    cluster.procs[0] = None
    assert not put_temp_files(cluster, 0)
    stored = cluster.key_path(0, "s4://b/short")
    assert digest_of(stored.read_bytes()) == upload.hash.hexdigest()
    assert not cluster.key_path(0, "s4://b/late").exists()
    cluster.start(0)
    assert digest_of(read_key(cluster, "s4://b/short").stdout) == upload.hash.hexdigest()


def test_sigterm_during_a_long_map_kills_its_commands_and_exits_0_within_the_grace_period(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    _put_inputs(cluster, tmp_path, n=3)
    mapping = subprocess.Popen([S4CTL, "map", "s4://b/in/", "s4://b/out/", "sleep 60; cat"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    wait_until(lambda: any((cluster.data_dirs[0] / "_tmp").glob("cmd-*")), 20, "the map's commands to start")
    daemon = psutil.Process(cluster.pid(0))
    commands = wait_until(lambda: [c for c in daemon.children(recursive=True) if "sleep" in c.name()],
                          10, "the commands' sleeps")
    proc = cluster.procs[0]
    cluster.signal(0, signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(timeout=limits.STOP_GRACE_S + MARGIN_S + 30) == 0
    assert time.monotonic() - started < limits.STOP_GRACE_S + MARGIN_S
    cluster.procs[0] = None
    _, err = mapping.communicate(timeout=30)
    assert mapping.returncode == 1 and cluster.address(0) in err.decode()
    gone, alive = psutil.wait_procs(commands, timeout=5)
    assert not alive, f"commands outlived the daemon: {alive}"
    assert not list((cluster.data_dirs[0] / "_tmp").iterdir())
    assert not (cluster.data_dirs[0] / "b" / "out").exists()


# --- map faults ------------------------------------------------------------------------------
def _put_inputs(cluster, tmp_path, n: int = 6) -> None:
    src = tmp_path / "inputs"
    src.mkdir()
    for i in range(n):
        (src / f"{i:03d}").write_bytes(os.urandom(1000 + i))
    cluster.s4ctl("cp", "-r", str(src), "s4://b/in")


def test_a_node_killed_during_a_map_fails_the_map_naming_that_node_without_hanging(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3)
    _put_inputs(cluster, tmp_path)
    started = time.monotonic()
    mapping = subprocess.Popen([S4CTL, "map", "s4://b/in/", "s4://b/out/", "sleep 3; cat"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    wait_until(lambda: any((cluster.data_dirs[1] / "_tmp").glob("cmd-*")), 20,
               "the map's commands to start on node1")
    cluster.kill(1)
    out, err = mapping.communicate(timeout=60)
    took = time.monotonic() - started
    line = one_line_error(subprocess.CompletedProcess(mapping.args, mapping.returncode, out, err))
    assert mapping.returncode == 1
    assert cluster.address(1) in line, line
    assert took < 3 + MARGIN_S + 10, f"the map took {took:.1f}s to fail"
    for i in (0, 2):  # the surviving nodes stopped their share and cleaned up
        wait_until(lambda: not list((cluster.data_dirs[i] / "_tmp").iterdir()), MARGIN_S + 5,
                   f"node{i}'s map temp dirs to go")
        assert cluster.procs[i].poll() is None


def test_a_node_that_stops_answering_during_a_map_fails_the_map_at_the_client_idle_timeout(
        make_cluster, tmp_path):
    cluster = make_cluster(nodes=3)
    _put_inputs(cluster, tmp_path)
    mapping = subprocess.Popen([S4CTL, "map", "s4://b/in/", "s4://b/out/", "sleep 3; cat"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**cluster.env, "S4_IDLE_TIMEOUT_S": "3"})
    wait_until(lambda: any((cluster.data_dirs[2] / "_tmp").glob("cmd-*")), 20,
               "the map's commands to start on node2")
    cluster.signal(2, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        out, err = mapping.communicate(timeout=60)
        took = time.monotonic() - stopped_at
    finally:
        cluster.signal(2, signal.SIGCONT)
    line = one_line_error(subprocess.CompletedProcess(mapping.args, mapping.returncode, out, err))
    assert cluster.address(2) in line, line
    assert took < 3 + MARGIN_S + 5, f"the map took {took:.1f}s to fail"
    # node2 wakes up, finds its client gone and cancels its share
    wait_until(lambda: not list((cluster.data_dirs[2] / "_tmp").iterdir()), 20,
               "node2's map temp dirs to go")
    assert cluster.procs[2].poll() is None


def test_a_map_over_a_cluster_with_a_dead_node_fails_at_once_naming_it(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3)
    _put_inputs(cluster, tmp_path)
    cluster.kill(0)
    started = time.monotonic()
    failed = cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", "cat", check=False, timeout=60)
    line = one_line_error(failed)
    assert cluster.address(0) in line, line
    assert time.monotonic() - started < limits.CONNECT_TIMEOUT_S + MARGIN_S


def test_a_conf_entry_that_is_not_an_s4_node_is_a_one_line_error(tmp_path):
    """An HTTP server on a listed port: its answer ("HTTP" read as a length) is named as such."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    conf = tmp_path / "s4.conf"
    port = server.getsockname()[1]
    conf.write_text(f"127.0.0.1:{port}\n")
    proc = subprocess.run([S4CTL, "-c", str(conf), "cp", "s4://b/k", "-"], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=30)
    server.close()
    line = one_line_error(proc)
    assert f"127.0.0.1:{port} does not answer as an s4 node" in line, line

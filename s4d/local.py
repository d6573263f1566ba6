"""A cluster of `s4d` processes on 127.0.0.1: `s4d local`, and the one
implementation the tests (tests/cluster.py) and benchmarks (bench/common.py)
start their clusters with.

`LocalCluster` writes ROOT/s4.conf, starts one daemon process per node (data
in ROOT/node<i>, log in ROOT/node<i>.log), waits until each listens, and
stops, kills or restarts any of them. It owns ports, processes and log
files; it knows nothing of s4ctl. No trio: it runs in plain processes.

`s4d local` (`run_local`) runs one in the foreground: it prints how to point
s4ctl at it and stops every daemon on Ctrl-C or SIGTERM. A daemon that dies
on its own is reported (which node, its exit code, its log) and the others
keep serving; `s4d local` then exits 1 when stopped, or at once when no node
is left. A second `s4d local` on the same DIR exits at once, naming the pid
of the first, before it touches DIR's conf.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s4d import dirlock, limits

_given: list[str] = []  # "port time" lines this process handed out (if the file cannot be kept)


def free_port() -> int:
    """A port nothing listens on and that no process on this machine was handed by
    this function in the last LOCAL_PORT_MEMORY_S. The kernel can hand the same
    free port to two processes before either daemon binds it (parallel test
    workers did: a client then reached the other cluster's daemon), so the ports
    given out are kept in a small file in the temp dir, under an flock."""
    import fcntl
    path = os.path.join(tempfile.gettempdir(), "s4-ports-given")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:  # another user's file: remember this process's ports only
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        now = time.time()
        given = {}
        for line in [*os.pread(fd, 1 << 20, 0).decode(errors="replace").splitlines(), *_given]:
            port, _, when = line.partition(" ")
            if port.isdigit() and _recent(when, now):
                given[int(port)] = when
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in given:
                break
        given[port] = f"{now:.0f}"
        _given.append(f"{port} {now:.0f}")
        text = "".join(f"{p} {w}\n" for p, w in given.items()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        return port
    finally:
        os.close(fd)


def _recent(when: str, now: float) -> bool:
    try:
        return now - float(when) < limits.LOCAL_PORT_MEMORY_S
    except ValueError:
        return False


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = limits.LOCAL_START_TIMEOUT_S,
              proc: subprocess.Popen | None = None) -> None:
    """Return once something accepts on host:port; TimeoutError after timeout,
    or at once if proc (the daemon that should listen there) exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise TimeoutError(f"the daemon for {host}:{port} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:g}s") from None
            time.sleep(0.02)


class LocalCluster:
    """N daemons on 127.0.0.1, their conf, data dirs and logs under root."""

    def __init__(self, root: str | Path, nodes: int = 3, args: tuple[str, ...] = (),
                 ports: list[int] | None = None, command: list[str] | None = None,
                 env: dict | None = None):
        """args: extra s4d flags for every node; command: how to run s4d (default:
        this interpreter's `-m s4d`); env: the daemons' environment."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.ports = ports or [free_port() for _ in range(nodes)]
        self.conf = self.root / "s4.conf"
        self.conf.write_text("".join(f"127.0.0.1:{p}\n" for p in self.ports))
        self.data_dirs = [self.root / f"node{i}" for i in range(len(self.ports))]
        self.logs = [self.root / f"node{i}.log" for i in range(len(self.ports))]
        self.procs: list[subprocess.Popen | None] = [None] * len(self.ports)
        self.command = command or [sys.executable, "-m", "s4d"]
        self.daemon_env = env

    def _which(self, i: int | None) -> list[int]:
        return [i] if i is not None else list(range(len(self.ports)))

    def start(self, i: int | None = None, args: tuple[str, ...] = (),
              timeout: float = limits.LOCAL_START_TIMEOUT_S) -> None:
        """Start node i (default: all) and wait until it listens; RuntimeError with
        its log if it does not."""
        for j in self._which(i):
            cmd = [*self.command, "--conf", str(self.conf), "--port", str(self.ports[j]),
                   "--data-dir", str(self.data_dirs[j]), *self.args, *args]
            with open(self.logs[j], "ab") as log:  # the daemon has its own copy of the fd
                self.procs[j] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=self.daemon_env)
        for j in self._which(i):
            try:
                wait_port(self.ports[j], timeout=timeout, proc=self.procs[j])
            except TimeoutError as e:
                raise RuntimeError(f"s4d node{j} did not start ({e}):\n{self.logs[j].read_text()}") from None

    def stop(self, i: int | None = None, timeout: float = limits.LOCAL_STOP_TIMEOUT_S) -> list[int]:
        """SIGTERM node i (default: all), wait, SIGKILL what outlives timeout; exit codes."""
        for j in self._which(i):
            proc = self.procs[j]
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for j in self._which(i):
            proc = self.procs[j]
            if proc is None:
                continue
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
            self.procs[j] = None
        return codes

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        proc.kill()
        proc.wait()
        self.procs[i] = None

    def signal(self, i: int, sig: int) -> None:
        self.procs[i].send_signal(sig)

    def pid(self, i: int) -> int:
        return self.procs[i].pid

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def exited(self) -> list[tuple[int, int]]:
        """(node, exit code) of every node started and now dead, forgotten once reported."""
        dead = []
        for j, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                dead.append((j, proc.returncode))
                self.procs[j] = None
        return dead


def _lock_dir(root: str) -> int | None:
    """Lock DIR for this `s4d local`'s life; None (and one line) if another holds it."""
    try:
        return dirlock.lock(root)
    except dirlock.Held as e:
        print(f"s4d local: {root} is in use by another s4d local (pid {e.pid or 'unknown'})",
              file=sys.stderr)
        return None


def run_local(nodes: int, root: str | None, port: int | None, log_level: str) -> int:
    root = os.path.abspath(root or tempfile.mkdtemp(prefix="s4-local-"))
    os.makedirs(root, exist_ok=True)
    if _lock_dir(root) is None:
        return 1
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    ports = [port + i for i in range(nodes)] if port else None
    cluster = LocalCluster(root, nodes, ("--log-level", log_level), ports=ports)
    died = 0
    try:
        try:
            cluster.start()
        except RuntimeError as e:
            print(f"s4d local: {str(e).splitlines()[0]}; see the logs in {root}", file=sys.stderr)
            return 1
        print(f"s4d local: {nodes} nodes on 127.0.0.1 ports {', '.join(map(str, cluster.ports))}; "
              f"data and logs in {root}", file=sys.stderr)
        print(f"export S4_CONF_PATH={cluster.conf}", flush=True)
        while not stop:
            for i, code in cluster.exited():
                died += 1
                print(f"s4d local: node{i} ({cluster.address(i)}) exited with {code}; see "
                      f"{cluster.logs[i]}; " + ("the other nodes keep serving (its keys are "
                                                "unavailable until s4d local is restarted)"
                                                if died < nodes else "no node is left"),
                      file=sys.stderr, flush=True)
            if died == nodes:
                break
            time.sleep(limits.LOCAL_POLL_S)
        return 1 if died else 0
    finally:
        cluster.stop()

"""A real s4 cluster for black-box tests: N `s4d` processes on loopback.

Each node is the installed `s4d` in its own process with its own data dir;
`Cluster.s4ctl(...)` runs the installed `s4ctl` against the cluster's conf.
Nothing here is mocked: tests kill, stop and restart real daemons.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 30.0  # generous: CI and parallel test runs load this 2-core machine
BIN = Path(sys.executable).parent
S4D = str(BIN / "s4d")
S4CTL = str(BIN / "s4ctl")


_given: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this process handed out before (the
    kernel can give the same free port twice before anyone binds it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
            time.sleep(0.02)


def recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    """n bytes from a raw socket, or None if the peer closes first."""
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            return None
        buf += data
    return buf


def recv_frame(sock: socket.socket) -> dict | None:
    """One s4 frame from a raw socket (tests that speak the wire by hand), or None at EOF."""
    from s4d import protocol
    header = recv_exactly(sock, protocol.FRAME_HEADER_BYTES)
    if header is None:
        return None
    return protocol.decode_frame_body(recv_exactly(sock, protocol.decode_frame_header(header)) or b"")


def assert_one_line_error(proc, *needles: str) -> None:
    """A failed s4ctl: exit 1, one stderr line holding every needle, no traceback."""
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


class Cluster:
    def __init__(self, root: Path, nodes: int = 3, args: tuple[str, ...] = ()):
        self.root = Path(root)
        self.args = list(args)
        self.ports = [free_port() for _ in range(nodes)]
        self.conf = self.root / "s4.conf"
        self.conf.write_text("".join(f"127.0.0.1:{p}\n" for p in self.ports))
        self.data_dirs = [self.root / f"node{i}" for i in range(nodes)]
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self.logs = [self.root / f"node{i}.log" for i in range(nodes)]
        self.env = {**os.environ, "S4_CONF_PATH": str(self.conf)}

    # --- daemons ------------------------------------------------------------
    def start(self, i: int | None = None, args: tuple[str, ...] = ()) -> None:
        for j in ([i] if i is not None else range(len(self.ports))):
            cmd = [S4D, "--conf", str(self.conf), "--port", str(self.ports[j]),
                   "--data-dir", str(self.data_dirs[j]), *self.args, *args]
            self.procs[j] = subprocess.Popen(cmd, stdout=open(self.logs[j], "ab"),
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for j in ([i] if i is not None else range(len(self.ports))):
            try:
                wait_port(self.ports[j], timeout=START_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(f"s4d node{j} did not start:\n{self.logs[j].read_text()}")

    def signal(self, i: int, sig: int) -> None:
        self.procs[i].send_signal(sig)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        proc.kill()
        proc.wait()
        self.procs[i] = None

    def stop(self, i: int | None = None, timeout: float = 10.0) -> list[int]:
        codes = []
        for j in ([i] if i is not None else range(len(self.procs))):
            proc = self.procs[j]
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
            self.procs[j] = None
        return codes

    def pid(self, i: int) -> int:
        return self.procs[i].pid

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    # --- client -------------------------------------------------------------
    def s4ctl(self, *args: str, input: bytes | str | None = None, check: bool = True,
              timeout: float = 120, cwd: str | Path | None = None, env: dict | None = None):
        """Run the installed s4ctl; stdout/stderr as text unless input is bytes."""
        text = not isinstance(input, bytes)
        proc = subprocess.run([S4CTL, *args], input=input, capture_output=True, text=text,
                              timeout=timeout, cwd=cwd, env={**self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"s4ctl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def sh(self, script: str, check: bool = True, timeout: float = 120, cwd=None):
        """Run a bash script with s4ctl on PATH and the conf in the environment."""
        env = {**self.env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                              text=True, timeout=timeout, cwd=cwd or self.root, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"script exited {proc.returncode}:\n{script}\n{proc.stderr}")
        return proc

    # --- inspection ----------------------------------------------------------
    def files(self, i: int | None = None) -> list[Path]:
        """Every regular file under the data dirs (keys and anything else)."""
        out = []
        for j in ([i] if i is not None else range(len(self.data_dirs))):
            if self.data_dirs[j].exists():
                out += [p for p in self.data_dirs[j].rglob("*") if p.is_file()]
        return out

    def temp_files(self) -> list[Path]:
        return [p for d in self.data_dirs if (d / "_tmp").exists() for p in (d / "_tmp").iterdir()]

    def key_path(self, i: int, key: str) -> Path:
        assert key.startswith("s4://")
        return self.data_dirs[i] / key[len("s4://"):]

    def node_of(self, key: str) -> int:
        for i in range(len(self.data_dirs)):
            if self.key_path(i, key).exists():
                return i
        raise AssertionError(f"{key} is on no node")

    def command_processes(self) -> list:
        """Live processes whose cwd is under the cluster's root: map and eval
        commands (they run in temp dirs inside the data dirs; daemons and s4ctl
        run from elsewhere)."""
        import psutil
        root = os.path.realpath(self.root)
        found = []
        for p in psutil.process_iter(["cwd", "status"]):
            cwd = p.info.get("cwd")
            if p.info.get("status") != psutil.STATUS_ZOMBIE and cwd and (
                    cwd == root or cwd.startswith(root + "/")):
                found.append(p)
        return found

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

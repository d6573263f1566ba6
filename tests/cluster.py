"""A real s4 cluster for black-box tests: N `s4d` processes on loopback.

The daemons are started by s4d.local's LocalCluster (the one implementation
`s4d local` and bench/ use too), each node the installed `s4d` in its own
process with its own data dir; `Cluster.s4ctl(...)` runs the installed
`s4ctl` against the cluster's conf.
Nothing here is mocked: tests kill, stop and restart real daemons.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from s4d import limits
from s4d.local import LocalCluster, free_port, wait_port  # noqa: F401 (tests import them from here)

START_TIMEOUT_S = limits.LOCAL_START_TIMEOUT_S
BIN = Path(sys.executable).parent
S4D = str(BIN / "s4d")
S4CTL = str(BIN / "s4ctl")


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


class Cluster(LocalCluster):
    """s4d's own local cluster (s4d.local), run as the installed `s4d`, plus the
    client side and the inspection the tests need."""

    def __init__(self, root: Path, nodes: int = 3, args: tuple[str, ...] = ()):
        super().__init__(root, nodes, args, command=[S4D])
        self.env = {**os.environ, "S4_CONF_PATH": str(self.conf)}

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

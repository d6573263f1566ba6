"""`s4d local`: a whole cluster of daemons on 127.0.0.1, in one command.

For trying s4, for the examples and for benchmarks. Writes DIR/s4.conf,
starts one `s4d` process per node (data in DIR/node<i>, log in
DIR/node<i>.log), prints how to point s4ctl at it, and stops every daemon
on Ctrl-C or SIGTERM. Exits 1 if a daemon dies on its own.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def run_local(nodes: int, root: str | None, port: int | None, log_level: str) -> int:
    root = os.path.abspath(root or tempfile.mkdtemp(prefix="s4-local-"))
    os.makedirs(root, exist_ok=True)
    ports = [port + i for i in range(nodes)] if port else [_free_port() for _ in range(nodes)]
    conf = os.path.join(root, "s4.conf")
    with open(conf, "w") as f:
        f.writelines(f"127.0.0.1:{p}\n" for p in ports)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    procs = []
    try:
        for i, p in enumerate(ports):
            log = open(os.path.join(root, f"node{i}.log"), "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "s4d", "--conf", conf, "--port", str(p),
                 "--data-dir", os.path.join(root, f"node{i}"), "--log-level", log_level],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        for i, (p, proc) in enumerate(zip(ports, procs)):
            if not _wait_listening(p, proc):
                print(f"s4d local: node{i} did not start; see {root}/node{i}.log", file=sys.stderr)
                return 1
        print(f"s4d local: {nodes} nodes on 127.0.0.1 ports {', '.join(map(str, ports))}; "
              f"data and logs in {root}", file=sys.stderr)
        print(f"export S4_CONF_PATH={conf}", flush=True)
        while not stop:
            for i, proc in enumerate(procs):
                if proc.poll() is not None:
                    print(f"s4d local: node{i} exited with {proc.returncode}; "
                          f"see {root}/node{i}.log", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

"""Three hosts on one machine: network namespaces, veth pairs and a bridge.

Each "host" is a network namespace with one veth leg on a private bridge and
the address 10.44.0.1, .2 or .3. Every host runs the installed `s4d` on the
same port 8080 with the same conf listing the three addresses, so each daemon
must find itself by its address, as on a real deployment. The client is a
fourth namespace that owns the bridge (10.44.0.254): it is outside the three
hosts, and nothing of the test touches the root namespace's links, addresses or
routes, so no packet can leave the machine and parallel runs (each with its own
namespace names) cannot clash even though they use the same addresses.

The client drives bucket -> map -> map-to-n -> map-from-n with the installed
`s4ctl`, compares the results with the same computation done here, and checks
that every key sits in the data dir of the host its name places it on.

Skipped, with the reason, when not root or when namespaces, veth or bridges
cannot be made here. Everything made is removed in the fixture's finally, also
when setup or the test fails.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import S4CTL, S4D

REPO = Path(__file__).resolve().parents[1]
PORT = 8080
HOSTS = 3
SUBNET = "10.44.0"
CLIENT_ADDRESS = f"{SUBNET}.254"
IFNAME_MAX = 15  # IFNAMSIZ - 1: the kernel refuses longer interface names
START_TIMEOUT_S = 10.0


def _run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


class NetnsCluster:
    """Namespaces, links and daemons of one test run; `close` undoes all of it."""

    def __init__(self, root: Path):
        token = os.urandom(3).hex()  # unique per run: names never clash across parallel runs
        self.root = root
        self.client_ns = f"s4t-{token}-client"
        self.host_ns = [f"s4t-{token}-h{i}" for i in range(HOSTS)]
        self.bridge = f"s4{token}br"
        self.host_if = [f"s4{token}h{i}" for i in range(HOSTS)]
        self.bridge_port = [f"s4{token}p{i}" for i in range(HOSTS)]
        for name in [self.bridge, *self.host_if, *self.bridge_port]:
            assert len(name) <= IFNAME_MAX, f"interface name {name!r} is over {IFNAME_MAX} chars"
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(HOSTS)]
        self.conf = root / "s4.conf"
        self.data_dirs = [root / f"host{i}" for i in range(HOSTS)]
        self.logs = [root / f"host{i}.log" for i in range(HOSTS)]
        self.procs: list[subprocess.Popen] = []
        self.made_ns: list[str] = []
        self.env = {**os.environ, "S4_CONF_PATH": str(self.conf)}

    # --- network ----------------------------------------------------------------
    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.made_ns.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def build_network(self) -> None:
        """Client namespace with the bridge; one namespace per host, a veth leg on the bridge.

        Skips the test if this machine cannot make a namespace or a bridge at all
        (no CAP_SYS_ADMIN in a container, a kernel without the bridge module);
        any later failure is an error.
        """
        c = self.client_ns
        try:
            self._add_ns(c)
            _run("ip", "-n", c, "link", "add", self.bridge, "type", "bridge")
        except RuntimeError as e:
            pytest.skip(f"cannot make a network namespace with a bridge here: {e}")
        _run("ip", "-n", c, "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", self.bridge)
        _run("ip", "-n", c, "link", "set", self.bridge, "up")
        for ns, host_if, port, address in zip(self.host_ns, self.host_if, self.bridge_port,
                                              self.addresses):
            self._add_ns(ns)
            # Both ends are born inside namespaces: the root namespace never sees them.
            _run("ip", "link", "add", host_if, "netns", ns, "type", "veth",
                 "peer", "name", port, "netns", c)
            _run("ip", "-n", c, "link", "set", port, "master", self.bridge)
            _run("ip", "-n", c, "link", "set", port, "up")
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", host_if)
            _run("ip", "-n", ns, "link", "set", host_if, "up")

    # --- daemons ----------------------------------------------------------------
    def start(self) -> None:
        self.conf.write_text("".join(f"{a}:{PORT}\n" for a in self.addresses))
        for ns, data_dir, log in zip(self.host_ns, self.data_dirs, self.logs):
            cmd = ["ip", "netns", "exec", ns, S4D, "--conf", str(self.conf), "--port", str(PORT),
                   "--data-dir", str(data_dir)]
            with open(log, "ab") as out:  # `ip netns exec` execs s4d: the pid is the daemon's
                self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, cwd=self.root))
        # Wait from the client's side, over the bridge, with the loopback tests' helper,
        # and give up as soon as a daemon exits (e.g. it found no line of its own).
        wait = ("import sys; from tests.cluster import wait_port; "
                f"[wait_port({PORT}, host, {START_TIMEOUT_S}) for host in sys.argv[1:]]")
        waiter = subprocess.Popen(["ip", "netns", "exec", self.client_ns, sys.executable, "-c",
                                   wait, *self.addresses], cwd=REPO, stderr=subprocess.PIPE,
                                  text=True)
        while waiter.poll() is None and all(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        if waiter.poll() is None:
            waiter.kill()
        if waiter.wait() != 0:
            raise AssertionError(f"the daemons did not all listen: {waiter.stderr.read().strip()}"
                                 f"\n{self.daemon_logs()}")

    def daemon_logs(self) -> str:
        return "\n".join(f"--- host{i} ({self.addresses[i]}) log:\n"
                         f"{log.read_text() if log.exists() else '(none)'}"
                         for i, log in enumerate(self.logs))

    # --- client -----------------------------------------------------------------
    def s4ctl(self, *args: str, check: bool = True,
              timeout: float = 120) -> subprocess.CompletedProcess:
        """The installed s4ctl, run in the client namespace against the three hosts."""
        proc = subprocess.run(["ip", "netns", "exec", self.client_ns, S4CTL, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env,
                              cwd=self.root)
        if check and proc.returncode != 0:
            raise AssertionError(f"s4ctl {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stderr}\n{self.daemon_logs()}")
        return proc

    def holders(self, key: str) -> list[int]:
        """The hosts whose data dir holds `key` as a file."""
        assert key.startswith("s4://")
        return [i for i, d in enumerate(self.data_dirs) if (d / key[len("s4://"):]).is_file()]

    def key_file(self, host: int, key: str) -> Path:
        return self.data_dirs[host] / key[len("s4://"):]

    # --- teardown ---------------------------------------------------------------
    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.made_ns):
            # Anything still inside was started by our daemons (their commands):
            # it would keep the namespace alive after `ip netns del`.
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            # Deleting a namespace destroys the links in it, bridge and veths included.
            _run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def hosts(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to make network namespaces, veth pairs and a bridge")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed")
    if _run("ip", "netns", "list", check=False).returncode != 0:
        pytest.skip("`ip netns` is not available here")
    cluster = NetnsCluster(tmp_path)
    try:
        cluster.build_network()
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def _placement(name: str) -> int:
    """The design's rule for a basename with a numeric prefix, computed independently."""
    digits = name[:len(name) - len(name.lstrip("0123456789"))]
    assert digits, name
    return int(digits) % HOSTS


SHUFFLE_BUCKETS = 5  # more buckets than hosts: placement wraps around (003 -> host 0)
MAP_TO_N_CMD = f"""
cat > input
for b in $(seq 0 {SHUFFLE_BUCKETS - 1}); do
    name=$(printf '%03d_part' "$b")
    awk -v b="$b" '$1 % {SHUFFLE_BUCKETS} == b' input > "$name"
    echo "$name"
done
"""


def test_three_hosts_run_the_whole_pipeline_and_keep_each_key_on_its_host(hosts):
    bucket = "s4://pipeline"
    rng = random.Random(44)
    inputs: dict[str, list[int]] = {}
    for i in range(7):  # 000..006: two or three inputs per host
        # every residue mod SHUFFLE_BUCKETS appears, so every shuffle file is non-empty
        inputs[f"{i:03d}_nums"] = list(range(SHUFFLE_BUCKETS)) + [rng.randrange(10_000)
                                                                  for _ in range(300)]

    # bucket: put every input from the client
    local = hosts.root / "inputs"
    local.mkdir()
    for name, values in inputs.items():
        (local / name).write_text("".join(f"{v}\n" for v in values))
        hosts.s4ctl("cp", str(local / name), f"{bucket}/in/{name}")

    # 1:1 map: outputs stay on their input's host
    hosts.s4ctl("map", f"{bucket}/in/", f"{bucket}/tripled/", "awk '{print $1 * 3}'")
    tripled = {name: [v * 3 for v in values] for name, values in inputs.items()}

    # 1:n: each input becomes OUTDIR/<input name>/<bucket file>, sent to the file's host
    hosts.s4ctl("map-to-n", f"{bucket}/tripled/", f"{bucket}/shuffled/", MAP_TO_N_CMD)
    parts = [f"{b:03d}_part" for b in range(SHUFFLE_BUCKETS)]
    shuffled = {f"{name}/{part}": [v for v in values if v % SHUFFLE_BUCKETS == b]
                for name, values in tripled.items() for b, part in enumerate(parts)}

    # n:1: every host merges the parts it was sent, named by their shared prefix
    hosts.s4ctl("map-from-n", f"{bucket}/shuffled/", f"{bucket}/merged/", "xargs cat | sort -n")
    merged = {part: sorted(v for values in tripled.values() for v in values
                           if v % SHUFFLE_BUCKETS == b) for b, part in enumerate(parts)}

    expected = {**{f"in/{n}": v for n, v in inputs.items()},
                **{f"tripled/{n}": v for n, v in tripled.items()},
                **{f"shuffled/{n}": v for n, v in shuffled.items()},
                **{f"merged/{n}": v for n, v in merged.items()}}

    # the cluster lists exactly these keys, from all three hosts
    listing = hosts.s4ctl("ls", "-r", f"{bucket}/").stdout.splitlines()
    assert sorted(line.split()[-1] for line in listing) == sorted(expected)

    for path, values in expected.items():
        key = f"{bucket}/{path}"
        content = "".join(f"{v}\n" for v in values)
        host = _placement(path.rsplit("/", 1)[-1])
        assert hosts.holders(key) == [host], f"{key} should be on host{host} only"
        assert hosts.key_file(host, key).read_text() == content, f"{key} on disk"

    # and the client reads the results back over the network
    for part, values in merged.items():
        got = hosts.s4ctl("cp", f"{bucket}/merged/{part}", "-").stdout
        assert got == "".join(f"{v}\n" for v in values), part

    health = hosts.s4ctl("health")
    for address in hosts.addresses:
        assert f"{address}:{PORT}" in health.stdout, health.stdout


S3_PORT = 5000
SEED_S3 = """
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
s3.create_bucket(Bucket="src")
for name in sys.argv[2:]:
    s3.put_object(Bucket="src", Key="in/" + name, Body=(name + "\\n").encode() * 1000)
"""


def test_each_host_moves_its_own_keys_straight_to_and_from_s3(aws_env, hosts):
    """A local S3 API server (moto_server) on the bridge, in the client's namespace:
    its access log shows by source address that every object's GETs (import) and
    PUTs (export) came from the host that owns the key, none from the client."""
    from tests.s3server import S3Server
    server = S3Server(hosts.root / "moto.log", host=CLIENT_ADDRESS, port=S3_PORT,
                      prefix=("ip", "netns", "exec", hosts.client_ns))
    try:
        deadline = time.monotonic() + 30
        while "Running on" not in _log_text(server):
            assert server.proc.poll() is None and time.monotonic() < deadline, _log_text(server)
            time.sleep(0.05)
        names = [f"{i:03d}_obj" for i in range(7)] + ["alpha.csv", "beta.csv", "gamma.csv"]
        _run("ip", "netns", "exec", hosts.client_ns, sys.executable, "-c", SEED_S3,
             server.endpoint, *names)
        ep = ("--endpoint-url", server.endpoint)
        hosts.s4ctl("cp", "-r", *ep, "s3://src/in/", "s4://b/in/")
        hosts.s4ctl("cp", "-r", *ep, "s4://b/in/", "s3://src/out/")

        from s4d import placement
        seen: dict[tuple[str, str], set[str]] = {}
        for address, method, path, status in server.requests():
            _, _, rest = path.partition("/src/")
            name = rest.split("?")[0]
            if name.startswith(("in/", "out/")) and method in ("GET", "PUT", "POST", "HEAD"):
                if name.startswith("in/") and method == "PUT":
                    continue  # the seeding, from the client's namespace
                seen.setdefault((name, method), set()).add(address)
        for name in names:
            owner = hosts.addresses[placement.node_index(f"b/in/{name}", HOSTS)]
            assert seen.get((f"in/{name}", "GET")) == {owner}, (name, seen)
            assert seen.get((f"out/{name}", "PUT")) == {owner}, (name, seen)
            assert hosts.key_file(hosts.addresses.index(owner), f"s4://b/in/{name}").read_bytes() \
                == (name + "\n").encode() * 1000
        assert not any(CLIENT_ADDRESS in a for (n, m), a in seen.items()), seen
    finally:
        server.stop()


def _log_text(server) -> str:
    return server.log.read_text(errors="replace") if server.log.exists() else ""

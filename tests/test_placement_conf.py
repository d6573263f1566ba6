"""Placement (key -> node) and the cluster conf: units for placement.node_index
and conf.parse, then the real thing: where a cluster puts keys, how `s4ctl`
finds its conf, and `s4d` refusing a conf that does not list it."""
import os
import subprocess
import sys

import pytest

from s4d import conf, placement
from tests.cluster import S4CTL, S4D, free_port, wait_port

# --- placement, units ---------------------------------------------------------------

@pytest.mark.parametrize("path,nodes,index", [
    ("000", 3, 0), ("000_x", 3, 0), ("00042_y", 3, 0), ("7", 3, 1), ("8_bucket2", 3, 2),
    ("b/dir/5_part", 3, 2), ("b/dir/5_part/", 3, 2), ("b/dir/100", 7, 2),
    ("b/99999999999999999999999999999_x", 3, 0), ("b/99999999999999999999999999998", 3, 2),
    ("b/3", 1, 0), ("b/0004", 4, 0),
])
def test_a_basename_starting_with_digits_goes_to_int_digits_mod_n(path, nodes, index):
    assert placement.node_index(path, nodes) == index


def test_only_the_basename_counts_for_placement():
    assert placement.node_index("b/1/x.txt", 3) == placement.node_index("other/22/x.txt", 3)
    assert placement.node_index("b/7/000_part", 3) == 0
    assert placement.numeric_prefix("00042_y") == "00042"
    assert placement.numeric_prefix("x1") == ""
    assert placement.numeric_prefix("") == ""


# Pinned: placement must never change between versions, processes or machines,
# or a cluster would stop finding its keys.
@pytest.mark.parametrize("name,on3,on7", [
    ("alpha", 0, 1), ("part-a", 2, 3), ("bucket0", 1, 4), ("x.txt", 2, 3), ("ünï", 1, 1),
    ("٣", 1, 4),  # a non-ASCII digit is not a numeric prefix
])
def test_a_non_numeric_basename_is_placed_by_a_pinned_stable_hash(name, on3, on7):
    assert placement.node_index(name, 3) == on3
    assert placement.node_index(f"b/dir/{name}", 3) == on3
    assert placement.node_index(name, 7) == on7


def test_non_numeric_placement_is_the_same_in_every_process():
    names = [f"name-{i}" for i in range(200)] + ["ünï", "x.txt"]
    here = [placement.node_index(n, 3) for n in names]
    code = ("import sys; from s4d import placement; "
            "print([placement.node_index(n, 3) for n in sys.argv[1:]])")
    for seed in ("0", "1", "12345", "random"):
        out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
        assert out.strip() == str(here), seed


def test_non_numeric_names_spread_over_every_node():
    counts = [0, 0, 0]
    for i in range(3000):
        counts[placement.node_index(f"part-{i}.csv", 3)] += 1
    assert all(800 < n < 1200 for n in counts), counts


# --- conf.parse, units ---------------------------------------------------------------

def test_conf_parse_reads_host_port_lines_in_order_with_comments_and_blanks():
    text = "# the cluster\n\n127.0.0.1:8080\n  host-b:9000   # second\n[::1]:7000\nnode.example.com:1\n"
    assert conf.parse(text) == [("127.0.0.1", 8080), ("host-b", 9000), ("::1", 7000),
                                ("node.example.com", 1)]


@pytest.mark.parametrize("text,line", [
    ("host", 1), ("host:", 1), (":8080", 1), ("h:0", 1), ("h:65536", 1), ("h:http", 1),
    ("h:1\nh:-2", 2), ("h:1\n\n# x\nh 2:", 4), ("h:80 90", 1),
])
def test_conf_parse_names_the_file_and_line_of_a_bad_entry(text, line):
    with pytest.raises(conf.ConfError, match=rf"^/some/s4\.conf:{line}: "):
        conf.parse(text, "/some/s4.conf")


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing\n"])
def test_conf_parse_refuses_a_conf_without_nodes(text):
    with pytest.raises(conf.ConfError, match="no nodes"):
        conf.parse(text)


def test_conf_parse_refuses_a_node_listed_twice():
    with pytest.raises(conf.ConfError, match="twice"):
        conf.parse("a:1\nb:2\na:1\n")


# --- placement in a real cluster -----------------------------------------------------------

def test_keys_land_on_the_node_their_basename_places_them(make_cluster, tmp_path):
    c = make_cluster()
    numeric = {"0": 0, "1_x": 1, "dir/2": 2, "00042_y": 0, "17": 2, "dir/sub/1000_z": 1, "5/4": 1}
    named = ["alpha", "part-a", "bucket0", "x.txt", "dir/ünï", "d/e/f.csv"]
    src = tmp_path / "src"
    for name in [*numeric, *named]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode())
    c.s4ctl("cp", "-r", str(src), "s4://b")
    c.s4ctl("cp", "-", "s4://b/piped/3_p", input=b"p")  # one put path besides cp -r
    for name, index in {**numeric, "piped/3_p": 0}.items():
        assert c.node_of(f"s4://b/{name}") == index, name
    for name in named:
        assert c.node_of(f"s4://b/{name}") == placement.node_index(name, 3), name
    assert sum(len(c.files(i)) for i in range(3)) == len(numeric) + len(named) + 1


# --- where s4ctl finds its conf ------------------------------------------------------------

def s4ctl(*args: str, env: dict, cwd=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "S4_CONF_PATH"}
    return subprocess.run([S4CTL, *args], capture_output=True, text=True, timeout=60,
                          env={**base, **env}, cwd=cwd)


@pytest.fixture
def confs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    paths = {}
    for name, port in (("explicit", 1111), ("env", 2222), ("home", 3333)):
        path = home / ".s4.conf" if name == "home" else tmp_path / f"{name}.conf"
        path.write_text(f"10.0.0.1:{port}\n10.0.0.2:{port}\n")
        paths[name] = path
    return home, paths


def test_s4ctl_looks_for_its_conf_in_conf_then_env_then_home_then_the_default(confs):
    home, paths = confs
    env = {"HOME": str(home), "S4_CONF_PATH": str(paths["env"])}
    expect = {port: f"10.0.0.1:{port}\n10.0.0.2:{port}\n" for port in (1111, 2222, 3333)}
    assert s4ctl("config", "--conf", str(paths["explicit"]), env=env).stdout == expect[1111]
    assert s4ctl("config", "-c", str(paths["explicit"]), env=env).stdout == expect[1111]
    assert s4ctl("-c", str(paths["explicit"]), "config", env=env).stdout == expect[1111]
    assert s4ctl(f"--conf={paths['explicit']}", "config", env=env).stdout == expect[1111]
    assert s4ctl("config", env=env).stdout == expect[2222]
    assert s4ctl("config", env={"HOME": str(home)}).stdout == expect[3333]
    paths["home"].unlink()
    if os.path.exists("/etc/s4.conf"):
        pytest.skip("/etc/s4.conf exists on this machine: the built-in default is not reachable")
    proc = s4ctl("config", env={"HOME": str(home)})
    assert (proc.returncode, proc.stdout) == (0, "127.0.0.1:8080\n")


def test_a_named_conf_that_does_not_exist_or_is_malformed_is_a_one_line_error(confs, tmp_path):
    home, paths = confs
    bad = tmp_path / "bad.conf"
    bad.write_text("127.0.0.1:8080\nnot a node\n")
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"sM\xc8\x00\xff" * 20)
    for args, env, needle in (
            (("config", "--conf", str(tmp_path / "missing")), {"HOME": str(home)}, "missing"),
            (("config",), {"HOME": str(home), "S4_CONF_PATH": str(tmp_path / "gone")}, "gone"),
            (("config",), {"HOME": str(home), "S4_CONF_PATH": str(bad)}, "bad.conf:2"),
            (("ls", "-c", str(bad)), {"HOME": str(home)}, "bad.conf:2"),
            (("ls", "-c", str(binary)), {"HOME": str(home)}, "binary.conf: not a conf"),
            (("cp", "-", "s4://b/k", "--conf", str(tmp_path / "missing")), {"HOME": str(home)}, "missing")):
        proc = s4ctl(*args, env=env)
        assert proc.returncode == 1, (args, proc)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


# --- s4d and its place in the conf ------------------------------------------------------------

def s4d(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "S4_CONF_PATH"}
    return subprocess.run([S4D, *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, cwd=cwd, stdin=subprocess.DEVNULL)


def assert_refuses_to_start(proc, *needles: str) -> None:
    assert proc.returncode not in (0, None), proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s4d: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_s4d_refuses_to_start_when_the_conf_does_not_list_it(tmp_path):
    port, other = free_port(), free_port()
    data = tmp_path / "data"
    cases = {
        "other-port.conf": f"127.0.0.1:{other}\n",
        "other-host.conf": f"192.0.2.1:{port}\n",  # TEST-NET-1: never one of ours
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert_refuses_to_start(s4d("--conf", str(tmp_path / name), "--port", str(port),
                                    "--data-dir", str(data)), str(port))
    assert_refuses_to_start(s4d("--conf", str(tmp_path / "missing.conf"), "--port", str(port),
                                "--data-dir", str(data)), "missing.conf")
    (tmp_path / "bad.conf").write_text(f"127.0.0.1:{port}\n127.0.0.1:{port}\n")
    assert_refuses_to_start(s4d("--conf", str(tmp_path / "bad.conf"), "--port", str(port),
                                "--data-dir", str(data)), "twice")
    # with no conf anywhere it is the single default node 127.0.0.1:8080, not this port
    home = tmp_path / "home"
    home.mkdir()
    if not os.path.exists("/etc/s4.conf"):
        assert_refuses_to_start(s4d("--port", str(port), "--data-dir", str(data), env={"HOME": str(home)}),
                                "127.0.0.1:8080")


def test_s4d_finds_its_conf_in_the_home_dir_and_itself_in_it_by_port(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ports = [free_port(), free_port()]
    (home / ".s4.conf").write_text("".join(f"127.0.0.1:{p}\n" for p in ports))
    proc = subprocess.Popen([S4D, "--port", str(ports[1]), "--data-dir", str(tmp_path / "data")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**{k: v for k, v in os.environ.items() if k != "S4_CONF_PATH"},
                                 "HOME": str(home)})
    try:
        wait_port(ports[1], timeout=30)
        health = s4ctl("health", env={"HOME": str(home)})
        lines = health.stdout.splitlines()
        assert health.returncode == 1  # the first node was never started
        assert "down" in lines[0] and f":{ports[0]}" in lines[0]
        assert lines[1].startswith("healthy") and f":{ports[1]}" in lines[1]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        proc.stderr.close()

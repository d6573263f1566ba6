"""Key names: what the client refuses, what the daemon refuses on its own, and
the odd-but-legal names that must work.

The daemon is attacked with hand-made frames on a raw socket (the client
would refuse to send them), aimed at a canary directory that sits beside the
data dirs: nothing may be read from it, written to it, listed or deleted.
"""
import os
import socket

import pytest
import xxhash

from s4d import keys, limits, protocol
from s4d.errors import BadKey
from tests.cluster import Cluster, recv_frame




LONG_COMPONENT = "x" * (limits.KEY_COMPONENT_MAX_BYTES + 1)
LONG_KEY = "/".join(["y" * 200] * 6)  # every component legal, the whole too long

# (url, what the one-line error must mention); NUL cannot be passed in argv at
# all, so it is covered below by the key rules and by the daemon.
BAD_URLS = [
    ("s4://B/a b", "spaces"),
    ("s4://B/dir/a\tb", "control"),
    ("s4://B/a\nb", "control"),
    ("s4://B/a\x01b", "control"),
    ("s4://B/a\x7fb", "control"),
    ("s4://B/../x", ".."),
    ("s4://B/dir/../../x", ".."),
    ("s4://B/./x", "."),
    ("s4://../x", ".."),
    ("s4:///x", "empty"),
    ("s4://_B/x", "_"),
    ("s4://_tmp/x", "_"),
    (f"s4://B/{LONG_COMPONENT}", "longer"),
    (f"s4://B/{LONG_KEY}", "longer"),
]


def assert_refused(proc, needle: str = "") -> None:
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s4ctl: "), err
    assert needle in err, err


def stored(c: Cluster) -> set:
    return {str(p) for p in c.files()}


@pytest.mark.parametrize("url,needle", BAD_URLS, ids=[repr(u[5:25]) for u, _ in BAD_URLS])
def test_the_client_refuses_a_bad_key_in_every_command(shared, b, tmp_path, url, needle):
    url = url.replace("B", b, 1) if "B" in url[:8] else url
    before = stored(shared)
    (tmp_path / "f").write_bytes(b"data")
    assert_refused(shared.s4ctl("cp", "-", url, input=b"data", check=False), needle)
    assert_refused(shared.s4ctl("cp", url, "-", input=b"", check=False), needle)
    if needle in ("spaces", "..", "longer"):  # one of each kind through every command
        assert_refused(shared.s4ctl("cp", str(tmp_path / "f"), url, check=False), needle)
        assert_refused(shared.s4ctl("cp", url, str(tmp_path / "out"), check=False), needle)
        assert_refused(shared.s4ctl("eval", url, f"touch {tmp_path}/ran", check=False), needle)
        assert_refused(shared.s4ctl("rm", url, check=False), needle)
    assert stored(shared) == before
    assert sorted(os.listdir(tmp_path)) == ["f"]


@pytest.mark.parametrize("prefix", ["s4://B/../", "s4://..", "s4://_tmp/", "s4://_", "s4://B/a b",
                                    "s4://B/./x", "s4://B/dir/.."])
def test_the_client_refuses_a_bad_prefix_in_ls_and_rm_r(shared, b, prefix):
    prefix = prefix.replace("B", b, 1)
    before = stored(shared)
    assert_refused(shared.s4ctl("ls", prefix, check=False))
    assert_refused(shared.s4ctl("ls", "-r", prefix, check=False))
    assert_refused(shared.s4ctl("rm", "-r", prefix, check=False))
    assert stored(shared) == before


def test_a_file_whose_name_is_not_a_legal_key_is_refused_on_upload(shared, b, tmp_path):
    (tmp_path / "my file.txt").write_bytes(b"x")
    assert_refused(shared.s4ctl("cp", "my file.txt", f"s4://{b}/dir/", check=False, cwd=tmp_path), "spaces")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "bad\tname").write_bytes(b"x")
    assert_refused(shared.s4ctl("cp", "-r", "tree", f"s4://{b}/t", check=False, cwd=tmp_path), "control")
    assert shared.s4ctl("ls", f"s4://{b}", check=False).returncode == 1


@pytest.mark.parametrize("key", ["b/a\x00b", "b/\x00", "\x00/x", "b/a\ud800"])
def test_the_key_rules_refuse_nul_and_lone_surrogates(key):
    with pytest.raises(BadKey):
        keys.check_key(key)
    with pytest.raises(BadKey):
        keys.check_prefix(key)


ODD_BUT_LEGAL = ["ünïcödé/日本語.txt", "..x/x..", ".hidden", "a.b.c", "-dash", "_under/x",
                 "x.xxh", "s4:", "a=b&c?d#e%20", "very/deep/" * 20 + "leaf",
                 "z" * limits.KEY_COMPONENT_MAX_BYTES]


def test_odd_but_legal_key_names_round_trip(shared, b, tmp_path):
    src, back = tmp_path / "src", tmp_path / "back"
    for name in ODD_BUT_LEGAL:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode())
    shared.s4ctl("cp", "-r", str(src), f"s4://{b}")
    listed = shared.s4ctl("ls", "-r", f"s4://{b}").stdout.splitlines()
    assert [line.split(None, 3)[3] for line in listed] == sorted(ODD_BUT_LEGAL)
    for name in ("ünïcödé/日本語.txt", ODD_BUT_LEGAL[-1]):
        assert shared.s4ctl("cp", f"s4://{b}/{name}", "-", input=b"").stdout == name.encode()
        shared.s4ctl("cp", f"s4://{b}/{name}", "single/", cwd=tmp_path)
    assert sorted(os.listdir(tmp_path / "single")) == sorted(["日本語.txt", ODD_BUT_LEGAL[-1]])
    shared.s4ctl("cp", "-r", f"s4://{b}", str(back))
    for name in ODD_BUT_LEGAL:
        assert (back / name).read_bytes() == name.encode()


def test_doubled_slashes_in_a_url_collapse_to_one(shared, b):
    shared.s4ctl("cp", "-", f"s4://{b}//dir///k", input=b"k")
    assert shared.s4ctl("ls", "-r", f"s4://{b}").stdout.split()[3] == "dir/k"
    assert shared.s4ctl("cp", f"s4://{b}/dir/k", "-", input=b"").stdout == b"k"


# --- the daemon, attacked directly ------------------------------------------------------

def raw(port: int, msg: dict, data: bytes = b"evil\n") -> dict:
    """Send one hand-made request; if the daemon accepts a put, finish it, so a
    daemon that wrongly accepted would really have written the file."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(protocol.encode(msg))
        reply = recv_frame(sock)
        if msg.get("op") == "put" and reply and reply.get("ok"):
            sock.sendall(protocol.encode_chunk_header(len(data)) + data + protocol.END_OF_STREAM
                         + protocol.encode({"xxh3": xxhash.xxh3_64(data).hexdigest(), "size": len(data)}))
            reply = recv_frame(sock)
        return reply


@pytest.fixture
def attacked(make_cluster):
    """A fresh cluster with a canary dir beside its data dirs and a legitimate key."""
    c = make_cluster()
    canary = c.root / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "secret.txt").write_text("canary\n")
    (canary / "sub" / "deep.txt").write_text("deep\n")
    c.s4ctl("cp", "-", "s4://b/legit", input=b"legit")
    c.canary = canary
    c.owner = c.node_of("s4://b/legit")
    c.snapshot = snapshot(c)
    return c


def snapshot(c: Cluster) -> dict:
    """Every path under the cluster's root except logs, with file contents."""
    out = {}
    for dirpath, dirs, files in os.walk(c.root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            if name.endswith(".log") or "/_tmp" in path:
                continue
            out[os.path.relpath(path, c.root)] = open(path, "rb").read() if name in files else None
    return out


ESCAPES = ["../canary/secret.txt", "../canary/new", "b/../../canary/new", "b/../../canary/secret.txt",
           "../../canary", "..", "../", "b/..", "b/.", "./b/legit", "b//legit", "/b/legit",
           "b/legit/", "b", "", "_tmp/x", "_tmp/../b/legit", "_b/x", "b/a b", "b/a\x00b",
           "b/a\nb", "b/a\ud800", f"b/{LONG_COMPONENT}", f"b/{LONG_KEY}"]
BAD_PREFIXES = ["..", "../", "../canary", "../canary/", "b/..", "b/../", "b/../..", "b/./",
                "_tmp", "_tmp/", "_", "b/a b", "b/\x00", "b//", f"b/{LONG_COMPONENT}"]


def assert_error(reply: dict | None, what) -> None:
    assert reply is not None, f"{what}: connection closed without an answer"
    assert reply.get("error") in ("bad_key", "bad_request"), (what, reply)
    assert reply.get("message"), (what, reply)


def test_the_daemon_refuses_keys_that_would_escape_or_touch_its_internals(attacked):
    c = attacked
    for i in range(3):  # every node, since each validates on its own
        port = c.ports[i]
        for key in ESCAPES:
            assert_error(raw(port, {"op": "put", "key": key}), ("put", key))
            assert_error(raw(port, {"op": "get", "key": key}), ("get", key))
            assert_error(raw(port, {"op": "eval", "key": key, "cmd": f"touch {c.canary}/ran"}), ("eval", key))
            assert_error(raw(port, {"op": "rm", "prefix": key, "recursive": False}), ("rm", key))
        for prefix in BAD_PREFIXES:
            for recursive in (False, True):
                assert_error(raw(port, {"op": "ls", "prefix": prefix, "recursive": recursive}), ("ls", prefix))
                assert_error(raw(port, {"op": "rm", "prefix": prefix, "recursive": recursive}), ("rm", prefix))
        for field in ("indir", "outdir"):
            for prefix in ("../canary", "_tmp", "b/../.."):
                msg = {"op": "map", "indir": "b/", "outdir": "out/", "cmd": f"touch {c.canary}/ran", field: prefix}
                assert_error(raw(port, msg), ("map", field, prefix))
    assert snapshot(c) == c.snapshot  # nothing read into, written to or deleted from outside
    assert c.s4ctl("cp", "s4://b/legit", "-", input=b"").stdout == b"legit"
    assert c.s4ctl("health").returncode == 0
    for log in c.logs:
        assert "Traceback" not in log.read_text()


MALFORMED = [
    {"op": "put", "key": 42}, {"op": "get", "key": None}, {"op": "get", "key": ["b", "x"]},
    {"op": "get"}, {"op": "ls", "prefix": "b/"}, {"op": "ls", "prefix": "b/", "recursive": "yes"},
    {"op": "rm", "prefix": {"$ne": 1}, "recursive": True}, {"op": "nope"}, {"key": "b/legit"},
    {"op": ["get"]}, {"op": "eval", "key": "b/legit"}, {"op": "eval", "key": "b/legit", "cmd": 1},
    {"op": "eval", "key": "b/legit", "cmd": "true", "timeout": -1},
    {"op": "put", "key": "b/legit", "extra": "x" * 1000},  # exists: refused before any data
]


def test_the_daemon_refuses_malformed_requests_and_keeps_serving(attacked):
    for msg in MALFORMED:
        reply = raw(attacked.ports[attacked.owner], msg)
        assert reply is not None and reply.get("error") not in (None, "internal"), (msg, reply)
    # not JSON, not an object, and a length prefix over the cap
    for frame in (b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x02[]", b"\xff\xff\xff\xff"):
        with socket.create_connection(("127.0.0.1", attacked.ports[0]), timeout=15) as sock:
            sock.sendall(frame)
            reply = recv_frame(sock)
            assert reply is not None and reply.get("error") == "protocol", (frame, reply)
    assert snapshot(attacked) == attacked.snapshot
    assert attacked.s4ctl("cp", "s4://b/legit", "-", input=b"").stdout == b"legit"
    for log in attacked.logs:
        assert "Traceback" not in log.read_text()


def test_the_daemon_never_lists_its_internals(attacked):
    c = attacked
    # leave something in every node's _tmp: a stalled upload holds a temp file
    socks = []
    for i, port in enumerate(c.ports):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        sock.sendall(protocol.encode({"op": "put", "key": f"b/{i:03d}_stalled"}))  # 00i: node i's
        assert recv_frame(sock) == {"ok": True}
        sock.sendall(protocol.encode_chunk_header(100) + b"x" * 10)
        socks.append(sock)
    try:
        assert c.temp_files()
        for port in c.ports:
            for recursive in (False, True):
                with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                    sock.sendall(protocol.encode({"op": "ls", "prefix": "", "recursive": recursive}))
                    names = []
                    while "entries" in (reply := recv_frame(sock)):
                        names += [e[0] for e in reply["entries"]]
                    assert reply == {"ok": True}
                    assert not any(n.startswith("_") or "stalled" in n for n in names), names
        assert c.s4ctl("ls").stdout.split()[2:] == ["b"]
        assert [line.split()[3] for line in c.s4ctl("ls", "-r", "s4://b").stdout.splitlines()] == ["legit"]
    finally:
        for sock in socks:
            sock.close()

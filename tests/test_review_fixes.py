"""Defects a black-box review found, each pinned by the test that failed before its fix.

rm -r across bucket names, internal errors for user mistakes and for failures
inside a handler's nursery, a listing racing a delete, ENOSPC at publish, two
daemons on one data dir, the bind address, and leaked fds and temp files.
Black-box where the outcome can be made happen for real; in-process (a real
Server on a socketpair, one fault injected inside its nursery) where the
fault cannot be timed from outside.
"""
import errno
import os
import subprocess
import sys
import time

import pytest
import trio

from s4d import conf, protocol
from s4d.config import DaemonConfig
from s4d.errors import NoSpace, Unavailable
from s4d.storage import Storage
from tests.cluster import S4D, assert_one_line_error, free_port


def put(c, *keys: str) -> None:
    """Store bucket/path keys, one `cp -r` per bucket."""
    root = c.root / f"src{time.monotonic_ns()}"
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode())
    for bucket in {key.split("/", 1)[0] for key in keys}:
        c.s4ctl("cp", "-r", str(root / bucket), f"s4://{bucket}")


def listed(c, prefix: str) -> list[str]:
    proc = c.s4ctl("ls", "-r", prefix, check=False)
    return [line.split()[-1] for line in proc.stdout.splitlines()]


# --- 1. rm -r matches a bucket name whole ---------------------------------------------------

def test_rm_r_of_a_bucket_leaves_buckets_whose_names_start_with_it(shared, b):
    put(shared, f"{b}/a", f"{b}/d/x", f"{b}-2024/a", f"{b}x/k")
    shared.s4ctl("rm", "-r", f"s4://{b}")
    assert listed(shared, f"s4://{b}") == []
    assert listed(shared, f"s4://{b}-2024") == ["a"]
    assert listed(shared, f"s4://{b}x") == ["k"]


def test_a_raw_recursive_rm_or_ls_of_a_bare_bucket_name_stays_inside_that_bucket(shared, b):
    from s4ctl.client import Client
    put(shared, f"{b}/a", f"{b}-2024/a")
    client = Client(conf.load(str(shared.conf))[0])
    try:
        assert [name for name, _, _ in client.ls(b, recursive=True)] == [f"{b}/a"]
        assert client.rm(b, recursive=True) == 1
    finally:
        client.close()
    assert listed(shared, f"s4://{b}-2024") == ["a"]


def test_ls_r_previews_exactly_what_rm_r_deletes(shared, b):
    put(shared, f"{b}/step1/a", f"{b}/step2/b", f"{b}/stop", f"{b}-step/c")
    for prefix in (f"s4://{b}/st", f"s4://{b}"):
        preview = listed(shared, prefix)
        before = set(listed(shared, f"s4://{b}")) | {"OTHER:" + k for k in listed(shared, f"s4://{b}-step")}
        shared.s4ctl("rm", "-r", prefix)
        after = set(listed(shared, f"s4://{b}")) | {"OTHER:" + k for k in listed(shared, f"s4://{b}-step")}
        assert sorted(before - after) == sorted(preview), prefix
        put(shared, f"{b}/step1/a", f"{b}/step2/b", f"{b}/stop")


# --- 2. user mistakes and failures inside a nursery are typed, never `internal` -------------

def test_a_bad_glob_in_indir_is_a_one_line_bad_request_with_no_traceback_in_the_logs(cluster):
    put(cluster, "g/in/a")
    for op in ("map", "map-to-n", "map-from-n"):
        proc = cluster.s4ctl(op, "s4://g/in/[z-a]", "s4://g/out/", "cat", check=False)
        assert_one_line_error(proc, "bad glob", "[z-a]")
        assert "internal" not in proc.stderr
    for log in cluster.logs:
        assert "Traceback" not in log.read_text()


async def _ask(server, request: dict) -> dict:
    """Send one request to server over a socketpair; its final frame (progress skipped)."""
    ours, theirs = trio.socket.socketpair()
    with ours, theirs:
        await ours.send(protocol.encode(request))
        decoder = protocol.FrameDecoder()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._serve_request, theirs, "test")
            while True:
                frame = decoder.next_frame()
                if frame is None:
                    data = await ours.recv(decoder.bytes_wanted())
                    assert data, "closed without a reply"
                    decoder.feed(data)
                elif "progress" not in frame:
                    break
            ours.shutdown(trio.socket.SHUT_WR)  # the server drains until EOF after an error
    return frame


def _fails_in_a_nursery(exc: BaseException):
    async def handler_work(*_args) -> None:
        async def task() -> None:
            raise exc
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)
    return handler_work


FAULTS = [  # what a task inside a handler's nursery raised -> the code its peer is sent
    (OSError(errno.ENOSPC, "No space left on device"), "no_space"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), "not_found"),
    (PermissionError(errno.EACCES, "Permission denied"), "io_failed"),
    (Unavailable("a peer went away"), "unavailable"),
    (NoSpace("no space left"), "no_space"),
]


@pytest.mark.parametrize("fault,code", FAULTS, ids=[type(f).__name__ + str(getattr(f, "errno", "") or "")
                                                   for f, _ in FAULTS])
async def test_every_handler_that_starts_a_nursery_answers_a_failure_inside_it_with_its_type(
        tmp_path, caplog, fault, code):
    from s4d.server import Server
    server = Server([("127.0.0.1", 1)], 0, DaemonConfig(data_dir=str(tmp_path / "data")))
    (tmp_path / "data" / "b").mkdir()
    (tmp_path / "data" / "b" / "k").write_bytes(b"k")
    requests = {op: {"op": op, "indir": "b/", "outdir": "b/out/", "cmd": "cat"}
                for op in ("map", "map_to_n", "map_from_n")}
    for op in requests:
        setattr(server.controller, op, _fails_in_a_nursery(fault))
    requests["rm"] = {"op": "rm", "prefix": "b/", "recursive": True}
    server.storage.delete_in = lambda *_: (_ for _ in ()).throw(fault)  # in rm -r's worker nursery
    for op, request in requests.items():
        reply = await _ask(server, request)
        assert reply.get("error") == code, (op, reply)
        assert "ExceptionGroup" not in reply["message"] and "\n" not in reply["message"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# --- 6. a listing racing a delete --------------------------------------------------------

def test_a_directory_removed_while_it_is_listed_is_simply_not_listed(tmp_path, monkeypatch):
    from s4d import storage as storage_module
    st = Storage(str(tmp_path / "data"))
    for name in ("gone/x", "stays/y"):
        (tmp_path / "data" / "b" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "b" / name).write_bytes(b"1")
    real = os.scandir

    def scandir_then_rm(path):  # the entries are read, then a concurrent rm -r removes one
        entries = list(real(path))
        if path == str(tmp_path / "data" / "b"):
            os.unlink(tmp_path / "data" / "b" / "gone" / "x")
            os.rmdir(tmp_path / "data" / "b" / "gone")
        return iter(entries)

    monkeypatch.setattr(storage_module.os, "scandir", scandir_then_rm)
    assert [name for name, _, _ in st.list("b/", False)] == ["stays/"]


# --- 7. a full disk at publish ----------------------------------------------------------

@pytest.mark.parametrize("step", ["link", "chmod"])
def test_enospc_from_link_or_chmod_at_publish_is_no_space(tmp_path, monkeypatch, step):
    from s4d import storage as storage_module
    st = Storage(str(tmp_path / "data"))
    temp = st.new_temp()
    open(temp, "wb").close()

    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.os, step, full)
    with pytest.raises(NoSpace):
        st.publish(temp, "b/dir/k", "0" * 16)
    monkeypatch.undo()
    assert not (tmp_path / "data" / "b").exists()  # the parents made for it are gone again


# --- 5. one daemon per data dir -----------------------------------------------------------

def test_a_second_daemon_on_the_same_data_dir_exits_at_once_naming_the_first(cluster):
    port = free_port()
    conf_path = cluster.root / "two.conf"
    conf_path.write_text(f"127.0.0.1:{cluster.ports[0]}\n127.0.0.1:{port}\n")
    proc = subprocess.run([S4D, "--conf", str(conf_path), "--port", str(port), "--data-dir",
                           str(cluster.data_dirs[0])], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"s4d: the data dir {cluster.data_dirs[0]} is in use by another s4d (pid {cluster.pid(0)})"]
    cluster.s4ctl("cp", "-", "s4://b/0_still_serving", input="x")


def test_a_second_s4d_local_on_the_same_dir_exits_at_once_and_leaves_the_first_s_conf(tmp_path):
    first = subprocess.Popen([S4D, "local", "--nodes", "1", "--dir", str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().startswith("export S4_CONF_PATH=")
        conf_text = (tmp_path / "s4.conf").read_text()
        second = subprocess.run([S4D, "local", "--nodes", "1", "--dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert second.stderr.strip() == f"s4d local: {tmp_path} is in use by another s4d local (pid {first.pid})"
        assert (tmp_path / "s4.conf").read_text() == conf_text
    finally:
        first.terminate()
        first.wait(30)


# --- s4d local: a dead node is reported, the others keep serving ------------------------------

def test_s4d_local_reports_a_dead_node_and_keeps_the_others_serving(tmp_path):
    import psutil
    local = subprocess.Popen([S4D, "local", "--nodes", "2", "--dir", str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert local.stdout.readline().startswith("export S4_CONF_PATH=")
        local.stderr.readline()  # "2 nodes on ..."
        daemons = psutil.Process(local.pid).children()
        assert len(daemons) == 2
        # the log files are the daemons' own: s4d local holds none open
        assert not [f for f in psutil.Process(local.pid).open_files() if f.path.endswith(".log")]
        node1 = next(p for p in daemons if str(tmp_path / "node1") in p.cmdline())
        node1.kill()
        line = local.stderr.readline()
        assert "node1" in line and "exited with -9" in line and "keep serving" in line
        assert local.poll() is None
        port0 = (tmp_path / "s4.conf").read_text().split()[0].rsplit(":", 1)[1]
        from tests.cluster import wait_port
        wait_port(int(port0), timeout=5)
    finally:
        local.terminate()
        assert local.wait(30) == 1  # a node died: not a clean run


# --- 8. the bind address ----------------------------------------------------------------------

def test_the_bind_address_is_the_first_of_the_entry_s_addresses_that_is_ours(monkeypatch):
    monkeypatch.setattr(conf, "own_addresses", lambda: {"0.0.0.0", "::", "10.1.1.1", "10.2.2.2"})
    monkeypatch.setattr(conf, "resolve", lambda host: {
        "multi": ["192.0.2.9", "10.2.2.2", "10.1.1.1"], "other": ["192.0.2.8"],
        "0.0.0.0": ["0.0.0.0"]}[host])
    for _ in range(20):  # the same answer every time (a set's pop() was not)
        assert conf.find_self([("other", 7000), ("multi", 7000)], 7000) == (1, "10.2.2.2")
    assert conf.find_self([("0.0.0.0", 7000)], 7000) == (0, None)


# --- 9. leaks ---------------------------------------------------------------------------------

def test_a_map_whose_second_connect_fails_closes_the_first_connection(cluster):
    from s4ctl.client import Client
    dead = ("127.0.0.1", free_port())
    client = Client([("127.0.0.1", cluster.ports[0]), dead])
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(Unavailable) as failed:
        client.map("b/in/", "b/out/", "cat")
    assert len(os.listdir("/proc/self/fd")) == before, "a connection was left open"
    assert dead[1] and str(dead[1]) in failed.value.message


def test_a_download_removes_temp_files_that_killed_downloads_left_in_its_directory(cluster):
    cluster.s4ctl("cp", "-", "s4://b/d/k", input="data")
    out = cluster.root / "out"
    out.mkdir()
    dead_pid = _dead_pid()
    stale = out / f".k.s4tmp.{dead_pid}.140000000000"
    live = out / f".k.s4tmp.{os.getpid()}.140000000000"  # a download still running: kept
    other = out / f".j.s4tmp.{dead_pid}.1"               # another destination's, dead: removed too
    other_live = out / f".j.s4tmp.{os.getpid()}.1"       # another destination's, running: kept
    for p in (stale, live, other, other_live):
        p.write_bytes(b"partial")
    cluster.s4ctl("cp", "s4://b/d/k", f"{out}/")
    assert (out / "k").read_text() == "data"
    assert not stale.exists() and not other.exists()
    assert live.exists() and other_live.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid

"""Immutability, the same-key race, dead uploaders, corruption on disk and on
the wire, and metadata that never shows up as keys. Black box, real daemons."""
import os
import signal
import socket
import stat
import subprocess
import time

import pytest
import xxhash

from s4d import placement, protocol
from tests.cluster import S4CTL, Cluster, assert_one_line_error, recv_frame

MiB = 1024 * 1024


def get(c: Cluster, url: str) -> bytes:
    return c.s4ctl("cp", url, "-", input=b"").stdout


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return result


# --- immutability -------------------------------------------------------------------

def test_a_second_put_of_a_key_fails_and_leaves_the_first(shared, b, tmp_path):
    first, second = os.urandom(3 * MiB), os.urandom(2 * MiB)
    (tmp_path / "second").write_bytes(second)
    url = f"s4://{b}/dir/k"
    shared.s4ctl("cp", "-", url, input=first)
    assert_one_line_error(shared.s4ctl("cp", "-", url, input=second, check=False), "exists", url)
    assert_one_line_error(shared.s4ctl("cp", str(tmp_path / "second"), url, check=False), "exists")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "k").write_bytes(second)
    assert_one_line_error(shared.s4ctl("cp", "-r", str(tmp_path / "tree"), f"s4://{b}/dir", check=False),
                          "exists")
    assert get(shared, url) == first
    assert not shared.temp_files()


def test_rm_then_put_stores_the_new_data(shared, b):
    url = f"s4://{b}/k"
    shared.s4ctl("cp", "-", url, input=b"old")
    shared.s4ctl("rm", url)
    shared.s4ctl("cp", "-", url, input=b"new")
    assert get(shared, url) == b"new"


def _on_node(b: str, name: str, nodes: int = 3) -> int:
    return placement.node_index(f"{b}/{name}", nodes)


def test_a_put_that_clashes_with_a_directory_on_its_node_says_so_and_stores_nothing(shared, b):
    i = _on_node(b, "d")
    shared.s4ctl("cp", "-", f"s4://{b}/d/00{i}", input=b"inside")  # 00i: on d's node
    proc = shared.s4ctl("cp", "-", f"s4://{b}/d", input=os.urandom(MiB), check=False)
    assert_one_line_error(proc, f"s4://{b}/d/ is a directory", "cannot share a name")
    proc = shared.s4ctl("cp", "-", f"s4://{b}/d/00{i}/00{i}", input=b"y", check=False)
    assert_one_line_error(proc, f"s4://{b}/d/00{i} is a key")
    listed = shared.s4ctl("ls", "-r", f"s4://{b}").stdout.splitlines()
    assert [line.split()[-1] for line in listed] == [f"d/00{i}"]
    assert not shared.temp_files()


def test_cp_r_refuses_a_tree_where_one_key_is_another_keys_directory_and_writes_nothing(shared, b, tmp_path):
    i = _on_node(b, "q")
    shared.s4ctl("cp", "-", f"s4://{b}/q/00{(i + 1) % 3}", input=b"inside")
    shared.s4ctl("cp", "-", f"s4://{b}/q", input=b"a key")  # on another node than q/'s key: stored
    for dst in (tmp_path / "out", tmp_path):
        proc = shared.s4ctl("cp", "-r", f"s4://{b}", str(dst), check=False)
        assert_one_line_error(proc, f"s4://{b}/q", "a file and a directory")
    assert os.listdir(tmp_path) == []


def test_a_key_cannot_also_be_a_directory_and_a_directory_cannot_be_a_key(shared, b):
    shared.s4ctl("cp", "-", f"s4://{b}/a", input=b"a")
    shared.s4ctl("cp", "-", f"s4://{b}/d/x", input=b"x")
    assert_one_line_error(shared.s4ctl("cp", "-", f"s4://{b}/a/x", input=b"y", check=False), f"s4://{b}/a")
    assert_one_line_error(shared.s4ctl("cp", "-", f"s4://{b}/d", input=b"z", check=False), f"s4://{b}/d")
    assert get(shared, f"s4://{b}/a") == b"a" and get(shared, f"s4://{b}/d/x") == b"x"


@pytest.mark.parametrize("how", ["pipe", "file"])
def test_of_many_racing_puts_of_one_key_exactly_one_wins_whole(shared, b, tmp_path, how):
    n, size = 8, 3 * MiB
    url = f"s4://{b}/race"
    datas = [os.urandom(size) for _ in range(n)]
    if how == "pipe":
        # every writer is admitted and mid-stream before any finishes: the
        # winner is decided where the key is published, not at the door
        procs = [subprocess.Popen([S4CTL, "cp", "-", url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=shared.env)
                 for _ in range(n)]
        for proc, data in zip(procs, datas):
            proc.stdin.write(data[:MiB + 100])
            proc.stdin.flush()
        wait_for(lambda: len(shared.temp_files()) >= n, 60, f"{n} uploads in flight")
        for proc, data in zip(procs, datas):
            proc.stdin.write(data[MiB + 100:])
            proc.stdin.close()
    else:
        for i, data in enumerate(datas):
            (tmp_path / f"f{i}").write_bytes(data)
        procs = [subprocess.Popen([S4CTL, "cp", str(tmp_path / f"f{i}"), url], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=shared.env)
                 for i in range(n)]
    results = [(proc.wait(120), proc.stderr.read().decode()) for proc in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    for i, (code, err) in enumerate(results):
        if i != winners[0]:
            assert code == 1 and "exists" in err and "Traceback" not in err, err
    assert get(shared, url) == datas[winners[0]]
    key_files = [p for d in shared.data_dirs for p in (d / b).glob("*")]
    assert len(key_files) == 1
    wait_for(lambda: not shared.temp_files(), 30, "temp files to go")


# --- dead and stalled uploaders ------------------------------------------------------------

def test_a_killed_or_stalled_uploader_leaves_no_key_and_no_temp_file(make_cluster):
    # one io slot: if a dead upload kept its slot, the puts at the end could not run
    c = make_cluster(args=("--idle-timeout", "2", "--max-io-jobs", "1"))
    for how in (signal.SIGKILL, signal.SIGSTOP):
        url = f"s4://b/{how.name}"
        proc = subprocess.Popen([S4CTL, "cp", "-", url], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=c.env)
        try:
            proc.stdin.write(os.urandom(MiB + 4096))  # the client sends 1 MiB, then waits for more
            proc.stdin.flush()
            wait_for(lambda: any(p.stat().st_size >= MiB for p in c.temp_files()), 60,
                     "the upload to reach the daemon")
            proc.send_signal(how)  # SIGSTOP: the connection stays open but nothing moves
            wait_for(lambda: not c.temp_files(), 60, f"the temp file to go after {how.name}")
        finally:
            proc.kill()
            if how == signal.SIGSTOP:
                proc.send_signal(signal.SIGCONT)
            proc.wait()
            proc.stdin.close()
        listed = c.s4ctl("ls", "-r", "s4://b", check=False)
        assert url[len("s4://b/"):] not in listed.stdout
        assert c.s4ctl("cp", url, "-", input=b"", check=False).returncode == 1
        assert not [p for p in c.files() if "_tmp" not in p.parts]
    # the slot is free again and the key can be written
    for how in ("SIGKILL", "SIGSTOP"):
        c.s4ctl("cp", "-", f"s4://b/{how}", input=b"done", env={"S4_BUSY_TIMEOUT_S": "10"})
        assert get(c, f"s4://b/{how}") == b"done"
    assert "Traceback" not in "".join(log.read_text() for log in c.logs)


def test_a_file_truncated_while_it_is_uploaded_fails_cleanly_and_stores_nothing(shared, b, tmp_path):
    # the client hashes its source beside sendfile; a mapped hash would die of SIGBUS here
    src = tmp_path / "shrinking"
    with open(src, "wb") as f:
        f.truncate(1024 * MiB)  # sparse: hashing and sending it cost no disk reads
    proc = subprocess.Popen([S4CTL, "cp", str(src), f"s4://{b}/k"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=shared.env)
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in shared.temp_files()), 60,
                 "the upload to reach the daemon")
        proc.send_signal(signal.SIGSTOP)  # mid-transfer, hash thread and sendfile both running
        os.truncate(src, MiB)
        proc.send_signal(signal.SIGCONT)
        proc.stderr = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
        proc.wait()
    assert_one_line_error(proc, "shrank")
    assert shared.s4ctl("ls", "-r", f"s4://{b}", check=False).returncode == 1
    wait_for(lambda: not shared.temp_files(), 60, "the temp file to go")


# --- corruption on disk ---------------------------------------------------------------

def corrupt(path, how: str) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    elif how == "append":
        data += b"\0"
    else:
        del data[-1]
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)


@pytest.mark.parametrize("how", ["flip", "append", "truncate"])
def test_a_key_corrupted_on_disk_is_never_served(shared, b, tmp_path, how):
    data = os.urandom(2 * MiB + 3)
    url = f"s4://{b}/dir/k"
    shared.s4ctl("cp", "-", url, input=data)
    shared.s4ctl("cp", "-", f"s4://{b}/dir/fine", input=b"fine")
    corrupt(shared.key_path(shared.node_of(url), url), how)

    out = tmp_path / "out"
    out.mkdir()
    proc = shared.s4ctl("cp", url, str(out / "k"), check=False)
    assert_one_line_error(proc, "checksum", url)
    assert os.listdir(out) == []  # neither the file nor a temp file beside it

    (out / "k").write_bytes(b"previous contents")
    assert shared.s4ctl("cp", url, str(out / "k"), check=False).returncode == 1
    assert sorted(os.listdir(out)) == ["k"] and (out / "k").read_bytes() == b"previous contents"

    proc = shared.s4ctl("cp", url, "-", input=b"", check=False)
    assert_one_line_error(proc, "checksum", url)
    assert proc.stdout == b""  # stdout cannot take bytes back: the node checks before it sends

    proc = shared.s4ctl("cp", "-r", f"s4://{b}/dir", str(tmp_path / "tree"), check=False)
    assert proc.returncode != 0 and "checksum" in proc.stderr
    assert not (tmp_path / "tree" / "k").exists()
    assert not [n for n in os.listdir(tmp_path / "tree") if n != "fine"]


def test_a_key_corrupted_on_disk_is_never_fed_to_a_command(shared, b):
    url = f"s4://{b}/in/000_k"
    shared.s4ctl("cp", "-", url, input=b"data\n" * 1000)
    corrupt(shared.key_path(shared.node_of(url), url), "flip")

    assert_one_line_error(shared.s4ctl("eval", url, "cat", check=False), "corrupt", url)
    for op in ("map", "map-to-n", "map-from-n"):
        cmd = "cat > x && echo x" if op == "map-to-n" else ("xargs cat" if op == "map-from-n" else "cat")
        proc = shared.s4ctl(op, f"s4://{b}/in/", f"s4://{b}/{op}/", cmd, check=False)
        assert_one_line_error(proc, "corrupt", url)
    assert shared.s4ctl("ls", "-r", f"s4://{b}/map", check=False).returncode == 1  # no outputs


# --- what is on disk -----------------------------------------------------------------

def test_stored_files_are_read_only(shared, b, tmp_path):
    (tmp_path / "f").write_bytes(b"f")
    (tmp_path / "f").chmod(0o666)
    shared.s4ctl("cp", str(tmp_path / "f"), f"s4://{b}/by-file")
    shared.s4ctl("cp", "-", f"s4://{b}/by-pipe", input=b"p")
    for name in ("by-file", "by-pipe"):
        url = f"s4://{b}/{name}"
        mode = shared.key_path(shared.node_of(url), url).stat().st_mode
        assert stat.S_ISREG(mode)
        assert mode & 0o222 == 0, oct(mode)


def test_checksums_are_not_keys_and_a_key_named_like_one_works(shared, b):
    names = ["x", "x.xxh", "x.xxh3", ".x.xxh", "x.s4tmp", "dir/x.xxh"]
    for name in names:
        shared.s4ctl("cp", "-", f"s4://{b}/{name}", input=name.encode())
    listed = shared.s4ctl("ls", "-r", f"s4://{b}").stdout.splitlines()
    assert [line.split(None, 3)[3] for line in listed] == sorted(names)
    for name in names:
        assert get(shared, f"s4://{b}/{name}") == name.encode()
    # on disk: exactly one file per key, nothing beside them
    on_disk = sorted(str(p.relative_to(shared.data_dirs[i] / b))
                     for i in range(3) if (shared.data_dirs[i] / b).exists()
                     for p in (shared.data_dirs[i] / b).rglob("*") if not p.is_dir())
    assert on_disk == sorted(names)


# --- corruption on the wire: a put whose trailer does not match what arrived ------------------

@pytest.mark.parametrize("trailer", ["wrong-xxh3", "wrong-size", "abort"])
def test_a_put_whose_checksum_does_not_match_leaves_nothing(shared, b, trailer):
    data = os.urandom(MiB)
    digest = xxhash.xxh3_64(data).hexdigest()
    key = f"{b}/000_k"  # 000: node 0's, where it is sent
    with socket.create_connection(("127.0.0.1", shared.ports[0]), timeout=30) as sock:
        sock.sendall(protocol.encode({"op": "put", "key": key}))
        assert recv_frame(sock) == {"ok": True}
        sock.sendall(protocol.encode_chunk_header(len(data)) + data + protocol.END_OF_STREAM)
        sock.sendall(protocol.encode({
            "wrong-xxh3": {"xxh3": xxhash.xxh3_64(b"other").hexdigest(), "size": len(data)},
            "wrong-size": {"xxh3": digest, "size": len(data) + 1},
            "abort": {"error": "aborted", "message": "the client gave up"},
        }[trailer]))
        reply = recv_frame(sock)
    expected = "bad_request" if trailer == "abort" else "checksum_mismatch"
    assert reply.get("error") == expected, reply
    assert not shared.key_path(0, f"s4://{key}").exists()
    wait_for(lambda: not shared.temp_files(), 30, "temp files to go")

"""Node to node: map outputs pushed as one stream of many keys (op `push`).

Three layers: the stream's framing as bytes (protocol.PushReader, no
sockets); a real node fed a stream by hand over a raw socket, to see what
each entry leaves on its disk and what it answers; and whole map-to-n runs
on real clusters where a key already exists on the receiving node, where a
receiving node is busy, and where it is killed mid-stream.
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager
import signal
import socket
import subprocess
import time

import pytest
import trio
import xxhash

from s4d import limits, placement, protocol, push
from s4d.config import DaemonConfig
from s4d.errors import BadRequest, ChecksumMismatch, ProtocolError, Unavailable
from tests.cluster import S4CTL, assert_one_line_error, free_port, recv_frame

NODES = 3


def wait_until(check, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return value


def entry(key: str, data: bytes, digest: str | None = None) -> bytes:
    return (protocol.encode_push_head(key, len(data)) + data
            + protocol.encode_push_tail(len(data), digest or xxhash.xxh3_64_hexdigest(data)))


def events(data: bytes, step: int = 1) -> list[tuple]:
    """Feed data `step` bytes at a time; every event, data pieces joined per entry."""
    reader = protocol.PushReader()
    out: list[tuple] = []
    for i in range(0, len(data), step):
        reader.feed(data[i:i + step])
        while (event := reader.next_event()) is not None:
            if event[0] == "data" and out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event[1])
            else:
                out.append(event)
    return out


# --- the framing, without sockets ---------------------------------------------------------
@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_a_stream_of_entries_reads_back_as_entry_data_trailer_in_order_however_it_is_cut(step):
    stream = (entry("b/x/000", b"hello\n") + entry("b/x/empty", b"")
              + entry("b/x/001", b"\x00" * 3000) + protocol.encode_push_end())
    assert events(stream, step) == [
        ("entry", "b/x/000", 6), ("data", b"hello\n"), ("trailer", xxhash.xxh3_64_hexdigest(b"hello\n")),
        ("entry", "b/x/empty", 0), ("trailer", xxhash.xxh3_64_hexdigest(b"")),
        ("entry", "b/x/001", 3000), ("data", b"\x00" * 3000),
        ("trailer", xxhash.xxh3_64_hexdigest(b"\x00" * 3000)),
        ("end",)]


def test_bytes_of_a_big_entry_can_bypass_the_reader_once_its_buffer_is_empty():
    reader = protocol.PushReader()
    reader.feed(protocol.encode_push_head("b/big", 10_000) + b"abc")
    assert reader.next_event() == ("entry", "b/big", 10_000)
    assert reader.next_event() == ("data", b"abc")
    assert reader.next_event() is None and reader.buffered() == 0
    assert reader.data_left() == 9_997
    reader.skip(9_997)  # spliced straight from the socket into the file
    assert reader.data_left() == 0
    reader.feed(protocol.encode_push_tail(10_000, "00ff") + protocol.encode_push_end())
    assert reader.next_event() == ("trailer", "00ff")
    assert reader.next_event() == ("end",)


def test_skip_is_refused_while_bytes_are_buffered_or_beyond_the_entry():
    reader = protocol.PushReader()
    reader.feed(protocol.encode_push_head("b/k", 5) + b"ab")
    reader.next_event()
    with pytest.raises(ValueError):
        reader.skip(3)  # "ab" is still buffered: skipping would reorder the file
    reader.next_event()
    with pytest.raises(ValueError):
        reader.skip(4)


@pytest.mark.parametrize("frame", [
    {"key": "b/k"},                      # no size
    {"key": "b/k", "size": -1},
    {"key": "b/k", "size": "3"},
    {"key": 7, "size": 3},
    {"size": 3},
    {"key": "b/k", "size": limits.CHUNK_MAX_BYTES + 1},
])
def test_a_malformed_entry_is_refused_before_any_of_its_bytes(frame):
    reader = protocol.PushReader()
    reader.feed(protocol.encode(frame))
    with pytest.raises((BadRequest, ProtocolError)):
        reader.next_event()


def test_a_trailer_that_disagrees_with_the_entrys_size_is_a_protocol_error():
    reader = protocol.PushReader()
    reader.feed(protocol.encode_push_head("b/k", 2) + b"ab" + protocol.encode_push_tail(3, "00"))
    reader.next_event(), reader.next_event()
    with pytest.raises(ProtocolError):
        reader.next_event()


def test_bytes_after_the_end_of_a_stream_are_a_protocol_error():
    reader = protocol.PushReader()
    reader.feed(protocol.encode_push_end() + protocol.encode({"op": "health"}))
    with pytest.raises(ProtocolError):
        reader.next_event()


def test_push_is_a_request_of_its_own_and_its_answers_name_their_key():
    assert protocol.check_request({"op": "push"}) == "push"
    assert protocol.push_result("b/k") == {"key": "b/k", "ok": True}
    assert protocol.push_result("b/k", {"error": "exists", "message": "m"}) == {
        "key": "b/k", "error": "exists", "message": "m"}


# --- one node, fed a stream by hand ------------------------------------------------------
def keys_for(node: int, n: int, prefix: str) -> list[str]:
    """n keys whose names place them on node (numeric basenames: digits % nodes)."""
    return [f"{prefix}{i:05d}" for i in range(node, node + NODES * n, NODES)]


def push_by_hand(cluster, node: int, payload: bytes) -> list[dict]:
    """Send a push stream to node; every answer frame until the connection closes."""
    with socket.create_connection(("127.0.0.1", cluster.ports[node]), timeout=30) as s:
        s.sendall(protocol.encode({"op": "push"}) + payload)
        answers = []
        while (frame := recv_frame(s)) is not None:
            answers.append(frame)
            if "key" not in frame:
                break
    return answers


def stored(cluster, node: int, key: str) -> bytes | None:
    path = cluster.data_dirs[node] / key
    return path.read_bytes() if path.is_file() else None


def test_a_stream_with_failures_in_the_middle_stores_every_other_entry_and_names_each_failure(shared, b):
    good = keys_for(1, 6, f"{b}/in/")
    existing, corrupt, big, big_corrupt = keys_for(1, 10, f"{b}/in/")[6:]
    misplaced = keys_for(2, 1, f"{b}/in/")[0]
    big_data = os.urandom(3 * limits.PUSH_INLINE_MAX_BYTES + 5)  # spliced, hashed from the page cache
    shared.s4ctl("cp", "-", f"s4://{existing}", input=b"first\n")
    payload = (entry(good[0], b"zero\n") + entry(good[1], b"")
               + entry(existing, b"second\n")                                  # immutable: refused
               + entry(good[2], b"two\n")
               + entry(corrupt, b"flipped\n", xxhash.xxh3_64_hexdigest(b"original\n"))
               + entry(big, big_data) + entry(good[3], b"three\n")
               + entry(big_corrupt, big_data, xxhash.xxh3_64_hexdigest(b"other"))
               + entry(misplaced, b"not mine\n")                              # belongs on node 2
               + entry("_tmp/escape", b"x") + entry(good[4], b"four\n")
               + protocol.encode_push_end())
    answers = push_by_hand(shared, 1, payload)
    node = shared.address(1)
    by_key = {a["key"]: a for a in answers[:-1]}
    assert [a["key"] for a in answers[:-1]] == [
        good[0], good[1], existing, good[2], corrupt, big, good[3], big_corrupt, misplaced,
        "_tmp/escape", good[4]]
    assert answers[-1] == {"ok": True, "count": 11, "failed": 5}
    for key in (good[0], good[1], good[2], big, good[3], good[4]):
        assert by_key[key] == {"key": key, "ok": True}
    for key, code in ((existing, "exists"), (corrupt, "checksum_mismatch"),
                      (big_corrupt, "checksum_mismatch"), (misplaced, "bad_request"),
                      ("_tmp/escape", "bad_key")):
        assert by_key[key]["error"] == code, by_key[key]
        assert f"s4://{key}" in by_key[key]["message"] and node in by_key[key]["message"], by_key[key]
    assert stored(shared, 1, good[0]) == b"zero\n" and stored(shared, 1, good[1]) == b""
    assert stored(shared, 1, big) == big_data
    assert stored(shared, 1, existing) == b"first\n"
    assert stored(shared, 1, corrupt) is None and stored(shared, 1, big_corrupt) is None
    assert all(stored(shared, i, misplaced) is None for i in range(NODES))
    assert not (shared.data_dirs[1] / "_tmp" / "escape").exists()
    assert shared.s4ctl("cp", f"s4://{good[3]}", "-").stdout == "three\n"  # checksum stored right
    assert shared.temp_files() == []


def test_a_sender_that_dies_in_the_middle_of_an_entry_leaves_no_key_and_no_temp_file(shared, b):
    done, cut = keys_for(0, 2, f"{b}/in/")
    data = os.urandom(4 * limits.PUSH_INLINE_MAX_BYTES)
    with socket.create_connection(("127.0.0.1", shared.ports[0]), timeout=30) as s:
        s.sendall(protocol.encode({"op": "push"}) + entry(done, b"whole\n")
                  + protocol.encode_push_head(cut, len(data)) + data[:len(data) // 2])
        assert recv_frame(s) == {"key": done, "ok": True}
        wait_until(lambda: list((shared.data_dirs[0] / "_tmp").glob("push-*")), 10,
                   "the cut entry's temp file")
    wait_until(lambda: not shared.temp_files(), 10, "the cut entry's temp file to go")
    assert stored(shared, 0, done) == b"whole\n"
    assert stored(shared, 0, cut) is None


# --- the sender, in this process, against a real node ------------------------------------
@asynccontextmanager
async def running(nodes: list):
    """A Pusher serving as a daemon's does (its streams in a nursery of its own)."""
    pusher = push.Pusher(nodes, DaemonConfig())
    failed: list[Exception] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(pusher.run)
        try:
            yield pusher
        except Exception as e:  # raised as itself, not in the nursery's ExceptionGroup
            failed.append(e)
        nursery.cancel_scope.cancel()
    if failed:
        raise failed[0]


def pusher_for(cluster):
    return running([("127.0.0.1", p) for p in cluster.ports])


async def test_the_pusher_hashes_while_sending_when_given_no_digest_and_reuses_one_connection(
        shared, b, tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"small\n")
    big.write_bytes(os.urandom(5 << 20))
    keys = [f"{b}/p/{i:03d}" for i in (1, 4, 7, 10)]
    async with pusher_for(shared) as pusher:
        await pusher.push(1, keys[0], str(small), None)
        await pusher.push(1, keys[1], str(big), None, big.stat().st_size)
        await trio.sleep(limits.PUSH_LINGER_S + 0.3)  # the stream ended: its connection is pooled
        assert len(pusher.peers[1].pool) == 1
        pooled = pusher.peers[1].pool[0][1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.push, 1, keys[2], str(small), xxhash.xxh3_64_hexdigest(b"small\n"))
            nursery.start_soon(pusher.push, 1, keys[3], str(big), None)
        await trio.sleep(limits.PUSH_LINGER_S + 0.3)
        assert [conn for _, conn in pusher.peers[1].pool] == [pooled]
    for key, path in zip(keys, (small, big, small, big)):
        assert stored(shared, 1, key) == path.read_bytes()
        assert os.getxattr(shared.data_dirs[1] / key, "user.s4.xxh3").decode() == \
            xxhash.xxh3_64_hexdigest(path.read_bytes())


async def test_a_wrong_digest_is_refused_by_the_receiver_naming_key_and_node(shared, b, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"these bytes\n")
    with pytest.raises(ChecksumMismatch, match=f"s4://{b}/p/002.*{shared.address(2)}"):
        async with pusher_for(shared) as pusher:
            await pusher.push(2, f"{b}/p/002", str(path), xxhash.xxh3_64_hexdigest(b"other bytes\n"))
    assert stored(shared, 2, f"{b}/p/002") is None


async def test_an_unreachable_node_fails_the_push_naming_key_and_node(tmp_path):
    port = free_port()  # nothing listens there
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(Unavailable, match=f"cannot reach 127.0.0.1:{port} to store s4://b/k"):
        async with running([("127.0.0.1", port)]) as pusher:
            await pusher.push(0, "b/k", str(path), None)


# --- whole maps ------------------------------------------------------------------------------
SPLIT = "split -n r/3 -d -a 3 - ''; printf '%s\\n' 00?"  # outputs 000, 001, 002: one per node


def put_inputs(cluster, n: int, line: bytes = b"0123456789abcde\n", lines: int = 64) -> None:
    src = cluster.root / "inputs"
    src.mkdir()
    for i in range(n):
        (src / f"{i:04d}").write_bytes(line * lines)
    cluster.s4ctl("cp", "-r", str(src), "s4://b/in")


def test_map_to_n_over_many_keys_pushes_every_output_to_its_node_whole(cluster):
    put_inputs(cluster, 90)
    cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out/", SPLIT)
    for i in range(90):
        for j in range(3):  # 64 lines dealt round robin: 22, 21, 21
            key = f"b/out/{i:04d}/{j:03d}"
            assert stored(cluster, j, key) == b"0123456789abcde\n" * (22 if j == 0 else 21), key
    assert cluster.temp_files() == []
    # a map verifies each input against the checksum stored when it was published
    cluster.s4ctl("map", "s4://b/out/", "s4://b/count/", "wc -c")
    assert cluster.s4ctl("cp", "s4://b/count/0042/001", "-").stdout.strip() == str(16 * 21)


def test_map_to_n_whose_output_exists_on_its_node_fails_naming_key_and_node_and_leaves_it(cluster):
    put_inputs(cluster, 30)
    clash = "s4://b/out/0018/002"  # output 002 of input 0018: pushed from node 0 to node 2
    assert (placement.node_index("b/in/0018", NODES), placement.node_index(clash[5:], NODES)) == (0, 2)
    cluster.s4ctl("cp", "-", clash, input=b"already here\n")
    proc = cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out/", SPLIT, check=False)
    assert_one_line_error(proc, "exists", clash)
    assert cluster.s4ctl("cp", clash, "-").stdout == "already here\n"
    wait_until(lambda: not cluster.temp_files(), 10, "no temp files")
    for i in range(NODES):  # whatever landed is whole: every other output is a third of its input
        for path in (cluster.data_dirs[i] / "b" / "out").rglob("*"):
            if path.is_file() and f"s4://{path.relative_to(cluster.data_dirs[i]).as_posix()}" != clash:
                assert path.read_bytes() in (b"0123456789abcde\n" * 22, b"0123456789abcde\n" * 21), path
                assert i == int(path.name) % NODES


def test_map_to_n_against_a_node_whose_io_slots_are_all_taken_retries_until_it_frees_up(make_cluster):
    cluster = make_cluster(args=("--max-io-jobs", "1"))
    put_inputs(cluster, 6)
    held = socket.create_connection(("127.0.0.1", cluster.ports[1]), timeout=30)
    held.sendall(protocol.encode({"op": "put", "key": "b/hold/001"}))
    assert recv_frame(held) == {"ok": True}  # node 1's only io slot is this put's now
    mapping = subprocess.Popen([S4CTL, "map-to-n", "s4://b/in/", "s4://b/out/", SPLIT],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    time.sleep(limits.BUSY_WAIT_S + 1)  # pushes to node 1 have been answered busy at least once
    held.sendall(protocol.END_OF_STREAM + protocol.encode({"xxh3": xxhash.xxh3_64_hexdigest(b""),
                                                           "size": 0}))
    assert recv_frame(held)["ok"]
    held.close()
    _, err = mapping.communicate(timeout=120)
    assert mapping.returncode == 0, err
    assert len([p for p in (cluster.data_dirs[1] / "b" / "out").rglob("*") if p.is_file()]) == 6


def test_a_node_killed_mid_stream_fails_the_map_naming_it_and_leaves_nothing_partial(cluster):
    # big outputs for node 1 from every node: several pushes in flight when it dies
    src = cluster.root / "inputs"
    src.mkdir()
    for i in range(12):
        (src / f"{i:04d}").write_bytes(os.urandom(256))
    cluster.s4ctl("cp", "-r", str(src), "s4://b/in")
    cmd = "for j in 1 4 7; do head -c 16M /dev/zero > 00$j; done; printf '%s\\n' 001 004 007"
    mapping = subprocess.Popen([S4CTL, "map-to-n", "s4://b/in/", "s4://b/out/", cmd],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    wait_until(lambda: list((cluster.data_dirs[1] / "_tmp").glob("push-*")), 60,
               "a push landing on node 1")
    cluster.kill(1)
    _, err = mapping.communicate(timeout=120)
    assert_one_line_error(subprocess.CompletedProcess([], mapping.returncode, b"", err),
                          cluster.address(1))
    wait_until(lambda: not [p for i in (0, 2) for p in (cluster.data_dirs[i] / "_tmp").iterdir()], 10,
               "the senders' temp files to go")
    cluster.start(1)  # its sweep at start removes what the kill left
    assert not list((cluster.data_dirs[1] / "_tmp").iterdir())
    whole = xxhash.xxh3_64_hexdigest(bytes(16 << 20))
    for path in (cluster.data_dirs[1] / "b" / "out").rglob("*"):  # what was published is whole
        if path.is_file():
            assert path.stat().st_size == 16 << 20, path
            assert os.getxattr(path, "user.s4.xxh3").decode() == whole, path


def test_a_node_that_stalls_mid_stream_fails_the_pushing_map_naming_the_key_and_it(make_cluster):
    cluster = make_cluster(args=("--idle-timeout", "2"))
    src = cluster.root / "inputs"
    src.mkdir()
    for i in range(6):
        (src / f"{i:04d}").write_bytes(b"x\n")
    cluster.s4ctl("cp", "-r", str(src), "s4://b/in")
    cmd = "head -c 64M /dev/zero > 001; echo 001"  # every output belongs on node 1
    mapping = subprocess.Popen([S4CTL, "map-to-n", "s4://b/in/", "s4://b/out/", cmd],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    wait_until(lambda: list((cluster.data_dirs[1] / "_tmp").glob("push-*")), 60,
               "a push landing on node 1")
    cluster.signal(1, signal.SIGSTOP)  # its connections stay open; nothing moves
    try:
        _, err = mapping.communicate(timeout=120)
    finally:
        cluster.kill(1)
    assert_one_line_error(subprocess.CompletedProcess([], mapping.returncode, b"", err),
                          f"to {cluster.address(1)}", "s4://b/out/", "no progress")
    wait_until(lambda: not [p for i in (0, 2) for p in (cluster.data_dirs[i] / "_tmp").iterdir()], 10,
               "the senders' temp files to go")
    cluster.start(1)
    assert not list((cluster.data_dirs[1] / "_tmp").iterdir())
    whole = xxhash.xxh3_64_hexdigest(bytes(64 << 20))
    for path in (cluster.data_dirs[1] / "b" / "out").rglob("*"):
        if path.is_file():
            assert os.getxattr(path, "user.s4.xxh3").decode() == whole, path

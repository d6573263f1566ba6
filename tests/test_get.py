"""The get op: ranges (offset/length) on the wire and in the node, and a get that
opens its key once (its checksum, verification and bytes all from one fd)."""
from __future__ import annotations

import io
import os
import socket
import time

import pytest
import xxhash

from s4ctl.client import Client
from s4d import protocol
from s4d.errors import BadRequest, ChecksumMismatch
from tests.cluster import recv_exactly, recv_frame

MiB = 1024 * 1024


# --- the request shape, without I/O ---------------------------------------------------------
@pytest.mark.parametrize("fields", [{}, {"offset": 0}, {"length": 0}, {"offset": 5, "length": 7},
                                    {"offset": None, "length": None}])
def test_a_get_may_carry_a_non_negative_integer_offset_and_length(fields):
    assert protocol.check_request({"op": "get", "key": "b/k", **fields}) == "get"


@pytest.mark.parametrize("fields", [{"offset": -1}, {"length": -5}, {"offset": 1.5}, {"length": "3"},
                                    {"offset": True}, {"length": 1 << 60}])
def test_a_get_with_a_negative_or_non_integer_range_is_a_bad_request(fields):
    with pytest.raises(BadRequest):
        protocol.check_request({"op": "get", "key": "b/k", **fields})


def test_a_range_on_any_op_but_get_is_a_bad_request():
    with pytest.raises(BadRequest, match="get only"):
        protocol.check_request({"op": "eval", "key": "b/k", "cmd": "cat", "offset": 3})


@pytest.mark.parametrize("fields, size, expected", [
    ({}, 10, (0, 10)),
    ({"offset": 3}, 10, (3, 7)),
    ({"length": 4}, 10, (0, 4)),
    ({"offset": 8, "length": 5}, 10, (8, 2)),    # past the end: up to the end
    ({"offset": 10, "length": 5}, 10, (10, 0)),  # at the end: nothing
    ({"offset": 50, "length": 5}, 10, (10, 0)),  # beyond it: nothing
    ({"offset": 0, "length": 0}, 10, (0, 0)),
    ({"offset": 2}, 0, (0, 0)),
])
def test_a_range_is_clipped_to_the_key_as_a_read_past_the_end_is(fields, size, expected):
    assert protocol.get_range(fields, size) == expected


# --- on the wire ------------------------------------------------------------------------------
def _raw_get(node, request: dict) -> tuple[dict, bytes]:
    with socket.create_connection(node, timeout=30) as sock:
        sock.sendall(protocol.encode(request))
        reply = recv_frame(sock)
        data = recv_exactly(sock, reply["size"]) if reply.get("ok") else b""
    return reply, data


def test_a_ranged_get_sends_only_its_range_with_the_xxh3_of_those_bytes_and_the_keys_size(shared, b):
    data = os.urandom(5 * MiB + 17)  # over one hashing window, so hashing starts mid-window
    key = f"{b}/r/k"
    client = Client(_nodes(shared))
    client.put(key, stream=io.BytesIO(data))
    node = client.node_for(key)
    for offset, length in [(0, 10), (4 * MiB + 3, MiB + 1), (len(data) - 5, 100), (len(data) + 1, 3)]:
        reply, got = _raw_get(node, {"op": "get", "key": key, "offset": offset, "length": length})
        assert got == data[offset:offset + length]
        mtime = reply.pop("mtime")
        assert reply == {"ok": True, "size": len(got), "xxh3": xxhash.xxh3_64_hexdigest(got),
                         "total": len(data)}
        assert abs(mtime - time.time()) < 600
    reply, got = _raw_get(node, {"op": "get", "key": key})  # the whole key: unchanged on the wire
    assert got == data and set(reply) == {"ok", "size", "xxh3"}


def test_a_ranged_get_checks_the_transfer_and_checks_the_disk_only_when_asked_to_verify(shared, b):
    data = os.urandom(2 * MiB)
    key = f"{b}/c/k"
    client = Client(_nodes(shared))
    client.put(key, stream=io.BytesIO(data))
    path = shared.key_path(shared.node_of(f"s4://{key}"), f"s4://{key}")
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # one bit flipped on disk, inside the range read below
        f.seek(MiB)
        f.write(bytes([data[MiB] ^ 1]))
    os.chmod(path, 0o444)

    got = client.get_bytes(key, MiB - 10, 20)  # hashed by the node as it read it: sent as it is
    assert got != data[MiB - 10:MiB + 10] and len(got) == 20
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        client.get_bytes(key, MiB - 10, 20, verify_first=True)
    with pytest.raises(ChecksumMismatch):
        client.get_bytes(key)  # a whole key is checked against the checksum stored at write time


def test_a_get_serves_the_file_it_opened_when_the_key_is_deleted_and_put_again_meanwhile(make_cluster):
    """The get waits for the only io slot between opening the key and sending it;
    meanwhile the key is deleted and published again with other bytes (by a map,
    which needs no io slot). Before: the checksum came from the old file and the
    bytes from the new one, and a good key was reported corrupt."""
    cluster = make_cluster(nodes=1, args=("--max-io-jobs", "1"))
    client = Client(_nodes(cluster))
    old, new = os.urandom(MiB), os.urandom(MiB)
    client.put("b/dst/x", stream=io.BytesIO(old))
    client.put("b/src/x", stream=io.BytesIO(new))
    node = client.nodes[0]

    holder = socket.create_connection(node, timeout=30)  # a put that holds the io slot, stalled
    holder.sendall(protocol.encode({"op": "put", "key": "b/hold/y"}))
    assert recv_frame(holder) == {"ok": True}
    holder.sendall(protocol.encode_chunk_header(MiB) + b"x" * 1000)

    getter = socket.create_connection(node, timeout=30)
    getter.sendall(protocol.encode({"op": "get", "key": "b/dst/x"}))
    time.sleep(0.3)  # the node has the get and waits for the slot (up to 2 s, then busy)
    client.rm("b/dst/x")
    client.map("b/src/", "b/dst/", "cat")  # b/dst/x again, now holding `new`
    holder.close()  # the slot frees; the get goes on

    reply = recv_frame(getter)
    assert reply.get("ok"), reply
    got = recv_exactly(getter, reply["size"])
    getter.close()
    assert got == old and reply["xxh3"] == xxhash.xxh3_64_hexdigest(old)
    assert client.get_bytes("b/dst/x") == new


def _nodes(cluster) -> list[tuple[str, int]]:
    return [("127.0.0.1", p) for p in cluster.ports]


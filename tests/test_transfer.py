"""s4d/transfer.py on real sockets: trio socketpairs and loopback TCP, real files.

No mocks: the kernel's EAGAIN, EPIPE and ECONNRESET paths are provoked with
small socket buffers, closed peers and RST-on-close (SO_LINGER 0). Timeouts
run on trio's autojump clock where the test is about the logic, not the
wall clock, so they are instant and immune to a loaded machine.
"""
import os
import socket
import struct

import pytest
import trio
import xxhash

from s4d import checksum, limits, protocol, transfer
from s4d.errors import ProtocolError, Timeout, Unavailable

MiB = 1024 * 1024


async def socketpair():
    a, b = trio.socket.socketpair()
    return a, b


async def tcp_pair():
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    listener.close()
    return client, server


PAIRS = {"socketpair": socketpair, "tcp": tcp_pair}


def small_buffers(sender, receiver):
    """A send buffer far below one sendfile/splice call, so every big send meets
    EAGAIN. On TCP it stays above two loopback segments (64 KiB MSS): below
    that, delayed ACKs stall each round trip for 40 ms."""
    size = 16 * 1024 if sender.family == socket.AF_UNIX else 256 * 1024
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def reset_on_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def recv_all(sock, into: bytearray, chunk=64 * 1024):
    while data := await sock.recv(chunk):
        into += data


def write_file(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


async def test_frames_cross_a_socketpair():
    # the former tests/test_trio_smoke.py: trio runs and a frame survives the trip
    a, b = trio.socket.socketpair()
    with a, b, transfer.Idle(5, "test") as idle:
        await transfer.send_frame(a, {"op": "health"}, idle)
        assert await transfer.recv_frame(b, idle) == {"op": "health"}


async def test_recv_frame_returns_none_when_the_peer_closes_between_frames():
    a, b = trio.socket.socketpair()
    with b, transfer.Idle(5, "test") as idle:
        await transfer.send_frame(a, {"op": "health"}, idle)
        a.close()
        assert await transfer.recv_frame(b, idle) == {"op": "health"}
        assert await transfer.recv_frame(b, idle) is None


async def test_a_peer_closing_mid_frame_is_a_protocol_error():
    a, b = trio.socket.socketpair()
    with b, transfer.Idle(5, "test") as idle:
        await a.send(protocol.encode({"op": "health"})[:6])
        a.close()
        with pytest.raises(ProtocolError):
            await transfer.recv_frame(b, idle)


@pytest.mark.parametrize("kind", PAIRS)
async def test_sendfile_of_a_zero_byte_file_sends_nothing(kind, tmp_path):
    a, b = await PAIRS[kind]()
    path = write_file(tmp_path / "empty", b"")
    fd = os.open(path, os.O_RDONLY)
    with a, b, transfer.Idle(5, "test") as idle:
        try:
            await transfer.sendfile(a, fd, 0, idle)
        finally:
            os.close(fd)
        await transfer.send_frame(a, {"after": True}, idle)
        # the first thing the peer sees is the frame sent after the empty file
        assert await transfer.recv_frame(b, idle) == {"after": True}


@pytest.mark.parametrize("kind", PAIRS)
async def test_sendfile_moves_a_multi_mib_file_through_a_small_send_buffer(kind, tmp_path):
    # over SENDFILE_BYTES and CHECKPOINT_EVERY_BYTES, with an odd tail
    size = limits.CHECKPOINT_EVERY_BYTES + limits.SENDFILE_BYTES + 12345
    data = os.urandom(size)
    path = write_file(tmp_path / "big", data)
    a, b = await PAIRS[kind]()
    small_buffers(a, b)
    received = bytearray()
    seen_while_sending = []
    sending = True

    async def receiver():
        while len(received) < size:
            chunk = await b.recv(64 * 1024)
            assert chunk, "sender closed early"
            received.extend(chunk)
            seen_while_sending.append(sending)

    fd = os.open(path, os.O_RDONLY)
    with a, b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            with transfer.Idle(30, "test") as idle:
                await transfer.sendfile(a, fd, size, idle)
            sending = False
        os.close(fd)
    assert bytes(received) == data
    # trio is single-threaded: the receiver ran while sendfile was still going,
    # so sendfile met EAGAIN and waited for the socket to become writable
    assert any(seen_while_sending)


async def test_sendfile_of_a_file_shorter_than_announced_is_an_error(tmp_path):
    path = write_file(tmp_path / "short", b"0123456789")
    a, b = trio.socket.socketpair()
    fd = os.open(path, os.O_RDONLY)
    with a, b, transfer.Idle(5, "test") as idle:
        try:
            with pytest.raises(Unavailable, match="shrank"):
                await transfer.sendfile(a, fd, 11, idle)
        finally:
            os.close(fd)


@pytest.mark.parametrize("kind", PAIRS)
async def test_sendfile_to_a_peer_that_went_away_is_unavailable(kind, tmp_path):
    data = os.urandom(4 * MiB)
    path = write_file(tmp_path / "f", data)
    a, b = await PAIRS[kind]()
    small_buffers(a, b)
    if kind == "tcp":
        reset_on_close(b)
    b.close()
    fd = os.open(path, os.O_RDONLY)
    with a, transfer.Idle(5, "test") as idle:
        try:
            with pytest.raises(Unavailable):
                await transfer.sendfile(a, fd, len(data), idle)
        finally:
            os.close(fd)


def chunked(data: bytes, sizes) -> bytes:
    out, offset = bytearray(), 0
    for n in sizes:
        out += protocol.encode_chunk_header(n) + data[offset:offset + n]
        offset += n
    assert offset == len(data)
    return bytes(out + protocol.END_OF_STREAM)


async def receive_into_file(sock, path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with transfer.Idle(30, "test") as idle:
            size, digest = await transfer.recv_stream_to_file(sock, fd, idle)
            assert digest == checksum.hash_file(str(path))  # hashed as it landed
            return size
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", PAIRS)
async def test_a_zero_length_stream_makes_an_empty_file_and_leaves_the_trailer_unread(kind, tmp_path):
    a, b = await PAIRS[kind]()
    out = tmp_path / "out"
    with a, b:
        await a.send(protocol.END_OF_STREAM + protocol.encode({"xxh3": "x", "size": 0}))
        assert await receive_into_file(b, out) == 0
        assert out.read_bytes() == b""
        with transfer.Idle(5, "test") as idle:
            assert await transfer.recv_frame(b, idle) == {"xxh3": "x", "size": 0}


@pytest.mark.parametrize("kind", PAIRS)
async def test_a_chunked_stream_lands_in_the_file_byte_for_byte(kind, tmp_path):
    sizes = [1, 7, limits.SPLICE_BYTES + 3, 3 * MiB, 65536, 2]
    data = os.urandom(sum(sizes))
    wire = chunked(data, sizes) + protocol.encode({"after": 1})
    a, b = await PAIRS[kind]()
    small_buffers(a, b)
    out = tmp_path / "out"
    with a, b:
        async with trio.open_nursery() as nursery:
            async def sender():
                # uneven sends: headers and data split across writes
                view, step = memoryview(wire), 1
                while view:
                    n = await a.send(view[:step])
                    view = view[n:]
                    step = step * 3 + 1 if step < MiB else 5
            nursery.start_soon(sender)
            total = await receive_into_file(b, out)
        with transfer.Idle(5, "test") as idle:
            assert await transfer.recv_frame(b, idle) == {"after": 1}
    assert total == len(data)
    assert out.read_bytes() == data


async def test_a_peer_that_resets_mid_stream_gives_unavailable(tmp_path):
    a, b = await tcp_pair()
    with b:
        await a.send(protocol.encode_chunk_header(8 * MiB) + os.urandom(100_000))
        reset_on_close(a)
        a.close()
        with pytest.raises(Unavailable):
            await receive_into_file(b, tmp_path / "out")


@pytest.mark.parametrize("cut", ["mid-chunk", "mid-header"])
async def test_a_peer_that_closes_mid_stream_gives_unavailable(cut, tmp_path):
    a, b = trio.socket.socketpair()
    with b:
        if cut == "mid-chunk":
            await a.send(protocol.encode_chunk_header(MiB) + b"x" * 1000)
        else:
            await a.send(protocol.encode_chunk_header(10) + b"0123456789" + b"\x00\x00\x00")
        a.close()
        with pytest.raises(Unavailable):
            await receive_into_file(b, tmp_path / "out")


async def test_a_forged_huge_chunk_header_is_a_protocol_error(tmp_path):
    a, b = trio.socket.socketpair()
    with a, b:
        await a.send(struct.pack(">Q", limits.CHUNK_MAX_BYTES + 1))
        with pytest.raises(ProtocolError):
            await receive_into_file(b, tmp_path / "out")


async def test_an_idle_scope_times_out_when_the_peer_sends_nothing(autojump_clock):
    a, b = trio.socket.socketpair()
    with a, b:
        started = trio.current_time()
        with pytest.raises(Timeout, match="no progress for 30s"):
            with transfer.Idle(30, "waiting for a request") as idle:
                await transfer.recv_frame(b, idle)
        assert 30 <= trio.current_time() - started < 31


async def test_an_idle_scope_times_out_on_a_stream_that_stalls_mid_chunk(autojump_clock, tmp_path):
    a, b = trio.socket.socketpair()
    with a, b:
        await a.send(protocol.encode_chunk_header(MiB) + b"x" * 1000)
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with pytest.raises(Timeout):
                with transfer.Idle(10, "put") as idle:
                    await transfer.recv_stream_to_file(b, fd, idle)
        finally:
            os.close(fd)


async def test_an_idle_scope_times_out_in_real_time_too():
    a, b = trio.socket.socketpair()
    with a, b:
        with trio.fail_after(30):  # generous: only the Idle scope should fire
            with pytest.raises(Timeout):
                with transfer.Idle(0.2, "test") as idle:
                    await transfer.recv_frame(b, idle)


async def test_a_slow_but_moving_transfer_outlives_the_idle_timeout(autojump_clock):
    a, b = trio.socket.socketpair()
    wire = protocol.encode({"op": "health", "pad": "x" * 20})

    async def trickle():
        for i in range(len(wire)):
            await trio.sleep(1)  # each byte well inside the 3 s idle limit
            await a.send(wire[i:i + 1])

    with a, b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            started = trio.current_time()
            with transfer.Idle(3, "test") as idle:
                frame = await transfer.recv_frame(b, idle)
        assert frame["op"] == "health"
        assert trio.current_time() - started >= len(wire) - 1 > 3


async def test_hash_range_async_matches_xxh3_for_small_and_large_ranges(tmp_path):
    for size in (0, 10, limits.HASH_INLINE_MAX_BYTES + 1):
        data = os.urandom(size + 7)
        path = write_file(tmp_path / f"f{size}", data)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert await transfer.hash_range_async(fd, 0, size) == xxhash.xxh3_64(data[:size]).hexdigest()
            assert await transfer.hash_range_async(fd, 7, size + 7) == xxhash.xxh3_64(data[7:]).hexdigest()
        finally:
            os.close(fd)

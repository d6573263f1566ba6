"""Moving bytes between sockets and files inside the daemon (trio).

Bulk data never passes through Python: `sendfile` goes file -> socket with
os.sendfile, `recv_stream_to_file` goes socket -> pipe -> file with
os.splice. Both follow trio's raw-fd shape: try the syscall, on
BlockingIOError await wait_readable/wait_writable, retry; a checkpoint every
few MiB keeps long transfers cancellable. Frames (metadata) use the socket's
ordinary recv/send and read exactly what the decoder asks for, so the bytes
after a frame stay in the kernel for splice.

Every wait on the peer happens inside an `Idle` scope: no progress for its
seconds -> errors.Timeout. Progress pushes the deadline back, so a slow but
moving transfer of any size is fine and a stalled one is cut.

Integrity is hashed where the bytes land: `recv_stream_to_file` hashes the
file a window behind the splice (`checksum.Trailing`, mmap'd page cache, in
a thread), so the bytes stay out of Python and the digest is ready soon
after the last byte.
"""
from __future__ import annotations

import errno
import fcntl
import os
from typing import Callable

import trio

from s4d import checksum, limits, protocol
from s4d.errors import NoSpace, ProtocolError, Timeout, Unavailable

_F_SETPIPE_SZ = 1031


class Idle:
    """A cancel scope whose deadline moves back on every `touch()`.

    With reset=False it is a plain deadline: for a small message (a request
    frame) that must arrive whole in time, however slowly it trickles."""

    def __init__(self, seconds: float, what: str, reset: bool = True):
        self.seconds = seconds
        self.what = what
        self.reset = reset

    def __enter__(self) -> "Idle":
        self._scope = trio.CancelScope(deadline=trio.current_time() + self.seconds)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        handled = self._scope.__exit__(*exc)
        if self._scope.cancelled_caught:
            raise Timeout(f"{self.what}: no progress for {self.seconds:g}s" if self.reset
                          else f"{self.what}: not done in {self.seconds:g}s")
        return handled

    def touch(self) -> None:
        if self.reset:
            self._scope.deadline = trio.current_time() + self.seconds


def _broken(e: OSError, what: str) -> Exception:
    if e.errno == errno.ENOSPC:
        return NoSpace("no space left")
    return Unavailable(f"{what}: {e.strerror or e}")


async def recv_exactly(sock, n: int, idle: Idle) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            data = await sock.recv(n - len(buf))
        except OSError as e:
            raise _broken(e, "connection lost") from e
        if not data:
            raise Unavailable("connection closed mid-message")
        buf += data
        idle.touch()
    return bytes(buf)


async def recv_frame(sock, idle: Idle) -> dict | None:
    """The next frame, or None if the peer closed cleanly between frames."""
    decoder = protocol.FrameDecoder()
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        try:
            data = await sock.recv(decoder.bytes_wanted())
        except OSError as e:
            raise _broken(e, "connection lost") from e
        if not data:
            if decoder.pending:
                raise ProtocolError("connection closed mid-frame")
            return None
        decoder.feed(data)
        idle.touch()


async def send_all(sock, data: bytes, idle: Idle) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = await sock.send(view)
        except OSError as e:
            raise _broken(e, "connection lost") from e
        view = view[sent:]
        idle.touch()


async def send_frame(sock, msg: dict, idle: Idle) -> None:
    await send_all(sock, protocol.encode(msg), idle)


async def sendfile(sock, fd: int, size: int, idle: Idle, offset: int = 0) -> None:
    """Send `size` bytes of `fd` from `offset` with os.sendfile."""
    end = offset + size
    since_checkpoint = 0
    while offset < end:
        try:
            sent = os.sendfile(sock.fileno(), fd, offset, min(end - offset, limits.SENDFILE_BYTES))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as e:
            raise _broken(e, "connection lost while sending") from e
        if sent == 0:
            raise Unavailable("file shrank while sending")
        offset += sent
        since_checkpoint += sent
        idle.touch()
        if since_checkpoint >= limits.CHECKPOINT_EVERY_BYTES:
            since_checkpoint = 0
            await trio.lowlevel.checkpoint()


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, _F_SETPIPE_SZ, limits.PIPE_BYTES)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size: the default 64 KiB pipe still works
    return r, w


async def _splice_exactly(sock, fd: int, n: int, pipe: tuple[int, int], idle: Idle,
                          landed: Callable[[int], None]) -> None:
    r, w = pipe
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    since_checkpoint = 0
    while n:
        try:
            got = os.splice(sock.fileno(), w, min(n, limits.SPLICE_BYTES), flags=flags)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as e:
            raise _broken(e, "connection lost while receiving") from e
        if got == 0:
            raise Unavailable("connection closed mid-transfer")
        n -= got
        since_checkpoint += got
        left = got
        while left:  # the pipe holds `got` bytes; the file side never blocks for long
            try:
                left -= os.splice(r, fd, left, flags=os.SPLICE_F_MOVE)
            except OSError as e:
                raise _broken(e, "write failed") from e
        landed(got)
        idle.touch()
        if since_checkpoint >= limits.CHECKPOINT_EVERY_BYTES:
            since_checkpoint = 0
            await trio.lowlevel.checkpoint()


async def splice_to_file(sock, fd: int, n: int, idle: Idle, landed: Callable[[int], None]) -> None:
    """Receive exactly n raw bytes into fd at its file position (socket -> pipe ->
    file); landed(count) is called as they land."""
    pipe = _pipe()
    try:
        await _splice_exactly(sock, fd, n, pipe, idle, landed)
    finally:
        os.close(pipe[0])
        os.close(pipe[1])


async def recv_stream_to_file(sock, fd: int, idle: Idle) -> tuple[int, str]:
    """Receive a chunked stream into `fd` (opened read-write, empty); return the
    byte count and the xxh3 of what landed, hashed a window behind the writer."""
    pipe = _pipe()
    trailing = checksum.Trailing(fd)
    total = 0

    def landed(n: int) -> None:
        nonlocal total
        total += n
        trailing.advance(total)

    try:
        while True:
            n = protocol.decode_chunk_header(
                await recv_exactly(sock, protocol.CHUNK_HEADER_BYTES, idle))
            if n == 0:
                break
            await _splice_exactly(sock, fd, n, pipe, idle, landed)
    except BaseException:
        trailing.abort()
        raise
    finally:
        os.close(pipe[0])
        os.close(pipe[1])
    if total <= limits.HASH_INLINE_MAX_BYTES:
        return total, trailing.finish(total)
    return total, await trio.to_thread.run_sync(trailing.finish, total, limiter=HASHING)


# Hashing threads at once: each maps one window, so this bounds resident memory too.
HASHING = trio.CapacityLimiter(os.cpu_count() or 1)


async def hash_range_async(fd: int, start: int, end: int) -> str:
    """xxh3 of bytes [start, end) of fd: on the event loop when small, else in a
    hashing thread (the caller closes fd only after this returns: a cancelled
    to_thread call still waits for its thread)."""
    if end - start <= limits.HASH_INLINE_MAX_BYTES:
        return checksum.hash_range(fd, start, end)
    return await trio.to_thread.run_sync(checksum.hash_range, fd, start, end, limiter=HASHING)

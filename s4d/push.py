"""Node to node: map outputs moved to the nodes they belong on (op `push`).

Sender (`Pusher`, behind `Server.push`): a caller hands over one finished
file and awaits its entry's result. Entries for one peer queue up, and one
stream carries them back to back over one connection: the sender never waits
for an answer before it sends the next entry, small entries are batched into
few sends, big ones go by sendfile. A reader task beside the writer takes the
peer's answers in order and wakes each caller. A stream ends when nothing is
queued or in flight for PUSH_LINGER_S; its connection goes back to a small pool per peer
(bounded, idle ones closed) for the next stream. Connections are opened with
trio.open_tcp_stream (the resolver's address families, in order) under
CONNECT_TIMEOUT_S.

Receiver (`receive`, behind `Server.handle_push`): each entry lands like a
put: a temp file, hashed as it lands (in memory when small, a window behind
the splice when big), compared with the sender's xxh3 and published
atomically by Storage, never over an existing key. An entry that fails (the
key exists, a checksum mismatch, no space) leaves no key and no temp file and
is answered with one line naming the key and this node; the stream goes on.
A stream that breaks mid-entry (the sender died, a stall past the idle
timeout) discards that entry's temp file. Answers are batched too: they go
out whenever the receiver has read all it was sent.

What a caller of `push` sees, always naming the key and the peer: the peer's
answer for its entry; a busy peer is retried with jittered backoff up to
push_busy_timeout_s; an unreachable peer, or a stream that breaks, fails
every entry in flight on it (an entry whose answer never came may or may not
be stored: whole if it is).

Owns: the push exchange's I/O and the per-peer pools. The bytes on the wire
are protocol's (`PushReader`, `encode_push_*`); what to push is the
controller's, where files live is Storage's.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import select
import socket

import trio
import xxhash

from s4d import checksum, errors, keys, limits, placement, protocol, retry
from s4d.config import DaemonConfig
from s4d.errors import (BadRequest, Busy, ChecksumMismatch, NoSpace, ProtocolError, S4Error,
                        Unavailable)
from s4d.storage import Storage
from s4d.transfer import HASHING, Idle, send_all, sendfile, splice_to_file

log = logging.getLogger("s4d")

_RECV_ANSWERS_BYTES = 64 * 1024  # one recv of a peer's answers: hundreds of them


# --- sender ----------------------------------------------------------------------------
class _Entry:
    """One file waiting to be stored on a peer, and its caller's result."""

    __slots__ = ("key", "path", "digest", "size", "done", "error", "abandoned")

    def __init__(self, key: str, path: str, digest: str | None, size: int | None):
        self.key = key
        self.path = path
        self.digest = digest
        self.size = size
        self.done = trio.Event()
        self.error: S4Error | None = None
        self.abandoned = False  # its caller was cancelled: skip it if not yet sent

    def resolve(self, error: S4Error | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class _Peer:
    """The queue, the streams and the idle connections of one peer."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.name = f"{host}:{port}"
        self.queue: collections.deque[_Entry] = collections.deque()
        self.streams = 0  # lanes running
        self.pool: list[tuple[float, trio.SocketStream]] = []  # (idle since, connection)
        self._changed = trio.Event()

    def notify(self) -> None:
        """Wake whoever waits for news: entries queued, answers in."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


class _Stream:
    """What the writer and the reader of one stream share."""

    def __init__(self) -> None:
        self.inflight: collections.deque[_Entry] = collections.deque()
        self.answered = False  # an entry was answered on this stream
        self.ending = False    # the end frame went out
        self.finished = False  # the end was answered
        self.error: S4Error | None = None        # what broke the stream
        self.peer_error: S4Error | None = None   # an error frame without a key (takes precedence)


class Pusher:
    """Moves files to the nodes their keys belong on; one per daemon."""

    def __init__(self, nodes: list, config: DaemonConfig):
        self.nodes = nodes
        self.config = config
        self.idle_s = idle_timeout_s = config.idle_timeout_s
        # a pooled connection is dropped before the peer's own idle timeout would cut it
        self.pool_idle_s = min(limits.PUSH_POOL_IDLE_S, idle_timeout_s / 2)
        self.linger_s = min(limits.PUSH_LINGER_S, idle_timeout_s / 4)  # well inside the peer's patience
        self.peers: dict[int, _Peer] = {}
        self._nursery: trio.Nursery | None = None  # run()'s: where the streams live

    async def push(self, node: int, key: str, path: str, digest: str | None,
                   size: int | None = None) -> None:
        """Store the finished file at path as key on node; returns once it is
        published there, or raises one S4Error naming the key and the node.
        digest None: hashed here while it is sent."""
        peer = self.peers.get(node)
        if peer is None:
            peer = self.peers[node] = _Peer(*self.nodes[node])
        entry = _Entry(key, path, digest, size)
        peer.queue.append(entry)
        peer.notify()
        if self._nursery is None:
            raise Unavailable(f"cannot push {keys.url(key)}: this node is not serving")
        if peer.streams < limits.PUSH_STREAMS_PER_PEER:
            peer.streams += 1
            self._nursery.start_soon(self._lane, peer)
        try:
            await entry.done.wait()
        except BaseException:  # cancelled: a stream that has not opened its file skips it
            entry.abandoned = True
            raise
        if entry.error is not None:
            raise entry.error

    # --- where the streams run --------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Host the push streams for the daemon's life (started by Server.serve):
        a stream outlives the map that queued its first entry (others join it),
        so it runs here, not in that map's nursery. Also closes idle pooled
        connections."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._close_idle_forever()

    async def _close_idle_forever(self) -> None:
        while True:
            await trio.sleep(self.pool_idle_s / 2)
            now = trio.current_time()
            for peer in self.peers.values():
                keep = []
                for since, conn in peer.pool:
                    if now - since < self.pool_idle_s:
                        keep.append((since, conn))
                    else:
                        conn.socket.close()
                peer.pool = keep

    # --- connections ------------------------------------------------------------------
    async def _checkout(self, peer: _Peer) -> tuple[trio.SocketStream, bool]:
        """(connection, reused): an idle pooled one that is still open, else a new one."""
        now = trio.current_time()
        while peer.pool:
            since, conn = peer.pool.pop()
            if now - since < self.pool_idle_s and _still_open(conn.socket):
                return conn, True
            conn.socket.close()
        with trio.fail_after(self.config.connect_timeout_s):
            return await trio.open_tcp_stream(peer.host, peer.port), False

    def _checkin(self, peer: _Peer, conn: trio.SocketStream) -> None:
        if len(peer.pool) < limits.PUSH_POOL_PER_PEER:
            peer.pool.append((trio.current_time(), conn))
        else:
            conn.socket.close()

    # --- one peer's lane: streams, one after another, until its queue is empty ----------
    async def _lane(self, peer: _Peer) -> None:
        try:
            await self._run_lane(peer)
        except Exception as e:  # a bug: every waiting caller hears of it, the daemon stays up
            log.exception("pushing to %s", peer.name)
            self._fail_queued(peer, lambda url, e=e: errors.Internal(
                f"internal error pushing {url} to {peer.name}: {e!r}"))
        finally:
            peer.streams -= 1

    async def _run_lane(self, peer: _Peer) -> None:
        delays = busy_until = None
        stale_retried = False
        while peer.queue:
            try:
                conn, reused = await self._checkout(peer)
            except (OSError, trio.TooSlowError) as e:
                reason = "no answer in %gs" % self.config.connect_timeout_s \
                    if isinstance(e, trio.TooSlowError) else _reason(e)
                self._fail_queued(peer, lambda url: Unavailable(
                    f"cannot reach {peer.name} to store {url}: {reason}", node=peer.name))
                return
            st = _Stream()
            try:
                await self._stream(peer, conn, st)
            except Exception as e:  # a bug: this stream's entries fail, the lane goes on
                log.exception("pushing to %s", peer.name)
                st.error = errors.Internal(f"internal error: {e!r}")
            if st.finished:
                self._checkin(peer, conn)
                delays = busy_until = None
                continue
            conn.socket.close()
            error = st.peer_error or st.error
            if isinstance(error, Busy) and not st.answered:  # refused before any entry was read
                peer.queue.extendleft(reversed(st.inflight))
                now = trio.current_time()
                if delays is None:
                    delays = retry.delays(self.config.backoff_first_s, self.config.backoff_max_s)
                    busy_until = now + self.config.push_busy_timeout_s
                if now >= busy_until:
                    self._fail_queued(peer, lambda url: Busy(
                        f"{error.message}; gave up storing {url} after "
                        f"{self.config.push_busy_timeout_s:g}s of retries", node=peer.name))
                    return
                await trio.sleep(next(delays))
                continue
            if (reused and not st.answered and isinstance(st.error, Unavailable)
                    and st.peer_error is None and not stale_retried):
                # a pooled connection the peer had closed: nothing of this stream was read
                stale_retried = True
                peer.queue.extendleft(reversed(st.inflight))
                continue
            reason = error.message if error else "the stream ended early"
            for entry in st.inflight:
                url = keys.url(entry.key)
                entry.resolve(type(error or Unavailable)(
                    f"pushing {url} to {peer.name} failed: {reason}", node=peer.name))

    def _fail_queued(self, peer: _Peer, error) -> None:
        while peer.queue:
            entry = peer.queue.popleft()
            entry.resolve(error(keys.url(entry.key)))

    async def _stream(self, peer: _Peer, conn: trio.SocketStream, st: _Stream) -> None:
        """One push stream on conn: everything queued for peer, and what is queued
        while answers are awaited. Fills st; raises nothing but cancellation."""
        sock = conn.socket
        try:
            with Idle(self.idle_s, "the push stream") as idle:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, peer, sock, st, idle, nursery.cancel_scope)
                    nursery.start_soon(self._read, peer, sock, st, idle, nursery.cancel_scope)
        except S4Error as e:  # the Idle scope: the peer made no progress for idle_s
            st.error = st.error or e
        if not st.finished and st.error is None and st.peer_error is None:
            st.error = Unavailable(f"{peer.name} stopped answering")

    async def _write(self, peer: _Peer, sock, st: _Stream, idle: Idle,
                     cancel_scope: trio.CancelScope) -> None:
        """Send the request, then entries as they come, then the end once nothing is
        queued or awaited."""
        out = bytearray(protocol.encode({"op": "push"}))
        try:
            while True:
                while peer.queue:
                    entry = peer.queue.popleft()
                    if entry.abandoned:
                        continue
                    out = await self._send_entry(peer, sock, st, entry, out, idle)
                if out:
                    await send_all(sock, out, idle)
                    out = bytearray()
                if not st.inflight:  # all answered: end, unless more comes soon (a map's next output)
                    with trio.move_on_after(self.linger_s):
                        while not peer.queue:
                            await peer.wait_changed()
                    if not peer.queue:
                        break
                    continue
                await peer.wait_changed()  # more entries, or the last answer
            st.ending = True
            await send_all(sock, protocol.encode_push_end(), idle)
        except S4Error as e:  # the connection broke: the reader hears why, or the end of it
            st.error = st.error or e
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                cancel_scope.cancel()

    async def _send_entry(self, peer: _Peer, sock, st: _Stream, entry: _Entry, out: bytearray,
                          idle: Idle) -> bytearray:
        """Add one entry to the stream: small ones to `out` (sent when it fills),
        big ones by sendfile after out. Returns what is left unsent."""
        url = keys.url(entry.key)
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            entry.resolve(S4Error(f"cannot read {url} on this node to push it to {peer.name}: "
                                  f"{_reason(e)}"))
            return out
        try:
            size = os.fstat(fd).st_size
            if entry.size is not None and size != entry.size:
                entry.resolve(ChecksumMismatch(
                    f"{url} changed after it was hashed: {entry.size} bytes then, {size} now"))
                return out
            if size <= limits.PUSH_INLINE_MAX_BYTES:
                data = os.pread(fd, size, 0) if size else b""
                if len(data) != size:
                    entry.resolve(S4Error(f"{url} shrank while it was being pushed"))
                    return out
                digest = entry.digest or xxhash.xxh3_64_hexdigest(data)
                st.inflight.append(entry)
                out += protocol.encode_push_head(entry.key, size)
                out += data
                out += protocol.encode_push_tail(size, digest)
                if len(out) >= limits.PUSH_BATCH_BYTES:
                    await send_all(sock, out, idle)
                    out = bytearray()
                return out
            st.inflight.append(entry)  # before its first byte: an answer may come any time after
            out += protocol.encode_push_head(entry.key, size)
            await send_all(sock, out, idle)
            # digest None: hashed by preads beside sendfile (a command's file: never mmap'd here)
            trailing = checksum.Trailing(fd, mapped=False) if entry.digest is None else None
            if trailing is not None:
                trailing.advance(size)
            try:
                await sendfile(sock, fd, size, idle)
            except BaseException:
                if trailing is not None:
                    trailing.abort()
                raise
            digest = entry.digest or await trio.to_thread.run_sync(trailing.finish, size,
                                                                    limiter=HASHING)
            return bytearray(protocol.encode_push_tail(size, digest))
        finally:
            os.close(fd)

    async def _read(self, peer: _Peer, sock, st: _Stream, idle: Idle,
                    cancel_scope: trio.CancelScope) -> None:
        """Take the peer's answers in order and wake each entry's caller."""
        decoder = protocol.FrameDecoder()
        try:
            while True:
                frame = decoder.next_frame()
                if frame is None:
                    try:
                        data = await sock.recv(_RECV_ANSWERS_BYTES)
                    except OSError as e:
                        raise Unavailable(f"connection lost: {_reason(e)}") from None
                    if not data:
                        raise Unavailable("the connection closed")
                    decoder.feed(data)
                    idle.touch()
                    continue
                if "key" in frame:
                    st.answered = True
                    if not st.inflight or frame["key"] != st.inflight[0].key:
                        raise ProtocolError(f"{peer.name} answered for {frame['key']!r} out of order")
                    entry = st.inflight.popleft()
                    entry.resolve(None if frame.get("ok") is True else errors.from_wire(frame))
                    if not st.inflight:
                        peer.notify()
                elif "error" in frame:
                    st.peer_error = errors.from_wire(frame)
                    break
                elif st.ending and frame.get("ok") is True:
                    st.finished = True
                    break
                else:
                    raise ProtocolError(f"{peer.name} sent an answer that is not one")
        except S4Error as e:
            st.error = st.error or e
        cancel_scope.cancel()


def _still_open(sock) -> bool:
    """An idle connection the peer has not closed: nothing to read, no hang-up."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return not poller.poll(0)


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


# --- receiver --------------------------------------------------------------------------
class _Landing:
    """One entry's bytes arriving into a temp file, hashed as they land."""

    def __init__(self, storage: Storage, size: int):
        self.storage = storage
        self.temp = storage.new_temp("push")
        self.total = 0
        try:
            self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            storage.discard(self.temp)
            raise _no_space_or(e)
        # small: hashed from the bytes in hand; big: from the page cache, a window behind
        self.trailing = checksum.Trailing(self.fd) if size > limits.PUSH_INLINE_MAX_BYTES else None
        self.hash = None if self.trailing else xxhash.xxh3_64()

    @property
    def spliceable(self) -> bool:
        return self.trailing is not None

    def write(self, piece: bytes) -> None:
        view = memoryview(piece)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            raise _no_space_or(e) from None
        if self.hash is not None:
            self.hash.update(piece)
        self.landed(len(piece))

    def landed(self, n: int) -> None:
        self.total += n
        if self.trailing is not None:
            self.trailing.advance(self.total)

    async def digest(self) -> str:
        if self.hash is not None:
            return self.hash.hexdigest()
        return await trio.to_thread.run_sync(self.trailing.finish, self.total, limiter=HASHING)

    def close(self) -> None:
        if self.fd is not None:
            if self.trailing is not None:
                self.trailing.abort()  # a no-op once digest() finished it
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Nothing of this entry stays: no temp file (a published key is not touched)."""
        self.close()
        self.storage.discard(self.temp)


def _no_space_or(e: OSError) -> Exception:
    return NoSpace("no space left") if e.errno == errno.ENOSPC else e


def _on_node(e: S4Error, url: str, node: str) -> S4Error:
    """The error an entry is answered with: one line naming its key and this node."""
    if isinstance(e, NoSpace):
        return NoSpace(f"no space left on {node} for {url}")
    message = e.message if url in e.message else f"{e.message} ({url})"
    return type(e)(message if node in message else f"{message}, on {node}", **e.details)


async def receive(sock, storage: Storage, nodes: list, self_index: int, idle_s: float) -> dict:
    """Serve one push stream on sock (its request already read): store every
    entry, answer each, and answer the end. Returns figures for the log."""
    name = "%s:%d" % nodes[self_index]
    reader = protocol.PushReader()
    answers = bytearray()
    count = failed = received = 0
    key = url = None
    landing: _Landing | None = None
    refused: S4Error | None = None  # why the current entry will not be stored
    try:
        with Idle(idle_s, f"receiving a push on {name}") as idle:
            while True:
                event = reader.next_event()
                if event is None:  # all that was sent is handled: answer, then read on
                    if answers:
                        await send_all(sock, answers, idle)
                        answers = bytearray()
                    left = reader.data_left()
                    if left and landing is not None and landing.spliceable and not reader.buffered():
                        await splice_to_file(sock, landing.fd, left, idle, landing.landed)
                        reader.skip(left)
                        continue
                    try:
                        data = await sock.recv(limits.PUSH_BATCH_BYTES)
                    except OSError as e:
                        raise Unavailable(f"push to {name} broke: {_reason(e)}") from None
                    if not data:
                        raise Unavailable(f"the pushing node went away before the end of its stream "
                                          f"to {name}" + (f", in the middle of {url}" if url else ""))
                    reader.feed(data)
                    idle.touch()
                elif event[0] == "data":
                    if landing is not None:
                        landing.write(event[1])
                elif event[0] == "entry":
                    _, key, size = event
                    url = keys.url(key) if isinstance(key, str) else repr(key)
                    refused = None
                    try:
                        keys.check_key(key)  # a bad key is a bad key wherever it was sent
                        owner = placement.node_index(key, len(nodes))
                        if owner != self_index:
                            raise BadRequest(f"{url} belongs on {'%s:%d' % nodes[owner]}, not on "
                                             f"{name}: the nodes' confs must list them in the same order")
                        if size > limits.PUSH_INLINE_MAX_BYTES:  # before its bytes move
                            storage.check_new(key)
                        landing = _Landing(storage, size)
                    except S4Error as e:
                        refused = e
                elif event[0] == "trailer":
                    sent = event[1]
                    if refused is None:
                        try:
                            digest = await landing.digest()
                            landing.close()
                            if digest != sent:
                                raise ChecksumMismatch(
                                    f"checksum mismatch pushing {url} to {name}: sent xxh3 {sent}, "
                                    f"{landing.total} bytes landed with xxh3 {digest}")
                            storage.publish(landing.temp, key, digest)
                            received += landing.total
                        except S4Error as e:
                            refused = e
                        finally:
                            landing.discard()
                            landing = None
                    count += 1
                    if refused is None:
                        answers += protocol.encode(protocol.push_result(key))
                    else:
                        failed += 1
                        answers += protocol.encode(protocol.push_result(
                            key, errors.to_wire(_on_node(refused, url, name))))
                    key = url = refused = None
                else:  # the end
                    answers += protocol.encode({"ok": True, "count": count, "failed": failed})
                    await send_all(sock, answers, idle)
                    return {"keys": count - failed, "failed": failed, "bytes": received}
    finally:
        if landing is not None:  # the stream broke mid-entry: nothing of it stays
            landing.discard()

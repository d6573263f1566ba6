"""The blocking s4 client: what `s4ctl`, the tests and bench/ call.

Plain sockets and threads, no trio (a small `cp` is dominated by start-up
time). One method per op, named as the op: put, get, ls, rm, eval, map,
map_to_n, map_from_n, health. Keys and prefixes are wire paths
(`bucket/key`, no scheme). Errors are the daemon's S4Error classes; a busy
node is retried with backoff up to CLIENT_BUSY_TIMEOUT_S.

Integrity: a put sends the xxh3 of what it read and the node compares it
with what landed on its disk; a get hashes what arrives and compares it with
the checksum the node stored at write time, so corruption anywhere between
the writer's file and the reader's is an error, never data.
"""
import os
import _socket
import stat
import time
from _thread import get_ident

import xxhash

from s4d import checksum, keys, limits, placement, protocol
from s4d.errors import (Busy, ChecksumMismatch, ProtocolError, S4Error, Timeout, Unavailable,
                        from_wire)

Node = tuple[str, int]
_F_SETPIPE_SZ = 1031


def node_name(node: Node) -> str:
    return "%s:%d" % node


def _connect(node: Node, timeout: float):
    """A connected TCP socket, from _socket: the `socket` module costs ~10 ms of
    import (selectors, and an enum of every constant), a third of a small cp's
    budget, and the client needs none of it. The host goes in as bytes, which
    spares the idna codec's import too."""
    host, port = node
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, addr in _socket.getaddrinfo(host.encode(), port, 0,
                                                            _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(addr)  # an ASCII address literal: no codec involved
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


def _ready(sock, event: str, timeout: float) -> bool:
    """poll(2), not select(2): select fails on fds over 1023, which a busy process has.
    `select` is imported here: a small cp never waits, and the import is ~0.3 ms of it."""
    import select
    poller = select.poll()
    poller.register(sock, getattr(select, event))
    return bool(poller.poll(timeout * 1000))


def _readable(sock, timeout: float) -> bool:
    return _ready(sock, "POLLIN", timeout)


def _writable(sock, timeout: float) -> bool:
    return _ready(sock, "POLLOUT", timeout)


class Conn:
    """One blocking connection to one node, with frame helpers."""

    def __init__(self, node: Node, connect_timeout: float = limits.CONNECT_TIMEOUT_S,
                 idle_timeout: float = limits.CLIENT_IDLE_TIMEOUT_S):
        self.node = node
        self.name = node_name(node)
        try:
            self.sock = _connect(node, connect_timeout)
        except TimeoutError:
            raise Unavailable(f"cannot reach {self.name}: connect timed out") from None
        except OSError as e:
            raise Unavailable(f"cannot reach {self.name}: {e.strerror or e}") from None
        self.sock.settimeout(idle_timeout)
        self.sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        self.idle_timeout = idle_timeout

    def close(self) -> None:
        self.sock.close()

    def _broken(self, e: OSError) -> S4Error:
        if isinstance(e, TimeoutError):
            return Timeout(f"{self.name}: no progress for {self.idle_timeout:g}s")
        return Unavailable(f"connection to {self.name} lost: {e.strerror or e}")

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise self._error_reply_or(e) from None

    def send_frame(self, msg: dict) -> None:
        self.send(protocol.encode(msg))

    def recv_into(self, view: memoryview) -> int:
        try:
            n = self.sock.recv_into(view)
        except OSError as e:
            raise self._broken(e) from None
        if n == 0:
            raise Unavailable(f"{self.name} closed the connection mid-transfer")
        return n

    def recv_exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            got += self.recv_into(view[got:])
        return bytes(buf)

    def recv_frame(self) -> dict:
        try:
            length = protocol.decode_frame_header(self.recv_exactly(protocol.FRAME_HEADER_BYTES))
            return protocol.decode_frame_body(self.recv_exactly(length))
        except ProtocolError as e:  # e.g. an HTTP server on that port: "HTTP" reads as a huge length
            raise ProtocolError(f"{self.name} does not answer as an s4 node ({e.message})") from None

    def recv_reply(self) -> dict:
        """The next frame; an error frame is raised as its S4Error."""
        msg = self.recv_frame()
        if "error" in msg:
            raise from_wire(msg)
        return msg

    def _error_reply_or(self, e: OSError) -> S4Error:
        """A send failed: the node may have said why before closing."""
        try:
            self.sock.settimeout(1.0)
            return from_wire(self.recv_frame())
        except (S4Error, OSError):
            return self._broken(e)

    def error_pending(self) -> bool:
        """True if the node has sent something mid-upload (an error frame)."""
        return _readable(self.sock, 0)

    def splice_into(self, fd: int, size: int, trailing: checksum.Trailing) -> None:
        """Move size bytes from the socket into fd by splice(2), through a pipe;
        `trailing` hashes them a window behind."""
        import fcntl
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, limits.PIPE_BYTES)
            except OSError:
                pass
            sock_fd = self.sock.fileno()
            left = size
            while left:
                try:
                    n = os.splice(sock_fd, w, min(left, limits.SPLICE_BYTES),
                                  flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:  # the socket has a timeout, so it is non-blocking
                    if not _readable(self.sock, self.idle_timeout):
                        raise Timeout(f"{self.name}: no progress for {self.idle_timeout:g}s") from None
                    continue
                except OSError as e:
                    raise self._broken(e) from None
                if n == 0:
                    raise Unavailable(f"{self.name} closed the connection mid-transfer")
                left -= n
                while n:
                    n -= os.splice(r, fd, n, flags=os.SPLICE_F_MOVE)
                trailing.advance(size - left)
        finally:
            os.close(r)
            os.close(w)

    def sendfile(self, f, offset: int, size: int) -> None:
        """Send size bytes of f from offset with os.sendfile, waiting (poll) only on
        EAGAIN; stop early if the node answers, which mid-upload means an error."""
        end = offset + size
        sock_fd, file_fd = self.sock.fileno(), f.fileno()
        sent_since_check = 0
        while offset < end:
            try:
                sent = os.sendfile(sock_fd, file_fd, offset, min(end - offset, limits.SENDFILE_BYTES))
            except BlockingIOError:  # the socket has a timeout, so it is non-blocking
                if not _writable(self.sock, self.idle_timeout):
                    raise Timeout(f"{self.name}: no progress for {self.idle_timeout:g}s") from None
                continue
            except OSError as e:
                raise self._error_reply_or(e) from None
            if sent == 0:
                raise S4Error(f"{getattr(f, 'name', 'file')} shrank while it was being sent")
            offset += sent
            sent_since_check += sent
            if sent_since_check >= limits.SENDFILE_BYTES:
                sent_since_check = 0
                if self.error_pending():
                    self.recv_reply()
                    raise Unavailable(f"{self.name} answered before the upload finished")


class Client:
    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self._idle: dict[int, dict[Node, Conn]] = {}  # per thread: connections kept for reuse
        self._recv_buffers: dict[int, bytearray] = {}  # per thread: get_bytes' receive buffer

    # --- connections --------------------------------------------------------------
    def node_for(self, path: str) -> Node:
        return self.nodes[placement.node_index(path, len(self.nodes))]

    def _conn(self, node: Node) -> tuple[Conn, bool]:
        """A connection to node for this thread: (conn, reused)."""
        conn = self._idle.setdefault(get_ident(), {}).pop(node, None)
        if conn is not None:
            return conn, True
        return Conn(node), False

    def _release(self, conn: Conn) -> None:
        self._idle.setdefault(get_ident(), {})[conn.node] = conn

    def close(self) -> None:
        """Close this thread's idle connections."""
        for conn in self._idle.pop(get_ident(), {}).values():
            conn.close()

    def _call(self, node: Node, request: dict, body=None):
        """Send request, await the first reply, run body(conn, reply) if given.

        Retries a busy node with backoff and jitter (s4d.retry), and a reused
        connection that turns out to be dead before its first reply. The
        connection is kept for the next call only if everything succeeded."""
        waits = None  # made at the first "busy": a call that never waits never pays for it
        deadline = 0.0
        while True:
            conn, reused = self._conn(node)
            try:
                try:
                    conn.send_frame(request)
                    reply = conn.recv_reply()
                except Unavailable:
                    if reused:
                        conn.close()
                        continue
                    raise
                result = body(conn, reply) if body else reply
            except Busy as e:
                conn.close()
                if waits is None:
                    from s4d import retry
                    waits = retry.delays()
                    deadline = time.monotonic() + limits.CLIENT_BUSY_TIMEOUT_S
                elif time.monotonic() > deadline:
                    raise Busy(f"{e.message}; gave up after {limits.CLIENT_BUSY_TIMEOUT_S:g}s of retries") from None
                time.sleep(next(waits))
                continue
            except BaseException:
                conn.close()
                raise
            self._release(conn)
            return result

    # --- data ------------------------------------------------------------------------
    def put(self, key: str, path: str | None = None, stream=None) -> int:
        """Store a local file (path) or a binary stream of unknown length as key.

        A path that is not a regular file (a FIFO, a device, /dev/stdin) is read as
        a stream, and so is a regular file that says it is empty: a /proc file
        reports st_size 0 whatever it holds, and a truly empty file streams as
        the empty key it is. Only a regular file with a size goes by sendfile."""
        keys.check_key(key)
        if path is None:
            return self._call(self.node_for(key), {"op": "put", "key": key},
                              lambda conn, _: self._put_stream(conn, stream))
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size:
                body = lambda conn, _: self._put_file(conn, f, st.st_size)  # noqa: E731
            else:
                body = lambda conn, _: self._put_stream(conn, f)  # noqa: E731
            return self._call(self.node_for(key), {"op": "put", "key": key}, body)

    def _put_file(self, conn: Conn, f, size: int) -> int:
        # hashed by preads in a thread beside sendfile: never mmap a file someone else can truncate
        trailing = checksum.Trailing(f.fileno(), mapped=False)
        trailing.advance(size)
        try:
            if size:  # a zero-length chunk would end the stream: an empty file is no chunk at all
                conn.send(protocol.encode_chunk_header(size))
                conn.sendfile(f, 0, size)
            conn.send(protocol.END_OF_STREAM)
        except BaseException:
            trailing.abort()
            raise
        conn.send_frame({"xxh3": trailing.finish(size), "size": size})
        return conn.recv_reply()["size"]

    def _put_stream(self, conn: Conn, stream) -> int:
        h = xxhash.xxh3_64()
        buf = bytearray(limits.BUFFER_BYTES)
        view = memoryview(buf)
        size = 0
        while n := stream.readinto(buf):
            h.update(view[:n])
            conn.send(protocol.encode_chunk_header(n))
            conn.send(view[:n])
            size += n
            if conn.error_pending():
                conn.recv_reply()
        conn.send(protocol.END_OF_STREAM)
        conn.send_frame({"xxh3": h.hexdigest(), "size": size})
        return conn.recv_reply()["size"]

    def _recv_verified(self, conn: Conn, reply: dict, out_fd: int, what: str) -> int:
        """Receive reply['size'] bytes into out_fd, checking them against reply['xxh3'].

        A big key into a fresh regular file opened O_RDWR goes socket -> pipe -> file by
        splice and is hashed from the page cache a window behind; anything else (stdout,
        a key of one buffer or less) passes through one buffer, hashed on the way."""
        size = reply["size"]
        if size > limits.BUFFER_BYTES and self._spliceable(out_fd):
            trailing = checksum.Trailing(out_fd)
            try:
                conn.splice_into(out_fd, size, trailing)
            except BaseException:
                trailing.abort()
                raise
            digest = trailing.finish(size)
        else:
            h = xxhash.xxh3_64()
            buf = bytearray(min(limits.BUFFER_BYTES, max(size, 1)))
            view = memoryview(buf)
            left = size
            while left:
                n = conn.recv_into(view[:min(left, len(buf))])
                h.update(view[:n])
                written = 0
                while written < n:
                    written += os.write(out_fd, view[written:n])
                left -= n
            digest = h.hexdigest()
        _check_digest(digest, reply, conn, what)
        return size

    @staticmethod
    def _spliceable(fd: int) -> bool:
        import fcntl
        st = os.fstat(fd)
        return (stat.S_ISREG(st.st_mode) and st.st_size == 0 and os.lseek(fd, 0, os.SEEK_CUR) == 0
                and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR)

    def get(self, key: str, out_fd: int, verify_first: bool = False, offset: int | None = None,
            length: int | None = None) -> int:
        """Write key's bytes to out_fd, verified against the checksum stored at write time.

        The bytes are checked as they arrive, so on a mismatch out_fd already holds
        them: fine for a temp file the caller discards. For an fd that cannot take
        bytes back (stdout), verify_first has the node check the file before it
        sends a byte (one more pass over it there).

        offset/length ask for a range, clipped to the key as read(2) clips (past the
        end: fewer bytes, or none); the node hashes the range it reads, so the
        transfer is checked but the disk is not, unless verify_first."""
        keys.check_key(key)
        return self._call(self.node_for(key), _get_request(key, verify_first, offset, length),
                          lambda conn, reply: self._recv_verified(conn, reply, out_fd, keys.url(key)))

    def get_bytes(self, key: str, offset: int | None = None, length: int | None = None,
                  verify_first: bool = False) -> bytes:
        """A key's bytes, or a range of them (as `get`), in memory: for reads of a
        part of a key (the fsspec filesystem's cat_file and buffered files)."""
        keys.check_key(key)
        return self._call(self.node_for(key), _get_request(key, verify_first, offset, length),
                          lambda conn, reply: self._recv_bytes(conn, reply, keys.url(key)))

    def get_info(self, key: str) -> tuple[int, int]:
        """(size, mtime) of a key, from its node alone: a ranged get of no bytes."""
        keys.check_key(key)
        def body(conn: Conn, reply: dict) -> dict:
            self._recv_bytes(conn, reply, keys.url(key))  # none, but the reply must be a range's
            return reply
        reply = self._call(self.node_for(key), _get_request(key, False, 0, 0), body)
        return reply["total"], reply["mtime"]

    def _recv_bytes(self, conn: Conn, reply: dict, what: str) -> bytes:
        """Receive into this thread's reused buffer (memory touched before, which is
        cheaper here than fresh pages), check, and return one copy as bytes."""
        size = reply["size"]
        buf = self._recv_buffers.get(get_ident())
        if buf is None or len(buf) < size:
            buf = bytearray(size)
            if size <= limits.CLIENT_RECV_BUFFER_KEEP_BYTES:
                self._recv_buffers[get_ident()] = buf
        with memoryview(buf) as whole:
            view = whole[:size]
            got = 0
            while got < size:
                got += conn.recv_into(view[got:])
            _check_digest(xxhash.xxh3_64_hexdigest(view), reply, conn, what)
            data = view.tobytes()
            view.release()
        return data

    def eval(self, key: str, cmd: str, out_fd: int, timeout: float | None = None) -> int:
        keys.check_key(key)
        request = {"op": "eval", "key": key, "cmd": cmd, "timeout": timeout}
        return self._call(self.node_for(key), request,
                          lambda conn, reply: self._recv_verified(conn, reply, out_fd, "eval output"))

    # --- metadata, fanned out to every node ----------------------------------------------
    def fanout(self, fn, nodes: list[Node] | None = None) -> list:
        """fn(node) on every node at once; results in node order; the first error is raised."""
        nodes = nodes or self.nodes
        results: list = [None] * len(nodes)
        errors: list = [None] * len(nodes)

        def run(i: int) -> None:
            try:
                results[i] = fn(nodes[i])
            except BaseException as e:
                errors[i] = e
            finally:
                self.close()

        in_threads(run, range(len(nodes)))
        for e in errors:
            if e is not None:
                raise e
        return results

    def _ls_node(self, node: Node, prefix: str, recursive: bool) -> list:
        def body(conn: Conn, msg: dict) -> list:
            entries = []
            while "entries" in msg:
                entries += msg["entries"]
                msg = conn.recv_reply()
            return entries
        return self._call(node, {"op": "ls", "prefix": prefix, "recursive": recursive}, body)

    def ls(self, prefix: str, recursive: bool = False) -> list[tuple[str, int | None, int]]:
        """Merged listing from every node, sorted by name; directories once, size None."""
        keys.check_prefix(prefix)
        merged: dict[str, tuple] = {}
        for entries in self.fanout(lambda node: self._ls_node(node, prefix, recursive)):
            for name, size, mtime in entries:
                if name not in merged or (merged[name][2] < mtime):
                    merged[name] = (name, size, mtime)
        return [merged[name] for name in sorted(merged)]

    def rm(self, prefix: str, recursive: bool = False) -> int:
        request = {"op": "rm", "prefix": prefix, "recursive": recursive}
        if not recursive:
            keys.check_key(prefix)
            return self._call(self.node_for(prefix), request)["deleted"]
        keys.check_prefix(prefix)
        return sum(r["deleted"] for r in self.fanout(lambda node: self._call(node, request)))

    def health(self) -> list[tuple[Node, dict | None, str | None]]:
        """(node, figures, error) for every node; never raises for a down node."""
        def check(node: Node):
            started = time.monotonic()
            try:
                conn = Conn(node, limits.HEALTH_TIMEOUT_S, limits.HEALTH_TIMEOUT_S)
                try:
                    conn.send_frame({"op": "health"})
                    figures = conn.recv_reply()
                finally:
                    conn.close()
                figures["rtt_ms"] = (time.monotonic() - started) * 1000
                return node, figures, None
            except S4Error as e:
                return node, None, e.message
            except OSError as e:
                return node, None, str(e)
        return self.fanout(check)

    # --- maps ---------------------------------------------------------------------------
    def map(self, indir, outdir, cmd, **kw) -> dict:
        return self._map("map", indir, outdir, cmd, **kw)

    def map_to_n(self, indir, outdir, cmd, **kw) -> dict:
        return self._map("map_to_n", indir, outdir, cmd, **kw)

    def map_from_n(self, indir, outdir, cmd, **kw) -> dict:
        return self._map("map_from_n", indir, outdir, cmd, **kw)

    def _map(self, op: str, indir: str, outdir: str, cmd: str, timeout: float | None = None,
             on_progress=None) -> dict:
        """Run op on every node at once. on_progress(done, total, bytes) is called as
        figures arrive, once every node has counted its keys (a node has when its
        total is not 0, or when it is done), so the total never grows. The first
        failure closes the other nodes' connections, which cancels their work, and
        is raised.

        Each request carries how many nodes this client's conf lists and the node's place
        in it: a node whose conf orders the nodes otherwise refuses the map, rather than
        mapping keys that placement sends elsewhere."""
        request = {"op": op, "indir": indir, "outdir": outdir, "cmd": cmd, "timeout": timeout,
                   "node_count": len(self.nodes)}
        return self._everywhere(request, self.nodes, on_progress)

    # --- S3 in and out: every node moves its own keys (s4d/s3.py) ----------------------
    def s3_import(self, key: str, bucket: str, obj: str, recursive: bool = False,
                  endpoint: str | None = None, on_progress=None) -> dict:
        """Copy S3 object `obj` of `bucket` to the s4 key `key`, or with recursive every
        object under the prefix `obj` to the same relative name under the s4 directory
        `key` (ends in '/'). The nodes list and fetch; nothing passes through here."""
        return self._s3("s3_import", key, bucket, obj, recursive, endpoint, on_progress)

    def s3_export(self, key: str, bucket: str, obj: str, recursive: bool = False,
                  endpoint: str | None = None, on_progress=None) -> dict:
        """Copy the s4 key `key` to S3 object `obj` of `bucket`, or with recursive every
        key under the s4 directory `key` (ends in '/') to the same relative name under
        the prefix `obj`. Each node uploads its own keys."""
        return self._s3("s3_export", key, bucket, obj, recursive, endpoint, on_progress)

    def _s3(self, op: str, key: str, bucket: str, obj: str, recursive: bool,
            endpoint: str | None, on_progress) -> dict:
        if recursive:
            keys.check_prefix(key)
            nodes = self.nodes
        else:
            keys.check_key(key)
            nodes = [self.node_for(key)]
        request = {"op": op, "key": key, "bucket": bucket, "object": obj, "recursive": recursive,
                   "endpoint": endpoint}
        return self._everywhere(request, nodes, on_progress)

    def _everywhere(self, request: dict, nodes: list[Node], on_progress=None) -> dict:
        """Send request to every one of nodes at once and follow their progress frames,
        as a map does: on_progress(done, total, bytes) once every node has reported
        its total, then as figures arrive; the first
        failure closes the other connections, which cancels their work, and is raised."""
        import threading
        figures = {node: {"done": 0, "total": 0, "bytes": 0} for node in nodes}
        counted: set[Node] = set()  # nodes whose total is known
        conns: dict[Node, Conn] = {}
        try:
            for node in nodes:
                conns[node] = Conn(node)
        except S4Error:
            for conn in conns.values():
                conn.close()
            raise
        failed = threading.Event()
        lock = threading.Lock()

        def report(node: Node, figs: dict, final: bool) -> None:
            with lock:
                figures[node] = figs
                if final or figs["total"]:
                    counted.add(node)
                if on_progress and len(counted) == len(nodes):
                    on_progress(*(sum(f[k] for f in figures.values()) for k in ("done", "total", "bytes")))

        def run(node: Node) -> dict:
            conn = conns[node]
            try:
                conn.send_frame({**request, "node_index": self.nodes.index(node)})
                while True:
                    msg = conn.recv_reply()
                    if msg.get("progress"):
                        report(node, {k: msg[k] for k in ("done", "total", "bytes")}, False)
                    elif msg.get("ok"):
                        report(node, {k: msg[k] for k in ("done", "total", "bytes")}, True)
                        return msg
            except S4Error as e:
                if failed.is_set():  # cancelled because another node failed first
                    return {}
                failed.set()
                for other in conns.values():
                    if other is not conn:
                        _shut(other)
                if isinstance(e, (Unavailable, Timeout)) and conn.name not in e.message:
                    raise type(e)(f"{conn.name}: {e.message}") from None
                raise
            finally:
                conn.close()

        self.fanout(run, nodes)
        return {k: sum(f[k] for f in figures.values()) for k in ("done", "total", "bytes")}


def _get_request(key: str, verify: bool, offset: int | None, length: int | None) -> dict:
    request = {"op": "get", "key": key}
    if verify:
        request["verify"] = True
    if offset is not None:
        request["offset"] = offset
    if length is not None:
        request["length"] = length
    return request


def _check_digest(digest: str, reply: dict, conn: Conn, what: str) -> None:
    if digest == reply["xxh3"]:
        return
    if "total" in reply:  # a range: the node hashed what it read just now
        raise ChecksumMismatch(f"checksum mismatch reading {reply['size']} bytes of {what} from "
                               f"{conn.name}: the node sent xxh3 {reply['xxh3']}, the bytes received "
                               f"hash to {digest} (corrupt on the wire)")
    raise ChecksumMismatch(f"checksum mismatch reading {what} from {conn.name}: the stored "
                           f"xxh3 is {reply['xxh3']}, the bytes received hash to "
                           f"{digest} (corrupt on disk or on the wire)")


def in_threads(target, args) -> None:
    """target(arg) for each arg, each in its own thread, all at once; waits for all."""
    import threading  # only here: a single cp never starts a thread
    threads = [threading.Thread(target=target, args=(arg,), daemon=True) for arg in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _shut(conn: Conn) -> None:
    try:
        conn.sock.shutdown(_socket.SHUT_RDWR)
    except OSError:
        pass

"""The daemon's trio glue: accept, read a request, dispatch to handle_<op>.

Each connection carries requests one after another. A handler raises an
S4Error for anything that goes wrong; `_serve_request` turns it into an
error frame (the one place that happens, `_as_error`), lets the peer read
it, and closes the connection. What a handler's nursery raises arrives as
an ExceptionGroup: it is opened there too, once for every handler. An
OSError is typed by its errno (no_space, not_found, io_failed); anything
else is a bug: logged with its traceback, and the peer gets an "internal"
error; the daemon keeps serving. The batched delete of `rm -r` is
Storage's (`delete_prefix`); every figure comes from the DaemonConfig.
Every wait on a peer sits in an `Idle` scope. Transfers take an io slot,
commands a cpu slot; a request that cannot get a slot in busy_wait_s is
answered "busy" and the client retries.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import socket
import time
from contextlib import asynccontextmanager

import trio

from s4d import __version__, errors, keys, limits, placement, protocol, push
from s4d.config import DaemonConfig
from s4d.controller import Controller, Progress, glob_regex, split_glob
from s4d.errors import (BadRequest, Busy, ChecksumMismatch, NoSpace, NotFound, ProtocolError,
                        S4Error, Unavailable)
from s4d.storage import Storage
from s4d.transfer import (Idle, hash_range_async, recv_frame, recv_stream_to_file, send_frame,
                          sendfile)

log = logging.getLogger("s4d")


class Server:
    def __init__(self, nodes: list, self_index: int, config: DaemonConfig):
        self.nodes = nodes
        self.self_index = self_index
        self.config = config
        self.name = "%s:%d" % nodes[self_index]
        self.storage = Storage(config.data_dir, config)
        self.io = trio.CapacityLimiter(config.max_io_jobs)
        self.idle_s = config.idle_timeout_s
        self.controller = Controller(self.storage, nodes, self_index, config, self.push)
        self.started = time.time()
        self.pusher = push.Pusher(nodes, config)
        self._accepting = trio.CancelScope()
        self._sweeping = trio.CancelScope()
        self._stopping = False
        self._waiting: set[trio.CancelScope] = set()  # connections between requests

    # --- lifecycle ---------------------------------------------------------------
    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        removed = self.storage.sweep()
        if removed:
            log.info("swept %d leftover temp files", removed)
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as pushing:  # outlives every handler that may push
            await pushing.start(self.pusher.run)
            async with trio.open_nursery() as connections:
                connections.start_soon(self._sweep_forever)
                with self._accepting:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(self._accept_forever, listener, connections)
                        task_status.started()
                # stop(): no new connections; in-flight work gets a grace period
                for listener in listeners:
                    await listener.aclose()
                connections.cancel_scope.deadline = trio.current_time() + self.config.stop_grace_s
                self._sweeping.cancel()
            pushing.cancel_scope.cancel()  # no handler is left to wait for a push

    def stop(self) -> None:
        """No new connections; a connection waiting for its next request closes now
        (an idle client would otherwise hold the stop for the whole grace period)."""
        self._accepting.cancel()
        self._stopping = True
        for waiting in self._waiting:
            waiting.cancel()

    async def _accept_forever(self, listener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed: %s", e)
                await trio.sleep(self.config.accept_backoff_s)
                continue
            connections.start_soon(self._serve_connection, stream)

    async def _sweep_forever(self) -> None:
        with self._sweeping:
            while True:
                await trio.sleep(self.config.sweep_interval_s)
                removed = self.storage.sweep()
                if removed:
                    log.info("swept %d orphaned temp files", removed)

    # --- connections ---------------------------------------------------------------
    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        try:
            peer = "%s:%s" % sock.getpeername()[:2]
        except OSError:
            peer = "?"
        try:
            while await self._serve_request(sock, peer):
                pass
        except Exception:  # a bug outside any handler: it ends this connection, not the daemon
            log.exception("internal error serving %s", peer)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve_request(self, sock, peer: str) -> bool:
        """Serve one request; False when the connection should close."""
        if self._stopping:
            return False
        waiting = trio.CancelScope()  # stop() cancels it: no request is being served yet
        self._waiting.add(waiting)
        msg = None  # a stop() cancels before a frame arrives
        try:
            # a whole request frame within the idle timeout: a trickle cannot hold the connection
            with waiting, Idle(self.idle_s, "waiting for a request", reset=False) as idle:
                msg = await recv_frame(sock, idle)
        except S4Error as e:
            if isinstance(e, ProtocolError):
                log.warning("%s from %s", e.message, peer)
                await self._reply_error(sock, e)
            return False
        finally:
            self._waiting.discard(waiting)
        if msg is None or waiting.cancelled_caught:
            return False
        started = trio.current_time()
        op = msg.get("op")
        # for the log only, before any check: the peer may have sent any JSON there
        target = next((v for v in (msg.get("key"), msg.get("prefix"), msg.get("indir"))
                       if isinstance(v, str) and v), "")
        try:
            op = protocol.check_request(msg)
            result = await getattr(self, f"handle_{op}")(sock, msg) or {}
        except Exception as e:  # a cancel (and a group holding one) goes on up: not an answer
            error = self._as_error(e, op, target, peer)
            self._log(op, target, peer, started, error.code, {"error": error.message})
            await self._reply_error(sock, error)
            return False
        self._log(op, target, peer, started, "ok", result)
        return True

    def _as_error(self, e: Exception, op, target: str, peer: str) -> S4Error:
        """What a handler raised, as the one error its peer is sent.

        A handler that starts a nursery raises whatever its tasks raised in an
        ExceptionGroup: the group is opened here, once for every handler, and its
        first S4Error stands for it (else its first exception). An OSError the
        handler did not expect still has a meaning a user can act on (a full
        disk, a file gone meanwhile, a permission): it gets its own code and
        one line. Anything else is a bug: logged with its traceback, `internal`."""
        leaf = _first_leaf(e)
        if isinstance(leaf, S4Error):
            return leaf
        what = f"{op} {keys.url(target)}" if target else str(op)
        if isinstance(leaf, OSError):
            log.warning("%s from %s failed: %r", what, peer, leaf)
            reason = leaf.strerror or str(leaf)
            if leaf.errno in (errno.ENOSPC, errno.EDQUOT):
                return NoSpace(f"no space left on {self.name} for {what}")
            if leaf.errno in (errno.ENOENT, errno.ENOTDIR):
                return NotFound(f"{what} on {self.name}: a file went away meanwhile ({reason}); "
                                "was it removed by a concurrent rm?")
            return errors.IOFailed(f"{what} failed on {self.name}: {reason}")
        log.error("internal error in %s from %s", what, peer, exc_info=e)
        return errors.Internal(f"internal error on {self.name}: {leaf!r}")

    def _log(self, op, target, peer, started, result, figures: dict) -> None:
        extra = " ".join(f"{k}={v}" for k, v in figures.items())
        ms = (trio.current_time() - started) * 1000
        log.info("%s %s %s ms=%.1f peer=%s %s", op, target and keys.url(target), result, ms, peer, extra)

    async def _reply_error(self, sock, e: S4Error) -> None:
        """Send the error frame, then drain what the peer may still be sending
        (briefly) so the kernel does not reset the connection before it reads it."""
        with trio.move_on_after(self.config.error_drain_s):
            try:
                with Idle(self.idle_s, "sending an error") as idle:
                    await send_frame(sock, errors.to_wire(e), idle)
                sock.shutdown(socket.SHUT_WR)
                while await sock.recv(limits.BUFFER_BYTES):
                    pass
            except (S4Error, OSError):
                pass

    @asynccontextmanager
    async def io_slot(self):
        """Hold one of --max-io-jobs slots; waiting longer than busy_wait_s -> Busy."""
        with trio.move_on_after(self.config.busy_wait_s) as waiting:
            await self.io.acquire()
        if waiting.cancelled_caught:
            raise Busy(f"{self.name} is busy: all {self.io.total_tokens} io slots are in use")
        try:
            yield
        finally:
            self.io.release()

    # --- handlers: one per op --------------------------------------------------------
    async def handle_put(self, sock, msg: dict) -> dict:
        key = msg["key"]
        keys.check_key(key)  # a bad key is a bad key wherever it was sent
        owner = placement.node_index(key, len(self.nodes))
        if owner != self.self_index:  # a client whose conf differs from this node's
            raise BadRequest(f"{keys.url(key)} belongs on {'%s:%d' % self.nodes[owner]}, not on "
                             f"{self.name}: the client's conf must list the nodes in the same order")
        self.storage.check_new(key)
        async with self.io_slot():
            temp = self.storage.new_temp()
            try:
                # read-write: what lands is hashed through mmap as it lands
                fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    with Idle(self.idle_s, f"put {keys.url(key)}") as idle:
                        await send_frame(sock, {"ok": True}, idle)
                        size, digest = await recv_stream_to_file(sock, fd, idle)
                        trailer = await recv_frame(sock, idle)
                finally:
                    os.close(fd)
                if trailer is None:
                    raise Unavailable("client went away before finishing the put")
                protocol.check_put_trailer(trailer)
                if trailer["size"] != size or trailer["xxh3"] != digest:
                    raise ChecksumMismatch(
                        f"checksum mismatch putting {keys.url(key)}: sent {trailer['size']} bytes "
                        f"xxh3 {trailer['xxh3']}, {self.name} received {size} bytes xxh3 {digest}")
                self.storage.publish(temp, key, digest)
            except NoSpace:  # raised where the bytes land, which knows no node or key
                raise NoSpace(f"no space left on {self.name} for {keys.url(key)}") from None
            finally:
                self.storage.discard(temp)
        with Idle(self.idle_s, "put reply") as idle:
            await send_frame(sock, {"ok": True, "size": size}, idle)
        return {"bytes": size}

    async def _send_file(self, sock, fd: int, reply: dict, offset: int, what: str) -> int:
        """The reply frame ({"ok", "size", "xxh3", ...}), then reply["size"] bytes of fd
        from offset by sendfile; returns the size."""
        size = reply["size"]
        with Idle(self.idle_s, f"sending {what}") as idle:
            await send_frame(sock, reply, idle)
            await sendfile(sock, fd, size, idle, offset)
        return size

    def _refuse_misplaced(self, key: str) -> None:
        """Before a read: a key that is not here and that placement puts on another
        node was sent here by a client whose conf orders the nodes otherwise (a
        key is only ever published on its own node). Say so, not "no such key"."""
        path = self.storage.path(key)  # checks the key first
        owner = placement.node_index(key, len(self.nodes))
        if owner != self.self_index and not os.path.lexists(path):
            raise BadRequest(f"{keys.url(key)} belongs on {'%s:%d' % self.nodes[owner]}, not on "
                             f"{self.name}: the client's conf must list the nodes in the same order")

    def _refuse_other_order(self, msg: dict) -> None:
        """Before a map: the client's conf (optional, sent by s4ctl: this node's
        place in it and its length) must put this node where this node's conf
        does. Names are not compared: a client may spell a host otherwise."""
        count, index = msg.get("node_count"), msg.get("node_index")
        if count is None or index is None:
            return
        if count != len(self.nodes) or index != self.self_index:
            raise BadRequest(f"{self.name} is node {self.self_index + 1} of {len(self.nodes)} in its "
                             f"conf but node {index + 1} of {count} in the client's: the "
                             "client's conf must list the nodes in the same order")

    async def handle_get(self, sock, msg: dict) -> dict:
        """The key is opened once; its stored checksum, the optional verification and
        the bytes sent all come from that one fd. A whole-key get sends the checksum
        stored at write time, so the client checks disk and wire at once. A ranged
        get (offset/length) sends the xxh3 of the range hashed here from the same
        page cache sendfile then reads: it checks the wire, not the disk; only
        "verify" (one pass over the whole key first) checks the disk for a range."""
        self._refuse_misplaced(msg["key"])
        key = msg["key"]
        what = keys.url(key)
        fd, total, stored = self.storage.open_key(key)
        try:
            if msg.get("verify"):  # the reader cannot take bytes back (stdout): no corrupt byte leaves
                digest = await hash_range_async(fd, 0, total)
                if digest != stored:
                    raise ChecksumMismatch(f"checksum mismatch: {what} is corrupt on {self.name}: "
                                           f"stored xxh3 {stored}, its bytes hash to {digest}", node=self.name)
            if msg.get("offset") is None and msg.get("length") is None:
                reply = {"ok": True, "size": total, "xxh3": stored}
                offset, figures = 0, {}
            else:
                offset, size = protocol.get_range(msg, total)
                reply = {"ok": True, "size": size, "xxh3": await hash_range_async(fd, offset, offset + size),
                         "total": total, "mtime": int(os.fstat(fd).st_mtime)}
                figures = {"offset": offset}
            async with self.io_slot():
                return {"bytes": await self._send_file(sock, fd, reply, offset, what), **figures}
        finally:
            os.close(fd)  # after any hashing thread: to_thread.run_sync waits for it even when cancelled

    async def handle_eval(self, sock, msg: dict) -> dict:
        self._refuse_misplaced(msg["key"])
        async with self.controller.eval(msg["key"], msg["cmd"], msg.get("timeout")) as out:
            fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                reply = {"ok": True, "size": size, "xxh3": await hash_range_async(fd, 0, size)}
                async with self.io_slot():
                    return {"bytes": await self._send_file(sock, fd, reply, 0, "eval output")}
            finally:
                os.close(fd)

    async def handle_ls(self, sock, msg: dict) -> dict:
        entries = await trio.to_thread.run_sync(self.storage.list, msg["prefix"], msg["recursive"])
        with Idle(self.idle_s, "sending a listing") as idle:
            page, page_bytes = [], 0
            for name, size, mtime in entries:
                page.append([name, size, int(mtime)])
                page_bytes += len(name) + 32
                if len(page) >= self.config.list_page_entries or page_bytes > limits.FRAME_MAX_BYTES // 2:
                    await send_frame(sock, {"entries": page}, idle)
                    page, page_bytes = [], 0
            if page:
                await send_frame(sock, {"entries": page}, idle)
            await send_frame(sock, {"ok": True}, idle)
        return {"entries": len(entries)}

    async def handle_rm(self, sock, msg: dict) -> dict:
        prefix = msg["prefix"]
        if not msg["recursive"]:
            self.storage.delete(prefix)
            deleted = 1
        else:
            if not keys.check_prefix(prefix):
                raise BadRequest("refusing to delete every bucket")  # as s4ctl does: rm -r s4://
            deleted = await self.storage.delete_prefix(prefix)
        with Idle(self.idle_s, "rm reply") as idle:
            await send_frame(sock, {"ok": True, "deleted": deleted}, idle)
        return {"deleted": deleted}

    async def _map(self, op: str, sock, msg: dict) -> dict:
        self._refuse_other_order(msg)
        for field in ("indir", "outdir"):
            keys.check_prefix(msg[field].rstrip("/") + "/")
        _check_glob(msg)
        return await self._reporting(op, sock, msg, getattr(self.controller, op))

    async def handle_map(self, sock, msg: dict) -> dict:
        return await self._map("map", sock, msg)

    async def handle_map_to_n(self, sock, msg: dict) -> dict:
        return await self._map("map_to_n", sock, msg)

    async def handle_map_from_n(self, sock, msg: dict) -> dict:
        return await self._map("map_from_n", sock, msg)

    async def handle_health(self, sock, msg: dict) -> dict:
        import psutil
        count, size = await trio.to_thread.run_sync(self.storage.usage)
        disk = psutil.disk_usage(self.storage.root)
        me = psutil.Process()
        figures = {
            "ok": True, "node": self.name, "version": __version__,
            "uptime_s": round(time.time() - self.started, 1),
            "disk_free": disk.free, "disk_used": disk.used, "keys": count, "bytes": size,
            "io_jobs": self.io.borrowed_tokens, "max_io_jobs": self.io.total_tokens,
            "cpu_jobs": self.controller.running, "max_cpu_jobs": self.controller.limiter.total_tokens,
            "load": os.getloadavg()[0], "rss": me.memory_info().rss, "fds": me.num_fds(),
        }
        with Idle(self.idle_s, "health reply") as idle:
            await send_frame(sock, figures, idle)
        return {}

    # --- S3 in and out (s4d/s3.py; boto3 is imported on the first of these) -------------
    async def handle_s3_import(self, sock, msg: dict) -> dict:
        return await self._reporting("s3_import", sock, msg, self._s3().s3_import)

    async def handle_s3_export(self, sock, msg: dict) -> dict:
        return await self._reporting("s3_export", sock, msg, self._s3().s3_export)

    def _s3(self):
        if getattr(self, "s3", None) is None:
            from s4d.s3 import S3
            self.s3 = S3(self.storage, self.nodes, self.self_index, self.config)
        return self.s3

    async def _reporting(self, op: str, sock, msg: dict, work) -> dict:
        """await work(msg, progress) while progress frames go out (the maps, the S3
        copies); the client going away cancels it. Ends with {"ok", done, total, bytes}."""
        progress = Progress()
        outcome: dict = {}

        async def run(cancel_scope: trio.CancelScope) -> None:
            try:
                await work(msg, progress)
            except S4Error as e:
                outcome["error"] = e
            finally:
                cancel_scope.cancel()

        async def report() -> None:
            with Idle(self.idle_s, "sending progress") as idle:
                while True:
                    await send_frame(sock, {"progress": True, **progress.wire()}, idle)
                    await trio.sleep(self.config.progress_interval_s)

        async def watch_client(cancel_scope: trio.CancelScope) -> None:
            await trio.lowlevel.wait_readable(sock)  # the client only listens: readable means gone
            outcome["error"] = Unavailable(f"client went away; {op} cancelled on {self.name}")
            cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, nursery.cancel_scope)
            nursery.start_soon(report)
            nursery.start_soon(watch_client, nursery.cancel_scope)
        if "error" in outcome:
            raise outcome["error"]
        with Idle(self.idle_s, f"{op} reply") as idle:
            await send_frame(sock, {"ok": True, **progress.wire()}, idle)
        return progress.wire()

    # --- node to node ------------------------------------------------------------------
    async def push(self, node: int, key: str, path: str, digest: str | None, size: int | None) -> None:
        """Store a finished local file as `key` on another node (map outputs): queued
        for that node's push stream; returns once it is published there (s4d/push.py)."""
        await self.pusher.push(node, key, path, digest, size)

    async def handle_push(self, sock, msg: dict) -> dict:
        """A stream of another node's map outputs that belong here (s4d/push.py)."""
        async with self.io_slot():
            return await push.receive(sock, self.storage, self.nodes, self.self_index, self.idle_s)


def _first_leaf(e: BaseException) -> BaseException:
    """The exception a group stands for: its first S4Error, else its first leaf."""
    if not isinstance(e, BaseExceptionGroup):
        return e
    typed, _ = e.split(S4Error)
    return _first_leaf((typed or e).exceptions[0])


def _check_glob(msg: dict) -> None:
    """A map's INDIR glob (or its `glob` field) must compile: a bad one is the
    user's mistake, told in one line, before any work starts."""
    _, glob = split_glob(msg["indir"])
    for pattern in (glob, msg.get("glob")):
        if pattern:
            try:
                glob_regex(pattern)
            except re.error as e:
                raise BadRequest(f"bad glob {pattern!r} in {keys.url(msg['indir'])}: {e}") from None


"""The daemon's trio glue: accept, read a request, dispatch to handle_<op>.

Each connection carries requests one after another. A handler raises an
S4Error for anything that goes wrong; `_serve_connection` turns it into an
error frame (the one place that happens), lets the peer read it, and
closes the connection. Any other exception is a bug: it is logged with its
traceback and the peer gets an "internal" error; the daemon keeps serving.
Every wait on a peer sits in an `Idle` scope. Transfers take an io slot,
commands a cpu slot; a request that cannot get a slot in BUSY_WAIT_S is
answered "busy" and the client retries.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import asynccontextmanager

import trio

from s4d import __version__, errors, keys, limits, placement, protocol, push
from s4d.controller import Controller, Progress
from s4d.errors import (BadRequest, Busy, ChecksumMismatch, NoSpace, NotFound, ProtocolError,
                        S4Error, Unavailable)
from s4d.storage import Storage
from s4d.transfer import (Idle, hash_file_async, recv_frame, recv_stream_to_file, send_all,
                          send_frame, sendfile)

log = logging.getLogger("s4d")


class Server:
    def __init__(self, nodes: list, self_index: int, data_dir: str, *, max_io_jobs: int,
                 max_cpu_jobs: int, idle_timeout_s: float, cmd_timeout_s: float):
        self.nodes = nodes
        self.self_index = self_index
        self.name = "%s:%d" % nodes[self_index]
        self.storage = Storage(data_dir)
        self.io = trio.CapacityLimiter(max_io_jobs)
        self.idle_s = idle_timeout_s
        self.controller = Controller(self.storage, nodes, self_index, max_cpu_jobs,
                                     cmd_timeout_s, self.push)
        self.started = time.time()
        self.pusher = push.Pusher(nodes, idle_timeout_s)
        self._accepting = trio.CancelScope()
        self._sweeping = trio.CancelScope()

    # --- lifecycle ---------------------------------------------------------------
    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        removed = self.storage.sweep()
        if removed:
            log.info("swept %d leftover temp files", removed)
        listeners = await trio.open_tcp_listeners(port, host=host)
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
            connections.cancel_scope.deadline = trio.current_time() + limits.STOP_GRACE_S
            self._sweeping.cancel()

    def stop(self) -> None:
        self._accepting.cancel()

    async def _accept_forever(self, listener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed: %s", e)
                await trio.sleep(limits.ACCEPT_BACKOFF_S)
                continue
            connections.start_soon(self._serve_connection, stream)

    async def _sweep_forever(self) -> None:
        with self._sweeping:
            while True:
                await trio.sleep(limits.SWEEP_INTERVAL_S)
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
        try:
            # a whole request frame within the idle timeout: a trickle cannot hold the connection
            with Idle(self.idle_s, "waiting for a request", reset=False) as idle:
                msg = await recv_frame(sock, idle)
        except S4Error as e:
            if isinstance(e, ProtocolError):
                log.warning("%s from %s", e.message, peer)
                await self._reply_error(sock, e)
            return False
        if msg is None:
            return False
        started = trio.current_time()
        op = msg.get("op")
        # for the log only, before any check: the peer may have sent any JSON there
        target = next((v for v in (msg.get("key"), msg.get("prefix"), msg.get("indir"))
                       if isinstance(v, str) and v), "")
        try:
            op = protocol.check_request(msg)
            result = await getattr(self, f"handle_{op}")(sock, msg) or {}
        except S4Error as e:
            self._log(op, target, peer, started, e.code, {"error": e.message})
            await self._reply_error(sock, e)
            return False
        except Exception as e:  # a bug: log it, answer, keep the daemon up
            log.exception("internal error in %s %s from %s", op, target, peer)
            await self._reply_error(sock, errors.Internal(f"internal error on {self.name}: {e!r}"))
            return False
        self._log(op, target, peer, started, "ok", result)
        return True

    def _log(self, op, target, peer, started, result, figures: dict) -> None:
        extra = " ".join(f"{k}={v}" for k, v in figures.items())
        ms = (trio.current_time() - started) * 1000
        log.info("%s %s %s ms=%.1f peer=%s %s", op, target and keys.url(target), result, ms, peer, extra)

    async def _reply_error(self, sock, e: S4Error) -> None:
        """Send the error frame, then drain what the peer may still be sending
        (briefly) so the kernel does not reset the connection before it reads it."""
        with trio.move_on_after(limits.ERROR_DRAIN_S):
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
        """Hold one of --max-io-jobs slots; waiting longer than BUSY_WAIT_S -> Busy."""
        with trio.move_on_after(limits.BUSY_WAIT_S) as waiting:
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

    async def _send_file(self, sock, path: str, digest: str, what: str) -> int:
        """{"ok", size, xxh3} then the file's bytes by sendfile; returns the size."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"no such key: {what}") from None
        try:
            size = os.fstat(fd).st_size
            with Idle(self.idle_s, f"sending {what}") as idle:
                await send_frame(sock, {"ok": True, "size": size, "xxh3": digest}, idle)
                await sendfile(sock, fd, size, idle)
        finally:
            os.close(fd)
        return size

    async def handle_get(self, sock, msg: dict) -> dict:
        key = msg["key"]
        path, _, digest = self.storage.stat(key)  # the checksum stored at write time
        if msg.get("verify"):  # the reader cannot take bytes back (stdout): no corrupt byte leaves
            path = await self.controller.verified(key)
        async with self.io_slot():
            return {"bytes": await self._send_file(sock, path, digest, keys.url(key))}

    async def handle_eval(self, sock, msg: dict) -> dict:
        async with self.controller.eval(msg["key"], msg["cmd"], msg.get("timeout")) as out:
            digest = await hash_file_async(out, os.stat(out).st_size)
            async with self.io_slot():
                return {"bytes": await self._send_file(sock, out, digest, "eval output")}

    async def handle_ls(self, sock, msg: dict) -> dict:
        entries = await trio.to_thread.run_sync(self.storage.list, msg["prefix"], msg["recursive"])
        with Idle(self.idle_s, "sending a listing") as idle:
            page, page_bytes = [], 0
            for name, size, mtime in entries:
                page.append([name, size, int(mtime)])
                page_bytes += len(name) + 32
                if len(page) >= limits.LIST_PAGE_ENTRIES or page_bytes > limits.FRAME_MAX_BYTES // 2:
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
            deleted = await self._delete_listed(prefix)
        with Idle(self.idle_s, "rm reply") as idle:
            await send_frame(sock, {"ok": True, "deleted": deleted}, idle)
        return {"deleted": deleted}

    async def _delete_listed(self, prefix: str) -> int:
        """Delete every key under prefix: batches of one directory's names, unlinked
        by RM_THREADS threads at once (each unlink of a file on disk may wait for a
        discard; they overlap), the empty directories pruned once at the end. The
        event loop stays free; a cancel stops it between batches."""
        by_dir: dict[str, list[str]] = {}
        for name, _, _ in await trio.to_thread.run_sync(self.storage.list, prefix, True):
            d, _, base = name.rpartition("/")
            by_dir.setdefault(d, []).append(base)
        batches = [(d, names[i:i + limits.RM_BATCH_KEYS])
                   for d, names in by_dir.items() for i in range(0, len(names), limits.RM_BATCH_KEYS)]
        batches.reverse()  # popped from the end: in listing order
        emptied: set[str] = set()
        deleted = 0

        async def worker() -> None:
            nonlocal deleted
            while batches:
                d, names = batches.pop()
                n = await trio.to_thread.run_sync(self.storage.delete_in, d, names)
                if n:
                    deleted += n
                    emptied.add(os.path.join(self.storage.root, d))

        async with trio.open_nursery() as nursery:
            for _ in range(limits.RM_THREADS):
                nursery.start_soon(worker)
        self.storage.prune(emptied)
        return deleted

    async def _map(self, op: str, sock, msg: dict) -> dict:
        for field in ("indir", "outdir"):
            keys.check_prefix(msg[field].rstrip("/") + "/")
        progress = Progress()
        outcome: dict = {}

        async def work(cancel_scope: trio.CancelScope) -> None:
            try:
                await getattr(self.controller, op)(msg, progress)
            except S4Error as e:
                outcome["error"] = e
            finally:
                cancel_scope.cancel()

        async def report() -> None:
            with Idle(self.idle_s, "sending progress") as idle:
                while True:
                    await send_frame(sock, {"progress": progress.wire()}, idle)
                    await trio.sleep(limits.PROGRESS_INTERVAL_S)

        async def watch_client(cancel_scope: trio.CancelScope) -> None:
            # after a map request the client only listens: readable means gone
            await trio.lowlevel.wait_readable(sock)
            outcome["error"] = Unavailable(f"client went away; {op} cancelled on {self.name}")
            cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(work, nursery.cancel_scope)
            nursery.start_soon(report)
            nursery.start_soon(watch_client, nursery.cancel_scope)
        if "error" in outcome:
            raise outcome["error"]
        with Idle(self.idle_s, f"{op} reply") as idle:
            await send_frame(sock, {"ok": True, **progress.wire()}, idle)
        return progress.wire()

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

    # --- node to node ------------------------------------------------------------------
    async def push(self, node: int, key: str, path: str, digest: str | None, size: int | None) -> None:
        """Store a finished local file as `key` on another node (map outputs): queued
        for that node's push stream; returns once it is published there (s4d/push.py)."""
        await self.pusher.push(node, key, path, digest, size)

    async def handle_push(self, sock, msg: dict) -> dict:
        """A stream of another node's map outputs that belong here (s4d/push.py)."""
        async with self.io_slot():
            return await push.receive(sock, self.storage, self.nodes, self.self_index, self.idle_s)

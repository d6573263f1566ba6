"""The controller: users' bash commands, run out of process where the data is.

`run` starts one command under the node's cpu-job limit, in a fresh temp
dir inside the data dir, with `set -euo pipefail`, in its own process group
(killed whole on timeout, on cancel and after exit, so nothing lingers). The
key's file is the child's stdin and a temp file its stdout: no data passes
through Python. A failure keeps the exit code and the tail of stderr.

`map`, `map_to_n` and `map_from_n` run one node's share of the ops of the
same names over the keys this node holds, and publish each output here or,
when its name places it elsewhere, push it to its node (`push`, supplied by
the server). The first failure cancels the rest of this node's work.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from s4d import keys, limits, placement
from s4d.config import DaemonConfig
from s4d.errors import ChecksumMismatch, CommandFailed, NoSpace, S4Error, Timeout
from s4d.storage import Storage
from s4d.transfer import hash_file_async

Push = Callable[[int, str, str, str, int], Awaitable[None]]
_READ_BYTES = 65536  # one read of a command's stderr: a whole pipe, at its default size


@dataclass
class Progress:
    done: int = 0
    total: int = 0
    bytes: int = 0

    def wire(self) -> dict:
        return {"done": self.done, "total": self.total, "bytes": self.bytes}


def glob_regex(glob: str) -> re.Pattern:
    """A glob on names: `*` and `?` never cross `/`, `[...]` is a class."""
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in glob[i + 2:]:
            j = glob.index("]", i + 2)
            body = glob[i + 1:j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def split_glob(indir: str) -> tuple[str, str | None]:
    """`b/in/*4` -> (`b/in/`, `*4`); `b/in` or `b/in/` -> (`b/in/`, None)."""
    head, _, last = indir.rpartition("/")
    if any(c in last for c in "*?["):
        return head + "/", last
    return indir.rstrip("/") + "/", None


def group_name(members: list[str]) -> str:
    """map-from-n output name: the numeric prefix, plus the suffix all share."""
    names = {keys.basename(m) for m in members}
    if len(names) == 1:
        return names.pop()
    digits = placement.numeric_prefix(keys.basename(members[0]))
    return digits


async def run_pool(items: list, fn: Callable[[object], Awaitable[None]], width: int) -> None:
    """Run fn over items, `width` at a time; the first S4Error cancels the rest and is raised."""
    it = iter(items)
    failure: list[S4Error] = []

    async def worker(cancel_scope: trio.CancelScope) -> None:
        for item in it:
            try:
                await fn(item)
            except S4Error as e:
                failure.append(e)
                cancel_scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(width, len(items)))):
            nursery.start_soon(worker, nursery.cancel_scope)
    if failure:
        raise failure[0]


class Controller:
    def __init__(self, storage: Storage, nodes: list, self_index: int, config: DaemonConfig,
                 push: Push):
        self.storage = storage
        self.nodes = nodes
        self.self_index = self_index
        self.config = config
        self.limiter = trio.CapacityLimiter(config.max_cpu_jobs)
        self.cmd_timeout_s = config.cmd_timeout_s
        self.push = push
        self.name = "%s:%d" % nodes[self_index]
        self.env = dict(os.environ)  # the commands' environment, plus $filename
        self.bash = shutil.which("bash") or "bash"  # found once, not by execs along PATH per command

    @property
    def running(self) -> int:
        return self.limiter.borrowed_tokens

    # --- one command -------------------------------------------------------------
    async def run(self, cmd: str, *, stdin: int, stdout: int, cwd: str, env: dict,
                  timeout: float | None, what: str) -> None:
        timeout = timeout or self.cmd_timeout_s
        async with self.limiter:
            proc, pidfd, stderr = _spawn(self.bash, ["bash", "-euo", "pipefail", "-c", cmd], stdin,
                                         stdout, cwd, {**self.env, **env})
            try:
                with trio.move_on_after(timeout) as scope:
                    tail = await _wait(pidfd, stderr)
                if scope.cancelled_caught:
                    raise Timeout(f"command timed out after {timeout:g}s on {self.name} for {what}")
            finally:
                await _reap(proc, pidfd)  # with its background children, however it ended
                os.close(stderr)
        if proc.returncode != 0:
            text = tail.decode(errors="replace").strip()
            # the tail of stderr, on the one line an error gets
            last = " | ".join(line.strip() for line in text.splitlines()[-3:] if line.strip())
            raise CommandFailed(
                f"command failed on {self.name} for {what}: exit {proc.returncode}"
                + (f", stderr: {last[-500:]}" if last else ", no stderr"),
                node=self.name, key=what, exit=proc.returncode, stderr=text)

    @asynccontextmanager
    async def command(self, cmd: str, stdin_path: str, filename: str, timeout, what: str):
        """Run cmd in a fresh temp dir, stdin from a file, stdout to a temp file;
        yield (stdout path, the dir). Both are removed when the block ends."""
        cwd = self.storage.new_temp_dir()
        out = self.storage.new_temp("out")
        try:
            with open(stdin_path, "rb") as fin, open(out, "xb") as fout:
                await self.run(cmd, stdin=fin.fileno(), stdout=fout.fileno(), cwd=cwd,
                               env={"filename": filename}, timeout=timeout, what=what)
            yield out, cwd
        finally:
            self.storage.discard(out)
            self.storage.discard(cwd)

    async def verified(self, key: str) -> str:
        """The path of a key whose bytes still hash to the checksum stored at write
        time: a command (or a reader of `get` with verify) never reads corruption
        (one mmap'd pass, in the page cache that the reader then reads from)."""
        path, size, stored = self.storage.stat(key)
        digest = await hash_file_async(path, size)
        if digest != stored:
            raise ChecksumMismatch(f"checksum mismatch: {keys.url(key)} is corrupt on {self.name}: "
                                   f"stored xxh3 {stored}, its bytes hash to {digest}", node=self.name)
        return path

    async def _publish(self, path: str, key: str) -> None:
        """Publish a finished file as key here, or push it to the node it belongs on."""
        size = os.stat(path).st_size
        digest = await hash_file_async(path, size)
        owner = placement.node_index(key, len(self.nodes))
        if owner == self.self_index:
            try:
                self.storage.publish(path, key, digest)
            except NoSpace:
                raise NoSpace(f"no space left on {self.name} for {keys.url(key)}") from None
        else:
            await self.push(owner, key, path, digest, size)

    # --- the three shapes ----------------------------------------------------------
    def _inputs(self, msg: dict) -> tuple[str, list[tuple[str, int]]]:
        indir, glob = split_glob(msg["indir"])
        glob = msg.get("glob") or glob
        found = self.storage.keys_under(indir)
        if glob:
            pattern = glob_regex(glob)
            found = [(k, n) for k, n in found if pattern.match(k[len(indir):])]
        return indir, sorted(found)

    async def map(self, msg: dict, progress: Progress) -> None:
        indir, inputs = self._inputs(msg)
        outdir = msg["outdir"].rstrip("/") + "/"
        progress.total = len(inputs)

        async def one(item) -> None:
            key, size = item
            async with self.command(msg["cmd"], await self.verified(key), keys.basename(key),
                                    msg.get("timeout"), keys.url(key)) as (out, _):
                await self._publish(out, outdir + key[len(indir):])
            progress.done += 1
            progress.bytes += size

        await run_pool(inputs, one, self.limiter.total_tokens)

    async def map_to_n(self, msg: dict, progress: Progress) -> None:
        indir, inputs = self._inputs(msg)
        outdir = msg["outdir"].rstrip("/") + "/"
        progress.total = len(inputs)
        pushes = trio.CapacityLimiter(limits.PUSH_PARALLEL)

        async def publish(pair) -> None:
            path, out_key = pair
            async with pushes:
                await self._publish(path, out_key)

        async def one(item) -> None:
            key, size = item
            name = keys.basename(key)
            async with self.command(msg["cmd"], await self.verified(key), name,
                                    msg.get("timeout"), keys.url(key)) as (listing, cwd):
                files = _printed_files(listing, cwd, self.name, keys.url(key))
                pairs = [(path, f"{outdir}{name}/{os.path.basename(path)}") for path in files]
                await run_pool(pairs, publish, limits.PUSH_PARALLEL)
            progress.done += 1
            progress.bytes += size

        await run_pool(inputs, one, self.limiter.total_tokens)

    async def map_from_n(self, msg: dict, progress: Progress) -> None:
        _, inputs = self._inputs(msg)
        outdir = msg["outdir"].rstrip("/") + "/"
        groups: dict[str, list[tuple[str, int]]] = {}
        for key, size in inputs:
            name = keys.basename(key)
            groups.setdefault(placement.numeric_prefix(name) or name, []).append((key, size))
        progress.total = len(inputs)

        async def one(members) -> None:
            paths = "".join([await self.verified(k) + "\n" for k, _ in members])
            name = group_name([k for k, _ in members])
            listing = self.storage.new_temp("in")
            try:
                with open(listing, "w") as f:
                    f.write(paths)
                async with self.command(msg["cmd"], listing, name, msg.get("timeout"),
                                        keys.url(outdir + name)) as (out, _):
                    await self._publish(out, outdir + name)
            finally:
                self.storage.discard(listing)
            progress.done += len(members)
            progress.bytes += sum(size for _, size in members)

        await run_pool(list(groups.values()), one, self.limiter.total_tokens)

    @asynccontextmanager
    async def eval(self, key: str, cmd: str, timeout: float | None):
        """Run cmd over a key; yield the temp file holding its stdout."""
        async with self.command(cmd, await self.verified(key), keys.basename(key), timeout,
                                keys.url(key)) as (out, _):
            yield out


def _printed_files(listing: str, cwd: str, node: str, what: str) -> list[str]:
    """The files a map-to-n command printed: each must exist inside its temp dir."""
    with open(listing, "rb") as f:
        lines = f.read(limits.FRAME_MAX_BYTES).decode(errors="replace").splitlines()
    files: dict[str, None] = {}
    for line in lines:
        if not line.strip():
            continue
        printed = os.path.join(cwd, line)
        path = os.path.realpath(printed)
        # a symlink would publish its target under the target's name (or lose a name)
        if not (path.startswith(cwd + "/") and os.path.isfile(path)) or os.path.islink(printed):
            raise CommandFailed(f"command on {node} for {what} printed {line!r}, "
                                "which is not a file it wrote in its directory",
                                node=node, key=what, exit=0, stderr="")
        files[path] = None
    return list(files)


def _spawn(path: str, argv: list[str], stdin: int, stdout: int, cwd: str, env: dict):
    """Start the program at path as argv in a new session (its own process group);
    return it, a pidfd that turns readable when it exits, and its stderr (the
    non-blocking read end of a pipe). On the event loop, not in a worker thread:
    Popen vforks, so this waits for the exec and no longer."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(argv, executable=path, stdin=stdin, stdout=stdout, stderr=w,
                                cwd=cwd, env=env, start_new_session=True)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    os.set_blocking(r, False)
    try:
        return proc, os.pidfd_open(proc.pid), r
    except OSError:  # out of fds: it could not be waited for
        _kill_group(proc)
        os.close(r)
        raise


async def _wait(pidfd: int, stderr: int) -> bytes:
    """Wait for a command to exit; return the tail of its stderr. One epoll set
    holds both fds, so one task waits for either: no reader task per command."""
    tail = bytearray()
    with select.epoll() as ready:
        ready.register(pidfd, select.EPOLLIN)
        ready.register(stderr, select.EPOLLIN)
        while True:
            await trio.lowlevel.wait_readable(ready.fileno())
            for fd, _ in ready.poll(0):
                if fd == pidfd:  # what it wrote before it exited is in the pipe: at most its size
                    _read_tail(stderr, tail, limits.PIPE_BYTES)
                    return bytes(tail)
                if not _read_tail(stderr, tail, _READ_BYTES):  # a chunk a wake-up: no hogging
                    ready.unregister(stderr)  # every writer closed it: only the exit is left


def _read_tail(fd: int, tail: bytearray, most: int) -> bool:
    """Read up to `most` bytes of what the non-blocking pipe fd holds, keeping
    the last STDERR_TAIL_BYTES in tail; False at its end."""
    while most > 0:
        try:
            data = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return True
        if not data:
            return False
        tail += data
        del tail[:-limits.STDERR_TAIL_BYTES]
        most -= len(data)
    return True


async def _reap(proc: subprocess.Popen, pidfd: int) -> None:
    """Kill proc's process group, then reap proc. In this order: until it is
    reaped, its pid cannot be reused, so the group is still the one it made."""
    _kill_group(proc)
    if proc.poll() is None:
        with trio.CancelScope(shield=True):  # SIGKILLed: it is gone promptly
            await trio.lowlevel.wait_readable(pidfd)
        proc.wait()
    os.close(pidfd)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

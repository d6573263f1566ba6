"""The controller: users' bash commands, run out of process where the data is.

`run` starts one command under the node's cpu-job limit, in an empty temp
dir inside the data dir, with `set -euo pipefail`, in its own process group
(killed whole on timeout, on cancel and after exit, so nothing lingers; the
process plumbing, and what keeps commands from outliving a killed daemon,
is s4d/process.py). The key's file is the child's stdin and a temp file its
stdout: no data passes through Python. A failure keeps the exit status
(signals by name) and the tail of stderr.

No output is published from a key whose bytes do not hash to the checksum
stored when it was written. The check does not hold the command up: a small
key (up to HASH_INLINE_MAX_BYTES) is hashed before its command starts, a
bigger one in a thread while the command runs; the output is published only
when both succeeded, and a mismatch wins over the command's own error.

`map`, `map_to_n` and `map_from_n` run one node's share of the ops of the
same names over the keys this node holds, and publish each output here or,
when its name places it elsewhere, push it to its node (`push`, supplied by
the server). The first failure cancels the rest of this node's work.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Awaitable, Callable, Iterable, Iterator

import trio

from s4d import keys, limits, orphans, placement, process
from s4d.cmddirs import CommandDirs
from s4d.config import DaemonConfig
from s4d.errors import BadRequest, ChecksumMismatch, CommandFailed, NoSpace, S4Error, Timeout
from s4d.storage import NotOwnFile, Storage
from s4d.transfer import hash_range_async

Push = Callable[[int, str, str, str, int], Awaitable[None]]
log = logging.getLogger("s4d")


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


async def run_pool(items: Iterable, fn: Callable[[object], Awaitable[None]], width: int) -> None:
    """Run fn over items (any iterable, drawn lazily), `width` at a time; the first
    S4Error cancels the rest and is raised."""
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
        for _ in range(max(1, width)):
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
        self.plain = PlainCommands(self.bash, self.env)
        killed = orphans.kill_leftovers(storage.tmp)  # commands an earlier daemon here left running
        if killed:
            log.warning("killed %d processes of commands an earlier s4d on this data dir left running",
                        killed)
        self.spawner = process.Spawner()

    @property
    def running(self) -> int:
        return self.limiter.borrowed_tokens

    # --- one command -------------------------------------------------------------
    async def run(self, cmd: str, *, stdin: int, stdout: int, cwd: str, env: dict,
                  timeout: float | None, what: str) -> None:
        timeout = timeout or self.cmd_timeout_s
        async with self.limiter:
            proc = None
            plain = self.plain.argv(cmd)
            if plain is not None:  # exec'd as bash would, without bash's own start
                program, argv = plain
                try:
                    proc = self.spawner.spawn(program, argv, stdin, stdout, cwd,
                                              self.plain.env(self.env, env, cwd, program))
                except OSError:  # not exec'able as it is (no #!, no permission): bash says what to do
                    pass
            if proc is None:
                proc = self.spawner.spawn(self.bash, ["bash", "-euo", "pipefail", "-c", cmd], stdin,
                                          stdout, cwd, {**self.env, **env})
            try:
                with trio.move_on_after(timeout) as scope:
                    tail = await process.wait(proc)
                if scope.cancelled_caught:
                    raise Timeout(f"command timed out after {timeout:g}s on {self.name} for {what}")
            finally:
                await self.spawner.reap(proc)  # with its background children, however it ended
        if proc.status != 0:
            text = tail.decode(errors="replace").strip()
            # the tail of stderr, on the one line an error gets
            last = " | ".join(line.strip() for line in text.splitlines()[-3:] if line.strip())
            raise CommandFailed(
                f"command failed on {self.name} for {what}: {process.describe_exit(proc.status)}"
                + (f", stderr: {last[-500:]}" if last else
                   ", no stderr (commands run under bash -euo pipefail: any failing step, "
                   "a grep that matched nothing, fails the command)"),
                node=self.name, key=what, exit=proc.status, stderr=text)

    @asynccontextmanager
    async def command(self, cmd: str, stdin: int, filename: str, timeout, what: str,
                      dirs: CommandDirs, check: Callable[[], Awaitable[None]] | None = None,
                      in_memory: bool = False):
        """Run cmd in an empty dir, stdin from an fd, stdout to a temp file; yield
        (stdout path, an fd open on it for reading, the dir). `check`, if given,
        runs beside the command (the input's verification) and must succeed too:
        its failure wins over the command's. The stdout file is removed when
        the block ends, and the dir goes back to `dirs` (one map's pool:
        s4d/cmddirs.py). in_memory: stdout is a
        memfd (a listing never published: no file made and removed per
        command) and the path yielded is None."""
        if not cmd.strip():
            raise BadRequest("the command is empty")
        cwd, made = dirs.take()
        out = None if in_memory else self.storage.new_temp("out")
        done = False
        try:
            fd = (os.memfd_create("s4d-stdout", os.MFD_CLOEXEC) if in_memory else
                  os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            try:
                kw = dict(stdin=stdin, stdout=fd, cwd=cwd, env={"filename": filename},
                          timeout=timeout, what=what)
                if check is None:
                    await self.run(cmd, **kw)
                else:
                    await _both(check, self.run(cmd, **kw))
                yield out, fd, cwd
                done = True
            finally:
                os.close(fd)
        finally:
            if out:
                await dirs.remove(out)
            if done:  # a dir whose command failed or was cancelled is not handed on
                await dirs.give(cwd, made)
            else:
                await dirs.remove(cwd)

    @asynccontextmanager
    async def _dir_pool(self):
        """The command dirs of one map (s4d/cmddirs.py), removed when it ends."""
        dirs = CommandDirs(self.storage)
        try:
            yield dirs
        finally:
            dirs.close()

    # --- inputs, checked ---------------------------------------------------------------
    def _mismatch(self, key: str, stored: str, digest: str) -> ChecksumMismatch:
        return ChecksumMismatch(f"checksum mismatch: {keys.url(key)} is corrupt on {self.name}: "
                                f"stored xxh3 {stored}, its bytes hash to {digest}", node=self.name)

    async def _check(self, key: str, fd: int, size: int, stored: str) -> None:
        """Raise ChecksumMismatch unless the key's bytes hash to its stored checksum."""
        digest = await hash_range_async(fd, 0, size)
        if digest != stored:
            raise self._mismatch(key, stored, digest)

    @asynccontextmanager
    async def _key_command(self, cmd: str, key: str, timeout, dirs: CommandDirs,
                           in_memory: bool = False):
        """`command` over one key, stdin from its file; yields (stdout path, its fd,
        the dir, the key's size). The key's bytes are checked: a small key is
        hashed before the command starts (cheaper than a thread: measured), a
        big one by a thread while the command reads it (the two share the page
        cache: one read from disk)."""
        fd, size, stored = self.storage.open_key(key)
        try:
            check = None
            if size <= limits.HASH_INLINE_MAX_BYTES:
                await self._check(key, fd, size, stored)
            else:
                check = partial(self._check, key, fd, size, stored)
            async with self.command(cmd, fd, keys.basename(key), timeout, keys.url(key),
                                    dirs, check, in_memory) as (out, out_fd, cwd):
                yield out, out_fd, cwd, size
        finally:
            os.close(fd)

    async def verified(self, key: str) -> str:
        """The path of a key whose bytes still hash to the checksum stored at write
        time (for `get` with verify: the reader cannot take bytes back)."""
        path, _, _ = self.storage.stat(key)
        fd, size, stored = self.storage.open_key(key)
        try:
            await self._check(key, fd, size, stored)
        finally:
            os.close(fd)
        return path

    async def _publish(self, path: str, key: str, fd: int | None = None) -> None:
        """Publish a finished file as key here, or push it to the node it belongs on;
        fd, if given, is open on it for reading (saves opening it again to hash it)."""
        if fd is None:
            try:  # not through a link (a printed name is checked for one; it could be swapped)
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                raise BadRequest(f"cannot publish {keys.url(key)} on {self.name}: its file "
                                 f"cannot be read ({e.strerror})") from None
            try:
                return await self._publish(path, key, fd)
            finally:
                os.close(fd)
        size = os.fstat(fd).st_size
        digest = await hash_range_async(fd, 0, size)
        owner = placement.node_index(key, len(self.nodes))
        if owner == self.self_index:
            try:
                self.storage.publish(path, key, digest, fd)  # by this fd: the bytes just hashed
            except NoSpace:
                raise NoSpace(f"no space left on {self.name} for {keys.url(key)}") from None
            except NotOwnFile as e:
                raise NotOwnFile(f"{e.message}, on {self.name}") from None
        else:
            await self.push(owner, key, path, digest, size)

    # --- the three shapes ----------------------------------------------------------
    def _inputs(self, msg: dict) -> tuple[str, Callable[[], Iterator[str]]]:
        """(indir, a function giving a fresh lazy iterator of this node's input keys)."""
        indir, glob = split_glob(msg["indir"])
        glob = msg.get("glob") or glob
        pattern = glob_regex(glob) if glob else None
        outdir = msg["outdir"].rstrip("/") + "/"

        def found() -> Iterator[str]:
            for key in self.storage.iter_keys_under(indir):
                if pattern is None or pattern.match(key, len(indir)):
                    yield key

        if outdir.startswith(indir):  # outputs could land among the inputs while they are walked
            listed = list(found())
            return indir, lambda: iter(listed)
        return indir, found

    def _start(self, msg: dict, progress: Progress) -> tuple[str, str, Iterator[str]]:
        indir, inputs = self._inputs(msg)
        if not msg["cmd"].strip():
            raise BadRequest("the command is empty")
        progress.total = sum(1 for _ in inputs())  # a walk of names only: progress has its total at once
        return indir, msg["outdir"].rstrip("/") + "/", inputs()

    async def map(self, msg: dict, progress: Progress) -> None:
        indir, outdir, inputs = self._start(msg, progress)

        async def one(key: str) -> None:
            async with self._key_command(msg["cmd"], key, msg.get("timeout"), dirs) as (out, fd, _, size):
                await self._publish(out, outdir + key[len(indir):], fd)
            progress.done += 1
            progress.bytes += size

        async with self._dir_pool() as dirs:
            await run_pool(inputs, one, self.limiter.total_tokens)

    async def map_to_n(self, msg: dict, progress: Progress) -> None:
        indir, outdir, inputs = self._start(msg, progress)
        pushes = trio.CapacityLimiter(self.config.push_parallel)

        async def publish(pair) -> None:
            path, out_key = pair
            async with pushes:
                await self._publish(path, out_key)

        async def one(key: str) -> None:
            url = keys.url(key)
            async with self._key_command(msg["cmd"], key, msg.get("timeout"), dirs,
                                         in_memory=True) as (_, listing, cwd, size):
                files = _printed_files(listing, cwd, self.name, url)
                # OUTDIR/<input path relative to INDIR>/<file name>: nested inputs of one
                # basename (in/a/001, in/b/001) never meet
                base = outdir + key[len(indir):] + "/"
                named: dict[str, str] = {}
                for path in files:
                    name = os.path.basename(path)
                    if name in named:
                        raise CommandFailed(
                            f"command on {self.name} for {url} printed two files named {name!r} "
                            f"({os.path.relpath(named[name], cwd)!r} and {os.path.relpath(path, cwd)!r}): "
                            f"both would be {keys.url(base + name)} in this run",
                            node=self.name, key=url, exit=0, stderr="")
                    named[name] = path
                await run_pool([(path, base + name) for name, path in named.items()], publish,
                               self.config.push_parallel)
            progress.done += 1
            progress.bytes += size

        async with self._dir_pool() as dirs:
            await run_pool(inputs, one, self.limiter.total_tokens)

    async def map_from_n(self, msg: dict, progress: Progress) -> None:
        _, outdir, inputs = self._start(msg, progress)
        groups: dict[str, list[str]] = {}
        for key in inputs:
            name = keys.basename(key)
            groups.setdefault(placement.numeric_prefix(name) or name, []).append(key)

        async def one(members: list[str]) -> None:
            members.sort()
            paths, total = [], 0
            for key in members:
                path, size, _ = self.storage.stat(key)
                paths.append(path + "\n")
                total += size
            name = group_name(members)
            fd = os.memfd_create("s4d-listing", os.MFD_CLOEXEC)  # the command's stdin
            try:
                os.write(fd, "".join(paths).encode())
                os.lseek(fd, 0, os.SEEK_SET)
                # the members are checked one after another beside the command, which
                # opens them by path: inline when they are small in total, else in a thread
                check = partial(self._check_members, members)
                if total <= limits.HASH_INLINE_MAX_BYTES:
                    await check()
                    check = None
                async with self.command(msg["cmd"], fd, name, msg.get("timeout"),
                                        keys.url(outdir + name), dirs, check) as (out, out_fd, _):
                    await self._publish(out, outdir + name, out_fd)
            finally:
                os.close(fd)
            progress.done += len(members)
            progress.bytes += total

        async with self._dir_pool() as dirs:
            await run_pool(list(groups.values()), one, self.limiter.total_tokens)

    async def _check_members(self, members: list[str]) -> None:
        for key in members:
            fd, size, stored = self.storage.open_key(key)
            try:
                await self._check(key, fd, size, stored)
            finally:
                os.close(fd)

    @asynccontextmanager
    async def eval(self, key: str, cmd: str, timeout: float | None):
        """Run cmd over a key; yield the temp file holding its stdout."""
        async with self._dir_pool() as dirs, self._key_command(cmd, key, timeout, dirs) as (out, _, _, _):
            yield out


class PlainCommands:
    """Commands that are one program with plain arguments (`cat`, `wc -l`, `xargs
    cat`, `sort -k2,2 -t,`), exec'd directly, as `bash -c` itself ends by doing
    for them: the same argv, program, cwd and environment, less bash's own
    start (~2 ms of a ~4 ms spawn here, a third of a small key's cost).

    Plain means: words of letters, digits and `_ . / : , + @ % = -` only (no
    quote, expansion, glob, redirection, operator or comment can appear), and a
    first word that is neither an assignment nor a bash builtin or keyword,
    names a program on PATH (or is a path), and that bash has no say over:
    with BASH_ENV, SHELLOPTS, BASHOPTS or exported functions in the
    environment, every command goes through bash. A program that cannot be
    exec'd as it is (a script with no #!) falls back to bash, which answers
    for it; so does a name not found (bash's "command not found", exit 127)."""

    _WORDS = re.compile(r"[A-Za-z0-9_./:,+@%=-]+(?:[ \t]+[A-Za-z0-9_./:,+@%=-]+)*\Z")

    def __init__(self, bash: str, env: dict):
        import subprocess
        self.path = env.get("PATH", os.defpath)
        self.enabled = not any(k in env for k in ("BASH_ENV", "SHELLOPTS", "BASHOPTS")) and \
            not any(k.startswith("BASH_FUNC_") for k in env)
        try:  # the names bash runs itself: asked of this bash once, at start
            out = subprocess.run([bash, "-c", "compgen -b; compgen -k"], capture_output=True, text=True,
                                 timeout=10, env=env).stdout
            self.builtins = frozenset(out.split())
        except (OSError, subprocess.SubprocessError):
            self.builtins = frozenset()
        # a relative PATH entry would be looked up from the daemon's cwd, not the command's
        self.enabled = self.enabled and bool(self.builtins) and \
            all(d.startswith("/") for d in self.path.split(":"))
        shlvl = env.get("SHLVL", "")  # what bash hands on: its level, or 0 for none or nonsense
        self.shlvl = shlvl if shlvl.isdigit() and int(shlvl) < 1000 else "0"
        self._known: dict[str, tuple[str, list[str]] | None] = {}

    def argv(self, cmd: str) -> tuple[str, list[str]] | None:
        """(program path, argv) if cmd is plain, else None (run it through bash).
        Answers are kept, as bash keeps where it found a program: one lookup along
        PATH per map, not per key (a program gone since fails to exec: bash then)."""
        if cmd not in self._known:
            if len(self._known) >= 256:
                self._known.clear()
            self._known[cmd] = self._look_up(cmd)
        return self._known[cmd]

    def _look_up(self, cmd: str) -> tuple[str, list[str]] | None:
        if not self.enabled or not self._WORDS.match(cmd.strip(" \t")):
            return None
        argv = cmd.split()
        first = argv[0]
        if "=" in first or first in self.builtins:
            return None
        program = first if "/" in first else shutil.which(first, path=self.path)
        return None if program is None else (program, argv)

    def env(self, base: dict, extra: dict, cwd: str, program: str) -> dict:
        """The environment bash gives the program it execs: PWD its dir, SHLVL as
        it came, `_` the program's path, OLDPWD only if it names a directory."""
        env = {**base, **extra, "PWD": cwd, "SHLVL": self.shlvl, "_": program}
        if "OLDPWD" in env and not os.path.isdir(env["OLDPWD"]):
            del env["OLDPWD"]
        return env


async def _both(check: Callable[[], Awaitable[None]], command: Awaitable[None]) -> None:
    """Run check() beside the command; raise the check's S4Error if it fails (it
    cancels the command), else the command's. Either way both have ended."""
    failed: dict[str, S4Error] = {}

    async def checking(scope: trio.CancelScope) -> None:
        try:
            await check()
        except S4Error as e:
            failed["check"] = e
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(checking, nursery.cancel_scope)
        try:
            await command
        except S4Error as e:
            failed["command"] = e
    if failed:
        raise failed.get("check") or failed["command"]


def _printed_files(listing: int, cwd: str, node: str, what: str) -> list[str]:
    """The files a map-to-n command printed (its stdout, the fd `listing`):
    each must exist inside its temp dir."""
    size = os.fstat(listing).st_size
    if size > limits.FRAME_MAX_BYTES:  # not cut silently: a name past the cut would be lost
        raise CommandFailed(f"command on {node} for {what} printed {size} bytes of file names, more "
                            f"than the {limits.FRAME_MAX_BYTES} a map-to-n command may print",
                            node=node, key=what, exit=0, stderr="")
    lines = os.pread(listing, size, 0).decode(errors="replace").splitlines()
    files: dict[str, None] = {}
    real = None  # whether cwd's path still leads to cwd (no symlink planted on the way): asked once
    for line in lines:
        if not line.strip():
            continue
        if real is None:
            real = os.path.realpath(cwd) == cwd
        if real and "/" not in line and line not in (".", ".."):  # a plain name: one lstat
            path = cwd + "/" + line
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    files[path] = None
                    continue
            except (OSError, ValueError):  # missing, or a NUL in the name
                pass
            printed = path
        elif "\0" in line:  # no file has such a name (and realpath would raise)
            printed = path = ""
        else:
            printed = os.path.join(cwd, line)
            path = os.path.realpath(printed)
        # a symlink would publish its target under the target's name (or lose a name)
        if not (path.startswith(cwd + "/") and os.path.isfile(path)) or os.path.islink(printed):
            shown = repr(line if len(line) <= 200 else line[:200] + "...")  # one readable line
            raise CommandFailed(f"command on {node} for {what} printed {shown}, "
                                "which is not a file it wrote in its directory",
                                node=node, key=what, exit=0, stderr="")
        files[path] = None
    return list(files)

"""Child processes of the controller: start, wait, reap, and never leave one behind.

This module owns the plumbing under one command: `spawn` starts a program in
a new session (its own process group) with given stdin/stdout fds and a
pipe for stderr; `wait` waits for its exit on a pidfd while keeping the tail
of its stderr; `reap` kills its whole group and reaps it, however the wait
ended; `describe_exit` words an exit status for a user. What a command is,
where its files live and what happens to its output is the controller's.

Spawning costs what the machine's own spawn costs: `os.posix_spawn` (a
vfork-style clone straight into exec) instead of `subprocess.Popen`, whose
Python set-up costs ~0.25 ms of the daemon's CPU per command more (measured
here: ~0.16 against ~0.39 ms of parent CPU per spawn of a 60 MB process).
posix_spawn has no working-directory action, so the daemon's own cwd is set
to the command's directory for the duration of the call and restored at
once, with no await in between: every path the daemon uses is absolute (the
data dir is resolved at start), so nothing else sees the borrowed cwd.

Commands do not outlive their daemon, even a SIGKILLed one: each running
command's session is in a `Ledger` that a watchdog process reads when the
daemon dies (see s4d/orphans.py).
"""
from __future__ import annotations

import os
import select
import signal

import trio

from s4d import limits, orphans

_READ_BYTES = 65536  # one read of a command's stderr: a whole pipe, at its default size
# signals the daemon's interpreter ignores that a command must get back at their defaults
# (what Popen's restore_signals does): `yes | head` ends by SIGPIPE, not by an EPIPE error
_RESTORED = tuple(getattr(signal, s) for s in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, s))


class Process:
    """A started command: its pid (= its process group and session id), a pidfd
    that turns readable when it exits, and the read end of its stderr pipe."""
    __slots__ = ("pid", "pidfd", "stderr", "status", "slot")

    def __init__(self, pid: int, pidfd: int, stderr: int, slot: int):
        self.pid = pid
        self.pidfd = pidfd
        self.stderr = stderr
        self.status: int | None = None  # the exit code once reaped; -N for signal N
        self.slot = slot  # in the ledger


class Spawner:
    """Starts commands, each in the ledger while it runs."""

    def __init__(self) -> None:
        # the daemon's cwd, to go back to after each spawn (O_PATH: it need not be readable)
        self._home = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.ledger = orphans.Ledger()

    def spawn(self, path: str, argv: list[str], stdin: int, stdout: int, cwd: str,
              env: dict) -> Process:
        """Start the program at path as argv in a new session, stdin and stdout from
        the given fds, stderr into a non-blocking pipe. On the event loop: this
        waits for the exec and no longer."""
        r, w = os.pipe()
        try:
            os.chdir(cwd)
            try:
                pid = os.posix_spawn(path, argv, env, setsid=True, setsigdef=_RESTORED,
                                     file_actions=_redirect(stdin, stdout, w))
            finally:
                os.fchdir(self._home)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        os.set_blocking(r, False)
        slot = self.ledger.add(pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # out of fds: it could not be waited for
            proc = Process(pid, -1, r, slot)
            self._forget(proc)
            _kill_group(pid)
            os.waitpid(pid, 0)
            os.close(r)
            raise
        return Process(pid, pidfd, r, slot)

    async def reap(self, proc: Process) -> None:
        """Kill proc's process group, then reap proc; close its fds. In this order:
        until it is reaped, its pid cannot be reused, so the group is still its own."""
        _kill_group(proc.pid)
        self._forget(proc)
        pid, status = os.waitpid(proc.pid, os.WNOHANG)  # after `wait`, it has exited already
        if pid == 0:
            with trio.CancelScope(shield=True):  # SIGKILLed: it is gone promptly
                await trio.lowlevel.wait_readable(proc.pidfd)
            _, status = os.waitpid(proc.pid, 0)
        proc.status = os.waitstatus_to_exitcode(status)
        os.close(proc.pidfd)
        os.close(proc.stderr)

    def _forget(self, proc: Process) -> None:
        """The group is dead (or dying of SIGKILL) and not reaped yet: stop tracking it."""
        self.ledger.remove(proc.slot)


def _redirect(stdin: int, stdout: int, stderr: int) -> list:
    """fd actions putting the three fds at 0, 1, 2. A source fd that is itself
    0, 1 or 2 (a daemon started with a standard fd closed) is moved out of
    the way first, so no dup2 overwrites a source still needed."""
    actions, fds = [], [stdin, stdout, stderr]
    if any(fd < 3 for fd in fds):
        spare = max(fds) + 1  # above every source: no move overwrites one still to be moved
        actions = [(os.POSIX_SPAWN_DUP2, fd, spare + i) for i, fd in enumerate(fds)]
        fds = [spare + i for i in range(len(fds))]
    actions += [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
    return actions


async def wait(proc: Process) -> bytes:
    """Wait for a command to exit; return the tail of its stderr. One epoll set
    holds both fds, so one task waits for either: no reader task per command."""
    tail = bytearray()
    with select.epoll() as ready:
        ready.register(proc.pidfd, select.EPOLLIN)
        ready.register(proc.stderr, select.EPOLLIN)
        while True:
            await trio.lowlevel.wait_readable(ready.fileno())
            for fd, _ in ready.poll(0):
                if fd == proc.pidfd:  # what it wrote before it exited is in the pipe: at most its size
                    _read_tail(proc.stderr, tail, limits.PIPE_BYTES)
                    return bytes(tail)
                if not _read_tail(proc.stderr, tail, _READ_BYTES):  # a chunk a wake-up: no hogging
                    ready.unregister(proc.stderr)  # every writer closed it: only the exit is left


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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(status: int) -> str:
    """`exit 3`, `killed by SIGPIPE`; bash's 128+N for a child it ran that
    died of signal N reads `exit 141 (SIGPIPE)`."""
    if status < 0:
        return f"killed by {_signal_name(-status)}"
    if 128 < status < 128 + signal.NSIG:
        return f"exit {status} ({_signal_name(status - 128)})"
    return f"exit {status}"


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"

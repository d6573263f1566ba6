"""Commands never outlive their daemon, even one that is SIGKILLed.

Two lines of defence:
- `Ledger`: the session id of every running command sits in a page of memory
  (a memfd) that the daemon shares with a watchdog: this file run as a script
  (`python -I -S orphans.py`, standard library only: it starts in ~10 ms and
  holds ~8 MB), in a session of its own, blocked in one read of a pipe whose
  write end only the daemon holds. When the daemon dies, however it dies,
  the kernel closes the pipe; the watchdog reads EOF, kills the process
  group of every session still in the page, and exits. Per command this
  costs two stores to memory: no syscall, no file, no wake-up.
- `kill_leftovers`, at the next start on a data dir, for what a watchdog
  killed along with its daemon could not do: every session whose leader is
  still in the dir inside the data dir's temp dir where commands start, and
  that started before this daemon, is killed (a command that cd'ed
  elsewhere and lost its watchdog too is out of reach: the start-up sweep
  never guesses).

Measured and dropped: a parent-death signal on each command's session leader
(`setpriv --pdeathsig KILL` is one more exec per command, +0.8 ms of CPU; a
preexec_fn that calls prctl rules out vfork, +5 ms per spawn), which would
also kill only the leader, not the rest of its group; and a record file per
command in the temp dir (a create and an unlink per command: 2 ms each on
this VM's ext4 under load).
"""
import os
import signal
import sys

_SLOTS = 512  # one page of int64 session ids: commands running at once, recorded


class Ledger:
    """The session ids of the running commands, shared with the watchdog."""

    def __init__(self) -> None:
        import mmap
        fd = os.memfd_create("s4d-commands", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, 8 * _SLOTS)
            self._map = mmap.mmap(fd, 8 * _SLOTS)
            r, self._pipe = os.pipe()  # the write end is held, never written, until the daemon exits
            try:
                os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                               os.environ, setsid=True,
                               file_actions=[(os.POSIX_SPAWN_DUP2, r, 0), (os.POSIX_SPAWN_DUP2, fd, 3)])
            finally:
                os.close(r)
        finally:
            os.close(fd)
        self._slots = memoryview(self._map).cast("q")
        self._free = list(range(_SLOTS))

    def add(self, session: int) -> int:
        """Record a running command's session; returns its slot (-1: all taken, unrecorded)."""
        if not self._free:
            return -1
        slot = self._free.pop()
        self._slots[slot] = session
        return slot

    def remove(self, slot: int) -> None:
        """Before the command is reaped (its id cannot be reused until then)."""
        if slot >= 0:
            self._slots[slot] = 0
            self._free.append(slot)


def _watch() -> None:
    import mmap
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    while os.read(0, 4096):  # nothing is ever written: this returns when the daemon is gone
        pass
    with mmap.mmap(3, 8 * _SLOTS, access=mmap.ACCESS_READ) as page:
        for session in memoryview(page).cast("q"):
            if session > 0:
                try:
                    os.killpg(session, signal.SIGKILL)
                except OSError:
                    pass


def kill_leftovers(tmp: str) -> int:
    """Kill every session whose leader's working directory is inside tmp (where
    commands start), of this user, started before this process; return how
    many processes were killed. A pid is not reused while a process still has
    it as its session id, so the sessions found are ours."""
    me, uid = os.getpid(), os.getuid()
    started_before = _stat(me)[19]
    inside = tmp.rstrip("/") + "/"
    found: list[tuple[int, int]] = []  # (pid, session)
    sessions = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            fields = _stat(entry.name)
            if fields[19] > started_before:
                continue
            found.append((int(entry.name), fields[3]))
            if fields[3] == int(entry.name) and os.readlink(f"/proc/{entry.name}/cwd").startswith(inside):
                sessions.add(fields[3])
        except (OSError, ValueError, IndexError):
            continue
    killed = 0
    for pid, session in found:
        if session in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def _stat(pid) -> list[int]:
    """/proc/PID/stat from its 3rd field on, as ints: [3] is the session, [19] the start time."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return [int(x) if x.isdigit() else 0 for x in fields]


if __name__ == "__main__":
    _watch()

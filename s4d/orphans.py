"""Commands never outlive their daemon, even one that is SIGKILLed.

Every running command (a session of its own, its id the leader's pid) has a
record in the data dir's temp dir: an empty file `pgid-<pgid>-<unique>`,
made when it starts and removed when it is reaped (one syscall each; see
s4d/process.py). What reads the records:
- a watchdog, one per daemon: this file run as a script (`python -I -S
  orphans.py TMP`, standard library only, so it starts in ~10 ms and holds
  ~8 MB), in a session of its own, with the read end of a pipe as its stdin
  whose write end only the daemon holds. It blocks in one read. When the
  daemon dies, however it dies, the kernel closes the pipe: the watchdog
  reads EOF, kills the sessions the records name and exits. It costs
  nothing per command: no message, no wake-up.
- `kill_leftovers` at the next start on that data dir, for what a watchdog
  killed along with its daemon could not do.

Measured and dropped: a parent-death signal on each command's session leader
(`setpriv --pdeathsig KILL` is one more exec per command, +0.8 ms of CPU; a
preexec_fn that calls prctl rules out vfork, +5 ms per spawn), which would
also kill only the leader, not the rest of its group.
"""
import os
import signal
import sys

RECORD_PREFIX = "pgid-"


def recorded_sessions(tmp: str) -> set[int]:
    sessions = set()
    for name in os.listdir(tmp):
        if name.startswith(RECORD_PREFIX):
            try:
                sessions.add(int(name[len(RECORD_PREFIX):].split("-", 1)[0]))
            except ValueError:
                pass
    return sessions


def kill_leftovers(tmp: str, started_before: int | None = None) -> int:
    """Kill every process in a session that a record in tmp names; return how
    many. Only processes of this user, started before `started_before` (clock
    ticks since boot; default: this process's start): a pid is not reused while
    a process still has it as its session id, so a live session with a
    recorded id is the recorded one. The records are left to the temp sweep."""
    sessions = recorded_sessions(tmp)
    if not sessions:
        return 0
    me, uid, killed = os.getpid(), os.getuid(), 0
    if started_before is None:
        started_before = _stat(me)[19]
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            fields = _stat(entry.name)
        except (OSError, ValueError, IndexError):
            continue
        if fields[3] in sessions and fields[19] <= started_before:  # stat fields 6 and 22
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def _stat(pid) -> list[int]:
    """/proc/PID/stat from its 3rd field on, as ints: [3] is the session, [19] the start time."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return [int(x) if x.isdigit() else 0 for x in fields]


def start_watchdog(tmp: str) -> int:
    """Start the watchdog for the commands recorded in tmp; return the write end
    of its pipe, which the daemon keeps open (and never writes) until it exits."""
    r, w = os.pipe()
    try:
        os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__), tmp],
                       os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, r, 0)], setsid=True)
    finally:
        os.close(r)
    return w


def _watch(tmp: str) -> None:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    while os.read(0, 4096):  # nothing is ever written: this returns at the daemon's exit
        pass
    kill_leftovers(tmp, started_before=_stat(os.getpid())[19] + 10**9)


if __name__ == "__main__":
    _watch(sys.argv[1])

"""One process per directory: an flock on the directory itself.

A daemon locks its data dir, and `s4d local` its DIR, for as long as it
runs; the kernel drops the lock when the process dies, however it dies, so
there is no stale lock file to clean up (and no file at all: nothing new
shows up in the data dir). A second process finds the lock taken and is
told the holder's pid, read from /proc/locks.
"""
import fcntl
import os


class Held(Exception):
    """The directory is locked by another process: `pid` (None if it cannot be told)."""

    def __init__(self, path: str, pid: int | None):
        super().__init__(path)
        self.path = path
        self.pid = pid


def lock(path: str) -> int:
    """Lock the directory path for this process's life; return the fd that holds it.
    Raises Held if another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        st = os.fstat(fd)
        os.close(fd)
        raise Held(path, _holder(st)) from None
    return fd


def _holder(st: os.stat_result) -> int | None:
    """The pid /proc/locks gives for an flock on the file of st (dev and inode)."""
    want = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()  # 1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF
                if "FLOCK" in fields and want in fields:
                    return int(fields[fields.index(want) - 1])
    except (OSError, ValueError):
        pass
    return None

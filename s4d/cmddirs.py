"""The directories map commands run in: one map's pool of them.

Every command starts in an empty dir of its own inside the data dir's
`_tmp/`. Making and removing one per command costs more than the rest of s4's
share of a small key, so a map hands dirs on: a dir its command left as it
was (its mtime, set to 0 when it was made, and its ctime unmoved) goes
straight to the next command; one its command wrote files in is emptied first. A dir that is
no longer the one made (another inode, mode or owner), carries xattrs (a
default ACL would reach the next command's files) or holds a directory or
too many entries is removed instead, and the next command gets a new one.

A dir handed on spares a mkdir and an rmdir per command. On ext4 without a
journal (this machine's root filesystem) that matters more than the syscalls:
there an inode freed in the last minute (six, while its inode table block is
dirty) is skipped, one by one, by every inode allocation in its group, and a
map-to-n that makes and frees files fast spent half the machine's CPU in that
scan (perf: find_inode_bit, recently_deleted).

A used dir is emptied (or removed) in a thread, off the event loop, and
handed on once it is empty. An unlink can wait for the disk: a file whose
blocks were written (split, like many programs, truncates each new output,
and ext4 then writes it out at close) is discarded, on a `discard`-mounted
filesystem, before unlink returns: ~6 ms for a 5 MiB file here, during which
the whole daemon stood still (a third of a big map-to-n's time, sampled).
The command's worker waits for it (the cpu-job slot is already free).
"""
from __future__ import annotations

import os

import trio

from s4d import limits
from s4d.storage import Storage


class CommandDirs:
    def __init__(self, storage: Storage):
        self.storage = storage
        self._threads = trio.CapacityLimiter(limits.CMD_DIR_EMPTY_THREADS)
        self._ready: list[tuple[str, tuple]] = []  # (dir, its stamp when handed back)

    def take(self) -> tuple[str, tuple]:
        """An empty dir for a command: (path, stamp to compare it with afterwards)."""
        if self._ready:
            return self._ready.pop()
        cwd = self.storage.new_temp_dir()
        os.utime(cwd, ns=(0, 0))  # any entry made or removed in it sets its mtime to now
        return cwd, _stamp(cwd)

    async def give(self, cwd: str, made: tuple) -> None:
        """The command in cwd is done (and dead): hand the dir on, at once if it is
        untouched, else once a thread has emptied it; or remove it."""
        try:
            now = _stamp(cwd)
        except OSError:
            now = None
        if now == made:  # untouched: its mtime (0 when made) and ctime did not move
            self._ready.append((cwd, now))
            return
        with trio.CancelScope(shield=True):  # a few unlinks: never leave a dir half emptied
            if now is not None:
                now = await trio.to_thread.run_sync(_emptied, cwd, made, now, limiter=self._threads)
            if now is None:
                await trio.to_thread.run_sync(self.storage.discard, cwd, limiter=self._threads)
            else:
                self._ready.append((cwd, now))

    async def remove(self, path: str) -> None:
        """Remove path in a thread, unless it was published: a dir whose command
        failed or was cancelled, or a command's stdout file that was not
        published (an eval's, a failed command's), which may be big."""
        if not self.storage.is_temp(path):  # published (Storage forgot it then): nothing to do
            return
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.storage.discard, path, limiter=self._threads)

    def close(self) -> None:
        """The map is over: remove the dirs (empty: rmdirs)."""
        for cwd, _ in self._ready:
            self.storage.discard(cwd)
        self._ready.clear()


def _stamp(d: str) -> tuple:
    """What says a dir is still the one handed out, untouched: its inode, mode and
    owner, its mtime (set to 0 when handed out) and its ctime, which no command
    can set back (`touch -d @0 .` after writing a file moves it)."""
    st = os.lstat(d)
    return st.st_ino, st.st_mode, st.st_uid, st.st_mtime_ns, st.st_ctime_ns


def _emptied(cwd: str, made: tuple, now: tuple) -> tuple | None:
    """Empty a used dir (`now`: its stamp after the command); its new stamp, or
    None to remove it instead."""
    try:
        if now[:3] != made[:3] or os.listxattr(cwd, follow_symlinks=False):
            return None
        entries = []
        with os.scandir(cwd) as found:
            for entry in found:
                if entry.is_dir(follow_symlinks=False) or len(entries) == limits.CMD_DIR_REUSE_MAX_ENTRIES:
                    return None
                entries.append(entry)
        for entry in entries:
            os.unlink(entry.path)
        os.utime(cwd, ns=(0, 0))
        return _stamp(cwd)
    except OSError:
        return None

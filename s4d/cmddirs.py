"""The directories map commands run in: one map's pool of them.

Every command starts in an empty dir of its own inside the data dir's
`_tmp/`. Making and removing one per command costs more than the rest of s4's
share of a small key, so a map hands dirs on: a dir its command left as it
was (its mtime, set to 0 when it was made, untouched) goes straight to the
next command; one its command wrote files in is emptied first. A dir that is
no longer the one made (another inode, mode or owner), carries xattrs (a
default ACL would reach the next command's files) or holds a directory or
too many entries is removed instead, and the next command gets a new one.

A dir handed on spares a mkdir and an rmdir per command. On ext4 without a
journal (this machine's root filesystem) that matters more than the syscalls:
there an inode freed in the last minute (six, while its inode table block is
dirty) is skipped, one by one, by every inode allocation in its group, and a
map-to-n that makes and frees files fast spent half the machine's CPU in that
scan (perf: find_inode_bit, recently_deleted).
"""
from __future__ import annotations

import os

from s4d import limits
from s4d.storage import Storage


class CommandDirs:
    def __init__(self, storage: Storage):
        self.storage = storage
        self._ready: list[tuple[str, tuple]] = []  # (dir, its stamp when handed back)

    def take(self) -> tuple[str, tuple]:
        """An empty dir for a command: (path, stamp to compare it with afterwards)."""
        if self._ready:
            return self._ready.pop()
        cwd = self.storage.new_temp_dir()
        os.utime(cwd, ns=(0, 0))  # any entry made or removed in it sets its mtime to now
        return cwd, _stamp(cwd)

    def give(self, cwd: str, made: tuple) -> None:
        """The command in cwd is done (and dead): hand the dir on, or remove it."""
        try:
            now = _stamp(cwd)
        except OSError:
            now = None
        if now is not None and now != made:  # used: its mtime (0 when made) moved, or it changed
            now = _emptied(cwd, made, now)
        if now is None:
            self.storage.discard(cwd)
        else:
            self._ready.append((cwd, now))

    def close(self) -> None:
        """The map is over: remove the dirs."""
        for cwd, _ in self._ready:
            self.storage.discard(cwd)
        self._ready.clear()


def _stamp(d: str) -> tuple:
    st = os.lstat(d)
    return st.st_ino, st.st_mode, st.st_uid, st.st_mtime_ns


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

"""The data directory: where keys live, how they appear, how they go.

Layout under --data-dir:

    <bucket>/<path>/<name>   a key: a read-only file whose xattr user.s4.xxh3
                             holds the checksum taken when it was written
    _tmp/                    temp files and command dirs of work in flight

The daemon holds an flock on the data dir itself (s4d.dirlock): a second
daemon on the same dir exits at once, naming the first one's pid.

Buckets never start with `_`, so nothing of the daemon's own can show up as,
or collide with, a key. A key appears by `os.link` of a finished, verified
temp file that already carries its checksum: atomic, and it cannot
overwrite, so of two racing puts exactly one wins. Publish and delete run
without an await in between their steps, so no other task of this daemon
sees a half-made directory; `rm -r` (`delete_prefix`) unlinks files from
threads, but makes and removes directories only on the event loop too.
Paths come from validated keys and are checked again here: a symlink
planted in the data dir is never followed.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid

import trio

from s4d import dirlock, keys
from s4d.config import DaemonConfig
from s4d.errors import BadKey, BadRequest, Exists, NoSpace, NotFound

XATTR = "user.s4.xxh3"
TMP = "_tmp"


class Storage:
    def __init__(self, root: str, config: DaemonConfig | None = None):
        self.config = config or DaemonConfig(data_dir=root)
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        self._lock_fd = _lock(self.root)
        self.tmp = os.path.join(self.root, TMP)
        if os.path.islink(self.tmp):  # planted: temps and the sweep would go through it
            os.unlink(self.tmp)
        os.makedirs(self.tmp, exist_ok=True)
        self._active: set[str] = set()
        self._check_xattrs()

    def _check_xattrs(self) -> None:
        probe = self.new_temp()
        try:
            open(probe, "wb").close()
            os.setxattr(probe, XATTR, b"probe")
        except OSError as e:
            raise SystemExit(f"s4d: the data dir's filesystem does not support user xattrs ({e.strerror}): {self.root}")
        finally:
            self.discard(probe)

    # --- temp files ----------------------------------------------------------
    def new_temp(self, kind: str = "put") -> str:
        path = os.path.join(self.tmp, f"{kind}-{uuid.uuid4().hex}")
        self._active.add(path)
        return path

    def is_temp(self, path: str) -> bool:
        """path is a temp of this storage not yet published or discarded."""
        return path in self._active

    def new_temp_dir(self) -> str:
        path = self.new_temp("cmd")
        os.mkdir(path)
        return path

    def discard(self, path: str) -> None:
        self._active.discard(path)
        try:
            os.unlink(path)
        except IsADirectoryError:
            try:
                os.rmdir(path)  # most command dirs end empty: skip rmtree's walk
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass

    def sweep(self) -> int:
        """Remove whatever is in _tmp that no live transfer or command owns."""
        removed = 0
        for entry in os.scandir(self.tmp):
            if entry.path not in self._active:
                self.discard(entry.path)
                removed += 1
        return removed

    # --- keys ----------------------------------------------------------------
    def path(self, key: str) -> str:
        return os.path.join(self.root, *keys.check_key(key))

    def _inside(self, path: str) -> bool:
        return os.path.realpath(path) == path

    def stat(self, key: str) -> tuple[str, int, str]:
        """(path, size, checksum) of a published key, or NotFound."""
        path = self.path(key)
        try:
            st = os.stat(path, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or not self._inside(path):
                raise FileNotFoundError
            digest = os.getxattr(path, XATTR, follow_symlinks=False).decode()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such key: {keys.url(key)}") from None
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise NotFound(f"no checksum stored for {keys.url(key)}") from None
            raise
        return path, st.st_size, digest

    def open_key(self, key: str) -> tuple[int, int, str]:
        """(fd, size, checksum) of a published key, opened once: the checksum is read
        from that fd, so a reader verifies and sends the one file it opened whatever
        happens to the path meanwhile (a delete and a new put). The last component
        is never followed (O_NOFOLLOW), the fd's own path must be the key's (no
        symlinked directory on the way), a planted FIFO never blocks (O_NONBLOCK).
        The caller closes the fd."""
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise NotFound(f"no such key: {keys.url(key)}") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or os.readlink(f"/proc/self/fd/{fd}") != path:
                raise NotFound(f"no such key: {keys.url(key)}")
            digest = os.getxattr(fd, XATTR).decode()
        except OSError as e:
            os.close(fd)
            if e.errno == errno.ENODATA:
                raise NotFound(f"no checksum stored for {keys.url(key)}") from None
            raise
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size, digest

    def check_new(self, key: str) -> None:
        """Raise unless key could be published here now: checked before a put's
        bytes move, so a put that cannot land fails at once (publish checks again)."""
        parts = keys.check_key(key)
        d = self.root
        for i, part in enumerate(parts[:-1]):
            d = os.path.join(d, part)
            try:
                if not stat.S_ISDIR(os.lstat(d).st_mode):
                    raise _key_in_path(parts, i, key)
            except (FileNotFoundError, NotADirectoryError):
                return
        final = os.path.join(d, parts[-1])
        if os.path.isdir(final):
            raise _directory_clash(key)
        if os.path.lexists(final):
            raise Exists(f"key exists (immutable: rm it first): {keys.url(key)}")

    def _make_parents(self, key: str, parts: list[str]) -> str:
        d = self.root
        for i, part in enumerate(parts[:-1]):
            d = os.path.join(d, part)
            try:
                os.mkdir(d)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(d).st_mode):
                    raise _key_in_path(parts, i, key) from None
            except OSError as e:
                _raise_no_space(e)
                raise
        return os.path.join(d, parts[-1])

    def publish(self, src: str, key: str, digest: str, fd: int | None = None) -> None:
        """Make the finished file `src` the key, atomically; never overwrites. The file
        is taken by a descriptor (fd, open on it, or src opened without following a
        link) and must be a regular file with no other name: a map command cannot
        get a file outside the data dir (a link it made to it) tagged, chmodded or
        linked in; the link made is checked to be that file."""
        parts = keys.check_key(key)
        mine = fd is None
        if mine:
            try:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
                    raise NotOwnFile(f"cannot publish {keys.url(key)}: its file is gone or is a link, "
                                     "not a file written for it") from None
                raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise NotOwnFile(f"cannot publish {keys.url(key)}: its file is not a regular file with "
                                 "one name (a link to another file?)")
            try:
                os.setxattr(fd, XATTR, digest.encode())
                os.chmod(fd, 0o444)  # chmod of an fd: fchmod
            except OSError as e:
                _raise_no_space(e)
                raise
            final = self._make_parents(key, parts)
            try:
                os.link(src, final, follow_symlinks=False)
            except FileExistsError:
                self._prune(os.path.dirname(final))
                if os.path.isdir(final):
                    raise _directory_clash(key) from None
                raise Exists(f"key exists (immutable: rm it first): {keys.url(key)}") from None
            except FileNotFoundError:  # its one name went meanwhile
                self._prune(os.path.dirname(final))
                raise NotOwnFile(f"cannot publish {keys.url(key)}: its file was removed") from None
            except OSError as e:  # a new directory entry needs a block: ENOSPC here too
                self._prune(os.path.dirname(final))
                _raise_no_space(e)
                raise
            if os.lstat(final).st_ino != st.st_ino:  # src was swapped since it was opened
                os.unlink(final)
                self._prune(os.path.dirname(final))
                raise NotOwnFile(f"cannot publish {keys.url(key)}: its file was replaced meanwhile")
        finally:
            if mine:
                os.close(fd)
        os.unlink(src)
        self._active.discard(src)

    def delete(self, key: str) -> None:
        """Remove one key and the directories it leaves empty."""
        path = self.path(key)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such key: {keys.url(key)}") from None
        if not stat.S_ISREG(st.st_mode) or not self._inside(path):
            raise NotFound(f"no such key: {keys.url(key)}")
        os.unlink(path)
        self._prune(os.path.dirname(path))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key whose wire path starts with prefix (as `list(prefix,
        recursive=True)` lists them) and return how many went: batches of one
        directory's names, unlinked by `rm_threads` threads at once (each unlink
        of a file on disk may wait for a discard; they overlap), the emptied
        directories pruned once at the end, on the event loop. The event loop
        stays free; a cancel stops it between batches."""
        by_dir: dict[str, list[str]] = {}
        for name, _, _ in await trio.to_thread.run_sync(self.list, prefix, True):
            d, _, base = name.rpartition("/")
            by_dir.setdefault(d, []).append(base)
        step = self.config.rm_batch_keys
        batches = [(d, names[i:i + step]) for d, names in by_dir.items()
                   for i in range(0, len(names), step)]
        batches.reverse()  # popped from the end: in listing order
        emptied: set[str] = set()
        deleted = 0

        async def worker() -> None:
            nonlocal deleted
            while batches:
                d, names = batches.pop()
                n = await trio.to_thread.run_sync(self.delete_in, d, names)
                if n:
                    deleted += n
                    emptied.add(os.path.join(self.root, d))

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.config.rm_threads):
                    nursery.start_soon(worker)
        finally:
            self.prune(emptied)  # what was emptied before a failure or cancel too
        return deleted

    def delete_in(self, rel: str, names: list[str]) -> int:
        """Unlink the files `names` (from a listing) of the key directory `rel`
        (wire form, `bucket/a`); return how many went. The directory is opened
        once and must be where its path says, every component a real directory
        (no realpath per key); unlinkat never follows the last component."""
        d = os.path.join(self.root, rel)
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return 0
            raise
        deleted = 0
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != d:  # a symlink somewhere on the way
                return 0
            for name in names:
                try:
                    os.unlink(name, dir_fd=fd)
                    deleted += 1
                except (FileNotFoundError, IsADirectoryError):
                    pass
        finally:
            os.close(fd)
        return deleted

    def prune(self, dirs: set[str]) -> None:
        """Remove the empty ones of dirs and their empty parents, deepest first.
        Once, after deleting many keys: rmdir of a big directory emptied from the
        front rescans it every time, which made pruning per key quadratic."""
        for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
            self._prune(d)

    def _prune(self, d: str) -> None:
        """Remove empty directories from `d` up to (and including) the bucket."""
        while d != self.root and d.startswith(self.root + "/"):
            try:
                os.rmdir(d)
            except OSError:
                return
            d = os.path.dirname(d)

    # --- listing ---------------------------------------------------------------
    def _walk(self, d: str, rel: str):
        """(wire path, size, mtime) of every key below directory d; no symlinks."""
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                yield from self._walk(e.path, rel + e.name + "/")
            elif e.is_file(follow_symlinks=False):
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield rel + e.name, st.st_size, st.st_mtime

    def _dir_of(self, prefix: str) -> tuple[str, str, str]:
        """Split a prefix into (dir path on disk, dir as wire path + '/', partial name)."""
        parts = keys.check_prefix(prefix)
        whole, partial = parts[:-1], parts[-1] if parts else ""
        d = os.path.join(self.root, *whole)
        return d, "".join(p + "/" for p in whole), partial

    def _children(self, d: str, partial: str, top: bool):
        if not self._inside(d):
            return []
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [e for e in entries if e.name.startswith(partial) and not (top and e.name.startswith("_"))]

    def list(self, prefix: str, recursive: bool) -> list[tuple[str, int | None, float]]:
        """Recursive: every key whose wire path starts with prefix (full paths);
        a bucket name is matched whole (`logs` is the bucket logs, never
        logs-2024), a partial name inside a bucket by prefix (`b/step` holds
        `b/step1/x` and `b/step2/y`). Otherwise: the entries of prefix's
        directory whose names start with its last component; directories as
        `name/` with size None. An entry removed while it is being listed (a
        concurrent rm) is simply not listed."""
        if recursive and prefix and "/" not in prefix:
            prefix += "/"
        d, rel, partial = self._dir_of(prefix)
        out = []
        for e in self._children(d, partial, top=not rel):
            try:
                if e.is_dir(follow_symlinks=False):
                    if recursive:
                        out.extend(self._walk(e.path, rel + e.name + "/"))
                    else:
                        out.append((e.name + "/", None, e.stat(follow_symlinks=False).st_mtime))
                elif e.is_file(follow_symlinks=False) and rel:
                    st = e.stat(follow_symlinks=False)
                    out.append((rel + e.name if recursive else e.name, st.st_size, st.st_mtime))
            except FileNotFoundError:
                continue
        return out

    def keys_under(self, indir: str) -> list[tuple[str, int]]:
        """(wire key, size) of every key below the directory `indir` (wire, ends in '/')."""
        d, rel, _ = self._dir_of(indir)
        if not rel or not self._inside(d):
            return []
        return [(key, size) for key, size, _ in self._walk(d, rel)]

    def iter_keys_under(self, indir: str):
        """Wire keys below the directory `indir` (wire, ends in '/'), lazily: one
        directory's names read at a time, no stat per key (a map over 100,000
        keys keeps no list of them)."""
        d, rel, _ = self._dir_of(indir)
        if rel and self._inside(d):
            yield from self._iter_names(d, rel)

    def _iter_names(self, d: str, rel: str):
        files, dirs = [], []
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        dirs.append(e.name)
                    elif e.is_file(follow_symlinks=False):
                        files.append(e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in files:
            yield rel + name
        del files
        for name in dirs:
            yield from self._iter_names(os.path.join(d, name), rel + name + "/")

    def usage(self) -> tuple[int, int]:
        count = size = 0
        for e in self._children(self.root, "", top=True):
            if e.is_dir(follow_symlinks=False):
                for _, n, _ in self._walk(e.path, ""):
                    count += 1
                    size += n
        return count, size


def _lock(root: str) -> int:
    """Lock the data dir for this daemon's life: a second daemon on the same dir
    exits at once naming the first (whose sweep would otherwise delete this
    one's temp files, and the other way round)."""
    try:
        return dirlock.lock(root)
    except dirlock.Held as e:
        raise SystemExit(f"s4d: the data dir {root} is in use by another s4d "
                         f"(pid {e.pid or 'unknown'})") from None


class NotOwnFile(BadRequest):
    """A file to publish that is a link, or has another name: what a misbehaving
    map command leaves (the caller names the node)."""


def _raise_no_space(e: OSError) -> None:
    """Raise NoSpace for a full disk or quota (the caller names node and key)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpace("no space left") from None


def _key_in_path(parts: list[str], i: int, key: str) -> BadKey:
    return BadKey(f"{keys.url('/'.join(parts[:i + 1]))} is a key, "
                  f"so it cannot also be a directory of {keys.url(key)}")


def _directory_clash(key: str) -> Exists:
    return Exists(f"cannot store {keys.url(key)}: {keys.url(key)}/ is a directory "
                  "(a key and a directory cannot share a name)")

"""s4 as an fsspec filesystem: `s4://bucket/key` for pandas, pyarrow, duckdb, dask.

Installed with `pip install 's4[fsspec]'`, which registers the protocol `s4`
(entry point group `fsspec.specs`), so `fsspec.filesystem("s4")` and every
fsspec-aware library open `s4://` paths. This module owns the mapping of
fsspec's calls onto `s4ctl.client.Client`; it moves no bytes itself and is
never imported by `s4ctl` (a small `cp` pays nothing for it).

- Paths as fsspec has them: `bucket/key`, the protocol stripped in results.
  Directories are implicit (a key's parents); `mkdir` makes nothing.
- Reads: `cat_file(path, start, end)` and the buffered file's
  `_fetch_range(start, end)` are one ranged get each: the node sends only that
  range (sendfile from the offset) with the xxh3 of the bytes it read, checked
  on arrival. A whole-key read (`cat_file` without a range, `get_file`) is
  checked against the checksum stored when the key was written; a range is
  checked in transit only (hashing the whole key for each range would cost a
  pass over it): pass `verify=True` as a storage option to have the node check
  the whole key against its stored checksum before every ranged read.
- Writes: `open(path, "wb")` buffers into a local temp file (unnamed, in
  $TMPDIR: gone with the process) and publishes one immutable key at close.
  A key that exists raises FileExistsError at open (and at close if another
  writer won meanwhile). An exception inside `with fs.open(...)`, or a file
  dropped unclosed, publishes nothing.
- What s4 cannot do raises at once with a reason: overwriting or appending to a
  key (keys are immutable), copying or moving within s4 (there is no copy or
  move: get and put instead).
- Listings (`ls`, `info`, `find`) give `name`, `size`, `type`, `mtime` (epoch
  seconds) and `LastModified` (aware datetime); they are cached in `dircache`,
  which every write and delete through this filesystem invalidates.
- One `Client` per instance; it keeps idle connections per thread, so calls
  from many threads (dask) reuse connections without sharing one. fsspec
  caches instances by their arguments and rebuilds them from those arguments
  when unpickled, so a dask worker makes its own from the same storage options.
"""
from __future__ import annotations

import errno
import io
import os
import tempfile
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from glob import has_magic  # as fsspec itself does

from fsspec.caching import ReadAheadCache, register_cache
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from s4d import conf as s4conf
from s4d import keys, limits
from s4d.errors import BadKey, Exists, NoSpace, NotFound
from s4ctl.client import Client

_IMMUTABLE = "keys are immutable: rm it first"
_NO_COPY = ("s4 has no copy or move within s4 (a key lives on the node its name picks, and "
            "keys are immutable): get it and put it under the new name instead")


@contextmanager
def _oserrors(path: str):
    """S4Errors as the exceptions Python file code expects; the message stays s4's line."""
    try:
        yield
    except NotFound as e:
        raise FileNotFoundError(errno.ENOENT, e.message, path) from None
    except Exists as e:
        raise FileExistsError(errno.EEXIST, e.message, path) from None
    except NoSpace as e:
        raise OSError(errno.ENOSPC, e.message, path) from None
    except BadKey as e:
        raise ValueError(e.message) from None


def _unsupported(message: str) -> io.UnsupportedOperation:
    return io.UnsupportedOperation(message)


class S4FileSystem(AbstractFileSystem):
    """fsspec filesystem over an s4 cluster.

    Storage options: `conf` (path of the cluster conf; default: the usual lookup,
    $S4_CONF_PATH, ~/.s4.conf, /etc/s4.conf, else 127.0.0.1:8080), `verify`
    (have the node check a whole key against its stored checksum before a ranged
    read; default False), `block_size` (bytes per ranged read of an open file)."""

    protocol = "s4"
    root_marker = ""

    def __init__(self, conf: str | None = None, verify: bool = False,
                 block_size: int = limits.FSSPEC_BLOCK_BYTES, **storage_options):
        super().__init__(**storage_options)
        try:
            nodes, self.conf_path = s4conf.load(conf)
        except s4conf.ConfError as e:
            raise ValueError(str(e)) from None
        self.client = Client(nodes)
        self.verify = verify
        self.blocksize = block_size
        self._fetchers = None  # threads fetching the next block of sequential reads, made once needed

    @property
    def fsid(self) -> str:
        return "s4:" + ",".join("%s:%d" % n for n in self.client.nodes)

    # --- listings ------------------------------------------------------------------
    @staticmethod
    def _entry(path: str, size: int | None, mtime: int) -> dict:
        when = datetime.fromtimestamp(mtime, timezone.utc)
        if size is None:
            return {"name": path, "size": 0, "type": "directory", "mtime": mtime, "LastModified": when}
        return {"name": path, "size": size, "type": "file", "mtime": mtime, "LastModified": when}

    def _list_dir(self, path: str) -> list[dict]:
        """The entries of directory `path` ("" for the buckets), from the nodes."""
        prefix = path + "/" if path else ""
        with _oserrors(path):
            entries = self.client.ls(prefix)
        return [self._entry(prefix + name.rstrip("/"), size, mtime) for name, size, mtime in entries]

    def _lookup(self, path: str) -> dict | None:
        """info of `path` from one listing of its parent filtered by its name, or None."""
        with _oserrors(path):
            entries = self.client.ls(path)  # its parent's entries whose names start with its own
        base = keys.basename(path)
        parent = path[:-len(base)]
        found = {name: (size, mtime) for name, size, mtime in entries if name in (base, base + "/")}
        for name in (base, base + "/"):  # a key wins over a directory of the same name on another node
            if name in found:
                return self._entry(parent + base, *found[name])
        return None

    def ls(self, path, detail=True, refresh=False, **kwargs):
        path = self._strip_protocol(path)
        listing = None if refresh else self.dircache.get(path)
        if listing is None:
            listing = self._list_dir(path)
            if listing:
                self.dircache[path] = listing
            else:  # not a directory: a key, or nothing
                info = self._lookup(path) if path else None
                if info is None and path:
                    raise FileNotFoundError(errno.ENOENT, "no such key or directory", path)
                listing = [info] if info is not None and info["type"] == "file" else []
        return listing if detail else [e["name"] for e in listing]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        if path == "":
            return {"name": "", "size": 0, "type": "directory"}
        parent = self._parent(path)
        if path in self.dircache:
            cached = [e for e in self.dircache.get(parent, []) if e["name"] == path]
            return cached[0] if cached else {"name": path, "size": 0, "type": "directory"}
        if parent in self.dircache:
            for entry in self.dircache[parent]:
                if entry["name"] == path:
                    return entry
            raise FileNotFoundError(errno.ENOENT, "no such key or directory", path)
        if "/" in path:  # most paths asked about are keys: their node alone answers
            try:
                size, mtime = self.client.get_info(path)
                return self._entry(path, size, mtime)
            except (NotFound, BadKey):
                pass
        info = self._lookup(path)  # a directory (or nothing): from every node's listing
        if info is None:
            raise FileNotFoundError(errno.ENOENT, "no such key or directory", path)
        return info

    def modified(self, path) -> datetime:
        return self.info(path)["LastModified"]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        """Every key under path, from one recursive listing per bucket (not a walk)."""
        path = self._strip_protocol(path)
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        out: dict[str, dict] = {}
        roots = [path] if path else [e["name"] for e in self._list_dir("")]
        for root in roots:
            with _oserrors(root):
                entries = self.client.ls(root + "/", recursive=True)
            for name, size, mtime in entries:
                rel = name[len(root) + 1:] if path else name
                parts = rel.split("/")
                if maxdepth is None or len(parts) <= maxdepth:
                    out[name] = self._entry(name, size, mtime)
                if withdirs:  # implicit directories, dated by their newest key
                    base = path + "/" if path else ""
                    for depth in range(1, min(len(parts), (maxdepth or len(parts)) + 1)):
                        d = base + "/".join(parts[:depth])
                        if d not in out or out[d]["mtime"] < mtime:
                            out[d] = self._entry(d, None, mtime)
        if path and out and withdirs:
            out[path] = {"name": path, "size": 0, "type": "directory"}
        if path and not out:
            try:
                info = self.info(path)
            except FileNotFoundError:
                info = None
            if info is not None and info["type"] == "file":
                out[path] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    # --- reads -----------------------------------------------------------------------
    def _key(self, path) -> str:
        path = self._strip_protocol(path)
        with _oserrors(path):
            keys.check_key(path)
        return path

    def _get_range(self, key: str, offset: int, length: int) -> bytes:
        with _oserrors(key):
            return self.client.get_bytes(key, offset, length, verify_first=self.verify)

    def cat_file(self, path, start=None, end=None, **kwargs):
        """The key's bytes (checked against its stored checksum), or bytes [start, end)
        of it by one ranged get (negative: from the end, as in slices)."""
        key = self._key(path)
        if start is None and end is None:
            with _oserrors(key):
                return self.client.get_bytes(key)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = self.info(key)["size"]
            start = max(0, size + start) if start is not None and start < 0 else start
            end = max(0, size + end) if end is not None and end < 0 else end
        start = start or 0
        if end is None:
            with _oserrors(key):
                return self.client.get_bytes(key, start, None, verify_first=self.verify)
        return self._get_range(key, start, max(0, end - start))

    def get_file(self, rpath, lpath, callback=None, outfile=None, **kwargs):
        """Download one key into a temp file beside lpath (spliced, checked against the
        checksum stored at write time), renamed over lpath only once it checked out:
        a failed download leaves lpath as it was and no temp file."""
        from fsspec.utils import isfilelike
        key = self._key(rpath)
        if outfile is None and isfilelike(lpath):
            outfile = lpath
        if outfile is not None:
            outfile.write(self.cat_file(key))
            return
        lpath = os.fspath(lpath)
        if os.path.isdir(lpath):
            if self.isdir(key):  # a directory onto one that exists: nothing to write
                return
            raise IsADirectoryError(errno.EISDIR, f"a local directory is where {keys.url(key)} "
                                    "would go", lpath)
        parent, name = os.path.split(lpath)
        os.makedirs(parent or ".", exist_ok=True)
        temp = os.path.join(parent, f".{name}.s4tmp.{uuid.uuid4().hex[:12]}")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with _oserrors(key):
                size = self.client.get(key, fd)
            os.replace(temp, lpath)
        except BaseException as e:
            os.unlink(temp)
            if isinstance(e, FileNotFoundError) and self.isdir(key):  # fsspec: a directory is made
                os.makedirs(lpath, exist_ok=True)
                return
            raise
        finally:
            os.close(fd)
        if callback is not None:
            callback.set_size(size)
            callback.relative_update(size)

    # --- writes ----------------------------------------------------------------------
    def _written(self, path: str) -> None:
        """A key appeared or went: drop the cached listings of it and of every parent
        (a key's directories come and go with it)."""
        self.invalidate_cache(path)
        while path:
            path = self._parent(path)
            self.dircache.pop(path, None)

    def invalidate_cache(self, path=None):
        if path is None:
            self.dircache.clear()
        else:
            path = self._strip_protocol(path)
            for cached in [p for p in self.dircache if p == path or p.startswith(path + "/")]:
                self.dircache.pop(cached, None)
        super().invalidate_cache(path)

    def _check_absent(self, key: str) -> None:
        """FileExistsError if key exists: one zero-length ranged get on its node."""
        try:
            self.client.get_info(key)
        except NotFound:
            return
        raise FileExistsError(errno.EEXIST, f"key exists ({_IMMUTABLE}): {keys.url(key)}", key)

    def _put(self, key: str, path: str | None = None, stream=None) -> int:
        try:
            with _oserrors(key):
                return self.client.put(key, path=path, stream=stream)
        finally:
            self._written(key)

    def put_file(self, lpath, rpath, callback=None, mode="overwrite", **kwargs):
        """Upload one local file as a new key (sendfile, checked end to end)."""
        if os.path.isdir(lpath):
            return  # directories are implicit
        key = self._key(rpath)
        size = self._put(key, path=os.fspath(lpath))
        if callback is not None:
            callback.set_size(size)
            callback.relative_update(size)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        key = self._key(path)
        self._put(key, stream=io.BytesIO(value))

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if "a" in mode:
            raise _unsupported(f"cannot append to s4://{path}: {_IMMUTABLE}, then write it whole")
        if "+" in mode:
            raise _unsupported(f"cannot open s4://{path} for update: {_IMMUTABLE}")
        key = self._key(path)
        if mode in ("wb", "xb"):
            with _oserrors(key):
                self._check_absent(key)
        cache_type = kwargs.pop("cache_type", ReadAheadWhenSequential.name)
        if cache_type == ReadAheadWhenSequential.name and "r" in mode:
            cache_options = {"prefetch": self._prefetch, **(cache_options or {})}
        return S4File(self, key, mode, block_size or self.blocksize, autocommit, cache_type=cache_type,
                      cache_options=cache_options, **kwargs)

    def _prefetch(self, fn, *args):
        """Run fn(*args) in this filesystem's fetching threads (their connections are
        kept for the next fetch); returns its Future."""
        if self._fetchers is None:
            from concurrent.futures import ThreadPoolExecutor
            self._fetchers = ThreadPoolExecutor(limits.FSSPEC_PREFETCH_THREADS, "s4-prefetch")
        return self._fetchers.submit(fn, *args)

    def touch(self, path, truncate=True, **kwargs):
        if not truncate and self.exists(path):
            raise _unsupported(f"cannot touch s4://{self._strip_protocol(path)}: s4 keeps no "
                               "timestamps apart from the key's, and keys are immutable")
        with self.open(path, "wb"):
            pass

    def mkdir(self, path, create_parents=True, **kwargs):
        pass  # directories are implicit: a key's parents exist while it does

    def makedirs(self, path, exist_ok=False):
        pass

    def rmdir(self, path):
        pass  # an empty directory does not exist

    # --- deletes -----------------------------------------------------------------------
    def rm_file(self, path):
        key = self._key(path)
        try:
            with _oserrors(key):
                self.client.rm(key)
        finally:
            self._written(key)

    _rm = rm_file

    def rm(self, path, recursive=False, maxdepth=None):
        """Delete keys; with recursive, a directory and every key under it, by one
        `rm -r` of `dir/` on every node (a bucket name is matched whole)."""
        paths = path if isinstance(path, list) else [path]
        for p in paths:
            p = self._strip_protocol(p)
            if has_magic(p) or maxdepth is not None:
                for found in reversed(self.expand_path(p, recursive=recursive, maxdepth=maxdepth)):
                    if self.isfile(found):
                        self.rm_file(found)
                continue
            if "/" in p:
                try:
                    self.rm_file(p)
                    continue
                except FileNotFoundError:
                    if not recursive:
                        if self.isdir(p):
                            raise IsADirectoryError(errno.EISDIR, "a directory: rm it with recursive=True",
                                                    p) from None
                        raise
            elif not recursive:
                raise IsADirectoryError(errno.EISDIR, "a bucket: rm it with recursive=True", p)
            try:
                with _oserrors(p):
                    deleted = self.client.rm(p + "/", recursive=True)
            finally:
                self._written(p)
            if not deleted:
                raise FileNotFoundError(errno.ENOENT, "no such key or directory", p)

    # --- what s4 cannot do -----------------------------------------------------------------
    def cp_file(self, path1, path2, **kwargs):
        raise _unsupported(_NO_COPY)

    def copy(self, path1, path2, recursive=False, maxdepth=None, on_error=None, **kwargs):
        raise _unsupported(_NO_COPY)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        raise _unsupported(_NO_COPY)


class ReadAheadWhenSequential(ReadAheadCache):
    """fsspec's readahead cache, reading ahead only once reads follow each other,
    and then fetching the next block in the background.

    A parser reading a CSV front to back in small reads gets `blocksize` bytes
    ahead from its second read on, and while it parses one block the next is
    already on its way (`prefetch`: a function that runs a fetch in another
    thread and returns its Future). A reader that jumps or asks for a block or
    more at once (pyarrow: the footer, then whole column chunks) gets exactly
    the ranges it asks for, so reading one column fetches that column, and
    reading them all fetches the file once."""

    name = "s4-readahead"

    def __init__(self, blocksize: int, fetcher, size: int, prefetch=None):
        super().__init__(blocksize, fetcher, size)
        self._prefetch = prefetch
        self._next = None  # (start, end, Future) of the block being fetched ahead

    def _fetch(self, start: int | None, end: int | None) -> bytes:
        start = start or 0
        end = self.size if end is None else min(end, self.size)
        if start >= end:
            return b""
        if self.start <= start and end <= self.end:
            self.hit_count += 1
            return self.cache[start - self.start:end - self.start]
        self.miss_count += 1
        sequential = self.end and self.start <= start <= self.end and end - start < self.blocksize
        if sequential:  # a small read going on from the last fetch (a parser's): read ahead
            part, fetch_start, fetch_end = self.cache[start - self.start:], self.end, end + self.blocksize
        else:  # a jump, or a read of a block or more (pyarrow's): exactly what was asked
            part, fetch_start, fetch_end = b"", start, end
        fetch_end = min(fetch_end, self.size)
        ahead, self._next = self._next, None
        if ahead is not None and ahead[0] == fetch_start and ahead[1] >= end:
            self.cache, fetch_end = ahead[2].result(), ahead[1]
        else:
            self.cache = self.fetcher(fetch_start, fetch_end)
        self.total_requested_bytes += fetch_end - fetch_start
        self.start, self.end = fetch_start, fetch_start + len(self.cache)
        if sequential and self._prefetch is not None and self.end < self.size:
            following = (self.end, min(self.size, self.end + self.blocksize))
            self._next = (*following, self._prefetch(self.fetcher, *following))
        return part + self.cache[:end - fetch_start] if part else self.cache[:end - fetch_start]

    def close(self) -> None:
        self._next = None  # a fetch under way finishes in its thread; its bytes are dropped


register_cache(ReadAheadWhenSequential, clobber=True)


class S4File(AbstractBufferedFile):
    """A key opened for reading (ranged gets, one per block) or writing (a local temp
    file, published as one key at close)."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs._get_range(self.path, start, max(0, end - start))

    # --- writing: every chunk goes to an unnamed temp file; the key is put once ---------
    def _initiate_upload(self) -> None:
        self._temp = tempfile.TemporaryFile()  # O_TMPFILE: no name, gone with the process

    def _upload_chunk(self, final: bool = False) -> bool:
        self._temp.write(self.buffer.getbuffer())
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        """Publish the temp file as the key (sendfile from it, checked end to end)."""
        temp, self._temp = self._temp, None
        try:
            temp.flush()
            self.fs._put(self.path, path=f"/proc/self/fd/{temp.fileno()}")
        finally:
            temp.close()

    def discard(self) -> None:
        temp, self._temp = getattr(self, "_temp", None), None
        if temp is not None:
            temp.close()

    def _abandon(self) -> None:
        """Close a write without publishing anything."""
        self.discard()
        self.buffer = io.BytesIO()
        self.closed = True

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.writable():
            self._abandon()  # a failed writer publishes nothing, not the part it wrote
        else:
            self.close()

    def __del__(self):
        if self.writable():  # dropped unclosed (a dying process): never a partial key
            self._abandon()
        elif not self.closed:
            self.close()

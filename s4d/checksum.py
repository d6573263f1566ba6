"""xxh3-64 of files, shared by client and daemon (no trio).

Files are hashed through read-only mmap windows: the hash reads the page
cache directly, with no copy into a Python buffer (a cached 1 GiB file in
~0.05 s here, against ~0.1-0.2 s with readinto + update), and a window at a
time, so a hash never maps more than HASH_WINDOW_BYTES: the process's
resident size stays flat whatever the file's size.

`Trailing` hashes a file while it is being written, a window behind the
writer, in a thread (xxhash releases the GIL), so a transfer does not wait
for a second pass at its end. A file this process does not own (a user's
file being uploaded) is hashed by pread instead: see `Trailing`.
"""
import os

import xxhash

from s4d import limits
from s4d.errors import S4Error

_WINDOW = limits.HASH_WINDOW_BYTES  # a multiple of mmap.ALLOCATIONGRANULARITY
_SMALL = 64 * 1024


def _update(h, fd: int, start: int, end: int) -> None:
    """Feed bytes [start, end) of fd to h; start is window-aligned."""
    import mmap  # here: a small cp hashes by one read and never maps
    while start < end:
        length = min(_WINDOW, end - start)
        with mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=start) as m:
            h.update(m)
        start += length


def _update_read(h, fd: int, start: int, end: int) -> None:
    """Feed bytes [start, end) of fd to h by pread; a file that ends early is an error."""
    buf = bytearray(min(limits.BUFFER_BYTES, max(end - start, 1)))
    view = memoryview(buf)
    while start < end:
        n = os.preadv(fd, [view[:min(len(buf), end - start)]], start)
        if n == 0:
            raise S4Error(f"the file shrank to {start} bytes while it was being read")
        h.update(view[:n])
        start += n


def hash_fd(fd: int, size: int | None = None) -> str:
    """xxh3-64 hex digest of the first `size` bytes of fd (default: all of it)."""
    if size is None:
        size = os.fstat(fd).st_size
    if size <= _SMALL:  # a map's tiny output: one read beats setting up a mapping
        return xxhash.xxh3_64_hexdigest(os.pread(fd, size, 0))
    h = xxhash.xxh3_64()
    _update(h, fd, 0, size)
    return h.hexdigest()


def hash_range(fd: int, start: int, end: int) -> str:
    """xxh3-64 hex digest of bytes [start, end) of fd (a ranged get), through mmap
    windows aligned below start, so the bytes are hashed where they sit."""
    if end - start <= _SMALL:
        return xxhash.xxh3_64_hexdigest(os.pread(fd, end - start, start))
    import mmap
    h = xxhash.xxh3_64()
    pos = start - start % _WINDOW
    while pos < end:
        length = min(_WINDOW, end - pos)
        with mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=pos) as m:
            view = memoryview(m)
            try:
                h.update(view[max(start - pos, 0):])
            finally:
                view.release()  # before the mapping closes: it cannot close while exported
        pos += length
    return h.hexdigest()


def hash_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


class Trailing:
    """Hash fd while it is written, a window behind the writer.

    `advance(n)` says n bytes have landed; `finish(total)` hashes what is left
    and returns the digest; `abort()` stops early. Both return only once the
thread no longer touches fd, so the caller may close it right after. A file that stays under one
    window never starts a thread: it is hashed inline at `finish`. fd is
    written from offset 0 and must be readable.

    mapped=True hashes through mmap: for files this process owns. A file that
    someone else can truncate meanwhile (a user's file being uploaded) must
    use mapped=False, plain preads: touching a mapped page past a new end of
    file is SIGBUS, which kills the process, where a short read is an error."""

    def __init__(self, fd: int, mapped: bool = True):
        self._fd = fd
        self._update = _update if mapped else _update_read
        self._h = xxhash.xxh3_64()
        self._done = 0  # hashed so far: whole windows until the end
        self._written = 0
        self._total: int | None = None
        self._error: BaseException | None = None
        self._cond = None
        self._thread = None

    def advance(self, written: int) -> None:
        if self._thread is None:
            if written < _WINDOW:
                return
            import threading  # only here: a small transfer never pays for it
            self._cond = threading.Condition()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        crossed = written // _WINDOW > self._written // _WINDOW
        self._written = written
        if crossed:  # a whole new window to hash: the only news worth a wake-up
            with self._cond:
                self._cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._total is None and self._written - self._done < _WINDOW:
                        self._cond.wait()
                    end = self._total if self._total is not None else (
                        self._written - self._written % _WINDOW)
                self._update(self._h, self._fd, self._done, end)
                self._done = max(self._done, end)
                if self._total is not None and self._done >= self._total:
                    return
        except BaseException as e:  # raised by finish(); aborted transfers never ask
            self._error = e

    def finish(self, total: int) -> str:
        if self._thread is None:
            self._update(self._h, self._fd, 0, total)
            return self._h.hexdigest()
        with self._cond:
            self._total = total
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._h.hexdigest()

    def abort(self) -> None:
        """Stop hashing and wait for the thread to be done with fd: the caller
        closes fd next, and a thread still reading would read whatever file
        reuses that fd number (another transfer's). Waits for at most the
        window being hashed."""
        if self._thread is not None:
            with self._cond:
                self._total = 0
                self._cond.notify()
            self._thread.join()

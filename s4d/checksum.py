"""xxh3-64 of files, shared by client and daemon (no trio).

Files are hashed through a read-only mmap: the hash reads the page cache
directly, with no copy into a Python buffer (measured here: ~0.05 s for a
cached 1 GiB file against ~0.1-0.2 s with readinto + update).
"""
from __future__ import annotations

import mmap
import os

import xxhash


def hash_fd(fd: int, size: int | None = None) -> str:
    """xxh3-64 hex digest of the first `size` bytes of fd (default: all of it)."""
    if size is None:
        size = os.fstat(fd).st_size
    if size == 0:
        return xxhash.xxh3_64_hexdigest(b"")
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as m:
        m.madvise(mmap.MADV_SEQUENTIAL)
        return xxhash.xxh3_64_hexdigest(m)


def hash_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)

"""xxh3 of files: windowed mmap hashing and the hasher that trails a writer."""
import os
import random

import pytest
import xxhash

from s4d import checksum, limits

W = limits.HASH_WINDOW_BYTES


@pytest.mark.parametrize("size", [0, 1, W - 1, W, W + 1, 3 * W + 12345])
def test_hash_fd_equals_xxh3_of_the_bytes_across_window_edges(tmp_path, size):
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert checksum.hash_file(str(path)) == xxhash.xxh3_64_hexdigest(data)


@pytest.mark.parametrize("size", [0, 100, W, 2 * W + 7, 5 * W - 1])
def test_trailing_hashes_a_file_while_it_is_written_in_uneven_pieces(tmp_path, size):
    data = random.Random(size).randbytes(size)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        trailing = checksum.Trailing(fd)
        rng = random.Random(1)
        written = 0
        while written < size:
            n = min(size - written, rng.randrange(1, W // 2))
            os.write(fd, data[written:written + n])
            written += n
            trailing.advance(written)
        assert trailing.finish(size) == xxhash.xxh3_64_hexdigest(data)
    finally:
        os.close(fd)


def test_an_aborted_trailing_hasher_stops_its_thread(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * (2 * W))
        trailing = checksum.Trailing(fd)
        trailing.advance(2 * W)
        trailing.abort()
        trailing._thread.join(timeout=10)
        assert not trailing._thread.is_alive()
    finally:
        os.close(fd)


def test_abort_returns_only_once_the_hashing_thread_no_longer_reads_the_fd(tmp_path):
    """The caller closes the fd right after abort(): a thread still reading it
    would read whatever file gets that fd number next (another transfer's)."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 8 * W)
        trailing = checksum.Trailing(fd, mapped=False)
        trailing.advance(8 * W)  # the thread starts on 8 windows of preads
        trailing.abort()
        assert not trailing._thread.is_alive()
    finally:
        os.close(fd)

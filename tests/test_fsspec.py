"""The fsspec filesystem (s4ctl/fsspec.py) against a live 3-node cluster: fsspec's
own abstract suites, pandas, pyarrow, duckdb and dask, ranged reads, writes.

Bytes a node sent are counted from its log: every get logs `bytes=N`."""
from __future__ import annotations

import io
import os
import posixpath
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.dataframe as dd
import duckdb
import fsspec
import numpy as np
import pandas as pd
import pytest
from fsspec.tests.abstract import (AbstractCopyTests, AbstractFixtures, AbstractGetTests,
                                   AbstractOpenTests, AbstractPipeTests, AbstractPutTests)

from s4ctl.fsspec import ReadAheadWhenSequential, S4FileSystem
from tests.cluster import Cluster

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """This module's cluster. Its daemons are killed at the end, not stopped: the
    filesystems of this process (and of dask's threads) keep idle connections,
    which a stopping daemon would give its grace period."""
    c = Cluster(tmp_path_factory.mktemp("fsspec-cluster"), 3)
    c.start()
    yield c
    for i in range(len(c.ports)):
        c.kill(i)


@pytest.fixture(scope="module")
def s4fs(shared) -> S4FileSystem:
    return fsspec.filesystem("s4", conf=str(shared.conf))


def sent(cluster, key: str, expect: int | None = None) -> list[tuple[int, int | None]]:
    """(bytes, offset) of every get of key the nodes served, from their logs; with
    expect, waits (briefly) for that many: a node logs a get after its last byte."""
    pattern = re.compile(rf" get s4://{re.escape(key)} ok .* bytes=(\d+)(?: offset=(\d+))?$")
    deadline = time.monotonic() + 10
    while True:
        found = []
        for log in cluster.logs:
            for line in log.read_text().splitlines():
                m = pattern.search(line)
                if m:
                    found.append((int(m[1]), None if m[2] is None else int(m[2])))
        if expect is None or len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": np.arange(rows), "x": rng.random(rows), "n": rng.integers(0, 9, rows),
                         "s": rng.choice(["CASH", "Credit", "No Charge"], rows)})


# --- fsspec's abstract suites ----------------------------------------------------------------
# The cases that cannot apply to s4, each with its reason. TestCopy below checks that
# this list is exactly fsspec's copy suite, and that each case is refused clearly.
NO_COPY = "s4 has no copy or move within s4 (keys are immutable and placed by name)"
NOT_APPLICABLE = {
    "AbstractCopyTests.test_copy_file_to_existing_directory": NO_COPY,
    "AbstractCopyTests.test_copy_file_to_new_directory": NO_COPY,
    "AbstractCopyTests.test_copy_file_to_file_in_existing_directory": NO_COPY,
    "AbstractCopyTests.test_copy_file_to_file_in_new_directory": NO_COPY,
    "AbstractCopyTests.test_copy_directory_to_existing_directory": NO_COPY,
    "AbstractCopyTests.test_copy_directory_to_new_directory": NO_COPY,
    "AbstractCopyTests.test_copy_glob_to_existing_directory": NO_COPY,
    "AbstractCopyTests.test_copy_glob_to_new_directory": NO_COPY,
    "AbstractCopyTests.test_copy_glob_edge_cases": NO_COPY,
    "AbstractCopyTests.test_copy_list_of_files_to_existing_directory": NO_COPY,
    "AbstractCopyTests.test_copy_list_of_files_to_new_directory": NO_COPY,
    "AbstractCopyTests.test_copy_two_files_new_directory": NO_COPY,
    "AbstractCopyTests.test_copy_directory_without_files_with_same_name_prefix": NO_COPY,
    "AbstractCopyTests.test_copy_with_source_and_destination_as_list": NO_COPY,
    # run below in the part that applies; the rest asserts the refusal instead
    "AbstractPipeTests.test_pipe_exclusive": "its last step overwrites a key (mode='overwrite'): "
                                             "keys are immutable",
    "AbstractPutTests.test_put_directory_recursive": "its last step puts the same tree over itself "
                                                     "again: keys are immutable",
}


class S4Fixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self, s4fs):
        return s4fs

    @pytest.fixture
    def fs_path(self, b):
        return b

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def supports_empty_directories(self):
        return False  # directories are implicit: a key's parents


class TestPut(S4Fixtures, AbstractPutTests):
    def test_put_directory_recursive(self, fs, fs_join, fs_target, local_fs, local_join, local_path):
        src = local_join(local_path, "src")
        local_fs.mkdir(src)
        local_fs.touch(local_join(src, "file"))
        fs.put(src, fs_target, recursive=True)
        assert fs.isfile(fs_join(fs_target, "file")) and not fs.exists(fs_join(fs_target, "src"))
        fs.put(src, fs_target, recursive=True)  # into the directory that exists now: new keys
        assert fs.isfile(fs_join(fs_target, "src", "file"))
        with pytest.raises(FileExistsError, match="immutable"):
            fs.put(src + "/", fs_target, recursive=True)  # the same keys again: not applicable


class TestGet(S4Fixtures, AbstractGetTests):
    pass


class TestOpen(S4Fixtures, AbstractOpenTests):
    pass


class TestPipe(S4Fixtures, AbstractPipeTests):
    def test_pipe_exclusive(self, fs, fs_target):
        fs.pipe_file(fs_target, b"data")
        assert fs.cat_file(fs_target) == b"data"
        with pytest.raises(FileExistsError):
            fs.pipe_file(fs_target, b"data", mode="create")
        with pytest.raises(FileExistsError, match="immutable"):  # not applicable: an overwrite
            fs.pipe_file(fs_target, b"new data", mode="overwrite")
        assert fs.cat_file(fs_target) == b"data"


class TestCopy(S4Fixtures):
    def test_the_cases_that_cannot_apply_are_fsspecs_whole_copy_suite_and_each_is_refused(
            self, fs, fs_join, fs_target, fs_bulk_operations_scenario_0):
        suite = {f"AbstractCopyTests.{n}" for n in dir(AbstractCopyTests) if n.startswith("test_")}
        assert suite == {n for n in NOT_APPLICABLE if n.startswith("AbstractCopyTests.")}
        source = fs_bulk_operations_scenario_0
        for copy in (fs.copy, fs.cp, fs.cp_file, fs.mv, fs.rename):
            with pytest.raises(io.UnsupportedOperation, match="no copy or move"):
                copy(fs_join(source, "file1"), fs_join(fs_target, "file1"))
        with pytest.raises(io.UnsupportedOperation, match="no copy or move"):
            fs.copy(source, fs_target, recursive=True)
        assert not fs.exists(fs_target) and fs.isfile(fs_join(source, "file1"))


# --- the filesystem -----------------------------------------------------------------------------
def test_the_s4_protocol_is_registered_and_takes_its_conf_from_the_usual_lookup_or_the_conf_option(
        shared, make_cluster, tmp_path):
    other = make_cluster(nodes=1)
    script = (
        "import fsspec, pickle, sys\n"
        "fs = fsspec.filesystem('s4')\n"  # the conf from $S4_CONF_PATH
        "fs.pipe('s4://reg/k', b'via env')\n"
        "print(type(fs).__module__, type(fs).__name__)\n"
        f"other = fsspec.filesystem('s4', conf={str(other.conf)!r})\n"
        "other.pipe('s4://reg/k', b'via conf')\n"
        "again = pickle.loads(pickle.dumps(other))\n"  # rebuilt from its storage options
        "print(again.storage_options, again.cat('s4://reg/k'), fs.cat('s4://reg/k'))\n"
        "with fsspec.open('s4://reg/k', 'rb', conf=sys.argv[1]) as f: print(f.read())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(other.conf)], capture_output=True,
                          text=True, env=shared.env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "s4ctl.fsspec S4FileSystem",
        f"{{'conf': {str(other.conf)!r}}} b'via conf' b'via env'",
        "b'via conf'"]


def test_listings_carry_size_type_and_mtime_with_the_protocol_stripped(s4fs, b):
    s4fs.pipe({f"s4://{b}/d/a.csv": b"1,2\n", f"s4://{b}/d/sub/b.csv": b"3,4,5\n", f"{b}/e": b""})
    listing = s4fs.ls(f"s4://{b}/d")
    assert [(e["name"], e["type"], e["size"]) for e in listing] == [
        (f"{b}/d/a.csv", "file", 4), (f"{b}/d/sub", "directory", 0)]
    for entry in listing:
        assert abs(entry["mtime"] - pd.Timestamp.now().timestamp()) < 600
        assert entry["LastModified"].timestamp() == entry["mtime"]
    assert s4fs.info(f"{b}/d/sub/b.csv")["size"] == 6
    assert s4fs.modified(f"{b}/d/a.csv") == listing[0]["LastModified"]
    assert s4fs.find(f"s4://{b}") == [f"{b}/d/a.csv", f"{b}/d/sub/b.csv", f"{b}/e"]
    assert s4fs.find(b, maxdepth=2, withdirs=True) == [b, f"{b}/d", f"{b}/d/a.csv", f"{b}/d/sub", f"{b}/e"]
    assert s4fs.glob(f"s4://{b}/**/*.csv") == [f"{b}/d/a.csv", f"{b}/d/sub/b.csv"]
    assert s4fs.glob(f"{b}/d/*") == [f"{b}/d/a.csv", f"{b}/d/sub"]
    assert s4fs.exists(f"{b}/d") and s4fs.isdir(f"{b}/d") and not s4fs.isdir(f"{b}/d/a.csv")
    assert s4fs.isfile(f"{b}/e") and not s4fs.exists(f"{b}/d/a") and not s4fs.exists(f"{b}/nothing")
    with pytest.raises(FileNotFoundError):
        s4fs.ls(f"{b}/nothing")
    assert s4fs.ls(f"{b}/e", detail=False) == [f"{b}/e"]
    assert f"{b}" in s4fs.ls("", detail=False)


def test_writes_and_deletes_through_the_filesystem_invalidate_its_cached_listings(s4fs, b):
    s4fs.pipe(f"{b}/d/one", b"1")
    assert s4fs.ls(f"{b}/d", detail=False) == [f"{b}/d/one"]  # now cached
    s4fs.pipe(f"{b}/d/two", b"2")
    with s4fs.open(f"{b}/d/sub/three", "wb") as f:
        f.write(b"3")
    assert s4fs.ls(f"{b}/d", detail=False) == [f"{b}/d/one", f"{b}/d/sub", f"{b}/d/two"]
    s4fs.rm(f"{b}/d/one")
    assert s4fs.ls(f"{b}/d", detail=False) == [f"{b}/d/sub", f"{b}/d/two"]
    s4fs.rm(f"s4://{b}/d/sub", recursive=True)
    assert s4fs.ls(f"{b}/d", detail=False) == [f"{b}/d/two"]
    with pytest.raises(IsADirectoryError):
        s4fs.rm(f"{b}/d")
    s4fs.rm(b, recursive=True)
    assert not s4fs.exists(f"{b}/d/two") and b not in s4fs.ls("", detail=False)
    with pytest.raises(FileNotFoundError):
        s4fs.rm(f"{b}/d/two")


def test_ranged_reads_fetch_only_their_range_at_the_start_middle_end_and_past_the_end(shared, s4fs, b):
    data = os.urandom(3 * MiB + 5)
    key, n = f"{b}/r/k", len(data)
    s4fs.pipe(key, data)
    ranges = [(0, 100), (MiB + 7, 2 * MiB), (n - 100, n), (n - 10, n + 90), (n + 5, n + 10)]
    for start, end in ranges:
        assert s4fs.cat_file(f"s4://{key}", start, end) == data[start:end]
    assert sent(shared, key, len(ranges)) == [(len(data[s:e]), min(s, n)) for s, e in ranges]  # each alone
    assert s4fs.cat_file(key, -50) == data[-50:] and s4fs.cat_file(key, 10, -10) == data[10:-10]
    assert s4fs.cat_file(key) == data
    with s4fs.open(key, "rb", block_size=MiB) as f:
        f.seek(2 * MiB + 1)
        assert f.read(10) == data[2 * MiB + 1:2 * MiB + 11]
        f.seek(-3, os.SEEK_END)
        assert f.read(100) == data[-3:] and f.read(1) == b""
        f.seek(5)
        assert f.read(5) == data[5:10]


def test_a_parquet_read_of_one_column_fetches_far_less_than_the_file(shared, s4fs, b):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({f"c{i}": rng.random(400_000) for i in range(12)})  # ~38 MB, incompressible
    key = f"{b}/wide.parquet"
    df.to_parquet(f"s4://{key}", storage_options={"conf": str(shared.conf)})
    size = s4fs.info(key)["size"]
    got = pd.read_parquet(f"s4://{key}", columns=["c3"], storage_options={"conf": str(shared.conf)})
    pd.testing.assert_frame_equal(got, df[["c3"]])
    fetched = sum(n for n, _ in sent(shared, key, 2))  # at least the footer and the column
    assert fetched < size / 3, (fetched, size)


def test_pandas_csv_and_parquet_round_trips_equal_the_same_on_local_files(shared, b, tmp_path):
    df = frame(20_000)
    opts = {"conf": str(shared.conf)}
    df.to_csv(f"s4://{b}/t.csv", index=False, storage_options=opts)
    df.to_csv(tmp_path / "t.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv(f"s4://{b}/t.csv", storage_options=opts),
                                  pd.read_csv(tmp_path / "t.csv"))
    df.to_parquet(f"s4://{b}/t.parquet", storage_options=opts)
    df.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(f"s4://{b}/t.parquet", storage_options=opts),
                                  pd.read_parquet(tmp_path / "t.parquet"))
    assert fsspec.filesystem("s4", conf=opts["conf"]).cat(f"{b}/t.csv") == (tmp_path / "t.csv").read_bytes()


@pytest.fixture
def csv_parts(s4fs, b, tmp_path) -> tuple[str, Path]:
    """Three CSV parts, in s4 under b/parts/ and locally under tmp_path/parts/."""
    local = tmp_path / "parts"
    local.mkdir()
    for i in range(3):
        frame(5_000, seed=i).to_csv(local / f"00{i}.csv", index=False)
        s4fs.put_file(str(local / f"00{i}.csv"), f"{b}/parts/00{i}.csv")
    return f"s4://{b}/parts", local


def test_duckdb_reads_a_glob_of_csv_keys_as_it_reads_the_local_files(s4fs, csv_parts):
    s4_dir, local = csv_parts
    con = duckdb.connect()
    con.register_filesystem(s4fs)
    query = "select n, count(*) as trips, round(sum(x), 6) as x from read_csv('{}/*.csv') group by n order by n"
    got = con.sql(query.format(s4_dir)).fetchall()
    assert got == con.sql(query.format(local)).fetchall() and len(got) == 9


def test_dask_read_csv_over_a_glob_equals_the_local_read(shared, csv_parts):
    s4_dir, local = csv_parts
    got = dd.read_csv(f"{s4_dir}/*.csv", storage_options={"conf": str(shared.conf)}, blocksize=32 * 1024)
    assert got.npartitions > 3  # split into byte ranges of the keys, read from dask's threads
    want = dd.read_csv(f"{local}/*.csv", blocksize=32 * 1024)
    pd.testing.assert_frame_equal(got.compute(scheduler="threads").reset_index(drop=True),
                                  want.compute().reset_index(drop=True))


def test_threads_share_one_filesystem_and_reuse_their_connections(shared, s4fs, b):
    data = os.urandom(MiB)
    key = f"{b}/shared"
    s4fs.pipe(key, data)
    errors = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(20):
                start = int(rng.integers(0, MiB))
                assert s4fs.cat_file(key, start, start + 1000) == data[start:start + 1000]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(sent(shared, key, 80)) == 80
    peers = set()
    for log in shared.logs:
        peers |= set(re.findall(rf" get s4://{re.escape(key)} ok .* peer=(\S+)", log.read_text()))
    assert len(peers) <= 4  # one connection per thread, reused for each of its 20 reads


def test_writing_an_existing_key_raises_file_exists_and_leaves_the_key_as_it_was(shared, s4fs, b, tmp_path):
    key = f"{b}/k.csv"
    s4fs.pipe(key, b"a,b\n1,2\n")
    (tmp_path / "other").write_bytes(b"other")
    attempts = [lambda: s4fs.open(key, "wb"), lambda: s4fs.open(f"s4://{key}", "xb"),
                lambda: s4fs.pipe(key, b"x"), lambda: s4fs.put_file(str(tmp_path / "other"), key),
                lambda: s4fs.touch(key),
                lambda: pd.DataFrame({"a": [3]}).to_csv(f"s4://{key}", storage_options={"conf": str(shared.conf)})]
    for attempt in attempts:
        with pytest.raises(FileExistsError, match="immutable"):
            attempt()
    with pytest.raises(io.UnsupportedOperation, match="append"):
        s4fs.open(key, "ab")
    assert s4fs.cat(key) == b"a,b\n1,2\n"
    # a writer that loses a race to another at close: the other's key stays
    f = s4fs.open(f"{b}/raced", "wb")
    f.write(b"mine")
    s4fs.pipe(f"{b}/raced", b"theirs")
    with pytest.raises(FileExistsError):
        f.close()
    assert s4fs.cat(f"{b}/raced") == b"theirs"


def test_a_write_that_fails_or_whose_process_dies_before_close_leaves_no_key(shared, s4fs, b):
    with pytest.raises(RuntimeError):
        with s4fs.open(f"{b}/in-with", "wb") as f:
            f.write(b"x" * (20 * MiB))  # past a block: some of it is in the temp file already
            raise RuntimeError("the writer failed")
    script = ("import fsspec, os, signal, sys\n"
              f"f = fsspec.open('s4://{b}/' + sys.argv[1], 'wb', conf={str(shared.conf)!r}).open()\n"
              "f.write(b'x' * (20 << 20))\n"
              "if sys.argv[1] == 'killed': os.kill(os.getpid(), signal.SIGKILL)\n"
              "raise SystemExit('died with the file open')\n")
    for how in ("killed", "exited"):
        proc = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not s4fs.exists(b, refresh=True) and not s4fs.find(b)
    assert not shared.temp_files()


def test_copy_move_append_and_overwrite_raise_errors_that_say_why(s4fs, b):
    s4fs.pipe(f"{b}/k", b"data")
    for op in (lambda: s4fs.copy(f"{b}/k", f"{b}/k2"), lambda: s4fs.mv(f"{b}/k", f"{b}/k2")):
        with pytest.raises(io.UnsupportedOperation, match="no copy or move within s4.*get it and put it"):
            op()
    with pytest.raises(io.UnsupportedOperation, match="cannot append .* immutable"):
        s4fs.open(f"{b}/k", "ab")
    with pytest.raises(FileExistsError, match="immutable: rm it first"):
        s4fs.open(f"{b}/k", "wb")
    assert s4fs.ls(b, detail=False) == [f"{b}/k"] and s4fs.cat(f"{b}/k") == b"data"


def test_the_small_cp_path_imports_no_fsspec(shared, b):
    proc = subprocess.run([sys.executable, "-X", "importtime", str(Path(sys.executable).parent / "s4ctl"),
                           "cp", "-", f"s4://{b}/small"], input=b"x", capture_output=True, env=shared.env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    assert not {m for m in imported if m == "s4ctl.fsspec" or m.split(".")[0] in ("fsspec", "pandas", "numpy")}
    assert "s4ctl.client" in imported  # what was measured is the cp itself


def test_a_failed_download_leaves_the_local_file_as_it_was_and_no_temp_file(shared, s4fs, b, tmp_path):
    data = os.urandom(2 * MiB)
    s4fs.pipe(f"{b}/k", data)
    path = shared.key_path(shared.node_of(f"s4://{b}/k"), f"s4://{b}/k")
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # corrupt on the node's disk: the whole-key check refuses it
        f.write(bytes([data[0] ^ 1]))
    os.chmod(path, 0o444)
    (tmp_path / "k").write_bytes(b"previous")
    with pytest.raises(Exception, match="checksum"):
        s4fs.get(f"s4://{b}/k", str(tmp_path / "k"))
    assert os.listdir(tmp_path) == ["k"] and (tmp_path / "k").read_bytes() == b"previous"
    s4fs.pipe(f"{b}/good", data)
    s4fs.get(f"{b}/good", str(tmp_path / "k"))
    assert (tmp_path / "k").read_bytes() == data and os.listdir(tmp_path) == ["k"]


@pytest.mark.parametrize("read_size", [64 * 1024, 100_000])  # pandas reads 256 KiB into 8 MiB blocks: aligned
def test_sequential_reads_get_each_next_block_fetched_ahead_aligned_to_blocks_or_not(read_size):
    block, data = 256 * 1024, os.urandom(2 * MiB + 12345)
    fetches = []  # (start, end, thread name)

    def fetcher(start, end):
        fetches.append((start, end, threading.current_thread().name))
        return data[start:end]

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1, "ahead") as pool:
        cache = ReadAheadWhenSequential(block, fetcher, len(data), prefetch=pool.submit)
        got = b"".join(cache._fetch(at, at + read_size) for at in range(0, len(data), read_size))
    assert got == data
    ahead = [f for f in fetches if f[2].startswith("ahead")]
    assert len(ahead) >= len(data) // block - 2, fetches  # every block after the first two came ahead
    assert sum(e - s for s, e, _ in fetches) < len(data) + 2 * block  # nothing fetched twice but the last

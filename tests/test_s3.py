"""S3 in and out: `s4ctl cp [-r] s3://... s4://...` and back, against a real
moto_server (tests/s3server.py) and real 3-node clusters.

Every node copies its own keys; the tests check where each imported key
landed, the bytes both ways (one object over the multipart threshold, so
ranged GETs in and a multipart upload out), every destination form, and
that failures give one line and leave nothing half-made in either store.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from s4d import limits, placement
from tests.cluster import S4CTL, assert_one_line_error

BIG = limits.S3_MULTIPART_THRESHOLD_BYTES + limits.S3_PART_BYTES // 2  # two parts, the last short


def _bucket(s3) -> str:
    name = "src-" + uuid.uuid4().hex[:12]
    s3.client().create_bucket(Bucket=name)
    return name


def _seed(s3, bucket: str, objects: dict[str, bytes]) -> None:
    client = s3.client()
    for name, data in objects.items():
        client.put_object(Bucket=bucket, Key=name, Body=data)


def _objects(s3, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = s3.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", ()):
            out[o["Key"]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def _ep(s3) -> tuple[str, str]:
    return ("--endpoint-url", s3.endpoint)


TREE = {
    "data/000_a.csv": b"zero\n" * 100,
    "data/001_b.csv": b"one\n" * 200,
    "data/sub/002_c.csv": b"two\n" * 300,
    "data/sub/deeper/names.txt": os.urandom(5000),
    "data/empty": b"",
    "data/big.bin": os.urandom(BIG),
    "other/elsewhere.txt": b"not under data/\n",
}


def test_a_tree_imports_to_the_same_names_each_key_on_its_node_byte_for_byte(shared, b, s3):
    src = _bucket(s3)
    _seed(s3, src, TREE)
    proc = shared.s4ctl("cp", "-r", *_ep(s3), f"s3://{src}/data/", f"s4://{b}/in/")
    assert "import: 6 keys" in proc.stderr and "MB/s" in proc.stderr, proc.stderr

    listed = shared.s4ctl("ls", "-r", f"s4://{b}/").stdout.split()[3::4]
    expected = {"in/" + name[len("data/"):]: data for name, data in TREE.items()
                if name.startswith("data/")}
    assert sorted(listed) == sorted(expected)
    for rel, data in expected.items():
        key = f"s4://{b}/{rel}"
        node = placement.node_index(f"{b}/{rel}", 3)
        assert shared.node_of(key) == node, key
        assert shared.key_path(node, key).read_bytes() == data, key
    assert shared.temp_files() == []


def test_a_tree_exports_to_the_same_names_byte_for_byte(shared, b, s3, tmp_path):
    local = tmp_path / "tree"
    for name, data in TREE.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    shared.s4ctl("cp", "-r", str(local / "data"), f"s4://{b}/out/")
    dst = _bucket(s3)

    proc = shared.s4ctl("cp", "-r", *_ep(s3), f"s4://{b}/out", f"s3://{dst}/results/")
    assert "export: 6 keys" in proc.stderr, proc.stderr
    assert _objects(s3, dst) == {"results/" + name[len("data/"):]: data
                                 for name, data in TREE.items() if name.startswith("data/")}
    assert s3.client().list_multipart_uploads(Bucket=dst).get("Uploads", []) == []


def test_one_object_goes_both_ways_in_every_destination_form(shared, b, s3):
    src = _bucket(s3)
    _seed(s3, src, {"dir/one.csv": b"1,2,3\n", "dir/big.bin": TREE["data/big.bin"]})
    for dst, key in [(f"s4://{b}/into/", f"{b}/into/one.csv"),
                     (f"s4://{b}/named.csv", f"{b}/named.csv"),
                     (f"s4://{b}", f"{b}/one.csv")]:
        shared.s4ctl("cp", *_ep(s3), f"s3://{src}/dir/one.csv", dst)
        assert shared.s4ctl("cp", f"s4://{key}", "-").stdout == "1,2,3\n", dst
    shared.s4ctl("cp", *_ep(s3), f"s3://{src}/dir/big.bin", f"s4://{b}/big/")
    assert shared.s4ctl("cp", f"s4://{b}/big/big.bin", "-", input=b"").stdout == TREE["data/big.bin"]

    out = _bucket(s3)
    for dst in [f"s3://{out}/dir/", f"s3://{out}/renamed.csv", f"s3://{out}"]:
        shared.s4ctl("cp", *_ep(s3), f"s4://{b}/named.csv", dst)
    shared.s4ctl("cp", *_ep(s3), f"s4://{b}/big/big.bin", f"s3://{out}/big/")
    assert _objects(s3, out) == {"dir/named.csv": b"1,2,3\n", "renamed.csv": b"1,2,3\n",
                                 "named.csv": b"1,2,3\n", "big/big.bin": TREE["data/big.bin"]}


def test_the_endpoint_comes_from_the_nodes_environment_without_endpoint_url(make_cluster, s3,
                                                                            monkeypatch, b):
    src = _bucket(s3)
    _seed(s3, src, {"x/001_a": b"a\n", "x/002_b": b"b\n"})
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)  # the daemon inherits it
    cluster = make_cluster(nodes=1)
    cluster.s4ctl("cp", "-r", f"s3://{src}/x", f"s4://{b}/x")
    cluster.s4ctl("cp", "-r", f"s4://{b}/x/", f"s3://{src}/back")
    assert _objects(s3, src, "back/") == {"back/001_a": b"a\n", "back/002_b": b"b\n"}


def test_a_missing_object_or_bucket_fails_with_one_line_naming_it(shared, b, s3):
    src = _bucket(s3)
    _seed(s3, src, {"here/001_x": b"x\n"})
    cases = [
        (["cp", f"s3://{src}/here/nope.csv", f"s4://{b}/in/"], [f"s3://{src}/here/nope.csv", "no such object"]),
        (["cp", "-r", "s3://no-such-bucket-s4/in/", f"s4://{b}/in/"], ["s3://no-such-bucket-s4", "no such bucket"]),
        (["cp", "s3://no-such-bucket-s4/k", f"s4://{b}/in/"], ["s3://no-such-bucket-s4", "no such bucket"]),
        (["cp", "-r", f"s3://{src}/nothing/", f"s4://{b}/in/"], [f"no objects under s3://{src}/nothing/"]),
        (["cp", f"s4://{b}/nope", f"s3://{src}/x"], [f"s4://{b}/nope"]),
    ]
    for args, needles in cases:
        assert_one_line_error(shared.s4ctl(*args[:1], *_ep(s3), *args[1:], check=False), *needles)
    shared.s4ctl("cp", *_ep(s3), f"s3://{src}/here/001_x", f"s4://{b}/k/")
    proc = shared.s4ctl("cp", *_ep(s3), f"s4://{b}/k/001_x", "s3://no-such-bucket-s4/x", check=False)
    assert_one_line_error(proc, "no such bucket", "s3://no-such-bucket-s4")
    assert shared.s4ctl("ls", "-r", f"s4://{b}/").stdout.split()[3::4] == ["k/001_x"]
    assert shared.temp_files() == []


def test_an_existing_key_fails_the_import_naming_it_and_stays_as_it_was(shared, b, s3):
    src = _bucket(s3)
    _seed(s3, src, {f"t/{i:03d}_x": b"new\n" for i in range(6)})
    shared.s4ctl("cp", "-", f"s4://{b}/t/004_x", input="old\n")
    proc = shared.s4ctl("cp", "-r", *_ep(s3), f"s3://{src}/t/", f"s4://{b}/t/", check=False)
    assert_one_line_error(proc, f"s4://{b}/t/004_x", "exists", f"s3://{src}/t/004_x")
    assert shared.s4ctl("cp", f"s4://{b}/t/004_x", "-").stdout == "old\n"
    assert shared.temp_files() == []
    # what did land is whole (the node holding 004_x refused before fetching anything)
    for line in shared.s4ctl("ls", "-r", f"s4://{b}/").stdout.splitlines():
        name = line.split()[-1]
        if name != "t/004_x":
            assert shared.s4ctl("cp", f"s4://{b}/{name}", "-").stdout == "new\n"


def test_a_key_corrupt_on_disk_is_not_exported_and_its_upload_is_aborted(shared, b, s3):
    data = TREE["data/big.bin"]
    shared.s4ctl("cp", "-", f"s4://{b}/c/big.bin", input=data)
    shared.s4ctl("cp", "-", f"s4://{b}/c/small", input=b"small\n")
    for key in (f"s4://{b}/c/big.bin", f"s4://{b}/c/small"):
        path = shared.key_path(shared.node_of(key), key)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:  # flip one byte, keep the size
            f.seek(os.path.getsize(path) - 2)
            last = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([last[0] ^ 1]))
    dst = _bucket(s3)
    for key in ("big.bin", "small"):
        proc = shared.s4ctl("cp", *_ep(s3), f"s4://{b}/c/{key}", f"s3://{dst}/", check=False)
        assert_one_line_error(proc, f"s4://{b}/c/{key}", "corrupt")
    assert _objects(s3, dst) == {}
    assert s3.client().list_multipart_uploads(Bucket=dst).get("Uploads", []) == []


def test_a_node_that_dies_mid_import_fails_it_naming_the_node_and_leaves_nothing_partial(
        make_cluster, s3, b):
    src = _bucket(s3)
    objects = {f"many/{i:03d}_part": os.urandom(1 << 20) for i in range(30)}
    _seed(s3, src, objects)
    cluster = make_cluster()
    victim = 1
    proc = subprocess.Popen([S4CTL, "cp", "-r", *_ep(s3), f"s3://{src}/many/", f"s4://{b}/m/"],
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not list((cluster.data_dirs[victim] / "_tmp").glob("s3-*")) and proc.poll() is None:
        assert time.monotonic() < deadline  # until the victim is fetching: its share is unfinished
        time.sleep(0.002)
    cluster.kill(victim)
    _, err = proc.communicate(timeout=120)
    proc.stderr = err
    if proc.returncode == 0:
        pytest.fail("the import finished before the node was killed: make it bigger")
    assert_one_line_error(proc, cluster.address(victim))
    # the survivors were cancelled (their client went away): they drop their temp files...
    deadline = time.monotonic() + 30
    while [p for p in cluster.temp_files() if not p.is_relative_to(cluster.data_dirs[victim])]:
        assert time.monotonic() < deadline, cluster.temp_files()
        time.sleep(0.05)
    # ...and whatever they published is whole
    for i in (0, 2):
        for path in (cluster.data_dirs[i] / b).rglob("*"):
            if path.is_file():
                rel = path.relative_to(cluster.data_dirs[i] / b / "m")
                assert path.read_bytes() == objects[f"many/{rel}"], path


def test_an_object_replaced_mid_import_fails_it_naming_the_object_and_stores_no_mix(
        make_cluster, s3, b, monkeypatch):
    """Every ranged GET is conditional on the ETag listed: a GET after the object
    was replaced is refused (412), so the import fails and nothing of it stays."""
    part = 256 * 1024  # small parts: many GETs, so the replacement lands between two of them
    monkeypatch.setenv("S4_S3_PART_BYTES", str(part))  # the daemon inherits them
    monkeypatch.setenv("S4_S3_MULTIPART_THRESHOLD_BYTES", str(part))
    src = _bucket(s3)
    old, new = os.urandom(32 << 20), os.urandom(32 << 20)
    _seed(s3, src, {"big.bin": old})
    cluster = make_cluster(nodes=1)
    proc = subprocess.Popen([S4CTL, "cp", *_ep(s3), f"s3://{src}/big.bin", f"s4://{b}/big.bin"],
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    def landed() -> bool:  # a part of the object is in a temp file
        try:
            return any(p.stat().st_size > 0 for p in cluster.temp_files())
        except FileNotFoundError:  # a temp file that went between the listing and the stat
            return False

    while proc.poll() is None and not landed():
        assert time.monotonic() < deadline  # until the first part has landed
        time.sleep(0.002)
    _seed(s3, src, {"big.bin": new})
    _, proc.stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("the import finished before the object was replaced: make it bigger")
    assert_one_line_error(proc, f"s3://{src}/big.bin", "changed during the copy", cluster.address(0))
    assert not (cluster.data_dirs[0] / b / "big.bin").exists()
    deadline = time.monotonic() + 30
    while cluster.temp_files():
        assert time.monotonic() < deadline, cluster.temp_files()
        time.sleep(0.05)


async def test_an_objects_parts_raise_the_failed_parts_error_itself_never_a_group():
    """A part fails while the next is being started (its start was woken, not
    cancelled): the error out of the parts' block is that part's own, which
    _error words as one line, not an ExceptionGroup answered as `internal`."""
    import trio

    from s4d.s3 import _Parallel
    woken = trio.Event()

    async def part() -> None:
        woken.set()  # wakes the block below with a value, and then fails
        raise ValueError("part 0 failed")

    with pytest.raises(ValueError, match="part 0 failed"):
        async with _Parallel() as parallel:
            parallel.start(part)
            await woken.wait()
            parallel.start(part)  # meets the failure: raises it inside the block


async def test_an_error_of_the_parts_block_itself_leaves_it_as_itself_once_the_parts_are_done():
    """The block's own error (a short read while sending a part) cancels the parts
    still running and leaves as itself, not as an ExceptionGroup."""
    import trio

    from s4d.errors import S4Error
    from s4d.s3 import _Parallel
    cancelled = []

    async def part() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    with pytest.raises(S4Error, match="the key's file ended early"):
        async with _Parallel() as parallel:
            parallel.start(part)
            await trio.sleep(0)
            raise S4Error("the key's file ended early")
    assert cancelled == [True]


def test_the_taxi_example_runs_from_s3_to_s3_and_matches_the_single_process_count(shared, s3):
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "taxi_s3", "run.sh")
    proc = subprocess.run(["bash", script, "--rows", "20000"], capture_output=True, text=True,
                          timeout=300, env={**shared.env, "AWS_ENDPOINT_URL_S3": s3.endpoint,
                                            "S4CTL": S4CTL})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "exported passenger counts match the single-process count" in proc.stdout

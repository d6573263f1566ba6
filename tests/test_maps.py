"""map, map-to-n and map-from-n on real 3-node clusters, through the installed `s4ctl`.

Every test starts its own cluster of the installed `s4d` on loopback (cheap:
well under a second), puts inputs with `s4ctl cp`, runs maps with `s4ctl`,
and checks outcomes through `s4ctl` (ls, cp, eval) and on the nodes' disks
(which node holds a key: placement is part of the contract). Commands that
must be stopped are found afterwards by their working directory: every map
command runs in a temp dir inside its node's data dir, so any process whose
cwd lies under the cluster's root is one of ours and must be gone.
"""
from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import zlib

import pytest

from tests.cluster import S4CTL, assert_one_line_error

PY = sys.executable  # the commands run on the daemons' host: this same machine
NODES = 3


# --- helpers -------------------------------------------------------------------------
def put_files(cluster, prefix: str, files: dict[str, str | bytes]) -> None:
    """Upload {relative path: data} under the s4:// prefix with one `s4ctl cp -r`."""
    src = cluster.root / f"upload-{uuid.uuid4().hex}"
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    cluster.s4ctl("cp", "-r", str(src), prefix)


def stored(cluster, prefix: str) -> dict[str, tuple[int, bytes]]:
    """{s4://key: (node, data)} of every key under prefix, read from the nodes' disks."""
    rel = prefix[len("s4://"):].rstrip("/")
    out: dict[str, tuple[int, bytes]] = {}
    for i, d in enumerate(cluster.data_dirs):
        base = d / rel
        if not base.is_dir():
            continue
        for p in base.rglob("*"):
            if p.is_file():
                key = "s4://" + p.relative_to(d).as_posix()
                assert key not in out, f"{key} is on nodes {out[key][0]} and {i}"
                out[key] = (i, p.read_bytes())
    return out


def listed(cluster, prefix: str) -> set[str]:
    """The keys `s4ctl ls -r prefix` shows, as s4:// urls (ls -r names are bucket-relative)."""
    bucket = prefix[len("s4://"):].split("/", 1)[0]
    proc = cluster.s4ctl("ls", "-r", prefix, check=False)
    if proc.returncode == 1 and not proc.stdout:
        return set()
    assert proc.returncode == 0, proc.stderr
    return {f"s4://{bucket}/{line.split(None, 3)[3]}" for line in proc.stdout.splitlines()}


def get(cluster, key: str) -> str:
    return cluster.s4ctl("cp", key, "-").stdout


def wait_until(check, timeout: float, interval: float = 0.1):
    """Poll check() until it is true or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def assert_no_commands_left(cluster, timeout: float = 10.0) -> None:
    wait_until(lambda: not cluster.command_processes(), timeout)
    left = cluster.command_processes()
    assert not left, "map commands still running: " + "; ".join(
        f"pid {p.pid} {p.info['cmdline']}" for p in left)


def assert_no_temp_files(cluster, timeout: float = 0.0) -> None:
    """No temp files on any node: at once after a success, within timeout after a failure."""
    wait_until(lambda: not cluster.temp_files(), timeout)
    assert cluster.temp_files() == []


def numbered(n: int, data=lambda i: f"line {i}\n", width: int = 5) -> dict[str, str]:
    return {f"{i:0{width}d}": data(i) for i in range(n)}


def script(cluster, name: str, body: str) -> str:
    """Write a python script beside the cluster; return the command that runs it."""
    path = cluster.root / name
    path.write_text(textwrap.dedent(body))
    return f"{PY} {path}"


# --- the word-bucketing pipeline ----------------------------------------------------------
BUCKETS = 12  # 12 files from each input: several pushes in flight per node

BUCKET_PY = """
    import sys, zlib
    buckets = int(sys.argv[1])
    for line in sys.stdin:
        for word in line.split():
            print(f"{zlib.crc32(word.encode()) % buckets:05d},{word}")
"""

# one file per bucket, named by the bucket; odd buckets printed as absolute paths
PARTITION_PY = """
    import os, sys
    files = {}
    for line in sys.stdin:
        bucket, word = line.rstrip("\\n").split(",", 1)
        if bucket not in files:
            files[bucket] = open(bucket, "w")
        files[bucket].write(word + "\\n")
    for name, f in sorted(files.items()):
        f.close()
        print(os.path.abspath(name) if int(name) % 2 else name)
"""


def words_inputs(n_keys: int = 6, n_words: int = 1500) -> dict[str, str]:
    rng = random.Random(3)
    vocabulary = ["".join(rng.choices("abcdefghij", k=rng.randint(2, 6))) for _ in range(400)]
    return {f"{i:05d}": " ".join(rng.choices(vocabulary, k=n_words)) + "\n" for i in range(n_keys)}


def bucket_of(word: str) -> str:
    return f"{zlib.crc32(word.encode()) % BUCKETS:05d}"


def test_word_bucketing_pipeline_matches_a_local_computation_and_shuffles_by_bucket_name(cluster):
    inputs = words_inputs()
    put_files(cluster, "s4://b/step1/", inputs)
    bucket = script(cluster, "bucket.py", BUCKET_PY)
    partition = script(cluster, "partition.py", PARTITION_PY)

    # 1:1 bucket by hash: outputs keep their names and stay on their inputs' nodes
    cluster.s4ctl("map", "s4://b/step1/", "s4://b/step2/", f"{bucket} {BUCKETS}")
    step2 = stored(cluster, "s4://b/step2/")
    assert sorted(step2) == [f"s4://b/step2/{name}" for name in sorted(inputs)]
    for name, words in inputs.items():
        node, data = step2[f"s4://b/step2/{name}"]
        assert node == int(name) % NODES
        assert data.decode() == "".join(f"{bucket_of(w)},{w}\n" for w in words.split())

    # 1:n partition: each file to OUTDIR/<input name>/<file name> on node int(name) % 3,
    # whether the command printed it relative or absolute
    cluster.s4ctl("map-to-n", "s4://b/step2/", "s4://b/step3/", partition)
    step3 = stored(cluster, "s4://b/step3/")
    expected3 = {}
    for name, words in inputs.items():
        per_bucket = collections.defaultdict(list)
        for w in words.split():
            per_bucket[bucket_of(w)].append(w)
        for b, ws in per_bucket.items():
            expected3[f"s4://b/step3/{name}/{b}"] = "".join(w + "\n" for w in ws)
    assert sorted(step3) == sorted(expected3)
    assert listed(cluster, "s4://b/step3/") == set(expected3)
    for key, (node, data) in step3.items():
        assert node == int(key.rsplit("/", 1)[1]) % NODES, key
        assert data.decode() == expected3[key], key

    # n:1 merge with `xargs cat`: one key per bucket, on that bucket's node
    cluster.s4ctl("map-from-n", "s4://b/step3/", "s4://b/step4/", "xargs cat")
    expected4 = collections.defaultdict(collections.Counter)
    for words in inputs.values():
        for w in words.split():
            expected4[bucket_of(w)][w] += 1
    step4 = stored(cluster, "s4://b/step4/")
    assert sorted(step4) == sorted(f"s4://b/step4/{b}" for b in expected4)
    for b, counts in expected4.items():
        key = f"s4://b/step4/{b}"
        assert step4[key][0] == int(b) % NODES
        assert collections.Counter(get(cluster, key).split()) == counts
    assert_no_temp_files(cluster)


def test_map_over_map_to_n_output_keeps_the_nested_relative_names_under_outdir(cluster):
    put_files(cluster, "s4://b/in/", numbered(3, lambda i: f"a{i}\nb{i}\nc{i}\n"))
    split = 'n=0; while read line; do n=$((n+1)); f=$(printf "%03d_part" $n); echo "$line" > $f; echo $f; done'
    cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/parts/", split)
    parts = stored(cluster, "s4://b/parts/")
    assert len(parts) == 9

    cluster.s4ctl("map", "s4://b/parts/", "s4://b/upper/", "tr a-z A-Z")
    upper = stored(cluster, "s4://b/upper/")
    assert sorted(upper) == sorted(k.replace("/parts/", "/upper/") for k in parts)
    for key, (node, data) in parts.items():
        assert upper[key.replace("/parts/", "/upper/")] == (node, data.upper())
    assert get(cluster, "s4://b/upper/00002/003_part") == "C2\n"
    assert_no_temp_files(cluster)


# --- map-to-n edge cases --------------------------------------------------------------------
def test_map_to_n_whose_command_writes_no_files_succeeds_and_makes_no_keys(cluster):
    put_files(cluster, "s4://b/in/", numbered(3))
    proc = cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out/", "cat > /dev/null")
    assert proc.returncode == 0
    assert stored(cluster, "s4://b/out/") == {}
    assert listed(cluster, "s4://b/out/") == set()
    assert_no_temp_files(cluster)


@pytest.mark.parametrize("made, printed", [
    ("", "does_not_exist"), ("", "/etc/hostname"), ("", "../../../etc"), ("", "."),
    ("mkdir sub", "sub"),                     # a directory it made
    ("ln -s real link", "link"),              # a link to a file it wrote
    ("ln -s /etc/hostname host", "host"),     # a link out of its directory
])
def test_map_to_n_printed_name_that_is_not_a_file_it_wrote_fails_quickly_naming_the_key(cluster, made, printed):
    put_files(cluster, "s4://b/in/", {"00001": "x\n"})
    cmd = f"cat > real; {made + ';' if made else ''} echo real; echo {printed}"
    started = time.monotonic()
    proc = cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out/", cmd, check=False)
    assert time.monotonic() - started < 15
    assert proc.returncode == 1
    assert "s4://b/in/00001" in proc.stderr
    assert f"printed {printed!r}" in proc.stderr
    assert cluster.address(1) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert_no_temp_files(cluster, timeout=10)


@pytest.mark.parametrize("shape, cmd", [
    ("map-to-n", 'ln {canary} x; echo x'),                                    # a hard link it printed
    ("map", 'p=$(readlink /proc/$$/fd/1); echo data; rm -f "$p"; ln {canary} "$p"'),    # its stdout swapped
    ("map", 'p=$(readlink /proc/$$/fd/1); echo data; rm -f "$p"; ln -s {canary} "$p"'),
])
def test_a_command_cannot_get_a_file_outside_the_data_dir_published_or_changed(make_cluster, shape, cmd):
    """Publishing takes the file by a descriptor opened without following a link,
    and only a regular file with one name: a link a command made to a file
    outside the data dir is neither tagged, chmodded nor linked in."""
    cluster = make_cluster(nodes=1)
    canary = cluster.root / "canary"
    canary.write_text("not s4's\n")
    canary.chmod(0o644)
    put_files(cluster, "s4://b/in/", {"00001": "x\n"})
    proc = cluster.s4ctl(shape, "s4://b/in/", "s4://b/out/", cmd.format(canary=canary), check=False)
    assert_one_line_error(proc, "s4://b/out/00001", cluster.address(0))
    assert "internal" not in proc.stderr
    st = canary.stat()
    assert (st.st_mode & 0o777, st.st_nlink, canary.read_text()) == (0o644, 1, "not s4's\n")
    assert os.listxattr(canary) == []
    assert stored(cluster, "s4://b/out/") == {}
    assert_no_temp_files(cluster, timeout=10)


def test_map_to_n_fails_on_more_names_than_it_reads_and_quotes_a_huge_name_short(cluster):
    """A listing past the limit fails the map (a name past a cut would be lost
    silently); a huge bad name is quoted short, so its error still reaches the client."""
    put_files(cluster, "s4://b/in/", {"00001": "x\n"})
    many = "cat > 001; awk 'BEGIN { for (i = 0; i < 1300000; i++) print \"001\" }'; echo 002"
    proc = cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out/", many, check=False)
    assert_one_line_error(proc, "s4://b/in/00001", "bytes of file names")
    huge = "cat > 001; head -c 3000000 /dev/zero | tr '\\0' a; echo"
    proc = cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out2/", huge, check=False)
    assert_one_line_error(proc, "s4://b/in/00001", "which is not a file it wrote")
    assert len(proc.stderr) < 2000
    assert stored(cluster, "s4://b/out/") == {} and stored(cluster, "s4://b/out2/") == {}
    assert_no_temp_files(cluster, timeout=10)


@pytest.mark.parametrize("printed", ["real\\0", "./real\\0"])
def test_map_to_n_printed_name_with_a_nul_byte_fails_as_not_a_file_it_wrote(cluster, printed):
    put_files(cluster, "s4://b/in/", {"00001": "x\n"})
    proc = cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out/",
                         f"cat > real; echo real; printf '{printed}\\n'", check=False)
    assert_one_line_error(proc, "s4://b/in/00001", "which is not a file it wrote")
    assert "internal" not in proc.stderr
    assert stored(cluster, "s4://b/out/") == {}
    assert_no_temp_files(cluster, timeout=10)


def test_map_to_n_empty_printed_line_yields_no_key(cluster):
    put_files(cluster, "s4://b/in/", {"00000": "x\n"})
    cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out/", 'cat > 001_a; echo; echo 001_a; echo ""; echo')
    assert listed(cluster, "s4://b/out/") == {"s4://b/out/00000/001_a"}
    assert stored(cluster, "s4://b/out/") == {"s4://b/out/00000/001_a": (1, b"x\n")}
    assert_no_temp_files(cluster)


# --- map-from-n naming ------------------------------------------------------------------------
def test_map_from_n_output_keeps_the_suffix_every_member_shares(cluster):
    put_files(cluster, "s4://b/in/", {
        "x/000_key0": "x0\n", "y/000_key0": "y0\n", "z/000_key0": "z0\n",
        "x/001_key1": "x1\n", "y/001_key1": "y1\n",
    })
    cluster.s4ctl("map-from-n", "s4://b/in/", "s4://b/out/", "xargs cat")
    out = stored(cluster, "s4://b/out/")
    assert sorted(out) == ["s4://b/out/000_key0", "s4://b/out/001_key1"]
    assert out["s4://b/out/000_key0"][0] == 0
    assert out["s4://b/out/001_key1"][0] == 1
    assert sorted(get(cluster, "s4://b/out/000_key0").split()) == ["x0", "y0", "z0"]
    assert sorted(get(cluster, "s4://b/out/001_key1").split()) == ["x1", "y1"]
    assert_no_temp_files(cluster)


def test_map_from_n_keeps_the_suffix_of_members_in_deep_directories(cluster):
    files = {}
    for month in ("may", "june"):
        for k in range(3):
            for b in range(3):
                files[f"{month}/{k:03d}_key{k}/{b:03d}_bucket{b}"] = f"{month}-{k}-{b}\n"
    put_files(cluster, "s4://b/step1/", files)
    cluster.s4ctl("map-from-n", "s4://b/step1/", "s4://b/step2/", "xargs cat")
    out = stored(cluster, "s4://b/step2/")
    assert sorted(out) == [f"s4://b/step2/{b:03d}_bucket{b}" for b in range(3)]
    for b in range(3):
        node, data = out[f"s4://b/step2/{b:03d}_bucket{b}"]
        assert node == b
        assert sorted(data.decode().split()) == sorted(
            f"{m}-{k}-{b}" for m in ("may", "june") for k in range(3))
    assert_no_temp_files(cluster)


def test_map_from_n_with_mixed_suffixes_names_the_output_by_the_bare_numeric_prefix(cluster):
    put_files(cluster, "s4://b/in/", {
        "a/002_apples": "apples\n", "b/002_pears": "pears\n", "c/002": "plain\n",
        "a/004_x": "x4\n", "b/004_x": "x4b\n",
    })
    cluster.s4ctl("map-from-n", "s4://b/in/", "s4://b/out/", "xargs cat")
    out = stored(cluster, "s4://b/out/")
    assert sorted(out) == ["s4://b/out/002", "s4://b/out/004_x"]
    assert out["s4://b/out/002"][0] == 2
    assert sorted(out["s4://b/out/002"][1].split()) == [b"apples", b"pears", b"plain"]
    assert out["s4://b/out/004_x"][0] == 1
    assert_no_temp_files(cluster)


MERGE_RESULTS_PY = """
    import sys
    import collections
    result = collections.defaultdict(int)
    for line in sys.stdin:
        passengers, count = line.split(',')
        result[passengers] += int(count)
    for passengers, count in result.items():
        print(f'{passengers},{count}')
"""


def test_blog_results_key_is_gathered_on_one_node_by_map_to_n_then_merged(cluster):
    rng = random.Random(7)
    inputs, expected = {}, collections.Counter()
    for i in range(6):
        counts = {p: rng.randint(1, 1000) for p in range(rng.randint(3, 8))}
        expected.update(counts)
        inputs[f"{i:05d}"] = "".join(f"{p},{c}\n" for p, c in counts.items())
    put_files(cluster, "s4://step3/", inputs)
    merge = script(cluster, "merge_results.py", MERGE_RESULTS_PY)

    cluster.s4ctl("map-to-n", "s4://step3/", "s4://step4/", "cat > results && echo results")
    step4 = stored(cluster, "s4://step4/")
    assert sorted(step4) == [f"s4://step4/{name}/results" for name in sorted(inputs)]
    holders = {node for node, _ in step4.values()}
    assert len(holders) == 1, f"results keys spread over nodes {holders}"

    cluster.s4ctl("map-from-n", "s4://step4/", "s4://step5/", f"xargs cat | {merge}")
    step5 = stored(cluster, "s4://step5/")
    assert list(step5) == ["s4://step5/results"]
    assert step5["s4://step5/results"][0] == holders.pop()  # merged where the members were
    shown = cluster.s4ctl("eval", "s4://step5/results", "tr , ' ' | sort -nrk2").stdout
    got = {int(p): int(c) for p, c in (line.split() for line in shown.splitlines())}
    assert got == dict(expected)
    assert [int(line.split()[1]) for line in shown.splitlines()] == sorted(expected.values(), reverse=True)
    assert_no_temp_files(cluster)


def test_blog_map_to_n_duplication_example_and_its_map_from_n_merge(cluster):
    cluster.sh("echo input_a | s4ctl cp - s4://inputs/000_machine0\n"
               "echo input_b | s4ctl cp - s4://inputs/001_machine1\n")
    cluster.sh(r"""
        s4ctl map-to-n s4://inputs/ s4://shuffled/ '
            cat > content
            for i in {2..3}; do
                file=$(printf "%03d" $i)_machine$i
                echo -n "$(cat content)$i" > $file
                echo $file
            done
        '
    """)
    shown = cluster.sh(r"""
        for key in $(s4ctl ls -r s4://shuffled/ | awk '{print $NF}'); do
            echo $key '=>' $(s4ctl eval s4://shuffled/$key cat)
        done
    """).stdout
    assert shown.splitlines() == [
        "000_machine0/002_machine2 => input_a2",
        "000_machine0/003_machine3 => input_a3",
        "001_machine1/002_machine2 => input_b2",
        "001_machine1/003_machine3 => input_b3",
    ]
    shuffled = stored(cluster, "s4://shuffled/")
    for key, (node, _) in shuffled.items():
        assert node == int(key.rsplit("/", 1)[1][:3]) % NODES, key

    cluster.sh('s4ctl map-from-n s4://shuffled/ s4://merged/ "xargs cat"')
    merged = stored(cluster, "s4://merged/")
    # xargs cat concatenates the members in key order; echo -n left no newlines
    assert merged == {"s4://merged/002_machine2": (2, b"input_a2input_b2"),
                      "s4://merged/003_machine3": (0, b"input_a3input_b3")}
    shown = cluster.sh(r"""
        for key in $(s4ctl ls -r s4://merged/ | awk '{print $NF}'); do
            echo $key '=>' $(s4ctl eval s4://merged/$key cat)
        done
    """).stdout
    assert shown.splitlines() == ["002_machine2 => input_a2input_b2",
                                  "003_machine3 => input_a3input_b3"]
    assert_no_temp_files(cluster)


# --- map: inputs and environment ------------------------------------------------------------
def test_glob_on_the_last_component_of_indir_maps_only_matching_names(cluster):
    put_files(cluster, "s4://b/in/", numbered(16, width=4))
    put_files(cluster, "s4://b/in/", {"sub/0004": "nested\n"})
    cluster.s4ctl("map", "s4://b/in/*4", "s4://b/out/", "cat")
    assert listed(cluster, "s4://b/out/") == {"s4://b/out/0004", "s4://b/out/0014"}
    assert get(cluster, "s4://b/out/0014") == "line 14\n"
    assert stored(cluster, "s4://b/out/")["s4://b/out/0004"] == (1, b"line 4\n")
    assert_no_temp_files(cluster)


def test_filename_holds_the_input_keys_basename(cluster):
    put_files(cluster, "s4://b/in/", {"000_x": "1\n", "a/001_y": "2\n", "a/b/c/zeta": "3\n"})
    cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", 'echo "$filename"')
    out = stored(cluster, "s4://b/out/")
    assert {k: v for k, (_, v) in out.items()} == {
        "s4://b/out/000_x": b"000_x\n", "s4://b/out/a/001_y": b"001_y\n",
        "s4://b/out/a/b/c/zeta": b"zeta\n"}
    assert_no_temp_files(cluster)


def test_percent_signs_and_quotes_in_a_command_pass_through_untouched(cluster):
    put_files(cluster, "s4://b/in/", numbered(3))
    cmd = """printf '%s\\n' "a'b"; printf '%%d "%s" \\\\n\\n' "$filename"; echo '$HOME' "100%" """
    cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", cmd)
    assert get(cluster, "s4://b/out/00001") == 'a\'b\n%d "00001" \\n\n$HOME 100%\n'
    cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/n/", """printf '%s\\n' "a'b" > 7%; echo 7%""")
    assert get(cluster, "s4://b/n/00002/7%") == "a'b\n"
    assert_no_temp_files(cluster)


def test_while_read_line_commands_work(cluster):
    put_files(cluster, "s4://b/in/", numbered(3, lambda i: "".join(f"w{i}{j}\n" for j in range(4))))
    cluster.s4ctl("map", "s4://b/in/", "s4://b/out/",
                  'while read line; do echo "got $line"; done')
    for i in range(3):
        assert get(cluster, f"s4://b/out/{i:05d}") == "".join(f"got w{i}{j}\n" for j in range(4))
    # and in map-from-n, reading the member paths
    cluster.s4ctl("map-from-n", "s4://b/out/", "s4://b/counted/",
                  'while read path; do wc -l < "$path"; done')
    assert get(cluster, "s4://b/counted/00002") == "4\n"
    assert_no_temp_files(cluster)


@pytest.mark.parametrize("op", ["map", "map-to-n", "map-from-n"])
def test_indir_with_no_keys_exits_1_saying_no_keys_under(cluster, op):
    put_files(cluster, "s4://b/in/", numbered(2))
    proc = cluster.s4ctl(op, "s4://b/nothing/", "s4://b/out/", "cat", check=False)
    assert proc.returncode == 1
    assert "no keys under s4://b/nothing/" in proc.stderr
    proc = cluster.s4ctl(op, "s4://b/in/*9", "s4://b/out/", "cat", check=False)
    assert proc.returncode == 1
    assert "no keys under s4://b/in/*9" in proc.stderr
    assert listed(cluster, "s4://b/out/") == set()


@pytest.mark.parametrize("op,cmd", [("map", "cat"), ("map-to-n", "cat > 002_f; echo 002_f"),
                                    ("map-from-n", "xargs cat")])
def test_map_over_existing_output_keys_fails_as_immutable_and_reruns_after_rm(cluster, op, cmd):
    put_files(cluster, "s4://b/in/", numbered(3))
    cluster.s4ctl(op, "s4://b/in/", "s4://b/out/", cmd)
    before = stored(cluster, "s4://b/out/")
    assert len(before) == 3

    proc = cluster.s4ctl(op, "s4://b/in/", "s4://b/out/", cmd, check=False)
    assert proc.returncode == 1
    assert "exists" in proc.stderr and "s4://b/out/" in proc.stderr, proc.stderr
    assert stored(cluster, "s4://b/out/") == before
    assert_no_temp_files(cluster, timeout=10)

    cluster.s4ctl("rm", "-r", "s4://b/out/")
    assert listed(cluster, "s4://b/out/") == set()
    cluster.s4ctl(op, "s4://b/in/", "s4://b/out/", cmd)
    assert {k: v for k, (_, v) in stored(cluster, "s4://b/out/").items()} == \
           {k: v for k, (_, v) in before.items()}
    assert_no_temp_files(cluster)


# --- plain commands, exec'd without bash ---------------------------------------------------
def test_a_plain_command_sees_what_it_would_see_under_bash(cluster):
    """`env` is exec'd directly; `"env"` (quoted: not plain) goes through bash, which
    execs the same program: same argv, environment (PWD, SHLVL, `_`, $filename), cwd."""
    put_files(cluster, "s4://b/in/", numbered(3))
    cluster.s4ctl("map", "s4://b/in/", "s4://b/direct/", "env")
    cluster.s4ctl("map", "s4://b/in/", "s4://b/bash/", '"env"')

    def environ(key: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in get(cluster, key).splitlines() if "=" in line)

    for i in range(3):
        direct, bash = environ(f"s4://b/direct/{i:05d}"), environ(f"s4://b/bash/{i:05d}")
        node = cluster.data_dirs[cluster.node_of(f"s4://b/in/{i:05d}")]
        for env in (direct, bash):  # each in its own temp dir inside its node's data dir
            assert env.pop("PWD").startswith(str(node) + "/"), env
        assert direct == bash
        assert direct["filename"] == f"{i:05d}" and direct["_"].endswith("/env")


@pytest.mark.parametrize("cmd,plain", [
    ("cat", True), ("wc -l", True), ("xargs cat", True), ("sort -k2,2 -t, -S 1M", True), ("dd bs=1M", True),
    ("/usr/bin/env", True), ("  cat\t-A  ", True),
    ("echo hi", False), ("true", False), ("[ -f x ]", False), ("a=b cat", False), ("cat *", False),
    ("cat | wc", False), ("cat 'a'", False), ("cat $filename", False), ("cat ~", False), ("if", False),
    ("no-such-program-anywhere", False), ("cat\nwc", False), ("cat > x", False), ("cat # c", False),
])
def test_which_commands_are_plain_enough_to_exec_without_bash(cmd, plain):
    import os
    import shutil

    from s4d.controller import PlainCommands
    commands = PlainCommands(shutil.which("bash"), dict(os.environ))
    assert (commands.argv(cmd) is not None) == plain
    if plain:
        program, argv = commands.argv(cmd)
        assert argv == cmd.split() and os.access(program, os.X_OK)
    for env in ({"BASH_ENV": "/x"}, {"BASH_FUNC_cat%%": "() { echo; }"}, {"PATH": ".:/usr/bin:/bin"}):
        assert PlainCommands(shutil.which("bash"), {**os.environ, **env}).argv("cat") is None


def test_a_plain_command_bash_must_run_falls_back_to_bash(cluster):
    """A script with no #! cannot be exec'd: bash runs it, as `bash -c` would; a name
    found nowhere gets bash's own answer."""
    put_files(cluster, "s4://b/in/", numbered(2))
    shebangless = cluster.root / "shebangless"
    shebangless.write_text('echo "script saw $filename"\n')
    shebangless.chmod(0o755)
    cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", str(shebangless))
    assert get(cluster, "s4://b/out/00001") == "script saw 00001\n"
    proc = cluster.s4ctl("map", "s4://b/in/", "s4://b/none/", "no-such-program-anywhere", check=False)
    assert proc.returncode == 1 and "exit 127" in proc.stderr and "command not found" in proc.stderr
    assert_no_temp_files(cluster, timeout=10)


def test_a_used_command_dir_is_emptied_for_the_next_command_or_removed_when_it_is_odd(make_cluster):
    """One node, one command at a time: each command's dir comes back empty; a dir a
    command made a subdir in, or chmodded, is not handed on (its successor gets a new one)."""
    cluster = make_cluster(nodes=1, args=("--max-cpu-jobs", "1"))
    put_files(cluster, "s4://b/in/", numbered(8))
    odd = {"00002", "00005"}
    cmd = ('ls -A; echo "$(date +%s%N) $PWD"; echo x > "left-$filename"; '
           'if [ "$filename" = 00002 ]; then mkdir sub; fi; if [ "$filename" = 00005 ]; then chmod 700 .; fi')
    cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", cmd)
    ran = []  # (when, dir, key) in the order the commands ran
    for i in range(8):
        lines = get(cluster, f"s4://b/out/{i:05d}").splitlines()
        assert len(lines) == 1, lines  # `ls -A` printed nothing: no file left by an earlier command
        when, cwd = lines[0].split(" ", 1)
        ran.append((int(when), cwd, f"{i:05d}"))
    ran.sort()
    for (_, before, key), (_, after, _) in zip(ran, ran[1:]):
        assert (after == before) == (key not in odd), ran  # handed on, unless a subdir or a chmod
    assert_no_temp_files(cluster)


def test_a_command_that_sets_its_dirs_mtime_back_still_has_its_files_cleared(make_cluster):
    """A dir is handed on as untouched only if its mtime and its ctime did not move:
    a command that writes a file and then sets the dir's mtime back to 0 (what
    `take` set) does not leave that file to the next command."""
    cluster = make_cluster(nodes=1, args=("--max-cpu-jobs", "1"))
    put_files(cluster, "s4://b/in/", numbered(12))
    cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", 'ls -A; echo x > "leak-$filename"; touch -d @0 .')
    for i in range(12):
        assert get(cluster, f"s4://b/out/{i:05d}") == "", i  # no file of an earlier command
    assert_no_temp_files(cluster)


@pytest.mark.parametrize("args, line", [
    (["wc -l"], "1"),
    (['grep -c "^line 1" || true'], "1"),            # quotes: escaped by the hand codec
    (["--timeout", "2.5", r"sed 's/\(line\)/<\1>/'"], "<line> 1"),  # backslashes and a float
])
def test_a_maps_client_imports_neither_docopt_nor_json_when_its_frames_are_flat(cluster, args, line):
    """A map's request (any printable ASCII CMD, with or without --timeout) and every
    frame back are flat: the hand codec reads and writes them, and a map starts as
    fast as a small cp."""
    put_files(cluster, "s4://b/in/", numbered(3))
    proc = subprocess.run([PY, "-X", "importtime", S4CTL, "map", "s4://b/in/", "s4://b/out/", *args],
                          capture_output=True, text=True, env=cluster.env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "s4ctl.client" in imported and not imported & {"json", "docopt", "re"}, sorted(imported)
    assert get(cluster, "s4://b/out/00001") == line + "\n"


# --- failures, timeouts, limits -------------------------------------------------------------
def test_commands_run_under_set_euo_pipefail(cluster):
    put_files(cluster, "s4://b/in/", numbered(3))
    for cmd, why in [("false; echo ok", "set -e"), ("echo $not_set_anywhere", "set -u"),
                     ("false | cat", "set -o pipefail")]:
        proc = cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", cmd, check=False)
        assert proc.returncode == 1, f"{cmd!r} succeeded: no {why}"
        assert "exit 1" in proc.stderr, proc.stderr
    assert_no_temp_files(cluster, timeout=10)
    assert listed(cluster, "s4://b/out/") == set()


def test_failing_command_exits_1_naming_the_node_key_exit_code_and_stderr_tail(cluster):
    put_files(cluster, "s4://b/in/", numbered(3))
    cmd = ('if [ "$filename" = 00001 ]; then echo "early noise" >&2; '
           'echo "bad record in $filename" >&2; exit 3; fi; cat')
    proc = cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", cmd, check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert cluster.address(1) in err
    assert "s4://b/in/00001" in err
    assert "exit 3" in err
    assert "bad record in 00001" in err
    assert "Traceback" not in err
    assert_no_temp_files(cluster, timeout=10)


def test_a_failing_command_stops_the_maps_work_on_every_node_promptly(cluster):
    put_files(cluster, "s4://b/in/", numbered(12))  # 4 keys on each node
    cmd = ('if [ "$filename" = 00000 ]; then sleep 0.5; echo "giving up" >&2; exit 7; fi; '
           'sleep 30; cat')
    started = time.monotonic()
    proc = cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", cmd, check=False, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 1
    assert "s4://b/in/00000" in proc.stderr and "exit 7" in proc.stderr and "giving up" in proc.stderr
    assert took < 15, f"the map took {took:.1f}s to fail; the slow commands take 30s"
    # the slow commands on every node were killed, not left to finish
    assert_no_commands_left(cluster)
    assert stored(cluster, "s4://b/out/") == {}
    assert_no_temp_files(cluster, timeout=10)


@pytest.mark.parametrize("cmd", ["sleep 1000", "cat > /dev/null; sleep 1000 & sleep 1000"])
def test_a_hanging_command_is_killed_at_the_timeout_with_its_children(cluster, cmd):
    put_files(cluster, "s4://b/in/", numbered(3))
    started = time.monotonic()
    proc = cluster.s4ctl("map", "--timeout", "2", "s4://b/in/", "s4://b/out/", cmd,
                         check=False, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 1
    assert "timed out" in proc.stderr and "s4://b/in/0000" in proc.stderr, proc.stderr
    assert 1.5 < took < 15, f"took {took:.1f}s with --timeout 2"
    assert_no_commands_left(cluster, timeout=5)
    assert stored(cluster, "s4://b/out/") == {}
    assert_no_temp_files(cluster, timeout=10)


def test_concurrency_limit_holds_on_every_node_also_across_concurrent_maps(make_cluster):
    cluster = make_cluster(args=("--max-cpu-jobs", "2"))
    probe = cluster.root / "probe"
    for i in range(NODES):
        (probe / f"node{i}").mkdir(parents=True)
    put_files(cluster, "s4://b/in/", numbered(18))  # 6 keys on each node
    # each command registers itself in its node's lock dir, counts who is there, leaves
    cmd = (f'd={probe}/node$((10#$filename % 3)); touch "$d/$filename.$$"; '
           f'ls "$d" | wc -l >> "$d.seen"; sleep 0.6; rm "$d/$filename.$$"; cat')

    def seen(i: int) -> list[int]:
        path = probe / f"node{i}.seen"
        counts = [int(n) for n in path.read_text().split()]
        path.unlink()
        return counts

    cluster.s4ctl("map", "s4://b/in/", "s4://b/out/", cmd)
    for i in range(NODES):
        counts = seen(i)
        assert len(counts) == 6
        assert max(counts) <= 2, f"node{i} ran {max(counts)} commands at once with --max-cpu-jobs 2"
        assert max(counts) == 2, f"node{i} never ran 2 commands at once: {counts}"
    assert len(stored(cluster, "s4://b/out/")) == 18

    # a map and a map-to-n at the same time share each node's 2 slots
    to_n = cmd.replace("; cat", "; cat > 001_f; echo 001_f")
    procs = [subprocess.Popen([S4CTL, op, "s4://b/in/", out, c], env=cluster.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for op, out, c in [("map", "s4://b/out2/", cmd), ("map-to-n", "s4://b/n/", to_n)]]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for i in range(NODES):
        counts = seen(i)
        assert len(counts) == 12
        assert max(counts) <= 2, f"node{i} ran {max(counts)} commands at once with --max-cpu-jobs 2"
    assert len(stored(cluster, "s4://b/out2/")) == 18
    assert len(stored(cluster, "s4://b/n/")) == 18
    assert_no_temp_files(cluster)


def test_interrupting_s4ctl_stops_the_map_on_every_node(cluster):
    put_files(cluster, "s4://b/in/", numbered(6))
    proc = subprocess.Popen([S4CTL, "map", "s4://b/in/", "s4://b/out/", "sleep 30; cat"],
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # every node's commands are running (bash and its sleep, 2 keys per node)
        assert wait_until(lambda: len(cluster.command_processes()) == 12, timeout=15), \
            [p.info["cmdline"] for p in cluster.command_processes()]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) != 0
    finally:
        proc.kill()
        proc.communicate()
    assert_no_commands_left(cluster)
    assert stored(cluster, "s4://b/out/") == {}
    assert_no_temp_files(cluster, timeout=10)


# --- the input's check, beside the command ------------------------------------------------
def corrupt(path, offset: int) -> None:
    """Flip one byte of a stored key in place (its checksum xattr stays)."""
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))
    path.chmod(0o444)


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024 + 5],
                         ids=["small, checked first", "big, checked beside"])
def test_a_key_corrupted_on_disk_fails_every_kind_of_command_and_publishes_nothing_from_it(cluster, size):
    line = b"%0*d\n" % (99, 7)
    put_files(cluster, "s4://b/in/", {"000_k": line * (size // 100), "003_fine": line})
    url = "s4://b/in/000_k"
    corrupt(cluster.key_path(cluster.node_of(url), url), size // 2)
    proc = cluster.s4ctl("eval", url, "cat", input=b"", check=False)
    assert proc.returncode == 1 and b"corrupt" in proc.stderr and url.encode() in proc.stderr
    assert proc.stdout == b""
    # the commands succeed: only the check can stop their outputs
    for op, cmd in [("map", "cat"), ("map-to-n", "cat > 003_x; echo 003_x"), ("map-from-n", "xargs cat")]:
        proc = cluster.s4ctl(op, "s4://b/in/", f"s4://b/{op}/", cmd, check=False)
        assert proc.returncode == 1 and "corrupt" in proc.stderr and url in proc.stderr, proc.stderr
        assert not [k for k in stored(cluster, f"s4://b/{op}/") if "000" in k], op
    assert_no_temp_files(cluster, timeout=10)


# --- commands die with their daemon ---------------------------------------------------------
def sleeps(cluster) -> list:
    """The `sleep` processes among the cluster's commands."""
    import psutil
    found = []
    for p in cluster.command_processes():
        try:
            if p.name() == "sleep":
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.parametrize("cmd", ["sleep 1000", "sleep 1000; cat"])
def test_commands_of_a_sigkilled_daemon_are_killed_with_it(make_cluster, cmd):
    cluster = make_cluster(nodes=1)
    put_files(cluster, "s4://b/in/", numbered(3))
    proc = subprocess.Popen([S4CTL, "map", "s4://b/in/", "s4://b/out/", cmd], env=cluster.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: len(sleeps(cluster)) == 3, timeout=15)
        cluster.kill(0)
        assert wait_until(lambda: not cluster.command_processes(), timeout=10), \
            [p.pid for p in cluster.command_processes()]
    finally:
        proc.kill()
        proc.wait()


def test_commands_left_by_a_daemon_killed_with_its_watchdog_die_when_it_starts_again(make_cluster):
    import psutil
    cluster = make_cluster(nodes=1)
    put_files(cluster, "s4://b/in/", numbered(2))
    proc = subprocess.Popen([S4CTL, "map", "s4://b/in/", "s4://b/out/", "sleep 1000"],
                            env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: len(sleeps(cluster)) == 2, timeout=15)
        watchdogs = [p for p in psutil.Process(cluster.pid(0)).children()
                     if any("orphans.py" in a for a in p.cmdline())]
        assert len(watchdogs) == 1
        watchdogs[0].kill()  # a zombie until its parent goes: no wait
        cluster.kill(0)
        time.sleep(0.5)
        assert len(sleeps(cluster)) == 2  # nothing left to kill them ...
        cluster.start(0)
        assert wait_until(lambda: not cluster.command_processes(), timeout=10)  # ... until it starts
    finally:
        proc.kill()
        proc.wait()
        for p in cluster.command_processes():
            p.kill()


# --- names and messages --------------------------------------------------------------------
def test_map_to_n_names_outputs_by_the_inputs_path_under_indir_so_nested_inputs_never_collide(cluster):
    put_files(cluster, "s4://b/in/", {"a/001.csv": "a\n", "b/001.csv": "b\n", "002.csv": "c\n"})
    cluster.s4ctl("map-to-n", "s4://b/in/", "s4://b/out/", "cat > 000_part; echo 000_part")
    assert {k: v for k, (_, v) in stored(cluster, "s4://b/out/").items()} == {
        "s4://b/out/a/001.csv/000_part": b"a\n", "s4://b/out/b/001.csv/000_part": b"b\n",
        "s4://b/out/002.csv/000_part": b"c\n"}
    # two printed files of one name are named as the collision they are, not as "key exists"
    proc = cluster.s4ctl("map-to-n", "s4://b/in/a/", "s4://b/twice/",
                         "mkdir x y; cat > x/f; cp x/f y/f; echo x/f; echo y/f", check=False)
    assert proc.returncode == 1
    assert "two files named 'f'" in proc.stderr and "s4://b/twice/001.csv/f" in proc.stderr, proc.stderr
    assert "exists" not in proc.stderr
    assert stored(cluster, "s4://b/twice/") == {}


def test_a_failed_commands_error_names_its_signal_and_says_it_ran_under_pipefail(cluster):
    put_files(cluster, "s4://b/in/", numbered(1))
    proc = cluster.s4ctl("map", "s4://b/in/", "s4://b/o1/", "kill -s TERM $$", check=False)
    assert proc.returncode == 1 and "killed by SIGTERM" in proc.stderr, proc.stderr
    proc = cluster.s4ctl("map", "s4://b/in/", "s4://b/o2/", "yes | (read x; kill -s PIPE $BASHPID)",
                         check=False)
    assert proc.returncode == 1 and "SIGPIPE" in proc.stderr, proc.stderr
    proc = cluster.s4ctl("map", "s4://b/in/", "s4://b/o3/", "grep nothing-matches", check=False)
    assert proc.returncode == 1 and "exit 1" in proc.stderr and "bash -euo pipefail" in proc.stderr
    proc = cluster.s4ctl("map", "s4://b/in/", "s4://b/o4/", "  ", check=False)
    assert proc.returncode == 1 and "empty" in proc.stderr, proc.stderr

"""The client under ordinary shell habits, black box against a real 3-node cluster:
a conf that orders the nodes otherwise, a closed stdout, an empty command,
`ls -r` as the preview of `rm -r`, `ls` columns, a map run twice, map progress.

(`cp` with special files, partial trees, long names, `--` and signals: test_cp.py.)
"""
import os
import re
import uuid

from s4ctl.client import Client
from tests.cluster import Cluster, assert_one_line_error


def put(c: Cluster, b: str, *names: str) -> None:
    """Store keys whose data is their name, with one `cp -r`."""
    root = c.root / ("src-" + uuid.uuid4().hex)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    c.s4ctl("cp", "-r", str(root), f"s4://{b}")


def listed(c: Cluster, prefix: str) -> list[str]:
    proc = c.s4ctl("ls", "-r", prefix, check=False)
    return [line.split(None, 3)[3] for line in proc.stdout.splitlines()]


# --- a conf that lists the nodes in another order -------------------------------------------

def test_a_client_whose_conf_orders_the_nodes_otherwise_is_told_so_by_reads_eval_and_maps(shared, b):
    put(shared, b, "in/000_a", "in/002_b")  # on nodes 0 and 2: the reversed conf swaps them
    reversed_conf = shared.root / f"{b}-reversed.conf"
    reversed_conf.write_text("".join(f"{shared.address(i)}\n" for i in reversed(range(3))))
    other = ("-c", str(reversed_conf))
    assert listed(shared, f"s4://{b}/in/") == ["in/000_a", "in/002_b"]  # ls asks every node: it works
    for args in (("cp", f"s4://{b}/in/000_a", "-"), ("eval", f"s4://{b}/in/002_b", "cat"),
                 ("map", f"s4://{b}/in/", f"s4://{b}/out/", "cat"),
                 ("map-to-n", f"s4://{b}/in/", f"s4://{b}/out/", "true"),
                 ("map-from-n", f"s4://{b}/in/", f"s4://{b}/out/", "cat")):
        assert_one_line_error(shared.s4ctl(*args, *other, check=False),
                              "the client's conf must list the nodes in the same order")
    assert listed(shared, f"s4://{b}/out/") == []
    # a key that is really absent is still "no such key", with either conf
    assert_one_line_error(shared.s4ctl("cp", f"s4://{b}/in/001_c", "-", *other, check=False), "no such key")


# --- a closed stdout or stdin ----------------------------------------------------------------

def test_a_closed_stdout_or_stdin_is_a_one_line_error_not_an_unexpected_one(shared, b):
    put(shared, b, "k")
    for script in (f"s4ctl cp s4://{b}/k - >&-", f"s4ctl cp s4://{b}/k /proc/self/fd/1 >&-",
                   f"s4ctl ls s4://{b} >&-", f"s4ctl eval s4://{b}/k cat >&-", "s4ctl config >&-",
                   f"s4ctl rm -r s4://{b}/k >&-", f"s4ctl cp - s4://{b}/k2 <&-"):
        proc = shared.sh(script, check=False)
        assert_one_line_error(proc, "closed")
        assert "unexpected" not in proc.stderr
    assert listed(shared, f"s4://{b}") == ["k"]  # rm refused before deleting: it could not report
    # a closed stderr: errors go nowhere, never into the data on stdout
    proc = shared.sh(f"s4ctl cp s4://{b}/absent - 2>&-", check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    proc = shared.sh(f"s4ctl map s4://{b}/ s4://{b}-out/ cat 2>&- && s4ctl cp s4://{b}-out/k -", check=False)
    assert (proc.returncode, proc.stdout) == (0, "k")


# --- commands: empty ones, and what --help says -------------------------------------------

def test_an_empty_command_is_refused_before_anything_runs(shared, b):
    put(shared, b, "in/k")
    for cmd in ("", "  \n\t"):
        assert_one_line_error(shared.s4ctl("eval", f"s4://{b}/in/k", cmd, check=False), "empty")
        for op in ("map", "map-to-n", "map-from-n"):
            assert_one_line_error(shared.s4ctl(op, f"s4://{b}/in/", f"s4://{b}/out/", cmd, check=False),
                                  "empty")
    assert listed(shared, f"s4://{b}") == ["in/k"]


def test_help_of_eval_and_the_maps_says_commands_run_under_bash_euo_pipefail(shared):
    for op in ("eval", "map", "map-to-n", "map-from-n"):
        out = shared.s4ctl(op, "--help").stdout
        assert "bash -euo pipefail" in out and "grep" in out and "SIGPIPE" in out, op


# --- ls -r previews rm -r; ls columns ---------------------------------------------------------

def test_ls_r_lists_exactly_what_rm_r_deletes_and_rm_r_says_how_many(shared, b):
    names = ["step1/a", "step1/b/c", "step2", "stop/x", "dir/step", "dir/x/y"]
    put(shared, b, *names)
    put(shared, b + "-2024", "step1/kept")  # a bucket whose name starts with b's
    left = set(names)
    for prefix, said in ((f"s4://{b}/step", f"3 keys starting with s4://{b}/step"),
                         (f"s4://{b}/dir/", f"2 keys starting with s4://{b}/dir/"),
                         (f"s4://{b}", f"1 key starting with s4://{b}/")):
        preview = listed(shared, prefix)
        assert shared.s4ctl("rm", "-r", prefix).stdout == f"delete: {said}\n"
        assert len(preview) == int(said.split()[0])
        left -= set(preview)
        assert set(listed(shared, f"s4://{b}")) == left
    assert left == set()
    assert listed(shared, f"s4://{b}-2024") == ["step1/kept"]
    assert shared.s4ctl("rm", "-r", f"s4://{b}-2024/step1/kept").stdout == \
        f"delete: 1 key starting with s4://{b}-2024/step1/kept\n"


def test_ls_prints_keys_and_directories_in_aligned_columns_as_aws_s3_ls_does(shared, b):
    root = shared.root / ("src-" + uuid.uuid4().hex)
    (root / "dir").mkdir(parents=True)
    for name, size in (("a", 0), ("bb", 7), ("dir/c", 123456)):
        (root / name).write_bytes(b"x" * size)
    shared.s4ctl("cp", "-r", str(root), f"s4://{b}")
    lines = shared.s4ctl("ls", f"s4://{b}").stdout.splitlines()
    key = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert [re.sub(key, "DATE", line) for line in lines] == [
        "DATE          0 a", "DATE          7 bb", "                           PRE dir/"]
    assert {line.index(" ", 30) for line in lines} == {30}  # names start in one column
    lines = shared.s4ctl("ls", "-r", f"s4://{b}").stdout.splitlines()
    assert [re.sub(key, "DATE", line) for line in lines] == [
        "DATE          0 a", "DATE          7 bb", "DATE     123456 dir/c"]


# --- maps: run twice, progress ---------------------------------------------------------------

def test_a_map_run_again_into_the_same_outdir_says_which_output_exists_already(shared, b):
    put(shared, b, *[f"in/{i:03d}" for i in range(6)])
    shared.s4ctl("map", f"s4://{b}/in/", f"s4://{b}/out/", "cat")
    proc = shared.s4ctl("map", f"s4://{b}/in/", f"s4://{b}/out/", "cat", check=False)
    assert_one_line_error(proc, "exists already", "earlier or concurrent run", f"rm -r s4://{b}/out/")
    assert re.search(rf"output s4://{b}/out/00[0-5] exists already", proc.stderr), proc.stderr
    assert listed(shared, f"s4://{b}/out/") == [f"out/{i:03d}" for i in range(6)]


def test_map_progress_starts_only_once_every_node_has_counted_its_keys(shared, b):
    put(shared, b, *[f"in/{i:03d}" for i in range(6)])  # two keys on each node
    client = Client([("127.0.0.1", port) for port in shared.ports])
    seen = []
    result = client.map(f"{b}/in/", f"{b}/out/", "sleep 0.7; cat", on_progress=lambda *f: seen.append(f))
    assert result["total"] == 6 and seen
    assert {total for _, total, _ in seen} == {6}, seen  # never 0/0, never a total that grows
    assert seen[-1][0] == 6

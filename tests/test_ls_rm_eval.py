"""`s4ctl ls`, `rm`, `eval`, `health`, `config`, `--help` and `--version`, black box.

One cluster serves the module (each test in its own bucket); the tests that
kill a node or need an empty cluster make their own.
"""
import os
import re
import subprocess
import time
import uuid

import pytest

from s4d import __version__
from tests.cluster import S4CTL, Cluster, assert_one_line_error

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) +(\d+) (\S+)$")
PRE = re.compile(r"^ +PRE (\S+/)$")
BUCKET = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+)$")
COMMANDS = ["cp", "ls", "rm", "eval", "map", "map-to-n", "map-from-n", "health", "config"]


def put(c: Cluster, b: str, *names: str, data: bytes = b"") -> None:
    """Store keys by `cp -r` of a local tree (one client start for many keys)."""
    root = c.root / ("src-" + uuid.uuid4().hex)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data or name.encode())
    c.s4ctl("cp", "-r", str(root), f"s4://{b}")


def ls(c: Cluster, *args: str) -> list[str]:
    return c.s4ctl("ls", *args).stdout.splitlines()


def names(lines: list[str]) -> list[str]:
    """The NAME column of key lines and `PRE name/` for directory lines."""
    out = []
    for line in lines:
        if m := LINE.match(line):
            out.append(m.group(3))
        elif m := PRE.match(line):
            out.append("PRE " + m.group(1))
        else:
            raise AssertionError(f"not an `aws s3 ls` line: {line!r}")
    return out


# --- ls -------------------------------------------------------------------------------

def test_ls_prints_date_time_size_and_name_in_the_columns_of_aws_s3_ls(shared, b):
    put(shared, b, "dir/0_a", "dir/1_b", "dir/2_c", data=b"12345")
    lines = ls(shared, f"s4://{b}/dir/")
    assert len(lines) == 3
    for line in lines:
        stamp, size, _ = LINE.match(line).groups()
        assert size == "5"
        age = time.time() - time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
        assert -120 < age < 600  # written moments ago, in local time as aws prints it
    out = shared.sh(f"s4ctl ls s4://{b}/dir/ | awk '{{print $4}}'").stdout
    assert out.splitlines() == ["0_a", "1_b", "2_c"]
    out = shared.sh(f"s4ctl ls -r s4://{b} | awk '{{print $4}}'").stdout
    assert out.splitlines() == ["dir/0_a", "dir/1_b", "dir/2_c"]


def test_ls_shows_directories_as_pre_lines_and_names_relative_to_the_listed_dir(shared, b):
    put(shared, b, "top", "dir/k1", "dir/k2", "dir/sub/x", "dir/sub2/deep/y", "other/z")
    assert names(ls(shared, f"s4://{b}")) == ["PRE dir/", "PRE other/", "top"]
    assert names(ls(shared, f"s4://{b}/")) == ["PRE dir/", "PRE other/", "top"]
    assert names(ls(shared, f"s4://{b}/dir/")) == ["k1", "k2", "PRE sub/", "PRE sub2/"]
    assert names(ls(shared, f"s4://{b}/dir/sub2/")) == ["PRE deep/"]
    assert names(ls(shared, f"s4://{b}/dir/sub2/deep/")) == ["y"]


def test_ls_matches_a_partial_last_component_by_prefix(shared, b):
    put(shared, b, "dir/key1", "dir/key2", "dir/kept/x", "dir/other", "dirt/y", "do")
    assert names(ls(shared, f"s4://{b}/dir/ke")) == ["PRE kept/", "key1", "key2"]
    assert names(ls(shared, f"s4://{b}/dir/key1")) == ["key1"]
    assert names(ls(shared, f"s4://{b}/dir")) == ["PRE dir/", "PRE dirt/"]
    assert names(ls(shared, f"s4://{b}/dir/")) == ["PRE kept/", "key1", "key2", "other"]
    assert names(ls(shared, f"s4://{b}/d")) == ["PRE dir/", "PRE dirt/", "do"]


def test_ls_r_lists_paths_relative_to_the_bucket_sorted_across_nodes(shared, b):
    keys = [f"d/{i}_k" for i in (5, 0, 4, 1, 3, 2)] + ["d/sub/9", "e/1", "a", "d/zz/deep/er"]
    put(shared, b, *keys)
    assert len({shared.node_of(f"s4://{b}/{k}") for k in keys}) == 3
    assert names(ls(shared, "-r", f"s4://{b}")) == sorted(keys)
    assert names(ls(shared, "-r", f"s4://{b}/d/")) == sorted(k for k in keys if k.startswith("d/"))
    assert names(ls(shared, "-r", f"s4://{b}/d/su")) == ["d/sub/9"]
    assert names(ls(shared, "--recursive", f"s4://{b}/d/1")) == ["d/1_k"]


def test_ls_of_a_bucket_does_not_list_buckets_that_merely_start_with_its_name(shared, b):
    put(shared, b, "mine")
    put(shared, b + "2", "theirs")
    assert names(ls(shared, f"s4://{b}")) == ["mine"]
    assert names(ls(shared, "-r", f"s4://{b}")) == ["mine"]


def test_ls_without_a_prefix_lists_the_buckets(shared, b):
    put(shared, b, "x/y")
    put(shared, b + "z", "k")
    lines = ls(shared)
    buckets = [BUCKET.match(line).group(2) for line in lines]
    assert b in buckets and b + "z" in buckets
    assert buckets == sorted(buckets)
    assert not any(name.startswith("_") for name in buckets)  # no daemon internals


def test_ls_r_without_a_prefix_lists_the_buckets_too(shared, b):
    put(shared, b, "x/y")
    assert ls(shared, "-r") == ls(shared) == ls(shared, "-r", "s4://")
    assert any(line.endswith(" " + b) for line in ls(shared, "-r"))


def test_ls_exits_1_and_prints_nothing_when_nothing_matches(shared, b):
    put(shared, b, "dir/k")
    for args in ([f"s4://{b}-none"], [f"s4://{b}/nothing/"], [f"s4://{b}/dir/zz"],
                 ["-r", f"s4://{b}/nothing"], ["-r", f"s4://{b}-none"]):
        proc = shared.s4ctl("ls", *args, check=False)
        assert (proc.returncode, proc.stdout) == (1, ""), args
        assert "Traceback" not in proc.stderr


def test_ls_of_an_empty_cluster_exits_1(make_cluster):
    c = make_cluster()
    proc = c.s4ctl("ls", check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert c.s4ctl("ls", "-r", "s4://b", check=False).returncode == 1


# --- rm ---------------------------------------------------------------------------------

def test_rm_deletes_one_key_and_nothing_else(shared, b):
    put(shared, b, "dir/k", "dir/k2", "dir/k_k3")
    shared.s4ctl("rm", f"s4://{b}/dir/k")
    assert names(ls(shared, "-r", f"s4://{b}")) == ["dir/k2", "dir/k_k3"]
    assert shared.s4ctl("cp", f"s4://{b}/dir/k", "-", check=False).returncode == 1


def test_rm_of_a_missing_key_or_of_a_directory_without_r_fails_and_deletes_nothing(shared, b):
    put(shared, b, "dir/k")
    assert_one_line_error(shared.s4ctl("rm", f"s4://{b}/nope", check=False), f"s4://{b}/nope")
    assert_one_line_error(shared.s4ctl("rm", f"s4://{b}/dir", check=False))
    assert_one_line_error(shared.s4ctl("rm", f"s4://{b}/dir/", check=False))
    assert names(ls(shared, "-r", f"s4://{b}")) == ["dir/k"]


def test_rm_r_deletes_every_key_starting_with_the_prefix(shared, b):
    put(shared, b, *[f"step1/{i}_x" for i in range(4)], "step2/a/b", "step", "stop/x", "other/step1")
    put(shared, b + "-keep", "step1/k")
    shared.s4ctl("rm", "-r", f"s4://{b}/step")
    assert names(ls(shared, "-r", f"s4://{b}")) == ["other/step1", "stop/x"]
    # emptied directories are gone too
    assert names(ls(shared, f"s4://{b}")) == ["PRE other/", "PRE stop/"]
    assert names(ls(shared, "-r", f"s4://{b}-keep")) == ["step1/k"]


def test_rm_r_of_a_directory_or_a_partial_name_stays_inside_it(shared, b):
    put(shared, b, "dir/key1", "dir/key2", "dir/other", "dir/kx/y", "dirx/key1")
    shared.s4ctl("rm", "-r", f"s4://{b}/dir/key")
    assert names(ls(shared, "-r", f"s4://{b}")) == ["dir/kx/y", "dir/other", "dirx/key1"]
    shared.s4ctl("rm", f"s4://{b}/dir/", "--recursive")
    assert names(ls(shared, "-r", f"s4://{b}")) == ["dirx/key1"]


def test_rm_r_of_a_whole_bucket_empties_it(shared, b):
    put(shared, b, "a", "b/c", "d/e/f")
    shared.s4ctl("rm", "-r", f"s4://{b}")
    assert shared.s4ctl("ls", f"s4://{b}", check=False).returncode == 1
    assert b not in shared.s4ctl("ls", check=False).stdout


def test_rm_r_that_matches_nothing_succeeds_quietly(shared, b):
    proc = shared.s4ctl("rm", "-r", f"s4://{b}/nothing")
    assert proc.stdout == proc.stderr == ""


def test_rm_r_of_everything_is_refused(shared, b):
    put(shared, b, "k")
    assert_one_line_error(shared.s4ctl("rm", "-r", "s4://", check=False))
    assert names(ls(shared, "-r", f"s4://{b}")) == ["k"]


# --- eval ---------------------------------------------------------------------------------

def test_eval_feeds_the_key_on_stdin_and_prints_stdout(shared, b):
    data = bytes(range(256)) * 1000 + os.urandom(12345)
    shared.s4ctl("cp", "-", f"s4://{b}/dir/blob.bin", input=data)
    proc = shared.s4ctl("eval", f"s4://{b}/dir/blob.bin", "cat", input=b"")
    assert proc.stdout == data
    out = shared.s4ctl("eval", f"s4://{b}/dir/blob.bin", 'wc -c; echo "name=$filename"').stdout
    assert out.split() == [str(len(data)), "name=blob.bin"]


def test_eval_runs_the_command_on_the_node_that_holds_the_key(shared, b):
    put(shared, b, *[f"{i}_k" for i in range(3)])
    for i in range(3):
        key = f"s4://{b}/{i}_k"
        cwd = shared.s4ctl("eval", key, "pwd -P").stdout.strip()
        owner = os.path.realpath(shared.data_dirs[shared.node_of(key)])
        assert cwd.startswith(owner + "/"), (cwd, owner)


def test_eval_of_a_failing_command_exits_1_with_its_stderr_and_code(shared, b):
    put(shared, b, "k")
    proc = shared.s4ctl("eval", f"s4://{b}/k", "cat >/dev/null; echo partial; echo 'it broke' >&2; exit 3",
                        check=False)
    assert_one_line_error(proc, "it broke", "exit 3", f"s4://{b}/k")
    proc = shared.s4ctl("eval", f"s4://{b}/k", "false; echo not reached", check=False)
    assert_one_line_error(proc)
    assert "not reached" not in proc.stdout


def test_eval_of_a_missing_key_fails_without_running_anything(shared, b):
    marker = shared.root / f"{b}-ran"
    proc = shared.s4ctl("eval", f"s4://{b}/absent", f"touch {marker}", check=False)
    assert_one_line_error(proc, f"s4://{b}/absent")
    assert not marker.exists()


def test_eval_with_a_timeout_kills_the_command(shared, b):
    put(shared, b, "k")
    started = time.monotonic()
    proc = shared.s4ctl("eval", "--timeout", "1", f"s4://{b}/k", "sleep 60", check=False)
    assert_one_line_error(proc, "timed out")
    assert time.monotonic() - started < 30


# --- health, config -------------------------------------------------------------------------

def test_health_prints_one_line_per_node_in_conf_order_and_exits_0(shared):
    proc = shared.s4ctl("health")
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert shared.address(i) in line
        assert line.startswith("healthy")
    assert proc.stderr == ""


def test_health_with_a_node_down_exits_1_naming_it_and_still_reports_the_others(make_cluster):
    c = make_cluster()
    c.kill(1)
    proc = c.s4ctl("health", check=False, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    assert c.address(1) in lines[1] and "down" in lines[1] and not lines[1].startswith("healthy")
    for i in (0, 2):
        assert c.address(i) in lines[i] and lines[i].startswith("healthy")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert c.address(1) in proc.stderr
    assert c.address(0) not in proc.stderr and c.address(2) not in proc.stderr


def test_config_prints_the_nodes_in_conf_order(shared):
    out = shared.s4ctl("config").stdout
    assert out.splitlines() == [shared.address(i) for i in range(3)]
    assert shared.s4ctl("config", "-c", str(shared.conf), env={"S4_CONF_PATH": "/nonexistent"}).stdout == out


# --- help and version (no cluster) --------------------------------------------------------------

def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([S4CTL, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    for flag in ("--help", "-h"):
        proc = run(command, flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"Usage: s4ctl {command} ")
        assert "--conf" in proc.stdout


def test_top_level_help_lists_every_subcommand_and_version_prints_the_version():
    proc = run("--help")
    assert proc.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^  {re.escape(command)} ", proc.stdout, re.M), command
    proc = run("--version")
    assert (proc.returncode, proc.stdout) == (0, f"s4ctl {__version__}\n")


def test_bad_usage_exits_non_zero_without_a_traceback():
    for args in ((), ("frob",), ("cp",), ("cp", "only-one"), ("ls", "--bogus"), ("rm",),
                 ("eval", "s4://b/k")):
        proc = run(*args)
        assert proc.returncode != 0, args
        assert "Traceback" not in proc.stderr + proc.stdout
    proc = run("frob")
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "frob" in proc.stderr

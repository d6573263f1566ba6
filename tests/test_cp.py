"""`s4ctl cp` in every form the README documents, black box, against a real 3-node cluster.

One cluster serves the whole module; every test works in its own bucket and
its own local directory, so tests cannot see each other's keys.
"""
import os
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from tests.cluster import S4CTL, Cluster, assert_one_line_error, recv_frame

MiB = 1024 * 1024


def tree(root) -> dict[str, bytes]:
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def keys_of(c: Cluster, bucket: str) -> list[str]:
    """Names of every key of a bucket, relative to it, via `ls -r`."""
    out = c.s4ctl("ls", "-r", f"s4://{bucket}", check=False).stdout
    return [line.split(None, 3)[3] for line in out.splitlines()]


def put_bytes(c: Cluster, url: str, data: bytes) -> None:
    c.s4ctl("cp", "-", url, input=data)


def get_bytes(c: Cluster, url: str) -> bytes:
    return c.s4ctl("cp", url, "-", input=b"").stdout


# --- data, byte for byte ------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 10, 64 * MiB], ids=["0B", "10B", "64MiB"])
def test_binary_data_round_trips_byte_for_byte_by_file_and_by_pipe(shared, b, tmp_path, size):
    # every byte value, then random bytes: nothing may be treated as text
    data = (bytes(range(256)) + os.urandom(size))[:size]
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    shared.s4ctl("cp", str(src), f"s4://{b}/by-file/data.bin")
    put_bytes(shared, f"s4://{b}/by-pipe/data.bin", data)

    for how in ("by-file", "by-pipe"):
        url = f"s4://{b}/{how}/data.bin"
        out = tmp_path / f"{how}.out"
        shared.s4ctl("cp", url, str(out))
        assert out.read_bytes() == data
        assert get_bytes(shared, url) == data
    listing = shared.s4ctl("ls", "-r", f"s4://{b}").stdout.splitlines()
    assert [line.split()[2:] for line in listing] == [
        [str(size), "by-file/data.bin"], [str(size), "by-pipe/data.bin"]]


def test_a_stream_of_unknown_length_is_stored_from_a_shell_pipe(shared, b):
    shared.sh(f"seq 1 200000 | s4ctl cp - s4://{b}/seq")
    out = shared.sh(f"s4ctl cp s4://{b}/seq - | tail -n 1").stdout
    assert out == "200000\n"
    assert get_bytes(shared, f"s4://{b}/seq") == "".join(f"{i}\n" for i in range(1, 200001)).encode()


# --- single files: destinations --------------------------------------------------------

def test_cp_to_dot_writes_the_key_basename_in_the_current_directory(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/dir/sub/name.txt", b"hello\n")
    shared.s4ctl("cp", f"s4://{b}/dir/sub/name.txt", ".", cwd=tmp_path)
    assert tree(tmp_path) == {"name.txt": b"hello\n"}


def test_cp_to_a_missing_dir_with_a_trailing_slash_creates_it(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/k", b"data")
    shared.s4ctl("cp", f"s4://{b}/k", "new/deeper/", cwd=tmp_path)
    assert tree(tmp_path) == {"new/deeper/k": b"data"}


def test_cp_to_an_existing_dir_without_a_slash_writes_inside_it(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/k", b"data")
    (tmp_path / "there").mkdir()
    shared.s4ctl("cp", f"s4://{b}/k", "there", cwd=tmp_path)
    assert tree(tmp_path) == {"there/k": b"data"}


def test_cp_to_a_file_path_writes_that_file_and_replaces_an_old_one(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/k", b"new")
    (tmp_path / "renamed.txt").write_bytes(b"old contents, longer than new")
    shared.s4ctl("cp", f"s4://{b}/k", "renamed.txt", cwd=tmp_path)
    shared.s4ctl("cp", f"s4://{b}/k", "other/name", cwd=tmp_path)
    assert tree(tmp_path) == {"renamed.txt": b"new", "other/name": b"new"}


def test_cp_of_a_file_to_a_key_stores_it_under_that_key(shared, b, tmp_path):
    (tmp_path / "f.txt").write_bytes(b"x")
    shared.s4ctl("cp", "f.txt", f"s4://{b}/dir/renamed", cwd=tmp_path)
    assert keys_of(shared, b) == ["dir/renamed"]


def test_cp_of_a_file_to_a_dir_url_stores_it_under_its_basename(shared, b, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.txt").write_bytes(b"x")
    shared.s4ctl("cp", "sub/f.txt", f"s4://{b}/dir/", cwd=tmp_path)
    shared.s4ctl("cp", "sub/f.txt", f"s4://{b}/", cwd=tmp_path)
    shared.s4ctl("cp", str(tmp_path / "sub" / "f.txt"), f"s4://{b}/abs/")
    assert keys_of(shared, b) == ["abs/f.txt", "dir/f.txt", "f.txt"]
    assert get_bytes(shared, f"s4://{b}/dir/f.txt") == b"x"


def test_cp_of_a_file_to_a_bare_bucket_stores_it_at_the_bucket_root(shared, b, tmp_path):
    (tmp_path / "f.txt").write_bytes(b"x")
    shared.s4ctl("cp", "f.txt", f"s4://{b}", cwd=tmp_path)
    assert keys_of(shared, b) == ["f.txt"]


# --- recursive ----------------------------------------------------------------------

def write_tree(root, files: dict[str, bytes]) -> None:
    for name, blob in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)


def make_tree(c: Cluster, b: str, tmp_path) -> dict[str, bytes]:
    """Keys under x/ (several levels, spread over the nodes), plus decoys beside it."""
    data = {f"x/{i:03d}_part": os.urandom(100 + i) for i in range(9)}
    data.update({"x/deep/er/leaf": b"leaf", "x/z.txt": b"z", "xy/decoy": b"decoy", "top": b"top"})
    src = tmp_path.parent / (tmp_path.name + "-src")
    write_tree(src, data)
    c.s4ctl("cp", "-r", str(src), f"s4://{b}")
    return data


def test_cp_r_of_a_prefix_into_dot_creates_its_last_component(shared, b, tmp_path):
    data = make_tree(shared, b, tmp_path)
    shared.s4ctl("cp", "-r", f"s4://{b}/x", ".", cwd=tmp_path)
    assert tree(tmp_path) == {k: v for k, v in data.items() if k.startswith("x/")}


def test_cp_r_of_a_nested_prefix_into_dot_keeps_only_the_last_component(shared, b, tmp_path):
    make_tree(shared, b, tmp_path)
    shared.s4ctl("cp", "-r", f"s4://{b}/x/deep", ".", cwd=tmp_path)
    assert tree(tmp_path) == {"deep/er/leaf": b"leaf"}


def test_cp_r_of_a_prefix_into_a_named_dir_puts_the_contents_there(shared, b, tmp_path):
    data = make_tree(shared, b, tmp_path)
    shared.s4ctl("cp", "-r", f"s4://{b}/x", "out", cwd=tmp_path)
    assert tree(tmp_path / "out") == {k[2:]: v for k, v in data.items() if k.startswith("x/")}
    shared.s4ctl("cp", "-r", f"s4://{b}/x/", "out2/", cwd=tmp_path)
    assert tree(tmp_path / "out2") == tree(tmp_path / "out")


def test_cp_r_of_a_bucket_into_dot_writes_the_bucket_contents_there(shared, b, tmp_path):
    data = make_tree(shared, b, tmp_path)
    put_bytes(shared, f"s4://{b}x/other-bucket", b"must not come along")
    shared.s4ctl("cp", "-r", f"s4://{b}", ".", cwd=tmp_path)
    assert tree(tmp_path) == data


def test_cp_r_of_dot_uploads_the_directory_at_the_bucket_root(shared, b, tmp_path):
    src = {"top.bin": os.urandom(1000), "empty": b"", "a/b/c.txt": b"c", "a/d": b"d",
           "1/2/3": os.urandom(10)}
    write_tree(tmp_path, src)
    shared.s4ctl("cp", "-r", ".", f"s4://{b}", cwd=tmp_path)
    assert keys_of(shared, b) == sorted(src)
    out = tmp_path.parent / (tmp_path.name + "-back")
    out.mkdir()
    shared.s4ctl("cp", "-r", f"s4://{b}", ".", cwd=out)
    assert tree(out) == src


def test_cp_r_of_a_dir_uploads_its_contents_under_the_prefix(shared, b, tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "f").write_bytes(b"f")
    (tmp_path / "src" / "sub" / "g").write_bytes(b"g")
    shared.s4ctl("cp", "-r", "src", f"s4://{b}/p/q", cwd=tmp_path)
    shared.s4ctl("cp", "--recursive", "src/", f"s4://{b}/r/", cwd=tmp_path)
    assert keys_of(shared, b) == ["p/q/f", "p/q/sub/g", "r/f", "r/sub/g"]


def test_keys_whose_names_contain_the_bucket_name_copy_both_ways(shared, b, tmp_path):
    src = tmp_path / "src"
    names = [f"{b}/{b}", f"{b}/x", f"x{b}/{b}", f"{b}{b}"]
    write_tree(src, {name: name.encode() for name in names})
    shared.s4ctl("cp", "-r", ".", f"s4://{b}", cwd=src)
    assert keys_of(shared, b) == sorted(names)

    (tmp_path / "all").mkdir()
    shared.s4ctl("cp", "-r", f"s4://{b}", ".", cwd=tmp_path / "all")
    assert tree(tmp_path / "all") == tree(src)
    (tmp_path / "dot").mkdir()
    shared.s4ctl("cp", "-r", f"s4://{b}/{b}", ".", cwd=tmp_path / "dot")
    assert tree(tmp_path / "dot") == {f"{b}/{b}": f"{b}/{b}".encode(), f"{b}/x": f"{b}/x".encode()}
    shared.s4ctl("cp", "-r", f"s4://{b}/{b}", "named", cwd=tmp_path)
    assert tree(tmp_path / "named") == {b: f"{b}/{b}".encode(), "x": f"{b}/x".encode()}
    shared.s4ctl("cp", f"s4://{b}/{b}/{b}", ".", cwd=tmp_path / "dot" / b)
    assert (tmp_path / "dot" / b / b).read_bytes() == f"{b}/{b}".encode()


def test_options_may_come_after_the_arguments(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/dir/k", b"k")
    shared.s4ctl("cp", f"s4://{b}/dir/", ".", "--recursive", cwd=tmp_path)
    assert tree(tmp_path) == {"dir/k": b"k"}
    shared.s4ctl("cp", ".", f"s4://{b}/up", "-r", "-c", str(shared.conf), cwd=tmp_path)
    assert keys_of(shared, b) == ["dir/k", "up/dir/k"]
    assert shared.s4ctl("ls", f"s4://{b}", "-r").stdout.splitlines()[1].endswith(" up/dir/k")
    shared.s4ctl("rm", f"s4://{b}/up", "--recursive")
    assert keys_of(shared, b) == ["dir/k"]


# --- refusals -------------------------------------------------------------------------

def test_copying_s4_to_s4_is_refused_because_there_is_no_move(shared, b):
    put_bytes(shared, f"s4://{b}/k", b"k")
    for args in (("cp", f"s4://{b}/k", f"s4://{b}/k2"), ("cp", "-r", f"s4://{b}/", f"s4://{b}2/")):
        assert_one_line_error(shared.s4ctl(*args, check=False), "no move")
    assert keys_of(shared, b) == ["k"]


def test_copying_local_to_local_is_refused(shared, tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    assert_one_line_error(shared.s4ctl("cp", "a", "b", check=False, cwd=tmp_path), "s4://")
    assert not (tmp_path / "b").exists()


def test_a_directory_without_r_is_refused_both_ways(shared, b, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"f")
    put_bytes(shared, f"s4://{b}/dir/k", b"k")
    assert_one_line_error(shared.s4ctl("cp", "d", f"s4://{b}/x/", check=False, cwd=tmp_path), "-r")
    assert_one_line_error(shared.s4ctl("cp", f"s4://{b}/dir/", ".", check=False, cwd=tmp_path), "-r")
    assert keys_of(shared, b) == ["dir/k"]


def test_cp_of_a_missing_key_fails_and_writes_nothing(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/present", b"p")
    proc = shared.s4ctl("cp", f"s4://{b}/absent", ".", check=False, cwd=tmp_path)
    assert_one_line_error(proc, f"s4://{b}/absent")
    assert os.listdir(tmp_path) == []
    assert_one_line_error(shared.s4ctl("cp", f"s4://{b}/absent", "-", check=False))


def test_cp_r_of_a_prefix_with_no_keys_fails_and_writes_nothing(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/xy", b"a key that merely starts with x")
    proc = shared.s4ctl("cp", "-r", f"s4://{b}/x", ".", check=False, cwd=tmp_path)
    assert_one_line_error(proc, f"s4://{b}/x")
    assert os.listdir(tmp_path) == []


def test_cp_of_a_missing_local_file_fails_and_stores_nothing(shared, b, tmp_path):
    assert_one_line_error(shared.s4ctl("cp", "nope", f"s4://{b}/k", check=False, cwd=tmp_path), "nope")
    assert shared.s4ctl("ls", f"s4://{b}", check=False).returncode == 1


CP_FORMS = [
    ["a", "s4://b/k"], ["-r", "d", "s4://b/p"], ["d", "s4://b/p", "-r"], ["--recursive", "s4://b/p", "."],
    ["-", "s4://b/k"], ["s4://b/k", "-"], ["-c", "x.conf", "a", "s4://b/k"], ["a", "--conf", "x.conf", "s4://b/k"],
    ["a", "s4://b/k", "-c", "x.conf", "-r"], ["--", "a", "b"], ["-r", "--", "-1", "s4://b/p"],
    ["--", "-", "-1"], ["-c", "x.conf", "--", "--", "-r"],
    # not taken by hand: docopt answers
    ["a"], ["a", "b", "c"], ["-r", "-r", "a", "b"], ["--help", "a", "b"], ["-h"], ["--conf=x", "a", "b"],
    ["-rc", "x", "a", "b"], ["-x", "a", "b"], ["a", "b", "-c"], ["-c", "-r", "a", "b"],
    ["a", "--", "b"], ["--", "a", "b", "-r"], ["--", "--", "a", "b"],
    ["--endpoint-url", "-x", "a", "b"], ["--endpoint-url=http://h", "s3://a/b", "s4://b/k"],
]
CP_FORMS[CP_FORMS.index(["a"]):CP_FORMS.index(["a"])] = [
    ["--endpoint-url", "http://h:9", "s3://a/b", "s4://b/k"], ["s4://b/k", "s3://a/b", "--endpoint-url", "u"]]
MAP_FORMS = [
    ["s4://b/in", "s4://b/out", "wc -l"], ["--timeout", "5", "s4://b/in", "s4://b/out", "cat"],
    ["s4://b/in", "-c", "x.conf", "s4://b/out", "cat", "--timeout", "2.5"], ["--", "s4://b/in", "o", "-x"],
    ["-c", "x.conf", "--", "s4://b/in", "s4://b/out", "--timeout"], ["a", "b", ""],
    # not taken by hand: docopt answers
    ["a", "b"], ["a", "b", "c", "d"], ["--timeout=5", "a", "b", "c"], ["-r", "a", "b", "c"],
    ["a", "b", "-x"], ["--timeout", "1", "--timeout", "2", "a", "b", "c"], ["a", "b", "c", "--timeout"],
    ["--help", "a", "b", "c"], ["a", "--", "b", "c"],
]


def _parsed_by_hand_as_by_docopt(command: str, words: list[str], forms: list[list[str]], first_refused):
    from docopt import DocoptExit, docopt

    from s4ctl.cli import DOCS, quick_args
    quick = quick_args(command, words)
    try:  # no help: --help is an option
        full = docopt(DOCS[command], argv=[command, *words], default_help=False)
    except DocoptExit:
        full = None
    if quick is not None:  # a form it takes must mean the same; the rest falls to docopt
        assert quick == full
    assert (quick is None) == (words in forms[forms.index(first_refused):])


@pytest.mark.parametrize("words", CP_FORMS, ids=" ".join)
def test_cp_arguments_parsed_by_hand_mean_what_docopt_says(words):
    _parsed_by_hand_as_by_docopt("cp", words, CP_FORMS, ["a"])


@pytest.mark.parametrize("command", ["map", "map-to-n", "map-from-n"])
@pytest.mark.parametrize("words", MAP_FORMS, ids=" ".join)
def test_map_arguments_parsed_by_hand_mean_what_docopt_says(command, words):
    _parsed_by_hand_as_by_docopt(command, words, MAP_FORMS, ["a", "b"])


# --- special files, as cp treats them ---------------------------------------------------

def test_a_download_into_a_fifo_writes_it_in_place_for_its_reader(shared, b, tmp_path):
    data = os.urandom(3 * MiB)  # more than a pipe holds: the reader must be reading the FIFO itself
    put_bytes(shared, f"s4://{b}/k", data)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with open(tmp_path / "read", "wb") as out:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=out)
        try:
            shared.s4ctl("cp", f"s4://{b}/k", str(fifo), timeout=60)
            assert reader.wait(timeout=30) == 0
        finally:
            reader.kill()
    assert (tmp_path / "read").read_bytes() == data
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo", "read"]  # no temp file beside it


def test_a_download_into_a_device_node_writes_it_in_place_and_never_replaces_it(shared, b, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a device node (mknod)")
    put_bytes(shared, f"s4://{b}/k", b"into the void")
    null = tmp_path / "null"  # the device /dev/null is, made here: no test touches the real /dev
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    shared.s4ctl("cp", f"s4://{b}/k", str(null))
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert os.listdir(tmp_path) == ["null"]


def test_a_download_onto_a_socket_fails_in_one_line_and_leaves_the_socket(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/k", b"k")
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        assert_one_line_error(shared.s4ctl("cp", f"s4://{b}/k", str(path), check=False), str(path))
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert os.listdir(tmp_path) == ["sock"]


def test_a_download_through_a_symlink_writes_its_target_and_keeps_the_link(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/k", b"new")
    (tmp_path / "target.txt").write_bytes(b"old and longer")
    os.symlink("target.txt", tmp_path / "link")
    os.symlink("made-by-cp.txt", tmp_path / "dangling")
    shared.s4ctl("cp", f"s4://{b}/k", "link", cwd=tmp_path)
    shared.s4ctl("cp", f"s4://{b}/k", "dangling", cwd=tmp_path)
    assert os.readlink(tmp_path / "link") == "target.txt"
    assert os.readlink(tmp_path / "dangling") == "made-by-cp.txt"
    assert tree(tmp_path) == {"target.txt": b"new", "link": b"new", "made-by-cp.txt": b"new",
                              "dangling": b"new"}


def test_a_download_to_an_open_file_descriptor_writes_through_it_as_a_redirection_does(shared, b, tmp_path):
    put_bytes(shared, f"s4://{b}/k", b"key bytes\n")
    os.symlink("/proc/self/fd/1", tmp_path / "stdout")  # what /dev/stdout is, made here
    assert shared.s4ctl("cp", f"s4://{b}/k", str(tmp_path / "stdout")).stdout == "key bytes\n"
    assert shared.s4ctl("cp", f"s4://{b}/k", "/proc/self/fd/1").stdout == "key bytes\n"
    # through the shell's own fd: its offset and append mode, not a fresh open or a rename
    shared.sh(f"{{ echo head; s4ctl cp s4://{b}/k {tmp_path}/stdout; }} > {tmp_path}/out; "
              f"s4ctl cp s4://{b}/k /proc/self/fd/1 >> {tmp_path}/out")
    assert (tmp_path / "out").read_bytes() == b"head\nkey bytes\nkey bytes\n"
    assert os.readlink(tmp_path / "stdout") == "/proc/self/fd/1"


def test_dev_stdout_and_dev_fd_name_the_open_file_descriptors():
    from s4ctl.files import fd_alias
    assert [fd_alias(p) for p in ("/dev/stdout", "/dev/stdin", "/dev/fd/7", "/proc/self/fd/1")] == [1, 0, 7, 1]
    assert fd_alias("/tmp") is None and fd_alias("no/such/file") is None


def test_a_source_that_is_not_a_regular_file_is_read_as_a_stream(shared, b, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    shared.sh(f"echo abc | s4ctl cp /dev/stdin s4://{b}/stdin; s4ctl cp <(seq 10) s4://{b}/procsub; "
              f"seq 100000 > {tmp_path}/fifo & s4ctl cp {tmp_path}/fifo s4://{b}/fifo; wait; "
              f"s4ctl cp /proc/version s4://{b}/version; s4ctl cp /proc/cpuinfo s4://{b}/cpuinfo")
    assert get_bytes(shared, f"s4://{b}/stdin") == b"abc\n"
    assert get_bytes(shared, f"s4://{b}/procsub") == "".join(f"{i}\n" for i in range(1, 11)).encode()
    assert get_bytes(shared, f"s4://{b}/fifo") == "".join(f"{i}\n" for i in range(1, 100001)).encode()
    with open("/proc/version", "rb") as f:  # st_size 0, yet it holds a line
        assert get_bytes(shared, f"s4://{b}/version") == f.read() != b""
    assert get_bytes(shared, f"s4://{b}/cpuinfo").startswith(b"processor")


def test_an_empty_regular_file_is_still_stored_as_an_empty_key(shared, b, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    shared.s4ctl("cp", str(tmp_path / "empty"), f"s4://{b}/empty")
    assert get_bytes(shared, f"s4://{b}/empty") == b""


# --- cp -r checks the whole tree before it writes anything -----------------------------

def refused_whole(c: Cluster, b: str, src, *needles: str) -> None:
    proc = c.s4ctl("cp", "-r", str(src), f"s4://{b}/up", check=False, timeout=60)
    assert_one_line_error(proc, "nothing copied", *needles)
    assert not [k for k in keys_of(c, b) if k.startswith("up/")]


def test_cp_r_of_a_tree_with_a_fifo_socket_or_device_refuses_it_whole_without_hanging(shared, b, tmp_path):
    write_tree(tmp_path / "src", {"a": b"a", "z/z": b"z"})
    os.mkfifo(tmp_path / "src" / "m-fifo")
    refused_whole(shared, b, tmp_path / "src", "m-fifo", "FIFO")
    os.unlink(tmp_path / "src" / "m-fifo")
    if os.geteuid() == 0:  # mknod needs root
        os.mknod(tmp_path / "src" / "m-dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        refused_whole(shared, b, tmp_path / "src", "m-dev", "device")
        os.unlink(tmp_path / "src" / "m-dev")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "src" / "m-sock"))
        refused_whole(shared, b, tmp_path / "src", "m-sock", "socket")


def test_cp_r_of_a_tree_with_a_name_that_is_not_a_key_refuses_it_whole(shared, b, tmp_path):
    write_tree(tmp_path / "src", {"a": b"a", "with space": b"s", "z/z": b"z"})
    refused_whole(shared, b, tmp_path / "src", "with space", "spaces")


def test_cp_r_of_a_tree_with_a_dangling_symlink_or_a_symlink_loop_refuses_it_whole(shared, b, tmp_path):
    write_tree(tmp_path / "src", {"a": b"a", "z/z": b"z"})
    os.symlink("nowhere", tmp_path / "src" / "m")
    refused_whole(shared, b, tmp_path / "src", "m", "dangling")
    os.unlink(tmp_path / "src" / "m")
    os.symlink("..", tmp_path / "src" / "z" / "up")
    refused_whole(shared, b, tmp_path / "src", "loop")


def test_cp_r_follows_symlinks_to_files_and_directories(shared, b, tmp_path):
    write_tree(tmp_path / "elsewhere", {"f": b"f", "d/g": b"g"})
    (tmp_path / "src").mkdir()
    os.symlink(tmp_path / "elsewhere" / "d", tmp_path / "src" / "linked-dir")
    os.symlink(tmp_path / "elsewhere" / "f", tmp_path / "src" / "linked-file")
    shared.s4ctl("cp", "-r", str(tmp_path / "src"), f"s4://{b}/up")
    assert keys_of(shared, b) == ["up/linked-dir/g", "up/linked-file"]


def test_cp_r_onto_keys_that_exist_or_clash_in_s4_refuses_the_tree_whole(shared, b, tmp_path):
    write_tree(tmp_path / "src", {"a": b"a", "new": b"n", "sub/x": b"x"})
    put_bytes(shared, f"s4://{b}/up/a", b"already")
    proc = shared.s4ctl("cp", "-r", str(tmp_path / "src"), f"s4://{b}/up", check=False)
    assert_one_line_error(proc, "nothing copied", f"s4://{b}/up/a exists")
    assert keys_of(shared, b) == ["up/a"]
    shared.s4ctl("rm", f"s4://{b}/up/a")
    put_bytes(shared, f"s4://{b}/up/sub", b"a key where the tree has a directory")
    proc = shared.s4ctl("cp", "-r", str(tmp_path / "src"), f"s4://{b}/up", check=False)
    assert_one_line_error(proc, "nothing copied", f"s4://{b}/up/sub is a key")
    assert keys_of(shared, b) == ["up/sub"]


def test_cp_r_download_onto_local_paths_it_cannot_write_refuses_before_writing(shared, b, tmp_path):
    write_tree(tmp_path / "src", {"a": b"a", "d/x": b"x", "f/y": b"y"})
    shared.s4ctl("cp", "-r", str(tmp_path / "src"), f"s4://{b}/t")
    out = tmp_path / "out"
    write_tree(out, {"d": b"a local file where the keys need a directory"})
    proc = shared.s4ctl("cp", "-r", f"s4://{b}/t", str(out), check=False)
    assert_one_line_error(proc, "nothing copied", "not a directory")
    assert tree(out) == {"d": b"a local file where the keys need a directory"}
    os.unlink(out / "d")
    (out / "a").mkdir()
    os.mkfifo(out / "f")  # not a FIFO nobody reads: that would hang the copy
    os.mkfifo(tmp_path / "fifo")
    os.rename(tmp_path / "fifo", out / "a" / "fifo")
    proc = shared.s4ctl("cp", "-r", f"s4://{b}/t", str(out), check=False, timeout=60)
    assert_one_line_error(proc, "nothing copied", "directory", "(and 1 more)")
    assert sorted(os.listdir(out)) == ["a", "f"]


# --- long names, -- -----------------------------------------------------------------------

def test_a_key_with_a_255_byte_non_ascii_name_downloads_to_a_file_and_by_cp_r(shared, b, tmp_path):
    name = "é" * 127 + "x"
    assert len(name.encode()) == 255
    put_bytes(shared, f"s4://{b}/long/{name}", b"long")
    shared.s4ctl("cp", f"s4://{b}/long/{name}", ".", cwd=tmp_path)
    shared.s4ctl("cp", "-r", f"s4://{b}/long", "tree", cwd=tmp_path)
    assert tree(tmp_path) == {name: b"long", f"tree/{name}": b"long"}


def test_double_dash_ends_the_options_so_a_file_may_be_named_like_one(shared, b, tmp_path):
    (tmp_path / "-1").write_bytes(b"minus one")
    write_tree(tmp_path / "-d", {"f": b"f"})
    shared.s4ctl("cp", "--", "-1", f"s4://{b}/k", cwd=tmp_path)
    shared.s4ctl("cp", "-r", "--", "-d", f"s4://{b}/tree", cwd=tmp_path)
    shared.s4ctl("cp", "--", f"s4://{b}/k", "-2", cwd=tmp_path)
    assert keys_of(shared, b) == ["k", "tree/f"]
    assert (tmp_path / "-2").read_bytes() == b"minus one"


# --- signals ----------------------------------------------------------------------------

class StallingNode:
    """A fake one-node cluster on loopback: it lists the keys it is given and
    answers a get with its header and a few bytes, then nothing, so a download
    sits mid-transfer with its temp file made (a real daemon is too fast)."""

    def __init__(self, root, names: list[str]):
        self.names = names
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.conf = root / "stalling.conf"
        self.conf.write_text(f"127.0.0.1:{self.listener.getsockname()[1]}\n")
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        from s4d import protocol
        try:
            while (msg := recv_frame(conn)) is not None:
                if msg["op"] == "ls":
                    conn.sendall(protocol.encode({"entries": [[n, 4 * MiB, 0] for n in self.names]})
                                 + protocol.encode({"ok": True}))
                elif msg["op"] == "get":
                    conn.sendall(protocol.encode({"ok": True, "size": 4 * MiB, "xxh3": "0" * 16}) + b"x" * 1000)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


def temps_under(root) -> list[str]:
    return [name for _, _, files in os.walk(root) for name in files if ".s4tmp." in name]


@pytest.mark.parametrize("sig, recursive", [(signal.SIGTERM, False), (signal.SIGTERM, True),
                                            (signal.SIGINT, True)], ids=["SIGTERM", "SIGTERM-r", "SIGINT-r"])
def test_a_signal_during_a_download_removes_its_temp_files(tmp_path, sig, recursive):
    names = ["b/x/1", "b/x/2", "b/x/3"] if recursive else ["b/x/1"]
    node = StallingNode(tmp_path, names)
    out = tmp_path / "out"
    out.mkdir()
    args = ["-r", "s4://b/x", str(out)] if recursive else ["s4://b/x/1", str(out / "1")]
    proc = subprocess.Popen([S4CTL, "cp", *args, "-c", str(node.conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(temps_under(out)) < len(names):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
        node.close()
    assert code == (130 if sig == signal.SIGINT else -sig)
    assert temps_under(out) == [] and os.listdir(out) == []

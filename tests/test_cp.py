"""`s4ctl cp` in every form the README documents, black box, against a real 3-node cluster.

One cluster serves the whole module; every test works in its own bucket and
its own local directory, so tests cannot see each other's keys.
"""
import os

import pytest

from tests.cluster import Cluster, assert_one_line_error

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
    return [line.split(" ", 3)[3] for line in out.splitlines()]


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
    assert [line.split(" ")[2:] for line in listing] == [
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
    ["a", "s4://b/k", "-c", "x.conf", "-r"],
    # not taken by hand: docopt answers
    ["a"], ["a", "b", "c"], ["-r", "-r", "a", "b"], ["--help", "a", "b"], ["-h"], ["--conf=x", "a", "b"],
    ["-rc", "x", "a", "b"], ["-x", "a", "b"], ["a", "b", "-c"], ["--", "a", "b"], ["-c", "-r", "a", "b"],
]


@pytest.mark.parametrize("words", CP_FORMS, ids=" ".join)
def test_cp_arguments_parsed_by_hand_mean_what_docopt_says(words):
    from docopt import DocoptExit, docopt

    from s4ctl.cli import DOCS, quick_cp
    quick = quick_cp(words)
    try:
        full = docopt(DOCS["cp"], argv=["cp", *words], default_help=False)  # no help: --help is an option
    except DocoptExit:
        full = None
    if quick is not None:  # a form it takes must mean the same; the rest falls to docopt
        assert quick == full
    assert (quick is None) == (words in CP_FORMS[CP_FORMS.index(["a"]):])

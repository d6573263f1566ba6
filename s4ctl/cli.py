"""s4ctl: the s4 command-line client. Printing happens here and only here.

One `cmd_<name>` per subcommand, each with its own docopt usage text (shown
by `s4ctl <command> --help`). Imports are kept to what a small `cp` needs:
no trio, no psutil.

The local side of a copy (special files, trees, temp files) is
s4ctl/files.py; stderr, stdio and the progress line are s4ctl/term.py.
"""
import _signal
import os
import sys

from s4ctl import files, term
from s4ctl.term import Terminated, UsageError

USAGE = """\
s4ctl: copy data in and out of an s4 cluster, and run commands where it lives.

Usage:
  s4ctl [-c PATH] <command> [<args>...]
  s4ctl --version

Commands:
  cp          copy data to or from s4
  ls          list keys
  rm          delete keys
  eval        run a bash command over one key, print its output
  map         1:1  run a command over every key of a directory
  map-to-n    1:n  shuffle: the command writes files, each goes where its name places it
  map-from-n  n:1  merge: run a command over each group of same-named keys
  health      check every node
  config      print the node list in use

Every command takes -c/--conf PATH (default: $S4_CONF_PATH, then ~/.s4.conf,
then /etc/s4.conf, else the single node 127.0.0.1:8080) and --help.
Options may come before or after the arguments; -- ends them (a local file
named -1: s4ctl cp -- -1 s4://b/k).
"""

BASH_NOTE = """Commands run as `bash -euo pipefail -c CMD`: any failing command fails the
whole, so a grep that matches nothing (exit 1) fails it, and so does a
pipe whose reader stops early (`cat | head -1`: its writer dies of
SIGPIPE, exit 141); add `|| true` where that is expected. An empty CMD is
refused. A plain `prog args` (no quotes, $, globs, redirections or
operators) is exec'd directly, as bash itself would.
"""
CONF_OPTION = """\
  -c, --conf PATH  cluster conf (default: $S4_CONF_PATH, ~/.s4.conf, /etc/s4.conf)
  -h, --help       show this help"""

DOCS = {
    "cp": """\
Usage: s4ctl cp [-r] [-c PATH] [--endpoint-url URL] [--] SRC DST

Copy data to or from s4. Each of SRC and DST is an s4://bucket/key url, a
local path, a dash for stdin (as SRC) or stdout (as DST), or an
s3://bucket/key url. One side must be s4:// and the other local or s3://:
there is no move. -- ends the options (a local file named -1:
s4ctl cp -- -1 s4://b/k).

  cp file s4://b/dir/k     stores s4://b/dir/k
  cp file s4://b/dir/      stores s4://b/dir/file
  cp s4://b/dir/k .        writes ./k
  cp s4://b/dir/k out/     writes out/k (making out/)
  cp -r s4://b/x .         writes ./x/... (every key under s4://b/x/)
  cp -r s4://b/x out       writes out/...
  cp -r dir s4://b/p       stores the files under dir as s4://b/p/...
  cp -r . s4://b           stores the current directory at the bucket root

Keys are immutable: to replace one, rm it first. Every byte is checked with
xxh3 end to end; a download that fails the check leaves no file behind, and
to stdout the node checks the key before it sends a byte. A download to a
file lands in .NAME.s4tmp.PID.N beside it first; those that a killed
s4ctl left are removed by the next download into that directory.

Special files, as cp treats them: a local SRC that is not a regular file (a
FIFO, /dev/stdin, <(cmd), a /proc file) is read as a stream, like a dash. A
local DST that is a symlink is followed; a device, FIFO or socket there is
written in place (the node checks the key first), never replaced;
/dev/stdout and /dev/fd/N write to that open file; a regular file is
replaced whole, atomically, once the bytes verified. cp -r follows
symlinks and checks the whole tree before it writes anything (key names,
names that would be both a key and a directory, existing keys, special
files, dangling symlinks, unreadable files) and refuses it whole, in one
line, if any fails.

S3 in and out, with the same path rules: each node copies its own keys
straight from or to S3, all nodes at once; no byte passes through s4ctl.

  cp s3://src/data/a.csv s4://b/in/    imports s4://b/in/a.csv
  cp -r s3://src/data/ s4://b/in/      imports data/sub/x as s4://b/in/sub/x
  cp s4://b/out/results s3://dst/r/    exports s3://dst/r/results
  cp -r s4://b/out/ s3://dst/r/        exports every key under s4://b/out/

The nodes use their own AWS credentials (environment, ~/.aws, instance
role); none are sent. An existing s4 key, a missing object or bucket, or an
object that changes while it is copied fails the copy with one line naming
it; keys and objects already copied stay, nothing half-made does.

Options:
  -r, --recursive     copy a directory tree
  --endpoint-url URL  the S3 endpoint the nodes use (default: each node's
                      $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL, else AWS)
""" + CONF_OPTION,
    "ls": """\
Usage: s4ctl ls [-r] [-c PATH] [--] [PREFIX]

List keys in the `aws s3 ls` format, in aligned columns:
`YYYY-MM-DD HH:MM:SS       SIZE NAME` for keys (SIZE right-aligned in 10
characters) and `PRE name/` for directories. Without -r: the entries of PREFIX's
directory, names relative to it; a partial last component matches by prefix
(s4://b/dir/ke lists dir's entries starting with `ke`). With -r: every key
starting with PREFIX, as paths relative to the bucket, sorted. Without
PREFIX (with or without -r): the buckets. Exits 1 when nothing matches.
`ls -r PREFIX` lists exactly the keys `rm -r PREFIX` deletes.

Options:
  -r, --recursive  list every key below PREFIX
""" + CONF_OPTION,
    "rm": """\
Usage: s4ctl rm [-r] [-c PATH] [--] PREFIX

Delete one key, or with -r every key starting with PREFIX (s4://b/step
deletes s4://b/step1/... and s4://b/step2/...), exactly the keys
`s4ctl ls -r PREFIX` lists. A bucket name is matched whole: rm -r s4://logs
never touches s4://logs-2024. Deleting one key that does not exist fails.
A recursive delete prints how many keys it deleted
(`delete: 3 keys starting with s4://b/step`); one that matches nothing
succeeds and prints nothing.

Options:
  -r, --recursive  delete every key starting with PREFIX
""" + CONF_OPTION,
    "eval": """\
Usage: s4ctl eval [-c PATH] [--timeout S] [--] KEY CMD

Run the bash command CMD on the node holding KEY, with the key's data on
stdin and $filename set to its basename; print CMD's stdout. CMD runs in a
fresh temp dir.

""" + BASH_NOTE + """
Options:
  --timeout S      kill CMD after S seconds (default: the daemon's --timeout)
""" + CONF_OPTION,
    "map": """\
Usage: s4ctl map [-c PATH] [--timeout S] [--] INDIR OUTDIR CMD

1:1. For every key under INDIR (recursive), on the node holding it, run the
bash command CMD with the key's data on stdin; its stdout becomes the key
with the same relative name under OUTDIR, on the same node. $filename holds
the input key's basename. INDIR may end in a glob on names (s4://b/in/*4).
Commands run in fresh temp dirs, up to the daemons' --max-cpu-jobs at once
per node. If one fails, the map stops on every node and exits 1 naming the
node, key, exit code and stderr; outputs already published stay (keys are
immutable, so a second run into the same OUTDIR fails naming an output that
exists already): `s4ctl rm -r OUTDIR` and run it again.

""" + BASH_NOTE + """
Options:
  --timeout S      kill a command after S seconds (default: the daemon's --timeout)
""" + CONF_OPTION,
    "map-to-n": """\
Usage: s4ctl map-to-n [-c PATH] [--timeout S] [--] INDIR OUTDIR CMD

1:n, the shuffle. For every key under INDIR, run CMD with the key's data on
stdin in a fresh temp dir; CMD writes files there and prints their names,
one per line. Each file becomes OUTDIR/<input path relative to
INDIR>/<file name> (OUTDIR/<input name>/<file name> for an input directly
under INDIR) on the node its file name places it on (a name starting with
digits goes to node int(digits) % N), so files of the same name from every
input meet on one node. A printed name that is not a file CMD wrote fails the map; an empty
line is skipped. Failure handling is as for map.

""" + BASH_NOTE + """
Options:
  --timeout S      kill a command after S seconds (default: the daemon's --timeout)
""" + CONF_OPTION,
    "map-from-n": """\
Usage: s4ctl map-from-n [-c PATH] [--timeout S] [--] INDIR OUTDIR CMD

n:1, the merge. Keys under INDIR are grouped by the numeric prefix of their
basename (else the whole basename); groups live on one node by placement.
For each group, CMD gets the members' local file paths on stdin, one per
line, and its stdout becomes OUTDIR/<group>. When every member has the same
basename (000_bucket0), the output keeps it. Failure handling is as for map.

""" + BASH_NOTE + """
Options:
  --timeout S      kill a command after S seconds (default: the daemon's --timeout)
""" + CONF_OPTION,
    "health": """\
Usage: s4ctl health [-c PATH]

One line per node: healthy or unhealthy, up or down, and its figures
(version, uptime, free and used space, keys and bytes stored, running io
and cpu jobs, load average, round trip). Exits 1 if any node is down,
naming them on stderr.

Options:
""" + CONF_OPTION,
    "config": """\
Usage: s4ctl config [-c PATH]

Print the nodes of the cluster in use, one host:port per line, in conf order
(the order placement uses).

Options:
""" + CONF_OPTION,
}


def _split_global(argv: list[str]) -> tuple[list[str], str | None]:
    """Pull `-c PATH` / `--conf PATH` that stand before the subcommand."""
    conf = None
    while argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        opt = argv.pop(0)
        if opt in ("-c", "--conf") and argv:
            conf = argv.pop(0)
        elif opt.startswith("--conf="):
            conf = opt.split("=", 1)[1]
        elif opt.startswith("-c") and len(opt) > 2:
            conf = opt[2:]
        else:
            raise UsageError(f"unknown option {opt}")
    return argv, conf


def _client(args: dict, conf_path: str | None):
    from s4d import conf
    from s4ctl.client import Client
    try:
        nodes, _ = conf.load(args.get("--conf") or conf_path)
    except conf.ConfError as e:
        raise UsageError(str(e))
    return Client(nodes)


# --- the hand parse of the commands run in loops ------------------------------------------
# name: (its positionals, its flags (take no value), its options (take one value))
_QUICK = {
    "cp": (("SRC", "DST"), ("--recursive",), ("--conf", "--endpoint-url")),
    "map": (("INDIR", "OUTDIR", "CMD"), (), ("--conf", "--timeout")),
    "map-to-n": (("INDIR", "OUTDIR", "CMD"), (), ("--conf", "--timeout")),
    "map-from-n": (("INDIR", "OUTDIR", "CMD"), (), ("--conf", "--timeout")),
}
_SHORT = {"-r": "--recursive", "-c": "--conf"}


def quick_args(command: str, words: list[str]) -> dict | None:
    """`cp` and the maps parsed by hand into exactly what docopt would return.

    docopt imports `re`, `enum` and `typing`: ~6 ms of a ~25 ms small cp, and
    ~25 ms of a map's start; a loop of them in bash feels it. Anything else
    (--help, a typo, a usage error, --opt=value) returns None and goes to
    docopt, which answers as for every other command. As for docopt, `--`
    ends the options only before the positionals."""
    if command not in _QUICK:
        return None
    names, flags, options = _QUICK[command]
    args: dict = {command: True, "--": False}
    args.update({name: False for name in flags})
    args.update({name: None for name in options})
    given = []
    words = iter(words)
    for word in words:
        long = _SHORT.get(word, word)
        if args["--"] or word == "-" or not word.startswith("-"):
            given.append(word)
        elif word == "--" and not given:
            args["--"] = True
        elif long in flags and not args[long]:
            args[long] = True
        elif long in options and args[long] is None:
            args[long] = next(words, None)
            if args[long] is None or args[long].startswith("-"):
                return None
        else:
            return None
    if len(given) != len(names):
        return None
    args.update(zip(names, given))
    return args


# --- cp ----------------------------------------------------------------------------
def _is_s4(path: str) -> bool:
    return path.startswith("s4://")


def cmd_cp(args: dict, conf_path) -> int:
    src, dst = args["SRC"], args["DST"]
    if _is_s3(src) or _is_s3(dst):
        return _s3_cp(args, conf_path)
    if _is_s4(src) and _is_s4(dst):
        raise UsageError("there is no move: copy s4:// to local or local to s4://")
    if not _is_s4(src) and not _is_s4(dst):
        raise UsageError("one of SRC and DST must be an s4:// url")
    from s4d import keys
    if args["--recursive"]:
        client = _client(args, conf_path)
        if _is_s4(src):
            return files.get_tree(client, keys.strip_scheme(src), dst)
        return files.put_tree(client, keys.strip_scheme(dst), src)
    if _is_s4(dst):
        key = keys.strip_scheme(dst)
        fd = 0 if src == "-" else files.fd_alias(src)  # /dev/stdin, <(cmd): that open file, as a stream
        if fd is None and os.path.isdir(src):
            raise UsageError(f"{src} is a directory (use -r)")
        if key.endswith("/") or "/" not in key:
            key = key.rstrip("/") + "/" + os.path.basename(src)
        if fd is not None:
            _client(args, conf_path).put(key, stream=files.open_fd(fd, src, "rb"))
        else:  # a FIFO or a /proc file is read as a stream too, by put itself
            _client(args, conf_path).put(key, path=src)
        return 0
    key = keys.strip_scheme(src)
    if key.endswith("/"):
        raise UsageError(f"{src} is a directory (use -r)")
    fd = 1 if dst == "-" else files.fd_alias(dst)  # /dev/stdout, /dev/fd/N: that open file, in place
    if fd is not None:
        out = files.open_fd(fd, dst, "wb")
        # it cannot take bytes back: the node verifies before it sends
        _client(args, conf_path).get(key, out.fileno(), verify_first=True)
        return 0
    if dst.endswith("/") or os.path.isdir(dst):
        dst = os.path.join(dst, keys.basename(key))
    if os.path.isdir(dst):
        raise UsageError(f"cannot write {src} to {dst}: it is a directory")
    files.download(_client(args, conf_path), key, dst)
    return 0



# --- S3 in and out ------------------------------------------------------------------
def _is_s3(path: str) -> bool:
    return path.startswith("s3://")


def _split_s3(url: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty."""
    bucket, _, obj = url[len("s3://"):].partition("/")
    if not bucket:
        raise UsageError(f"no bucket in {url}")
    return bucket, obj


def _s3_cp(args: dict, conf_path) -> int:
    """Import (s3:// -> s4://) or export (s4:// -> s3://): the nodes do the copying;
    here only the names are worked out, progress shown and the summary printed."""
    from s4d import keys
    src, dst = args["SRC"], args["DST"]
    importing = _is_s3(src)
    if not (_is_s4(dst) if importing else _is_s4(src)):
        raise UsageError("an s3:// url pairs with an s4:// url: s4ctl copies between S3 and s4 "
                         "(for S3 and local files, use aws s3 cp)")
    bucket, obj = _split_s3(src if importing else dst)
    path = keys.strip_scheme(dst if importing else src)
    if args["--recursive"]:  # both sides are directories: the tree keeps its relative names
        path = path.rstrip("/") + "/"
        obj = obj.rstrip("/") + "/" if obj.strip("/") else ""
    elif importing:
        if not obj or obj.endswith("/"):
            raise UsageError(f"{src} is a directory (use -r)")
        if path.endswith("/") or "/" not in path:
            path = path.rstrip("/") + "/" + obj.rsplit("/", 1)[-1]
    else:
        if path.endswith("/"):
            raise UsageError(f"{src} is a directory (use -r)")
        if not obj or obj.endswith("/"):
            obj += keys.basename(path)
    client = _client(args, conf_path)
    label = "import" if importing else "export"
    with term.Progress(label) as progress:
        result = getattr(client, "s3_" + label)(path, bucket, obj, args["--recursive"],
                                                args.get("--endpoint-url"), on_progress=progress)
    if result["total"] == 0:
        raise UsageError(f"no {'objects' if importing else 'keys'} under {src}")
    progress.summary(result, len(client.nodes))
    return 0


# --- ls, rm, eval ---------------------------------------------------------------------
_stamps: dict[int, str] = {}


def _stamp(mtime: int) -> str:
    """The ls time column; keys written together share a second, so format each once."""
    if mtime not in _stamps:
        import time
        _stamps[mtime] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))
    return _stamps[mtime]


def _prefix(url: str) -> str:
    """The wire prefix of an ls or rm -r PREFIX, the same for both, so that
    `ls -r PREFIX` previews exactly what `rm -r PREFIX` deletes: a bare bucket
    means that bucket (`s4://logs` is `logs/`, never `logs-2024/`), as aws s3 does."""
    from s4d import keys
    prefix = keys.strip_scheme(url)
    if prefix and "/" not in prefix:
        prefix += "/"
    return prefix


def cmd_ls(args: dict, conf_path) -> int:
    stdout = term.stdout()
    prefix = _prefix(args["PREFIX"]) if args["PREFIX"] else ""
    recursive = args["--recursive"] and bool(prefix)  # no PREFIX: the buckets, with -r too
    entries = _client(args, conf_path).ls(prefix, recursive)
    out = []
    for name, size, mtime in entries:
        # aws s3 ls columns: the date, the size right-aligned in 10, PRE lined up with the sizes
        if size is None:
            out.append(f"{_stamp(mtime)} {name.rstrip('/')}" if not prefix else f"{'PRE':>30} {name}")
        else:
            if recursive:
                name = name.split("/", 1)[1]  # relative to the bucket
            out.append(f"{_stamp(mtime)} {size:>10} {name}")
    if not out:
        return 1
    stdout.write("\n".join(out) + "\n")
    return 0


def cmd_rm(args: dict, conf_path) -> int:
    from s4d import keys
    if not args["--recursive"]:
        _client(args, conf_path).rm(keys.strip_scheme(args["PREFIX"]))
        return 0
    prefix = _prefix(args["PREFIX"])
    if not prefix.strip("/"):
        raise UsageError("refusing to delete every bucket")
    stdout = term.stdout()  # checked first: the count is the result, and deleting cannot be undone
    deleted = _client(args, conf_path).rm(prefix, True)
    if deleted:  # a summary, not a line per key as aws prints: 100k keys are 100k lines
        stdout.write(f"delete: {deleted} key{'s' if deleted != 1 else ''} starting with "
                     f"{keys.url(prefix)}\n")
    return 0


def _timeout(args: dict) -> float | None:
    if args.get("--timeout") is None:
        return None
    try:
        value = float(args["--timeout"])
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args['--timeout']!r}")
    return value


def _command(args: dict) -> str:
    if not args["CMD"].strip():
        raise UsageError("CMD is empty: give a bash command (for example 'cat')")
    return args["CMD"]


def cmd_eval(args: dict, conf_path) -> int:
    from s4d import keys
    cmd, stdout = _command(args), term.stdout()
    client = _client(args, conf_path)
    client.eval(keys.strip_scheme(args["KEY"]), cmd, stdout.fileno(), _timeout(args))
    return 0


# --- maps ------------------------------------------------------------------------------
def _run_map(op: str, args: dict, conf_path) -> int:
    from s4d import keys
    from s4d.errors import Exists
    indir, outdir = args["INDIR"], args["OUTDIR"]
    label = op.replace("_", "-")
    cmd = _command(args)
    client = _client(args, conf_path)
    try:
        with term.Progress(label) as progress:
            result = getattr(client, op)(keys.strip_scheme(indir), keys.strip_scheme(outdir),
                                         cmd, timeout=_timeout(args), on_progress=progress)
    except Exists as e:
        if not e.message.startswith("key exists"):
            raise
        # two runs into one OUTDIR: every output may be published, but not by this run
        key = e.message.rpartition(": ")[2]
        raise Exists(f"{label}: the output {key} exists already (keys are immutable): an earlier "
                     f"or concurrent run into {outdir} wrote it; to run again: s4ctl rm -r "
                     f"{outdir}") from None
    if result["total"] == 0:
        raise UsageError(f"no keys under {indir}")
    progress.summary(result, len(client.nodes))
    return 0


def cmd_map(args, conf_path) -> int:
    return _run_map("map", args, conf_path)


def cmd_map_to_n(args, conf_path) -> int:
    return _run_map("map_to_n", args, conf_path)


def cmd_map_from_n(args, conf_path) -> int:
    return _run_map("map_from_n", args, conf_path)


# --- health, config -----------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


def cmd_health(args, conf_path) -> int:
    term.stdout()
    client = _client(args, conf_path)
    down = []
    for node, f, error in client.health():
        name = "%s:%d" % node
        if f is None:
            down.append(name)
            print(f"unhealthy: {name:<21} down  {error}")
            continue
        print(f"healthy:   {name:<21} up    version={f['version']} uptime={f['uptime_s']:.0f}s "
              f"free={_size(f['disk_free'])} used={_size(f['disk_used'])} keys={f['keys']} "
              f"bytes={_size(f['bytes'])} io={f['io_jobs']}/{f['max_io_jobs']} "
              f"cpu={f['cpu_jobs']}/{f['max_cpu_jobs']} load={f['load']:.2f} "
              f"rss={_size(f['rss'])} rtt={f['rtt_ms']:.1f}ms")
    if down:
        term.say(f"s4ctl: {len(down)} of {len(client.nodes)} nodes down: {', '.join(down)}")
        return 1
    return 0


def cmd_config(args, conf_path) -> int:
    term.stdout()
    from s4d import conf
    try:
        nodes, _ = conf.load(args.get("--conf") or conf_path)
    except conf.ConfError as e:
        raise UsageError(str(e))
    for host, port in nodes:
        print(f"{host}:{port}")
    return 0


# --- main --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("S4_DEBUG"))
    for signum in (_signal.SIGTERM, _signal.SIGHUP):  # _signal: `signal` imports enum, ~12 ms
        if _signal.getsignal(signum) == _signal.SIG_DFL:  # not under nohup
            _signal.signal(signum, term.terminate)
    try:
        argv, conf_path = _split_global(argv)
        if not argv or argv[0] in ("-h", "--help", "help"):
            term.stdout().write(USAGE)
            return 0 if argv else 1
        if argv[0] == "--version":
            from s4d import __version__
            term.stdout().write(f"s4ctl {__version__}\n")
            return 0
        command = argv[0]
        if command not in DOCS:
            raise UsageError(f"unknown command {command!r}; see s4ctl --help")
        args = quick_args(command, argv[1:])
        if args is None:
            from docopt import docopt
            args = docopt(DOCS[command], argv=argv)
        return globals()["cmd_" + command.replace("-", "_")](args, conf_path)
    except UsageError as e:
        term.say(f"s4ctl: {e}")
        return 1
    except KeyboardInterrupt:
        files.remove_temps()
        return 130
    except Terminated as e:  # cleaned up like Ctrl-C, then die of the signal, as the sender expects
        files.remove_temps()
        _signal.signal(e.signum, _signal.SIG_DFL)
        os.kill(os.getpid(), e.signum)
        return 128 + e.signum
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        from s4d.errors import S4Error
        if debug:
            raise
        if isinstance(e, S4Error):
            term.say(f"s4ctl: {e.message}")
        elif isinstance(e, OSError):
            where = f": {e.filename}" if e.filename is not None else ""
            term.say(f"s4ctl: {e.strerror or e}{where}")
        else:
            term.say(f"s4ctl: unexpected error: {e!r} (S4_DEBUG=1 for a traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""s4ctl: the s4 command-line client. Printing happens here and only here.

One `cmd_<name>` per subcommand, each with its own docopt usage text (shown
by `s4ctl <command> --help`). Imports are kept to what a small `cp` needs:
no trio, no psutil.
"""
import os
import sys

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
Options may come before or after the arguments.
"""

CONF_OPTION = """\
  -c, --conf PATH  cluster conf (default: $S4_CONF_PATH, ~/.s4.conf, /etc/s4.conf)
  -h, --help       show this help"""

DOCS = {
    "cp": """\
Usage: s4ctl cp [-r] [-c PATH] SRC DST

Copy data to or from s4. Each of SRC and DST is an s4://bucket/key url, a
local path, or a dash for stdin (as SRC) or stdout (as DST). One side must
be s4:// and the other local: there is no move.

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
to stdout the node checks the key before it sends a byte.

Options:
  -r, --recursive  copy a directory tree
""" + CONF_OPTION,
    "ls": """\
Usage: s4ctl ls [-r] [-c PATH] [PREFIX]

List keys in the `aws s3 ls` format: `YYYY-MM-DD HH:MM:SS SIZE NAME` for keys
and `PRE name/` for directories. Without -r: the entries of PREFIX's
directory, names relative to it; a partial last component matches by prefix
(s4://b/dir/ke lists dir's entries starting with `ke`). With -r: every key
starting with PREFIX, as paths relative to the bucket, sorted. Without
PREFIX (with or without -r): the buckets. Exits 1 when nothing matches.

Options:
  -r, --recursive  list every key below PREFIX
""" + CONF_OPTION,
    "rm": """\
Usage: s4ctl rm [-r] [-c PATH] PREFIX

Delete one key, or with -r every key starting with PREFIX (s4://b/step
deletes s4://b/step1/... and s4://b/step2/...; s4://step deletes every
bucket starting with "step"). Deleting one key that does not exist fails;
a recursive delete that matches nothing succeeds and prints nothing.

Options:
  -r, --recursive  delete every key starting with PREFIX
""" + CONF_OPTION,
    "eval": """\
Usage: s4ctl eval [-c PATH] [--timeout S] KEY CMD

Run the bash command CMD on the node holding KEY, with the key's data on
stdin and $filename set to its basename; print CMD's stdout. CMD runs in a
fresh temp dir under `set -euo pipefail`.

Options:
  --timeout S      kill CMD after S seconds (default: the daemon's --timeout)
""" + CONF_OPTION,
    "map": """\
Usage: s4ctl map [-c PATH] [--timeout S] INDIR OUTDIR CMD

1:1. For every key under INDIR (recursive), on the node holding it, run the
bash command CMD with the key's data on stdin; its stdout becomes the key
with the same relative name under OUTDIR, on the same node. $filename holds
the input key's basename. INDIR may end in a glob on names (s4://b/in/*4).
Commands run in fresh temp dirs under `set -euo pipefail`, up to the
daemons' --max-cpu-jobs at once per node. If one fails, the map stops on
every node and exits 1 naming the node, key, exit code and stderr; outputs
already published stay: `s4ctl rm -r OUTDIR` and run it again.

Options:
  --timeout S      kill a command after S seconds (default: the daemon's --timeout)
""" + CONF_OPTION,
    "map-to-n": """\
Usage: s4ctl map-to-n [-c PATH] [--timeout S] INDIR OUTDIR CMD

1:n, the shuffle. For every key under INDIR, run CMD with the key's data on
stdin in a fresh temp dir; CMD writes files there and prints their names,
one per line. Each file becomes OUTDIR/<input path under INDIR>/<file name>
on the node its file name places it on (a name starting with digits goes to node
int(digits) % N), so files of the same name from every input meet on one
node. A printed name that is not a file CMD wrote fails the map; an empty
line is skipped. Failure handling is as for map.

Options:
  --timeout S      kill a command after S seconds (default: the daemon's --timeout)
""" + CONF_OPTION,
    "map-from-n": """\
Usage: s4ctl map-from-n [-c PATH] [--timeout S] INDIR OUTDIR CMD

n:1, the merge. Keys under INDIR are grouped by the numeric prefix of their
basename (else the whole basename); groups live on one node by placement.
For each group, CMD gets the members' local file paths on stdin, one per
line, and its stdout becomes OUTDIR/<group>. When every member has the same
basename (000_bucket0), the output keeps it. Failure handling is as for map.

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


class UsageError(Exception):
    pass


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


# --- cp ----------------------------------------------------------------------------
def quick_cp(words: list[str]) -> dict | None:
    """`cp [-r] [-c PATH] SRC DST` parsed by hand into what docopt would return.

    docopt imports `re`, ~6 ms of a ~25 ms small cp; a loop of them in bash
    feels it. Anything else (--help, a typo, a usage error) returns None and
    goes to docopt, which answers as for every other command."""
    args = {"cp": True, "--recursive": False, "--conf": None, "SRC": None, "DST": None}
    paths = []
    words = iter(words)
    for word in words:
        if word in ("-r", "--recursive") and not args["--recursive"]:
            args["--recursive"] = True
        elif word in ("-c", "--conf") and args["--conf"] is None:
            args["--conf"] = next(words, None)
            if args["--conf"] is None or args["--conf"].startswith("-"):
                return None
        elif word == "-" or not word.startswith("-"):
            paths.append(word)
        else:
            return None
    if len(paths) != 2:
        return None
    args["SRC"], args["DST"] = paths
    return args


def _is_s4(path: str) -> bool:
    return path.startswith("s4://")


def cmd_cp(args: dict, conf_path) -> int:
    src, dst = args["SRC"], args["DST"]
    if _is_s4(src) and _is_s4(dst):
        raise UsageError("there is no move: copy s4:// to local or local to s4://")
    if not _is_s4(src) and not _is_s4(dst):
        raise UsageError("one of SRC and DST must be an s4:// url")
    from s4d import keys
    client = _client(args, conf_path)
    if args["--recursive"]:
        if _is_s4(src):
            return _get_tree(client, keys.strip_scheme(src), dst)
        return _put_tree(client, keys.strip_scheme(dst), src)
    if _is_s4(dst):
        key = keys.strip_scheme(dst)
        if src == "-":
            client.put(key, stream=sys.stdin.buffer)
            return 0
        if os.path.isdir(src):
            raise UsageError(f"{src} is a directory (use -r)")
        if key.endswith("/") or "/" not in key:
            key = key.rstrip("/") + "/" + os.path.basename(src)
        client.put(key, path=src)
        return 0
    key = keys.strip_scheme(src)
    if key.endswith("/"):
        raise UsageError(f"{src} is a directory (use -r)")
    if dst == "-":  # stdout cannot take bytes back: the node verifies before it sends
        client.get(key, sys.stdout.fileno(), verify_first=True)
        return 0
    if dst.endswith("/") or os.path.isdir(dst):
        dst = os.path.join(dst, keys.basename(key))
    if os.path.isdir(dst):
        raise UsageError(f"cannot write {src} to {dst}: it is a directory")
    _download(client, key, dst)
    return 0


def _download(client, key: str, dst: str) -> int:
    """Get key into dst via a temp file beside it: a failed check leaves nothing."""
    parent = os.path.dirname(dst) or "."
    os.makedirs(parent, exist_ok=True)
    # the name is cut so that a 255-byte basename (a legal key) still leaves room for the suffix
    temp = os.path.join(parent, f".{os.path.basename(dst)[:200]}.s4tmp.{os.getpid()}.{id(key)}")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)  # RDWR: hashed by mmap
    try:
        try:
            size = client.get(key, fd)
        finally:
            os.close(fd)
        os.replace(temp, dst)
        return size
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _parallel(client, jobs: list, fn) -> None:
    """Run fn(job) -> bytes over jobs on a few threads, each reusing its own
    connections; progress on stderr when it is a terminal."""
    import threading

    from s4ctl.client import in_threads
    from s4d import limits
    it = iter(jobs)
    lock = threading.Lock()
    errors: list = []
    progress = _Progress("cp")
    done = {"done": 0, "total": len(jobs), "bytes": 0}

    def worker() -> None:
        try:
            while not errors:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                try:
                    moved = fn(job)
                except BaseException as e:
                    errors.append(e)
                    return
                with lock:
                    done["done"] += 1
                    done["bytes"] += moved
                    progress(*done.values())
        finally:
            client.close()

    in_threads(lambda _: worker(), range(min(limits.CLIENT_PARALLEL_TRANSFERS, len(jobs))))
    if errors:
        raise errors[0]
    if progress.tty:
        progress.summary(done, len(client.nodes))


def _get_tree(client, prefix: str, dst: str) -> int:
    from s4d import keys
    # every key under the directory prefix/ (not s4://b/xy for s4://b/x, nor bucket bb for b)
    entries = client.ls(prefix.rstrip("/") + "/", recursive=True)
    if not entries:
        raise UsageError(f"no keys under {keys.url(prefix)}")
    bucket, _, path = prefix.rstrip("/").partition("/")
    # strip the prefix's directory; into `.`, keep its last component (aws s3 cp -r)
    if not path:
        strip = bucket + "/"
    elif dst == ".":
        strip = bucket + "/" + (path.rsplit("/", 1)[0] + "/" if "/" in path else "")
    else:
        strip = bucket + "/" + path + "/"
    jobs = []
    for name, _, _ in entries:
        key = name  # ls -r names are whole wire paths, bucket included
        rel = key[len(strip):] if key.startswith(strip) else keys.basename(key)
        jobs.append((key, os.path.join(dst, rel)))
    _refuse_clashes(jobs)
    _parallel(client, jobs, lambda job: _download(client, *job))
    return 0


def _refuse_clashes(jobs: list[tuple[str, str]]) -> None:
    """Fail before writing anything if one key's local path is another's directory
    (s4://b/x and s4://b/x/y: keys on different nodes may share a name)."""
    from s4d import keys
    by_path = {os.path.normpath(path): key for key, path in jobs}
    for key, path in jobs:
        parent = os.path.dirname(os.path.normpath(path))
        while parent not in ("", ".", "/"):
            if parent in by_path:
                raise UsageError(f"cannot copy both {keys.url(by_path[parent])} and {keys.url(key)}: "
                                 f"{parent} would be a file and a directory; copy them separately")
            parent = os.path.dirname(parent)


def _put_tree(client, prefix: str, src: str) -> int:
    if not os.path.isdir(src):
        raise UsageError(f"not a directory: {src}")
    base = prefix.rstrip("/")
    jobs = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)
            jobs.append((path, f"{base}/{rel}"))
    if not jobs:
        raise UsageError(f"no files under {src}")

    _parallel(client, jobs, lambda job: client.put(job[1], path=job[0]))
    return 0


# --- ls, rm, eval ---------------------------------------------------------------------
_stamps: dict[int, str] = {}


def _stamp(mtime: int) -> str:
    """The ls time column; keys written together share a second, so format each once."""
    if mtime not in _stamps:
        import time
        _stamps[mtime] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))
    return _stamps[mtime]


def cmd_ls(args: dict, conf_path) -> int:
    from s4d import keys
    prefix = keys.strip_scheme(args["PREFIX"]) if args["PREFIX"] else ""
    recursive = args["--recursive"] and bool(prefix)  # no PREFIX: the buckets, with -r too
    if prefix and "/" not in prefix:
        prefix += "/"  # `ls [-r] s4://bucket` lists that bucket (not bucket2), as aws s3 ls does
    entries = _client(args, conf_path).ls(prefix, recursive)
    out = []
    for name, size, mtime in entries:
        if size is None:
            out.append(f"{_stamp(mtime)} {name.rstrip('/')}" if not prefix else f"{'PRE':>30} {name}")
        else:
            if recursive:
                name = name.split("/", 1)[1]  # relative to the bucket
            out.append(f"{_stamp(mtime)} {size} {name}")
    if not out:
        return 1
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_rm(args: dict, conf_path) -> int:
    from s4d import keys
    prefix = keys.strip_scheme(args["PREFIX"])
    if args["--recursive"] and not prefix.strip("/"):
        raise UsageError("refusing to delete every bucket")
    _client(args, conf_path).rm(prefix, args["--recursive"])
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


def cmd_eval(args: dict, conf_path) -> int:
    from s4d import keys
    client = _client(args, conf_path)
    client.eval(keys.strip_scheme(args["KEY"]), args["CMD"], sys.stdout.fileno(), _timeout(args))
    return 0


# --- maps ------------------------------------------------------------------------------
class _Progress:
    """Keys done / total and MB/s on stderr while a map runs (only on a terminal)."""

    def __init__(self, label: str):
        import time
        self.label = label
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int, nbytes: int) -> None:
        import time
        now = time.monotonic()
        if self.tty and now - self.last > 0.2:
            self.last = now
            rate = nbytes / max(now - self.started, 1e-9) / 1e6
            sys.stderr.write(f"\r{self.label}: {done}/{total} keys, {rate:.1f} MB/s ")
            sys.stderr.flush()

    def summary(self, result: dict, nodes: int) -> None:
        import time
        secs = time.monotonic() - self.started
        mb = result["bytes"] / 1e6
        sys.stderr.write(("\r" if self.tty else "") + f"{self.label}: {result['done']} keys, "
                         f"{mb:.1f} MB in {secs:.2f}s ({mb / max(secs, 1e-9):.1f} MB/s) on {nodes} nodes\n")


def _run_map(op: str, args: dict, conf_path) -> int:
    from s4d import keys
    indir, outdir = args["INDIR"], args["OUTDIR"]
    label = op.replace("_", "-")
    client = _client(args, conf_path)
    progress = _Progress(label)
    try:
        result = getattr(client, op)(keys.strip_scheme(indir), keys.strip_scheme(outdir),
                                     args["CMD"], timeout=_timeout(args), on_progress=progress)
    finally:
        if progress.tty:
            sys.stderr.write("\r\033[K")
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
        print(f"s4ctl: {len(down)} of {len(client.nodes)} nodes down: {', '.join(down)}", file=sys.stderr)
        return 1
    return 0


def cmd_config(args, conf_path) -> int:
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
    try:
        argv, conf_path = _split_global(argv)
        if not argv or argv[0] in ("-h", "--help", "help"):
            sys.stdout.write(USAGE)
            return 0 if argv else 1
        if argv[0] == "--version":
            from s4d import __version__
            print(f"s4ctl {__version__}")
            return 0
        command = argv[0]
        if command not in DOCS:
            raise UsageError(f"unknown command {command!r}; see s4ctl --help")
        args = quick_cp(argv[1:]) if command == "cp" else None
        if args is None:
            from docopt import docopt
            args = docopt(DOCS[command], argv=argv)
        return globals()["cmd_" + command.replace("-", "_")](args, conf_path)
    except UsageError as e:
        print(f"s4ctl: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        from s4d.errors import S4Error
        if debug:
            raise
        if isinstance(e, S4Error):
            print(f"s4ctl: {e.message}", file=sys.stderr)
        elif isinstance(e, OSError):
            print(f"s4ctl: {e.strerror or e}{': ' + e.filename if e.filename else ''}", file=sys.stderr)
        else:
            print(f"s4ctl: unexpected error: {e!r} (S4_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

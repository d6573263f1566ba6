"""The local side of `cp`, as s4ctl treats it: which local sources are
streams (pipes, /dev/stdin, <(cmd), /proc files) and which are files; how a
destination is written (followed symlinks, special files and open fds in
place, regular files replaced through a temp file that Ctrl-C and SIGTERM
remove, and that a later download into the same dir sweeps if its process
died); and the whole-tree checks of `cp -r` in both directions (every
clash found and reported before a byte moves)."""
import os
import stat

from s4ctl import term
from s4ctl.term import UsageError


def fd_alias(path: str) -> int | None:
    """N if path names this process's open fd N, itself or through symlinks:
    /dev/stdout, /dev/stdin, /dev/fd/N (what bash's <(cmd) gives), /proc/self/fd/N.
    Such a path is read or written through the fd itself, with its offset and
    append mode, as the shell's redirection meant; never opened anew, replaced
    or measured by its st_size."""
    from s4d import limits
    for _ in range(limits.SYMLINK_HOPS_MAX):
        path = os.path.abspath(path)
        for head in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
            if path.startswith(head) and path[len(head):].isdigit():
                return int(path[len(head):])
        try:
            target = os.readlink(path)
        except OSError:  # not a symlink (or not there): an ordinary path
            return None
        path = os.path.join(os.path.dirname(path), target)
    return None


def open_fd(fd: int, name: str, mode: str):
    """A file object over the already open fd (not closed with it)."""
    std = {0: term.stdin, 1: term.stdout}.get(fd)
    if std is not None:  # a closed one is a one-line error here, not an AttributeError later
        return std().buffer
    try:
        os.fstat(fd)
    except OSError:
        raise UsageError(f"cannot use {name}: file descriptor {fd} is not open") from None
    return open(fd, mode, closefd=False)


_temps: set[str] = set()  # download temp files in flight, removed on Ctrl-C and SIGTERM too
_temps_lock = None  # made by the first download: a single cp imports no threading


def remove_temps() -> None:
    """Remove every download temp file still in flight; later downloads make none.
    Called from the main thread when a signal stops the copy (cp -r's threads
    may still be writing: a temp a thread made is in _temps before its first byte)."""
    global _temps
    if _temps_lock is not None:
        with _temps_lock:
            left, _temps = _temps, None  # None: no new temp files from here on
    else:
        left = _temps
    for path in left or ():
        try:
            os.unlink(path)
        except OSError:
            pass


_swept_dirs: set[str] = set()  # directories whose stale download temps are gone


def _remove_stale_temps(parent: str) -> None:
    """Once per directory: remove the temp files `.NAME.s4tmp.PID.N` that
    downloads into it left when they were killed (PID no longer runs); one
    whose process still runs is left alone."""
    if parent in _swept_dirs:
        return
    _swept_dirs.add(parent)
    try:
        found = [n for n in os.listdir(parent) if n.startswith(".") and ".s4tmp." in n]
    except OSError:
        return
    for temp in found:
        pid = temp.rpartition(".s4tmp.")[2].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or not ours to signal): it may be downloading now
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.unlink(os.path.join(parent, temp))
        except OSError:
            pass


def download(client, key: str, dst: str) -> int:
    """Get key into the local path dst, as cp writes a destination: a symlink is
    followed; a device, FIFO or socket there is written in place (never replaced;
    the node verifies before it sends, as the bytes cannot be taken back); a
    regular file or a new path is replaced whole via a temp file beside it,
    renamed only once the bytes verified, so a failed check leaves nothing."""
    try:
        st = os.stat(dst)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        fd = os.open(dst, os.O_WRONLY | os.O_CLOEXEC)
        try:
            return client.get(key, fd, verify_first=True)
        finally:
            os.close(fd)
    if os.path.islink(dst):  # a regular file's link, or a dangling one: the target is what we write
        return _replace(client, key, os.path.realpath(dst))
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    return _replace(client, key, dst)


def _replace(client, key: str, dst: str) -> int:
    global _temps_lock
    from _thread import allocate_lock

    from s4d import limits
    if _temps_lock is None:
        _temps_lock = allocate_lock()
    # cut in bytes, not characters: a 255-byte basename (a legal key) still leaves room for the suffix
    name = os.fsdecode(os.fsencode(os.path.basename(dst))[:limits.TEMP_NAME_KEEP_BYTES])
    _remove_stale_temps(os.path.dirname(dst) or ".")
    temp = os.path.join(os.path.dirname(dst), f".{name}.s4tmp.{os.getpid()}.{id(key)}")
    with _temps_lock:  # registered before it exists: a signal may stop us at any bytecode
        if _temps is None:
            raise UsageError("interrupted")  # the copy is being stopped: start nothing new
        _temps.add(temp)
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)  # RDWR: hashed by mmap
    except OSError:  # not made (or not ours to remove)
        with _temps_lock:
            if _temps is not None:
                _temps.discard(temp)
        raise
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
    finally:
        with _temps_lock:
            if _temps is not None:
                _temps.discard(temp)


def _parallel(client, jobs: list, fn) -> None:
    """Run fn(job) -> bytes over jobs on a few threads, each reusing its own
    connections; progress on stderr when it is a terminal."""
    import threading

    from s4ctl.client import in_threads
    from s4d import limits
    it = iter(jobs)
    lock = threading.Lock()
    errors: list = []
    progress = term.Progress("cp")
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


def _refuse(problems: list[str]) -> None:
    """Refuse a whole tree in one line: the first problem, and how many more."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"nothing copied: {problems[0]}{more}")


def _kind(mode: int) -> str:
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device"
            if stat.S_ISBLK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file")


def get_tree(client, prefix: str, dst: str) -> int:
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
    _refuse(_local_clashes(jobs))
    _parallel(client, jobs, lambda job: download(client, *job))
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


def _local_clashes(jobs: list[tuple[str, str]]) -> list[str]:
    """What is already on the local side of a cp -r download that it cannot write
    through: a file where a directory must go, a directory where a key's file
    goes, a device, FIFO or socket (a FIFO nobody reads would hang the copy)."""
    from s4d import keys
    problems = []
    seen: set[str] = set()
    for key, path in jobs:
        parent = os.path.dirname(path)
        while parent and parent not in seen:
            seen.add(parent)
            if os.path.lexists(parent) and not os.path.isdir(parent):
                problems.append(f"{parent} exists and is not a directory, so {keys.url(key)} "
                                f"cannot be written to {path}")
            parent = os.path.dirname(parent)
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):  # new (a dangling symlink is followed)
            continue
        if not stat.S_ISREG(mode):
            problems.append(f"cannot write {keys.url(key)} to {path}: it is {_kind(mode)} "
                            "(cp -r writes regular files; copy that key alone)")
    return problems


def put_tree(client, prefix: str, src: str) -> int:
    if not os.path.isdir(src):
        raise UsageError(f"not a directory: {src}")
    jobs, problems = _local_tree(src, prefix.rstrip("/"))
    _refuse(problems)
    if not jobs:
        raise UsageError(f"no files under {src}")
    _refuse(_s4_clashes(client, prefix.rstrip("/"), [key for _, key in jobs]))
    _parallel(client, jobs, lambda job: client.put(job[1], path=job[0]))
    return 0


def _local_tree(src: str, base: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, key) of every file under src, symlinks followed, and every reason
    the tree cannot be copied whole: a name that is not a legal key, a FIFO,
    socket or device, a dangling symlink, a file or directory it cannot read, a
    symlink loop."""
    from s4d import keys
    from s4d.errors import BadKey
    jobs, problems = [], []
    real: dict[str, str] = {}  # walked directory (relative to src) -> its real path

    def unreadable(e: OSError) -> None:
        problems.append(f"cannot read {e.filename}: {e.strerror}")

    for root, dirs, files in os.walk(src, onerror=unreadable, followlinks=True):
        rel_dir = os.path.relpath(root, src)
        here = os.path.realpath(root)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        if any(real.get(os.sep.join(parts[:i]) or ".") == here for i in range(len(parts))):
            problems.append(f"{root} is a symlink loop (it leads back to a directory above it)")
            dirs[:] = []
            continue
        real[rel_dir] = here
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            key = f"{base}/{os.path.relpath(path, src)}"
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                problems.append(f"{path} is a dangling symlink")
                continue
            except OSError as e:
                problems.append(f"cannot read {path}: {e.strerror}")
                continue
            if not stat.S_ISREG(mode):
                problems.append(f"{path} is {_kind(mode)} (cp -r copies regular files; "
                                "cp it alone to read it as a stream)")
            elif not os.access(path, os.R_OK):
                problems.append(f"cannot read {path}: permission denied")
            try:
                keys.check_key(key)
            except BadKey as e:
                problems.append(f"{path}: {e.message}")
            jobs.append((path, key))
    return jobs, problems


def _s4_clashes(client, base: str, new: list[str]) -> list[str]:
    """What already in s4 under base stops these keys from being stored: the key
    itself (immutable), a key where one of its directories goes, a directory
    where it goes. One listing of base, before anything is written."""
    from s4d import keys
    existing = {name for name, _, _ in client.ls(base + "/", recursive=True)}
    if not existing:
        return []
    dirs = {name[:i] for name in existing for i in range(len(name)) if name[i] == "/"}
    problems = []
    for key in new:
        if key in existing:
            problems.append(f"{keys.url(key)} exists (keys are immutable: rm it first)")
        elif key in dirs:
            problems.append(f"{keys.url(key)}/ is a directory in s4, so {keys.url(key)} cannot be a key")
        parent = key.rpartition("/")[0]
        while len(parent) > len(base):
            if parent in existing:
                problems.append(f"{keys.url(parent)} is a key, so it cannot also be a directory of "
                                f"{keys.url(key)}")
                break
            parent = parent.rpartition("/")[0]
    return problems

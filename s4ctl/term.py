"""The terminal side of s4ctl: its one error type for a user's mistake, the
signals it unwinds on, the standard streams (a closed one is a one-line
error), and the progress line of work spread over the nodes."""
import sys


class UsageError(Exception):
    pass


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind like Ctrl-C (temp files go), then die of it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def terminate(signum, _frame) -> None:
    raise Terminated(signum)


def stdout():
    """sys.stdout, or a one-line error when the shell closed it (`>&-`)."""
    if sys.stdout is None:
        raise UsageError("cannot write to stdout: it is closed")
    return sys.stdout


def say(line: str) -> None:
    """A line on stderr; nowhere if the shell closed it (print(file=None) would
    write it to stdout, into the data)."""
    if sys.stderr is not None:
        sys.stderr.write(line + "\n")


def stdin():
    if sys.stdin is None:
        raise UsageError("cannot read stdin: it is closed")
    return sys.stdin



class Progress:
    """Keys done / total and MB/s on stderr while a map, an S3 copy or a cp -r runs
    (only on a terminal)."""

    def __init__(self, label: str):
        import time
        self.label = label
        self.tty = sys.stderr is not None and sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __enter__(self) -> "Progress":
        """While work spread over the nodes runs: until every node has counted its
        keys there are no figures (never a 0/0); the line is cleared at the end."""
        if self.tty:
            sys.stderr.write(f"{self.label}: waiting for nodes")
            sys.stderr.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")

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
        say(("\r" if self.tty else "") + f"{self.label}: {result['done']} keys, "
             f"{mb:.1f} MB in {secs:.2f}s ({mb / max(secs, 1e-9):.1f} MB/s) on {nodes} nodes")

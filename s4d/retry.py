"""Backoff with jitter for retrying a busy node: one rule for client and daemon.

`delays()` is pure: it yields how long to wait before each next try and does
no waiting itself, so blocking code calls `time.sleep(d)` and trio code
`await trio.sleep(d)` with the same figures. Each wait is drawn between half
and all of an exponentially growing cap (`first_s * 2**n`, at most `max_s`):
retriers that were told "busy" at the same moment spread out instead of
knocking again in lockstep, and none waits less than half its cap, so the
load a retrier puts on a busy node still falls off exponentially. The caller
keeps its own deadline. No trio, no heavy imports: the client imports it
only when a node answers busy.
"""
from s4d import limits


def delays(first_s: float = limits.BACKOFF_FIRST_S, max_s: float = limits.BACKOFF_MAX_S,
           rand=None):
    """An endless generator of waits, in seconds: the n-th in [cap/2, cap], cap = min(first_s * 2**n, max_s).
    `rand` returns a float in [0, 1) (default: random.random; tests pass their own)."""
    if rand is None:
        import random  # here: a small cp that never retries never pays for it
        rand = random.random
    cap = first_s
    while True:
        yield cap / 2 + rand() * cap / 2
        cap = min(cap * 2, max_s)

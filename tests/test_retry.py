"""s4d.retry: the backoff both client and daemon use when a node is busy (pure, no I/O)."""
import itertools

from s4d import retry


def test_each_wait_lies_between_half_and_all_of_a_cap_that_doubles_up_to_the_maximum():
    low = list(itertools.islice(retry.delays(0.05, 1.0, rand=lambda: 0.0), 8))
    high = list(itertools.islice(retry.delays(0.05, 1.0, rand=lambda: 0.999999), 8))
    caps = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert low == [c / 2 for c in caps]
    assert all(abs(h - c) < 1e-5 for h, c in zip(high, caps))


def test_retriers_told_busy_at_once_do_not_wait_in_lockstep():
    first_waits = {next(retry.delays()) for _ in range(50)}
    assert len(first_waits) > 40  # drawn, not a fixed figure
    assert all(0.025 <= w <= 0.05 for w in first_waits)


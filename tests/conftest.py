import signal
import uuid

import pytest

from tests.cluster import Cluster

# A suite started in the background by a non-interactive shell (`cmd &`) inherits
# SIGINT ignored, and so would every s4ctl the tests start: Python keeps an
# ignored SIGINT ignored, and the tests that interrupt a copy or a map with it
# would wait in vain. The tests' own processes get the default back (a handled
# signal is reset to its default across exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def make_cluster(tmp_path):
    """Factory: make_cluster(nodes=3, args=("--max-io-jobs", "1")) -> started Cluster."""
    made = []

    def make(nodes: int = 3, args: tuple[str, ...] = (), start: bool = True) -> Cluster:
        root = tmp_path / f"cluster{len(made)}"
        root.mkdir()  # before Cluster(), which writes the conf into it
        c = Cluster(root, nodes, args)
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        c.stop()
        for p in c.command_processes():  # what a failed test may have left running
            p.kill()


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """A started 3-node cluster on loopback; cwd-independent (use cluster.root)."""
    return make_cluster()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Cluster:
    """One started 3-node cluster for a whole test module; each test takes its own bucket (`b`)."""
    c = Cluster(tmp_path_factory.mktemp("shared-cluster"), 3)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def b() -> str:
    """A fresh bucket name for one test."""
    return "b" + uuid.uuid4().hex[:10]


from tests.s3server import aws_env, s3  # noqa: E402,F401  (session fixtures: a local S3 API server)

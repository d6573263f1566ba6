import pytest

from tests.cluster import Cluster


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


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """A started 3-node cluster on loopback; cwd-independent (use cluster.root)."""
    return make_cluster()

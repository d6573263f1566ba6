"""The examples a newcomer runs, run here as they are, on a cluster of their own.

examples/taxi/run.sh is the blog post's pipeline (every map shape, checked
against a single-process count); examples/python/run.sh then reads its
outputs through `s4://` with pandas, duckdb and dask, and writes and reads a
parquet file, each script checking what it read. (examples/taxi_s3 runs in
tests/test_s3.py, beside its S3 server.)
"""
from __future__ import annotations

import os
import subprocess
import sys

from tests.cluster import S4CTL

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def test_the_taxi_example_then_the_python_examples_run_and_check_what_they_read(make_cluster):
    cluster = make_cluster()
    env = {**cluster.env, "S4CTL": S4CTL, "PYTHON": sys.executable}
    taxi = subprocess.run(["bash", os.path.join(EXAMPLES, "taxi", "run.sh"), "--rows", "20000"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert taxi.returncode == 0, taxi.stdout[-3000:] + taxi.stderr[-3000:]
    for what in ("passenger counts match the single-process count",
                 "re-partition matches the single-process count", "taxi example: ok"):
        assert what in taxi.stdout, taxi.stdout[-3000:]
    python = subprocess.run(["bash", os.path.join(EXAMPLES, "python", "run.sh")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert python.returncode == 0, python.stdout[-3000:] + python.stderr[-3000:]
    for what in ("pandas: the counts match", "duckdb: the counts match", "dask: every key holds one",
                 "parquet: round trip ok", "python examples: ok"):
        assert what in python.stdout, python.stdout[-3000:]

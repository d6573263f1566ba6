"""A parquet round trip through s4: CSV keys in, one parquet key out, one column back.

    python examples/python/parquet_roundtrip.py

Needs the outputs of `bash examples/taxi/run.sh` on a running cluster and the
fsspec extra. Reads the step1 CSV keys, writes them as one parquet key
(written to a local temp file, published whole at close; the key is deleted
first, as keys are immutable), then reads one column back: pyarrow asks for
the footer and that column's pages, and each ask is one ranged get.
"""
import sys

import fsspec
import pandas as pd

fs = fsspec.filesystem("s4")
target = "s4://taxi/parquet/step1.parquet"
if fs.exists(target):
    fs.rm(target)

step1 = pd.concat(pd.read_csv(f"s4://{p}") for p in fs.glob("s4://taxi/step1/*.csv"))
step1 = step1.reset_index(drop=True)
step1.to_parquet(target)
print(f"{target}: {fs.info(target)['size']} bytes, {len(step1)} rows, columns {list(step1.columns)}")

distance = pd.read_parquet(target, columns=["Trip_Distance"])
if not distance["Trip_Distance"].equals(step1["Trip_Distance"]):
    sys.exit("FAIL: the column read back differs from the one written")
whole = pd.read_parquet(target)
if not whole.equals(step1):
    sys.exit("FAIL: the table read back differs from the one written")
print(f"parquet: round trip ok; mean distance {distance['Trip_Distance'].mean():.3f}")

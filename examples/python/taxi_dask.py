"""dask read_csv over a glob of s4 keys: the taxi example's re-partitioned trips.

    python examples/python/taxi_dask.py

Needs the outputs of `bash examples/taxi/run.sh` on a running cluster and the
fsspec extra. `s4://taxi/part2/*.csv` holds the trips grouped by passenger
count (no header line); dask splits each key into byte ranges and reads them
in parallel, each one a ranged get of its node. Exits non-zero if a key holds
another passenger count's trip or the counts differ from the pipeline's.
"""
import sys

import dask.dataframe as dd
import pandas as pd

trips = dd.read_csv("s4://taxi/part2/*.csv", header=None, usecols=[3, 4], names=None,
                    include_path_column=True, blocksize=16 * 1024 * 1024)
trips = trips.rename(columns={3: "passengers", 4: "distance"})
print(f"{trips.npartitions} partitions")
per_key = trips.groupby("path")["passengers"].agg(["min", "max", "count"]).compute()
mixed = per_key[per_key["min"] != per_key["max"]]
if len(mixed):
    sys.exit(f"FAIL: keys holding several passenger counts:\n{mixed}")
counts = trips["passengers"].value_counts().compute().sort_index()
results = pd.read_csv("s4://taxi/step4/results", names=["passengers", "trips"], index_col="passengers")
print(trips.groupby("passengers")["distance"].mean().compute().sort_index().round(3).to_string())
if list(counts.index) != list(results.index) or list(counts) != list(results["trips"]):
    sys.exit("FAIL: dask's count of part2 differs from s4://taxi/step4/results")
print("dask: every key holds one passenger count; the counts match s4://taxi/step4/results")

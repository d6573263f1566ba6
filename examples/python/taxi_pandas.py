"""pandas on the taxi example's outputs, read straight from s4.

    python examples/python/taxi_pandas.py

Needs a running cluster (found as s4ctl finds it: $S4_CONF_PATH, ...) that
holds the outputs of `bash examples/taxi/run.sh`, and s4 installed with its
fsspec extra (`pip install 's4[fsspec]'`). Reads the pipeline's result table,
recounts the trips per passenger count from the step1 keys with pandas, and
exits non-zero if the two differ.
"""
import sys

import fsspec
import pandas as pd

results = pd.read_csv("s4://taxi/step4/results", names=["passengers", "trips"], index_col="passengers")
print(results.to_string())

fs = fsspec.filesystem("s4")
parts = fs.glob("s4://taxi/step1/*.csv")  # `bucket/key` paths, the protocol stripped
step1 = pd.concat(pd.read_csv(f"s4://{p}", usecols=["Passenger_Count", "Trip_Distance"]) for p in parts)
print(f"{len(parts)} step1 keys, {len(step1)} trips; mean distance by passenger count:")
print(step1.groupby("Passenger_Count")["Trip_Distance"].mean().round(3).to_string())

recount = step1["Passenger_Count"].value_counts().sort_index()
if not (recount.to_numpy() == results["trips"].to_numpy()).all() or list(recount.index) != list(results.index):
    sys.exit("FAIL: pandas' count of step1 differs from s4://taxi/step4/results")
print("pandas: the counts match s4://taxi/step4/results")

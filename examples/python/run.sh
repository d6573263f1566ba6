#!/usr/bin/env bash
# The Python examples, on the outputs of the taxi example:
#
#   bash examples/taxi/run.sh --rows 600000     # first: puts and computes s4://taxi/...
#   bash examples/python/run.sh
#
# Each script reads s4:// paths through the fsspec filesystem (pandas, duckdb,
# dask, a parquet round trip), checks what it read against the pipeline's
# result, and exits non-zero on a mismatch. Python: $PYTHON, else the repo's
# .venv/bin/python (which has the fsspec extra; elsewhere: pip install 's4[fsspec]').
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../common.sh"
PY=${PYTHON:-$repo/.venv/bin/python}

for script in taxi_pandas taxi_duckdb taxi_dask parquet_roundtrip; do
    step "$script.py" "$PY" "$here/$script.py"
done
print_timings
echo "python examples: ok"

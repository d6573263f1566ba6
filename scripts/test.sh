#!/usr/bin/env bash
# The test command: set up .venv, then run the whole suite (two workers, one per core).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k cp` or `-m soak` for the long soak.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 -q "$@"

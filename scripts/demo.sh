#!/usr/bin/env bash
# Quick start: set up, start a local 3-node cluster, run the taxi example.
#
#   bash scripts/demo.sh [--rows N]      (or ROWS=N; default 600,000)
#
# 1. `bash scripts/setup.sh` creates or refreshes .venv with s4 installed;
# 2. `.venv/bin/s4d local --nodes 3` starts a cluster in a temp dir, in the
#    background, and `s4ctl health` is polled until every node answers;
# 3. examples/taxi/run.sh runs the blog's pipeline and checks its results.
# The cluster is stopped and its temp dir removed on any exit (set KEEP=1 to
# keep the dir, with the daemons' logs). Exits non-zero if anything failed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
rows=${ROWS:-600000}
while [ $# -gt 0 ]; do
    case $1 in
        --rows) rows=$2; shift 2 ;;
        *) echo "usage: $0 [--rows N]" >&2; exit 2 ;;
    esac
done
HEALTH_WAIT_S=${HEALTH_WAIT_S:-30}
STOP_WAIT_S=15

cd "$repo"
bash scripts/setup.sh

cluster_dir=$(mktemp -d "${TMPDIR:-/tmp}/s4-demo.XXXXXX")
s4d_pid="" run_pid=""

# The cluster and the example each run in a session of their own (setsid), so
# that on any exit of this script the whole of each, children included, can be
# ended by process group. Ctrl-C and SIGTERM end this script, which runs this.
stop_all() {
    local code=$?
    if [ -n "$run_pid" ]; then
        kill -TERM -- "-$run_pid" 2>/dev/null || true
    fi
    if [ -n "$s4d_pid" ] && kill -0 "$s4d_pid" 2>/dev/null; then
        echo "demo: stopping the cluster"
        kill -TERM "$s4d_pid" 2>/dev/null || true
        for _ in $(seq $((STOP_WAIT_S * 10))); do
            kill -0 "$s4d_pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if [ -n "$s4d_pid" ]; then
        # s4d local stops its daemons on SIGTERM; if it could not, end its group.
        kill -KILL -- "-$s4d_pid" 2>/dev/null || true
    fi
    if [ "$code" != 0 ]; then
        echo "demo: FAILED (exit $code)" >&2
        for log in "$cluster_dir"/node*.log; do
            [ -s "$log" ] && { echo "--- tail of $log" >&2; tail -n 10 "$log" >&2; }
        done
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "demo: kept $cluster_dir"
    else
        rm -rf "$cluster_dir"
    fi
    exit "$code"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "demo: starting a 3-node cluster in $cluster_dir"
setsid .venv/bin/s4d local --nodes 3 --dir "$cluster_dir" >"$cluster_dir/s4d-local.log" 2>&1 &
s4d_pid=$!
export S4_CONF_PATH=$cluster_dir/s4.conf
export PATH=$repo/.venv/bin:$PATH

deadline=$((SECONDS + HEALTH_WAIT_S))
until [ -f "$S4_CONF_PATH" ] && s4ctl health >/dev/null 2>&1; do
    if ! kill -0 "$s4d_pid" 2>/dev/null; then
        echo "demo: s4d local exited:" >&2
        cat "$cluster_dir/s4d-local.log" >&2
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "demo: the cluster is not healthy after ${HEALTH_WAIT_S}s:" >&2
        s4ctl health >&2 || true
        exit 1
    fi
    sleep 0.2
done
s4ctl health

setsid bash examples/taxi/run.sh --rows "$rows" &
run_pid=$!
wait "$run_pid"
run_pid=""
echo "demo: ok"

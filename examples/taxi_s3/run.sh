#!/usr/bin/env bash
# The blog post's taxi analysis from S3 to S3: the pipeline s4 sits in.
#
#   bash examples/taxi_s3/run.sh [--rows N]      (or ROWS=N; default 600,000)
#
# Needs a running cluster ($S4_CONF_PATH or the other conf lookups) whose
# daemons have AWS credentials (for the local server, any will do:
# AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing in their environment).
# The S3 endpoint is $AWS_ENDPOINT_URL_S3; without it the script starts a local
# S3 API server (moto_server, which stands in for AWS) for its own run. It:
#   1. generates the taxi CSVs (../taxi/gen_taxi.py) and uploads them to
#      s3://taxi-raw/inputs/ (the durable input);
#   2. imports them: `s4ctl cp -r s3://taxi-raw/inputs/ s4://taxi-s3/inputs/`,
#      each node fetching the files it owns straight from S3;
#   3. counts trips per passenger count as ../taxi/run.sh does (map, map,
#      map-to-n, map-from-n);
#   4. exports the result: `s4ctl cp s4://taxi-s3/step4/results
#      s3://taxi-results/passenger_counts.csv`, from the node that holds it;
#   5. downloads that object with plain boto3 and diffs it with a
#      single-process count of the local CSVs (../taxi/check_local.py).
# Prints the time of every step; exits non-zero on any failure or mismatch.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../common.sh"
taxi="$repo/examples/taxi"
rows=${ROWS:-600000}
while [ $# -gt 0 ]; do
    case $1 in
        --rows) rows=$2; shift 2 ;;
        *) echo "usage: $0 [--rows N]" >&2; exit 2 ;;
    esac
done
bin=$(dirname "$S4CTL")
PY=${PY:-$([ -x "$bin/python" ] && echo "$bin/python" || echo python3)}
bucket=s4://taxi-s3
work=$(mktemp -d "${TMPDIR:-/tmp}/s4-taxi-s3.XXXXXX")
moto_pid=""
cleanup() {
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

endpoint=${AWS_ENDPOINT_URL_S3:-}
if [ -z "$endpoint" ]; then
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
    "$bin/moto_server" -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
    moto_pid=$!
    endpoint=http://127.0.0.1:$port
    for _ in $(seq 300); do
        "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
        sleep 0.1
    done
    echo "taxi_s3: started a local S3 API server (moto_server) at $endpoint"
fi
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
s3util() { "$PY" "$here/s3util.py" "$endpoint" "$@"; }
ep=(--endpoint-url "$endpoint")
echo "taxi_s3 example: $rows rows in 12 files, S3 at $endpoint, work dir $work"

step "generate $rows rows locally" python3 "$taxi/gen_taxi.py" "$work/inputs" --rows "$rows"
step "seed s3://taxi-raw/inputs/" s3util mb taxi-raw taxi-results
step "upload to S3" s3util put-dir "$work/inputs" s3://taxi-raw/inputs/
step "delete $bucket/" delete_prefix "$bucket/"

step "import S3 -> s4 (cp -r)" s4ctl cp -r "${ep[@]}" s3://taxi-raw/inputs/ "$bucket/inputs/"
step "map cut -d, -f1-5" s4ctl map "$bucket/inputs/" "$bucket/step1/" 'cut -d, -f1-5'
step "map passenger_counts.py" s4ctl map "$bucket/step1/" "$bucket/step2/" "python3 $(printf %q "$taxi/passenger_counts.py")"
step "map-to-n all to key results" s4ctl map-to-n "$bucket/step2/" "$bucket/step3/" 'cat > results && echo results'
step "map-from-n merge.py" s4ctl map-from-n "$bucket/step3/" "$bucket/step4/" "xargs cat | python3 $(printf %q "$taxi/merge.py")"
step "export s4 -> S3" s4ctl cp "${ep[@]}" "$bucket/step4/results" s3://taxi-results/passenger_counts.csv

step "download the result from S3" s3util get s3://taxi-results/passenger_counts.csv "$work/results.csv"
local_count() { python3 "$taxi/check_local.py" counts "$work/inputs" > "$work/expected.csv"; }
step "single-process count" local_count
awk -F, 'BEGIN { printf "%10s %12s\n", "passengers", "trips" } { printf "%10s %12s\n", $1, $2 }' "$work/results.csv"
if ! diff "$work/expected.csv" "$work/results.csv"; then
    echo "FAIL: the exported passenger counts differ from the single-process count (< local, > S3)" >&2
    exit 1
fi
echo "exported passenger counts match the single-process count"
print_timings
echo "taxi_s3 example: ok"

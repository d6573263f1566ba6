#!/usr/bin/env bash
# The blog post's NYC-taxi analysis, run through s4 and checked.
#
#   bash examples/taxi/run.sh [--rows N]      (or ROWS=N; default 3,000,000)
#
# Needs a running cluster ($S4_CONF_PATH or the other conf lookups) and s4ctl
# on PATH (else the repo's .venv/bin/s4ctl; or set S4CTL). It:
#   1. generates deterministic fake 2009 taxi CSVs (gen_taxi.py) in a temp dir
#      and puts them into s4://taxi/inputs/ (everything under s4://taxi/ is
#      deleted first, so the script can be rerun);
#   2. counts trips per passenger count: map `cut` -> map passenger_counts.py
#      -> map-to-n every result to one key `results` -> map-from-n merge.py;
#      prints the table and diffs it with a single-process count;
#   3. re-partitions the trips by passenger count: map-to-n
#      partition_by_passengers.py (PARTS files per count, default one per node)
#      -> map-from-n `xargs cat`; downloads the result and checks that every
#      row sits in its passenger count's files and none went missing.
# Prints the time of every step; exits non-zero on any failure or mismatch.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../common.sh"
rows=${ROWS:-3000000}
while [ $# -gt 0 ]; do
    case $1 in
        --rows) rows=$2; shift 2 ;;
        *) echo "usage: $0 [--rows N]" >&2; exit 2 ;;
    esac
done
bucket=s4://taxi
work=$(mktemp -d "${TMPDIR:-/tmp}/s4-taxi.XXXXXX")
trap 'rm -rf "$work"' EXIT

parts=${PARTS:-$(s4ctl config | grep -c :)}
echo "taxi example: $rows rows in 12 files, $parts partitions per passenger count, work dir $work"

step "generate $rows rows locally" python3 "$here/gen_taxi.py" "$work/inputs" --rows "$rows"
step "delete $bucket/" delete_prefix "$bucket/"
step "put inputs (cp -r)" s4ctl cp -r "$work/inputs/" "$bucket/inputs/"
s4ctl ls "$bucket/inputs/"

# --- passenger counts ---------------------------------------------------------
step "map cut -d, -f1-5" s4ctl map "$bucket/inputs/" "$bucket/step1/" 'cut -d, -f1-5'
step "map passenger_counts.py" s4ctl map "$bucket/step1/" "$bucket/step2/" "$(py passenger_counts.py)"
step "map-to-n all to key results" s4ctl map-to-n "$bucket/step2/" "$bucket/step3/" 'cat > results && echo results'
step "map-from-n merge.py" s4ctl map-from-n "$bucket/step3/" "$bucket/step4/" "xargs cat | $(py merge.py)"
step "fetch result" s4ctl cp "$bucket/step4/results" "$work/results.csv"
local_count() { python3 "$here/check_local.py" counts "$work/inputs" > "$work/expected.csv"; }
step "single-process count" local_count

awk -F, 'BEGIN { printf "%10s %12s\n", "passengers", "trips" } { printf "%10s %12s\n", $1, $2 }' "$work/results.csv"
if ! diff "$work/expected.csv" "$work/results.csv"; then
    echo "FAIL: s4 passenger counts differ from the single-process count (< local, > s4)" >&2
    exit 1
fi
echo "passenger counts match the single-process count"

# --- re-partition by passenger count ------------------------------------------
step "map-to-n partition_by_passengers.py $parts" \
    s4ctl map-to-n "$bucket/step1/" "$bucket/part1/" "$(py partition_by_passengers.py) $parts"
step "map-from-n xargs cat" s4ctl map-from-n "$bucket/part1/" "$bucket/part2/" 'xargs cat'
s4ctl ls "$bucket/part2/"
mkdir "$work/part2"
step "fetch partitions (cp -r)" s4ctl cp -r "$bucket/part2/" "$work/part2/"
if ! python3 "$here/check_local.py" partitions "$work/expected.csv" "$work/part2"; then
    echo "FAIL: the re-partition lost, duplicated or misplaced rows" >&2
    exit 1
fi
echo "re-partition matches the single-process count"

print_timings
echo "taxi example: ok"

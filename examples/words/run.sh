#!/usr/bin/env bash
# Word bucketing through s4: a shuffle by hash, checked against a local run.
#
#   bash examples/words/run.sh [--keys N] [--words N] [--buckets N]
#
# Needs a running cluster and s4ctl on PATH (else the repo's .venv/bin/s4ctl;
# or set S4CTL). Deletes everything under s4://words/ first, then:
#   put     local files 00000.. (words, one a line) -> s4://words/inputs/
#   map     bucket.py: each word -> `bucket word`
#   map-to-n partition.py: one file per bucket, `000_bucket0`, `001_bucket1`, ...
#           (bucket b lands on node b % nodes)
#   map-from-n `xargs cat`: merges each bucket's pieces into words/merged/<b:03d>_bucket<b>
# and checks the merged buckets word for word against check.py's local
# bucketing. Prints the time of every step; exits non-zero on any failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../common.sh"
keys=6 words=20000 buckets=6
while [ $# -gt 0 ]; do
    case $1 in
        --keys) keys=$2; shift 2 ;;
        --words) words=$2; shift 2 ;;
        --buckets) buckets=$2; shift 2 ;;
        *) echo "usage: $0 [--keys N] [--words N] [--buckets N]" >&2; exit 2 ;;
    esac
done
bucket=s4://words
work=$(mktemp -d "${TMPDIR:-/tmp}/s4-words.XXXXXX")
trap 'rm -rf "$work"' EXIT

put() {
    for file in "$work"/inputs/*; do
        s4ctl cp "$file" "$bucket/inputs/"
    done
}

step "generate $keys files of $words words" python3 "$here/gen_words.py" "$work/inputs" --keys "$keys" --words "$words"
step "delete $bucket/" delete_prefix "$bucket/"
step "put inputs" put
step "map bucket.py $buckets" s4ctl map "$bucket/inputs/" "$bucket/tagged/" "$(py bucket.py) $buckets"
step "map-to-n partition.py" s4ctl map-to-n "$bucket/tagged/" "$bucket/shuffled/" "$(py partition.py)"
step "map-from-n xargs cat" s4ctl map-from-n "$bucket/shuffled/" "$bucket/merged/" 'xargs cat'
s4ctl ls "$bucket/merged/"
mkdir "$work/merged"
step "fetch buckets (cp -r)" s4ctl cp -r "$bucket/merged/" "$work/merged/"
if ! python3 "$here/check.py" "$work/inputs" "$work/merged" "$buckets"; then
    echo "FAIL: s4's buckets differ from the local bucketing" >&2
    exit 1
fi

print_timings
echo "words example: ok"

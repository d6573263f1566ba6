"""Check s4's merged word buckets against a single-process bucketing.

    python3 check.py INPUT_DIR MERGED_DIR BUCKETS

INPUT_DIR holds the local input files; MERGED_DIR the downloaded output of
the map-from-n step (any depth). Every bucket must be exactly one file named
`<b:03d>_bucket<b>` holding exactly the words that hash to b (in any order).
Prints one line per bucket; exits 1 on any mismatch.
"""
import collections
import os
import sys

from bucket import bucket_of


def main() -> int:
    input_dir, merged_dir, buckets = sys.argv[1], sys.argv[2], int(sys.argv[3])
    expected = collections.defaultdict(collections.Counter)
    for name in sorted(os.listdir(input_dir)):
        with open(os.path.join(input_dir, name)) as f:
            for word in f.read().split():
                bucket = bucket_of(word, buckets)
                expected[f"{bucket:03d}_bucket{bucket}"][word] += 1
    got = {}
    errors = []
    for root, _, names in os.walk(merged_dir):
        for name in names:
            if name in got:
                errors.append(f"bucket {name} appears twice")
            with open(os.path.join(root, name)) as f:
                got[name] = collections.Counter(f.read().split())
    for name in sorted(set(expected) | set(got)):
        ok = got.get(name) == expected.get(name)
        print(f"{name}: {sum(got.get(name, {}).values())} words, "
              f"expected {sum(expected.get(name, {}).values())} {'ok' if ok else 'MISMATCH'}")
        if not ok:
            errors.append(f"{name} differs from the local bucketing")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

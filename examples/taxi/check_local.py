"""The single-process answers that run.sh checks s4's results against.

    python3 check_local.py counts INPUT_DIR
        `passengers,count` lines over every *.csv in INPUT_DIR (header skipped),
        sorted by passenger count: what the s4 pipeline must produce.

    python3 check_local.py partitions EXPECTED_COUNTS PART_DIR
        PART_DIR holds the downloaded re-partition (any depth). Checks that every
        file is `passengers_<n>_<k>.csv`, that all its rows have n passengers, and
        that rows per passenger count equal EXPECTED_COUNTS (output of `counts`).
        Prints one line per passenger count; exits 1 on any mismatch.

Deliberately plain: the csv module, no shortcuts shared with the s4 scripts.
"""
import collections
import csv
import glob
import os
import re
import sys

PART_NAME = re.compile(r"passengers_(\d+)_(\d{3})\.csv")


def counts(input_dir: str) -> None:
    totals = collections.Counter()
    for path in sorted(glob.glob(os.path.join(input_dir, "*.csv"))):
        with open(path, newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for row in reader:
                totals[int(row[3])] += 1
    for passengers, count in sorted(totals.items()):
        print(f"{passengers},{count}")


def partitions(expected_path: str, part_dir: str) -> int:
    with open(expected_path) as f:
        expected = {int(p): int(c) for p, c in csv.reader(f)}
    got = collections.Counter()
    files = collections.Counter()
    errors = []
    for root, _, names in os.walk(part_dir):
        for name in names:
            match = PART_NAME.fullmatch(name)
            if not match:
                errors.append(f"unexpected file {os.path.join(root, name)}")
                continue
            passengers = int(match.group(1))
            files[passengers] += 1
            with open(os.path.join(root, name), newline="") as f:
                for row in csv.reader(f):
                    if int(row[3]) != passengers:
                        errors.append(f"{name}: row with {row[3]} passengers")
                        break
                    got[passengers] += 1
    for passengers in sorted(set(expected) | set(got)):
        ok = expected.get(passengers, 0) == got[passengers]
        print(f"passengers={passengers} files={files[passengers]} rows={got[passengers]} "
              f"expected={expected.get(passengers, 0)} {'ok' if ok else 'MISMATCH'}")
        if not ok:
            errors.append(f"passengers={passengers}: {got[passengers]} rows, expected {expected.get(passengers, 0)}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "counts":
        counts(sys.argv[2])
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "partitions":
        return partitions(sys.argv[2], sys.argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Split taxi CSV on stdin into files by passenger count: the 1:n step of a shuffle.

    python3 partition_by_passengers.py PARTS

Each row (header skipped) goes to `passengers_<n>_<k:03d>.csv` in the current
directory, n its passenger count and k one of PARTS spreads, so one passenger
count's rows are spread over several keys (and so several nodes). The file
names are printed, one a line, for `s4ctl map-to-n`.

The blog used random.randint; here k comes from a generator seeded with the
input's name ($filename when s4 sets it), so reruns give the same keys.
"""
import os
import random
import sys

parts = int(sys.argv[1])
rng = random.Random("partition:" + os.environ.get("filename", ""))

sys.stdin.readline()  # header
files = {}
for line in sys.stdin:
    try:
        passengers = int(line.split(",", 4)[3])
    except (IndexError, ValueError):
        continue
    name = f"passengers_{passengers}_{rng.randrange(parts):03d}.csv"
    if name not in files:
        files[name] = open(name, "w")
    files[name].write(line)

for name, f in sorted(files.items()):
    f.close()
    print(name)

"""Count trips per passenger count: taxi CSV on stdin -> `passengers,count` lines.

The first line is the header and is skipped; Passenger_Count is the 4th column.
Output is sorted by passenger count so results are easy to diff.
"""
import collections
import sys

counts = collections.Counter()
sys.stdin.readline()  # header
for line in sys.stdin:
    counts[line.split(",", 4)[3]] += 1

for passengers, count in sorted(counts.items(), key=lambda kv: int(kv[0])):
    print(f"{passengers},{count}")

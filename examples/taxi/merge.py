"""Sum `passengers,count` lines from stdin (many partial results) into one table.

Output: `passengers,count` lines sorted by passenger count.
"""
import collections
import sys

totals = collections.Counter()
for line in sys.stdin:
    passengers, count = line.split(",")
    totals[int(passengers)] += int(count)

for passengers, count in sorted(totals.items()):
    print(f"{passengers},{count}")

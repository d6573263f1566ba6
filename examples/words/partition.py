"""Split `bucket word` lines on stdin into one file per bucket: the 1:n step.

Bucket b's words go to `<b:03d>_bucket<b>` in the current directory (so s4
places it on node b % nodes); the file names are printed for map-to-n.
"""
import sys

files = {}
for line in sys.stdin:
    bucket, word = line.split()
    name = f"{int(bucket):03d}_bucket{int(bucket)}"
    if name not in files:
        files[name] = open(name, "w")
    files[name].write(word + "\n")

for name, f in sorted(files.items()):
    f.close()
    print(name)

"""Tag each word with its bucket: words on stdin -> `bucket word` lines.

    python3 bucket.py BUCKETS

The bucket is crc32(word) % BUCKETS: stable in every process and Python
version (unlike hash()), so every node agrees on it.
"""
import sys
import zlib


def bucket_of(word: str, buckets: int) -> int:
    return zlib.crc32(word.encode()) % buckets


if __name__ == "__main__":
    buckets = int(sys.argv[1])
    for line in sys.stdin:
        for word in line.split():
            print(bucket_of(word, buckets), word)

"""The S3 side of run.sh, with boto3 (installed with s4): make buckets, upload
a local directory, download one object. Plain and separate from s4, so the
example's check does not trust what it checks.

    python3 s3util.py ENDPOINT mb BUCKET...
    python3 s3util.py ENDPOINT put-dir DIR s3://BUCKET/PREFIX/
    python3 s3util.py ENDPOINT get s3://BUCKET/KEY FILE
"""
import os
import sys

import boto3


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def main() -> None:
    endpoint, command, *args = sys.argv[1:]
    s3 = boto3.client("s3", endpoint_url=endpoint or None)
    if command == "mb":
        for bucket in args:
            s3.create_bucket(Bucket=bucket)
    elif command == "put-dir":
        local, url = args
        bucket, prefix = _split(url)
        for name in sorted(os.listdir(local)):
            s3.upload_file(os.path.join(local, name), bucket, prefix + name)
    elif command == "get":
        bucket, key = _split(args[0])
        s3.download_file(bucket, key, args[1])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()

"""S3 in and out: every node moves its own keys straight between S3 and its disk.

`s4ctl cp [-r] s3://... s4://...` (import) and back (export) send one request
to every node (`-r`) or to the one node that owns the key. The node does the
rest with its own S3 client and its own AWS credential chain (environment,
shared config and credentials files, instance role): credentials never travel
over the s4 protocol and the bytes never pass through the client.

Import, on each node: list the source prefix (paginated, every node lists it
whole and keeps the objects whose s4 key it owns), check every name and that
none of its keys exists yet, then fetch S3_OBJECTS_PER_NODE objects at once,
big ones as ranged GETs of S3_PART_BYTES in parallel, each GET conditional on
the ETag seen in the listing (an object replaced meanwhile is an error, not a
mix of two versions). Bytes land in a temp file, are hashed (xxh3) and
published atomically, like a put: an existing key is an error naming it.

Export, on each node: every key of the node under the source directory is
read in order, hashed as it is read and compared with the checksum stored at
write time; small keys go as one PUT after the check, big ones as a multipart
upload whose parts carry a CRC32 that S3 verifies, completed only after the
whole key hashed right. A failed multipart upload is aborted.

Errors: one S4Error naming the object and the node; work already published
stays (imported keys, exported objects): the rerun is explicit.

The S3 library is boto3, imported on a node's first S3 request and never by
the client. Measured here against a local moto_server (bench/RESULTS.md):
boto3's throughput matched obstore's (both limited by the server) and it is
the only candidate that reads the whole standard credential chain (obstore
reads no shared credentials file) and `$AWS_ENDPOINT_URL_S3` itself; its cost
is ~0.4 s of import plus ~0.3 s for the first client, once per daemon, and
~40 MiB of resident memory. Its calls block, so each runs in a worker thread.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import trio
import xxhash

from s4d import checksum, keys, limits, placement
from s4d.config import DaemonConfig
from s4d.controller import Progress, run_pool
from s4d.errors import (BadKey, BadRequest, ChecksumMismatch, NoSpace, NotFound, S4Error,
                        Unavailable)
from s4d.storage import Storage

SCHEME = "s3://"
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload


def url(bucket: str, obj: str) -> str:
    return f"{SCHEME}{bucket}/{obj}"


@dataclass(eq=False)  # hashed by identity: a job is its parts' limiter token
class Job:
    """One object to move: the S3 side, the s4 key, and (import) what the listing saw."""
    obj: str
    key: str
    size: int = 0
    etag: str = ""


class S3:
    """A node's S3 side: its boto3 clients (one per endpoint) and its transfers."""

    def __init__(self, storage: Storage, nodes: list, self_index: int, config: DaemonConfig):
        self.storage = storage
        self.nodes = nodes
        self.self_index = self_index
        self.name = "%s:%d" % nodes[self_index]
        self.config = config
        self.idle_s = config.idle_timeout_s
        self._clients: dict[str | None, object] = {}
        self._lock = threading.Lock()

    # --- the client ---------------------------------------------------------------
    def _make_client(self, endpoint: str | None):
        with self._lock:
            if endpoint not in self._clients:
                import boto3
                from botocore.config import Config
                config = Config(max_pool_connections=self.config.s3_connections_per_node,
                                connect_timeout=self.config.connect_timeout_s, read_timeout=self.idle_s,
                                retries={"max_attempts": self.config.s3_retries, "mode": "standard"})
                # endpoint None: boto3 reads $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, else AWS
                self._clients[endpoint] = boto3.session.Session().client(
                    "s3", endpoint_url=endpoint or None, config=config)
            return self._clients[endpoint]

    async def _client(self, endpoint: str | None):
        try:
            return await trio.to_thread.run_sync(self._make_client, endpoint)
        except Exception as e:
            raise self._error(e, f"S3 at {endpoint or 'the default endpoint'}") from None

    def _error(self, e: Exception, what: str) -> S4Error:
        """A boto3/botocore exception as one S4Error line naming `what` and this node."""
        if isinstance(e, S4Error):
            return type(e)(f"{what}: {e.message} (on {self.name})")
        from botocore import exceptions as bx
        where = f"(on {self.name})"
        if isinstance(e, bx.ClientError):
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code == "NoSuchBucket":
                bucket = error.get("BucketName")
                return NotFound(f"no such bucket: {SCHEME + bucket if bucket else what} {where}")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFound(f"no such object: {what} {where}")
            if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
                return BadRequest(f"access denied to {what} {where}")
            if code in ("PreconditionFailed", "412"):
                return BadRequest(f"{what} changed during the copy (its ETag is not the one "
                                  f"listed) {where}")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                return BadRequest(f"S3 refused the credentials of {self.name} ({code}) for {what}")
            return S4Error(f"S3 error on {what}: {code} {error.get('Message', '')} {where}")
        if isinstance(e, bx.NoCredentialsError):
            return BadRequest(f"no AWS credentials on {self.name} (environment, ~/.aws or "
                              f"instance role) for {what}")
        if isinstance(e, (bx.EndpointConnectionError, bx.ConnectionError)):
            return Unavailable(f"cannot reach S3 for {what} {where}: {e}")
        if isinstance(e, bx.BotoCoreError):
            return S4Error(f"S3 error on {what}: {e} {where}")
        if isinstance(e, OSError):
            return S4Error(f"{what}: {e.strerror or e} {where}")
        raise e  # a bug: the server reports it as internal

    # --- the shared driver ----------------------------------------------------------
    async def _run(self, jobs: list[Job], move, progress: Progress) -> None:
        """move(job, parts, progress) for every job, S3_OBJECTS_PER_NODE at once, at most
        S3_PARTS_PER_NODE GETs or PUTs in flight; the first error cancels the others
        (each cleans up after itself) and is raised."""
        progress.total = len(jobs)
        parts = trio.CapacityLimiter(self.config.s3_parts_per_node)

        async def one(job: Job) -> None:
            await move(job, parts, progress)
            progress.done += 1

        await run_pool(jobs, one, self.config.s3_objects_per_node)

    # --- import ---------------------------------------------------------------------
    async def s3_import(self, msg: dict, progress: Progress) -> None:
        bucket, obj, key = msg["bucket"], msg["object"], msg["key"]
        client = await self._client(msg.get("endpoint"))
        if msg["recursive"]:
            keys.check_prefix(key)
            jobs = [job for job in await self._listing(client, bucket, obj, key)
                    if placement.node_index(job.key, len(self.nodes)) == self.self_index]
        else:
            keys.check_key(key)
            owner = placement.node_index(key, len(self.nodes))
            if owner != self.self_index:  # a client whose conf orders the nodes differently
                raise BadRequest(f"{keys.url(key)} belongs on {'%s:%d' % self.nodes[owner]}, not on "
                                 f"{self.name}: the client's conf must list the nodes in the same order")
            jobs = [await self._head(client, bucket, obj, key)]
        for job in jobs:  # before any byte moves: an existing key fails the import here
            try:
                self.storage.check_new(job.key)
            except S4Error as e:
                raise type(e)(f"cannot import {url(bucket, job.obj)}: {e.message} "
                              f"(on {self.name})") from None
        await self._run(jobs, lambda job, parts, p: self._fetch(client, bucket, job, parts, p),
                        progress)

    async def _listing(self, client, bucket: str, prefix: str, dst: str) -> list[Job]:
        """Every object under prefix as a Job with its s4 key dst + relative name."""
        def pages() -> list:
            found = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                found += [(o["Key"], o["Size"], o["ETag"]) for o in page.get("Contents", ())]
            return found
        try:
            found = await trio.to_thread.run_sync(pages)
        except Exception as e:
            raise self._error(e, url(bucket, prefix)) from None
        jobs = []
        for name, size, etag in found:
            if name.endswith("/"):  # a console-made "folder": no data, nothing to store
                continue
            job = Job(name, dst + name[len(prefix):], size, etag)
            try:
                keys.check_key(job.key)
            except BadKey as e:
                raise BadKey(f"cannot import {url(bucket, name)}: {e.message}") from None
            jobs.append(job)
        return jobs

    async def _head(self, client, bucket: str, obj: str, key: str) -> Job:
        def head() -> dict:
            try:
                return client.head_object(Bucket=bucket, Key=obj)
            except Exception as e:  # a 404 without a body: was it the bucket?
                from botocore.exceptions import ClientError
                if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") == "404":
                    client.head_bucket(Bucket=bucket)
                raise
        try:
            meta = await trio.to_thread.run_sync(head)
        except Exception as e:
            from botocore.exceptions import ClientError
            if isinstance(e, ClientError) and e.operation_name == "HeadBucket":
                raise NotFound(f"no such bucket: {SCHEME}{bucket} (on {self.name})") from None
            raise self._error(e, url(bucket, obj)) from None
        return Job(obj, key, meta["ContentLength"], meta["ETag"])

    async def _fetch(self, client, bucket: str, job: Job, parts: trio.CapacityLimiter,
                     progress: Progress) -> None:
        what = f"{url(bucket, job.obj)} -> {keys.url(job.key)}"
        temp = self.storage.new_temp("s3")
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                async with _Parallel() as parallel:
                    for start, end in _ranges(job.size):
                        await parts.acquire_on_behalf_of((job, start))
                        parallel.start(self._get_range, client, bucket, job, start, end, fd,
                                       parts, progress)
                digest = await trio.to_thread.run_sync(checksum.hash_fd, fd, job.size)
            finally:
                os.close(fd)
            self.storage.publish(temp, job.key, digest)
        except NoSpace:
            raise NoSpace(f"no space left on {self.name} for {what}") from None
        except Exception as e:
            raise self._error(e, what) from None
        finally:
            self.storage.discard(temp)

    async def _get_range(self, client, bucket: str, job: Job, start: int, end: int, fd: int,
                         parts: trio.CapacityLimiter, progress: Progress) -> None:
        """Bytes [start, end) of the object into fd at start, by one GET (a thread:
        a cancel waits for at most one part)."""
        def get() -> None:
            request = {"Bucket": bucket, "Key": job.obj, "IfMatch": job.etag}
            if (start, end) != (0, job.size):
                request["Range"] = f"bytes={start}-{end - 1}"
            body = client.get_object(**request)["Body"]
            offset = start
            try:
                while offset < end and (chunk := body.read(min(limits.S3_READ_BYTES, end - offset))):
                    view = memoryview(chunk)
                    while view:
                        n = os.pwrite(fd, view, offset)
                        view = view[n:]
                        offset += n
            finally:
                body.close()
            if offset != end:
                raise BadRequest(f"got {offset - start} of the {end - start} bytes expected "
                                 f"from offset {start} (the object changed or the body was cut)")
        try:
            await trio.to_thread.run_sync(get)
        finally:
            parts.release_on_behalf_of((job, start))
        progress.bytes += end - start

    # --- export ---------------------------------------------------------------------
    async def s3_export(self, msg: dict, progress: Progress) -> None:
        bucket, obj, key = msg["bucket"], msg["object"], msg["key"]
        if msg["recursive"]:
            keys.check_prefix(key)
            local = await trio.to_thread.run_sync(self.storage.keys_under, key)
            jobs = [Job(obj + k[len(key):], k, size) for k, size in sorted(local)]
        else:
            _, size, _ = self.storage.stat(key)
            jobs = [Job(obj, key, size)]
        if not jobs:
            return
        client = await self._client(msg.get("endpoint"))
        await self._run(jobs, lambda job, parts, p: self._upload(client, bucket, job, parts, p),
                        progress)

    async def _upload(self, client, bucket: str, job: Job, parts: trio.CapacityLimiter,
                      progress: Progress) -> None:
        what = f"{keys.url(job.key)} -> {url(bucket, job.obj)}"
        try:
            path, size, digest = self.storage.stat(job.key)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if size <= limits.S3_MULTIPART_THRESHOLD_BYTES:
                    await self._put_whole(client, bucket, job, fd, size, digest, parts)
                else:
                    await self._put_parts(client, bucket, job, fd, size, digest, parts, progress)
                    return
            finally:
                os.close(fd)
            progress.bytes += size
        except Exception as e:
            raise self._error(e, what) from None

    def _check(self, job: Job, h, digest: str) -> None:
        if h.hexdigest() != digest:
            raise ChecksumMismatch(f"{keys.url(job.key)} is corrupt on disk (stored xxh3 {digest}, "
                                   f"read {h.hexdigest()}): not exported")

    async def _put_whole(self, client, bucket, job: Job, fd: int, size: int, digest: str,
                         parts: trio.CapacityLimiter) -> None:
        def put() -> None:
            h = xxhash.xxh3_64()
            data = _pread(fd, 0, size, h)
            self._check(job, h, digest)  # only verified bytes leave
            client.put_object(Bucket=bucket, Key=job.obj, Body=data, ChecksumAlgorithm="CRC32")
        async with parts:
            await trio.to_thread.run_sync(put)

    async def _put_parts(self, client, bucket, job: Job, fd: int, size: int, digest: str,
                         parts: trio.CapacityLimiter, progress: Progress) -> None:
        """A multipart upload: parts read in order (hashed as read), sent in parallel,
        completed only if the whole key hashed to its stored checksum; else aborted."""
        upload = (await trio.to_thread.run_sync(lambda: client.create_multipart_upload(
            Bucket=bucket, Key=job.obj, ChecksumAlgorithm="CRC32")))["UploadId"]
        h = xxhash.xxh3_64()
        done: list[dict] = []

        async def send(number: int, data: bytes, token) -> None:
            try:
                reply = await trio.to_thread.run_sync(lambda: client.upload_part(
                    Bucket=bucket, Key=job.obj, UploadId=upload, PartNumber=number, Body=data,
                    ChecksumAlgorithm="CRC32"))
            finally:
                parts.release_on_behalf_of(token)
            done.append({"PartNumber": number, "ETag": reply["ETag"],
                         "ChecksumCRC32": reply.get("ChecksumCRC32")})
            progress.bytes += len(data)

        try:
            async with _Parallel() as parallel:
                for number, (start, end) in enumerate(_ranges(size), 1):
                    token = (job, number)
                    await parts.acquire_on_behalf_of(token)
                    try:
                        data = await trio.to_thread.run_sync(_pread, fd, start, end - start, h)
                    except BaseException:
                        parts.release_on_behalf_of(token)
                        raise
                    parallel.start(send, number, data, token)
            self._check(job, h, digest)
            done.sort(key=lambda p: p["PartNumber"])
            await trio.to_thread.run_sync(lambda: client.complete_multipart_upload(
                Bucket=bucket, Key=job.obj, UploadId=upload, MultipartUpload={"Parts": done}))
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(self.idle_s):
                try:
                    await trio.to_thread.run_sync(lambda: client.abort_multipart_upload(
                        Bucket=bucket, Key=job.obj, UploadId=upload))
                except Exception:  # the first error is the one to report
                    pass
            raise


class _Parallel:
    """A nursery for the parts of one object: the first part that fails cancels the
    others and its exception (not a group of them) leaves the `async with`; so
    does an exception of the block itself, once the parts are cancelled."""

    async def __aenter__(self) -> "_Parallel":
        self._manager = trio.open_nursery()
        self._nursery = await self._manager.__aenter__()
        self._failure: list[BaseException] = []
        return self

    def start(self, fn, *args) -> None:
        async def run() -> None:
            try:
                await fn(*args)
            except Exception as e:
                self._failure.append(e)
                self._nursery.cancel_scope.cancel()
        if self._failure:
            raise self._failure[0]
        self._nursery.start_soon(run)

    async def __aexit__(self, etype, exc, tb) -> bool:
        raised = None
        if isinstance(exc, Exception):  # the block's own (start() raises a part's): the nursery
            raised, etype, exc, tb = exc, None, None, None  # must not wrap it in a group
            self._nursery.cancel_scope.cancel()
        swallowed = await self._manager.__aexit__(etype, exc, tb)  # e.g. the cancel of its own scope
        if self._failure:
            raise self._failure[0]
        if raised is not None:
            raise raised
        return swallowed


def _ranges(size: int) -> list[tuple[int, int]]:
    """[start, end) of each part: one for a small object, else parts of S3_PART_BYTES
    (larger when S3's 10,000-part limit needs it)."""
    if size <= limits.S3_MULTIPART_THRESHOLD_BYTES:
        return [(0, size)]
    part = max(limits.S3_PART_BYTES, -(-size // MAX_PARTS))
    return [(start, min(start + part, size)) for start in range(0, size, part)]


def _pread(fd: int, offset: int, length: int, h) -> bytes:
    """length bytes of fd from offset, fed to the hash h in order; short is an error."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise S4Error(f"the key's file ended at {offset + len(data)} bytes, short of its size")
        data += more
    h.update(data)
    return data


def split_url(text: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty."""
    if not text.startswith(SCHEME):
        raise BadRequest(f"not an s3:// url: {text}")
    bucket, _, obj = text[len(SCHEME):].partition("/")
    if not bucket:
        raise BadRequest(f"no bucket in {text}")
    return bucket, obj



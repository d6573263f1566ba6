"""A local S3 API server for the S3 tests: a real `moto_server` process.

moto_server (from `moto[server]`, a test extra) speaks the S3 HTTP API and
keeps objects in its own memory; it stands in for AWS. One is started per
test session (per xdist worker) on a free loopback port and stopped at the
end. Its access log (one line per request, with the client's address) is
kept, so a test can see who asked for what.

`aws_env` puts fake credentials in this process's environment (and so in
every s4d and s4ctl the tests start) and keeps the real ones out: no shared
config files, no instance-metadata lookups.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import free_port, wait_port

MOTO = str(Path(sys.executable).parent / "moto_server")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
# werkzeug's access log: `10.44.0.1 - - [date] "GET /bucket/key?x HTTP/1.1" 200 -`
LOG_LINE = re.compile(r'^(\S+) - - \[[^\]]*\] "(\w+) (\S+) HTTP/[\d.]+" (\d+)')


class S3Server:
    """One running moto_server; `command` runs it (e.g. inside a network namespace)."""

    def __init__(self, log: Path, host: str = "127.0.0.1", port: int | None = None,
                 prefix: tuple[str, ...] = ()):
        self.host, self.port = host, port or free_port()
        self.endpoint = f"http://{host}:{self.port}"
        self.log = log
        env = {**os.environ, **AWS_ENV, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*prefix, MOTO, "-H", host, "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)

    def wait(self, timeout: float = 30.0) -> None:
        wait_port(self.port, self.host, timeout)

    def client(self):
        import boto3
        return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                     region_name="us-east-1").client("s3", endpoint_url=self.endpoint)

    def requests(self) -> list[tuple[str, str, str, int]]:
        """(client address, method, path, status) of every request so far."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = LOG_LINE.match(line)
            if m:
                out.append((m.group(1), m.group(2), m.group(3), int(m.group(4))))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def aws_env():
    """Fake AWS credentials for this process and everything it starts."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    yield AWS_ENV
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3(aws_env, tmp_path_factory) -> S3Server:
    """A moto_server on loopback for the whole session (one per xdist worker)."""
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.wait()
        yield server
    finally:
        server.stop()

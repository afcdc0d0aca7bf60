"""A real Tidestore server for test suites: a child process on a free port with its own
data directory, yielding the endpoint and credentials, stopped (cleanly) afterwards.

    from tidestore.testing import tidestore_server

    with tidestore_server() as srv:
        s3 = srv.boto3_client()

pytest users get the `tidestore_server_fixture` fixture with `pytest -p tidestore.testing`
(or `from tidestore.testing import tidestore_server_fixture` in a conftest).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ACCESS_KEY = "TSTESTACCESSKEY00001"
SECRET_KEY = "tidestore-test-secret-key-0000000000000"


@dataclass
class Server:
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: str
    process: subprocess.Popen
    output: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def boto3_client(self, **config):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(signature_version="s3v4", retries={"max_attempts": 1},
                                          **config))

    def env(self) -> dict:
        """Environment for the AWS CLI (or any SDK) pointed at this server."""
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=self.endpoint)
        return env


def start(data_dir: str, *, listen: str = "127.0.0.1:0", access_key: str = ACCESS_KEY,
          secret_key: str = SECRET_KEY, extra_args=(), timeout: float = 30.0) -> Server:
    """Start `tidestore serve` and wait for its ready line."""
    cmd = [sys.executable, "-m", "tidestore", "serve", "--data-dir", data_dir, "--listen", listen,
           "--access-key", access_key, "--secret-key", secret_key, *extra_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list = []
    ready = threading.Event()
    endpoint = {}

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                endpoint["url"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or "url" not in endpoint:
        proc.kill()
        raise RuntimeError("tidestore did not start:\n" + "\n".join(lines))
    return Server(endpoint["url"], access_key, secret_key, data_dir, proc, lines)


def stop(server: Server, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    if server.process.poll() is None:
        server.process.send_signal(sig)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@contextlib.contextmanager
def tidestore_server(data_dir: str | None = None, **kw):
    """A running server for the duration of the block; its directory is removed
    afterwards unless you passed one."""
    own = data_dir is None
    data_dir = data_dir or tempfile.mkdtemp(prefix="tidestore-test-")
    srv = start(data_dir, **kw)
    try:
        yield srv
    finally:
        stop(srv)
        if own:
            shutil.rmtree(data_dir, ignore_errors=True)


try:
    import pytest

    @pytest.fixture
    def tidestore_server_fixture(tmp_path):
        with tidestore_server(str(tmp_path / "tidestore")) as srv:
            yield srv
except ImportError:  # pytest is a test dependency only
    pass


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll until predicate() is truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def write_until(predicate, write_one, timeout: float = 60.0, interval: float = 0.5):
    """Call write_one(i) (i = 0, 1, ...) every `interval` seconds until predicate() is
    truthy, for background work that only moves while writes keep coming (the cold
    tier's compaction waits for the next segment to ship). Returns predicate()'s
    value or raises TimeoutError."""
    count = itertools.count()

    def written_unless_done():
        value = predicate()
        if not value:
            write_one(next(count))
        return value
    return wait_for(written_unless_done, timeout, interval)

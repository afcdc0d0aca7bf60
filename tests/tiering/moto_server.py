"""moto's standalone S3 server as a real child process, for testing `s3://` shard stores
against a real endpoint over HTTP (DESIGN.md: the cold tier is tested against real
backends). Starting one takes 0.6-2 s here (cold caches: 2 s), so tests share one
per module.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

ACCESS_KEY = "moto-access-key"
SECRET_KEY = "moto-secret-key"  # moto accepts any credentials


@dataclass
class MotoServer:
    endpoint_url: str
    process: subprocess.Popen

    @functools.cached_property
    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def kill(self) -> None:
        """SIGKILL, as a crashed or unplugged endpoint."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(timeout: float = 30.0, attempts: int = 3) -> MotoServer:
    """Start `python -m moto.server` on a free port and wait until it answers (another
    process may take the port between our probe and moto's bind: then try another)."""
    for _ in range(attempts):
        port = _free_port()
        log = tempfile.TemporaryFile()  # a file, not a pipe: moto logs every request
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                    return MotoServer(url, proc)
            except OSError:
                time.sleep(0.05)
        server = MotoServer(url, proc)
        server.kill()
        log.seek(0)
        output = log.read().decode(errors="replace")
        if "Address already in use" not in output:
            raise RuntimeError(f"moto server did not start on port {port}:\n{output}")
    raise RuntimeError("moto server: no free port after several attempts")

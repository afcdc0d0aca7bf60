"""`tidestore dev-cluster`: a local group from one command, stopped by Ctrl-C, back
with its data on restart."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import boto3
import psutil
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_base_port(nodes: int = 3) -> int:
    """A PORT with PORT+i, PORT+100+i, PORT+200+i (TCP) and PORT+300+i (UDP) free."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for i in range(nodes):
                for off, kind in ((0, socket.SOCK_STREAM), (100, socket.SOCK_STREAM),
                                  (200, socket.SOCK_STREAM), (300, socket.SOCK_DGRAM)):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", base + off + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


class DevCluster:
    def __init__(self, data_dir: str, port: int):
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tidestore", "dev-cluster", "--nodes", "3",
                                      "--data-dir", data_dir, "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list = []
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.ready.wait(60), "\n".join(self.lines[-40:])
        assert self.proc.poll() is None, "\n".join(self.lines[-40:])
        text = "\n".join(self.lines)
        self.endpoints = re.findall(r"n\d: (http://\S+)", text)
        self.access = re.search(r"Access key: (\S+)", text).group(1)
        self.secret = re.search(r"Secret key: (\S+)", text).group(1)
        self.children = psutil.Process(self.proc.pid).children()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "Press Ctrl-C" in line:
                self.ready.set()
        self.ready.set()

    def client(self, i: int):
        return boto3.client("s3", endpoint_url=self.endpoints[i], aws_access_key_id=self.access,
                            aws_secret_access_key=self.secret, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 3, "mode": "standard"}))

    def ctrl_c(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)


def test_dev_cluster_serves_stops_on_ctrl_c_and_restarts_with_its_data(tmp_path):
    data_dir = str(tmp_path / "cluster")
    port = free_base_port()
    dev = DevCluster(data_dir, port)
    try:
        assert dev.endpoints == [f"http://127.0.0.1:{port + i}" for i in range(3)]
        assert len(dev.children) == 3
        dev.client(0).create_bucket(Bucket="laptop")
        dev.client(1).put_object(Bucket="laptop", Key="hello", Body=b"from a laptop")
        assert dev.client(2).get_object(Bucket="laptop", Key="hello")["Body"].read() == b"from a laptop"
    finally:
        code = dev.ctrl_c()
    assert code == 0
    time.sleep(0.2)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in dev.children)
    assert "Stopping the group" in "\n".join(dev.lines)

    again = DevCluster(data_dir, port)  # same directory: same credentials, same data
    try:
        assert (again.access, again.secret) == (dev.access, dev.secret)
        for i in range(3):
            assert again.client(i).get_object(Bucket="laptop", Key="hello")["Body"].read() == b"from a laptop"
    finally:
        assert again.ctrl_c() == 0

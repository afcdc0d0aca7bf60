"""A 3-node group of real `tidestore serve --config` processes for the cluster tests.

Every inter-node link goes through a cuttable loopback proxy (netproxy.py), so a
test can isolate a node; nodes can be killed with SIGKILL, stopped, and restarted on
the same data directory. Clients are real boto3 clients, one per node.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import boto3
from botocore.config import Config

from netproxy import TcpLink, UdpLink, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ACCESS_KEY = "TSCLUSTERTESTKEY0001"
SECRET_KEY = "cluster-test-secret-key-0000000000000000"
CLUSTER_SECRET = "cluster-test-shared-secret"


def _q(v) -> str:
    return json.dumps(v)


class Member:
    def __init__(self, group: "Group", node_id: str, data_dir: str):
        self.group, self.id, self.data_dir = group, node_id, data_dir
        self.s3 = free_port()
        self.raft = free_port()
        self.data = free_port()
        self.control = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen | None = None
        self.lines: list = []
        self.endpoint = f"http://127.0.0.1:{self.s3}"

    def client(self, **cfg):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1, "mode": "standard"},
                                          connect_timeout=5, read_timeout=30, **cfg))

    def config_text(self) -> str:
        lines = [f"node_id = {_q(self.id)}", f"listen = {_q(f'127.0.0.1:{self.s3}')}",
                 f"data_dir = {_q(self.data_dir)}",
                 f"raft_listen = {_q(f'127.0.0.1:{self.raft}')}",
                 f"data_listen = {_q(f'127.0.0.1:{self.data}')}",
                 f"control_listen = {_q(f'127.0.0.1:{self.control}')}",
                 f"cluster_secret = {_q(self.group.cluster_secret)}",
                 f"access_key = {_q(ACCESS_KEY)}", f"secret_key = {_q(SECRET_KEY)}",
                 "commit_timeout_s = 4.0", "barrier_timeout_s = 3.0", "quorum_timeout_s = 6.0", ""]
        lines += ["[engine]"] + [f"{k} = {_q(v)}" for k, v in self.group.engine.items()] + [""]
        lines += ["[cold]"] + [f"{k} = {_q(v)}" for k, v in self.group.cold.items()] + [""]
        for peer in self.group.members:
            if peer is self:
                continue
            links = self.group.links[(self.id, peer.id)]
            lines += ["[[peers]]", f"id = {_q(peer.id)}", f"listen = {_q(f'127.0.0.1:{peer.s3}')}",
                      f"raft = {_q(f'127.0.0.1:{peer.raft}')}", f"data = {_q(f'127.0.0.1:{peer.data}')}",
                      f"control = {_q(f'127.0.0.1:{peer.control}')}",
                      "[peers.route]"] + [f"{k} = {_q(f'127.0.0.1:{links[k].port}')}"
                                          for k in ("raft", "data", "control")] + [""]
        return "\n".join(lines)

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.id} is running"
        os.makedirs(self.data_dir, exist_ok=True)
        cfg = os.path.join(self.data_dir, "node.toml")
        with open(cfg, "w") as f:
            f.write(self.config_text())
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
        self.lines = []
        self.proc = subprocess.Popen([sys.executable, "-m", "tidestore", "serve", "--config", cfg,
                                      "--log-level", "WARNING"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        ready = threading.Event()

        def pump(proc=self.proc, lines=self.lines):
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if re.search(r"listening on http://", line):
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError(f"{self.id} did not start:\n" + "\n".join(self.lines[-40:]))

    def kill(self) -> None:
        """kill -9: no drain, no final checkpoint."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, timeout: float = 5.0) -> list:
        with urllib.request.urlopen(self.endpoint + "/_tidestore/status", timeout=timeout) as r:
            return json.load(r)["members"]

    def own_status(self, timeout: float = 5.0) -> dict:
        return self.status(timeout)[0]


class Group:
    def __init__(self, root: str, size: int = 3, cold: dict | None = None,
                 engine: dict | None = None):
        """`cold`: the members' [cold] table; by default one shared set of six
        directories under root/cold, as a group must share its cold stores.
        `engine`: the members' [engine] table."""
        self.root = root
        self.engine = dict(engine or {})
        self.cluster_secret = CLUSTER_SECRET
        self.cold = {"stores": [f"file://{root}/cold/drive-{i}" for i in range(6)], **(cold or {})}
        self.members = [Member(self, f"n{i + 1}", os.path.join(root, f"n{i + 1}")) for i in range(size)]
        self.links: dict = {}
        for a in self.members:
            for b in self.members:
                if a is not b:
                    self.links[(a.id, b.id)] = {"raft": TcpLink(b.raft), "data": TcpLink(b.data),
                                                "control": UdpLink(b.control)}

    def __getitem__(self, i: int) -> Member:
        return self.members[i]

    def start(self) -> "Group":
        for m in self.members:
            m.start()
        self.wait_leader()
        return self

    def close(self) -> None:
        for m in self.members:
            m.stop()
        for links in self.links.values():
            for link in links.values():
                link.close()

    # ---- the network ------------------------------------------------------------
    def isolate(self, member: Member, cut: bool = True) -> None:
        for (a, b), links in self.links.items():
            if member.id in (a, b):
                for link in links.values():
                    link.set_cut(cut)

    def heal(self, member: Member) -> None:
        self.isolate(member, cut=False)

    # ---- waiting ------------------------------------------------------------------
    def leader(self, among=None) -> Member | None:
        for m in among or self.members:
            if not m.running:
                continue
            try:
                st = m.own_status()
            except OSError:
                continue
            if st.get("role") == "leader":
                return m
        return None

    def wait_leader(self, among=None, timeout: float = 20.0) -> Member:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader(among)
            if leader is not None:
                # and every running member in `among` can serve a fresh read
                if all(self.healthy(m) for m in (among or self.members) if m.running):
                    return leader
            time.sleep(0.1)
        raise AssertionError("no leader elected in time: " + str(
            {m.id: (m.lines[-5:] if m.running else "stopped") for m in self.members}))

    @staticmethod
    def healthy(m: Member) -> bool:
        try:
            with urllib.request.urlopen(m.endpoint + "/_tidestore/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_converged(self, timeout: float = 30.0, among=None) -> dict:
        """Every running member applied the same LSN and misses no chunk."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                sts = {m.id: m.own_status() for m in (among or self.members) if m.running}
            except OSError as exc:
                last = exc
                time.sleep(0.2)
                continue
            applied = {s["applied_lsn"] for s in sts.values()}
            commits = {s["commit_lsn"] for s in sts.values()}
            if len(applied) == 1 and applied == commits and all(
                    s.get("missing_chunks", 0) == 0 for s in sts.values()):
                return sts
            last = sts
            time.sleep(0.2)
        raise AssertionError(f"replicas did not converge: {last}")


def catalog(client) -> dict:
    """Everything a replica serves: bucket -> {key: (size, etag)}."""
    out = {}
    for b in client.list_buckets()["Buckets"]:
        objs = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            for o in page.get("Contents", []):
                objs[o["Key"]] = (o["Size"], o["ETag"])
        out[b["Name"]] = objs
    return out

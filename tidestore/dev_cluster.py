"""`tidestore dev-cluster`: a local group of real node processes, for a laptop.

Each node is a `tidestore serve --config DIR/<id>/node.toml` child process, exactly as
on three machines. The group's layout (ports, cluster secret, S3 credentials) is
written once to DIR/cluster.json and reused on restart, so the same directory comes
back with its data. The group's cold tier is six directories under DIR/cold. Ports: S3 on PORT+i; Raft, data and control on PORT+100+i,
PORT+200+i, PORT+300+i.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from . import credentials

LAYOUT = "cluster.json"


def layout(data_dir: str, nodes: int, port: int, host: str, access_key: str | None,
           secret_key: str | None) -> dict:
    path = os.path.join(data_dir, LAYOUT)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if len(saved["nodes"]) != nodes:
            raise SystemExit(f"tidestore: {data_dir} holds a {len(saved['nodes'])}-node group; "
                             f"use --nodes {len(saved['nodes'])} or another directory")
        if access_key and (access_key, secret_key) != (saved["access_key"], saved["secret_key"]):
            raise SystemExit("tidestore: the group in this directory has other credentials")
        return saved
    if not access_key:
        access_key, secret_key = credentials.generate()
    group = {
        "cluster_secret": secrets.token_urlsafe(32),
        "access_key": access_key, "secret_key": secret_key,
        "nodes": [{"id": f"n{i + 1}", "listen": f"{host}:{port + i}",
                   "raft": f"{host}:{port + 100 + i}", "data": f"{host}:{port + 200 + i}",
                   "control": f"{host}:{port + 300 + i}"} for i in range(nodes)],
    }
    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(group, f, indent=1)
    return group


def node_toml(group: dict, me: dict, data_dir: str) -> str:
    def q(v):
        return json.dumps(v)  # a JSON string is a valid TOML basic string

    lines = [f"node_id = {q(me['id'])}", f"listen = {q(me['listen'])}",
             f"data_dir = {q(os.path.join(data_dir, me['id']))}",
             f"raft_listen = {q(me['raft'])}", f"data_listen = {q(me['data'])}",
             f"control_listen = {q(me['control'])}",
             f"cluster_secret = {q(group['cluster_secret'])}",
             f"access_key = {q(group['access_key'])}", f"secret_key = {q(group['secret_key'])}", ""]
    # one cold tier for the group (every member reads what the leader ships): six
    # drives under DIR/cold, shared by the nodes as six buckets would be
    lines += ["[cold]", "stores = [" + ", ".join(
        q(f"file://{os.path.join(data_dir, 'cold', f'drive-{i}')}") for i in range(6)) + "]", ""]
    for peer in group["nodes"]:
        if peer["id"] == me["id"]:
            continue
        lines += ["[[peers]]"] + [f"{k} = {q(peer[k])}" for k in ("id", "listen", "raft", "data", "control")] + [""]
    return "\n".join(lines)


def run(data_dir: str, nodes: int, port: int, host: str, access_key: str | None,
        secret_key: str | None, log_level: str, out=sys.stdout) -> int:
    data_dir = os.path.abspath(data_dir)
    group = layout(data_dir, nodes, port, host, access_key, secret_key)
    procs = []
    ready = []
    for me in group["nodes"]:
        node_dir = os.path.join(data_dir, me["id"])
        os.makedirs(node_dir, exist_ok=True)
        cfg = os.path.join(node_dir, "node.toml")
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(node_toml(group, me, data_dir))
        proc = subprocess.Popen([sys.executable, "-m", "tidestore", "serve", "--config", cfg,
                                 "--log-level", log_level],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                                preexec_fn=_die_with_parent)
        event = threading.Event()
        threading.Thread(target=_pump, args=(me["id"], proc, event, out), daemon=True).start()
        procs.append(proc)
        ready.append(event)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + 60
    while not all(e.is_set() for e in ready) and not stop.is_set():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            print("tidestore: a node failed to start; stopping the group", file=out, flush=True)
            _stop_all(procs)
            return 1
        time.sleep(0.05)
    if not stop.is_set() and not _wait_healthy(group, stop):
        print("tidestore: the group has no leader after 30 s (see the nodes' output)", file=out, flush=True)
    if not stop.is_set():
        print(f"\nTidestore dev cluster: {nodes} nodes, data in {data_dir}", file=out)
        for me in group["nodes"]:
            print(f"  {me['id']}: http://{me['listen']}", file=out)
        print(f"Access key: {group['access_key']}", file=out)
        print(f"Secret key: {group['secret_key']}", file=out)
        print(f"Status: tidestore status --endpoint http://{group['nodes'][0]['listen']}", file=out)
        print("Press Ctrl-C to stop all nodes.", file=out, flush=True)
    while not stop.is_set():
        if all(p.poll() is not None for p in procs):
            break
        stop.wait(0.2)
    print("Stopping the group", file=out, flush=True)
    _stop_all(procs)
    return 0


def _wait_healthy(group: dict, stop: threading.Event, timeout: float = 30.0) -> bool:
    """Until every node can serve a fresh read (the group has elected a leader)."""
    deadline = time.monotonic() + timeout
    pending = [n["listen"] for n in group["nodes"]]
    while pending and time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://{pending[0]}/_tidestore/health", timeout=5):
                pending.pop(0)
                continue
        except OSError:
            stop.wait(0.1)
    return not pending


def _die_with_parent() -> None:
    """In the child: get SIGTERM if dev-cluster itself dies (even by SIGKILL), so no
    node outlives it. Nodes run in sessions of their own, so that a terminal's Ctrl-C
    reaches only dev-cluster, which then stops them in order."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pump(node_id: str, proc, ready: threading.Event, out) -> None:
    for line in proc.stdout:
        print(f"[{node_id}] {line.rstrip()}", file=out, flush=True)
        if "listening on" in line:
            ready.set()


def _stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

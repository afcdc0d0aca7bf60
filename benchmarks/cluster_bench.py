"""Cluster benchmark: a 3-node Tidestore group against a single node, same machine, one run.

Usage (from the repository root, in an environment with the project installed, psutil
and wrk; py-spy only for --py-spy):

    python benchmarks/cluster_bench.py              # default run, about 3 minutes
    python benchmarks/cluster_bench.py --quick      # shorter phases, under 2 minutes
    python benchmarks/cluster_bench.py --duration 30 --keep --out report.json
    python benchmarks/cluster_bench.py --py-spy /tmp/prof   # + profiled PUT phases afterwards

The servers are real processes started as users start them: `tidestore serve` for the
single node, then (after the single node is stopped) `tidestore dev-cluster --nodes 3`
for the group. Each deployment gets the same load, one phase at a time, with SigV4 auth
on and every PUT durable before its 200 (in the group: its chunks durable on a quorum
and its entry committed through Raft). On the group every phase runs twice: through the
leader and through a follower (the roles are read from /_tidestore/status before each
phase; a leader change during a phase is reported).

What it measures, on the single node and on the group (leader, follower):

* 4 KiB PUT: ops/s and p50/p99 latency at concurrency 16: tens of thousands of distinct
  PUTs to distinct keys, signed here beforehand and replayed by `wrk` through a
  generated Lua script (s3_bench's generator; an asyncio client without wrk).
* Commit latency: sequential 4 KiB PUTs (concurrency 1, one keep-alive connection,
  1,000 requests; --quick 300), p50/p99: what one acknowledged write costs end to end.
  Sequential 4 KiB GETs (concurrency 1, 500; --quick 300) are timed the same way: on the
  group their latency is mostly the read barrier's (one Raft no-op per read when nothing
  coalesces them; a follower first asks the leader over QUIC).
* 4 KiB GET: ops/s and p50/p99 at concurrency 16 over 1,000 pre-written keys.
* 64 MiB PUT and GET: MB/s (MB = 10^6 bytes) over sequential repetitions, streamed with
  http.client and signed with UNSIGNED-PAYLOAD; every GET's bytes are compared with
  what was PUT. The group's GETs (leader and follower) read the same objects.
* CPU of the server processes per phase (the group's three node processes together,
  and each node's share, and how much of it is system time), CPU per request, peak
  RSS; on the group also the Raft entries committed and each node's Raft journal fsyncs,
  the node-to-node data connections closed (TIME-WAIT sockets on the data ports: opened
  and closed within the phase rather than pooled), and node log warnings per phase.

Client and servers share this machine's cores (the output says how many): the group's
three nodes, the load generator and this script all compete for them, so the ratios are
what one machine gives, not what three machines would.

Between phases the run waits until the servers are idle again (and, in the group, every
member has applied everything and misses no chunk), so one phase's background work does
not land in the next.

Goals (from the issue): 3-node 4 KiB PUT >= 40% of the single-node rate, judged through
the leader and through a follower separately; follower GETs within 20% of leader GETs
(|1 - follower/leader| <= 0.20), for 4 KiB and for 64 MiB. Every goal gets a verdict,
met or NOT MET.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from s3_bench import (  # noqa: E402
    ACCESS_KEY, BUCKET, KiB, MB, MiB, REPO, SECRET_KEY, Monitor, PySpy, PythonGenerator,
    RequestSet, Signer, Target, WrkGenerator, _parse_head, check_get, find_wrk, get_large,
    machine_info, put_large, put_many, simple_request, small_get_set, small_put_set,
    start_tidestore, summarize_collapsed,
)
from bench_support import table as _table, Tee  # noqa: E402

GOAL_PUT_RATIO = 0.40  # 3-node small PUT / single-node small PUT
GOAL_FOLLOWER_GET = 0.20  # |1 - follower GET / leader GET|
OTHERS_WARN = 0.15  # other processes using more than 15% of a core during a phase: say so
SINGLE, LEADER, FOLLOWER = "single", "leader", "follower"
WHERE = (SINGLE, LEADER, FOLLOWER)


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---- the 3-node group, as `tidestore dev-cluster` runs it ------------------------------------
def _port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(nodes: int = 3) -> int:
    """P such that S3 (P+i), Raft (P+100+i), data (P+200+i) as TCP and control
    (P+300+i) as UDP are all free; below the ephemeral range, so no client
    connection of this run can take one meanwhile."""
    low, high = 10000, 32768
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = min(high, int(f.read().split()[0]))
    rng = random.Random()
    for _ in range(500):
        p = rng.randrange(low, high - 300 - nodes)
        if (all(_port_free(p + off + i, socket.SOCK_STREAM) for off in (0, 100, 200) for i in range(nodes))
                and all(_port_free(p + 300 + i, socket.SOCK_DGRAM) for i in range(nodes))):
            return p
    raise RuntimeError("no free block of ports for the group")


def http_json(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            return exc.code, json.load(exc)
        return exc.code, {}


@dataclass
class Node:
    id: str
    port: int
    proc: psutil.Process
    target: Target


class Group:
    """`python -m tidestore dev-cluster --nodes 3` in its own session. Its node processes
    are its children but each in a session of its own (dev-cluster starts them with
    start_new_session), so stopping the group's process group alone would leave them
    running: stop() signals dev-cluster, then kills any node still alive, one by one."""

    READY = "Press Ctrl-C to stop all nodes."

    def __init__(self, work: str, nodes: int = 3):
        self.data_dir = os.path.join(work, "group")
        self.port = free_port_block(nodes)
        self.n = nodes
        self.lines: deque = deque(maxlen=400)
        self.noteworthy: list = []  # node log lines that are warnings, errors, tracebacks
        self.nodes: dict = {}
        self._node_procs: list = []
        cmd = [sys.executable, "-m", "tidestore", "dev-cluster", "--nodes", str(nodes),
               "--data-dir", self.data_dir, "--port", str(self.port),
               "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.READY in line:
                self._ready.set()
            elif re.search(r"WARNING|ERROR|CRITICAL|Traceback|Error:|Drain timeout|Recovered", line):
                self.noteworthy.append((time.monotonic(), line))
        self._ready.set()

    def wait_ready(self, timeout: float = 90.0) -> None:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError("dev-cluster did not start:\n" + "\n".join(list(self.lines)[-40:]))
        deadline = time.monotonic() + 10
        while True:
            kids = psutil.Process(self.proc.pid).children()
            if len(kids) >= self.n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self._node_procs = kids
        for p in kids:
            m = re.search(r"[/\\](n\d+)[/\\]node\.toml", " ".join(p.cmdline()))
            if not m:
                continue
            nid = m.group(1)
            port = self.port + int(nid[1:]) - 1
            hostport = f"127.0.0.1:{port}"
            tgt = Target(nid, "127.0.0.1", port, p.pid, Signer(hostport, ACCESS_KEY, SECRET_KEY),
                         lambda: None, os.path.join(self.data_dir, nid))
            self.nodes[nid] = Node(nid, port, p, tgt)
        if len(self.nodes) != self.n:
            raise RuntimeError(f"found {len(self.nodes)} node processes under dev-cluster, not {self.n}")
        self.wait_healthy(60)

    def status(self, via: Node | None = None) -> list:
        """Every member's status as one node sees it (a node that answers)."""
        order = [via] if via else []
        order += [n for n in self.nodes.values() if n is not via]
        last = None
        for n in order:
            try:
                code, body = http_json(n.port, "/_tidestore/status")
                if code == 200:
                    return body["members"]
            except (OSError, ValueError) as exc:
                last = exc
        raise RuntimeError(f"no node answers /_tidestore/status: {last}")

    def healthy(self, node: Node) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return http_json(node.port, "/_tidestore/health")[0] == 200
        return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                st = self.status()
                if (sum(m.get("role") == "leader" for m in st) == 1 and all(m.get("healthy") for m in st)
                        and all(self.healthy(n) for n in self.nodes.values())):
                    return
            time.sleep(0.2)
        raise RuntimeError("the group did not become healthy: " + "\n".join(list(self.lines)[-30:]))

    def roles(self, prefer_follower: str | None = None) -> tuple[Node, Node, list]:
        """(leader, a follower, status): the follower measured is `prefer_follower` while it
        stays a follower, else the first one by id."""
        deadline = time.monotonic() + 20
        while True:
            st = self.status()
            leaders = [m["node_id"] for m in st if m.get("role") == "leader"]
            followers = sorted(m["node_id"] for m in st if m.get("role") == "follower")
            if len(leaders) == 1 and followers:
                f = prefer_follower if prefer_follower in followers else followers[0]
                return self.nodes[leaders[0]], self.nodes[f], st
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader in the group: {st}")
            time.sleep(0.2)

    def converged(self) -> tuple[bool, str]:
        st = self.status()
        applied = {m["node_id"]: m.get("applied_lsn") for m in st}
        bad = [f"{m['node_id']}: " + ("unhealthy" if not m.get("healthy") else
                                      f"lag {m.get('lag')}, missing chunks {m.get('missing_chunks')}")
               for m in st if not m.get("healthy") or m.get("lag") or m.get("missing_chunks")]
        if len(set(applied.values())) > 1:
            bad.append(f"applied LSNs differ: {applied}")
        return not bad, "; ".join(bad)

    def stop(self) -> None:
        procs = list(self._node_procs)
        with contextlib.suppress(psutil.Error):
            known = {p.pid for p in procs}
            procs += [p for p in psutil.Process(self.proc.pid).children(recursive=True) if p.pid not in known]
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # dev-cluster stops its nodes
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for p in procs:  # a node dev-cluster did not stop (each is its own process group)
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        if os.getpgid(p.pid) == p.pid:
                            os.killpg(p.pid, signal.SIGKILL)
                    p.kill()
                    p.wait(10)
        with contextlib.suppress(Exception):
            self.proc.stdout.close()


# ---- measuring ------------------------------------------------------------------------------------
def proc_cpu(p: psutil.Process) -> float:
    return sum(proc_cpu2(p))


def proc_cpu2(p: psutil.Process) -> tuple[float, float]:
    """(user, system) CPU seconds of one process."""
    with contextlib.suppress(psutil.Error):
        t = p.cpu_times()
        return t.user, t.system
    return 0.0, 0.0


def data_time_wait(group: Group | None) -> set:
    """TIME-WAIT TCP sockets on the group's data ports (node-to-node chunk connections
    that were closed): new ones after a phase = connections opened and closed in it."""
    if group is None:
        return set()
    ports = {group.port + 200 + i for i in range(group.n)}
    with contextlib.suppress(psutil.Error, OSError):
        return {(c.laddr, c.raddr) for c in psutil.net_connections("tcp4")
                if c.status == psutil.CONN_TIME_WAIT and c.raddr
                and (c.laddr.port in ports or c.raddr.port in ports)}
    return set()


def raft_snapshot(group: Group | None) -> dict | None:
    if group is None:
        return None
    with contextlib.suppress(Exception):
        st = group.status()
        return {m["node_id"]: {k: m.get(k) for k in ("role", "term", "commit_lsn", "applied_lsn",
                                                   "journal_fsyncs", "leader")} for m in st}
    return None


@contextlib.contextmanager
def measured(mon: Monitor, procs: dict, group: Group | None = None):
    """mon.phase() (wall, peak RSS, other load) + each server process's CPU (user and
    system); server_cpu_s is their sum (the group: its three node processes, not the
    dev-cluster parent). On the group also the Raft entries committed, journal fsyncs,
    node log lines worth a look, and any leader change."""
    snap0 = raft_snapshot(group)
    tw0 = data_time_wait(group)
    logged0 = len(group.noteworthy) if group else 0
    cpu0 = {n: proc_cpu2(p) for n, p in procs.items()}
    with mon.phase() as ph:
        yield ph
        cpu1 = {n: proc_cpu2(p) for n, p in procs.items()}
    ph["node_cpu_s"] = {n: sum(cpu1[n]) - sum(cpu0[n]) for n in procs}
    ph["server_tree_cpu_s"] = ph["server_cpu_s"]
    ph["server_cpu_s"] = sum(ph["node_cpu_s"].values())
    ph["server_sys_s"] = sum(cpu1[n][1] - cpu0[n][1] for n in procs)
    if group:
        time.sleep(0.05)  # the log pump runs behind
        kinds: dict = {}
        for _t, ln in group.noteworthy[logged0:]:
            node = re.match(r"\[(n\d+)\]", ln)
            kinds.setdefault(_log_kind(ln), Counter())[node.group(1) if node else "?"] += 1
        ph["node_log"] = {k: dict(v) for k, v in kinds.items()}
    snap1 = raft_snapshot(group)
    if group:
        ph["data_conns_closed"] = len(data_time_wait(group) - tw0)
    if snap0 and snap1:
        lead0 = [n for n, m in snap0.items() if m["role"] == "leader"]
        lead1 = [n for n, m in snap1.items() if m["role"] == "leader"]
        ph["raft"] = {
            "entries": max(m["commit_lsn"] or 0 for m in snap1.values())
            - max(m["commit_lsn"] or 0 for m in snap0.values()),
            "fsyncs": {n: (snap1[n]["journal_fsyncs"] or 0) - (snap0[n]["journal_fsyncs"] or 0)
                       for n in snap1 if n in snap0},
            "roles": {n: m["role"] for n, m in snap0.items()},
            "leader_before": lead0, "leader_after": lead1,
            "term_before": max(m["term"] or 0 for m in snap0.values()),
            "term_after": max(m["term"] or 0 for m in snap1.values()),
        }


def _log_kind(line: str) -> str:
    """A node log line without its node, time, numbers: what kind of event it was."""
    text = re.sub(r"^\[n\d+\]\s+(\d{4}-\d\d-\d\d [\d:,]+\s+)?", "", line)
    return re.sub(r"\d+", "N", text)[:72]


def settle(procs: dict, group: Group | None, idle_cores: float, timeout: float) -> tuple[float, str]:
    """Wait until the servers are idle (CPU within 0.1 core of their idle level, twice
    in a row) and, in the group, every member has applied everything and misses no
    chunk. (seconds waited, what was still not settled at the timeout or '')."""
    t0 = time.monotonic()
    quiet_runs = 0
    why = ""
    while time.monotonic() - t0 < timeout:
        try:
            ok, why = group.converged() if group else (True, "")
        except RuntimeError as exc:
            ok, why = False, str(exc)
        c0 = sum(proc_cpu(p) for p in procs.values())
        time.sleep(0.4)
        cores = (sum(proc_cpu(p) for p in procs.values()) - c0) / 0.4
        quiet_runs = quiet_runs + 1 if cores <= idle_cores + 0.10 else 0
        if not ok:
            quiet_runs = 0
        elif quiet_runs < 2:
            why = f"servers still busy ({100 * cores:.0f}% CPU)"
        if quiet_runs >= 2:
            return time.monotonic() - t0, ""
    return time.monotonic() - t0, why


def idle_cpu(procs: dict, seconds: float = 2.0) -> float:
    c0 = sum(proc_cpu(p) for p in procs.values())
    time.sleep(seconds)
    return (sum(proc_cpu(p) for p in procs.values()) - c0) / seconds


def _read_head(rf) -> bytes:
    lines = []
    while True:
        ln = rf.readline(65537)
        if not ln:
            raise ConnectionError("connection closed before a response")
        lines.append(ln)
        if ln in (b"\r\n", b"\n"):
            return b"".join(lines)


def sequential(target: Target, reqs: RequestSet, count: int, expect: bytes | None = None) -> dict:
    """`count` requests of `reqs`, one at a time on one keep-alive connection, each timed
    from its first byte sent to the last byte of its response read. GET bodies are
    compared with `expect`."""
    payloads = [("\r\n".join(lines) + "\r\n\r\n").encode() + reqs.body for lines in reqs.heads[:count]]
    lat: list = []
    errors: Counter = Counter()
    sock = rf = None
    t_cpu = time.process_time()
    t0 = time.perf_counter()
    try:
        for p in payloads:
            if sock is None:
                sock = socket.create_connection((target.host, target.port), timeout=60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                rf = sock.makefile("rb")
            t = time.perf_counter()
            try:
                sock.sendall(p)
                status, length, chunked, close = _parse_head(_read_head(rf))
                if chunked:
                    parts = []
                    while True:
                        size = int(rf.readline().split(b";")[0], 16)
                        parts.append(rf.read(size + 2)[:size])
                        if size == 0:
                            break
                    body = b"".join(parts)
                else:
                    body = rf.read(length) if length else b""
            except (OSError, ValueError, IndexError):
                errors["read"] += 1
                with contextlib.suppress(OSError):
                    sock.close()
                sock = None
                continue
            lat.append(time.perf_counter() - t)
            if status != 200:
                errors["status"] += 1
            elif expect is not None and body != expect:
                errors["content"] += 1
            if close:
                sock.close()
                sock = None
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                rf.close()
                sock.close()
    secs = time.perf_counter() - t0
    lat.sort()

    def pct(q):
        return lat[max(0, min(len(lat) - 1, math.ceil(len(lat) * q / 100) - 1))] * 1000 if lat else float("nan")

    return {"ops": len(lat) / secs, "requests": len(lat), "seconds": secs, "p50_ms": pct(50),
            "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": lat[-1] * 1000 if lat else float("nan"),
            "mean_ms": 1000 * sum(lat) / len(lat) if lat else float("nan"), "errors": dict(errors),
            "gen_cpu_s": time.process_time() - t_cpu}


# ---- formatting -------------------------------------------------------------------------------------
def fmt_cpu(ph: dict, requests: int | None = None, roles: dict | None = None) -> str:
    wall = ph["wall_s"]
    s = (f"server CPU {100 * ph['server_cpu_s'] / wall:.0f}% (sys "
         f"{100 * ph.get('server_sys_s', 0) / max(1e-9, ph['server_cpu_s']):.0f}% of it)")
    nodes = ph.get("node_cpu_s", {})
    if len(nodes) > 1:
        s += " [" + ", ".join(f"{n}{'/' + roles[n][0].upper() if roles and n in roles else ''} "
                              f"{100 * c / wall:.0f}%" for n, c in sorted(nodes.items())) + "]"
    if requests:
        s += f" = {1e6 * ph['server_cpu_s'] / requests:.0f} us/request"
    return s


def fmt_raft(ph: dict, requests: int) -> str:
    r = ph.get("raft")
    if not r:
        return ""
    roles = r.get("roles", {})
    s = (f"; Raft: {r['entries']} entries ({r['entries'] / max(1, requests):.2f}/request), journal fsyncs "
         + ", ".join(f"{n}{'/L' if roles.get(n) == 'leader' else ''} {v}" for n, v in sorted(r["fsyncs"].items())))
    if "data_conns_closed" in ph:
        s += (f"; node-to-node data connections closed: {ph['data_conns_closed']} "
              f"({ph['data_conns_closed'] / max(1, requests):.2f}/request)")
    logged = ph.get("node_log") or {}
    for kind, by_node in sorted(logged.items(), key=lambda kv: -sum(kv[1].values()))[:3]:
        s += (f"; node log: {sum(by_node.values())}x {kind!r} ("
              + ", ".join(f"{n} {c}" for n, c in sorted(by_node.items())) + ")")
    if r["leader_before"] != r["leader_after"] or r["term_before"] != r["term_after"]:
        s += (f"; LEADER CHANGED {','.join(r['leader_before']) or '-'} (term {r['term_before']}) -> "
              f"{','.join(r['leader_after']) or '-'} (term {r['term_after']})")
    return s


def fmt_load(p: dict, roles: dict | None = None) -> str:
    s = (f"{p['ops']:7.0f} ops/s  p50 {p['p50_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms  "
         f"({p['requests']} requests in {p['seconds']:.1f}s; {fmt_cpu(p, p['requests'], roles)}, "
         f"client CPU {100 * p['gen_cpu_s'] / p['wall_s']:.0f}%, other load "
         f"{100 * p.get('others_cpu_s', 0) / p['wall_s']:.0f}%{fmt_raft(p, p['requests'])})")
    if p["errors"]:
        s += f"  ERRORS {p['errors']}"
    return s


def leader_changed(p: dict) -> bool:
    r = p.get("raft") or {}
    return bool(r) and (r["leader_before"] != r["leader_after"] or r["term_before"] != r["term_after"])


# ---- one deployment, all phases -----------------------------------------------------------------------
@dataclass
class Deployment:
    name: str
    phases: dict = field(default_factory=dict)  # phase -> where -> figures
    peak_rss: int = 0
    idle_cores: float = 0.0
    settle_s: list = field(default_factory=list)


def run_phases(dep: Deployment, targets, group: Group | None, mon: Monitor, procs: dict, gen, args,
               small_body: bytes, large: bytes) -> None:
    """`targets()` -> {where: Target} for this phase (single: {single}; group: leader and
    follower, re-read from the group's status)."""
    c = args.concurrency

    def put(phase, where, figures):
        dep.phases.setdefault(phase, {})[where] = figures

    def roles_now():
        if group is None:
            return None
        with contextlib.suppress(Exception):
            return {m["node_id"]: m.get("role", "?") for m in group.status()}
        return None

    def wait_idle():
        secs, why = settle(procs, group, dep.idle_cores, args.settle_timeout)
        dep.settle_s.append(round(secs, 1))
        if why:
            log(f"    (not settled after {secs:.0f}s: {why}; going on)")

    def label(where, tgt):
        return "single node" if where == SINGLE else f"{where} {tgt.name}"

    first = next(iter(targets().values()))
    status, body = simple_request(first.host, first.port, first.signer, "PUT", f"/{BUCKET}")
    if status != 200:
        raise RuntimeError(f"{dep.name}: CreateBucket -> {status}: {body[:300]!r}")
    get_paths = [f"/{BUCKET}/small-get/{i:06d}" for i in range(args.get_keys)]
    t0 = time.monotonic()
    put_many(first, get_paths, small_body)
    log(f"  {args.get_keys} GET keys written through {first.name} in {time.monotonic() - t0:.1f}s")
    for tgt in targets().values():  # every node serves them
        check_get(tgt, get_paths[-1], small_body)
    wait_idle()

    # 1. 4 KiB PUT at concurrency c, distinct keys
    for where, tgt in targets().items():
        warm = small_put_set(tgt.signer, f"warm-{where}", 2000, small_body)
        gen.run(tgt, warm, c, args.warmup)
        wait_idle()
        puts = small_put_set(tgt.signer, f"put-{where}", args.put_keys, small_body)
        roles = roles_now()
        with measured(mon, procs, group) as ph:
            r = gen.run(tgt, puts, c, args.duration)
        put("small_put", where, {**r, **ph, "node": tgt.name})
        log(f"  4 KiB PUT c={c}, {label(where, tgt):14s} {fmt_load({**r, **ph}, roles)}")
        other = [t for t in targets().values() if t is not tgt] or [tgt]
        n = min(r["requests"], args.put_keys)
        for i in (3, n // 4, n // 2):  # read back through another node (wrk's first requests may not be sent)
            check_get(other[0], f"/{BUCKET}/put-{where}/{i:06d}", small_body)
        wait_idle()

    # 2. commit latency: sequential PUTs; then sequential GETs (the read barrier's cost)
    for kind in ("PUT", "GET"):
        for where, tgt in targets().items():
            if kind == "PUT":
                reqs = small_put_set(tgt.signer, f"seq-{where}", args.commit_reqs, small_body)
                n = args.commit_reqs
            else:
                reqs = small_get_set(tgt.signer, "small-get", args.get_keys)
                n = min(args.seq_gets, args.get_keys)
            roles = roles_now()
            with measured(mon, procs, group) as ph:
                r = sequential(tgt, reqs, n, small_body if kind == "GET" else None)
            put(f"seq_{kind.lower()}", where, {**r, **ph, "node": tgt.name})
            log(f"  4 KiB {kind} c=1,  {label(where, tgt):14s} {fmt_load({**r, **ph}, roles)}")
            wait_idle()

    # 3. 4 KiB GET at concurrency c over the pre-written keys
    for where, tgt in targets().items():
        gets = small_get_set(tgt.signer, "small-get", args.get_keys)
        gen.run(tgt, gets, c, args.warmup)
        wait_idle()
        roles = roles_now()
        with measured(mon, procs, group) as ph:
            r = gen.run(tgt, gets, c, args.duration)
        put("small_get", where, {**r, **ph, "node": tgt.name})
        log(f"  4 KiB GET c={c}, {label(where, tgt):14s} {fmt_load({**r, **ph}, roles)}")
        wait_idle()

    # 4. 64 MiB PUT (through each node to its own keys), then GET (everyone reads the
    # objects written through the first target: the same bytes from every node)
    size_mb = len(large) / MB
    large_src = None
    for where, tgt in targets().items():
        put_large(tgt, f"/{BUCKET}/large-warm-{where}", large)
        wait_idle()
        roles = roles_now()
        secs = []
        with measured(mon, procs, group) as ph:
            for i in range(args.large_reps):
                secs.append(put_large(tgt, f"/{BUCKET}/large-{where}/{i:03d}", large))
        large_src = large_src or where
        put("large_put", where, {"mbs": size_mb * len(secs) / sum(secs), "each_s": secs, **ph,
                                 "node": tgt.name, "requests": len(secs), "errors": {}})
        log(f"  {args.large_mib} MiB PUT, {label(where, tgt):14s} "
            + ", ".join(f"{size_mb / s:.0f}" for s in secs) + f" MB/s  ({fmt_cpu(ph, None, roles)}, "
            f"other load {100 * ph['others_cpu_s'] / ph['wall_s']:.0f}%, peak RSS {ph['peak_rss'] / MB:.0f} MB"
            f"{fmt_raft(ph, len(secs))})")
        wait_idle()
    rbuf = bytearray(len(large))
    for where, tgt in targets().items():
        get_large(tgt, f"/{BUCKET}/large-warm-{large_src}", large, rbuf)
        wait_idle()
        roles = roles_now()
        secs = []
        with measured(mon, procs, group) as ph:
            for i in range(args.large_reps):
                secs.append(get_large(tgt, f"/{BUCKET}/large-{large_src}/{i:03d}", large, rbuf))
        put("large_get", where, {"mbs": size_mb * len(secs) / sum(secs), "each_s": secs, **ph,
                                 "node": tgt.name, "requests": len(secs), "errors": {}})
        log(f"  {args.large_mib} MiB GET, {label(where, tgt):14s} "
            + ", ".join(f"{size_mb / s:.0f}" for s in secs) + f" MB/s  ({fmt_cpu(ph, None, roles)}, "
            f"other load {100 * ph['others_cpu_s'] / ph['wall_s']:.0f}%, peak RSS {ph['peak_rss'] / MB:.0f} MB"
            f"{fmt_raft(ph, len(secs))})")
        wait_idle()
    del rbuf


@contextlib.contextmanager
def spy_many(spy: PySpy, pids: dict, tag: str, duration: float):
    """py-spy record (raw, --threads, 200 Hz) on several processes at once over one load
    phase, then s3_bench's summary per process; each process's per-thread CPU is taken
    over the load itself (from attach + 1 s to the end of the block)."""
    running = {}
    for name, pid in pids.items():
        raw = os.path.join(spy.out_dir, f"{tag}-{name}.txt")
        err = open(raw + ".stderr", "wb")
        proc = subprocess.Popen([spy.exe, "record", "-p", str(pid), "-r", "200", "-d", str(int(duration) + 2),
                                 "--format", "raw", "--threads", "-o", raw],
                                stdout=subprocess.DEVNULL, stderr=err)
        running[name] = (pid, raw, proc, err)
    time.sleep(1.0)  # attach

    def thread_cpu(pid):
        with contextlib.suppress(psutil.Error):
            return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
        return {}

    before = {name: thread_cpu(pid) for name, (pid, *_r) in running.items()}
    t0 = time.monotonic()
    try:
        yield
    finally:
        wall = time.monotonic() - t0
        shares = {name: {tid: (c - before[name].get(tid, 0.0)) / wall for tid, c in thread_cpu(pid).items()}
                  for name, (pid, *_r) in running.items()}
        for name, (pid, raw, proc, err) in running.items():
            try:
                proc.wait(duration + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            err.close()
        for name, (pid, raw, proc, err) in running.items():
            if proc.returncode:
                with open(raw + ".stderr", errors="replace") as f:
                    log(f"  [{tag}-{name}] py-spy failed ({proc.returncode}): {f.read()[-500:]}")
                continue
            log(summarize_collapsed(raw, f"{tag}-{name}", shares[name]))


def profile_puts(targets, gen, args, small_body: bytes, spy: PySpy, pids, tag: str) -> None:
    """An extra 4 KiB PUT phase per target under py-spy (its numbers are not the measured
    ones: sampling costs CPU on the same cores). `pids()` -> {name: pid} to record."""
    d = max(5.0, min(args.duration, 10.0))
    for where, tgt in targets().items():
        log(f"\n  py-spy: 4 KiB PUT c={args.concurrency} through {where} {tgt.name} ({d:.0f}s):")
        puts = small_put_set(tgt.signer, f"prof-{where}", args.put_keys, small_body)
        with spy_many(spy, pids(), f"{tag}-put-via-{where}", d):
            r = gen.run(tgt, puts, args.concurrency, d)
        log(f"    (under py-spy: {r['ops']:.0f} PUT/s, p50 {r['p50_ms']:.1f} ms"
            + (f", ERRORS {r['errors']}" if r["errors"] else "") + ")")
    log("    (py-spy leaves idle samples out; 'Runner.run' own time is the event loop's thread inside "
        "uvloop's C code, socket I/O and polling, with no Python frame on top)")


# ---- report --------------------------------------------------------------------------------------------
def report(single: Deployment, grp: Deployment, args) -> tuple[str, str, list, list]:
    P = {**{k: {SINGLE: v[SINGLE]} for k, v in single.phases.items()}}
    for k, v in grp.phases.items():
        P.setdefault(k, {}).update(v)
    c = args.concurrency
    rows = []

    def row(metric, key, phase, fmt="{:.0f}"):
        vals = []
        for w in WHERE:
            d = P.get(phase, {}).get(w)
            v = key(d) if d else None
            vals.append(v)
        cells = [fmt.format(v) if v is not None else "-" for v in vals]
        for w in (LEADER, FOLLOWER):
            a, b = vals[WHERE.index(w)], vals[0]
            cells.append(f"{a / b:.2f}x" if a is not None and b else "-")
        rows.append((metric, *cells))

    def per_req(d):
        return 1e6 * d["server_cpu_s"] / max(1, d["requests"])

    row(f"4 KiB PUT ops/s (c={c})", lambda d: d["ops"], "small_put")
    row("4 KiB PUT p50 ms", lambda d: d["p50_ms"], "small_put", "{:.2f}")
    row("4 KiB PUT p99 ms", lambda d: d["p99_ms"], "small_put", "{:.2f}")
    row("commit latency p50 ms (PUT c=1)", lambda d: d["p50_ms"], "seq_put", "{:.2f}")
    row("commit latency p99 ms (PUT c=1)", lambda d: d["p99_ms"], "seq_put", "{:.2f}")
    row("GET c=1 p50 ms (read barrier)", lambda d: d["p50_ms"], "seq_get", "{:.2f}")
    row("GET c=1 p99 ms", lambda d: d["p99_ms"], "seq_get", "{:.2f}")
    row(f"4 KiB GET ops/s (c={c})", lambda d: d["ops"], "small_get")
    row("4 KiB GET p50 ms", lambda d: d["p50_ms"], "small_get", "{:.2f}")
    row("4 KiB GET p99 ms", lambda d: d["p99_ms"], "small_get", "{:.2f}")
    row(f"{args.large_mib} MiB PUT MB/s", lambda d: d["mbs"], "large_put")
    row(f"{args.large_mib} MiB GET MB/s", lambda d: d["mbs"], "large_get")
    row("4 KiB PUT server CPU us/request", per_req, "small_put")
    row("4 KiB PUT server CPU, cores", lambda d: d["server_cpu_s"] / d["wall_s"], "small_put", "{:.2f}")
    row("4 KiB GET server CPU us/request", per_req, "small_get")
    row("commit latency server CPU us/req", per_req, "seq_put")
    row(f"{args.large_mib} MiB PUT server CPU, cores", lambda d: d["server_cpu_s"] / d["wall_s"],
        "large_put", "{:.2f}")
    row(f"{args.large_mib} MiB GET server CPU, cores", lambda d: d["server_cpu_s"] / d["wall_s"],
        "large_get", "{:.2f}")
    rows.append(("peak RSS MB (group: 3 nodes + parent)", f"{single.peak_rss / MB:.0f}",
                 f"{grp.peak_rss / MB:.0f}", "-", f"{grp.peak_rss / max(1, single.peak_rss):.2f}x", "-"))
    head = ("metric", "single", "3-node leader", "3-node follower", "leader/single", "follower/single")
    table = _table(head, rows)

    goals, missed = [], []

    def judge(name, value, ok, target, phases):
        errs = [f"{w} {ph}" for ph, ws in phases for w in ws if P.get(ph, {}).get(w, {}).get("errors")]
        moved = [f"{w} {ph}" for ph, ws in phases for w in ws if leader_changed(P.get(ph, {}).get(w, {}))]
        if value is None:
            met = "NO (not measured)"
        elif errs:
            met = "NO (errors)"
        else:
            met = "met" if ok else "NOT MET"
        if moved and met == "met":
            met = "met (leader moved)"
        elif moved:
            met += " (leader moved)"
        if not met.startswith("met"):
            missed.append(f"{name}: {value:.2f} (goal {target})" if value is not None else name)
        goals.append((name, f"{value:.2f}" if value is not None else "-", target, met))

    def ratio(phase, a, b, key):
        da, db = P.get(phase, {}).get(a), P.get(phase, {}).get(b)
        return key(da) / key(db) if da and db and key(db) else None

    for w in (LEADER, FOLLOWER):
        r = ratio("small_put", w, SINGLE, lambda d: d["ops"])
        judge(f"3-node 4 KiB PUT via {w} / single-node", r, r is not None and r >= GOAL_PUT_RATIO,
              f">= {GOAL_PUT_RATIO:.2f}", [("small_put", (w, SINGLE))])
    for phase, what in (("small_get", "4 KiB GET ops/s"), ("large_get", f"{args.large_mib} MiB GET MB/s")):
        key = (lambda d: d["ops"]) if phase == "small_get" else (lambda d: d["mbs"])
        r = ratio(phase, FOLLOWER, LEADER, key)
        judge(f"{what}: follower / leader", r, r is not None and abs(1 - r) <= GOAL_FOLLOWER_GET,
              f"{1 - GOAL_FOLLOWER_GET:.2f}..{1 + GOAL_FOLLOWER_GET:.2f}", [(phase, (LEADER, FOLLOWER))])
    gtable = _table(("goal", "value", "target", "met?"), goals)
    return table, gtable, missed, goals


# ---- main -------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short phases (the whole run under ~2 minutes)")
    p.add_argument("--duration", type=float, help="seconds per concurrent 4 KiB phase (default 15, quick 4)")
    p.add_argument("--keep", action="store_true", help="keep the data directories and generated scripts")
    p.add_argument("--out", help="also write the report to FILE: JSON if it ends in .json, else the text")
    p.add_argument("--py-spy", metavar="DIR",
                   help="after the measured phases, profile 4 KiB PUTs through the leader and through "
                        "a follower (recording both nodes) and through the single node, with py-spy; "
                        "raw stacks go to DIR")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--large-mib", type=int, default=64)
    p.add_argument("--large-reps", type=int, help="sequential large PUTs and GETs per target (default 4, quick 2)")
    p.add_argument("--commit-reqs", type=int, help="sequential PUTs for commit latency (default 1000, quick 300)")
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                   help="auto: wrk if present (installed with apt-get when possible), else asyncio")
    p.add_argument("--no-install", action="store_true", help="never try apt-get install wrk")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--work-dir", help="where data directories go (default: a temporary directory "
                                      "beside the repository, on its disk)")
    args = p.parse_args(argv)
    args.duration = args.duration or (4.0 if args.quick else 15.0)
    args.warmup = 1.0 if args.quick else 2.0
    args.large_reps = args.large_reps or (2 if args.quick else 4)
    args.commit_reqs = args.commit_reqs or (300 if args.quick else 1000)
    args.seq_gets = 300 if args.quick else 500
    args.put_keys = 20000 if args.quick else 60000
    args.get_keys = 1000
    args.settle_timeout = 8.0 if args.quick else 15.0
    spy = PySpy(args.py_spy) if args.py_spy else None

    tee = Tee(sys.stdout)
    sys.stdout = tee

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    parent = args.work_dir or os.path.dirname(REPO)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="clusterbench-", dir=parent)
    gen_dir = os.path.join(work, "load")
    os.makedirs(gen_dir)
    exe = None if args.generator == "python" else find_wrk(not args.no_install)
    if args.generator == "wrk" and not exe:
        raise SystemExit("--generator wrk: wrk not found (Debian: apt-get install -y wrk)")
    gen = (WrkGenerator(exe, args.wrk_threads, gen_dir) if exe else
           PythonGenerator(gen_dir, "chosen with --generator python" if args.generator == "python"
                           else "wrk not found"))
    info = machine_info(gen, work)
    info.pop("moto", None)
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        info["pysyncobj"] = version("pysyncobj")

    log(f"Tidestore 3-node group vs single node  (work dir {work})")
    log(f"machine: nproc={info['nproc']} cpu={info['cpu']!r} mem={info['mem_gb']:.0f} GiB "
        f"fs={info['fs']}  python {info['python']}  {info['platform']}")
    log(f"client and servers share these {info['nproc']} cores: the load generator, this script and "
        f"every server process (1 single node, or the group's 3 nodes) run on them together")
    log(f"load generator: {info['generator']}, {args.concurrency} connections"
        + (f", {min(args.wrk_threads, args.concurrency)} threads" if exe else "")
        + f"; phases {args.duration:g}s (+{args.warmup:g}s warm-up); commit latency {args.commit_reqs} "
        f"sequential PUTs; large objects {args.large_mib} MiB x {args.large_reps}")
    log(f"load average before the run: {info['loadavg']} (other work on this machine skews results)")
    log(f"aiohttp {info.get('aiohttp', '?')}, pysyncobj {info.get('pysyncobj', '?')}; auth: SigV4 header "
        f"signatures (4 KiB PUT body SHA-256 signed; large PUT UNSIGNED-PAYLOAD)\n")

    small_body = os.urandom(4 * KiB)
    large = os.urandom(args.large_mib * MiB)
    single = Deployment("single node")
    grp = Deployment("3-node group")
    t_start = time.monotonic()
    group = None
    tgt = None
    interrupted = False
    try:
        # ---- the single node ----
        log("single node (`tidestore serve`):")
        tgt = start_tidestore(work)
        tgt.name = "single"
        try:
            procs = {"single": psutil.Process(tgt.pid)}
            single.idle_cores = idle_cpu(procs, 1.0)
            mon = Monitor(tgt.pid, interval=0.05)
            try:
                run_phases(single, lambda: {SINGLE: tgt}, None, mon, procs, gen, args, small_body, large)
                if spy:
                    profile_puts(lambda: {SINGLE: tgt}, gen, args, small_body, spy,
                                 lambda: {"single": tgt.pid}, "single")
            finally:
                time.sleep(0.05)
                mon.close()
            single.peak_rss = mon.peak
        finally:
            tgt.stop()
            tgt = None

        # ---- the group ----
        log("\n3-node group (`tidestore dev-cluster --nodes 3`):")
        t0 = time.monotonic()
        group = Group(work)
        group.wait_ready()
        leader, follower, st = group.roles()
        log(f"  up in {time.monotonic() - t0:.1f}s on ports {group.port}.. (S3 {group.port}-{group.port + 2}); "
            f"leader {leader.id} (term {max(m.get('term', 0) for m in st)}), follower measured: {follower.id}")
        procs = {n.id: n.proc for n in group.nodes.values()}
        grp.idle_cores = idle_cpu(procs, 2.0)
        log(f"  idle group CPU (heartbeats, nothing asked of it): {100 * grp.idle_cores:.0f}% of a core "
            f"(single node idle: {100 * single.idle_cores:.0f}%)")
        state = {"follower": follower.id}

        def group_targets():
            ld, fl, _st = group.roles(state["follower"])
            state["follower"] = fl.id
            return {LEADER: ld.target, FOLLOWER: fl.target}

        mon = Monitor(group.proc.pid, interval=0.05)
        try:
            run_phases(grp, group_targets, group, mon, procs, gen, args, small_body, large)
            if spy:
                def spy_pids():
                    ld, fl, _st = group.roles(state["follower"])
                    return {f"leader-{ld.id}": ld.proc.pid, f"follower-{fl.id}": fl.proc.pid}
                profile_puts(group_targets, gen, args, small_body, spy, spy_pids, "group")
        finally:
            time.sleep(0.05)
            mon.close()
        grp.peak_rss = mon.peak
        leader, follower, st = group.roles(state["follower"])
        log(f"  at the end: leader {leader.id}, term {max(m.get('term', 0) for m in st)}, commit LSN "
            f"{max(m.get('commit_lsn', 0) for m in st)}")
    except KeyboardInterrupt as exc:
        interrupted = True
        log(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): stopping the servers")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup is not interrupted
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if tgt is not None:
            tgt.stop()
        if group is not None:
            group.stop()
            if group.noteworthy:
                kinds: dict = {}
                for _t, ln in group.noteworthy:
                    node = re.match(r"\[(n\d+)\]", ln)
                    k = kinds.setdefault(_log_kind(ln), [Counter(), ln])
                    k[0][node.group(1) if node else "?"] += 1
                log(f"\nnode log lines worth a look: {len(group.noteworthy)}, of {len(kinds)} kind(s):")
                for _k, (by_node, example) in sorted(kinds.items(), key=lambda kv: -sum(kv[1][0].values()))[:10]:
                    log(f"  {sum(by_node.values())}x (" + ", ".join(f"{n} {c}" for n, c in sorted(by_node.items()))
                        + f"), e.g. {example[:240]}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"\nkept {work}")
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted:
        return 130

    elapsed = time.monotonic() - t_start
    log(f"\n== Results (run took {elapsed:.0f}s) ==")
    log(f"machine: nproc={info['nproc']} shared by client and servers, Python {info['python']}, "
        f"generator: {info['generator']}; load average before {info['loadavg']}, after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    table, gtable, missed, goals = report(single, grp, args)
    log(table)
    log("\nratio = group / single node (for latency and CPU lower is better). MB = 10^6 bytes. "
        "Group CPU is the three node processes together; on this machine they share "
        f"{info['nproc']} cores with each other and with the client.")
    moved = [f"{ph} via {w}" for ph, ws in grp.phases.items() for w, d in ws.items() if leader_changed(d)]
    if moved:
        log("WARNING: the leader changed during: " + ", ".join(moved) + " (those figures mix roles).")
    busy = [f"{dep.name} {ph.replace('_', ' ')} {w} ({100 * d['others_cpu_s'] / d['wall_s']:.0f}% of a core)"
            for dep in (single, grp) for ph, ws in dep.phases.items() for w, d in ws.items()
            if d.get("others_cpu_s", 0) > OTHERS_WARN * d["wall_s"]]
    if busy:
        log("WARNING: other processes on this machine used CPU during: " + "; ".join(busy)
            + ". Those figures are lower than a quiet machine gives; rerun when it is idle.")
    log("\nGoals:")
    log(gtable)
    log(f"\nGoals met: {len(goals) - len(missed)}/{len(goals)}"
        + ("" if not missed else "; NOT MET: " + "; ".join(missed)))
    if args.out:
        with open(args.out, "w") as f:
            if args.out.endswith(".json"):
                json.dump({"info": info, "args": {k: v for k, v in vars(args).items()},
                           "goals": [dict(zip(("goal", "value", "target", "met"), g)) for g in goals],
                           "missed": missed,
                           "single": {"phases": single.phases, "peak_rss": single.peak_rss,
                                      "idle_cores": single.idle_cores, "settle_s": single.settle_s},
                           "group": {"phases": grp.phases, "peak_rss": grp.peak_rss,
                                     "idle_cores": grp.idle_cores, "settle_s": grp.settle_s,
                                     "node_log": [ln for _t, ln in (group.noteworthy if group else [])]}},
                          f, indent=1, default=str)
            else:
                f.write(tee.text())
        log(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

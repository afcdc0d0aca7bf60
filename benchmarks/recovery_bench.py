"""Recovery benchmark: rebuilding from the cold tier, rehydrating a lost group member and
crash recovery, each against a raw peer measured in the same run.

Usage (from the repository root, in an environment with the project installed,
boto3 and psutil):

    python benchmarks/recovery_bench.py              # default run, a few minutes
    python benchmarks/recovery_bench.py --quick      # smaller data, well under 3 minutes
    python benchmarks/recovery_bench.py --out recovery.json --keep   # every number as JSON
    python benchmarks/recovery_bench.py --only rebuild,wal --rebuild-mib 64

Nothing is asserted about timings: every figure is printed next to a peer measured in
the same run on the same disk, and the ratio between them.

Data. Every object is 1 MiB of os.urandom bytes, written with boto3 (one client, one
object after the other). Random bytes are incompressible: the cold tier's zstd does
nothing on them, so a segment holds about as many bytes as its chunks, and "segment
bytes" below is about the data written. Both parts run with `[engine] segment_size =
8 MiB` and `[cold] segment_bytes = 4 MiB, seal_age_s = 0.5, ship_interval_s = 0.2,
cache_bytes = 0, checkpoint_segments = 8` into six `file://` shard stores on this
machine's disk (k=4, m=2: ColdConfig's defaults).

Part 1, rebuild from cold alone (`tidestore rebuild`). One `tidestore serve --config`
process; --rebuild-mib MiB are written, the run waits until everything is shipped
(status `hwm` >= `cold.data_lsn`), then the node is killed with SIGKILL. First
`tidestore recover --data-dir D --json` runs on its data directory (the offline crash
recovery every start does: the WAL after the last checkpoint is scanned and redone),
timed, its report printed. Then the data directory is deleted (every replica lost) and
`tidestore rebuild --config CFG --into DIR --json` is timed: MB/s = the report's
`segment_bytes` / `duration_s` (the replay alone, without the interpreter's start; the
wall time of the whole command is printed too). Its peer, "raw shard read": every file
under the six cold store directories (segments and catalog checkpoints) opened, read
sequentially with a 1 MiB buffer (readinto) and closed, one after the other; MB/s of
shard bytes and of "segment bytes equivalent" = shard bytes * k/(k+m) (what that read
would give in segment bytes, since a segment is spread over k data shards plus m
parity shards). The raw read runs just before and just after the rebuild; the table
gives their mean (and both). Nothing is dropped from the page cache: the shards were
written moments ago, so both sides read from memory, and what the ratio shows is the
rebuild's CPU work (EC decode, zstd, checks, catalog writes, WAL writes with fsync)
against a plain read of the same bytes. Note what "segment bytes" means: the replay
reads each segment's index and entry blocks (ranged reads through the erasure code),
not the chunk bodies, which stay in cold storage (the report's `cold_chunks`; a GET
reads them from there). So replay MB/s is "segment bytes covered per second", not
bytes read per second: with 1 MiB objects most of a segment is chunk bodies, and a
replay faster than the raw read is possible. A rebuild that starts from a catalog
checkpoint replays only the segments after it: its `segment_bytes` is then less than
the data written (the table says where it started).

Part 2, rehydrate one member of a 3-node group (`tidestore rehydrate`). Three `tidestore
serve --config NODE.toml` processes whose [[peers]] point directly at each other's ports
(no proxies), one shared set of cold stores. Once a leader is elected and every node
answers /_tidestore/health, a bucket is created through the leader and --rehydrate-mib
MiB are written through it; the run waits until every member's `hwm` >= the largest
`cold.data_lsn`. A follower is killed with SIGKILL and its data directory deleted (its
node.toml lives elsewhere). The raw shard read of the group's cold stores runs, then
`tidestore rehydrate --config NODE.toml --json` is timed (MB/s = `segment_bytes` /
`duration_s`; the duration includes asking the peers for the journal anchor), then the
raw read again. The member is started again and the catch-up is timed, from the
start of `serve` until its status says `applied_lsn` == the leader's `commit_lsn`
and `missing_chunks` == 0 (polled every 0.1 s; the time to its "listening" line is
shown separately). Finally --verify objects are read back through the rehydrated
member and compared by SHA-256.

Part 3, crash recovery seconds per GiB of WAL: `benchmarks/engine_bench.py --only
recovery --wal-mib N` runs as a subprocess (N = --wal-mib: 256, quick 64) in this run's
work directory and its JSON results are read: a WAL of N MiB (4 MiB-chunk objects plus
20% small commits, checkpoints off) recovered after a kill -9 and after a simulated
power loss (full redo), with cold and warm page cache; its table is printed below
ours, and its seconds per GiB are in ours. Part 1's `tidestore recover` figure on a
real node's directory is shown next to it (that WAL is small: its s/GiB is noisy).

Client, servers and the raw reads share this machine's cores; each phase reports
the CPU other processes used meanwhile, and the run warns when that was significant.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from tidestore.testing import start as start_single  # noqa: E402
from tidestore.testing import stop as stop_single  # noqa: E402
from tiering.cold_config import ColdConfig  # noqa: E402
from bench_support import machine_info, ratio as _ratio, table as _table, Tee  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MB = 1_000_000
OTHERS_WARN = 0.15  # other processes using more than 15% of a core during a phase: say so
BUCKET = "recovery-bench"
ACCESS_KEY = "TSRECOVERYBENCHKEY01"
SECRET_KEY = "recovery-bench-secret-key-00000000000000"
CLUSTER_SECRET = "recovery-bench-cluster-secret"
ENGINE = {"segment_size": 8 * MiB}
COLD = {"segment_bytes": 4 * MiB, "seal_age_s": 0.5, "ship_interval_s": 0.2, "cache_bytes": 0,
        "checkpoint_segments": 8}
_DEFAULTS = ColdConfig()
K, M = _DEFAULTS.k, _DEFAULTS.m

CHILDREN: list = []  # every process we start: killed on any way out


def log(msg: str = "") -> None:
    print(msg, flush=True)


def child_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}


def kill_children() -> None:
    for proc in CHILDREN:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(10)


# ---- CPU of other processes ---------------------------------------------------------------------
def _cpu_by_process() -> dict:
    out = {}
    for p in psutil.process_iter(["pid", "cpu_times"]):
        t = p.info.get("cpu_times")
        if t is not None:
            out[p.info["pid"]] = t.user + t.system
    return out


class Others:
    """CPU that other processes used during a phase (not this process, its children, or the
    nodes under test)."""

    def __init__(self):
        self.before = _cpu_by_process()
        self.t0 = time.monotonic()

    def done(self) -> dict:
        wall = time.monotonic() - self.t0
        mine = {os.getpid()} | {p.pid for p in CHILDREN}
        with contextlib.suppress(psutil.Error):
            mine |= {c.pid for c in psutil.Process().children(recursive=True)}
        for p in list(CHILDREN):
            with contextlib.suppress(psutil.Error):
                mine |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
        after = _cpu_by_process()
        cpu = sum(max(0.0, c - self.before.get(pid, 0.0)) for pid, c in after.items() if pid not in mine)
        return {"others_cpu_s": cpu, "wall_s": wall}


# ---- helpers --------------------------------------------------------------------------------------
def free_port(kind=socket.SOCK_STREAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def toml_tables(engine: dict, cold: dict) -> list[str]:
    return (["", "[engine]"] + [f"{k} = {json.dumps(v)}" for k, v in engine.items()]
            + ["", "[cold]"] + [f"{k} = {json.dumps(v)}" for k, v in cold.items()] + [""])


def get_status(endpoint: str, timeout: float = 5.0) -> list:
    with urllib.request.urlopen(endpoint + "/_tidestore/status", timeout=timeout) as r:
        return json.load(r)["members"]


def healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/_tidestore/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def wait_until(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
        except OSError as exc:  # a node busy or not up yet
            last, v = exc, None
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s (last error: {last})")


def s3_client(endpoint: str, access: str, secret: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(signature_version="s3v4", retries={"max_attempts": 3},
                                      connect_timeout=5, read_timeout=60))


def put_objects(s3, count: int, prefix: str) -> dict:
    """count objects of 1 MiB random bytes, one after the other. Returns their SHA-256s and
    the PUT rate."""
    sums = {}
    t0 = time.perf_counter()
    for i in range(count):
        key = f"{prefix}/{i:05d}"
        data = os.urandom(MiB)
        sums[key] = hashlib.sha256(data).hexdigest()
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    wall = time.perf_counter() - t0
    return {"sha256": sums, "objects": count, "bytes": count * MiB, "put_s": wall,
            "put_mbs": count * MiB / MB / wall}


def raw_read(dirs: list[str]) -> dict:
    """Every file under dirs opened, read sequentially with a 1 MiB buffer, closed."""
    paths = []
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            subdirs.sort()
            paths += [os.path.join(root, f) for f in sorted(files)]
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = seg = 0
    oth = Others()
    t0 = time.perf_counter()
    for p in paths:
        n = 0
        with open(p, "rb", buffering=0) as f:
            while True:
                got = f.readinto(view)
                if not got:
                    break
                n += got
        total += n
        if f"{os.sep}segments{os.sep}" in p:
            seg += n
    wall = time.perf_counter() - t0
    return {"files": len(paths), "shard_bytes": total, "segment_shard_bytes": seg, "wall_s": wall,
            "shard_mbs": total / MB / wall, "segment_equiv_mbs": total * K / (K + M) / MB / wall,
            **{k: v for k, v in oth.done().items() if k == "others_cpu_s"}}


def raw_pair(a: dict, b: dict) -> dict:
    """The mean of the raw reads just before and just after the measured command."""
    out = {k: (a[k] + b[k]) / 2 for k in ("shard_mbs", "segment_equiv_mbs", "wall_s", "others_cpu_s")}
    out.update(files=a["files"], shard_bytes=a["shard_bytes"], segment_shard_bytes=a["segment_shard_bytes"],
               runs=[a, b])
    return out


def run_cli(args: list, timeout: float) -> tuple[dict, float, dict]:
    """`python -m tidestore ARGS --json`: (its JSON, wall seconds, other processes' CPU)."""
    cmd = [sys.executable, "-m", "tidestore", *args]
    oth = Others()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO)
    wall = time.perf_counter() - t0
    busy = oth.done()
    if out.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    try:
        return json.loads(out.stdout), wall, busy
    except ValueError:
        raise RuntimeError(f"`{' '.join(cmd)}` printed no JSON: {out.stdout[-500:]!r} "
                           f"{out.stderr[-500:]!r}") from None


def dir_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _s, fs in os.walk(d) for f in fs)


def log_problems(lines: list) -> list:
    return [ln for ln in lines if any(w in ln for w in ("ERROR", "Traceback", "CRITICAL"))][:10]


# ---- part 1: rebuild from cold alone ------------------------------------------------------------
def rebuild_part(work: str, args) -> dict:
    cold_dirs = [os.path.join(work, "cold", f"d{i}") for i in range(6)]
    cfg = os.path.join(work, "node.toml")
    with open(cfg, "w") as f:
        f.write("\n".join(toml_tables(ENGINE, {"stores": [f"file://{d}" for d in cold_dirs], **COLD})))
    data_dir = os.path.join(work, "node")
    srv = start_single(data_dir, extra_args=("--config", cfg, "--log-level", "WARNING"))
    CHILDREN.append(srv.process)
    out: dict = {}
    try:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket=BUCKET)
        count = max(1, args.rebuild_mib)
        w = put_objects(s3, count, "p1")
        log(f"  wrote {count} x 1 MiB through boto3 at {w['put_mbs']:.0f} MB/s")
        t0 = time.perf_counter()
        target = get_status(srv.endpoint)[0]["cold"]["data_lsn"]
        wait_until(lambda: get_status(srv.endpoint)[0]["hwm"] >= target, args.settle_timeout,
                   f"cold HWM >= {target}", 0.2)
        st = get_status(srv.endpoint)[0]
        out["write"] = {k: v for k, v in w.items() if k != "sha256"}
        out["write"].update(settle_s=time.perf_counter() - t0, data_lsn=target, hwm=st["hwm"],
                            server_problems=log_problems(srv.output))
        log(f"  shipped up to LSN {st['hwm']} {out['write']['settle_s']:.1f}s after the last PUT")
    finally:
        stop_single(srv, signal.SIGKILL)  # kill -9
    wal_dir = os.path.join(data_dir, "engine", "wal")
    out["wal_bytes_on_disk"] = dir_bytes(wal_dir) if os.path.isdir(wal_dir) else 0

    rec, wall, busy = run_cli(["recover", "--data-dir", data_dir, "--json"], 300)
    e = rec["engine"]
    scan = max(0, e["end_lsn"] - (e["redo_lsn"] or 0))
    out["recover"] = {"report": rec, "wall_s": wall, "scan_bytes": scan, **busy}
    log(f"  tidestore recover after kill -9: {e['duration_s']:.3f}s ({e['records_scanned']} records "
        f"scanned, {e['records_redone']} redone, {scan / MiB:.1f} MiB of WAL), command {wall:.2f}s")
    shutil.rmtree(data_dir)  # every replica lost

    into = os.path.join(work, "rebuilt")
    before = raw_read(cold_dirs)
    rep, wall, busy = run_cli(["rebuild", "--config", cfg, "--into", into, "--json"], 900)
    after = raw_read(cold_dirs)
    out["raw"] = raw_pair(before, after)
    out["rebuild"] = {"report": rep, "wall_s": wall, "mbs": rep["segment_bytes"] / MB / rep["duration_s"],
                      "expected_objects": count, **busy}
    log(f"  tidestore rebuild: {rep['segment_bytes'] / MB:.1f} MB of segments, {rep['entries']} entries "
        f"in {rep['duration_s']:.2f}s = {out['rebuild']['mbs']:.0f} MB/s (command {wall:.2f}s); "
        f"raw shard read {out['raw']['shard_mbs']:.0f} MB/s of shards")
    shutil.rmtree(into, ignore_errors=True)
    return out


# ---- part 2: rehydrate one member of a group ----------------------------------------------------
class Member:
    def __init__(self, node_id: str, data_dir: str, cfg_path: str):
        self.id, self.data_dir, self.cfg_path = node_id, data_dir, cfg_path
        self.s3, self.raft, self.data = free_port(), free_port(), free_port()
        self.control = free_port(socket.SOCK_DGRAM)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.proc: subprocess.Popen | None = None
        self.lines: list = []

    def config_text(self, peers: list, cold: dict) -> str:
        q = json.dumps
        lines = [f"node_id = {q(self.id)}", f"listen = {q(f'127.0.0.1:{self.s3}')}",
                 f"data_dir = {q(self.data_dir)}", f"raft_listen = {q(f'127.0.0.1:{self.raft}')}",
                 f"data_listen = {q(f'127.0.0.1:{self.data}')}",
                 f"control_listen = {q(f'127.0.0.1:{self.control}')}",
                 f"cluster_secret = {q(CLUSTER_SECRET)}", f"access_key = {q(ACCESS_KEY)}",
                 f"secret_key = {q(SECRET_KEY)}"]
        lines += toml_tables(ENGINE, cold)
        for p in peers:
            if p is not self:
                lines += ["[[peers]]", f"id = {q(p.id)}", f"listen = {q(f'127.0.0.1:{p.s3}')}",
                          f"raft = {q(f'127.0.0.1:{p.raft}')}", f"data = {q(f'127.0.0.1:{p.data}')}",
                          f"control = {q(f'127.0.0.1:{p.control}')}", ""]
        return "\n".join(lines)

    def start(self, timeout: float = 60.0) -> float:
        """Start `serve` and wait for its listening line; returns the seconds that took."""
        self.lines = []
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "tidestore", "serve", "--config", self.cfg_path,
                                      "--log-level", "WARNING"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=REPO)
        CHILDREN.append(self.proc)
        ready = threading.Event()

        def pump(proc=self.proc, lines=self.lines):
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if "listening on http://" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError(f"{self.id} did not start:\n" + "\n".join(self.lines[-30:]))
        return time.perf_counter() - t0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def own(self) -> dict:
        return get_status(self.endpoint)[0]

    def client(self):
        return s3_client(self.endpoint, ACCESS_KEY, SECRET_KEY)


def find_leader(members: list) -> Member | None:
    for m in members:
        if m.running:
            with contextlib.suppress(OSError, ValueError):
                if m.own().get("role") == "leader":
                    return m
    return None


def rehydrate_part(work: str, args) -> dict:
    cold_dirs = [os.path.join(work, "cold", f"drive-{i}") for i in range(6)]
    cold = {"stores": [f"file://{d}" for d in cold_dirs], **COLD}
    os.makedirs(os.path.join(work, "configs"))
    members = [Member(f"n{i + 1}", os.path.join(work, f"n{i + 1}"),
                      os.path.join(work, "configs", f"n{i + 1}.toml")) for i in range(3)]
    for m in members:  # the configs live outside the data directories
        with open(m.cfg_path, "w") as f:
            f.write(m.config_text(members, cold))
    out: dict = {}
    try:
        for m in members:
            m.start()

        def elected():
            leader = find_leader(members)
            return leader if leader and all(healthy(m.endpoint) for m in members) else None

        t0 = time.perf_counter()
        leader = wait_until(elected, 60, "a leader and every node healthy")
        out["election_s"] = time.perf_counter() - t0
        log(f"  group up: leader {leader.id} after {out['election_s']:.1f}s")
        s3 = leader.client()
        s3.create_bucket(Bucket=BUCKET)
        count = max(1, args.rehydrate_mib)
        w = put_objects(s3, count, "p2")
        log(f"  wrote {count} x 1 MiB through the leader at {w['put_mbs']:.0f} MB/s")
        t0 = time.perf_counter()
        target = max(m.own()["cold"]["data_lsn"] for m in members)
        wait_until(lambda: all(m.own()["hwm"] >= target for m in members), args.settle_timeout,
                   f"every member's HWM >= {target}", 0.2)
        out["write"] = {k: v for k, v in w.items() if k != "sha256"}
        out["write"].update(settle_s=time.perf_counter() - t0, data_lsn=target)
        log(f"  every member's cold HWM >= {target} {out['write']['settle_s']:.1f}s after the last PUT")

        leader = find_leader(members) or leader
        victim = next(m for m in members if m is not leader)
        victim.kill()
        shutil.rmtree(victim.data_dir)  # the disk is gone
        out["victim"], out["leader"] = victim.id, leader.id

        before = raw_read(cold_dirs)
        rep, wall, busy = run_cli(["rehydrate", "--config", victim.cfg_path, "--json"], 900)
        after = raw_read(cold_dirs)
        out["raw"] = raw_pair(before, after)
        out["rehydrate"] = {"report": rep, "wall_s": wall, **busy,
                            "mbs": rep["segment_bytes"] / MB / rep["duration_s"] if rep["duration_s"] else 0.0}
        log(f"  tidestore rehydrate {victim.id}: {rep['segment_bytes'] / MB:.1f} MB of segments, "
            f"{rep['entries']} entries in {rep['duration_s']:.2f}s = {out['rehydrate']['mbs']:.0f} MB/s "
            f"(command {wall:.2f}s), anchor LSN {rep['anchor_lsn']}, {rep['chunks_to_fetch']} chunks to fetch")

        oth = Others()
        t0 = time.perf_counter()
        listening_s = victim.start()
        polls = []

        def caught_up():
            lead = find_leader([m for m in members if m is not victim]) or leader
            commit = lead.own()["commit_lsn"]
            st = victim.own()
            polls.append((time.perf_counter() - t0, st.get("applied_lsn"), commit, st.get("missing_chunks")))
            return (st.get("applied_lsn") == commit and st.get("missing_chunks", 0) == 0
                    and st.get("role") is not None) and st

        st = wait_until(caught_up, args.settle_timeout, f"{victim.id} caught up")
        catch = time.perf_counter() - t0
        out["catchup"] = {"s": catch, "listening_s": listening_s, "applied_lsn": st["applied_lsn"],
                          "role": st.get("role"), "polls": len(polls),
                          "first_poll": polls[0] if polls else None, **oth.done()}
        log(f"  {victim.id} started (listening after {listening_s:.2f}s), caught up with the leader's "
            f"commit LSN {st['applied_lsn']} with no missing chunk {catch:.2f}s after its start")

        keys = sorted(w["sha256"])
        step = max(1, len(keys) // max(1, args.verify))
        sample = keys[::step][:args.verify]
        client = victim.client()
        bad = []
        t0 = time.perf_counter()
        for key in sample:
            got = hashlib.sha256(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()
            if got != w["sha256"][key]:
                bad.append(key)
        out["verify"] = {"objects": len(sample), "mismatched": bad, "s": time.perf_counter() - t0}
        log(f"  read back {len(sample)} objects through {victim.id}: "
            + ("all identical (SHA-256)" if not bad else f"{len(bad)} DIFFER: {bad}"))
        out["server_problems"] = {m.id: log_problems(m.lines) for m in members if log_problems(m.lines)}
    finally:
        for m in members:
            with contextlib.suppress(Exception):
                m.stop()
    return out


# ---- part 3: crash recovery s/GiB (engine_bench.py) ----------------------------------------------
def wal_part(work: str, args) -> dict:
    res_path = os.path.join(work, "engine_bench.json")
    cmd = [sys.executable, os.path.join(HERE, "engine_bench.py"), "--only", "recovery",
           "--wal-mib", str(args.wal_mib), "--dir", work, "--json", res_path]
    oth = Others()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=child_env(), cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    with open(res_path) as f:
        res = json.load(f)
    rec = res["recovery"]
    wal_gib = rec["built"]["wal_bytes"] / GiB
    runs = {name: {**r, "s_per_gib": r["recovery_s"] / wal_gib if r["scan_bytes"] > MiB else None}
            for name, r in rec["runs"].items()}
    return {"command": " ".join(cmd[1:]), "wall_s": wall, "built": rec["built"], "runs": runs,
            "stdout": proc.stdout, **oth.done()}


# ---- report -------------------------------------------------------------------------------------
def report(p1: dict | None, p2: dict | None, p3: dict | None) -> str:
    parts = []
    rows = []
    if p1:
        r, raw, rep = p1["rebuild"], p1["raw"], p1["rebuild"]["report"]
        start = f"ckpt LSN {rep['checkpoint_lsn']}" if rep.get("checkpoint_lsn") else "LSN 1"
        rows.append(("rebuild from cold (1 node)", f"{rep['segment_bytes'] / MB:.1f}", f"{rep['duration_s']:.2f}",
                     f"{r['mbs']:.0f}", f"{raw['shard_mbs']:.0f}", f"{raw['segment_equiv_mbs']:.0f}",
                     _ratio(r["mbs"], raw["segment_equiv_mbs"]), _ratio(r["mbs"], raw["shard_mbs"]),
                     f"{rep['entries']} entries, {rep['objects']} objects, from {start}; "
                     f"command {r['wall_s']:.2f}s"))
    if p2:
        r, raw, rep = p2["rehydrate"], p2["raw"], p2["rehydrate"]["report"]
        start = f"ckpt LSN {rep['checkpoint_lsn']}" if rep.get("checkpoint_lsn") else "LSN 1"
        rows.append((f"rehydrate member {p2['victim']}", f"{rep['segment_bytes'] / MB:.1f}",
                     f"{rep['duration_s']:.2f}", f"{r['mbs']:.0f}", f"{raw['shard_mbs']:.0f}",
                     f"{raw['segment_equiv_mbs']:.0f}", _ratio(r["mbs"], raw["segment_equiv_mbs"]),
                     _ratio(r["mbs"], raw["shard_mbs"]),
                     f"{rep['entries']} entries, from {start}, anchor LSN {rep['anchor_lsn']}, "
                     f"{rep['chunks_to_fetch']} chunks to fetch; command {r['wall_s']:.2f}s"))
    if rows:
        parts.append(f"Replay from the cold tier vs a raw read of the same shard files (MB/s, MB = 10^6 bytes; "
                     f"1 MiB random objects, zstd does nothing on them; k={K} m={M}; page cache warm for both):")
        parts.append(_table(("", "segment MB", "replay s", "replay MB/s", "raw MB/s shards",
                             "raw MB/s seg-equiv", "replay/raw seg-equiv", "replay/raw shards", "notes"), rows))
        raws = []
        for name, p in (("part 1", p1), ("part 2", p2)):
            if p:
                a, b = p["raw"]["runs"]
                raws.append(f"{name}: {p['raw']['files']} files, {p['raw']['shard_bytes'] / MB:.1f} MB "
                            f"({p['raw']['segment_shard_bytes'] / MB:.1f} MB in segments/), read before "
                            f"{a['shard_mbs']:.0f} / after {b['shard_mbs']:.0f} MB/s")
        parts.append("raw shard read = mean of the reads just before and after the command; " + "; ".join(raws))
        parts.append("replay MB/s = the report's segment_bytes / duration_s. The replay reads each segment's index "
                     "and entries, not the chunk bodies (they stay in cold storage): it is MB of segments covered "
                     "per second, not MB read; the raw read reads every byte.")
        # the operator's view: how fast is a store of this size serving again, against
        # merely reading its shards once
        rows = []
        for name, p, key, extra in (("rebuild from cold (1 node)", p1, "rebuild", 0.0),
                                    (f"rehydrate member {p2['victim'] if p2 else ''}", p2, "rehydrate",
                                     p2["catchup"]["s"] if p2 else 0.0)):
            if not p:
                continue
            store_mb = p["write"]["bytes"] / MB
            wall = p[key]["wall_s"] + extra
            raw_s = p["raw"]["shard_bytes"] / MB / p["raw"]["shard_mbs"]
            rows.append((name, f"{store_mb:.0f}", f"{wall:.2f}", f"{store_mb / wall:.0f}",
                         f"{raw_s:.2f}", _ratio(raw_s, wall),
                         "command wall time" + (" + catch-up after start" if extra else "")))
        parts.append("\nStore brought back vs one raw read of its shards (store MB = object bytes written):")
        parts.append(_table(("", "store MB", "seconds", "store MB/s", "raw read s", "raw s / ours", "what is timed"),
                            rows))
    if p2:
        c = p2["catchup"]
        parts.append(f"\nRehydrated member {p2['victim']} restarted (leader {p2['leader']}):")
        parts.append(_table(("", "seconds", "notes"), [
            ("serve start to 'listening'", f"{c['listening_s']:.2f}", ""),
            ("serve start to caught up", f"{c['s']:.2f}",
             f"applied_lsn {c['applied_lsn']} == leader commit_lsn, missing_chunks 0"),
            ("rehydrate + catch-up", f"{p2['rehydrate']['wall_s'] + c['s']:.2f}",
             "the rehydrate command's wall time + the above"),
            (f"read back {p2['verify']['objects']} objects (SHA-256)", f"{p2['verify']['s']:.2f}",
             "all identical" if not p2["verify"]["mismatched"] else
             f"{len(p2['verify']['mismatched'])} MISMATCHED"),
        ]))
    if p1 or p3:
        rows = []
        if p3:
            for name, r in p3["runs"].items():
                rows.append((f"engine_bench: {name}", f"{p3['built']['wal_bytes'] / MiB:.0f}",
                             f"{r['recovery_s']:.2f}",
                             f"{r['s_per_gib']:.2f}" if r["s_per_gib"] is not None else "-",
                             str(r["scanned"]), str(r["redone"]),
                             f"analysis {r['analysis_s']:.2f} redo {r['redo_s']:.2f} undo {r['undo_s']:.2f}"))
            crash = p3["runs"].get("crash, cold cache")
        if p1:
            rc = p1["recover"]
            e = rc["report"]["engine"]
            scan = rc["scan_bytes"]
            rows.append(("tidestore recover (part 1 node, kill -9)", f"{scan / MiB:.1f}", f"{e['duration_s']:.3f}",
                         f"{e['duration_s'] / (scan / GiB):.2f}" if scan > 16 * MiB else "-",
                         str(e["records_scanned"]), str(e["records_redone"]),
                         f"analysis {e['analysis_s']:.3f} redo {e['redo_s']:.3f} undo {e['undo_s']:.3f}; "
                         f"command {rc['wall_s']:.2f}s; WAL on disk {p1['wal_bytes_on_disk'] / MiB:.0f} MiB"))
        parts.append("\nCrash recovery (seconds per GiB of WAL scanned from the redo point):")
        parts.append(_table(("", "WAL MiB", "recovery s", "s/GiB", "records", "redone", "breakdown"), rows))
        if p1 and p3 and crash and crash.get("s_per_gib") and p1["recover"]["scan_bytes"] > 16 * MiB:
            e = p1["recover"]["report"]["engine"]
            node = e["duration_s"] / (p1["recover"]["scan_bytes"] / GiB)
            parts.append(f"tidestore recover / engine_bench 'crash, cold cache' s/GiB: {_ratio(node, crash['s_per_gib'])}"
                         " (the two WALs differ in size and record mix: a rough comparison)")
        if p1:
            rep = p1["recover"]["report"]
            e = rep["engine"]
            parts.append(f"tidestore recover report: checkpoint LSN {e['checkpoint_lsn']}, redo {e['redo_lsn']}.."
                         f"{e['end_lsn']}, catalog LSN before {e['catalog_lsn_before']}, applied LSN "
                         f"{rep['applied_lsn']}, cold HWM {rep['cold_hwm']}, uploads rolled back "
                         f"{e['txns_undone']} ({e['chunks_undone']} chunks), kept open {e['txns_kept_open']}, "
                         f"torn tail cut: {'; '.join(str(t) for t in e['tail_cut']) or 'none'}")
    return "\n".join(parts)


def warnings(p1, p2, p3) -> list[str]:
    out, busy = [], []
    phases = []
    if p1:
        phases += [("rebuild", p1["rebuild"]), ("raw read 1", p1["raw"]), ("recover", p1["recover"])]
        rep = p1["rebuild"]["report"]
        if rep["objects"] != p1["rebuild"]["expected_objects"]:
            out.append(f"the rebuilt store holds {rep['objects']} objects, {p1['rebuild']['expected_objects']} "
                       "were written")
        if p1["write"].get("server_problems"):
            out.append("part 1 server log: " + p1["write"]["server_problems"][0][:200])
    if p2:
        phases += [("rehydrate", p2["rehydrate"]), ("raw read 2", p2["raw"]), ("catch-up", p2["catchup"])]
        if p2["verify"]["mismatched"]:
            out.append(f"objects read back differently through the rehydrated member: {p2['verify']['mismatched']}")
        for mid, lines in p2.get("server_problems", {}).items():
            out.append(f"{mid} log: {lines[0][:200]}")
    if p3:
        phases.append(("engine_bench recovery", p3))
    for name, d in phases:  # phases under a second: too short for CPU accounting to mean much
        if d.get("wall_s", 0) >= 1.0 and d.get("others_cpu_s", 0) > OTHERS_WARN * d["wall_s"]:
            busy.append(f"{name} ({100 * d['others_cpu_s'] / d['wall_s']:.0f}% of a core)")
    if busy:
        out.append("other processes on this machine used CPU during: " + "; ".join(busy)
                   + ". Those figures are lower than a quiet machine gives; rerun when it is idle.")
    return out


# ---- main ---------------------------------------------------------------------------------------
PARTS = ("rebuild", "rehydrate", "wal")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="less data (the whole run well under 3 minutes)")
    p.add_argument("--rebuild-mib", type=int, help="part 1: MiB written to the single node (default 256, quick 32)")
    p.add_argument("--rehydrate-mib", type=int, help="part 2: MiB written to the group (default 128, quick 24)")
    p.add_argument("--wal-mib", type=int, help="part 3: engine_bench.py's recovery WAL (default 256, quick 64)")
    p.add_argument("--verify", type=int, default=10, help="part 2: objects read back through the rehydrated member")
    p.add_argument("--only", help="comma list of parts to run: " + ",".join(PARTS))
    p.add_argument("--settle-timeout", type=float, default=120.0,
                   help="seconds to wait for shipping and for the catch-up")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--work-dir", help="parent of the run's temporary directory (default /tmp)")
    p.add_argument("--out", help="also write every number to FILE as JSON")
    args = p.parse_args(argv)
    q = args.quick
    args.rebuild_mib = args.rebuild_mib or (32 if q else 256)
    args.rehydrate_mib = args.rehydrate_mib or (24 if q else 128)
    args.wal_mib = args.wal_mib or (64 if q else 256)
    parts = set((args.only or ",".join(PARTS)).split(","))
    if parts - set(PARTS):
        p.error(f"--only takes {','.join(PARTS)}")

    tee = Tee(sys.stdout)
    sys.stdout = tee

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    work = tempfile.mkdtemp(prefix="tidestore-recovery-bench-", dir=args.work_dir or "/tmp")
    info = machine_info(work)
    log(f"Tidestore recovery benchmark  (work dir {work}, {info['fs']}; {'quick' if q else 'default'} run)")
    log(f"machine: nproc={info['nproc']} cpu={info['cpu']!r}  python {info['python']}; "
        f"load average before the run: {info['loadavg']}")
    t_start = time.monotonic()
    results: dict = {}
    failed: dict = {}
    interrupted = False
    steps = [("rebuild", "p1", rebuild_part,
              f"1. rebuild from cold alone: one node, {args.rebuild_mib} x 1 MiB objects"),
             ("rehydrate", "p2", rehydrate_part,
              f"2. rehydrate one member of a 3-node group: {args.rehydrate_mib} x 1 MiB objects"),
             ("wal", "p3", wal_part,
              f"3. crash recovery: engine_bench.py --only recovery --wal-mib {args.wal_mib}")]
    try:
        for name, sub, run_part, title in steps:
            if name not in parts:
                continue
            log("\n" + title)
            os.makedirs(os.path.join(work, sub))
            try:
                results[name] = run_part(os.path.join(work, sub), args)
                if name == "wal":
                    log("  " + "\n  ".join(ln for ln in results[name]["stdout"].splitlines() if ln.strip()))
            except Exception as exc:  # noqa: BLE001 - reported; the other parts still run
                failed[name] = f"{type(exc).__name__}: {exc}"
                log(f"  FAILED: {failed[name]}")
            finally:
                kill_children()
            if name != "wal" and not args.keep:
                shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
    except KeyboardInterrupt as exc:
        interrupted = True
        log(f"\ninterrupted ({str(exc) or 'Ctrl-C'})")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kill_children()
        if args.keep:
            log(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted:
        return 130
    p1, p2, p3 = results.get("rebuild"), results.get("rehydrate"), results.get("wal")
    elapsed = time.monotonic() - t_start
    log(f"\n== Results (run took {elapsed:.0f}s; load average after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()) + ") ==")
    log(report(p1, p2, p3))
    warns = warnings(p1, p2, p3)
    for part, why in failed.items():
        warns.insert(0, f"part {part!r} FAILED, no numbers: {why}")
    for w in warns:
        log("WARNING: " + w)
    log("\nMB = 10^6 bytes. Ratios: replay/raw (higher is faster). Objects are os.urandom bytes: "
        "zstd does nothing on them.")
    if args.out:
        for part in (p3,):
            if part:
                part.pop("stdout", None)
        with open(args.out, "w") as f:
            json.dump({"info": info, "args": vars(args), "elapsed_s": elapsed, "rebuild": p1,
                       "rehydrate": p2, "crash_recovery": p3, "failed": failed, "warnings": warns,
                       "report": tee.text()}, f, indent=1, default=str)
        log(f"report written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

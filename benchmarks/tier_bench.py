"""Cold-tier benchmark: shipping against a raw zstd + erasure-coding pipeline, and cold
GETs against hot GETs, in one run.

Usage (from the repository root, in an environment with the project installed,
boto3 and psutil):

    python benchmarks/tier_bench.py              # default run, under a minute
    python benchmarks/tier_bench.py --quick      # smaller data, under 20 seconds
    python benchmarks/tier_bench.py --out tier.json --keep   # every number as JSON
    python benchmarks/tier_bench.py --only get --large-mib 4 --wal-segment-mib 16

Part 1, shipping (in-process, no network). An Engine with its default 64 MiB WAL
segments is filled through a one-member log (as tests/tiering/test_shipper.py does:
one object after the other, its chunk then its entry, applied at LSNs 1, 2, ...; the
entries of a batch share fsyncs), with 4 MiB objects and then with 64 KiB objects,
every byte half-compressible (in each 4 KiB block, 2 KiB random and 2 KiB of text:
zstd roughly halves it). `Shipper.ship(lo, hi)` is then timed
for each segment of --segment-mib (the range `plan_range` cuts, as the shipper's own
loop does) into six `file://` shard stores on the same disk (k=4, m=2, isa_l_rs_vand,
1 MiB stripes, zstd level 3: ColdConfig's defaults). Its peers, on the exact same chunk
bytes held in memory, one after the other in the same process:

* raw: zstd level 3 per chunk (one frame per chunk, like the segment), the frames
  concatenated and cut into 1 MiB stripes, pyeclib `ECDriver.encode` on each, the
  fragments dropped (a /dev/null sink): the CPU floor of shipping;
* raw + files: the same, the fragments written to six files on the same disk and each
  fsynced once at the end: the floor including the disk.

Throughput is MB/s of raw chunk bytes (MB = 10^6 bytes) on one thread (the shipper is
one thread). The shipper's own breakdown per segment (`shipper.state.last_segment`:
build_s = read the chunks from the WAL, verify, compress, write the segment file;
store_s = erasure-code that file into the six stores with fsync, verify; commit_s =
apply SegmentShipped) is reported too, with the process CPU per phase.

Part 2, cold GET vs hot GET (a real `tidestore serve` process, boto3 on this machine).
The node runs with small WAL segments (4 MiB; --wal-segment-mib), 4 MiB chunks (the
default), 4 MiB cold segments sealed after 0.5 s and no cold-read cache
(`cache_bytes = 0`: every cold GET reads the shards). Written in order: a "cold set"
(1 MiB and 16 MiB objects; --large-mib), a spacer of 1 MiB objects (never read: the
budget's margin falls among them), and a "hot set" of the same shapes, with
`hot_budget = 0` (no eviction); once everything is shipped (HWM >= the last data
LSN) the node is restarted with `hot_budget` = the hot set plus half the spacer, and
the run waits until it has evicted segments and its hot tier is within the budget
plus a WAL segment. Eviction then runs once, with the shipper idle, and takes the
oldest segments: the cold set. --one-phase applies the budget from the start instead
(eviction runs while the shipper works, as on a node under steady writes). A shipper
failing three times in a row ends this part with its error. Then:

* a warm-up, not measured: every object read once (a cold segment's footer and index
  are read on its first cold read and then cached);
* 1 MiB GETs, sequential (one keep-alive connection): latency p50/p99 over
  --latency-passes passes over each set, the sets' order alternating;
* 16 MiB GETs, sequential (a third as many passes), then with 4 threads (--threads,
  one boto3 client each; --large-reps passes): MB/s, and the CPU of the server and of
  the client (boto3 in this process: with 2 cores it can be the limit).

Every GET's bytes are checked (SHA-256). After every sequential GET the node's status
says whether that GET read chunks from cold storage (`cold_reads` went up), and the
figures are grouped by that, not by the set an object was written in: "cold" is every
GET that read the shards, "hot" every GET that did not, so the labels are true even
when eviction did not follow the plan (the table says how many objects of each set
were read cold, and the run warns when a set's objects ended up in the other tier).
The threaded GETs use the objects each tier held at the last sequential pass, and
check with the node's cold-read count that they stayed there. The shards are files
on this machine's disk, freshly written, so both tiers read from the page cache: what
a cold GET adds here is the erasure-code read path (k fragment reads, decode, zstd,
CRC and SHA-256 checks), not a remote store's latency.

Client and server share this machine's cores; every phase also reports the CPU other
processes used meanwhile, and the run warns when that was significant.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import queue
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from s3_bench import KiB, MB, MiB, REPO, _cpu_by_process  # noqa: E402

import zstandard  # noqa: E402
from pyeclib.ec_iface import ECDriver  # noqa: E402

from engine import Engine  # noqa: E402
from engine import entries as E  # noqa: E402
from tidestore.testing import tidestore_server  # noqa: E402
from tiering.cold_config import ColdConfig  # noqa: E402
from tiering.segment_builder import plan_range  # noqa: E402
from tiering.shipper import Shipper  # noqa: E402
from bench_support import machine_info as _machine_info, ratio as _ratio, table as _table, Tee  # noqa: E402

OTHERS_WARN = 0.15  # other processes using more than 15% of a core during a phase: say so
BLOCK = 4 * KiB
TEXT = (b"Tidestore keeps recent objects hot in its write-ahead log and ships older "
        b"log ranges to cold storage as erasure-coded, zstd-compressed segments. ")


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---- data ---------------------------------------------------------------------------------------
def half_compressible(n: int, tag: int) -> bytes:
    """n bytes, distinct for every call (chunks are content-addressed: equal chunks
    would be stored once): in every 4 KiB block 2 KiB random, 2 KiB text."""
    rnd = os.urandom(n // 2 + BLOCK)
    text = (b"%d " % tag + TEXT) * (BLOCK // len(TEXT) + 2)
    out = bytearray(n)
    half = BLOCK // 2
    for i, pos in enumerate(range(0, n, BLOCK)):
        a = min(half, n - pos)
        out[pos:pos + a] = rnd[i * half:i * half + a]
        b = min(half, n - pos - a)
        if b > 0:
            off = (i * 37) % len(TEXT)
            out[pos + a:pos + a + b] = text[off:off + b]
    return bytes(out)


# ---- CPU accounting -----------------------------------------------------------------------------
def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Others:
    """CPU that other user processes on the machine used during a phase (not this
    process, its children or the server under test)."""

    def __init__(self, extra_pids=()):
        self.extra = set(extra_pids)
        self.before = _cpu_by_process()
        self.t0 = time.monotonic()

    def done(self) -> tuple[float, float]:
        """(other processes' CPU seconds, wall seconds)."""
        wall = time.monotonic() - self.t0
        mine = {os.getpid()} | self.extra
        with contextlib.suppress(psutil.Error):
            mine |= {c.pid for c in psutil.Process().children(recursive=True)}
        after = _cpu_by_process()
        cpu = sum(max(0.0, c - self.before.get(pid, 0.0)) for pid, c in after.items() if pid not in mine)
        return cpu, wall


# ---- part 1: shipping vs raw ----------------------------------------------------------------------
class Log:
    """A one-member log on the engine (tests/tiering/test_shipper.py's): entries applied
    at LSNs 1, 2, ..."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.lsn = engine.applied_lsn

    def propose(self, entry):
        self.lsn += 1
        return self.engine.apply(self.lsn, entry)

    def put_many(self, bucket: str, items: list) -> list[int]:
        """Write [(key, data)], one object after the other as test_shipper.py's `put`
        does (chunk, then its entry), except that the entries are submitted without
        waiting and waited for together at the end (they share fsyncs). The WAL holds
        the same records in the same order as with one `put` at a time. Returns the
        entries' LSNs."""
        eng = self.engine
        pending, lsns = [], []
        for key, data in items:
            txn = eng.begin()
            ref = eng.write_chunk(txn, data)
            self.lsn += 1
            entry = E.PutObject(bucket, key, len(data), hashlib.md5(data).hexdigest(),
                                [(ref.chunk_id, len(data))], 1000, txn_id=txn)
            pending.append(eng.submit(self.lsn, entry))
            lsns.append(self.lsn)
        for p in pending:
            res = p.wait()
            if not res.ok:
                raise RuntimeError(f"PutObject failed: {res}")
        return lsns


def raw_pipeline(chunks: list, level: int, k: int, m: int, ec_type: str, stripe: int,
                 sink_dir: str | None = None) -> tuple[int, int]:
    """zstd each chunk, concatenate, encode 1 MiB stripes with pyeclib; fragments to
    nowhere (sink_dir None) or appended to k + m files there, each fsynced at the end.
    Returns (compressed bytes, fragment bytes)."""
    cctx = zstandard.ZstdCompressor(level=level)
    driver = ECDriver(k=k, m=m, ec_type=ec_type)
    files = None
    if sink_dir is not None:
        os.makedirs(sink_dir, exist_ok=True)
        files = [open(os.path.join(sink_dir, f"shard-{i}"), "wb") for i in range(k + m)]
    buf = bytearray()
    compressed = fragments = 0

    def encode(data: bytes):
        nonlocal fragments
        for i, frag in enumerate(driver.encode(data)):
            fragments += len(frag)
            if files is not None:
                files[i].write(frag)

    try:
        for data in chunks:
            frame = cctx.compress(data)
            compressed += len(frame)
            buf += frame
            while len(buf) >= stripe:
                encode(bytes(buf[:stripe]))
                del buf[:stripe]
        if buf:
            encode(bytes(buf))
        if files is not None:
            for f in files:
                f.flush()
                os.fsync(f.fileno())
    finally:
        if files is not None:
            for f in files:
                f.close()
    return compressed, fragments


def shipping_part(work: str, args) -> dict:
    seg_bytes = args.segment_mib * MiB
    engine = Engine(os.path.join(work, "engine"), maintenance_interval_s=0, ship_retention=True)
    try:
        config = ColdConfig(stores=[f"file://{work}/cold/d{i}" for i in range(6)],
                            segment_bytes=seg_bytes, seal_age_s=0.001)
        stores = config.open_stores(work)
        lg = Log(engine)
        lg.propose(E.CreateBucket("b", 1))
        shipper = Shipper(engine, config, stores, os.path.join(work, "ship"), propose=lg.propose)
        log(f"  engine: {engine.config.segment_size // MiB} MiB WAL segments; cold: k={config.k} "
            f"m={config.m} {config.ec_type}, {config.stripe_size // MiB} MiB stripes, zstd level "
            f"{config.zstd_level}, 6 file:// stores; segments of {args.segment_mib} MiB")
        out = {"segment_bytes": seg_bytes, "k": config.k, "m": config.m, "ec_type": config.ec_type,
               "stripe_size": config.stripe_size, "zstd_level": config.zstd_level, "variants": {}}
        for name, obj_size, nseg in (("4 MiB objects", 4 * MiB, args.segments),
                                     ("64 KiB objects", 64 * KiB, args.small_segments)):
            if nseg <= 0:
                continue
            out["variants"][name] = ship_variant(engine, lg, shipper, config, work, name, obj_size,
                                                 nseg, seg_bytes)
        return out
    finally:
        engine.close()


def ship_variant(engine, lg: Log, shipper: Shipper, config: ColdConfig, work: str, name: str,
                 obj_size: int, nseg: int, seg_bytes: int) -> dict:
    per_seg = -(-seg_bytes // obj_size)
    count = per_seg * nseg
    t0 = time.monotonic()
    by_lsn: dict = {}
    batch = max(1, (32 * MiB) // obj_size)
    tag = engine.applied_lsn
    for start in range(0, count, batch):
        items = [(f"{name[:2].strip()}-{i:06d}", half_compressible(obj_size, tag + i))
                 for i in range(start, min(count, start + batch))]
        for lsn, (_key, data) in zip(lg.put_many("b", items), items):
            by_lsn[lsn] = data
    fill_s = time.monotonic() - t0
    log(f"  {name}: wrote {count} objects ({count * obj_size / MB:.0f} MB) through the log in "
        f"{fill_s:.1f}s; shipping {nseg} segments, each against raw and raw + files")
    peers = ("shipper", "raw", "raw+files")
    rows = []
    for s in range(nseg):
        lo = engine.cold_hwm + 1
        t_plan = time.perf_counter()
        plan = plan_range(engine, lo, engine.applied_lsn, seg_bytes)
        plan_s = time.perf_counter() - t_plan
        if plan is None:
            break
        hi = plan.lsn_hi
        chunks = [by_lsn[lsn] for lsn in range(lo, hi + 1) if lsn in by_lsn]
        nbytes = sum(len(c) for c in chunks)
        row = {"lo": lo, "hi": hi, "chunks": len(chunks), "chunk_bytes": nbytes,
               "plan_s": plan_s}
        order = peers[s % 3:] + peers[:s % 3]  # rotate, so no peer always goes first
        for peer in order:
            oth = Others()
            c0, w0 = self_cpu(), time.perf_counter()
            if peer == "shipper":
                loc = shipper.ship(lo, hi)
                extra = {"segment_bytes": loc["size"],
                         "shard_bytes": sum(sh[2] for sh in loc["shards"]),
                         "breakdown": dict(shipper.state.last_segment)}
            else:
                sink = os.path.join(work, "raw", f"s{s}") if peer == "raw+files" else None
                comp, frags = raw_pipeline(chunks, config.zstd_level, config.k, config.m,
                                           config.ec_type, config.stripe_size, sink)
                extra = {"compressed_bytes": comp, "fragment_bytes": frags}
                if sink:
                    shutil.rmtree(sink, ignore_errors=True)
            wall = time.perf_counter() - w0
            cpu = self_cpu() - c0
            others, _w = oth.done()
            row[peer] = {"wall_s": wall, "cpu_s": cpu, "mbs": nbytes / MB / wall,
                         "others_cpu_s": others, **extra}
        if engine.cold_hwm != hi:
            raise RuntimeError(f"segment [{lo}, {hi}] shipped but the HWM is {engine.cold_hwm}")
        b = row["shipper"]["breakdown"]
        log(f"    [{lo}, {hi}] {len(chunks)} chunks, {nbytes / MB:.1f} MB -> segment "
            f"{row['shipper']['segment_bytes'] / MB:.1f} MB: shipper {row['shipper']['mbs']:.0f} MB/s "
            f"(build {b['build_s']:.2f}s, store {b['store_s']:.2f}s, commit {b['commit_s']:.3f}s), "
            f"raw {row['raw']['mbs']:.0f} MB/s, raw+files {row['raw+files']['mbs']:.0f} MB/s")
        rows.append(row)
    total = sum(r["chunk_bytes"] for r in rows)
    summary = {"object_size": obj_size, "objects": count, "fill_s": fill_s, "segments": rows,
               "chunk_bytes": total}
    for peer in peers:
        wall = sum(r[peer]["wall_s"] for r in rows)
        cpu = sum(r[peer]["cpu_s"] for r in rows)
        summary[peer] = {"wall_s": wall, "cpu_s": cpu, "mbs": total / MB / wall if wall else 0.0,
                         "cpu_s_per_gb": cpu / (total / 1e9) if total else 0.0,
                         "others_cpu_s": sum(r[peer]["others_cpu_s"] for r in rows),
                         "mbs_per_segment": [r[peer]["mbs"] for r in rows]}
    summary["breakdown"] = {k: sum(r["shipper"]["breakdown"][k] for r in rows)
                            for k in ("build_s", "store_s", "commit_s")}
    summary["plan_s"] = sum(r["plan_s"] for r in rows)
    summary["segment_bytes"] = sum(r["shipper"]["segment_bytes"] for r in rows)
    summary["shard_bytes"] = sum(r["shipper"]["shard_bytes"] for r in rows)
    return summary


# ---- part 2: cold GET vs hot GET -----------------------------------------------------------------------
def write_config(path: str, engine: dict, cold: dict) -> str:
    lines = ["[engine]"] + [f"{k} = {json.dumps(v)}" for k, v in engine.items()]
    lines += ["", "[cold]"] + [f"{k} = {json.dumps(v)}" for k, v in cold.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def node_status(srv) -> dict:
    with urllib.request.urlopen(srv.endpoint + "/_tidestore/status", timeout=10) as r:
        return json.load(r)["members"][0]


def cold_reads(srv) -> int:
    return node_status(srv)["cold"]["cold_reads"]


def pct(values: list, q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


class Phase:
    """Wall time, server CPU and other processes' CPU of one measured phase."""

    def __init__(self, server: psutil.Process):
        self.server = server

    def __enter__(self):
        self.others = Others([self.server.pid])
        t = self.server.cpu_times()
        self.cpu0 = t.user + t.system
        return self

    def __exit__(self, *exc):
        t = self.server.cpu_times()
        self.server_cpu_s = t.user + t.system - self.cpu0
        self.others_cpu_s, self.wall_s = self.others.done()


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (Linux; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return 0


def get_sequential(srv, s3, keys: list, data: dict, server: psutil.Process) -> tuple[list, float]:
    """GET each key once, timed; after each, ask the node whether that GET read chunks
    from cold storage (outside the timing). Returns ([{key, s, cold_chunks,
    server_cpu_s, faults}], CPU other processes used meanwhile)."""
    records = []
    others = Others([server.pid])
    before = cold_reads(srv)
    for key in keys:
        t = server.cpu_times()
        c0 = t.user + t.system
        f0 = minor_faults(server.pid)
        t0 = time.perf_counter()
        body = s3.get_object(Bucket="tier", Key=key)["Body"].read()
        dt = time.perf_counter() - t0
        t = server.cpu_times()
        cpu = t.user + t.system - c0
        faults = minor_faults(server.pid) - f0
        if hashlib.sha256(body).digest() != data[key]:
            raise RuntimeError(f"GET {key}: wrong bytes")
        now = cold_reads(srv)
        records.append({"key": key, "s": dt, "cold_chunks": now - before, "server_cpu_s": cpu,
                        "faults": faults})
        before = now
    oth, _wall = others.done()
    return records, oth


def tier_stats(records: list, size: int) -> dict | None:
    """Latency and throughput of sequential GETs (None if there are none)."""
    if not records:
        return None
    lat = [r["s"] for r in records]
    return {"gets": len(lat), "objects": len({r["key"] for r in records}),
            "p50_ms": 1e3 * pct(lat, 50), "p90_ms": 1e3 * pct(lat, 90), "p99_ms": 1e3 * pct(lat, 99),
            "mean_ms": 1e3 * statistics.fmean(lat), "max_ms": 1e3 * max(lat),
            "mbs": len(lat) * size / MB / sum(lat),
            "server_cpu_ms_per_get": 1e3 * sum(r["server_cpu_s"] for r in records) / len(lat),
            "server_faults_per_get": sum(r["faults"] for r in records) / len(lat),
            "cold_chunks": sum(r["cold_chunks"] for r in records)}


def sequential_phase(srv, s3, sets: dict, kind: str, passes: int, data: dict, size: int,
                     server: psutil.Process) -> dict:
    """`passes` sequential passes over the cold set's and the hot set's objects of one
    kind (the order of the sets alternating), grouped by what each GET really did:
    "cold" = it read chunks from cold storage, "hot" = it did not."""
    records, others, which_set = [], 0.0, {}
    for p in range(passes):
        for which in (("cold", "hot") if p % 2 == 0 else ("hot", "cold")):
            recs, oth = get_sequential(srv, s3, sets[which][kind], data, server)
            records += recs
            others += oth
            which_set.update({k: which for k in sets[which][kind]})
    out = {"cold": tier_stats([r for r in records if r["cold_chunks"] > 0], size),
           "hot": tier_stats([r for r in records if r["cold_chunks"] == 0], size),
           "others_cpu_s": others, "wall_s": sum(r["s"] for r in records), "sets": {}}
    for which in ("cold", "hot"):
        keys = sets[which][kind]
        read_cold = {r["key"] for r in records if r["cold_chunks"] > 0 and which_set[r["key"]] == which}
        out["sets"][which] = {"objects": len(keys), "read_cold": len(read_cold)}
    # where each object was at the last pass: what the threaded phase uses
    last = {}
    for r in records:
        last[r["key"]] = r["cold_chunks"]
    out["last"] = last
    return out


def get_concurrent(srv, keys: list, data: dict, size: int, threads: int,
                   server: psutil.Process) -> dict:
    """GET the keys (each several times: at least 3 GETs per thread, so the last round
    does not leave threads idle for long) with `threads` threads, a boto3 client each."""
    keys = keys * -(-3 * threads // len(keys))
    q: queue.Queue = queue.Queue()
    for key in keys:
        q.put(key)
    errors: list = []
    clients = [srv.boto3_client(max_pool_connections=2) for _ in range(threads)]

    def worker(s3):
        while True:
            try:
                key = q.get_nowait()
            except queue.Empty:
                return
            try:
                body = s3.get_object(Bucket="tier", Key=key)["Body"].read()
                if hashlib.sha256(body).digest() != data[key]:
                    errors.append(f"{key}: wrong bytes")
            except Exception as exc:  # noqa: BLE001 - reported
                errors.append(f"{key}: {exc!r}")

    before = cold_reads(srv)
    c0 = self_cpu()
    with Phase(server) as ph:
        ts = [threading.Thread(target=worker, args=(c,)) for c in clients]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    client_cpu = self_cpu() - c0
    if errors:
        raise RuntimeError("GETs failed: " + "; ".join(errors[:5]))
    return {"wall_s": ph.wall_s, "bytes": size * len(keys), "gets": len(keys),
            "mbs": size * len(keys) / MB / ph.wall_s, "server_cpu_s": ph.server_cpu_s,
            "client_cpu_s": client_cpu,
            "others_cpu_s": ph.others_cpu_s, "cold_chunks": cold_reads(srv) - before}


def wait_settled(srv, target: int, budget: int, slack: int, evict: bool, timeout: float) -> dict:
    """Poll the node until its HWM reaches target (and, with evict, it has evicted
    segments and its hot tier is within budget + slack); raise if its shipper keeps
    failing or time runs out. Returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        st = node_status(srv)
        c = st["cold"]
        if st["hwm"] >= target and (not evict or (c["evicted_segments"] > 0
                                                   and c["hot_bytes"] <= budget + slack)):
            return st
        if c["shipper"]["failures"] >= 3:
            raise RuntimeError(f"the node's shipper keeps failing ({c['shipper']['failures']} "
                               f"consecutive failures) at HWM {st['hwm']} (target {target}): "
                               f"{c['shipper']['last_error']}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node did not settle in {timeout:.0f}s: hwm {st['hwm']} (target "
                               f"{target}), evicted {c['evicted_segments']}, hot {c['hot_bytes']} "
                               f"(budget {budget}), shipper {c['shipper']}")
        time.sleep(0.2)


def get_part(work: str, args) -> dict:
    small, large = 1 * MiB, args.large_mib * MiB
    wal_seg = args.wal_segment_mib * MiB
    n_small, n_large = args.small_objects, args.large_objects
    set_bytes = n_small * small + n_large * large
    # 1 MiB objects between the sets, never read: the budget's margin falls among them
    spacer_n = max(24, 3 * args.wal_segment_mib)
    spacer = spacer_n * small
    budget = set_bytes + spacer // 2
    engine_cfg = {"segment_size": wal_seg, "checkpoint_bytes": wal_seg, "checkpoint_interval_s": 1.0}
    cold_cfg = {"segment_bytes": 4 * MiB, "seal_age_s": 0.5, "ship_interval_s": 0.2,
                "hot_budget": budget, "cache_bytes": 0}
    cfg = write_config(os.path.join(work, "node.toml"), engine_cfg, cold_cfg)
    # two phases (default): written and shipped with no budget, then restarted with it
    cfg_write = cfg if args.one_phase else write_config(
        os.path.join(work, "node-write.toml"), engine_cfg, {**cold_cfg, "hot_budget": 0})
    out = {"engine": engine_cfg, "cold": cold_cfg, "small_size": small, "large_size": large,
           "threads": args.threads, "one_phase": args.one_phase,
           "small_objects": n_small, "large_objects": n_large, "set_bytes": set_bytes,
           "spacer_bytes": spacer}
    log(f"  node: [engine] {engine_cfg}\n        [cold] {cold_cfg}")
    log(f"  each set: {n_small} x 1 MiB + {n_large} x {args.large_mib} MiB = {set_bytes / MiB:.0f} MiB; spacer "
        f"{spacer / MiB:.0f} MiB; hot budget {budget / MiB:.0f} MiB (the hot set + half the spacer)"
        + ("; the budget applies from the start (--one-phase)" if args.one_phase else
           "; written with hot_budget = 0, then restarted with the budget"))
    env_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = REPO + (os.pathsep + env_path if env_path else "")
    data_dir = os.path.join(work, "node")
    data: dict = {}
    sets = {"cold": {"small": [], "large": []}, "hot": {"small": [], "large": []}}
    with tidestore_server(data_dir, extra_args=("--config", cfg_write)) as srv:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="tier")
        put_time = [0.0]

        def put(key: str, size: int, tag: int):
            body = half_compressible(size, tag)
            t = time.perf_counter()
            s3.put_object(Bucket="tier", Key=key, Body=body)
            put_time[0] += time.perf_counter() - t
            data[key] = hashlib.sha256(body).digest()

        t0 = time.monotonic()
        tag = 10**9
        written = 0
        for which in ("cold", "spacer", "hot"):
            if which == "spacer":
                for i in range(spacer_n):
                    put(f"spacer/{i:03d}", small, tag)
                    tag += 1
                written += spacer
                continue
            for i in range(n_large):
                key = f"{which}/large/{i:03d}"
                put(key, large, tag)
                tag += 1
                sets[which]["large"].append(key)
            for i in range(n_small):
                key = f"{which}/small/{i:03d}"
                put(key, small, tag)
                tag += 1
                sets[which]["small"].append(key)
            written += set_bytes
        put_s = time.monotonic() - t0
        target = node_status(srv)["cold"]["data_lsn"]
        log(f"  wrote {written / MB:.0f} MB in {put_s:.1f}s (PUTs at {written / MB / put_time[0]:.0f} MB/s, "
            f"sequential, shipping meanwhile); waiting for HWM >= {target}"
            + (", eviction, hot tier <= budget + a WAL segment" if args.one_phase else ""))
        st = wait_settled(srv, target, budget, wal_seg, args.one_phase, args.settle_timeout)
        settle_s = time.monotonic() - t0 - put_s
        c = st["cold"]
        out["write"] = {"bytes": written, "put_s": put_s, "put_mbs": written / MB / put_time[0],
                        "settle_s": settle_s, "hwm": st["hwm"], "lwm": st["lwm"],
                        "segments_shipped": c["shipper"]["segments_shipped"],
                        "bytes_shipped": c["shipper"]["bytes_shipped"],
                        "last_segment": c["shipper"]["last_segment"],
                        "ship_mbs_effective": written / MB / (put_s + settle_s)}
        log(f"  shipped {settle_s:.1f}s after the last PUT: {c['shipper']['segments_shipped']} segments "
            f"({c['shipper']['bytes_shipped'] / MB:.0f} MB; {written / MB / (put_s + settle_s):.0f} MB/s "
            f"from the first PUT); last segment {c['shipper']['last_segment']}")
        out["write"]["log_warnings"] = _log_warnings(srv)
        if args.one_phase:
            measure_gets(srv, out, st, sets, data, args, small, large, budget)
            return out
    t0 = time.monotonic()
    with tidestore_server(data_dir, extra_args=("--config", cfg)) as srv:
        up_s = time.monotonic() - t0
        st = wait_settled(srv, target, budget, wal_seg, True, args.settle_timeout)
        log(f"  restarted with the budget in {up_s:.1f}s; eviction done {time.monotonic() - t0 - up_s:.1f}s later")
        out["write"]["restart_s"] = up_s
        measure_gets(srv, out, st, sets, data, args, small, large, budget)
    return out


def measure_gets(srv, out: dict, st: dict, sets: dict, data: dict, args, small: int, large: int,
                 budget: int) -> None:
    c = st["cold"]
    out["write"].update({"evicted_segments": c["evicted_segments"], "evicted_bytes": c["evicted_bytes"],
                         "hot_bytes": c["hot_bytes"], "hot_budget": budget})
    log(f"  {c['evicted_segments']} WAL segments evicted ({c['evicted_bytes'] / MB:.0f} MB freed by eviction "
        f"itself), hot tier {c['hot_bytes'] / MB:.0f} MB, budget {budget / MB:.0f} MB")
    server = psutil.Process(srv.pid)
    s3 = srv.boto3_client()
    with Phase(server) as ph:  # background work the GETs would compete with
        time.sleep(1.0)
    out["idle_server_cores"] = ph.server_cpu_s / ph.wall_s
    log(f"  server CPU while idle, before the GETs: {100 * out['idle_server_cores']:.0f}% of a core")
    t0 = time.perf_counter()
    for which in ("cold", "hot"):  # warm-up, not measured: every object once
        for key in sets[which]["small"] + sets[which]["large"]:
            s3.get_object(Bucket="tier", Key=key)["Body"].read()
    log(f"  warm-up (every object read once, not measured): {time.perf_counter() - t0:.1f}s")

    # -- 1 MiB: sequential latency, passes alternating cold/hot
    out["small"] = sequential_phase(srv, s3, sets, "small", args.latency_passes, data, small, server)
    for tier in ("cold", "hot"):
        o = out["small"][tier]
        log(f"  1 MiB GET, {tier} (read from {'the shards' if tier == 'cold' else 'the WAL'}): "
            + ("none" if o is None else
               f"{o['gets']} GETs of {o['objects']} objects, p50 {o['p50_ms']:.2f} ms, p99 "
               f"{o['p99_ms']:.2f} ms, {o['mbs']:.0f} MB/s"))
    log("  1 MiB objects read from cold: " + ", ".join(
        f"{w} set {v['read_cold']}/{v['objects']}" for w, v in out["small"]["sets"].items()))

    # -- large: sequential, then threaded over the objects each tier really holds
    seq_passes = max(1, args.latency_passes // 3)
    out["large_seq"] = sequential_phase(srv, s3, sets, "large", seq_passes, data, large, server)
    for tier in ("cold", "hot"):
        o = out["large_seq"][tier]
        log(f"  {args.large_mib} MiB GET sequential, {tier}: " + (
            "none" if o is None else f"{o['gets']} GETs, {o['mbs']:.0f} MB/s, p50 {o['p50_ms']:.1f} ms"))
    log(f"  {args.large_mib} MiB objects read from cold: " + ", ".join(
        f"{w} set {v['read_cold']}/{v['objects']}" for w, v in out["large_seq"]["sets"].items()))
    chunks_per = -(-large // (4 * MiB))
    last = out["large_seq"]["last"]
    groups = {"cold": [k for k, c in last.items() if c > 0],
              "hot": [k for k, c in last.items() if c == 0]}
    out["large_conc"] = {}
    runs: dict = {t: [] for t in groups if groups[t]}
    for p in range(args.large_reps):
        for tier in (("cold", "hot") if p % 2 == 0 else ("hot", "cold")):
            if groups[tier]:
                runs[tier].append(get_concurrent(srv, groups[tier], data, large, args.threads, server))
    for tier in ("cold", "hot"):
        rs = runs.get(tier)
        if not rs:
            out["large_conc"][tier] = None
            continue
        wall = sum(r["wall_s"] for r in rs)
        nbytes = sum(r["bytes"] for r in rs)
        cpu = sum(r["server_cpu_s"] for r in rs)
        client = sum(r["client_cpu_s"] for r in rs)
        gets_n = sum(r["gets"] for r in rs)
        out["large_conc"][tier] = {
            "gets": gets_n, "objects": len(groups[tier]), "threads": args.threads, "wall_s": wall,
            "mbs": nbytes / MB / wall, "server_cpu_s": cpu, "server_cores": cpu / wall,
            "server_cpu_ms_per_mb": 1e3 * cpu / (nbytes / MB), "client_cores": client / wall,
            "others_cpu_s": sum(r["others_cpu_s"] for r in rs),
            "cold_chunks": sum(r["cold_chunks"] for r in rs),
            "expected_cold_chunks": gets_n * chunks_per if tier == "cold" else 0,
            "mbs_per_rep": [r["mbs"] for r in rs]}
        o = out["large_conc"][tier]
        log(f"  {args.large_mib} MiB GET x{args.threads} threads, {tier} ({o['objects']} objects): "
            f"{o['mbs']:.0f} MB/s (reps " + ", ".join(f"{x:.0f}" for x in o["mbs_per_rep"])
            + f"), server {o['server_cores']:.2f} cores, client {o['client_cores']:.2f}; "
            f"{o['cold_chunks']} cold chunk reads (expected {o['expected_cold_chunks']})")
    st = node_status(srv)
    out["end_status"] = {"cold_reads": st["cold"]["cold_reads"],
                         "cold_read_bytes": st["cold"]["cold_read_bytes"],
                         "cache": st["cold"]["cache"], "hot_bytes": st["cold"]["hot_bytes"],
                         "evicted_segments": st["cold"]["evicted_segments"],
                         "maintenance_error": st["cold"]["maintenance_error"],
                         "shipper_error": st["cold"]["shipper"]["last_error"]}
    out["server_log_warnings"] = out["write"].pop("log_warnings", []) + _log_warnings(srv)


def _log_warnings(srv) -> list:
    return [ln for ln in srv.output if any(w in ln for w in ("WARNING", "ERROR", "Traceback"))][:20]


# ---- report ---------------------------------------------------------------------------------------------
def report(ship: dict | None, gets: dict | None) -> str:
    parts = []
    if ship:
        rows = []
        for name, v in ship["variants"].items():
            s, r, f = v["shipper"], v["raw"], v["raw+files"]
            rows.append((f"{name}: MB/s", f"{s['mbs']:.0f}", f"{r['mbs']:.0f}", f"{f['mbs']:.0f}",
                         _ratio(s["mbs"], r["mbs"]), _ratio(s["mbs"], f["mbs"])))
            rows.append((f"{name}: CPU s per GB", f"{s['cpu_s_per_gb']:.2f}", f"{r['cpu_s_per_gb']:.2f}",
                         f"{f['cpu_s_per_gb']:.2f}", _ratio(s["cpu_s_per_gb"], r["cpu_s_per_gb"]),
                         _ratio(s["cpu_s_per_gb"], f["cpu_s_per_gb"])))
            segs = v["mbs_range"] = {p: (min(v[p]["mbs_per_segment"]), max(v[p]["mbs_per_segment"]))
                                     for p in ("shipper", "raw", "raw+files")}
            rows.append((f"{name}: MB/s per segment, range",
                         *(f"{segs[p][0]:.0f}-{segs[p][1]:.0f}" for p in ("shipper", "raw", "raw+files")),
                         "", ""))
        parts.append("Shipping (one thread, MB/s of raw chunk bytes; segments of "
                     f"{ship['segment_bytes'] // MiB} MiB, k={ship['k']} m={ship['m']} {ship['ec_type']}, "
                     f"zstd {ship['zstd_level']}):")
        parts.append(_table(("", "shipper", "raw zstd+EC", "raw+files fsync", "shipper/raw",
                             "shipper/raw+files"), rows))
        brows = []
        for name, v in ship["variants"].items():
            b, tot = v["breakdown"], v["shipper"]["wall_s"]
            brows.append((name, f"{b['build_s']:.2f}s ({100 * b['build_s'] / tot:.0f}%)",
                          f"{b['store_s']:.2f}s ({100 * b['store_s'] / tot:.0f}%)",
                          f"{b['commit_s']:.3f}s", f"{v['plan_s']:.3f}s",
                          f"{v['segment_bytes'] / v['chunk_bytes']:.2f}",
                          f"{v['shard_bytes'] / v['segment_bytes']:.2f}"))
        parts.append("\nShipper breakdown (sum over segments; plan = plan_range, not in the MB/s):")
        parts.append(_table(("", "build", "store (EC+fsync+verify)", "commit", "plan",
                             "segment/raw", "shards/segment"), brows))
    if gets:
        sm, ls, lc = gets["small"], gets["large_seq"], gets["large_conc"]
        big = f"{gets['large_size'] // MiB} MiB"
        thr = gets["threads"]

        def row(label, phase, key, fmt, ratio=True):
            c, h = phase.get("cold"), phase.get("hot")
            cv = c[key] if c else None
            hv = h[key] if h else None
            return (label, fmt.format(cv) if cv is not None else "-", fmt.format(hv) if hv is not None else "-",
                    _ratio(cv, hv) if ratio else "")

        def sets(phase):
            return tuple(f"{v['read_cold']}/{v['objects']}" for v in (phase["sets"]["cold"], phase["sets"]["hot"]))

        rows = [
            row("1 MiB GET p50 ms (sequential)", sm, "p50_ms", "{:.2f}"),
            row("1 MiB GET p99 ms", sm, "p99_ms", "{:.2f}"),
            row("1 MiB GET mean ms", sm, "mean_ms", "{:.2f}"),
            row("1 MiB GET MB/s (sequential)", sm, "mbs", "{:.0f}"),
            row("1 MiB GET server CPU ms/GET", sm, "server_cpu_ms_per_get", "{:.2f}"),
            row("1 MiB GET server page faults/GET", sm, "server_faults_per_get", "{:.0f}"),
            row("1 MiB GETs measured", sm, "gets", "{}", False),
            row(f"{big} GET MB/s (sequential)", ls, "mbs", "{:.0f}"),
            row(f"{big} GET MB/s ({thr} threads)", lc, "mbs", "{:.0f}"),
            row(f"{big} GET server CPU ms/MB ({thr} thr)", lc, "server_cpu_ms_per_mb", "{:.2f}"),
            row(f"{big} GET server cores ({thr} thr)", lc, "server_cores", "{:.2f}", False),
            row(f"{big} GET client cores ({thr} thr)", lc, "client_cores", "{:.2f}", False),
            ("1 MiB objects read cold: cold set, hot set", *sets(sm), ""),
            (f"{big} objects read cold: cold set, hot set", *sets(ls), ""),
        ]
        w = gets["write"]
        parts.append("\nCold GET vs hot GET (a `tidestore serve` process, boto3; no cold-read cache; "
                     f"shards are files on this disk; {gets['engine']['segment_size'] // MiB} MiB WAL "
                     "segments, 4 MiB chunks). cold = GETs that read the shards, hot = GETs that did not:")
        parts.append(_table(("", "cold", "hot", "cold/hot"), rows))
        parts.append(f"(in the server: {w['bytes'] / MB:.0f} MB written, PUTs at {w['put_mbs']:.0f} MB/s; "
                     f"{w['segments_shipped']} cold segments shipped, the last {w['settle_s']:.1f}s after the "
                     f"last PUT; " + ("evicted while writing" if gets["one_phase"] else "evicted after a restart")
                     + f": hot tier {w['hot_bytes'] / MB:.0f} MB, budget {w['hot_budget'] / MB:.0f} MB)")
    return "\n".join(parts)


def warnings(ship: dict | None, gets: dict | None) -> list[str]:
    out = []
    busy = []
    if ship:
        for name, v in ship["variants"].items():
            for p in ("shipper", "raw", "raw+files"):
                if v[p]["others_cpu_s"] > OTHERS_WARN * v[p]["wall_s"]:
                    busy.append(f"{name} {p} ({100 * v[p]['others_cpu_s'] / v[p]['wall_s']:.0f}% of a core)")
    if gets:
        for phase in ("small", "large_seq"):
            d = gets[phase]
            if d["wall_s"] and d["others_cpu_s"] > OTHERS_WARN * d["wall_s"]:
                busy.append(f"{phase} ({100 * d['others_cpu_s'] / d['wall_s']:.0f}% of a core)")
        for tier, d in gets["large_conc"].items():
            if d and d["others_cpu_s"] > OTHERS_WARN * d["wall_s"]:
                busy.append(f"large_conc {tier} ({100 * d['others_cpu_s'] / d['wall_s']:.0f}% of a core)")
        for phase in ("small", "large_seq"):
            cs, hs = gets[phase]["sets"]["cold"], gets[phase]["sets"]["hot"]
            if cs["read_cold"] < cs["objects"]:
                out.append(f"{phase}: {cs['objects'] - cs['read_cold']} of {cs['objects']} cold-set objects "
                           "were still hot (not evicted); they count as hot")
            if hs["read_cold"]:
                w = gets["write"]
                out.append(f"{phase}: {hs['read_cold']} of {hs['objects']} hot-set objects were read from "
                           f"cold storage (the node evicted past its budget: hot tier {w['hot_bytes'] / MB:.0f} MB,"
                           f" budget {w['hot_budget'] / MB:.0f} MB); they count as cold")
            for tier in ("cold", "hot"):
                if gets[phase][tier] is None:
                    out.append(f"{phase}: no GET was {tier}: no {tier} figures")
        for tier, d in gets["large_conc"].items():
            if d and d["cold_chunks"] != d["expected_cold_chunks"]:
                out.append(f"threaded {tier} GETs read {d['cold_chunks']} chunks from cold storage, expected "
                           f"{d['expected_cold_chunks']}: objects moved between tiers during the run")
        es = gets.get("end_status", {})
        if es.get("maintenance_error") or es.get("shipper_error"):
            out.append(f"node errors: maintenance {es.get('maintenance_error')}, shipper {es.get('shipper_error')}")
        if gets.get("server_log_warnings"):
            out.append(f"{len(gets['server_log_warnings'])} warning/error lines in the server log, e.g. "
                       + gets["server_log_warnings"][0][:200])
    if busy:
        out.append("other processes on this machine used CPU during: " + "; ".join(busy)
                   + ". Those figures are lower than a quiet machine gives; rerun when it is idle.")
    return out


# ---- main -------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="less data (the whole run under ~1 minute)")
    p.add_argument("--segment-mib", type=int, help="shipping: cold segment size (default 64, quick 32)")
    p.add_argument("--segments", type=int, help="shipping: segments of 4 MiB objects (default 8, quick 3)")
    p.add_argument("--small-segments", type=int,
                   help="shipping: segments of 64 KiB objects (default 4, quick 2)")
    p.add_argument("--small-objects", type=int, help="GETs: 1 MiB objects per set (default 64, quick 32)")
    p.add_argument("--large-objects", type=int, help="GETs: large objects per set (default 6, quick 3)")
    p.add_argument("--large-mib", type=int, default=16, help="GETs: size of the large objects (default 16)")
    p.add_argument("--wal-segment-mib", type=int, default=4,
                   help="GETs: the node's WAL segment size, [engine] segment_size (default 4)")
    p.add_argument("--one-phase", action="store_true",
                   help="GETs: the hot budget applies while writing (eviction runs while the shipper "
                        "works), instead of writing with none and restarting the node with it")
    p.add_argument("--latency-passes", type=int, help="sequential passes over the 1 MiB objects "
                                                      "of each set (default 6, quick 3)")
    p.add_argument("--large-reps", type=int, help="threaded passes over the large objects (default 6, quick 2)")
    p.add_argument("--threads", type=int, default=4, help="client threads for the large-object MB/s phase")
    p.add_argument("--only", choices=("ship", "get"), help="run one part only")
    p.add_argument("--settle-timeout", type=float, default=120.0)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--work-dir", help="where the data goes (default: benchmarks/.tier-bench-tmp, "
                                      "on the repository's disk)")
    p.add_argument("--out", help="also write every number to FILE as JSON")
    args = p.parse_args(argv)
    q = args.quick
    args.segment_mib = args.segment_mib or (32 if q else 64)
    args.segments = args.segments if args.segments is not None else (3 if q else 8)
    args.small_segments = args.small_segments if args.small_segments is not None else (2 if q else 4)
    args.small_objects = args.small_objects or (32 if q else 64)
    args.large_objects = args.large_objects or (3 if q else 6)
    args.latency_passes = args.latency_passes or (3 if q else 6)
    args.large_reps = args.large_reps or (2 if q else 6)

    tee = Tee(sys.stdout)
    sys.stdout = tee

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    parent = args.work_dir or os.path.join(HERE, ".tier-bench-tmp")
    own_parent = not os.path.exists(parent)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="run-", dir=parent)
    info = _machine_info(work, ("pyeclib", "zstandard", "boto3"))
    log(f"Tidestore cold tier benchmark  (work dir {work}, {info['fs']})")
    log(f"machine: nproc={info['nproc']} cpu={info['cpu']!r}  python {info['python']}  "
        f"pyeclib {info.get('pyeclib', '?')} zstandard {info.get('zstandard', '?')} boto3 "
        f"{info.get('boto3', '?')}; load average before the run: {info['loadavg']}")
    t_start = time.monotonic()
    ship = gets = None
    failed: dict = {}
    interrupted = False
    try:
        if args.only in (None, "ship"):
            log("\n1. shipping vs raw zstd + pyeclib (in-process)")
            try:
                ship = shipping_part(os.path.join(work, "ship"), args)
            except Exception as exc:  # noqa: BLE001 - reported; the other part still runs
                failed["shipping"] = f"{type(exc).__name__}: {exc}"
                log(f"  FAILED: {failed['shipping']}")
            shutil.rmtree(os.path.join(work, "ship"), ignore_errors=True)
        if args.only in (None, "get"):
            log("\n2. cold GET vs hot GET (`tidestore serve`)")
            os.makedirs(os.path.join(work, "get"))
            try:
                gets = get_part(os.path.join(work, "get"), args)
            except Exception as exc:  # noqa: BLE001 - reported
                failed["gets"] = f"{type(exc).__name__}: {exc}"
                log(f"  FAILED: {failed['gets']}")
    except KeyboardInterrupt as exc:
        interrupted = True
        log(f"\ninterrupted ({str(exc) or 'Ctrl-C'})")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.keep:
            log(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if own_parent:
                with contextlib.suppress(OSError):
                    os.rmdir(parent)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if interrupted:
        return 130
    elapsed = time.monotonic() - t_start
    log(f"\n== Results (run took {elapsed:.0f}s; load average after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()) + ") ==")
    log(report(ship, gets))
    warns = warnings(ship, gets)
    for part, why in failed.items():
        warns.insert(0, f"part {part!r} FAILED, no numbers: {why}")
    for w in warns:
        log("WARNING: " + w)
    log("\nMB = 10^6 bytes. Ratios: shipper/raw and cold/hot (for latency and CPU lower is better).")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"info": info, "args": vars(args), "elapsed_s": elapsed, "shipping": ship,
                       "gets": gets, "failed": failed, "warnings": warns, "report": tee.text()},
                      f, indent=1, default=str)
        log(f"report written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

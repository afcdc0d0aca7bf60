"""Engine benchmark: the storage engine against raw peers measured in the same run.

Usage (from the repository root):

    PYTHONPATH=. python benchmarks/engine_bench.py            # default run, ~1-3 minutes
    PYTHONPATH=. python benchmarks/engine_bench.py --quick    # smaller run
    PYTHONPATH=. python benchmarks/engine_bench.py --help

Everything runs in one temporary directory on one filesystem (by default next to the
repository, on the repository's disk), so every engine figure has a raw peer measured
on the same disk, interleaved with the engine runs (the machine may be shared):

1. Durable chunk writes: objects of 4 MiB chunks (write_chunk, wait_durable, then the
   PutObject entry), with 1 and 2 writer threads, against a raw sequential write of the
   same total in 4 MiB writes with one fdatasync at the end (and, for reference, one
   fdatasync every object-size bytes, which is the durability the engine gives).
2. Small commits: threads each doing begin + write_chunk(4 KiB) + PutObject (LSNs
   handed out in order, Engine.submit, then wait), and the S3 server's shape (asyncio,
   raftlog.LocalLog), against a raw 4 KiB write+fdatasync loop; commits/s, fsyncs,
   commits per fsync, latency, CPU per commit.
3. Recovery time per GiB of WAL: a WAL of mixed large chunks and many small commits,
   checkpoints off, then a crash (abandon) and a timed reopen; also a power-loss style
   reopen (catalog rolled back to its last checkpoint: full redo) and a clean reopen.
4. Memory as object size grows: peak RSS of a fresh process that writes and reads back
   one object, per size.

Goals (from the issue): durable chunk writes >= 70% of the raw figure; small commits
above the raw fsync rate thanks to group commit; memory flat as object size grows.
Each goal gets a one-line verdict, met or NOT MET.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

MiB = 1 << 20
GiB = 1 << 30

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from engine import Engine, entries as E  # noqa: E402

BUCKET = "bench"


# ---- small helpers ------------------------------------------------------------------
def fresh_dir(root: str, name: str) -> str:
    path = os.path.join(root, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def chunk_buffer(size: int, tag: int) -> bytearray:
    """A random buffer; stamp() makes each chunk unique without allocating."""
    buf = bytearray(os.urandom(size))
    struct.pack_into("<Q", buf, 8, tag)
    return buf


def stamp(buf: bytearray, n: int) -> None:
    struct.pack_into("<Q", buf, 0, n)


def pct(sorted_vals: list, p: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so each phase gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak RSS since the last reset_peak_rss() (else since the process started)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def join_or_die(threads: list, timeout: float, what: str) -> None:
    """Join worker threads; if they are stuck (an engine deadlock), print every
    thread's stack and stop the benchmark instead of hanging forever."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            print(f"\nHANG: {what} did not finish within {timeout:.0f} s; thread stacks:",
                  file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            print(f"\nHANG in {what}: the engine is stuck (stacks on stderr)", flush=True)
            os._exit(3)


def current_rss() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def evict(path: str) -> None:
    """Make a file's pages cold: flush it, then drop it from the page cache (this
    file only, no machine-wide drop_caches)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def table(title: str, header: list, rows: list) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    print(line)
    print("-" * len(line))
    for r in cells[1:]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    sys.stdout.flush()


class Committer:
    """Hands out increasing log LSNs and commits entries the way the Raft apply thread
    would: the LSN is taken and the entry submitted under one lock (submit only appends
    and queues, it does not wait), then the caller waits for durability outside it, so
    concurrent committers share fsyncs and catalog commits."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.lock = threading.Lock()
        self.next_lsn = engine.applied_lsn + 1
        self.serialised = not hasattr(engine, "submit")

    def submit(self, entry):
        with self.lock:
            lsn = self.next_lsn
            self.next_lsn += 1
            if self.serialised:  # an engine without submit(): apply blocks, so this serialises
                result = self.engine.apply(lsn, entry)
                return _Done(result)
            return self.engine.submit(lsn, entry)

    def commit(self, entry):
        result = self.submit(entry).wait()
        if result.error or result.skipped:
            raise RuntimeError(f"commit failed: {result}")
        return result


class _Done:
    def __init__(self, result):
        self.result = result

    def wait(self):
        return self.result


ENGINE_OVERRIDES: dict = {}  # from the command line (--catalog-sync)


def open_engine(path: str, **kw) -> tuple[Engine, Committer]:
    eng = Engine(path, **{**ENGINE_OVERRIDES, **kw})
    committer = Committer(eng)
    if eng.bucket(BUCKET) is None:
        committer.commit(E.CreateBucket(BUCKET, int(time.time() * 1000)))
    return eng, committer


# ---- 1. durable chunk writes -----------------------------------------------------------
def raw_sequential(root: str, total: int, chunk: int, sync_every: int | None) -> float:
    """MiB/s writing `total` bytes in `chunk` writes, fdatasync every `sync_every`
    bytes (None: once at the end). The clock stops after the last fdatasync."""
    d = fresh_dir(root, "raw-seq")
    path = os.path.join(d, "data")
    buf = chunk_buffer(chunk, 0)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written = since_sync = 0
    n = 0
    while written < total:
        stamp(buf, n)
        n += 1
        written += os.write(fd, buf)
        since_sync += chunk
        if sync_every and since_sync >= sync_every:
            os.fdatasync(fd)
            since_sync = 0
    os.fdatasync(fd)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    shutil.rmtree(d)
    return total / MiB / elapsed


def engine_chunk_writes(root: str, total: int, obj_size: int, chunk: int, writers: int,
                        flush_behind: bool = False) -> dict:
    """Objects of `chunk`-sized chunks; per object: write_chunk x n, wait_durable,
    then the PutObject entry (returns once durable and visible). Default config.
    flush_behind: a helper thread calls wait_durable(chunk end) after every chunk, so
    the disk writes the object while the writer hashes the next chunks (group commit
    keeps that to one fdatasync at a time); the writer's own wait at the end of the
    object then only covers the tail."""
    d = fresh_dir(root, f"engine-chunks-{writers}")
    eng, committer = open_engine(d)
    import queue
    flushq: queue.Queue = queue.Queue()

    def flusher():
        while True:
            end = flushq.get()
            if end is None:
                return
            while not flushq.empty():  # skip to the newest: one sync covers them all
                nxt = flushq.get()
                if nxt is None:
                    return
                end = nxt
            eng.wait_durable(end)

    helper = threading.Thread(target=flusher, daemon=True) if flush_behind else None
    if helper:
        helper.start()
    n_objects = max(1, total // obj_size)
    per_obj = max(1, obj_size // chunk)
    next_obj = [0]
    obj_lock = threading.Lock()
    errors: list = []
    f0 = eng.stats()["fsyncs"]

    def writer(wid: int):
        buf = chunk_buffer(chunk, wid)
        try:
            while True:
                with obj_lock:
                    i = next_obj[0]
                    if i >= n_objects:
                        return
                    next_obj[0] += 1
                txn = eng.begin()
                refs = []
                for c in range(per_obj):
                    stamp(buf, i * per_obj + c)
                    refs.append(eng.write_chunk(txn, buf))
                    if flush_behind:
                        flushq.put(refs[-1].end)
                eng.wait_durable(refs[-1].end)
                committer.commit(E.PutObject(
                    BUCKET, f"big/{i}", per_obj * chunk, f"{i:032x}",
                    [(r.chunk_id, r.length) for r in refs], int(time.time() * 1000), txn_id=txn))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    join_or_die(threads, 120 + total / MiB, f"chunk writes ({writers} writers)")
    elapsed = time.perf_counter() - t0
    if helper:
        flushq.put(None)
        join_or_die([helper], 60, "flush-behind helper")
    if errors:
        raise errors[0]
    fsyncs = eng.stats()["fsyncs"] - f0
    eng.close()
    shutil.rmtree(d)
    nbytes = n_objects * per_obj * chunk
    return {"mib_s": nbytes / MiB / elapsed, "objects": n_objects, "bytes": nbytes,
            "seconds": elapsed, "fsyncs": fsyncs}


# ---- 2. small commits ------------------------------------------------------------------
def raw_small_fsync(root: str, seconds: float, size: int = 4096) -> dict:
    d = fresh_dir(root, "raw-small")
    fd = os.open(os.path.join(d, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    buf = os.urandom(size)
    lat = []
    t0 = time.perf_counter()
    stop = t0 + seconds
    now = t0
    while now < stop:
        os.write(fd, buf)
        os.fdatasync(fd)
        t = time.perf_counter()
        lat.append(t - now)
        now = t
    elapsed = now - t0
    os.close(fd)
    shutil.rmtree(d)
    lat.sort()
    return {"ops_s": len(lat) / elapsed, "ops": len(lat), "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3}


def engine_small_commits(root: str, threads: int, seconds: float, size: int = 4096,
                         raft_shaped: bool = False) -> dict:
    """Each thread loops: begin, write_chunk(size), PutObject; returns once durable and
    visible. raft_shaped: each thread first waits for its chunk to be durable (the
    write path's 'chunks durable before proposing'), then hands the entry to one
    applier thread that submits entries in LSN order without waiting (the shape of a
    Raft apply loop); the thread waits for its entry's result."""
    d = fresh_dir(root, f"engine-small-{threads}{'-raft' if raft_shaped else ''}")
    eng, committer = open_engine(d)
    lats: list[list] = [[] for _ in range(threads)]
    errors: list = []
    stop_at = [0.0]
    import queue
    q: queue.Queue = queue.Queue()

    def applier():
        while True:
            item = q.get()
            if item is None:
                return
            entry, slot, ready = item
            try:
                slot.append(committer.submit(entry))
            except BaseException as exc:  # noqa: BLE001
                slot.append(exc)
            ready.set()

    def worker(tid: int):
        buf = chunk_buffer(size, tid)
        lat = lats[tid]
        i = 0
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at[0]:
                    return
                stamp(buf, i)
                txn = eng.begin()
                ref = eng.write_chunk(txn, buf)
                entry = E.PutObject(BUCKET, f"small/{tid}/{i}", size, f"{i:032x}",
                                    [(ref.chunk_id, ref.length)], int(time.time() * 1000),
                                    txn_id=txn)
                if raft_shaped:
                    eng.wait_durable(ref.end)
                    slot: list = []
                    ready = threading.Event()
                    q.put((entry, slot, ready))
                    ready.wait()
                    if isinstance(slot[0], BaseException):
                        raise slot[0]
                    res = slot[0].wait()
                    if res.error or res.skipped:
                        raise RuntimeError(f"commit failed: {res}")
                else:
                    committer.commit(entry)
                lat.append(time.perf_counter() - t0)
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    app = threading.Thread(target=applier, daemon=True) if raft_shaped else None
    if app:
        app.start()
    f0 = eng.stats()["fsyncs"]
    b0 = eng._publisher.batches if hasattr(eng, "_publisher") else None
    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in ts:
        t.start()
    join_or_die(ts, seconds + 60, f"small commits ({threads} threads)")
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    if app:
        q.put(None)
        join_or_die([app], 60, "raft-shaped applier")
    if errors:
        raise errors[0]
    fsyncs = eng.stats()["fsyncs"] - f0
    batches = eng._publisher.batches - b0 if b0 is not None else None
    eng.close()
    shutil.rmtree(d)
    lat = sorted(x for l in lats for x in l)
    n = len(lat)
    return {"threads": threads, "commits": n, "commits_s": n / elapsed, "fsyncs": fsyncs,
            "per_fsync": n / fsyncs if fsyncs else float("nan"),
            "catalog_batches": batches,
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "seconds": elapsed,
            "cpu_us": cpu / n * 1e6 if n else float("nan"), "cpu_util": cpu / elapsed,
            "serialised": committer.serialised}


def engine_small_commits_async(root: str, concurrency: int, seconds: float,
                               size: int = 4096) -> dict:
    """The S3 server's shape: one asyncio event loop, `concurrency` requests in flight,
    each: begin, write_chunk (inline on the loop, as the node does for small chunks),
    then propose through the single-member log (raftlog.LocalLog: LSN + submit under a
    lock, completion handed back to the loop with call_soon_threadsafe)."""
    import asyncio
    try:
        from raftlog import LocalLog
    except ImportError:  # the engine alone: the same pattern, inline
        LocalLog = None
    d = fresh_dir(root, f"engine-async-{concurrency}")
    eng, committer = open_engine(d)
    lat: list = []
    buf = chunk_buffer(size, 99)
    counter = [0]

    async def run():
        loop = asyncio.get_running_loop()
        log = LocalLog(eng) if LocalLog is not None else None
        lock = threading.Lock()
        next_lsn = [eng.applied_lsn + 1]

        async def propose(entry):
            if log is not None:
                return await log.propose(entry)
            fut = loop.create_future()
            with lock:
                lsn = next_lsn[0]
                next_lsn[0] += 1
                pending = eng.submit(lsn, entry)
            pending.add_done_callback(
                lambda p: loop.call_soon_threadsafe(
                    lambda: fut.done() or fut.set_result(p.result())))
            return await fut

        stop = time.perf_counter() + seconds

        async def worker():
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                i = counter[0]
                counter[0] += 1
                stamp(buf, i)
                txn = eng.begin()
                ref = eng.write_chunk(txn, buf)
                res = await propose(E.PutObject(
                    BUCKET, f"async/{i}", size, f"{i:032x}", [(ref.chunk_id, ref.length)],
                    int(time.time() * 1000), txn_id=txn))
                if res.error or res.skipped:
                    raise RuntimeError(f"commit failed: {res}")
                lat.append(time.perf_counter() - t0)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))),
                               seconds + 60)

    f0 = eng.stats()["fsyncs"]
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    try:
        asyncio.run(run())
    except asyncio.TimeoutError:
        print(f"\nHANG: asyncio small commits ({concurrency} in flight) did not finish; "
              "thread stacks on stderr", flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(3)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    fsyncs = eng.stats()["fsyncs"] - f0
    eng.close()
    shutil.rmtree(d)
    lat.sort()
    n = len(lat)
    return {"threads": concurrency, "commits": n, "commits_s": n / elapsed, "fsyncs": fsyncs,
            "per_fsync": n / fsyncs if fsyncs else float("nan"),
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "seconds": elapsed,
            "cpu_us": cpu / n * 1e6 if n else float("nan"), "cpu_util": cpu / elapsed,
            "serialised": False, "asyncio": True,
            "via": "raftlog.LocalLog" if LocalLog is not None else "inline submit"}


# ---- 3. recovery ------------------------------------------------------------------------
def build_wal(d: str, target: int, chunk: int, obj_chunks: int, small: int,
              small_share: float) -> dict:
    """A WAL of about `target` bytes: rounds of one large object (obj_chunks chunks)
    followed by small commits making up `small_share` of the bytes. Checkpoints off.
    Every commit is made durable (the publisher batches the small ones)."""
    eng, committer = open_engine(d, maintenance_interval_s=0, checkpoint_bytes=1 << 62)
    eng.checkpoint()  # the redo point: right after the bucket
    snap = os.path.join(os.path.dirname(d), "catalog-at-checkpoint")
    shutil.rmtree(snap, ignore_errors=True)
    os.makedirs(snap)
    eng.catalog.env.copy(snap)  # what a power loss could leave: the last synced catalog
    start = eng.wal.end
    big = chunk_buffer(chunk, 1)
    little = chunk_buffer(small, 2)
    large_bytes = obj_chunks * chunk
    small_per_round = max(1, int(large_bytes * small_share / (1 - small_share) / (small + 400)))
    objects = smalls = n = 0
    t0 = time.perf_counter()
    while eng.wal.end - start < target:
        txn = eng.begin()
        refs = []
        for _ in range(obj_chunks):
            stamp(big, n)
            n += 1
            refs.append(eng.write_chunk(txn, big))
        eng.wait_durable(refs[-1].end)
        committer.commit(E.PutObject(BUCKET, f"big/{objects}", large_bytes, "0" * 32,
                                     [(r.chunk_id, r.length) for r in refs],
                                     int(time.time() * 1000), txn_id=txn))
        objects += 1
        last = None
        for _ in range(small_per_round):
            if eng.wal.end - start >= target:
                break
            stamp(little, n)
            n += 1
            txn = eng.begin()
            ref = eng.write_chunk(txn, little)
            last = committer.submit(E.PutObject(
                BUCKET, f"small/{smalls}", small, "0" * 32, [(ref.chunk_id, ref.length)],
                int(time.time() * 1000), txn_id=txn))
            smalls += 1
        if last is not None:
            res = last.wait()
            if res.error or res.skipped:
                raise RuntimeError(f"building the WAL: commit failed: {res}")
    build_s = time.perf_counter() - t0
    wal_bytes = eng.wal.end - start
    eng.abandon()  # crash: no checkpoint, no final sync
    return {"wal_bytes": wal_bytes, "large_objects": objects, "small_objects": smalls,
            "build_s": build_s, "snapshot": snap}


class CrashState:
    """Saves the on-disk state left by a crash (WAL segments by hard link, master,
    catalog) so several reopens can start from exactly the same state."""

    def __init__(self, d: str, backup: str):
        self.d, self.backup = d, backup
        shutil.rmtree(backup, ignore_errors=True)
        os.makedirs(os.path.join(backup, "wal"))
        self.wal_dir = os.path.join(d, "wal")
        self.sizes = {}
        for name in os.listdir(self.wal_dir):
            src = os.path.join(self.wal_dir, name)
            os.link(src, os.path.join(backup, "wal", name))
            self.sizes[name] = os.path.getsize(src)
        with open(os.path.join(d, "master"), "rb") as f:
            self.master = f.read()
        self.catalog_crash = os.path.join(backup, "catalog-crash.mdb")
        shutil.copyfile(os.path.join(d, "catalog", "data.mdb"), self.catalog_crash)

    def restore(self, catalog_file: str, cold: bool) -> None:
        for name in os.listdir(self.wal_dir):
            os.unlink(os.path.join(self.wal_dir, name))
        for name, size in self.sizes.items():
            dst = os.path.join(self.wal_dir, name)
            os.link(os.path.join(self.backup, "wal", name), dst)
            if os.path.getsize(dst) != size:  # the reopen appended a checkpoint
                os.truncate(dst, size)
        with open(os.path.join(self.d, "master"), "wb") as f:
            f.write(self.master)
        cat = os.path.join(self.d, "catalog")
        shutil.rmtree(cat)
        os.makedirs(cat)
        shutil.copyfile(catalog_file, os.path.join(cat, "data.mdb"))
        if cold:
            for name in self.sizes:
                evict(os.path.join(self.wal_dir, name))
            evict(os.path.join(cat, "data.mdb"))


def timed_open(d: str) -> tuple[dict, Engine]:
    t0 = time.perf_counter()
    eng = Engine(d, maintenance_interval_s=0, checkpoint_bytes=1 << 62)
    open_s = time.perf_counter() - t0
    r = eng.recovery_report
    out = {"open_s": open_s, "recovery_s": r.duration_s, "analysis_s": r.analysis_s,
           "redo_s": r.redo_s, "undo_s": r.undo_s, "scanned": r.records_scanned,
           "redone": r.records_redone, "txns_undone": r.txns_undone,
           "scan_bytes": r.end_lsn - (r.checkpoint_lsn or r.redo_lsn)}
    return out, eng


def recovery_bench(root: str, target: int, chunk: int, obj_chunks: int, small: int,
                   small_share: float) -> dict:
    d = fresh_dir(root, "engine-recovery")
    built = build_wal(d, target, chunk, obj_chunks, small, small_share)
    state = CrashState(d, os.path.join(root, "crash-backup"))
    snap_file = os.path.join(built["snapshot"], "data.mdb")
    runs = {}
    # kill -9 without power loss: the catalog's unsynced writes survived in the page cache
    state.restore(state.catalog_crash, cold=True)
    runs["crash, cold cache"], eng = timed_open(d)
    eng.abandon()
    # power loss: the catalog is back at its last sync (the checkpoint): full redo
    state.restore(snap_file, cold=True)
    runs["power loss, cold cache"], eng = timed_open(d)
    eng.abandon()
    state.restore(snap_file, cold=False)
    runs["power loss, warm cache"], eng = timed_open(d)
    eng.close()  # clean shutdown: checkpoint
    for name in os.listdir(os.path.join(d, "wal")):
        evict(os.path.join(d, "wal", name))
    runs["after clean close, cold"], eng = timed_open(d)
    eng.close()
    shutil.rmtree(d)
    shutil.rmtree(state.backup)
    shutil.rmtree(built["snapshot"])
    return {"built": built, "runs": runs}


# ---- 4. memory --------------------------------------------------------------------------
def mem_child(d: str, size: int, chunk: int) -> dict:
    """Run in a fresh process: write one object of `size` bytes, read it back."""
    eng, committer = open_engine(d)
    buf = chunk_buffer(chunk, 3)
    per_phase = reset_peak_rss()
    base_peak, base_rss = peak_rss(), current_rss()
    reset_peak_rss()
    txn = eng.begin()
    refs = []
    crc = 0
    t0 = time.perf_counter()
    n = 0
    remaining = size
    while remaining > 0:
        stamp(buf, n)
        n += 1
        piece = buf if remaining >= chunk else memoryview(buf)[:remaining]
        crc = zlib.crc32(piece, crc)
        refs.append(eng.write_chunk(txn, piece))
        remaining -= len(piece)
    eng.wait_durable(refs[-1].end)
    committer.commit(E.PutObject(BUCKET, "obj", size, "0" * 32,
                                 [(r.chunk_id, r.length) for r in refs],
                                 int(time.time() * 1000), txn_id=txn))
    write_s = time.perf_counter() - t0
    write_peak, write_rss = peak_rss(), current_rss()
    reset_peak_rss()
    t0 = time.perf_counter()
    got = 0
    rcrc = 0
    with eng.open_object(BUCKET, "obj") as r:
        for piece in r.read():
            rcrc = zlib.crc32(piece, rcrc)
            got += len(piece)
    read_s = time.perf_counter() - t0
    read_peak, read_rss = peak_rss(), current_rss()
    eng.close()
    if got != size or rcrc != crc:
        raise RuntimeError(f"read back {got} bytes (crc {rcrc:x}) of {size} (crc {crc:x})")
    return {"size": size, "base_peak": base_peak, "base_rss": base_rss,
            "write_peak": write_peak, "write_rss": write_rss, "read_peak": read_peak,
            "read_rss": read_rss, "write_mib_s": size / MiB / write_s,
            "read_mib_s": size / MiB / read_s, "per_phase_peaks": per_phase}


def memory_bench(root: str, sizes: list[int], chunk: int) -> list[dict]:
    out = []
    for size in sizes:
        d = fresh_dir(root, f"engine-mem-{size}")
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_mem-child", str(size),
             "--_mem-dir", d, "--chunk-mib", str(chunk // MiB)],
            capture_output=True, text=True, env=env)
        shutil.rmtree(d, ignore_errors=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for {size} bytes failed:\n{proc.stderr}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


# ---- main -------------------------------------------------------------------------------
def choose_root(arg: str | None) -> tuple[str, str]:
    if arg:
        base = os.path.abspath(arg)
        os.makedirs(base, exist_ok=True)
    else:
        # next to the repository (same disk), not inside the working tree; /tmp may be
        # another filesystem (tmpfs) and would measure the wrong thing
        parent = os.path.dirname(REPO)
        base = parent if (os.access(parent, os.W_OK)
                          and os.stat(parent).st_dev == os.stat(REPO).st_dev) else REPO
    root = tempfile.mkdtemp(prefix="tidestore-engine-bench-", dir=base)
    return base, root


def fs_line(path: str) -> str:
    st = os.statvfs(path)
    dev = os.stat(path).st_dev
    fstype = "?"
    mount = "?"
    try:
        best = ""
        with open("/proc/mounts") as f:
            for line in f:
                src, mnt, typ = line.split()[:3]
                if path.startswith(mnt) and len(mnt) > len(best):
                    best, fstype, mount = mnt, typ, f"{src} on {mnt}"
    except OSError:
        pass
    free = st.f_bavail * st.f_frsize
    return f"{mount} ({fstype}, dev {os.major(dev)}:{os.minor(dev)}, {free / GiB:.0f} GiB free)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="parent directory for the scratch directory (must be on "
                    "the disk you want to measure; default: next to the repository)")
    ap.add_argument("--quick", action="store_true", help="a smaller, faster run")
    ap.add_argument("--mib", type=int, help="MiB written by each chunk-write run (default 512)")
    ap.add_argument("--repeat", type=int, help="chunk-write rounds, interleaved, best kept "
                    "(default 2; quick 1)")
    ap.add_argument("--object-mib", type=int, default=64, help="object size for chunk writes")
    ap.add_argument("--chunk-mib", type=int, default=4, help="chunk (and raw write) size")
    ap.add_argument("--commit-seconds", type=float, help="seconds per small-commit run (default 3)")
    ap.add_argument("--threads", help="small-commit thread counts, comma separated (default 1,16,64)")
    ap.add_argument("--async", dest="async_conc", help="in-flight requests for the asyncio "
                    "small-commit runs, comma separated (default 64; 0: none)")
    ap.add_argument("--wal-mib", type=int, help="WAL size for the recovery test (default 1024)")
    ap.add_argument("--small-share", type=float, default=0.2,
                    help="share of the recovery WAL made of small commits (default 0.2)")
    ap.add_argument("--mem-mib", help="object sizes for the memory test, comma separated "
                    "(default 16,256,1024)")
    ap.add_argument("--catalog-sync", choices=("on", "off"),
                    help="override the engine's catalog_sync (default on: power-loss safe catalog)")
    ap.add_argument("--only", help="run only some sections: comma list of chunks,small,recovery,memory")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--_mem-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_mem-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    chunk = a.chunk_mib * MiB
    if a.catalog_sync:
        ENGINE_OVERRIDES["catalog_sync"] = a.catalog_sync == "on"

    if a._mem_child is not None:
        print(json.dumps(mem_child(a._mem_dir, a._mem_child, chunk)))
        return 0

    q = a.quick
    total = (a.mib or (128 if q else 512)) * MiB
    repeat = a.repeat or (1 if q else 2)
    obj_size = a.object_mib * MiB
    seconds = a.commit_seconds or (1.0 if q else 3.0)
    threads = [int(x) for x in (a.threads or "1,16,64").split(",")]
    async_conc = [int(x) for x in (a.async_conc or "64").split(",") if int(x) > 0]
    wal_target = (a.wal_mib or (256 if q else 1024)) * MiB
    mem_sizes = [int(x) * MiB for x in (a.mem_mib or ("16,64,256" if q else "16,256,1024")).split(",")]
    sections = set((a.only or "chunks,small,recovery,memory").split(","))

    base, root = choose_root(a.dir)
    tmp_note = ""
    try:
        if os.stat("/tmp").st_dev != os.stat(root).st_dev:
            tmp_note = " (/tmp is another filesystem: not used)"
    except OSError:
        pass
    load0 = os.getloadavg()
    print("Tidestore engine benchmark")
    print(f"scratch: {root}{tmp_note}")
    print(f"disk:    {fs_line(root)}")
    print(f"cpus:    {os.cpu_count()}   python {sys.version.split()[0]}   "
          f"{'quick' if q else 'default'} run   load average {load0[0]:.2f}")
    if load0[0] > 0.5:
        print(f"   WARNING: the machine is busy (load {load0[0]:.2f}) before we start: "
              "figures will be noisy, and\n   engine and raw peers may see different load")
    sys.stdout.flush()
    # a backstop against hangs outside the worker joins (close(), recovery, ...)
    faulthandler.dump_traceback_later(1800, exit=True)
    results: dict = {"scratch": root, "quick": q, "load_before": load0}
    verdicts = []
    t_start = time.perf_counter()
    try:
        if "chunks" in sections:
            runs: dict = {k: [] for k in ("raw_end", "raw_obj", "e1", "e1f", "e2")}
            for _ in range(repeat):  # interleaved, so drift hits everyone alike
                runs["raw_end"].append(raw_sequential(root, total, chunk, None))
                runs["e1"].append(engine_chunk_writes(root, total, obj_size, chunk, 1))
                runs["raw_obj"].append(raw_sequential(root, total, chunk, obj_size))
                runs["e2"].append(engine_chunk_writes(root, total, obj_size, chunk, 2))
                runs["e1f"].append(engine_chunk_writes(root, total, obj_size, chunk, 1,
                                                       flush_behind=True))
            mibs = {k: [r if isinstance(r, float) else r["mib_s"] for r in v]
                    for k, v in runs.items()}
            best = {k: max(v) for k, v in mibs.items()}
            peer = best["raw_end"]
            spread = {k: (f"{min(v):.0f}-{max(v):.0f}" if len(v) > 1 else "") for k, v in mibs.items()}
            n_obj = runs["e1"][0]["objects"]
            labels = [
                ("raw_end", "raw write, fdatasync at end"),
                ("raw_obj", f"raw write, fdatasync every {obj_size // MiB} MiB"),
                ("e1", "engine, 1 writer"),
                ("e2", "engine, 2 writers"),
                ("e1f", "engine, 1 writer + flush-behind helper"),
            ]
            rows = []
            for k, label in labels:
                rows.append([label, f"{best[k]:.0f}", spread[k],
                             "" if k == "raw_end" else f"{best[k] / peer:.0%}",
                             "" if k.startswith("raw") else f"{best[k] / best['raw_obj']:.0%}"])
            table(f"1. Durable chunk writes: {total // MiB} MiB in {chunk // MiB} MiB writes; engine: "
                  f"{n_obj} objects of {obj_size // MiB} MiB\n   (best of {repeat}, interleaved; "
                  f"peer = raw 'fdatasync at end')",
                  ["", "MiB/s", "range", "vs raw", f"vs raw/{obj_size // MiB}MiB"], rows)
            print("   engine: write_chunk x n, wait_durable, PutObject (durable + visible); "
                  "default EngineConfig.\n   flush-behind: a helper thread calls "
                  "wait_durable(end of each chunk) so the disk works while\n   the writer hashes "
                  "(a caller-side pattern, shown as a proposal; not counted in the verdict)")
            if repeat > 1 and (max(mibs["raw_end"]) - min(mibs["raw_end"])) > 0.15 * peer:
                print(f"   note: the raw figure ranged {spread['raw_end']} MiB/s within this run: "
                      "the disk is noisy, ratios are approximate")
            ok = best["e2"] >= 0.7 * peer
            verdicts.append(
                f"durable chunk writes >= 70% of raw: {'met' if ok else 'NOT MET'} "
                f"with 2 writers ({best['e2'] / peer:.0%} of {peer:.0f} MiB/s); "
                f"1 writer {best['e1'] / peer:.0%}"
                f"{'' if best['e1'] >= 0.7 * peer else ' (below 70%)'}")
            results["chunks"] = {"mib_s": mibs, "best": best, "runs": runs}

        if "small" in sections:
            # raw runs interleaved with the engine runs; each engine row is compared with
            # the mean of the raw runs just before and just after it
            raws = [raw_small_fsync(root, seconds)]
            sruns = []
            for t in threads:
                sruns.append(engine_small_commits(root, t, seconds))
                raws.append(raw_small_fsync(root, seconds))
            for c in async_conc:
                sruns.append(engine_small_commits_async(root, c, seconds))
                raws.append(raw_small_fsync(root, seconds))
            raft = engine_small_commits(root, max(threads), seconds, raft_shaped=True)
            raws.append(raw_small_fsync(root, seconds))
            for i, r in enumerate(sruns + [raft]):
                r["raw_ops_s"] = (raws[i]["ops_s"] + raws[i + 1]["ops_s"]) / 2
                r["vs_raw"] = r["commits_s"] / r["raw_ops_s"]
            raw_rates = [r["ops_s"] for r in raws]
            raw = {"ops_s": sum(raw_rates) / len(raw_rates), "ops": sum(r["ops"] for r in raws),
                   "p50_ms": sorted(r["p50_ms"] for r in raws)[len(raws) // 2],
                   "p99_ms": max(r["p99_ms"] for r in raws)}
            rows = [[f"raw 4 KiB write+fdatasync loop (x{len(raws)})", f"{raw['ops_s']:.0f}",
                     f"{min(raw_rates):.0f}-{max(raw_rates):.0f}", "", str(raw["ops"]), "1.0",
                     f"{raw['p50_ms']:.2f}", f"{raw['p99_ms']:.2f}", "", ""]]
            for r in sruns + [raft]:
                n_t = f"{r['threads']} thread{'s' if r['threads'] != 1 else ''}"
                if r.get("asyncio"):
                    label = f"engine, asyncio, {r['threads']} in flight"
                elif r is raft:
                    label = f"engine, {n_t}, raft-shaped"
                else:
                    label = f"engine, {n_t}"
                rows.append([label, f"{r['commits_s']:.0f}", f"{r['raw_ops_s']:.0f}",
                             f"{r['vs_raw']:.2f}x", str(r["fsyncs"]), f"{r['per_fsync']:.1f}",
                             f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['cpu_us']:.0f}",
                             f"{r['cpu_util']:.2f}"])
            table(f"2. Small commits: begin + write_chunk(4 KiB) + PutObject, returning once "
                  f"durable and visible ({seconds:g} s each)",
                  ["", "commits/s", "raw peer", "vs raw", "fsyncs", "per fsync", "p50 ms",
                   "p99 ms", "CPU us/commit", "CPU cores"], rows)
            print("   raw peer: mean of the raw runs just before and after that row (the raw "
                  "row shows their mean and range)")
            vias = {r["via"] for r in sruns if r.get("asyncio")}
            if vias:
                print(f"   asyncio: one event loop, write_chunk inline, propose through "
                      f"{', '.join(sorted(vias))} (the S3 server's path)")
            print("   LSNs are taken and entries submitted under one lock (Engine.submit does "
                  "not wait);\n   the wait for durability is outside it, so committers share "
                  "fsyncs and catalog commits.\n   raft-shaped: each thread first waits for its "
                  "chunk to be durable, then one applier thread\n   submits entries in LSN order "
                  "(two durability waits per commit, as in the write path).\n   CPU: process "
                  "CPU time (all threads) per commit; 'CPU cores' = CPU time / wall time.")
            if any(r["serialised"] for r in sruns):
                print("   WARNING: this engine has no submit(); commits were serialised by apply()")
            top = max(sruns, key=lambda r: r["vs_raw"])
            ok = top["vs_raw"] > 1.0
            verdicts.append(
                f"small commits above the raw fsync rate: {'met' if ok else 'NOT MET'} "
                f"(best {top['commits_s']:.0f}/s at {top['threads']} "
                f"{'in flight (asyncio)' if top.get('asyncio') else 'threads'} = "
                f"{top['vs_raw']:.2f}x its raw peer {top['raw_ops_s']:.0f}/s; "
                + ", ".join(f"{r['threads']} {'in flight' if r.get('asyncio') else 'thr'} "
                            f"{r['vs_raw']:.2f}x" for r in sruns) + ")")
            results["small"] = {"raw": raws, "engine": sruns, "raft_shaped": raft}

        if "recovery" in sections:
            rec = recovery_bench(root, wal_target, chunk, max(1, obj_size // chunk), 4096,
                                 a.small_share)
            b = rec["built"]
            wal_gib = b["wal_bytes"] / GiB
            rows = []
            for name, r in rec["runs"].items():
                crashed = r["scan_bytes"] > 1 << 20
                rows.append([name, f"{r['recovery_s']:.2f}",
                             f"{r['recovery_s'] / wal_gib:.2f}" if crashed else "-",
                             f"{r['analysis_s']:.2f}", f"{r['redo_s']:.2f}", f"{r['undo_s']:.2f}",
                             str(r["scanned"]), str(r["redone"]), f"{r['open_s']:.2f}"])
            table(f"3. Recovery: WAL of {b['wal_bytes'] / MiB:.0f} MiB ({b['large_objects']} x "
                  f"{obj_size // MiB} MiB objects + {b['small_objects']} small commits, "
                  f"built in {b['build_s']:.1f} s), checkpoints off, then a crash",
                  ["reopen", "recovery s", "s/GiB", "analysis", "redo", "undo", "records",
                   "redone", "open s"], rows)
            print("   crash: abandon() (kill -9: the catalog's unsynced writes survive in the page "
                  "cache, redo skips them).\n   power loss: the catalog rolled back to its last "
                  "sync (the checkpoint): every APPLY is redone.\n   cold: the files' pages "
                  "dropped with posix_fadvise(DONTNEED) first. 'open s' = Engine() including\n"
                  "   the checkpoint it takes after recovery.")
            pl = rec["runs"]["power loss, warm cache"]
            print(f"   per record (power loss, warm): analysis "
                  f"{pl['analysis_s'] / max(pl['scanned'], 1) * 1e6:.0f} us per record scanned, redo "
                  f"{pl['redo_s'] / max(pl['redone'], 1) * 1e6:.0f} us per record redone: "
                  "s/GiB depends on the mix\n   (a WAL of small commits only holds ~4x more "
                  "records per GiB than this one)")
            worst = max(r["recovery_s"] for r in rec["runs"].values())
            verdicts.append(f"recovery per GiB of WAL: {worst / wal_gib:.2f} s/GiB worst case "
                            f"(power loss, full redo; no target in the issue)")
            results["recovery"] = rec

        if "memory" in sections:
            mem = memory_bench(root, mem_sizes, chunk)
            rows = []
            for m in mem:
                top = max(m["write_peak"], m["read_peak"])
                rows.append([f"{m['size'] // MiB} MiB", f"{m['base_rss'] / MiB:.1f}",
                             f"{m['write_peak'] / MiB:.1f}", f"{m['read_peak'] / MiB:.1f}",
                             f"{(top - m['base_rss']) / MiB:+.1f}",
                             f"{m['write_mib_s']:.0f}", f"{m['read_mib_s']:.0f}"])
            phase = all(m["per_phase_peaks"] for m in mem)
            table("4. Memory: one object written then read back, fresh process per size (MiB)",
                  ["object", "RSS after open", "peak in write", "peak in read",
                   "peak - open", "write MiB/s", "read MiB/s"], rows)
            print("   peaks are per phase (VmHWM reset through /proc/self/clear_refs)" if phase else
                  "   WARNING: could not reset the peak RSS: peaks are since process start")
            tops = [max(m["write_peak"], m["read_peak"]) - m["base_rss"] for m in mem]
            spread = max(tops) - min(tops)
            ok = spread <= 16 * MiB
            verdicts.append(
                f"memory flat as object size grows: {'met' if ok else 'NOT MET'} "
                f"(peak above the open engine: {', '.join(f'{t / MiB:+.1f}' for t in tops)} MiB "
                f"for {', '.join(str(s // MiB) for s in mem_sizes)} MiB objects; "
                f"allowed spread 16 MiB)")
            results["memory"] = mem
    finally:
        faulthandler.cancel_dump_traceback_later()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)

    load1 = os.getloadavg()
    print("\nVerdicts")
    for v in verdicts:
        print(f"  - {v}")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s; load average {load0[0]:.2f} before, "
          f"{load1[0]:.2f} after)")
    results["verdicts"] = verdicts
    results["load_after"] = load1
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

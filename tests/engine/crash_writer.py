"""The child program of the SIGKILL crash test (test_crash_sigkill.py).

It opens an engine on a data directory (running crash recovery), then writes,
overwrites and deletes objects from several threads as fast as it can until it is
killed, and reports on stdout, one line per event:

    O                              about to open the engine (recovery starts)
    S <applied lsn> <json report>  engine open, recovery done
    I <lsn> P <key> <version>      intent: submit(lsn, PutObject) is about to be called
    I <lsn> D <key>                intent: submit(lsn, DeleteObject) ...
    I <lsn> B <bucket>             intent: submit(lsn, CreateBucket) ...
    P <lsn> <key> <version> <sha>  the put at lsn returned: durable and visible
    D <lsn> <key>                  the delete at lsn returned
    B <lsn>                        the bucket creation returned
    L <chunks>                     a transaction left open on purpose (a loser)
    A <chunks>                     a transaction rolled back with engine.abort
    E <message>                    unexpected error (the traceback is on stderr)

An object's bytes, size and chunking are a deterministic function of its version
string (kept in the object's metadata as meta["v"]), so whoever reads it back can
verify any visible object without being told about it. Several keys may share a
version (the "dup" operation): their chunks are then the same chunks, deduplicated
by the engine and reference counted.

Every line is written with a single os.write (shorter than PIPE_BUF), so a line is
either wholly in the pipe or not at all when SIGKILL lands.

Run directly for a manual soak:
    PYTHONPATH=. python tests/engine/crash_writer.py --dir /tmp/x --run 0 --seed 1
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import random
import sys
import threading
import time
import traceback

BUCKET = "crash"
KiB = 1 << 10
MiB = 1 << 20
PREFIXES = ("", "a/", "b/", "a/x/", "ü/")

# engine settings shared by the child and the checker (same segment size matters for
# nothing on reopen, but keep them identical anyway)
ENGINE_SETTINGS = dict(segment_size=4 * MiB, pool_budget=16 * MiB)
CHILD_SETTINGS = dict(ENGINE_SETTINGS, checkpoint_bytes=6 * MiB,
                      checkpoint_interval_s=0.25, maintenance_interval_s=0.05)


# ---- deterministic content -------------------------------------------------------
def object_spec(version: str) -> tuple[int, list[int]]:
    """(size, chunk sizes) of the object version `version`."""
    rng = random.Random("spec:" + version)
    r = rng.random()
    if r < 0.08:
        size = 0
    elif r < 0.35:
        size = rng.randint(1, 4 * KiB)
    elif r < 0.75:
        size = rng.randint(4 * KiB, 256 * KiB)
    elif r < 0.95:
        size = rng.randint(256 * KiB, 1 * MiB)
    else:
        size = rng.randint(1 * MiB, 3 * MiB)
    chunks = []
    left = size
    while left > 0:
        n = min(left, rng.choice((rng.randint(1, 64 * KiB), 64 * KiB, 256 * KiB, 1 * MiB)))
        chunks.append(n)
        left -= n
    return size, chunks


def object_content(version: str) -> bytes:
    size, _ = object_spec(version)
    return hashlib.shake_128(("data:" + version).encode()).digest(size)


def expected(version: str) -> dict:
    """What a correct object of this version looks like."""
    data = object_content(version)
    size, sizes = object_spec(version)
    ids, pos = [], 0
    for n in sizes:
        ids.append((hashlib.sha256(data[pos:pos + n]).digest(), n))
        pos += n
    return {"size": size, "sha256": hashlib.sha256(data).hexdigest(),
            "etag": hashlib.md5(data).hexdigest(), "chunks": ids}


# ---- the writer --------------------------------------------------------------------
_out_lock = threading.Lock()
_progress = [time.monotonic()]  # when the last commit, abort or loser was reported


def emit(line: str) -> None:
    data = (line + "\n").encode()
    assert len(data) < 4096
    with _out_lock:
        os.write(1, data)
        if line[0] in "PDBAL":
            _progress[0] = time.monotonic()


def watchdog(stall_s: float) -> None:
    """A writer that makes no progress for stall_s is stuck (a deadlock in the engine):
    dump every thread's stack to stderr and die, so the parent sees why."""
    while True:
        time.sleep(0.1)
        idle = time.monotonic() - _progress[0]
        if idle > stall_s:
            print(f"crash_writer: no progress for {idle:.1f} s; thread stacks:", file=sys.stderr)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
            emit(f"E stalled: no commit for {idle:.1f} s (thread stacks on stderr)")
            os._exit(4)


class Writer:
    def __init__(self, engine, run: int, seed: int, threads: int, max_live: int,
                 max_losers: int):
        from engine import entries as E

        self.E = E
        self.eng = engine
        self.run = run
        self.seed = seed
        self.nthreads = threads
        self.max_live = max_live
        self.max_losers = max_losers
        self.lock = threading.Lock()
        self.next_lsn = engine.applied_lsn + 1
        self.live: dict[str, str] = {}  # key -> version, as far as this writer knows
        self.losers: list[bytes] = []

    # LSNs are handed out in order: the LSN is taken and the entry submitted under one lock,
    # as a Raft apply thread would submit entries in log order, while the waits for
    # durability happen outside it, so the apply records of several threads share
    # group-commit fsyncs and catalog batches.
    def commit(self, intent: str, entry) -> int:
        with self.lock:
            lsn = self.next_lsn
            self.next_lsn += 1
            emit(f"I {lsn} {intent}")
            pending = self.eng.submit(lsn, entry)
        res = pending.wait()
        if not res.ok:
            raise RuntimeError(f"apply({lsn}, {entry!r:.200}) -> {res}")
        return lsn

    def ensure_bucket(self) -> None:
        if self.eng.bucket(BUCKET) is None:
            lsn = self.commit(f"B {BUCKET}", self.E.CreateBucket(BUCKET, int(time.time() * 1000)))
            emit(f"B {lsn}")
        marker = ""
        while True:
            page = self.eng.list_objects(BUCKET, start_after=marker, max_keys=500)
            for key, rec in page.entries:
                self.live[key] = rec["meta"]["v"]
            if not page.is_truncated:
                break
            marker = page.next_marker

    def put(self, key: str, version: str, pause: float = 0.0) -> None:
        """pause: a slow client, whose transaction stays open across checkpoints."""
        eng = self.eng
        data = object_content(version)
        size, sizes = object_spec(version)
        txn = eng.begin()
        chunks, pos, end = [], 0, None
        view = memoryview(data)
        for n in sizes:
            ref = eng.write_chunk(txn, view[pos:pos + n])
            chunks.append((ref.chunk_id, ref.length))
            end = ref.end
            pos += n
            if pause:
                time.sleep(pause / len(sizes))
        if end is not None:
            eng.wait_durable(end)
        entry = self.E.PutObject(BUCKET, key, size, hashlib.md5(data).hexdigest(), chunks,
                                 int(time.time() * 1000), meta={"v": version}, txn_id=txn)
        lsn = self.commit(f"P {key} {version}", entry)
        with self.lock:
            self.live[key] = version
        emit(f"P {lsn} {key} {version} {hashlib.sha256(data).hexdigest()}")

    def delete(self, key: str) -> None:
        lsn = self.commit(f"D {key}", self.E.DeleteObject(BUCKET, key))
        with self.lock:
            self.live.pop(key, None)
        emit(f"D {lsn} {key}")

    def orphan_txn(self, rng: random.Random, tag: str, abort: bool) -> None:
        """Chunks written, never committed: either rolled back now, or left open for
        recovery to undo. Sometimes the chunks duplicate a live object's chunks."""
        eng = self.eng
        txn = eng.begin()
        with self.lock:
            src = rng.choice(list(self.live.values())) if self.live and rng.random() < 0.3 else None
        if src is not None and object_spec(src)[0] > 0:
            data = object_content(src)
            pieces, pos = [], 0
            for n in object_spec(src)[1]:
                pieces.append(data[pos:pos + n])
                pos += n
        else:
            pieces = [hashlib.shake_128(f"orphan:{tag}:{i}".encode()).digest(rng.randint(1, 300 * KiB))
                      for i in range(rng.randint(1, 3))]
        end = None
        for p in pieces:
            end = eng.write_chunk(txn, p).end
        if abort:
            emit(f"A {eng.abort(txn)}")
            return
        if rng.random() < 0.5:
            eng.wait_durable(end)
        with self.lock:
            self.losers.append(txn)
        emit(f"L {len(pieces)}")

    def thread_main(self, tid: int) -> None:
        try:
            rng = random.Random(f"{self.seed}:{self.run}:{tid}")
            n = 0
            while True:
                n += 1
                tag = f"r{self.run}t{tid}n{n}"
                with self.lock:
                    nlive = len(self.live)
                    nlosers = len(self.losers)
                    pick = rng.choice(sorted(self.live.items())) if self.live else None
                r = rng.random()
                if nlive > self.max_live:
                    r = 0.999 if r < 0.7 else r  # mostly delete when there is a lot of data
                if r < 0.04 and nlosers < self.max_losers:
                    self.orphan_txn(rng, tag, abort=False)
                elif r < 0.08:
                    self.orphan_txn(rng, tag, abort=True)
                elif pick is not None and r < 0.20:
                    self.put(pick[0], tag)  # overwrite
                elif pick is not None and r < 0.28:
                    self.put(rng.choice(PREFIXES) + "k" + tag, pick[1])  # same content, new key
                elif pick is not None and r >= 0.80:
                    self.delete(pick[0])
                elif r < 0.32:
                    self.put(rng.choice(PREFIXES) + "k" + tag, tag, pause=rng.uniform(0.02, 0.3))
                else:
                    self.put(rng.choice(PREFIXES) + "k" + tag, tag)
        except BaseException as exc:  # noqa: BLE001 - report and die loudly
            traceback.print_exc()
            sys.stderr.flush()
            emit(f"E thread {tid}: {type(exc).__name__}: {str(exc)[:300]!r}")
            os._exit(3)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--run", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--max-live", type=int, default=120)
    ap.add_argument("--max-losers", type=int, default=6)
    ap.add_argument("--duration", type=float, default=0.0, help="exit after this long (0: never)")
    ap.add_argument("--stall", type=float, default=5.0, help="watchdog: die after this long without progress")
    args = ap.parse_args(argv)

    from engine import Engine

    try:
        emit("O")
        eng = Engine(args.dir, **CHILD_SETTINGS)
        rr = eng.recovery_report
        emit(f"S {eng.applied_lsn} " + json.dumps(
            {k: rr.to_dict()[k] for k in ("records_scanned", "records_redone", "txns_undone",
                                          "chunks_undone", "tail_cut")}, separators=(",", ":")))
        w = Writer(eng, args.run, args.seed, args.threads, args.max_live, args.max_losers)
        w.ensure_bucket()
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        sys.stderr.flush()
        emit(f"E startup: {type(exc).__name__}: {str(exc)[:300]!r}")
        os._exit(3)
    _progress[0] = time.monotonic()
    threading.Thread(target=watchdog, args=(args.stall,), daemon=True).start()
    threads = [threading.Thread(target=w.thread_main, args=(i,), daemon=True)
               for i in range(args.threads)]
    for t in threads:
        t.start()
    if args.duration:
        time.sleep(args.duration)
        os._exit(0)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()

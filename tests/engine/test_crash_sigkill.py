"""A real crash test: SIGKILL a writing process at random moments, recover, verify.

A child process (crash_writer.py) opens the engine on a data directory and writes,
overwrites and deletes objects from several threads as fast as it can, leaving some
transactions uncommitted on purpose. Before it submits log entry n it prints an
intent line, and once apply(n) has returned (durable and visible) it prints the
commit. The parent kills it with SIGKILL at a random moment (sometimes during
startup and recovery), then either opens the engine itself and checks it, or lets
the next child recover from the crash (and maybe be killed during that recovery).

The parent's model is exact. The engine applies log entries in LSN order, so after
recovery its applied_lsn A says precisely which entries survived: every entry the
child announced with LSN <= A, and none above it. So the check is:

  * no commit the child reported has an LSN above A (no acknowledged write lost);
  * every LSN up to A was announced by the child (nothing from nowhere);
  * the visible objects are exactly the model's after applying the announced
    entries up to A in order: in-flight entries count as done or not done according
    to A, never half done;
  * every visible object reads back (SHA-256 verified by the engine) as the bytes
    its version determines, with the right size, ETag and chunk list; listing
    (paged, with and without a delimiter) agrees with head_object;
  * the catalog's chunk reference counts and per-segment live bytes match the
    objects, no chunk lives in a deleted segment, no transaction is left open;
  * the recovery report is sane.

Knobs (environment): TIDESTORE_CRASH_KILLS (default 25), TIDESTORE_CRASH_SEED.
Run with -s to see what happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import crash_writer as cw  # noqa: E402
from engine import Engine  # noqa: E402
from engine.catalog import MISSING, unpack  # noqa: E402
from engine.wal_record import RecordType  # noqa: E402

WRITER = os.path.join(HERE, "crash_writer.py")
BUCKET = cw.BUCKET
DEFAULT_KILLS = 25


class CrashTestFailure(AssertionError):
    pass


# ---- the child ----------------------------------------------------------------------
class Child:
    """One crash_writer process; its stdout is read line by line as it arrives."""

    def __init__(self, data_dir: str, run: int, seed: int, stderr_path: str):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, WRITER, "--dir", data_dir, "--run", str(run), "--seed", str(seed)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        self.opened_at: float | None = None  # "O": recovery about to start
        self.started_at: float | None = None  # "S": recovery done
        self.commits = 0
        self.last_progress = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break  # cannot happen (one os.write per line); ignore a torn last line
            line = raw[:-1].decode()
            now = time.monotonic()
            with self.cond:
                self.lines.append(line)
                kind = line[:1]
                if kind == "O":
                    self.opened_at = now
                elif kind == "S":
                    self.started_at = now
                    self.last_progress = now
                elif kind in "PD":
                    self.commits += 1
                    self.last_progress = now
                elif kind in "BAL":
                    self.last_progress = now
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float) -> bool:
        """Wait until pred() or the child's output ends; True if pred() holds."""
        with self.cond:
            self.cond.wait_for(lambda: pred() or self.eof, timeout)
            return bool(pred())

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait()
        self._reader.join()
        self.proc.stdout.close()
        self._stderr.close()
        return rc

    def stderr_text(self) -> str:
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")[:12000]


# ---- the model ----------------------------------------------------------------------
_expected_cache: dict[str, dict] = {}


def expected(version: str) -> dict:
    e = _expected_cache.get(version)
    if e is None:
        e = _expected_cache[version] = cw.expected(version)
    return e


class Model:
    """The store as the parent knows it: resolved state up to `lsn`, plus entries the
    child announced (pending) and reported done (acked) since the last resolution."""

    def __init__(self, stats: Counter):
        self.stats = stats
        self.lsn = 0
        self.bucket = False
        self.objects: dict[str, str] = {}  # key -> version
        self.pending: dict[int, tuple] = {}  # lsn -> ("P", key, version) | ("D", key) | ("B",)
        self.acked: set[int] = set()

    def intent(self, lsn: int, op: tuple) -> None:
        if lsn <= self.lsn or lsn in self.pending:
            raise CrashTestFailure(f"writer announced LSN {lsn} twice (resolved up to {self.lsn})")
        self.pending[lsn] = op

    def ack(self, lsn: int, op: tuple) -> None:
        if self.pending.get(lsn) != op:
            raise CrashTestFailure(f"writer reported {op} at LSN {lsn} but announced {self.pending.get(lsn)}")
        self.acked.add(lsn)
        self.stats["commits_reported"] += 1

    def resolve(self, applied: int, where: str) -> None:
        """The engine says entries up to `applied` survived (and none after)."""
        if applied < self.lsn:
            raise CrashTestFailure(f"{where}: applied_lsn went backwards: {self.lsn} -> {applied}")
        lost = sorted(n for n in self.acked if n > applied)
        if lost:
            raise CrashTestFailure(
                f"{where}: acknowledged commits lost: applied_lsn is {applied} after recovery, "
                f"but LSNs {lost[:10]} were reported durable: {[self.pending[n] for n in lost[:5]]}")
        unknown = [n for n in range(self.lsn + 1, applied + 1) if n not in self.pending]
        if unknown:
            raise CrashTestFailure(f"{where}: engine applied LSNs {unknown[:10]} that nobody submitted")
        for n in sorted(self.pending):
            op = self.pending[n]
            if n > applied:
                self.stats["inflight_lost"] += 1
                continue
            if n not in self.acked:
                self.stats["inflight_applied"] += 1
            if op[0] == "P":
                self.objects[op[1]] = op[2]
            elif op[0] == "D":
                self.objects.pop(op[1], None)
            else:
                self.bucket = True
        self.stats["commits_resolved"] += len(self.acked)
        self.pending.clear()
        self.acked.clear()
        self.lsn = applied

    def feed(self, line: str) -> None:
        """One line of the child's output."""
        kind, _, rest = line.partition(" ")
        f = rest.split(" ")
        if kind == "S":
            report = json.loads(rest.split(" ", 1)[1])
            self.resolve(int(f[0]), "child recovery")
            self.stats["child_recoveries"] += 1
            self.stats["txns_undone"] += report["txns_undone"]
            self.stats["chunks_undone"] += report["chunks_undone"]
            self.stats["tail_cuts"] += len(report["tail_cut"])
            self.stats["records_redone"] += report["records_redone"]
            if report["txns_undone"]:
                self.stats["recoveries_with_losers"] += 1
        elif kind == "I":
            lsn, op = int(f[0]), tuple(f[1:])
            if op[0] == "B":
                op = ("B",)
            self.intent(lsn, op)
        elif kind == "P":
            lsn, key, version, sha = int(f[0]), f[1], f[2], f[3]
            if sha != expected(version)["sha256"]:
                raise CrashTestFailure(f"writer's sha256 for {key} v{version} disagrees with the model")
            self.ack(lsn, ("P", key, version))
        elif kind == "D":
            self.ack(int(f[0]), ("D", f[1]))
        elif kind == "B":
            self.ack(int(f[0]), ("B",))
        elif kind == "L":
            self.stats["losers_left"] += 1
        elif kind == "A":
            self.stats["aborts"] += 1
        elif kind == "O":
            pass
        elif kind == "E":
            raise CrashTestFailure(f"writer failed: {rest}")
        else:
            raise CrashTestFailure(f"unexpected writer output {line!r}")


# ---- the checks ---------------------------------------------------------------------
def _utf8_sorted(keys) -> list:
    return sorted(keys, key=lambda k: k.encode())


def list_everything(eng: Engine, rng: random.Random, prefix: str = "", delimiter: str = ""):
    """(entries {key: record}, common prefixes) over all pages, checking the paging."""
    entries: dict = {}
    prefixes: list = []
    marker = ""
    while True:
        page = eng.list_objects(BUCKET, prefix=prefix, delimiter=delimiter, start_after=marker,
                                max_keys=rng.choice((1, 7, 50, 1000)))
        keys = [k for k, _ in page.entries]
        assert keys == _utf8_sorted(keys) and page.common_prefixes == _utf8_sorted(page.common_prefixes)
        items = _utf8_sorted(keys + page.common_prefixes)
        assert all(i.encode() > marker.encode() for i in items), "listing went back before the marker"
        for key, rec in page.entries:
            assert key not in entries, f"listing returned {key!r} twice"
            entries[key] = rec
        prefixes += page.common_prefixes
        if not page.is_truncated:
            break
        assert items and page.next_marker == items[-1], "bad next_marker"
        marker = page.next_marker
    return entries, prefixes


def check_recovery_report(eng: Engine, last_segment: str | None) -> None:
    rr = eng.recovery_report
    assert rr.applied_lsn == eng.applied_lsn, (rr, eng.applied_lsn)
    assert rr.txns_kept_open == 0, rr
    assert rr.txns_undone >= 0 and rr.chunks_undone >= 0, rr
    assert rr.records_scanned >= 0 and rr.records_redone >= 0, rr
    assert rr.catalog_lsn_before <= rr.end_lsn <= eng.wal.end, rr
    for cut in rr.tail_cut:
        assert cut["bytes_cut"] > 0, rr
        assert cut["segment"] == last_segment, f"tail cut outside the last segment: {rr}"


def check_state(eng: Engine, model: Model, rng: random.Random, stats: Counter) -> None:
    assert (eng.bucket(BUCKET) is not None) == model.bucket, "bucket existence differs from the model"
    if not model.bucket:
        assert not model.objects
        return
    listed, cps = list_everything(eng, rng)
    assert not cps
    extra = set(listed) - set(model.objects)
    missing = set(model.objects) - set(listed)
    if extra or missing:
        raise CrashTestFailure(
            f"visible objects differ from the model (resolved to LSN {model.lsn}): "
            f"visible but not committed: {sorted(extra)[:10]} "
            f"(versions {[listed[k]['meta'].get('v') for k in sorted(extra)[:10]]}); "
            f"committed but not visible: {sorted(missing)[:10]}")
    for key, version in model.objects.items():
        exp = expected(version)
        info = eng.head_object(BUCKET, key)
        assert info is not None, f"{key!r} listed but head_object finds nothing"
        rec = listed[key]
        assert (rec["etag"], rec["size"], rec["meta"]) == (info.etag, info.size, info.meta), key
        assert info.meta == {"v": version}, f"{key!r}: version {info.meta} but model has {version}"
        assert info.size == exp["size"] and info.etag == exp["etag"], f"{key!r}: size/etag wrong"
        assert info.chunks == exp["chunks"], f"{key!r}: chunk list wrong"
        h, n = hashlib.sha256(), 0
        with eng.open_object(BUCKET, key) as r:
            for piece in r.read():
                h.update(piece)
                n += len(piece)
        assert n == exp["size"] and h.hexdigest() == exp["sha256"], f"{key!r} reads back wrong"
        stats["objects_read"] += 1
        stats["bytes_read"] += n
    # a few ranged reads against the regenerated bytes
    for key in rng.sample(sorted(model.objects), min(3, len(model.objects))):
        data = cw.object_content(model.objects[key])
        a = rng.randint(0, len(data))
        b = rng.randint(a, len(data))
        with eng.open_object(BUCKET, key) as r:
            got = b"".join(bytes(p) for p in r.read(a, b))
        assert got == data[a:b], f"{key!r}: range [{a}, {b}) reads back wrong"
    # delimiter listings agree with the flat one
    for prefix in ("", "a/"):
        entries, prefixes = list_everything(eng, rng, prefix=prefix, delimiter="/")
        under = [k for k in model.objects if k.startswith(prefix)]
        want_keys = {k for k in under if "/" not in k[len(prefix):]}
        want_cps = {prefix + k[len(prefix):].split("/", 1)[0] + "/" for k in under
                    if "/" in k[len(prefix):]}
        assert set(entries) == want_keys, (prefix, sorted(entries), sorted(want_keys))
        assert prefixes == _utf8_sorted(want_cps), (prefix, prefixes, want_cps)


def check_catalog(eng: Engine, stats: Counter) -> None:
    """Reference counts and space accounting agree with the objects."""
    assert len(eng.txns) == 0, f"{len(eng.txns)} transactions still open after recovery"
    assert sum(u.pending for u in eng.segment_usage()) == 0
    with eng.catalog.read() as t:
        refs: Counter = Counter()
        for _k, v in t.cursor("objects"):
            for cid, _n in unpack(v)["chunks"]:
                refs[bytes(cid)] += 1
        rows = dict(t.chunks())
        segs = dict(t.segments())
        uploads = sum(1 for _ in t.cursor("uploads"))
    assert uploads == 0
    leaked = set(rows) - set(refs)
    assert not leaked, f"{len(leaked)} chunk rows that no object references"
    live: Counter = Counter()
    for cid, n in refs.items():
        row = rows.get(cid)
        assert row is not None, f"an object references chunk {cid.hex()}, which the catalog lacks"
        lsn, size, count, _intro = row
        assert count == n, f"chunk {cid.hex()}: refcount {count}, referenced {n} times"
        assert lsn != MISSING, f"chunk {cid.hex()} is MISSING on the only node"
        seg = eng.wal.segment_of(lsn)
        assert seg in eng.wal.segments and os.path.exists(eng.wal._path(seg)), \
            f"chunk {cid.hex()} lives in deleted segment {seg:x}"
        live[seg] += size
    # With no transaction open, every chunk record in the log is either live (an object
    # holds it) or dead (released, a duplicate, or rolled back), and nothing else.
    written: Counter = Counter()
    for seg in list(eng.wal.segments):  # one by one: reclaim leaves holes between them
        seg_end = seg + eng.wal.segment_size_on_disk(seg)
        if seg_end == seg:
            continue
        for rec in eng.wal.scan(seg):
            if rec.rtype == RecordType.CHUNK:
                written[seg] += rec.end - rec.lsn
            if rec.end >= seg_end:
                break
    for seg in set(segs) - set(eng.wal.segments):
        # a crash between reclaim's unlink and its catalog update leaves the row behind;
        # harmless as long as nothing live is accounted there
        assert segs[seg][0] == 0, f"deleted segment {seg:x} still has live bytes: {segs[seg]}"
        stats["stale_segment_rows"] = max(stats["stale_segment_rows"], len(set(segs) - set(eng.wal.segments)))
        del segs[seg]
    for seg in set(live) | set(segs) | set(written):
        got = segs.get(seg, [0, 0])
        assert got[0] == live[seg], f"segment {seg:x}: catalog says {got[0]} live bytes, chunks say {live[seg]}"
        assert got[1] >= 0, f"segment {seg:x}: negative dead bytes {got}"
        assert got[0] + got[1] == written[seg], (
            f"segment {seg:x}: {got[0]} live + {got[1]} dead bytes, but its chunk records "
            f"take {written[seg]} bytes")


def verify(data_dir: str, model: Model, rng: random.Random, stats: Counter) -> dict:
    wal_dir = os.path.join(data_dir, "wal")
    segs = sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal")) if os.path.isdir(wal_dir) else []
    t0 = time.perf_counter()
    eng = Engine(data_dir, maintenance_interval_s=0, **cw.ENGINE_SETTINGS)
    try:
        rr = eng.recovery_report
        stats["checker_recoveries"] += 1
        stats["txns_undone"] += rr.txns_undone
        stats["chunks_undone"] += rr.chunks_undone
        stats["tail_cuts"] += len(rr.tail_cut)
        stats["records_redone"] += rr.records_redone
        if rr.txns_undone:
            stats["recoveries_with_losers"] += 1
        model.resolve(eng.applied_lsn, "checker recovery")
        check_recovery_report(eng, segs[-1] if segs else None)
        check_state(eng, model, rng, stats)
        check_catalog(eng, stats)
        stats["max_live_objects"] = max(stats["max_live_objects"], len(model.objects))
        return {"recovery_s": rr.duration_s, "check_s": time.perf_counter() - t0,
                "undone": rr.txns_undone, "redone": rr.records_redone, "cuts": len(rr.tail_cut)}
    finally:
        eng.close()


# ---- the driver ---------------------------------------------------------------------
def run_crash_test(data_dir: str, log_dir: str, kills: int, seed: int, log=print) -> Counter:
    rng = random.Random(seed)
    stats: Counter = Counter()
    model = Model(stats)
    t_start = time.monotonic()
    for run in range(kills):
        early = rng.random() < 0.2
        check_after = run == kills - 1 or rng.random() < 0.7
        child = Child(data_dir, run, seed, os.path.join(log_dir, f"child-{run}.err"))
        where = f"[seed {seed}, run {run}, data {data_dir}]"
        problem = None
        try:
            if not child.wait_for(lambda: child.opened_at is not None, 30):
                problem = "writer did not start"
            elif early:
                # during recovery (which takes a few ms) or just after it
                time.sleep(rng.uniform(0, 0.005) if rng.random() < 0.6 else rng.uniform(0.005, 0.04))
            elif not child.wait_for(lambda: child.started_at is not None, 30):
                problem = "writer did not finish recovery"
            else:
                deadline = child.started_at + rng.uniform(0.05, 0.6)
                if not child.wait_for(lambda: child.commits > 0, 15):
                    problem = "writer committed nothing"
                else:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    if time.monotonic() - child.last_progress > 1.0:
                        # stuck? its watchdog dumps the stacks and exits after 5 s
                        child.wait_for(lambda: time.monotonic() - child.last_progress < 1.0, 8)
        finally:
            rc = child.kill()
        if problem or rc != -signal.SIGKILL:
            if child.lines and child.lines[-1].startswith("E "):
                problem = "writer failed"
            raise CrashTestFailure(
                f"{where} {problem or 'writer exited by itself'} (rc {rc}); "
                f"last lines: {child.lines[-4:]}\nwriter stderr:\n{child.stderr_text()}")
        stats["kills"] += 1
        stats["kills_during_recovery"] += child.started_at is None
        stats["kills_after_commits"] += child.commits > 0
        try:
            for line in child.lines:
                model.feed(line)
            if check_after:
                info = verify(data_dir, model, rng, stats)
                stats["checks"] += 1
        except AssertionError as exc:
            raise CrashTestFailure(f"{where} {exc}") from exc
        log(f"run {run:2d}: {'early ' if early else 'normal'} kill after "
            f"{child.commits:4d} commits, {len(child.lines):5d} lines"
            + (f"; checked LSN {model.lsn}, {len(model.objects)} objects, undone {info['undone']}, "
               f"redone {info['redone']}, cuts {info['cuts']}, recovery {info['recovery_s']*1000:.0f} ms, "
               f"check {info['check_s']*1000:.0f} ms" if check_after else "; not checked (next run recovers)"))
    stats["seconds"] = round(time.monotonic() - t_start, 1)
    return stats


def test_sigkill_at_random_moments_loses_no_commit_and_shows_nothing_else(tmp_path):
    kills = int(os.environ.get("TIDESTORE_CRASH_KILLS", DEFAULT_KILLS))
    seed = int(os.environ.get("TIDESTORE_CRASH_SEED", random.randrange(1 << 30)))
    data_dir = str(tmp_path / "data")
    os.makedirs(data_dir)
    print(f"\nSIGKILL crash test: {kills} kills, seed {seed} (TIDESTORE_CRASH_SEED={seed} to repeat)")
    stats = run_crash_test(data_dir, str(tmp_path), kills, seed)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    assert stats["kills"] == kills
    assert stats["checks"] >= 1
    assert stats["kills_after_commits"] >= kills // 2, stats
    assert stats["commits_resolved"] > 0, stats
    assert stats["objects_read"] > 0, stats
    assert stats["txns_undone"] > 0 and stats["recoveries_with_losers"] > 0, \
        f"no recovery undid a loser: the test ran vacuously ({stats})"

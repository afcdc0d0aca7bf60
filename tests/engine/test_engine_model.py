"""Model-based test: random operations and crashes against a dict.

Operations: puts (one or many chunks), deletes, copies, multipart uploads, uploads
left uncommitted, explicit aborts, run-time reaping, checkpoints, puts whose chunks
this node never received (MISSING, as on a replica that was down) and fills of them,
cold tier: SegmentShipped entries (and refused duplicates) and eviction of shipped
segments under a byte budget (evicted objects still exist; their chunks are COLD and
reads say so), compaction (live chunks of mostly dead segments copied forward, with
CHUNK + RELOCATE records), whole or cut short by a crash after a copy's CHUNK or after
its RELOCATE. Crashes of two
kinds: a process crash (every written byte survives, as with kill -9) and a power-loss
style crash in which the WAL loses everything past its durable point, cut at a random
offset (so torn records appear), and the catalog falls back to its state at the last
checkpoint, eviction or compaction (all that LMDB without per-commit sync promises;
each syncs the catalog). After every step, the
store must equal the model: every committed object identical, nothing uncommitted
visible, and the space accounting consistent with the catalog.
"""

import hashlib
import os
import random
import shutil

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import ChunkMissing, Engine
from engine import entries as E
from engine.catalog import COLD, MISSING
from engine.compaction import candidates, read_chunk_record
from engine.eviction import _live_rows

KEYS = st.sampled_from(["a", "b", "dir/c", "dir/d", "é", "zz", "L" * 400 + "1", "L" * 400 + "2/x"])  # the last two share a long-key group
SIZES = st.sampled_from([0, 1, 100, 4096, 5000, 70000])
CHUNK = st.sampled_from([1000, 4096, 65536])


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class EngineModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.root = None

    @initialize(tmp=st.just(None))
    def start(self, tmp):
        import tempfile

        self.root = tempfile.mkdtemp(prefix="model-")
        self.dir = os.path.join(self.root, "node")
        self.snap = os.path.join(self.root, "catalog-at-checkpoint")
        self.model: dict[str, bytes] = {}
        self.open_txns: list = []
        self.fetchable: dict[bytes, bytes] = {}  # what a peer would serve: chunk id -> bytes
        self.lsn = 0
        self.hwm = 0  # the cold HWM the shipped entries set
        self.seed = 0
        self.crashes = 0
        self.eng = None
        self._open()
        self.apply(E.CreateBucket("b", 1))

    def _open(self):
        self.eng = Engine(self.dir, fsync=False, maintenance_interval_s=0,
                          segment_size=64 << 10, pool_budget=256 << 10, page_size=4096,
                          ship_retention=True)
        self._snapshot_catalog()  # opening ends with a checkpoint
        self.lsn = max(self.lsn, self.eng.applied_lsn)

    def _snapshot_catalog(self):
        shutil.rmtree(self.snap, ignore_errors=True)
        os.makedirs(self.snap)
        self.eng.catalog.env.copy(self.snap)

    def apply(self, entry):
        self.lsn += 1
        return self.eng.apply(self.lsn, entry)

    def write(self, size, chunk):
        self.seed += 1
        data = content(self.seed, size)
        txn = self.eng.begin()
        chunks = []
        for i in range(0, len(data), chunk):
            ref = self.eng.write_chunk(txn, data[i:i + chunk])
            chunks.append((ref.chunk_id, ref.length))
        self.eng.wait_durable()
        return data, txn, chunks

    # ---- operations ------------------------------------------------------------
    @rule(key=KEYS, size=SIZES, chunk=CHUNK)
    def put(self, key, size, chunk):
        data, txn, chunks = self.write(size, chunk)
        res = self.apply(E.PutObject("b", key, size, hashlib.md5(data).hexdigest(), chunks, 1,
                                     txn_id=txn))
        assert res.ok
        self.model[key] = data

    @rule(key=KEYS, size=SIZES, chunk=CHUNK)
    def put_duplicate_content(self, key, size, chunk):
        """The same bytes under another key: chunk ids collide on purpose."""
        if not self.model:
            return
        src = sorted(self.model)[0]
        data = self.model[src]
        txn = self.eng.begin()
        chunks = [(r.chunk_id, r.length) for r in
                  (self.eng.write_chunk(txn, data[i:i + chunk]) for i in range(0, len(data), chunk))]
        assert self.apply(E.PutObject("b", key, len(data), "e", chunks, 1, txn_id=txn)).ok
        self.model[key] = data

    @rule(key=KEYS, size=SIZES, chunk=CHUNK)
    def put_missing(self, key, size, chunk):
        """A committed put whose chunks streamed while this node was down."""
        self.seed += 1
        data = content(self.seed, size)
        chunks = []
        for i in range(0, len(data), chunk):
            piece = data[i:i + chunk]
            cid = hashlib.sha256(piece).digest()
            self.fetchable[cid] = piece
            chunks.append((cid, len(piece)))
        assert self.apply(E.PutObject("b", key, size, "e", chunks, 1, txn_id=os.urandom(16))).ok
        self.model[key] = data

    @rule(fraction=st.sampled_from([0.5, 1.0]))
    def fill_missing(self, fraction):
        missing = self.eng.missing_chunks()
        for cid in missing[:max(1, int(len(missing) * fraction))]:
            assert self.eng.fill_chunk(cid, self.fetchable[cid]) is True
            assert self.eng.fill_chunk(cid, self.fetchable[cid]) is False

    @rule(key=KEYS, size=SIZES, chunk=CHUNK)
    def leave_uncommitted(self, key, size, chunk):
        _data, txn, _chunks = self.write(size, chunk)
        self.open_txns.append(txn)

    @precondition(lambda self: self.open_txns)
    @rule(data=st.data())
    def abort_one(self, data):
        txn = data.draw(st.sampled_from(self.open_txns))
        self.open_txns.remove(txn)
        self.eng.abort(txn)

    @rule()
    def reap_all(self):
        self.eng.reap_expired(timeout_s=0)
        self.open_txns.clear()

    @rule(key=KEYS)
    def delete(self, key):
        res = self.apply(E.DeleteObject("b", key))
        assert res.value["deleted"] == (key in self.model)
        self.model.pop(key, None)

    @rule(src=KEYS, dst=KEYS)
    def copy(self, src, dst):
        res = self.apply(E.CopyObject("b", src, "b", dst, 2))
        if src in self.model:
            assert res.ok
            self.model[dst] = self.model[src]
        else:
            assert res.error == "NoSuchKey"

    @rule(key=KEYS, sizes=st.lists(SIZES, min_size=1, max_size=3), chunk=CHUNK,
          complete=st.booleans())
    def multipart(self, key, sizes, chunk, complete):
        self.seed += 1
        uid = f"up{self.seed}"
        assert self.apply(E.CreateMultipartUpload("b", key, uid, 1)).ok
        listed, whole = [], b""
        for n, size in enumerate(sizes, 1):
            data, txn, chunks = self.write(size, chunk)
            etag = hashlib.md5(data).hexdigest()
            assert self.apply(E.PutPart("b", key, uid, n, size, etag, chunks, 1, txn_id=txn)).ok
            listed.append((n, etag))
            whole += data
        if complete:
            assert self.apply(E.CompleteMultipartUpload("b", key, uid, listed, 1, 0)).ok
            self.model[key] = whole
        else:
            assert self.apply(E.AbortMultipartUpload("b", key, uid)).ok

    @rule()
    def checkpoint(self):
        self.eng.checkpoint()
        self._snapshot_catalog()

    @rule(duplicate=st.booleans())
    def ship(self, duplicate):
        """The shipper stored [HWM + 1, last applied] in cold storage."""
        if self.lsn > self.hwm:
            first, last = self.hwm + 1, self.lsn
            assert self.apply(E.SegmentShipped(first, last, {"n": last})).ok
            self.hwm = last
            assert self.eng.cold_hwm == last
            assert self.eng.cold_segment_for(first)["last"] == last
        if duplicate and self.hwm:  # a new leader's retry of the last range
            seg = self.eng.cold_segment_for(self.hwm)
            res = self.apply(E.SegmentShipped(seg["first"], seg["last"], {}))
            assert res.error == "SegmentOutOfOrder"

    @rule(keep=st.sampled_from([0.0, 0.5]), ship_first=st.booleans())
    def evict(self, keep, ship_first):
        if ship_first:
            self.ship(False)
        self.eng.checkpoint()
        self._snapshot_catalog()
        report = self.eng.evict(int(self.eng.hot_bytes() * keep))
        self._snapshot_catalog()  # eviction synced the catalog before unlinking
        assert report.bytes_freed >= 0 and report.left_for_reclaim == 0

    @rule(ratio=st.sampled_from([0.5, 1.0]), bound=st.sampled_from([None, 1]),
          interrupt=st.sampled_from([None, None, "chunk", "relocate"]),
          power=st.booleans(), cut=st.floats(0, 1), ship_first=st.booleans())
    def compact(self, ratio, bound, interrupt, power, cut, ship_first):
        """A compaction pass (it ends with a checkpoint that reclaims the emptied
        segments); or one relocation cut short by a crash, after the copy's CHUNK
        record or after its RELOCATE (published or not, durable or not). With ship
        retention only shipped segments qualify, so the pass may ship first."""
        if ship_first:
            self.ship(False)
        eng = self.eng
        eng.checkpoint()
        self._snapshot_catalog()
        if interrupt is None:
            report = eng.compact(ratio, bound)
            self._snapshot_catalog()
            assert report.chunks_corrupt == 0 and "left_pinned" not in report.skipped
            assert report.segments_compacted == 0 or report.bytes_freed > 0
            return
        found = candidates(eng, ratio)
        if not found:
            return
        c = found[0]
        cid, lsn, size = _live_rows(eng, [(c.segment, c.next)], 0)[0][c.segment][0]
        assert eng._pin_present((c.segment,))
        try:
            data = bytes(read_chunk_record(eng, c.segment, cid, lsn, size))
        finally:
            eng._unpin_segments((c.segment,))
        if interrupt == "chunk":
            with eng._lock:
                eng._write_fill_chunk(cid, data)
        else:
            eng._relocate_chunk(cid, lsn, data)  # not waited for
        self.crash(power, cut, 0)

    @rule(power=st.booleans(), cut=st.floats(0, 1), replay=st.integers(0, 3))
    def crash(self, power, cut, replay):
        eng = self.eng
        durable, end = eng.wal.durable, eng.wal.end
        active = eng.wal.segments[-1]
        eng.abandon()
        if power:
            keep = durable + int((end - durable) * cut)
            os.truncate(os.path.join(self.dir, "wal", f"{active:016x}.wal"), keep - active)
            shutil.rmtree(os.path.join(self.dir, "catalog"))
            shutil.copytree(self.snap, os.path.join(self.dir, "catalog"))
        self.crashes += 1
        self.open_txns.clear()  # every uncommitted upload is a loser now
        applied_before = self.lsn
        self._open()
        assert self.eng.applied_lsn == applied_before, "an acknowledged entry was lost"
        assert self.eng.cold_hwm == self.hwm
        assert len(self.eng.txns) == 0
        # the log layer replays its last entries after a restart: all no-ops
        for lsn in range(max(1, applied_before - replay + 1), applied_before + 1):
            assert self.eng.apply(lsn, E.DeleteBucket("b")).skipped

    # ---- what must always hold ---------------------------------------------------
    @invariant()
    def store_equals_model(self):
        if self.eng is None:
            return
        listed = [k for k, _ in self.eng.list_objects("b", max_keys=1000).entries]
        assert listed == sorted(self.model, key=str.encode)
        missing = set(self.eng.missing_chunks(limit=1 << 30))
        for key, data in self.model.items():
            info = self.eng.head_object("b", key)
            assert info.size == len(data), key  # evicted or not, the object exists
            states = {c: self.eng.chunk_info(c) for c, _n in info.chunks}
            assert all(ci is not None and ci.refs > 0 for ci in states.values()), key
            assert {c for c, ci in states.items() if ci.state == "missing"} == \
                {c for c, _n in info.chunks} & missing
            lacking = {c for c, ci in states.items() if ci.state != "hot"}
            for ci in states.values():
                if ci.state == "cold":  # shipped: the cold segment holding it is known
                    assert 0 < ci.intro_lsn <= self.hwm
                    assert self.eng.cold_segment_for(ci.intro_lsn) is not None
            try:
                with self.eng.open_object("b", key) as r:
                    got = b"".join(bytes(p) for p in r.read())
            except ChunkMissing as exc:
                assert exc.chunk_id in lacking, key
                assert exc.cold == (states[exc.chunk_id].state == "cold"), key
                continue
            assert not lacking, key
            assert got == data, key

    @invariant()
    def accounting_matches_the_catalog(self):
        if self.eng is None:
            return
        with self.eng.catalog.read() as t:
            referenced = sum(size for _cid, (lsn, size, _r, _i) in t.chunks() if lsn >= 0)
            assert all(refs > 0 for _cid, (_l, _s, refs, _i) in t.chunks())
            missing = {cid for cid, (lsn, _s, _r, _i) in t.chunks() if lsn == MISSING}
            assert set(t.missing(1 << 30)) == missing
            cold = {cid for cid, (lsn, _s, _r, _i) in t.chunks() if lsn == COLD}
            assert {bytes(k) for k in t.cursor("cold").iternext(values=False)} == cold
            segment_rows = dict(t.segments())
            rows = list(t.chunks())
        assert self.eng.stats()["missing_chunks"] == len(missing)
        assert self.eng.stats()["cold_chunks"] == len(cold)
        # no WAL segment the shipper still needs is gone: a deleted segment held
        # nothing above the HWM (reclaim with ship_retention, and eviction)
        for seg, (_live, _dead, max_raft) in segment_rows.items():
            if seg not in self.eng.wal.segments:
                assert max_raft <= self.hwm
        # a hot row's segment is kept for the shipper until the HWM passes its intro_lsn
        # (its entry noted the segment; a fill or a relocation notes the new one)
        for _cid, (lsn, _s, _r, intro) in rows:
            if lsn >= 0:
                assert segment_rows[self.eng.wal.segment_of(lsn)][2] >= intro
        usage = self.eng.segment_usage()
        assert sum(u.live for u in usage) == referenced
        assert all(u.live >= 0 and u.dead >= 0 for u in usage)

    def teardown(self):
        if self.eng is not None:
            self.eng.close()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


EngineModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_engine_matches_model_across_crashes = EngineModel.TestCase

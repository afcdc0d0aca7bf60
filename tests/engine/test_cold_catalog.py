"""The engine side of the cold tier: what the catalog records so that the WAL keeps
what the shipper needs (intro_lsn, max_raft, ship_retention), what a SegmentShipped
entry does (cold HWM, cold_segments, MISSING -> COLD), and eviction of hot segments
whose contents are in cold storage, across reopen and crashes. Real engines on
temporary directories; segments of 1 MiB so that a few chunks span many of them."""

import hashlib
import os
import shutil

import pytest

from engine import ChunkMissing
from engine import entries as E
from engine.applied_scan import AppliedRangeUnavailable
from engine.catalog import COLD, FORMAT_VERSION, MISSING
from engine.eviction import _evict_in_catalog, _live_rows
from engine_testkit import MIB, Writer, downgrade_catalog, read_all, chunk_rows, segment_rows
from engine_testkit import open_engine as _open_engine

SEG = MIB
BIG = 700 << 10  # one chunk this size per segment: two never fit in one


def open_engine(data_dir, **kw):
    return _open_engine(data_dir, kw.pop("segment_size", SEG), **kw)


def cid(data):
    return hashlib.sha256(data).digest()


rows = chunk_rows
seg_rows = segment_rows


def seg_rows_closed(data_dir):
    eng = open_engine(data_dir)
    try:
        return seg_rows(eng)
    finally:
        eng.abandon()


def put_missing(w, key, pieces, bucket="b"):
    """A PutObject whose chunks this engine never received (a replica that was down)."""
    chunks = [(cid(p), len(p)) for p in pieces]
    body = b"".join(pieces)
    res = w.apply(E.PutObject(bucket, key, len(body), "e", chunks, 1000, txn_id=os.urandom(16)))
    assert res.ok, res
    return chunks


def check_catalog(eng):
    """missing / cold tables are exactly the MISSING / COLD rows; live bytes per
    segment equal the hot rows' sizes; every row is referenced and 4 elements long;
    no hot row points at a segment that is not on disk."""
    with eng.catalog.read() as t:
        crows = dict(t.chunks())
        missing = set(t.missing(1 << 30))
        cold = {bytes(k) for k in t.cursor("cold").iternext(keys=True, values=False)}
        segs = dict(t.segments())
    assert all(len(r) == 4 and r[2] > 0 for r in crows.values())
    assert all(len(r) == 3 for r in segs.values())
    assert missing == {c for c, r in crows.items() if r[0] == MISSING}
    assert cold == {c for c, r in crows.items() if r[0] == COLD}
    assert all(r[1] == 0 for r in crows.values() if r[0] < 0)
    live = {}
    for r in crows.values():
        if r[0] >= 0:
            seg = eng.wal.segment_of(r[0])
            assert seg in eng.wal.segments
            live[seg] = live.get(seg, 0) + r[1]
    for seg in set(live) | set(segs):
        assert segs.get(seg, [0, 0, 0])[0] == live.get(seg, 0), seg
    st = eng.stats()
    assert st["missing_chunks"] == len(missing) and st["cold_chunks"] == len(cold)
    return crows


def fill_wal(w, n, key="obj"):
    """n objects of one BIG chunk each: one segment per object. Returns {key: data}."""
    out = {}
    for i in range(n):
        data = os.urandom(BIG)
        assert w.put("b", f"{key}{i}", data, chunk_size=BIG).ok
        out[f"{key}{i}"] = data
    return out


def ship(w, first=None, last=None):
    """Apply SegmentShipped for [first, last] (default: HWM + 1 .. the last applied)."""
    eng = w.engine
    first = eng.cold_hwm + 1 if first is None else first
    last = w.lsn if last is None else last
    return w.apply(E.SegmentShipped(first, last, {"shards": [f"s{first}-{last}"], "k": 2}))


# ---- intro_lsn and max_raft ----------------------------------------------------------
def test_intro_lsn_is_the_creating_entry_and_the_same_on_every_replica(tmp_path):
    x, y, z = os.urandom(3000), os.urandom(4000), os.urandom(5000)

    def run(eng, held):
        """The same entries; `held`: this node received the chunks (else MISSING)."""
        w = Writer(eng)
        w.bucket()  # 1
        for key, pieces, lsn in [("k1", [x, y], 2), ("k2", [x, z], 3)]:
            txn = eng.begin()
            if held:
                for p in pieces:
                    if eng.chunk_info(cid(p)) is None:
                        eng.write_chunk(txn, p)
                eng.wait_durable()
            chunks = [(cid(p), len(p)) for p in pieces]
            assert w.apply(E.PutObject("b", key, 1, "e", chunks, 1, txn_id=txn)).ok  # 2, 3
        assert w.apply(E.CopyObject("b", "k1", "b", "k3", 2)).ok  # 4: takes existing rows
        return rows(eng)

    a, b, c = (open_engine(str(tmp_path / n)) for n in "abc")
    ra, rb, rc = run(a, True), run(b, False), run(c, True)
    assert {k: r[3] for k, r in ra.items()} == {cid(x): 2, cid(y): 2, cid(z): 3}
    assert {k: r[2] for k, r in ra.items()} == {cid(x): 3, cid(y): 2, cid(z): 1}
    assert ra == rc  # same writes, same entries: identical rows
    assert {k: r[2:] for k, r in ra.items()} == {k: r[2:] for k, r in rb.items()}
    assert all(r[0] == MISSING for r in rb.values())
    # filling a MISSING row keeps its intro_lsn
    assert b.fill_chunk(cid(z), z) is True
    assert rows(b)[cid(z)][3] == 3 and b.chunk_info(cid(z)).state == "hot"
    a.close()
    a = open_engine(str(tmp_path / "a"))  # reopened: rows survive as they were
    assert rows(a) == ra
    check_catalog(a), check_catalog(b)
    for eng in (a, b, c):
        eng.close()


def test_max_raft_covers_apply_records_taken_chunks_and_fills(data_dir):
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()  # 1: APPLY in segment 0
    ta, [(ida, _)] = w.chunks(os.urandom(BIG), chunk_size=BIG)  # segment 0
    tb, [(idb, _)] = w.chunks(os.urandom(BIG), chunk_size=BIG)  # segment 1
    s0, s1 = eng.wal.segments
    w.lsn = 4
    assert w.apply(E.PutObject("b", "kb", BIG, "e", [(idb, BIG)], 1, txn_id=tb)).ok  # 5
    w.lsn = 6
    assert w.apply(E.PutObject("b", "ka", BIG, "e", [(ida, BIG)], 1, txn_id=ta)).ok  # 7
    segs = seg_rows(eng)
    # segment 0: its only APPLY is log LSN 1, but entry 7 took a chunk there
    assert segs[s0][2] == 7 and segs[s1][2] == 7
    w.lsn = 8
    m = os.urandom(200 << 10)
    put_missing(w, "km", [m])  # 9: MISSING, APPLY in segment 1
    w.lsn = 19
    assert w.apply(E.Noop()).ok  # 20
    assert seg_rows(eng)[s1][2] == 20
    tc, _ = w.chunks(os.urandom(BIG), chunk_size=BIG)  # segment 2, no APPLY there
    s2 = eng.wal.segments[-1]
    assert eng.fill_chunk(cid(m), m) is True  # its CHUNK lands in segment 2
    assert eng.wal.segment_of(rows(eng)[cid(m)][0]) == s2
    assert seg_rows(eng)[s2][2] == 9  # the filled row's intro_lsn
    eng.abort(tc)
    usage = {u.segment: u for u in eng.segment_usage()}
    assert usage[s2].max_raft == 9 and usage[s0].max_raft == 7
    check_catalog(eng)
    eng.close()


def test_an_entry_that_fails_still_needs_the_segments_of_its_chunks(data_dir):
    """scan_applied ships a failed entry's chunks too (read from their CHUNK record)."""
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()
    txn, chunks = w.chunks(os.urandom(BIG), chunk_size=BIG)
    seg = eng.wal.segment_of(eng.txns.get(txn).chunks[0][1])
    w.lsn = 9
    assert w.apply(E.PutObject("nobucket", "k", BIG, "e", chunks, 1, txn_id=txn)).error == "NoSuchBucket"
    assert seg_rows(eng)[seg][2] == 10
    eng.close()


# ---- SegmentShipped ----------------------------------------------------------------
def test_segment_shipped_must_continue_the_hwm_exactly(data_dir):
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()  # 1
    w.lsn = 4
    res = ship(w, 2, 3)  # 5: does not start at HWM + 1
    assert res.error == "SegmentOutOfOrder" and not res.ok and eng.cold_hwm == 0
    assert ship(w, 1, 3).ok and eng.cold_hwm == 3  # 6
    assert ship(w, 1, 3).error == "SegmentOutOfOrder"  # 7: a duplicate (a new leader's retry)
    assert ship(w, 4, 8).error == "SegmentOutOfOrder"  # 8: not below its own LSN
    assert ship(w, 4, 3).error == "SegmentOutOfOrder"  # 9: empty range
    assert ship(w, 4, 9).ok and eng.cold_hwm == 9  # 10
    assert eng.stats()["cold_hwm"] == 9 and eng.stats()["cold_segments"] == 2
    segs = eng.cold_segments()
    assert [(s["first"], s["last"]) for s in segs] == [(1, 3), (4, 9)]
    assert segs[0]["locations"] == {"shards": ["s1-3"], "k": 2}  # stored as given
    assert [s["first"] for s in eng.cold_segments(after_last=3)] == [4]
    assert len(eng.cold_segments(limit=1)) == 1 and eng.cold_segments(after_last=9) == []
    for lsn, first in [(1, 1), (2, 1), (3, 1), (4, 4), (9, 4)]:
        assert eng.cold_segment_for(lsn)["first"] == first
    assert eng.cold_segment_for(0) is None and eng.cold_segment_for(10) is None
    eng.close()
    eng = open_engine(data_dir)
    assert eng.cold_hwm == 9 and len(eng.cold_segments()) == 2
    eng.abandon()
    # redo rebuilds the same from the WAL (the catalog loses everything after open)
    eng = open_engine(data_dir)
    assert eng.cold_hwm == 9
    eng.close()


def test_missing_rows_in_a_shipped_range_become_cold(data_dir):
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()  # 1
    p1, p2, p3 = os.urandom(3000), os.urandom(3001), os.urandom(3002)
    k1 = put_missing(w, "k1", [p1, p2])  # 2
    k2 = put_missing(w, "k2", [p3])  # 3
    assert ship(w, 1, 2).ok  # 4
    assert eng.missing_chunks() == [k2[0][0]]
    for c, _n in k1:
        info = eng.chunk_info(c)
        assert (info.state, info.wal_lsn, info.size, info.refs, info.intro_lsn) == ("cold", COLD, 0, 1, 2)
        assert not eng.has_chunk(c) and eng.read_chunk_by_id(c) is None
        assert eng.fill_chunk(c, p1 if c == k1[0][0] else p2) is False
        assert eng.cold_segment_for(info.intro_lsn)["last"] == 2
    assert eng.chunk_info(k2[0][0]).state == "missing"
    with pytest.raises(ChunkMissing) as exc:
        read_all(eng, "b", "k1")
    assert exc.value.cold is True and exc.value.chunk_id == k1[0][0]
    with pytest.raises(ChunkMissing) as exc:
        read_all(eng, "b", "k2")
    assert exc.value.cold is False
    assert eng.stats()["cold_chunks"] == 2
    check_catalog(eng)
    assert w.apply(E.DeleteObject("b", "k1")).ok  # releasing a COLD row: no accounting
    assert eng.chunk_info(k1[0][0]) is None and eng.stats()["cold_chunks"] == 0
    check_catalog(eng)
    eng.close()


def test_a_fill_that_lands_after_its_row_turned_cold_is_dead(data_dir):
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()
    p = os.urandom(5000)
    [(c, _n)] = put_missing(w, "k", [p])  # 2
    with eng._lock:
        txn, ref = eng._write_fill_chunk(c, p)  # fetched from a peer...
    assert ship(w, 1, 2).ok  # ...while the range ships: the row is COLD now
    with eng._lock:
        pending = eng._log_fill(txn, ref)
    assert pending.wait() is False
    assert eng.chunk_info(c).state == "cold"
    seg = eng.wal.segment_of(ref.lsn)
    assert seg_rows(eng)[seg][1] == ref.end - ref.lsn  # dead
    check_catalog(eng)
    eng.close()


# ---- reclaim with ship_retention -------------------------------------------------------
def test_reclaim_keeps_what_the_shipper_needs_until_the_hwm_passes_it(data_dir):
    eng = open_engine(data_dir, ship_retention=True)
    w = Writer(eng)
    w.bucket()
    fill_wal(w, 4)
    for i in range(4):
        assert w.apply(E.DeleteObject("b", f"obj{i}")).ok  # every chunk dead
    mid = w.lsn
    fill_wal(w, 2, key="more")
    eng.checkpoint()
    kept = list(eng.wal.segments)
    assert len(kept) >= 6  # nothing live in the first four, but nothing shipped
    assert eng.reclaim() == 0
    assert ship(w, 1, 3).ok
    eng.checkpoint()
    # the segments whose entries and chunks are all at or below 3 go; the rest stay
    by_seg = seg_rows(eng)
    assert all(by_seg[s][2] > 3 for s in eng.wal.segments[:-1])
    assert eng.wal.segments[0] != kept[0]
    assert ship(w, 4, mid).ok
    eng.checkpoint()
    # up to `mid` shipped: only segments with live chunks or later entries remain
    for s in eng.wal.segments[:-1]:
        live, _dead, max_raft = seg_rows(eng)[s]
        assert live > 0 or max_raft > mid
    assert len(eng.wal.segments) < len(kept)
    check_catalog(eng)
    eng.close()
    # the same workload without retention reclaims at once
    eng2 = open_engine(data_dir + "-plain")
    w2 = Writer(eng2)
    w2.bucket()
    fill_wal(w2, 4)
    for i in range(4):
        w2.apply(E.DeleteObject("b", f"obj{i}"))
    fill_wal(w2, 2, key="more")
    assert eng2.checkpoint().reclaimed_bytes > 0
    eng2.close()


# ---- eviction -------------------------------------------------------------------
def shipped_engine(data_dir, n=6, **kw):
    """n one-segment objects, all shipped, then a checkpoint: evictable."""
    kw.setdefault("ship_retention", True)
    eng = open_engine(data_dir, **kw)
    w = Writer(eng)
    w.bucket()
    objs = fill_wal(w, n)
    assert ship(w).ok
    eng.checkpoint()
    return eng, w, objs


def cold_keys(eng, objs):
    return {k for k in objs if eng.chunk_info(eng.head_object("b", k).chunks[0][0]).state == "cold"}


def test_evict_turns_shipped_segments_cold_and_frees_them(data_dir):
    eng, w, objs = shipped_engine(data_dir)
    before = eng.hot_bytes()
    assert before == sum(os.path.getsize(eng.wal._path(s)) for s in eng.wal.segments)
    assert eng.stats()["hot_bytes"] == before
    segs = list(eng.wal.segments)
    report = eng.evict(0)
    assert report.segments_evicted >= len(objs) - 1 and report.chunks_cold == len(cold_keys(eng, objs))
    assert report.bytes_freed == before - eng.hot_bytes() == report.hot_bytes_before - report.hot_bytes_after
    assert report.skipped.get("active") == 1
    for s in segs[:report.segments_evicted]:
        assert not os.path.exists(eng.wal._path(s))
    cold = cold_keys(eng, objs)
    assert len(cold) >= len(objs) - 1
    for k, data in objs.items():
        info = eng.head_object("b", k)  # still exists
        assert info is not None and info.size == len(data)
        ci = eng.chunk_info(info.chunks[0][0])
        if k in cold:
            assert (ci.wal_lsn, ci.size, ci.refs) == (COLD, 0, 1) and 0 < ci.intro_lsn <= eng.cold_hwm
            assert eng.cold_segment_for(ci.intro_lsn) is not None
            with pytest.raises(ChunkMissing) as exc:
                read_all(eng, "b", k)
            assert exc.value.cold
            with eng.open_object("b", k) as r:
                (span,) = r.spans()
            with pytest.raises(ChunkMissing):
                eng.read_chunk_bytes(*span)
        else:
            assert read_all(eng, "b", k) == data
    assert [k for k, _ in eng.list_objects("b").entries] == sorted(objs)
    assert eng.stats()["cold_chunks"] == len(cold)
    check_catalog(eng)
    # deleting a cold object
    gone = sorted(cold)[0]
    assert w.apply(E.DeleteObject("b", gone)).ok
    assert eng.head_object("b", gone) is None and eng.stats()["cold_chunks"] == len(cold) - 1
    check_catalog(eng)
    # nothing more can go: a second pass is a no-op
    again = eng.evict(0)
    assert again.segments_evicted == 0
    eng.close()
    eng = open_engine(data_dir, ship_retention=True)
    assert eng.recovery_report.records_redone == 0 and eng.cold_hwm > 0
    assert eng.stats()["cold_chunks"] == len(cold) - 1
    for k in cold - {gone}:
        with pytest.raises(ChunkMissing):
            read_all(eng, "b", k)
    for k in set(objs) - cold:
        assert read_all(eng, "b", k) == objs[k]
    check_catalog(eng)
    eng.close()


def test_evict_stops_at_the_target(data_dir):
    eng, _w, objs = shipped_engine(data_dir)
    first = eng.wal.segments[0]
    size = eng.wal.segment_size_on_disk(first)
    report = eng.evict(eng.hot_bytes() - 1)
    assert report.segments_evicted == 1 and report.bytes_freed == size
    assert first not in eng.wal.segments
    assert eng.evict(eng.hot_bytes()).segments_evicted == 0  # at the target already
    check_catalog(eng)
    eng.close()


def test_evict_keeps_what_recovery_needs(data_dir):
    """(a): nothing at or after the checkpoint's redo point, the oldest open
    transaction or the oldest unpublished change goes."""
    eng = open_engine(data_dir, ship_retention=True)
    w = Writer(eng)
    w.bucket()
    fill_wal(w, 5)
    assert ship(w).ok
    report = eng.evict(0)  # the last checkpoint was at open: everything is after it
    sealed = len(eng.wal.segments) - 1
    assert report.segments_evicted == 0 and report.skipped == {"needed_by_recovery": sealed,
                                                               "active": 1}
    # an open transaction from before the checkpoint holds the bound back
    txn = eng.begin()
    eng.write_chunk(txn, os.urandom(100))
    first_open = eng.wal.segments[-1]
    fill_more = fill_wal(w, 2, key="late")
    assert ship(w).ok and fill_more
    eng.checkpoint()
    report = eng.evict(0)
    assert report.segments_evicted > 0
    assert all(s >= first_open for s in eng.wal.segments)
    assert first_open in eng.wal.segments and report.skipped["needed_by_recovery"] > 0
    eng.abort(txn)
    check_catalog(eng)
    eng.close()


def test_evict_stops_at_a_pinned_segment_until_the_reader_is_done(data_dir):
    eng, _w, objs = shipped_engine(data_dir)
    reader = eng.open_object("b", "obj0")
    report = eng.evict(0)
    # oldest first, strictly: newer data is not evicted in place of the pinned segment
    assert report.skipped["pinned"] == 1 and report.segments_evicted == 0
    assert cold_keys(eng, objs) == set()
    assert b"".join(bytes(p) for p in reader.read()) == objs["obj0"]
    reader.close()
    assert eng.evict(0).segments_evicted >= 1 and "obj0" in cold_keys(eng, objs)
    eng.close()


def test_a_segment_left_for_reclaim_counts_towards_the_target(data_dir):
    """A segment turned cold while a reader pinned it keeps its file until reclaim;
    it still counts as gone, so eviction does not reach past the budget for it."""
    eng, _w, objs = shipped_engine(data_dir)
    segs = list(eng.wal.segments)
    first_size = eng.wal.segment_size_on_disk(segs[0])
    target = eng.hot_bytes() - first_size  # exactly the oldest segment's worth
    real_sync = eng.catalog.sync

    def sync_then_pin():  # a reader pins the segment between the catalog commit and the unlink
        real_sync()
        if not eng._pins:
            eng._pin_segments(segs[:1])
    eng.catalog.sync = sync_then_pin
    report = eng.evict(target)
    eng.catalog.sync = real_sync
    assert report.segments_evicted == 1 and report.left_for_reclaim == 1
    eng._unpin_segments(segs[:1])
    eng.checkpoint()  # reclaim deletes the file (and appends its own small record)
    assert eng.hot_bytes() <= target + 4096
    eng.close()


def test_the_shipper_scan_skips_old_segments_even_when_an_object_straddles_them(data_dir):
    """max_raft counts an entry on the segments holding its chunks too; skipping such
    a segment must not make the entry's own APPLY record (in the next one) look out
    of order."""
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()
    w.put("b", "a", os.urandom(SEG * 7 // 10))
    w.put("b", "x", os.urandom(SEG * 14 // 10), chunk_size=SEG * 7 // 10)  # straddles
    w.put("b", "c", os.urandom(10_000))
    assert len(eng.wal.segments) >= 2
    assert [i.lsn for i in eng.scan_applied(4, 4)] == [4]
    assert [i.lsn for i in eng.scan_applied(3, 4)] == [3, 4]
    eng.close()


def test_evict_keeps_segments_with_unshipped_entries(data_dir):
    """(d): max_raft above the HWM (an APPLY record, or a chunk its entry introduced)."""
    eng = open_engine(data_dir, ship_retention=True)
    w = Writer(eng)
    w.bucket()
    objs = fill_wal(w, 6)
    half = 4  # objects obj0..obj2 are log LSNs 2..4
    assert ship(w, 1, half).ok
    eng.checkpoint()
    report = eng.evict(0)
    # segments 0-2 hold log LSNs up to 4; 3 and 4 hold obj3 and obj4 (LSNs 5, 6)
    assert report.segments_evicted == 3 and report.skipped["unshipped_entries"] == 2
    cold = cold_keys(eng, objs)
    assert cold and all(eng.chunk_info(eng.head_object("b", k).chunks[0][0]).intro_lsn <= half
                        for k in cold)
    for s, (_l, _d, max_raft) in seg_rows(eng).items():
        if s != eng.wal.segments[-1]:
            assert max_raft > half
    check_catalog(eng)
    eng.close()


def test_evict_keeps_segments_with_chunks_from_before_cold_tracking(data_dir):
    """(e): a format-2 catalog's rows have intro_lsn 0: never evicted, never COLD."""
    eng = open_engine(data_dir, ship_retention=True)
    w = Writer(eng)
    w.bucket()
    objs = fill_wal(w, 4)
    [(mc, _)] = put_missing(w, "m", [os.urandom(999)])
    eng.close()
    downgrade_catalog(data_dir, 2)
    eng = open_engine(data_dir, ship_retention=True)
    assert all(r[3] == 0 for r in rows(eng).values())
    w = Writer(eng)
    fill_wal(w, 3, key="new")
    assert ship(w).ok
    assert eng.chunk_info(mc).state == "missing"  # intro 0: not known to be shipped
    eng.checkpoint()
    report = eng.evict(0)
    assert report.skipped["unshipped_chunks"] >= 4
    assert not cold_keys(eng, objs)
    assert all(read_all(eng, "b", k) == d for k, d in objs.items())
    assert len(cold_keys(eng, {f"new{i}": 0 for i in range(3)})) >= 2
    check_catalog(eng)
    eng.close()


def test_a_crash_between_the_catalog_commit_and_the_unlink(data_dir):
    """The rows are COLD and the segment row gone, the file is still there: reopening
    recovers, and the orphan file (no row, nothing live) is reclaimed."""
    eng, _w, objs = shipped_engine(data_dir)
    seg, nxt = eng.wal.segments[0], eng.wal.segments[1]
    with eng._ckpt_lock:
        live, _blocked = _live_rows(eng, [(seg, nxt)], eng.cold_hwm)
        assert _evict_in_catalog(eng, seg, live[seg], eng.cold_hwm) == 1
        eng.catalog.sync()
    eng.abandon()  # no unlink
    path = eng.wal._path(seg)
    assert os.path.exists(path)
    eng = open_engine(data_dir, ship_retention=True)  # opening checkpoints and reclaims
    assert not os.path.exists(path) and seg not in eng.wal.segments
    assert cold_keys(eng, objs) == {"obj0"}
    with pytest.raises(ChunkMissing):
        read_all(eng, "b", "obj0")
    assert all(read_all(eng, "b", k) == objs[k] for k in objs if k != "obj0")
    check_catalog(eng)
    eng.close()


def test_a_crash_after_eviction_recovers_without_the_evicted_segments(data_dir, tmp_path):
    """Eviction syncs the catalog; a crash that loses every catalog commit after it
    replays the later entries from the WAL, on top of the COLD rows."""
    eng, w, objs = shipped_engine(data_dir)
    report = eng.evict(0)
    assert report.segments_evicted > 0
    snap = str(tmp_path / "catalog-after-evict")
    os.makedirs(snap)
    eng.catalog.env.copy(snap)
    more = fill_wal(w, 2, key="after")  # redo will replay these
    eng.abandon()
    shutil.rmtree(os.path.join(data_dir, "catalog"))
    shutil.copytree(snap, os.path.join(data_dir, "catalog"))
    eng = open_engine(data_dir, ship_retention=True)
    rr = eng.recovery_report
    assert rr.records_redone > 0 and rr.tail_cut == []
    assert cold_keys(eng, objs) and all(read_all(eng, "b", k) == d for k, d in more.items())
    check_catalog(eng)
    eng.close()


def test_the_shipper_can_scan_past_an_evicted_hole_across_a_log_gap(data_dir):
    """Log LSNs are not contiguous in the engine (Raft no-ops never reach it). After
    eviction, the range right above the HWM must still scan, even when the entry just
    above it is such a gap: the deleted segments held nothing above the HWM."""
    eng = open_engine(data_dir, ship_retention=True)
    w = Writer(eng)
    w.bucket()
    fill_wal(w, 3)
    k = w.lsn
    txn = eng.begin()
    eng.write_chunk(txn, os.urandom(BIG))  # starts a new segment: APPLY k ends the last
    w.lsn = k + 1  # k + 1: a no-op the engine never sees
    assert ship(w, 1, k).ok  # k + 2
    eng.checkpoint()
    assert eng.evict(0).segments_evicted >= 3
    got = [a.lsn for a in eng.scan_applied(k + 1, k + 2)]
    assert got == [k + 2]
    with pytest.raises(AppliedRangeUnavailable) as exc:
        list(eng.scan_applied(k, k + 2))
    assert exc.value.lsn == k
    eng.abort(txn)
    eng.close()


# ---- format 2 -> 3 -------------------------------------------------------------------
def test_a_format_2_catalog_is_upgraded_on_open(data_dir):
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()
    objs = fill_wal(w, 3)
    put_missing(w, "m", [os.urandom(500)])
    for i in range(14):  # entries without chunks: a segment holding only APPLY records
        assert w.apply(E.PutObject("b", f"meta{i}", 0, "e", [], 1, {"x": "a" * 100_000})).ok
    applied = eng.applied_lsn
    before = rows(eng)
    eng.close()
    # format 2 had no row for a segment without chunk records
    chunkless = [s for s, r in seg_rows_closed(data_dir).items() if r[:2] == [0, 0]]
    assert chunkless
    downgrade_catalog(data_dir, 2, drop_segment_rows=chunkless)
    eng = open_engine(data_dir)
    with eng.catalog.read() as t:
        assert t.meta("format") == FORMAT_VERSION == 3
        assert t.meta("wal_gone_raft") == applied
    after = rows(eng)
    assert {c: r[:3] for c, r in after.items()} == {c: r[:3] for c, r in before.items()}
    assert all(r[3] == 0 for r in after.values())
    segs = seg_rows(eng)
    assert set(eng.wal.segments) <= set(segs)  # every segment on disk has a row
    assert all(r[2] >= applied for r in segs.values())
    assert all(read_all(eng, "b", k) == d for k, d in objs.items())
    check_catalog(eng)
    eng.close()


def test_a_reader_whose_snapshot_predates_an_eviction_looks_again(data_dir):
    """open_object pins only segments still on disk (checked under the lock eviction
    and reclaim hold while unlinking); a snapshot taken before an eviction resolves
    to a gone segment, so the reader resolves again and finds the row COLD."""
    eng, _w, objs = shipped_engine(data_dir)
    first = eng.wal.segments[0]
    assert eng._pin_present({first}) is True
    eng._unpin_segments({first})
    eng.evict(eng.hot_bytes() - 1)
    assert first not in eng.wal.segments
    assert eng._pin_present({first}) is False and not eng._pins
    assert eng._pin_present({first, eng.wal.segments[-1]}) is False and not eng._pins
    with eng.open_object("b", "obj0") as r:
        ((_c, lsn, *_rest),) = r.spans()
        assert lsn == COLD and r._segs == set()
    eng.close()

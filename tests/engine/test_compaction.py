"""Compaction: the live chunks of mostly dead WAL segments are copied to the log's end
(CHUNK + RELOCATE records), after which reclaim deletes the old segments. Real engines
on temporary directories, segments of 256 KiB so that a few objects span many; races
are staged with a slowed publisher or the relocation's own steps, crashes with
abandon() (process crash) plus a WAL cut and an older catalog (power loss)."""

import hashlib
import os
import shutil
import threading
import time

import pytest

from engine import ChunkMissing
from engine import entries as E
from engine.catalog import COLD, MISSING
from engine.compaction import candidates, read_chunk_record
from engine.eviction import _live_rows
from engine.log_records import RelocateRecord
from engine.wal_record import RecordType
from engine_testkit import Writer, check_catalog, read_all, chunk_rows, segment_rows
from engine_testkit import open_engine as _open_engine

SEG = 256 << 10
PIECE = 20_000  # chunk size: ~12 chunk records per segment
OBJ = 50_000  # three chunks per object


def open_engine(data_dir, **kw):
    return _open_engine(data_dir, kw.pop("segment_size", SEG), **kw)


def sha(data):
    return hashlib.sha256(data).digest()


rows = chunk_rows
seg_rows = segment_rows


def populate(w, n, key="k", size=OBJ):
    objs = {}
    for i in range(n):
        data = os.urandom(size)
        assert w.put("b", f"{key}{i}", data, chunk_size=PIECE).ok
        objs[f"{key}{i}"] = data
    return objs


def thin_out(w, objs, keep_every=5, overwrite=True):
    """Delete most objects; overwrite some (their old chunks die, the new ones land at
    the log's end). Keeps one object in keep_every as it was."""
    for i, key in enumerate(list(objs)):  # in the order written
        if i % keep_every == 0:
            continue
        if overwrite and i % keep_every == keep_every - 1:
            data = os.urandom(30_000)
            assert w.put("b", key, data, chunk_size=PIECE).ok
            objs[key] = data
        else:
            assert w.apply(E.DeleteObject("b", key)).value["deleted"]
            del objs[key]


def sparse_segments(eng, ratio=0.5):
    """Sealed segments at most `ratio` live, nothing pending: what compaction should take
    right after a checkpoint."""
    usage = eng.segment_usage()
    return [u.segment for u in usage[:-1] if 0 < u.live <= ratio * u.size and not u.pending]


def relocate_records(eng):
    return [(r.lsn, RelocateRecord.decode(r.payload)) for r in eng.wal.scan(eng.wal.segments[0])
            if r.rtype == RecordType.RELOCATE]


def assert_objects(eng, objs):
    assert [k for k, _ in eng.list_objects("b", max_keys=1000).entries] == sorted(objs)
    for key, data in objs.items():
        assert read_all(eng, "b", key) == data, key


def snapshot_catalog(eng, dest):
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    eng.catalog.env.copy(dest)


def restore_catalog(data_dir, snap):
    shutil.rmtree(os.path.join(data_dir, "catalog"))
    shutil.copytree(snap, os.path.join(data_dir, "catalog"))


def live_rows_of(eng, seg):
    """[(chunk id, lsn, size)] of the hot rows in segment seg."""
    segs = list(eng.wal.segments)
    nxt = segs[segs.index(seg) + 1]
    return _live_rows(eng, [(seg, nxt)], 0)[0][seg]


def _one_live_chunk(eng):
    seg = sparse_segments(eng)[0]
    cid, lsn, size = live_rows_of(eng, seg)[0]
    eng._pin_present((seg,))
    try:
        data = bytes(read_chunk_record(eng, seg, cid, lsn, size))
    finally:
        eng._unpin_segments((seg,))
    return seg, cid, lsn, size, data


def sparse_engine(data_dir, n=40, **kw):
    eng = open_engine(data_dir, **kw)
    w = Writer(eng)
    w.bucket()
    objs = populate(w, n)
    thin_out(w, objs)
    eng.checkpoint()
    return eng, w, objs


# ---- the main path ------------------------------------------------------------------
def test_compaction_frees_mostly_dead_segments(data_dir):
    eng, w, objs = sparse_engine(data_dir, fsync=True)
    sparse = sparse_segments(eng)
    assert len(sparse) >= 4
    sizes = {u.segment: u.size for u in eng.segment_usage()}
    moving = sum(len(live_rows_of(eng, s)) for s in sparse)
    live_total = sum(u.live for u in eng.segment_usage())
    hot = eng.hot_bytes()

    rep = eng.compact()
    assert rep.segments_compacted == len(sparse) and not rep.more
    assert rep.chunks_moved == moving and rep.chunks_dead == rep.chunks_corrupt == 0
    assert not set(sparse) & set(eng.wal.segments)  # every old segment is gone
    assert rep.bytes_freed == sum(sizes[s] for s in sparse) <= rep.reclaimed_bytes
    assert rep.bytes_copied < rep.bytes_freed / 2
    assert rep.hot_bytes_before == hot and rep.hot_bytes_after == eng.hot_bytes() < hot
    assert sum(u.live for u in eng.segment_usage()) == live_total
    assert len(relocate_records(eng)) == moving
    st = eng.stats()
    assert (st["compacted_segments"], st["compacted_chunks"]) == (len(sparse), moving)
    assert (st["compaction_bytes_copied"], st["compaction_bytes_freed"]) == \
        (rep.bytes_copied, rep.bytes_freed)
    assert not eng._pins and len(eng.txns) == 0
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()

    eng = open_engine(data_dir, fsync=True)
    rr = eng.recovery_report
    assert rr.records_redone == 0 and rr.txns_undone == 0 and rr.tail_cut == []
    assert_objects(eng, objs)
    check_catalog(eng)
    again = eng.compact()  # what is left is either live or not yet eligible
    assert again.chunks_corrupt == 0
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_segments_are_taken_by_live_ratio_oldest_first_within_the_byte_bound(data_dir):
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()
    objs = populate(w, 25)
    thin_out(w, objs, overwrite=False)  # the first segments: ~20% live
    objs.update(populate(w, 25, key="dense"))  # the next ones: all live
    eng.checkpoint()
    usage = {u.segment: u for u in eng.segment_usage()}
    sparse = sparse_segments(eng)
    dense = [s for s, u in usage.items() if not u.active and u.live > 0.5 * u.size]
    assert len(sparse) >= 3 and len(dense) >= 3

    assert eng.compact(0.0).bytes_copied == 0  # 0: nothing qualifies
    with pytest.raises(ValueError):
        eng.compact(1.5)
    with pytest.raises(ValueError):
        eng.compact(-0.1)

    rep = eng.compact(0.5, max_bytes=1)  # one segment per call
    assert rep.segments_compacted == 1 and rep.more
    assert rep.skipped["max_bytes"] == len(sparse) - 1
    assert rep.skipped["too_live"] >= len(dense)
    assert sparse[0] not in eng.wal.segments and set(sparse[1:]) <= set(eng.wal.segments)
    rep = eng.compact(0.5, max_bytes=usage[sparse[1]].live + 1)  # two: the bound is checked before each
    assert rep.segments_compacted == 2 and rep.more
    rep = eng.compact(0.5)
    assert not set(sparse) & set(eng.wal.segments) and not rep.more
    assert set(dense) <= set(eng.wal.segments)  # too live: left alone
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_compaction_leaves_what_recovery_and_open_transactions_need(data_dir):
    eng = open_engine(data_dir)
    w = Writer(eng)
    w.bucket()
    objs = populate(w, 30)
    txn = eng.begin()  # an open upload in the middle of the log
    eng.write_chunk(txn, os.urandom(1000))
    open_seg = eng.wal.segments[-1]
    objs.update(populate(w, 30, key="late"))
    thin_out(w, objs, overwrite=False)
    rep = eng.compact()  # the last checkpoint (at open) is before everything
    assert rep.segments_compacted == 0 and rep.skipped["needed_by_recovery"] > 0
    eng.checkpoint()
    rep = eng.compact()
    assert rep.segments_compacted > 0
    assert all(s >= open_seg for s in eng.wal.segments)  # nothing after the open txn
    assert open_seg in eng.wal.segments
    eng.abort(txn)
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


# ---- races -----------------------------------------------------------------------
def test_a_chunk_deleted_while_it_is_moved_ends_deleted_with_both_copies_dead(data_dir):
    """The delete is logged before the RELOCATE but published after the scan saw the
    row: the RELOCATE finds no row, so the new copy is dead, the old one too."""
    eng, w, objs = sparse_engine(data_dir)
    seg = sparse_segments(eng)[0]
    victim_cid, victim_lsn, victim_size = live_rows_of(eng, seg)[0]
    victim = next(k for k in objs if victim_cid in {c for c, _n in eng.head_object("b", k).chunks})
    real = eng._publisher._wait_durable
    first = threading.Event()

    def slow_once(end):  # the delete's batch is held back while the pass scans
        if not first.is_set():
            first.set()
            time.sleep(0.5)
        return real(end)

    eng._publisher._wait_durable = slow_once
    deleting = eng.submit(w.next_lsn(), E.DeleteObject("b", victim))  # logged, not published
    rep = eng.compact()  # the scan still sees the victim's row
    assert deleting.wait().ok
    eng._publisher._wait_durable = real
    del objs[victim]
    assert rep.chunks_dead >= 1 and rep.chunks_moved > 0
    (new_lsn, rec), = [(lsn, r) for lsn, r in relocate_records(eng) if r.chunk_id == victim_cid]
    assert rec.old_lsn == victim_lsn and rec.size == victim_size
    assert eng.chunk_info(victim_cid) is None and eng.head_object("b", victim) is None
    # both copies dead: the old one (released) went with its segment; the new one counts
    assert seg not in eng.wal.segments
    usage = {u.segment: u for u in eng.segment_usage()}
    assert usage[eng.wal.segment_of(rec.new_lsn)].dead >= rec.size
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_a_relocate_after_the_release_of_its_chunk_is_dead_and_redo_agrees(data_dir):
    """The same race built from the relocation's own step (the scan's location is
    stale by the time the RELOCATE is logged), then a power loss: redo replays the
    delete and the RELOCATE from an older catalog and reaches the same verdict."""
    eng, w, objs = sparse_engine(data_dir)
    snap = data_dir + ".catalog"
    snapshot_catalog(eng, snap)  # the catalog as the last checkpoint synced it
    seg, cid, lsn, size, data = _one_live_chunk(eng)
    owner = next(k for k in objs if cid in {c for c, _n in eng.head_object("b", k).chunks})
    assert w.apply(E.DeleteObject("b", owner)).ok  # released after the "scan"
    del objs[owner]
    usage = {u.segment: u for u in eng.segment_usage()}
    pending, written = eng._relocate_chunk(cid, lsn, data)
    assert pending.wait() is False and written == size
    (_l, rec), = relocate_records(eng)
    new_seg = eng.wal.segment_of(rec.new_lsn)
    after = {u.segment: u for u in eng.segment_usage()}
    was = usage[new_seg].dead if new_seg in usage else 0  # (the copy may open a segment)
    assert after[new_seg].dead == was + size  # the new copy: dead at once
    assert after[seg].dead == usage[seg].dead and after[seg].live == usage[seg].live
    assert eng.chunk_info(cid) is None
    check_catalog(eng)
    eng.abandon()
    restore_catalog(data_dir, snap)
    eng = open_engine(data_dir)
    assert eng.recovery_report.records_redone >= 2 and eng.recovery_report.txns_undone == 0
    again = {u.segment: u for u in eng.segment_usage()}
    assert (again[new_seg].live, again[new_seg].dead) == (after[new_seg].live, after[new_seg].dead)
    if after[seg].live == 0:  # the victim was all it held: reclaimed by the open
        assert seg not in eng.wal.segments
    else:
        assert (again[seg].live, again[seg].dead) == (after[seg].live, after[seg].dead)
    assert eng.chunk_info(cid) is None
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_a_reader_of_the_old_location_keeps_reading_it(data_dir):
    eng, w, objs = sparse_engine(data_dir)
    seg = sparse_segments(eng)[0]
    cid, _lsn, _size = live_rows_of(eng, seg)[0]
    key = next(k for k in objs if cid in {c for c, _n in eng.head_object("b", k).chunks})
    # pinned before the pass: the segment is not taken
    reader = eng.open_object("b", key)
    rep = eng.compact()
    assert rep.skipped["pinned"] == 1 and seg in eng.wal.segments
    reader.close()
    # pinned after the location was resolved, moved underneath: the reader keeps the
    # old segment alive (reclaim waits for the pin) and reads the old copy
    reader = eng.open_object("b", key)
    for c, lsn, size in live_rows_of(eng, seg):
        eng._pin_present((seg,))
        try:
            data = bytes(read_chunk_record(eng, seg, c, lsn, size))
        finally:
            eng._unpin_segments((seg,))
        pending, _n = eng._relocate_chunk(c, lsn, data)
        assert pending.wait() is True
    assert {u.segment: u for u in eng.segment_usage()}[seg].live == 0
    eng.checkpoint()
    assert seg in eng.wal.segments  # nothing live, but pinned
    assert b"".join(bytes(p) for p in reader.read()) == objs[key]
    reader.close()
    eng.checkpoint()
    assert seg not in eng.wal.segments
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_writers_keep_going_while_compaction_runs(data_dir):
    eng, w, objs = sparse_engine(data_dir, n=60)
    stop = threading.Event()
    errors = []
    written = {}
    done = [0]  # writer iterations so far

    def writer():
        i = 0
        try:
            while not stop.is_set():
                data = os.urandom(OBJ)
                assert w.put("b", f"new{i % 15}", data, chunk_size=PIECE).ok
                written[f"new{i % 15}"] = data
                if i % 3 == 0:
                    key = f"k{(i // 3) * 5 % 60}"
                    res = w.apply(E.DeleteObject("b", key))
                    written[key] = None if res.value["deleted"] else written.get(key)
                i += 1
                done[0] = i
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    freed = passes = overlap = 0
    deadline = time.monotonic() + 30
    while (passes < 4 or done[0] < 40) and not errors and time.monotonic() < deadline:
        eng.checkpoint()
        before = done[0]
        rep = eng.compact()
        overlap += done[0] - before  # writes that went through during the pass
        assert rep.chunks_corrupt == 0
        freed += rep.bytes_freed
        passes += 1
    stop.set()
    t.join()
    assert not errors
    for key, data in written.items():
        if data is None:
            objs.pop(key, None)
        else:
            objs[key] = data
    assert freed > 0 and overlap > 0
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()
    eng = open_engine(data_dir)
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


# ---- crashes -----------------------------------------------------------------------
def test_a_crash_after_the_copy_before_the_relocate(data_dir):
    eng, _w, objs = sparse_engine(data_dir)
    seg, cid, lsn, size, data = _one_live_chunk(eng)
    with eng._lock:  # step 1 only: the CHUNK record, then the crash
        _txn, ref = eng._write_fill_chunk(cid, data)
    eng.wait_durable()
    eng.abandon()

    eng = open_engine(data_dir)
    rep = eng.recovery_report
    assert rep.txns_undone == 1 and rep.chunks_undone == 1 and rep.records_redone == 0
    assert rows(eng)[cid][0] == lsn  # never moved
    usage = {u.segment: u for u in eng.segment_usage()}
    assert usage[eng.wal.segment_of(ref.lsn)].dead == size  # the copy, rolled back
    assert_objects(eng, objs)
    check_catalog(eng)
    assert eng.compact().segments_compacted >= 1 and seg not in eng.wal.segments
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_a_power_loss_that_keeps_the_copy_but_not_the_relocate(data_dir):
    eng, _w, objs = sparse_engine(data_dir)
    snap = data_dir + ".catalog"
    snapshot_catalog(eng, snap)
    seg, cid, lsn, size, data = _one_live_chunk(eng)
    pending, _n = eng._relocate_chunk(cid, lsn, data)
    assert pending.wait() is True
    (rel_lsn, rec), = relocate_records(eng)
    eng.abandon()
    active = eng.wal.segments[-1]
    os.truncate(os.path.join(data_dir, "wal", f"{active:016x}.wal"), rel_lsn - active)
    restore_catalog(data_dir, snap)

    eng = open_engine(data_dir)
    rep = eng.recovery_report
    assert rep.txns_undone == 1 and rep.chunks_undone == 1
    assert rows(eng)[cid][0] == lsn
    usage = {u.segment: u for u in eng.segment_usage()}
    assert usage[eng.wal.segment_of(rec.new_lsn)].dead == size
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


@pytest.mark.parametrize("power", [False, True])
def test_a_crash_after_the_relocate_before_it_is_published(data_dir, power):
    eng, _w, objs = sparse_engine(data_dir)
    snap = data_dir + ".catalog"
    snapshot_catalog(eng, snap)
    seg, cid, lsn, size, data = _one_live_chunk(eng)
    live_before = {u.segment: u.live for u in eng.segment_usage()}
    gate = threading.Event()

    def stuck(end):  # the publisher never gets to commit it: the process dies first
        gate.wait()
        raise OSError("simulated crash before publishing")

    eng._publisher._wait_durable = stuck
    pending, _n = eng._relocate_chunk(cid, lsn, data)
    eng.wal.sync()  # the RELOCATE is in the durable log
    assert rows(eng)[cid][0] == lsn  # not published
    gate.set()
    with pytest.raises(RuntimeError):
        pending.wait()
    eng.abandon()
    if power:
        restore_catalog(data_dir, snap)

    eng = open_engine(data_dir)
    rep = eng.recovery_report
    assert rep.txns_undone == 0 and rep.records_redone >= 1
    (_l, rec), = relocate_records(eng)
    assert rows(eng)[cid][0] == rec.new_lsn  # redone: the row moved
    usage = {u.segment: u for u in eng.segment_usage()}
    assert usage[seg].live == live_before[seg] - size
    assert_objects(eng, objs)
    check_catalog(eng)
    rep = eng.compact()
    assert seg not in eng.wal.segments
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_a_corrupt_live_chunk_is_not_copied_and_its_segment_stays(data_dir):
    eng, _w, objs = sparse_engine(data_dir)
    seg, cid, lsn, _size, _data = _one_live_chunk(eng)
    with open(eng.wal._path(seg), "r+b") as f:
        f.seek(lsn - seg + 200)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    others = len(live_rows_of(eng, seg)) - 1
    rep = eng.compact()
    assert rep.chunks_corrupt == 1 and seg in eng.wal.segments
    assert rows(eng)[cid][0] == lsn
    assert {u.segment: u for u in eng.segment_usage()}[seg].live == rows(eng)[cid][1]
    assert rep.chunks_moved >= others
    check_catalog(eng)
    eng.close()


# ---- the cold tier -------------------------------------------------------------------
def ship(w, first=None, last=None):
    eng = w.engine
    first = eng.cold_hwm + 1 if first is None else first
    last = w.lsn if last is None else last
    return w.apply(E.SegmentShipped(first, last, {"shards": [f"s{first}-{last}"]}))


def test_ship_retention_keeps_unshipped_segments_out_of_compaction(data_dir):
    eng = open_engine(data_dir, ship_retention=True)
    w = Writer(eng)
    w.bucket()
    objs = populate(w, 40)
    mid = w.lsn - 20  # entries 1..mid: roughly the first half of the objects
    thin_out(w, objs, overwrite=False)
    eng.checkpoint()
    sparse = sparse_segments(eng)
    assert len(sparse) >= 4
    rep = eng.compact()  # nothing shipped: nothing would be deleted, so nothing is copied
    assert rep.segments_compacted == 0 and rep.bytes_copied == 0
    assert rep.skipped["unshipped"] == len(sparse)

    assert ship(w, 1, mid).ok
    eng.checkpoint()
    before = seg_rows(eng)
    shipped = [s for s in sparse if before[s][2] <= mid]
    assert shipped and len(shipped) < len(sparse)
    rep = eng.compact()
    assert rep.segments_compacted == len(shipped)
    assert rep.skipped["unshipped"] == len(sparse) - len(shipped)
    assert not set(shipped) & set(eng.wal.segments)
    assert set(sparse) - set(shipped) <= set(eng.wal.segments)
    for s, (_live, _dead, max_raft) in before.items():
        if s not in eng.wal.segments:
            assert max_raft <= eng.cold_hwm  # no deleted segment was still needed
    # the moved rows keep their intro_lsn; their new segment is needed up to it
    crows = check_catalog(eng)
    moved = [(c, r) for c, r in crows.items() if r[0] >= 0 and r[3] <= mid
             and eng.wal.segment_of(r[0]) not in before]
    assert moved and all(0 < r[3] <= eng.cold_hwm for _c, r in moved)

    assert ship(w).ok  # the HWM passes the rest
    eng.checkpoint()
    rep = eng.compact()
    assert not set(sparse) & set(eng.wal.segments)
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_cold_and_missing_rows_are_not_moved(data_dir):
    eng = open_engine(data_dir, ship_retention=True)
    w = Writer(eng)
    w.bucket()
    objs = populate(w, 30)
    thin_out(w, objs, overwrite=False)
    assert ship(w).ok
    eng.checkpoint()
    # a row scanned hot, then turned COLD by an eviction before the RELOCATE
    seg, cid, lsn, size, data = _one_live_chunk(eng)
    assert eng.evict(0).segments_evicted > 0 and seg not in eng.wal.segments
    assert eng.chunk_info(cid).state == "cold"
    cold_before = {c for c, r in rows(eng).items() if r[0] == COLD}
    pending, _n = eng._relocate_chunk(cid, lsn, data)
    assert pending.wait() is False  # the copy is dead; the row stays COLD
    assert rows(eng)[cid][:2] == [COLD, 0]
    (_l, rec), = relocate_records(eng)
    assert seg_rows(eng)[eng.wal.segment_of(rec.new_lsn)][1] >= size
    # a row released and created again MISSING by a later entry
    data2 = os.urandom(9000)
    assert w.put("b", "again", data2, chunk_size=PIECE).ok
    lsn2 = rows(eng)[sha(data2)][0]
    assert w.apply(E.DeleteObject("b", "again")).ok
    assert w.apply(E.PutObject("b", "again", len(data2), "e", [(sha(data2), len(data2))], 1,
                               txn_id=os.urandom(16))).ok
    assert rows(eng)[sha(data2)][0] == MISSING
    pending, _n = eng._relocate_chunk(sha(data2), lsn2, data2)
    assert pending.wait() is False and rows(eng)[sha(data2)][0] == MISSING
    # a whole pass: COLD and MISSING rows are in no segment, so they never move
    missing = set(eng.missing_chunks())
    eng.checkpoint()
    eng.compact(1.0)
    assert {c for c, r in rows(eng).items() if r[0] == COLD} == cold_before
    assert set(eng.missing_chunks()) == missing == {sha(data2)}
    with pytest.raises(ChunkMissing):
        read_all(eng, "b", "again")
    check_catalog(eng)
    eng.close()


# ---- the maintenance thread ------------------------------------------------------------
def test_maintenance_compacts_and_drains_a_backlog_a_pass_at_a_time(data_dir):
    eng = open_engine(data_dir, maintenance_interval_s=0.02, checkpoint_interval_s=0.05,
                      compact_max_bytes=1)  # one segment per pass
    w = Writer(eng)
    w.bucket()
    objs = populate(w, 40)
    thin_out(w, objs)
    sparse = [u.segment for u in eng.segment_usage()[:-1] if 0 < u.live <= 0.5 * u.size]
    assert len(sparse) >= 4
    deadline = time.monotonic() + 20
    while set(sparse) & set(eng.wal.segments) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(sparse) & set(eng.wal.segments)
    assert eng.stats()["compacted_segments"] >= len(sparse)
    assert_objects(eng, objs)
    check_catalog(eng)
    eng.close()


def test_maintenance_does_not_compact_when_disabled(data_dir):
    eng = open_engine(data_dir, maintenance_interval_s=0.02, checkpoint_interval_s=0.05,
                      compact_live_ratio=0)
    w = Writer(eng)
    w.bucket()
    objs = populate(w, 30)
    thin_out(w, objs)
    time.sleep(0.5)
    assert eng.stats()["compacted_segments"] == 0 and not relocate_records(eng)
    assert candidates(eng, 0.5)  # there was work, had it been on
    eng.close()

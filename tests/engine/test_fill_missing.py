"""Missing chunks: a replica applies entries whose chunks it never received (it was
down while they streamed), lists what it lacks, and fills the chunks in later with
bytes fetched from a peer (CHUNK + FILL records), across crashes and races."""

import hashlib
import os
import shutil
import threading
import time

import pytest

from engine import ChunkCorrupt, ChunkMissing, Engine
from engine import entries as E
from engine.catalog import FORMAT_VERSION, MISSING
from engine.log_records import CHUNK_DATA_OFFSET, FillRecord
from engine.wal_record import RecordType
from engine_testkit import Writer, downgrade_catalog, read_all


def reopen(data_dir, **kw):
    kw.setdefault("maintenance_interval_s", 0)
    return Engine(data_dir, **kw)


def split(data, size):
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return pieces, [(hashlib.sha256(p).digest(), len(p)) for p in pieces]


def put_missing(w, key, data, chunk_size=4000, bucket="b"):
    """Apply a PutObject whose transaction this engine never saw: as a replica that was
    down while the chunks streamed. Returns {chunk id: bytes}."""
    pieces, chunks = split(data, chunk_size)
    res = w.apply(E.PutObject(bucket, key, len(data), hashlib.md5(data).hexdigest(), chunks,
                              1000, txn_id=os.urandom(16)))
    assert res.ok
    return {cid: p for (cid, _n), p in zip(chunks, pieces)}


def check_catalog(eng):
    """The missing table is exactly the MISSING rows; live bytes per segment equal the
    present rows' record sizes; every row is referenced."""
    with eng.catalog.read() as t:
        rows = dict(t.chunks())
        missing = set(t.missing(1 << 30))
        segs = dict(t.segments())
    assert missing == {cid for cid, row in rows.items() if row[0] == MISSING}
    assert all(row[2] > 0 for row in rows.values())
    live = {}
    for row in rows.values():
        if row[0] != MISSING:
            seg = eng.wal.segment_of(row[0])
            live[seg] = live.get(seg, 0) + row[1]
    for seg in set(live) | set(segs):
        assert segs.get(seg, [0, 0])[0] == live.get(seg, 0), seg
        assert segs.get(seg, [0, 0])[1] >= 0
    assert eng.stats()["missing_chunks"] == len(missing)
    return rows, missing


def fill_records(eng):
    return [FillRecord.decode(r.payload) for r in eng.wal.scan(eng.wal.segments[0])
            if r.rtype == RecordType.FILL]


def snapshot_catalog(eng, dest):
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    eng.catalog.env.copy(dest)


def restore_catalog(data_dir, snap):
    shutil.rmtree(os.path.join(data_dir, "catalog"))
    shutil.copytree(snap, os.path.join(data_dir, "catalog"))


def test_missing_chunks_are_listed_then_filled_and_read_back(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    data = os.urandom(10_000)
    chunks = put_missing(w, "k", data)
    assert len(chunks) == 3

    info = eng.head_object("b", "k")
    assert info is not None and info.size == len(data)
    with pytest.raises(ChunkMissing):
        read_all(eng, "b", "k")
    assert set(eng.missing_chunks()) == set(chunks)
    assert len(eng.missing_chunks(limit=2)) == 2
    assert eng.missing_chunks(limit=0) == []
    assert eng.stats()["missing_chunks"] == 3
    for cid in chunks:
        assert eng.read_chunk_by_id(cid) is None and not eng.has_chunk(cid)
    assert eng.read_chunk_by_id(os.urandom(32)) is None
    check_catalog(eng)
    live_before = sum(u.live for u in eng.segment_usage())

    for cid, piece in chunks.items():
        assert eng.fill_chunk(cid, piece) is True
    assert read_all(eng, "b", "k") == data
    assert read_all(eng, "b", "k", 3000, 9000) == data[3000:9000]
    assert eng.missing_chunks() == [] and eng.stats()["missing_chunks"] == 0
    for cid, piece in chunks.items():
        assert eng.has_chunk(cid) and eng.read_chunk_by_id(cid) == piece
    rows, _ = check_catalog(eng)
    filled = sum(rows[cid][1] for cid in chunks)
    assert filled >= len(data)  # record sizes: data plus framing
    assert sum(u.live for u in eng.segment_usage()) == live_before + filled
    assert len(fill_records(eng)) == 3

    eng.close()
    eng = reopen(data_dir)
    assert read_all(eng, "b", "k") == data and eng.missing_chunks() == []
    check_catalog(eng)
    eng.close()


def test_fill_refuses_wrong_data_and_writes_nothing_when_not_missing(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    chunks = put_missing(w, "gone", os.urandom(3000))
    (cid, piece), = chunks.items()
    with pytest.raises(ValueError):
        eng.fill_chunk(cid, piece + b"x")
    with pytest.raises(ValueError):
        eng.fill_chunk(os.urandom(32), piece)
    assert cid in eng.missing_chunks()

    present = os.urandom(5000)
    w.put("b", "here", present, chunk_size=5000)
    end = eng.wal.end
    assert eng.fill_chunk(hashlib.sha256(present).digest(), present) is False
    assert eng.wal.end == end

    w.apply(E.DeleteObject("b", "gone"))
    assert eng.missing_chunks() == []
    end = eng.wal.end
    assert eng.fill_chunk(cid, piece) is False  # no longer referenced
    assert eng.wal.end == end
    assert eng.fill_chunk(hashlib.sha256(b"never").digest(), b"never") is False
    assert eng.wal.end == end
    check_catalog(eng)
    eng.close()


def test_a_fill_survives_a_crash_and_a_lost_catalog(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    data = os.urandom(9000)
    chunks = put_missing(w, "k", data)
    eng.checkpoint()
    snap = data_dir + ".catalog"
    snapshot_catalog(eng, snap)  # the catalog as the checkpoint synced it
    for cid, piece in chunks.items():
        assert eng.fill_chunk(cid, piece)
    eng.abandon()
    restore_catalog(data_dir, snap)  # power loss: the catalog falls back to its last sync

    eng = reopen(data_dir)
    rep = eng.recovery_report
    assert rep.records_redone == 3 and rep.txns_undone == 0  # the FILLs, redone
    assert read_all(eng, "b", "k") == data and eng.missing_chunks() == []
    check_catalog(eng)
    eng.abandon()  # process crash: the catalog keeps what was published

    eng = reopen(data_dir)
    assert eng.recovery_report.txns_undone == 0 and eng.recovery_report.records_redone == 0
    assert read_all(eng, "b", "k") == data and eng.missing_chunks() == []
    check_catalog(eng)
    eng.close()


def test_a_chunk_whose_fill_was_never_logged_is_rolled_back(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    chunks = put_missing(w, "k", os.urandom(4000))
    (cid, piece), = chunks.items()
    with eng._lock:  # step 1 of a fill only: the CHUNK record, then the crash
        _txn, ref = eng._write_fill_chunk(cid, piece)
    eng.wait_durable()
    eng.abandon()

    eng = reopen(data_dir)
    rep = eng.recovery_report
    assert rep.txns_undone == 1 and rep.chunks_undone == 1
    assert eng.missing_chunks() == [cid] and not eng.has_chunk(cid)
    assert eng.read_chunk_by_id(cid) is None
    usage = {u.segment: u for u in eng.segment_usage()}
    assert usage[eng.wal.segment_of(ref.lsn)].dead == ref.end - ref.lsn
    check_catalog(eng)
    assert eng.fill_chunk(cid, piece)  # a later fill works
    assert read_all(eng, "b", "k") == piece
    check_catalog(eng)
    eng.close()


def test_a_wal_cut_between_chunk_and_fill_leaves_the_chunk_missing(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    chunks = put_missing(w, "k", os.urandom(4000))
    (cid, piece), = chunks.items()
    eng.checkpoint()
    snap = data_dir + ".catalog"
    snapshot_catalog(eng, snap)
    assert eng.fill_chunk(cid, piece)
    fill, = [r for r in eng.wal.scan(eng.wal.segments[0]) if r.rtype == RecordType.FILL]
    chunk_lsn = FillRecord.decode(fill.payload).chunk_lsn
    eng.abandon()
    # power loss that kept the CHUNK but not the FILL (and the catalog of before)
    seg = eng.wal.segment_of(fill.lsn)
    os.truncate(os.path.join(data_dir, "wal", f"{seg:016x}.wal"), fill.lsn - seg)
    restore_catalog(data_dir, snap)

    eng = reopen(data_dir)
    rep = eng.recovery_report
    assert rep.txns_undone == 1 and rep.chunks_undone == 1
    assert eng.missing_chunks() == [cid]
    with pytest.raises(ChunkMissing):
        read_all(eng, "b", "k")
    usage = {u.segment: u for u in eng.segment_usage()}
    assert usage[eng.wal.segment_of(chunk_lsn)].dead == fill.lsn - chunk_lsn
    check_catalog(eng)
    eng.close()


def test_one_fill_serves_every_object_sharing_the_chunk(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    shared = os.urandom(4000)
    a = shared + os.urandom(4000)
    b = os.urandom(4000) + shared
    ca = put_missing(w, "a", a)
    cb = put_missing(w, "b", b)
    w.apply(E.CopyObject("b", "a", "b", "copy", 5))
    sid = hashlib.sha256(shared).digest()
    assert set(eng.missing_chunks()) == set(ca) | set(cb) and len(eng.missing_chunks()) == 3
    with eng.catalog.read() as t:
        assert t.chunk(sid)[2] == 3
    assert eng.fill_chunk(sid, shared)
    assert eng.fill_chunk(sid, shared) is False
    for cid, piece in list(ca.items()) + list(cb.items()):
        if cid != sid:
            assert eng.fill_chunk(cid, piece)
    assert read_all(eng, "b", "a") == a and read_all(eng, "b", "b") == b
    assert read_all(eng, "b", "copy") == a
    assert len(fill_records(eng)) == 3
    check_catalog(eng)
    w.apply(E.DeleteObject("b", "a"))
    w.apply(E.DeleteObject("b", "copy"))
    assert read_all(eng, "b", "b") == b
    check_catalog(eng)
    eng.close()


def test_a_later_upload_of_the_same_bytes_fills_the_row_too(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    data = os.urandom(3000)
    (cid, _), = put_missing(w, "k", data).items()
    w.put("b", "k2", data, chunk_size=4000)  # streamed here this time: fills the row
    assert eng.missing_chunks() == [] and read_all(eng, "b", "k") == data
    assert eng.fill_chunk(cid, data) is False
    check_catalog(eng)
    eng.close()


def test_concurrent_fills_of_one_chunk_write_it_once(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    data = os.urandom(200_000)
    (cid, piece), = put_missing(w, "k", data, chunk_size=1 << 20).items()
    real = eng._publisher._wait_durable
    eng._publisher._wait_durable = lambda end: (time.sleep(0.05), real(end))[1]
    results, errors = [], []
    start = threading.Barrier(6)

    def fill():
        start.wait()
        try:
            results.append(eng.fill_chunk(cid, piece))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=fill) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [False] * 5 + [True]
    assert len(fill_records(eng)) == 1
    assert read_all(eng, "b", "k") == data
    check_catalog(eng)
    eng.close()


def test_a_fill_racing_the_release_of_its_chunk_counts_as_dead(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    eng.checkpoint()
    snap = data_dir + ".catalog"
    (cid, piece), = put_missing(w, "k", os.urandom(6000), chunk_size=8000).items()
    snapshot_catalog(eng, snap)
    dead_before = sum(u.dead for u in eng.segment_usage())
    real = eng._publisher._wait_durable
    eng._publisher._wait_durable = lambda end: (time.sleep(0.3), real(end))[1]
    deleting = eng.submit(w.next_lsn(), E.DeleteObject("b", "k"))  # logged, not yet published
    assert eng.fill_chunk(cid, piece) is False  # its FILL comes after the delete in the log
    assert deleting.wait().ok
    eng._publisher._wait_durable = real
    fill, = fill_records(eng)
    assert sum(u.dead for u in eng.segment_usage()) == dead_before + fill.size
    assert not eng.has_chunk(cid) and eng.missing_chunks() == []
    check_catalog(eng)
    eng.abandon()
    restore_catalog(data_dir, snap)  # redo both: same verdict
    eng = reopen(data_dir)
    assert eng.missing_chunks() == [] and eng.head_object("b", "k") is None
    assert sum(u.dead for u in eng.segment_usage()) == dead_before + fill.size
    check_catalog(eng)
    eng.close()


def test_a_filled_chunk_released_later_becomes_dead(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    (cid, piece), = put_missing(w, "k", os.urandom(6000), chunk_size=8000).items()
    assert eng.fill_chunk(cid, piece)
    fill, = fill_records(eng)
    seg = eng.wal.segment_of(fill.chunk_lsn)
    live = {u.segment: u.live for u in eng.segment_usage()}[seg]
    w.apply(E.DeleteObject("b", "k"))
    usage = {u.segment: u for u in eng.segment_usage()}[seg]
    assert usage.live == live - fill.size and usage.dead >= fill.size
    check_catalog(eng)
    eng.close()


def test_reclaim_keeps_a_segment_holding_a_filled_chunk(data_dir):
    eng = reopen(data_dir, segment_size=128 << 10)
    w = Writer(eng)
    w.bucket()
    data = os.urandom(60 << 10)
    chunks = put_missing(w, "k", data, chunk_size=30 << 10)
    for cid, piece in chunks.items():
        assert eng.fill_chunk(cid, piece)
    fill_segs = {eng.wal.segment_of(f.chunk_lsn) for f in fill_records(eng)}
    for i in range(8):
        w.put("b", f"tmp{i}", os.urandom(100 << 10))
    for i in range(8):
        w.apply(E.DeleteObject("b", f"tmp{i}"))
    assert eng.checkpoint().reclaimed_bytes > 0
    assert fill_segs <= set(eng.wal.segments)
    assert read_all(eng, "b", "k") == data
    check_catalog(eng)
    eng.close()
    eng = reopen(data_dir, segment_size=128 << 10)
    assert read_all(eng, "b", "k") == data
    eng.close()


def test_read_chunk_by_id_serves_committed_chunks_and_detects_corruption(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    small, big = os.urandom(1000), os.urandom(3 << 20)
    w.put("b", "small", small, chunk_size=4000)
    w.put("b", "big", big, chunk_size=4 << 20)
    sid, bid = hashlib.sha256(small).digest(), hashlib.sha256(big).digest()
    assert eng.read_chunk_by_id(sid) == small and eng.read_chunk_by_id(bid) == big
    assert eng.has_chunk(sid) and not eng.has_chunk(os.urandom(32))
    assert not eng._pins  # nothing left pinned
    with eng.catalog.read() as t:
        lsn = t.chunk(sid)[0]
    seg = eng.wal.segment_of(lsn)
    with open(os.path.join(data_dir, "wal", f"{seg:016x}.wal"), "r+b") as f:
        f.seek(lsn - seg + CHUNK_DATA_OFFSET + 10)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChunkCorrupt):
        eng.read_chunk_by_id(sid)
    assert eng.read_chunk_by_id(bid) == big
    assert not eng._pins
    eng.close()


def test_a_format_1_catalog_gets_its_missing_table_on_open(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    chunks = put_missing(w, "k", os.urandom(8000))
    eng.close()
    # turn the catalog back into format 1: no missing table, 3-element chunk rows
    downgrade_catalog(data_dir, 1)
    eng = reopen(data_dir)
    assert set(eng.missing_chunks()) == set(chunks)
    with eng.catalog.read() as t:
        assert t.meta("format") == FORMAT_VERSION == 3
    check_catalog(eng)
    eng.close()


def test_a_checkpoint_between_chunk_and_fill(data_dir):
    """The fill's transaction is in the checkpoint's table: a FILL after the checkpoint
    commits it; without one, recovery rolls it back from the checkpoint's table."""
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    c1 = put_missing(w, "one", os.urandom(3000))
    c2 = put_missing(w, "two", os.urandom(3000))
    (id1, p1), = c1.items()
    (id2, p2), = c2.items()
    with eng._lock:
        txn1, ref1 = eng._write_fill_chunk(id1, p1)
        txn2, _ref2 = eng._write_fill_chunk(id2, p2)
    eng.checkpoint()  # both fill transactions open in its table
    with eng._lock:
        pending = eng._log_fill(txn1, ref1)
    assert pending.wait() is True
    eng.abandon()

    eng = reopen(data_dir)
    rep = eng.recovery_report
    assert rep.txns_undone == 1 and rep.chunks_undone == 1  # the second, never filled
    assert read_all(eng, "b", "one") == p1
    assert eng.missing_chunks() == [id2]
    check_catalog(eng)
    eng.close()

"""Building a cold segment from a real engine: the entries applied in a log LSN range
and the chunks they introduced, read back with SegmentReader."""

import hashlib
import io
import os

import pytest

from engine import Engine
from engine import entries as E
from engine.applied_scan import AppliedRangeUnavailable
from tiering.segment_builder import ChunkUnavailable, build_segment
from tiering.segment_format import SegmentReader


def open_engine(data_dir, **kw):
    kw.setdefault("maintenance_interval_s", 0)
    return Engine(data_dir, **kw)


def cid(data):
    return hashlib.sha256(data).digest()


class Log:
    """Applies entries at LSNs 1, 2, ... and remembers what each introduced."""

    def __init__(self, eng):
        self.eng = eng
        self.lsn = eng.applied_lsn
        self.entries = {}  # lsn -> entry
        self.introduced = {}  # lsn -> [chunk id]
        self.data = {}  # chunk id -> bytes

    def apply(self, entry, introduced=()):
        self.lsn += 1
        res = self.eng.apply(self.lsn, entry)
        assert res.ok, res
        self.entries[self.lsn] = entry
        self.introduced[self.lsn] = list(introduced)
        return self.lsn

    def put(self, key, pieces, extra=()):
        """PutObject of the pieces (one chunk each); `extra` are chunks the transaction
        also writes but the entry does not reference."""
        txn = self.eng.begin()
        for p in list(pieces) + list(extra):
            self.eng.write_chunk(txn, p)
            self.data[cid(p)] = p
        self.eng.wait_durable()
        body = b"".join(pieces)
        chunks = [(cid(p), len(p)) for p in pieces]
        ids = list(dict.fromkeys(c for c, _ in chunks))
        return self.apply(E.PutObject("b", key, len(body), hashlib.md5(body).hexdigest(),
                                      chunks, 1000 + self.lsn, txn_id=txn), ids)

    def expected(self, lo, hi):
        entries = [(lsn, self.entries[lsn]) for lsn in range(lo, hi + 1) if lsn in self.entries]
        chunks = {c for lsn in range(lo, hi + 1) for c in self.introduced.get(lsn, ())}
        return entries, chunks


def workload(eng):
    log = Log(eng)
    rnd = lambda n: os.urandom(n)  # noqa: E731
    log.apply(E.CreateBucket("b", 1))  # 1
    a = rnd(5000)
    log.put("k1", [a])  # 2: one chunk
    b1, b2, b3, stray = rnd(4000), rnd(4000), rnd(1234), rnd(777)
    log.put("k2", [b1, b2, b3], extra=[stray])  # 3: three chunks, plus one not referenced
    c = rnd(3000)
    log.put("k3", [b2, c, b2])  # 4: b2 again (dedup) and referenced twice
    log.apply(E.CopyObject("b", "k2", "b", "k4", 2000))  # 5: a copy: no new chunks
    d = rnd(6000)
    log.put("k1", [d])  # 6: overwrite: a becomes dead
    log.apply(E.DeleteObject("b", "k2"))  # 7
    log.apply(E.DeleteObject("b", "k3"))  # 8: c becomes dead
    log.apply(E.Noop())  # 9: the engine logs a Noop it is given
    e1, e2 = rnd(100), rnd(100)
    log.put("k5", [e1, e2])  # 10
    assert cid(stray) not in {x for ids in log.introduced.values() for x in ids}
    return log, {"a": cid(a), "c": cid(c), "stray": cid(stray), "b2": cid(b2)}


def build(eng, lo, hi):
    buf = io.BytesIO()
    info = build_segment(eng, lo, hi, buf)
    raw = buf.getvalue()
    reader = SegmentReader(lambda off, n: raw[off:off + n], len(raw))
    assert info.size == len(raw) and info.sha256 == hashlib.sha256(raw).hexdigest()
    assert reader.verify().ok
    return info, reader


def check(reader, log, lo, hi):
    entries, chunks = log.expected(lo, hi)
    got = list(reader.entries())
    assert [lsn for lsn, _ in got] == [lsn for lsn, _ in entries]
    assert [E.decode_entry(raw) for _, raw in got] == [e for _, e in entries]
    assert [raw for _, raw in got] == [E.encode_entry(e) for _, e in entries]
    assert set(reader.chunk_ids()) == chunks
    assert len(reader.chunk_ids()) == len(chunks)  # each once
    for c in chunks:
        assert reader.read_chunk(c) == log.data[c]
    assert (reader.lsn_lo, reader.lsn_hi) == (lo, hi)


def test_segment_holds_the_range_entries_and_introduced_chunks(data_dir):
    eng = open_engine(data_dir)
    log, ids = workload(eng)
    n = log.lsn
    # chunks no longer in the catalog still ship, read from the WAL record
    assert not eng.has_chunk(ids["a"]) and not eng.has_chunk(ids["c"])
    info, reader = build(eng, 1, n)
    check(reader, log, 1, n)
    assert not reader.has_chunk(ids["stray"])
    assert info.entry_count == n and info.chunk_count == len(log.expected(1, n)[1])

    for lo, hi in [(4, 7), (2, 2), (5, 5), (9, 9), (3, n), (1, 1)]:
        _info, sub = build(eng, lo, hi)
        check(sub, log, lo, hi)
    _info, sub = build(eng, 4, 4)
    assert set(sub.chunk_ids()) == {ids["b2"], cid(log.data[ids["c"]])}

    # scan_applied itself: per entry, the chunks it introduced, in order
    scanned = list(eng.scan_applied(1, n))
    assert [s.lsn for s in scanned] == list(range(1, n + 1))
    assert {s.lsn: list(s.chunks) for s in scanned} == log.introduced
    eng.close()


def test_reopened_engine_builds_the_same_segment(data_dir):
    eng = open_engine(data_dir)
    log, _ids = workload(eng)
    n = log.lsn
    first, _ = build(eng, 1, n)
    first_sub, _ = build(eng, 3, 8)
    eng.close()
    eng = open_engine(data_dir)
    again, reader = build(eng, 1, n)
    check(reader, log, 1, n)
    again_sub, sub = build(eng, 3, 8)
    check(sub, log, 3, 8)
    # same entries, same chunks, same order: byte-identical segments
    assert again.sha256 == first.sha256 and again_sub.sha256 == first_sub.sha256
    eng.close()


def test_range_not_applied_yet_is_refused(data_dir):
    eng = open_engine(data_dir)
    log, _ids = workload(eng)
    with pytest.raises(ValueError, match="not applied yet"):
        build_segment(eng, 1, log.lsn + 1, io.BytesIO())
    with pytest.raises(ValueError):
        eng.scan_applied(5, 4)
    eng.close()


def test_reclaimed_wal_and_missing_chunk(data_dir):
    """A chunk whose object was deleted and that a later entry references without
    holding it is MISSING; once its WAL segment is reclaimed, the segment cannot be
    built (ChunkUnavailable) until the chunk is filled in. Entries whose APPLY records
    were reclaimed are refused by LSN."""
    eng = open_engine(data_dir, segment_size=64 << 10)
    log = Log(eng)
    log.apply(E.CreateBucket("b", 1))  # 1, in segment 0
    x, y = os.urandom(30000), os.urandom(40000)
    tx = eng.begin()
    eng.write_chunk(tx, x)  # segment 0
    ty = eng.begin()
    eng.write_chunk(ty, y)  # does not fit: segment 1
    eng.wait_durable()
    log.data.update({cid(x): x, cid(y): y})
    assert len(eng.wal.segments) == 2
    log.apply(E.PutObject("b", "kx", len(x), "e", [(cid(x), len(x))], 1, txn_id=tx), [cid(x)])  # 2
    log.apply(E.PutObject("b", "ky", len(y), "e", [(cid(y), len(y))], 1, txn_id=ty), [cid(y)])  # 3
    log.apply(E.DeleteObject("b", "kx"))  # 4: x dead, segment 0 holds nothing live
    # 5: a replica-style entry referencing x without the chunk: MISSING here
    log.apply(E.PutObject("b", "kz", len(x), "e", [(cid(x), len(x))], 1, txn_id=os.urandom(16)))
    assert eng.missing_chunks() == [cid(x)]
    eng.checkpoint()
    assert eng.wal.segments[0] != 0, "segment 0 should have been reclaimed"

    with pytest.raises(AppliedRangeUnavailable) as exc:
        build_segment(eng, 1, 5, io.BytesIO())
    assert exc.value.lsn == 1 and "log LSN 1" in str(exc.value)
    with pytest.raises(ChunkUnavailable) as exc:
        build_segment(eng, 2, 5, io.BytesIO())
    # entry 2's copy of x is gone with the object it made (nothing needs it), but entry
    # 5 created x's current row (intro_lsn 5): the segment must carry x for it
    assert exc.value.chunk_id == cid(x) and exc.value.lsn == 5
    assert cid(x).hex() in str(exc.value)

    _info, reader = build(eng, 3, 4)  # does not need x
    check(reader, log, 3, 4)

    assert eng.fill_chunk(cid(x), x)  # the shipper fetches it, then builds
    _info, reader = build(eng, 2, 5)
    check(reader, log, 2, 5)
    eng.close()


def test_hole_in_the_middle_of_the_wal(data_dir):
    """Reclamation can remove a segment between two kept ones: entries whose APPLY
    records were there are refused; those on either side still build."""
    eng = open_engine(data_dir, segment_size=64 << 10)
    log = Log(eng)
    log.apply(E.CreateBucket("b", 1))  # 1, segment 0
    log.put("live", [os.urandom(30000)])  # 2, segment 0 (stays live: segment 0 is kept)
    log.put("dead", [os.urandom(40000)])  # 3, segment 1
    log.apply(E.DeleteObject("b", "dead"))  # 4, segment 1: nothing live there any more
    log.put("w", [os.urandom(50000)])  # 5, segment 2
    segs_before = list(eng.wal.segments)
    assert len(segs_before) == 3
    eng.checkpoint()
    assert eng.wal.segments[:2] == [segs_before[0], segs_before[2]]
    for lo, hi in [(1, 2), (5, 5), (1, 1)]:
        _info, reader = build(eng, lo, hi)
        check(reader, log, lo, hi)
    for lo, hi, first_bad in [(3, 4, 3), (1, 5, 3), (4, 5, 4), (2, 3, 3)]:
        with pytest.raises(AppliedRangeUnavailable) as exc:
            build_segment(eng, lo, hi, io.BytesIO())
        assert exc.value.lsn == first_bad
    eng.close()

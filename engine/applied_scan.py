"""Reading back the committed entries an engine applied, by log (Raft) LSN range.

The source is the WAL's APPLY records: each carries the log LSN, the encoded entry
exactly as it was applied, and the WAL locations of the chunks its transaction wrote
here. That is what the cold tier ships: `scan_applied` yields, per entry in the range,
the entry bytes and the chunks the entry introduced (held by its transaction AND
referenced by the entry), with their WAL locations.

Scanning streams: one record at a time, headers only for records other than APPLY
(chunk payloads are skipped, not read). It reads up to the WAL end as of the call
(made durable first), so a record being appended concurrently is never seen half
written, and it pins the segments it will read so that reclamation cannot remove one
mid-scan. Segments reclaimed or evicted *before* the call leave holes: the raft LSNs
whose APPLY records may have been in a hole cannot be vouched for, and asking for any
of them raises `AppliedRangeUnavailable` naming the first such LSN. The catalog's
`wal_gone_raft` (the highest max_raft of any deleted segment, made durable before the
deletion) bounds that: a log LSN above it was never in a hole, so a gap in log LSNs
there (Raft no-ops never reach the engine) is not mistaken for one.

Noop entries: the Raft layer never hands them to the engine (raftlog/raft_log.py), but
`Engine.apply` accepts and logs one if given; whatever was logged is yielded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from .entries import decode_entry
from .errors import ChunkCorrupt, EngineError, WalCorruption
from .log_records import ApplyRecord, parse_chunk
from .wal import segment_name
from .wal_record import HEADER_SIZE, RecordType, crc_ok, parse_header

if TYPE_CHECKING:
    from .engine import Engine


class AppliedRangeUnavailable(EngineError):
    """Part of the requested log LSN range may have been in WAL segments that were
    reclaimed: this engine cannot produce it any more."""

    def __init__(self, lsn: int, detail: str):
        super().__init__(f"log LSN {lsn} is no longer in the local WAL: {detail}")
        self.lsn = lsn


@dataclass(frozen=True, slots=True)
class AppliedEntry:
    lsn: int  # log (Raft) LSN
    entry: bytes  # the encoded entry, exactly as logged
    chunks: tuple  # ids of the chunks this entry introduced, in the entry's order, no repeats
    locations: tuple  # [(chunk id, WAL lsn of its CHUNK record, record size)], same order
    wal_lsn: int  # where the APPLY record sits in the WAL


def introduced_chunks(record: ApplyRecord) -> tuple:
    """[(chunk id, wal lsn, size)] of the chunks the record's transaction wrote here
    that its entry references (first location of each; entry order; no repeats)."""
    if not record.chunks:
        return ()
    held: dict = {}
    for cid, lsn, size in record.chunks:
        held.setdefault(bytes(cid), (lsn, size))
    refs = getattr(decode_entry(record.entry), "chunks", None) or ()
    out, seen = [], set()
    for cid, _length in refs:
        cid = bytes(cid)
        loc = held.get(cid)
        if loc is not None and cid not in seen:
            seen.add(cid)
            out.append((cid, *loc))
    return tuple(out)


def scan_applied(engine: "Engine", lsn_lo: int, lsn_hi: int) -> Iterator[AppliedEntry]:
    """The entries the engine applied with log LSN in [lsn_lo, lsn_hi], in LSN order.
    Arguments are checked now (ValueError, EngineClosed); the scan runs lazily.
    AppliedRangeUnavailable may be raised mid-iteration, when a hole is reached."""
    if not 0 <= lsn_lo <= lsn_hi:
        raise ValueError(f"bad log LSN range [{lsn_lo}, {lsn_hi}]")
    engine._check_open()
    applied = engine.applied_lsn  # read before wal.end: its APPLY record lies below end
    if lsn_hi > applied:
        raise ValueError(f"log LSN {lsn_hi} is not applied yet (applied: {applied})")
    wal = engine.wal
    end = wal.end
    wal.wait_durable(end)
    return _scan(engine, lsn_lo, lsn_hi, end)


def _scan(engine: "Engine", lo: int, hi: int, end: int) -> Iterator[AppliedEntry]:
    wal = engine.wal
    segs = [s for s in list(wal.segments) if s < end]
    engine._pin_segments(segs)
    pinned = segs
    try:
        # pinned: a segment still listed now stays until we unpin it
        present = set(wal.segments)
        segs = [s for s in segs if s in present]
        published = engine._catalog_wal_lsn  # before the catalog read: rows cover it
        with engine.catalog.read() as t:  # read after `present`: covers every hole in it
            gone = t.meta("wal_gone_raft", 0)
            max_raft = {seg: row[2] for seg, row in t.segments()}
        # segments wholly below the range are skipped unread (below): unpin them now,
        # so a long scan (a segment being built) does not hold back their eviction
        skip = {s for i, s in enumerate(segs)
                if max_raft.get(s) is not None and max_raft[s] < lo
                and (segs[i + 1] if i + 1 < len(segs) else end) <= published}
        if skip:
            engine._unpin_segments([s for s in pinned if s in skip])
            pinned = [s for s in pinned if s not in skip]
        prev = 0  # raft LSN of the last APPLY record seen
        # the log begins at WAL LSN 0; a first segment after 0 means a reclaimed prefix
        hole = (segs[0] if segs else end) != 0
        hole_at = 0
        expected = 0
        for i, start in enumerate(segs):
            if start != expected:
                hole, hole_at = True, expected
            size = min(end, start + os.path.getsize(wal._path(start))) - start
            if start in skip:
                # every APPLY record here is below the range and published (so its
                # max_raft counts it): skip the segment unread. The shipper asks for
                # the range just above the HWM; this keeps its scan off the old WAL.
                # `prev` stays: max_raft also counts entries whose chunks merely sit
                # here, and their APPLY records may come later in the log.
                expected = start + size
                continue
            pos = start
            with open(wal._path(start), "rb", buffering=1 << 20) as f:
                while pos - start < size:
                    head = f.read(HEADER_SIZE)
                    h = parse_header(head, pos)
                    if h is None:
                        raise WalCorruption(segment_name(start), pos, "invalid header (applied scan)")
                    if h.rtype != RecordType.APPLY:
                        f.seek(h.size - HEADER_SIZE, os.SEEK_CUR)
                        pos += h.size
                        continue
                    payload = f.read(h.length)
                    if len(payload) < h.length or not crc_ok(head, payload, h.crc):
                        raise WalCorruption(segment_name(start), pos, "bad APPLY record (applied scan)")
                    f.seek(h.size - HEADER_SIZE - h.length, os.SEEK_CUR)
                    record = ApplyRecord.decode(payload)
                    r = record.raft_lsn
                    if r <= prev:
                        raise WalCorruption(segment_name(start), pos,
                                            f"APPLY for log LSN {r} after log LSN {prev}")
                    if hole:
                        _check_hole(lo, hi, prev, r, hole_at, start, gone)
                        hole = False
                    if r > hi:
                        return
                    if r >= lo:
                        locs = introduced_chunks(record)
                        yield AppliedEntry(r, record.entry, tuple(c[0] for c in locs), locs, pos)
                    prev = r
                    pos += h.size
            expected = start + size
        if hole:
            _check_hole(lo, hi, prev, None, hole_at, None, gone)
    finally:
        engine._unpin_segments(pinned)


def _check_hole(lo: int, hi: int, prev: int, nxt: int | None, hole_at: int,
                resumes_at: int | None, gone: int) -> None:
    """APPLY records for log LSNs strictly between prev and nxt, and at most `gone`,
    may have been in the deleted WAL span starting at hole_at: refuse if the range
    asks for any of them."""
    first_unknown = max(lo, prev + 1)
    last_unknown = min(hi if nxt is None else min(hi, nxt - 1), gone)
    if first_unknown <= last_unknown:
        where = f"WAL from LSN {hole_at}" + (
            f" to {resumes_at}" if resumes_at is not None else " on") + " was reclaimed"
        after = f"the local WAL resumes at log LSN {nxt}" if nxt is not None else \
            "no later entry is in the local WAL"
        raise AppliedRangeUnavailable(first_unknown, f"{where}; last entry before it is "
                                                     f"log LSN {prev}, {after}")


def read_logged_chunk(engine: "Engine", chunk_id: bytes, wal_lsn: int) -> memoryview | None:
    """A chunk's bytes read from its CHUNK record at wal_lsn (as an APPLY record names
    it), SHA-256 verified; None if that segment has been reclaimed. For chunks the
    catalog no longer holds (deleted, overwritten, or MISSING after a release) whose
    bytes are still in the log. ChunkCorrupt if the record is not that chunk."""
    chunk_id = bytes(chunk_id)
    wal = engine.wal
    try:
        seg = wal.segment_of(wal_lsn)
    except KeyError:
        return None
    engine._pin_segments((seg,))
    try:
        if seg not in wal.segments:  # reclaimed before our pin
            return None
        try:
            rec = wal.read_record(wal_lsn)
        except WalCorruption:
            raise ChunkCorrupt(chunk_id, wal_lsn) from None
    finally:
        engine._unpin_segments((seg,))
    if rec.rtype != RecordType.CHUNK:
        raise ChunkCorrupt(chunk_id, wal_lsn)
    _txn, cid, _ms, data = parse_chunk(rec.payload)
    if cid != chunk_id or hashlib.sha256(data).digest() != chunk_id:
        raise ChunkCorrupt(chunk_id, wal_lsn)
    return data

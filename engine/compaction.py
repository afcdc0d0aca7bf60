"""Compaction: copying the live chunks of mostly dead WAL segments to the log's end.

Reclaim deletes a sealed segment only once it holds no live chunk, so a segment whose
chunks are 90% deleted or overwritten would keep all its bytes for ever. Compaction
copies the live 10% forward; the old segment then holds nothing live and the next
checkpoint reclaims it.

Which segments (`candidates`), oldest first:
  (a) wholly below the bound reclaim uses (the checkpoint's redo point, the checkpoint,
      the oldest open transaction, the oldest unpublished change): every change that
      touched it is published and no open transaction has a chunk there;
  (b) sealed (not the active segment) and (c) not pinned by a reader;
  (d) `0 < live <= max_live_ratio * size` (live bytes from the `segments` table, the
      size from the file as sealed): a segment with nothing live is reclaim's;
  (e) with `ship_retention`, `max_raft <= cold HWM`: a segment the shipper still needs
      stays anyway, so copying out of it would only cost space.
Work is bounded: segments are taken while the live bytes already taken are below
`max_bytes` (so a pass copies at most max_bytes plus one segment's live bytes).

How one chunk moves (`Engine._relocate_chunk`): its bytes are read from the old
location (one pread of the whole record, SHA-256 verified, the segment pinned), written
as a CHUNK record under a fresh internal transaction, and at once (same hold of the
log lock, as a fill) a RELOCATE record commits that transaction. Its catalog change is
published in log order like any other: if the row still points at the old copy, it
takes the new one (old copy dead, new copy live, the new segment's max_raft raised to
the row's intro_lsn); otherwise (deleted, released, moved again, turned COLD by an
eviction) the new copy is dead. A crash between the two records leaves a loser that
recovery rolls back with a CLR (the row never moved); a RELOCATE that reached the log
is redone with the same rule. A reader that resolved the old location keeps reading
it: its pin keeps reclaim away from the old segment.

The live rows of the chosen segments come from one pass over the `chunks` table (no
index by location; eviction's scan, ~1 µs per row). Once every copy is published the
pass runs a checkpoint, whose reclaim deletes the emptied segments.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .eviction import _live_rows
from .log_records import CHUNK_PREFIX, parse_chunk
from .sealed_segments import sealed_below
from .wal_record import HEADER_SIZE, RecordType, parse_header

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class CompactReport:
    max_live_ratio: float
    max_bytes: int | None
    hot_bytes_before: int = 0
    hot_bytes_after: int = 0
    segments_compacted: int = 0  # every live chunk copied (or released meanwhile)
    chunks_moved: int = 0  # RELOCATEs that moved their row
    chunks_dead: int = 0  # copies whose row was released or moved meanwhile: dead bytes
    chunks_corrupt: int = 0  # not copied: the stored bytes fail their SHA-256 (segment kept)
    bytes_copied: int = 0  # record bytes written (chunk data and framing)
    bytes_freed: int = 0  # sizes of the compacted segments the closing checkpoint deleted
    reclaimed_bytes: int = 0  # everything that checkpoint's reclaim deleted
    # segments kept, by reason: "active", "needed_by_recovery" (a), "pinned" (c),
    # "no_live" (d: reclaim's business), "too_live" (d), "unshipped" (e),
    # "max_bytes" (left for the next pass), "gone" (deleted while the pass ran),
    # "left_pinned" (compacted, but a reader still holds it: reclaimed once unpinned)
    skipped: dict = field(default_factory=dict)
    more: bool = False  # stopped at max_bytes with candidates left
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Candidate:
    segment: int
    next: int  # the next segment's start: this one ends there
    live: int
    size: int


def candidates(engine: "Engine", max_live_ratio: float,
               skipped: Counter | None = None) -> list[Candidate]:
    """Segments compaction would take now, oldest first (rules (a)-(e) above). Cheap:
    one read of the `segments` table, no stat, no chunk scan."""
    skipped = Counter() if skipped is None else skipped
    keep_from = engine._keep_from()
    if keep_from is None or max_live_ratio <= 0:
        return []
    wal = engine.wal
    with engine.catalog.read() as t:
        usage = dict(t.segments())
        hwm = t.meta("cold_hwm", 0)
    retain = engine.config.ship_retention
    out = []
    for seg, nxt in sealed_below(list(wal.segments), keep_from, skipped):
        live, _dead, max_raft = usage.get(seg, (0, 0, 0))
        size = wal.sealed_size(seg)
        if size is None:  # deleted since the listing
            continue
        if live <= 0:
            skipped["no_live"] += 1
        elif live > max_live_ratio * size:
            skipped["too_live"] += 1
        elif retain and max_raft > hwm:
            skipped["unshipped"] += 1
        else:
            with engine._pins_lock:
                pinned = bool(engine._pins.get(seg))
            if pinned:
                skipped["pinned"] += 1
            else:
                out.append(Candidate(seg, nxt, live, size))
    return out


def compact(engine: "Engine", max_live_ratio: float, max_bytes: int | None) -> CompactReport:
    if not 0 <= max_live_ratio <= 1:
        raise ValueError(f"max_live_ratio must be in [0, 1], not {max_live_ratio}")
    t0 = time.perf_counter()
    with engine._compact_lock:  # one pass at a time (two would copy the same chunks)
        report = CompactReport(max_live_ratio, max_bytes, engine.hot_bytes())
        skipped: Counter = Counter()
        chosen, planned = [], 0
        for c in candidates(engine, max_live_ratio, skipped):
            if max_bytes is not None and planned >= max_bytes:
                skipped["max_bytes"] += 1
                report.more = True
                continue
            chosen.append(c)
            planned += c.live
        pendings = []  # (segment, Pending)
        compacted = {}  # segment -> its size
        if chosen:
            live = _live_rows(engine, [(c.segment, c.next) for c in chosen], 0)[0]
            for c in chosen:
                complete = _copy_segment(engine, c.segment, live.get(c.segment, []),
                                         pendings, report, skipped)
                if complete:
                    compacted[c.segment] = c.size
        for _seg, pending in pendings:  # published in log order, so these all are
            if pending.wait():
                report.chunks_moved += 1
            else:
                report.chunks_dead += 1
        if pendings or compacted:
            report.reclaimed_bytes = engine.checkpoint().reclaimed_bytes
        present = set(engine.wal.segments)
        for seg, size in compacted.items():
            if seg in present:
                skipped["left_pinned"] += 1
            else:
                report.bytes_freed += size
        report.segments_compacted = len(compacted)
        report.skipped = dict(skipped)
        report.hot_bytes_after = engine.hot_bytes()
        report.duration_s = time.perf_counter() - t0
        engine._note_compaction(report)
        return report


def _copy_segment(engine: "Engine", seg: int, rows: list, pendings: list,
                  report: CompactReport, skipped: Counter) -> bool:
    """Copy the segment's live rows forward; True if none was left behind."""
    if not engine._pin_present((seg,)):
        skipped["gone"] += 1  # reclaimed (everything released) or evicted meanwhile
        return False
    complete = True
    try:
        with engine.catalog.read() as t:  # drop rows released or moved since the scan
            rows = [(cid, lsn, size) for cid, lsn, size in rows
                    if (row := t.chunk(cid)) is not None and row[0] == lsn]
        for cid, lsn, size in sorted(rows, key=lambda r: r[1]):
            data = read_chunk_record(engine, seg, cid, lsn, size)
            if data is None:
                report.chunks_corrupt += 1
                complete = False
                continue
            pending, written = engine._relocate_chunk(cid, lsn, data)
            pendings.append((seg, pending))
            report.bytes_copied += written
    finally:
        engine._unpin_segments((seg,))
    return complete


def read_chunk_record(engine: "Engine", seg: int, chunk_id: bytes, lsn: int,
                      size: int) -> memoryview | None:
    """The data of the CHUNK record of `size` bytes at `lsn` (in segment `seg`, which
    the caller pinned), read in one pread and SHA-256 verified; None if the record is
    not that chunk's or its bytes do not hash to its id."""
    buf = engine._read_segment(seg, lsn - seg, size)
    h = parse_header(buf, lsn)
    if (h is None or h.rtype != RecordType.CHUNK or h.length < CHUNK_PREFIX.size
            or h.size != size or len(buf) != size):
        return None
    _txn, cid, _ms, data = parse_chunk(memoryview(buf)[HEADER_SIZE:HEADER_SIZE + h.length])
    if cid != chunk_id or hashlib.sha256(data).digest() != chunk_id:
        return None
    return data


__all__ = ["Candidate", "CompactReport", "candidates", "compact", "read_chunk_record"]

"""Cold-tier eviction: deleting hot WAL segments whose contents are in cold storage.

A sealed segment may go when nothing local needs it any more:
  (a) recovery does not read it: it lies wholly below the bound reclaim uses (the
      checkpoint's redo point, the checkpoint, the oldest open transaction, the oldest
      unpublished change);
  (b) it is not the active segment, and (c) no reader has it pinned;
  (d) the shipper does not need it: its max_raft is at or below the cold HWM;
  (e) every live chunk row in it was introduced at or below the HWM (0 < intro_lsn),
      so the shipped cold segments hold it.
Its live rows then become COLD (location -2, size 0, same refs and intro_lsn) and its
segment row goes, in one LMDB transaction, which is synced; only then is the file
unlinked. A crash in between leaves a file no row accounts for, with no live bytes:
reclaim deletes it at the next checkpoint. Eviction is not logged: redo starts above
(a)'s bound, so it never replays a record of an evicted segment, and the catalog
holding the COLD rows is durable before any byte is gone.

(e) costs one pass over the whole `chunks` table per call (the table has no index by
location): O(chunk rows), ~1 µs each, run in a read transaction that does not block
writers. Eviction is a maintenance task run under space pressure, not per request.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .catalog import COLD
from .sealed_segments import sealed_below

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class EvictReport:
    target_hot_bytes: int
    hot_bytes_before: int
    hot_bytes_after: int = 0
    segments_evicted: int = 0
    bytes_freed: int = 0
    chunks_cold: int = 0
    # segments examined and kept, by reason: "needed_by_recovery" (a), "active" (b),
    # "pinned" (c), "unshipped_entries" (d), "unshipped_chunks" (e),
    # "changed_meanwhile" (its live bytes moved during the pass: tried again next time)
    skipped: dict = field(default_factory=dict)
    # evicted in the catalog but pinned by a reader when its file was to go:
    # the file is left for reclaim once unpinned
    left_for_reclaim: int = 0
    bytes_left_for_reclaim: int = 0  # their size: freed at that reclaim


class _Changed(Exception):
    """Aborts one segment's catalog transaction: its rows no longer match the pass."""


def evict(engine: "Engine", target_hot_bytes: int) -> EvictReport:
    wal = engine.wal
    before = engine.hot_bytes()
    report = EvictReport(target_hot_bytes, before, before)
    if before <= target_hot_bytes:
        return report
    skipped: Counter = Counter()
    with engine._ckpt_lock:  # one deleter of segments at a time (checkpoint, reclaim)
        keep_from = engine._keep_from()
        if keep_from is None:
            return report
        segs = list(wal.segments)
        with engine.catalog.read() as t:
            hwm = t.meta("cold_hwm", 0)
            rows = dict(t.segments())
        candidates = []  # (segment, next segment) passing (a)-(d)
        for seg, nxt in sealed_below(segs, keep_from, skipped):
            with engine._pins_lock:
                pinned = bool(engine._pins.get(seg))
            if pinned:  # a reader: stop here rather than evict newer data first
                skipped["pinned"] += 1
                break
            if rows.get(seg, (0, 0, 0))[2] > hwm:
                skipped["unshipped_entries"] += 1
            else:
                candidates.append((seg, nxt))
        live, blocked = _live_rows(engine, candidates, hwm) if candidates else ({}, set())
        hot = before
        for seg, nxt in candidates:
            if hot <= target_hot_bytes:
                break
            if seg in blocked:
                skipped["unshipped_chunks"] += 1
                continue
            try:
                cold = _evict_in_catalog(engine, seg, live.get(seg, ()), hwm)
            except _Changed:
                skipped["changed_meanwhile"] += 1
                continue
            engine.catalog.sync()  # COLD rows durable before the bytes go
            report.segments_evicted += 1
            report.chunks_cold += cold
            with engine._pins_lock:  # as reclaim: no reader can pin it while it goes
                if engine._pins.get(seg):
                    # cold now; its file goes at the next reclaim: count it as gone,
                    # or the loop would evict newer segments past the budget
                    report.left_for_reclaim += 1
                    size = wal.segment_size_on_disk(seg)
                    report.bytes_left_for_reclaim += size
                    hot -= size
                    continue
                freed = wal.delete_segment(seg)
            engine.pool.invalidate_segment(seg)
            report.bytes_freed += freed
            hot -= freed
    report.skipped = dict(skipped)
    report.hot_bytes_after = engine.hot_bytes()
    return report


def _live_rows(engine: "Engine", candidates: list, hwm: int) -> tuple[dict, set]:
    """One pass over the chunk rows: per candidate segment, its live rows
    [(chunk id, lsn, size)], and the set of candidates holding a row not shipped."""
    starts = [s for s, _n in candidates]
    ends = {s: n for s, n in candidates}
    live: dict = {s: [] for s in starts}
    blocked: set = set()
    with engine.catalog.read() as t:
        for cid, (lsn, size, _refs, intro) in t.chunks():
            if lsn < 0:
                continue
            i = bisect.bisect_right(starts, lsn) - 1
            if i < 0 or lsn >= ends[starts[i]]:
                continue
            seg = starts[i]
            if not 0 < intro <= hwm:
                blocked.add(seg)
            live[seg].append((cid, lsn, size))
    return live, blocked


def _evict_in_catalog(engine: "Engine", seg: int, rows: list, hwm: int) -> int:
    """Turn the segment's live rows COLD and drop its row, in one write transaction.
    Rows only ever leave a segment below the bound (released), never arrive, so each
    is re-read; the segment's live bytes must then equal what turned COLD, or the pass
    missed something and the transaction is abandoned (_Changed)."""
    cold = 0
    with engine.catalog.write() as t:  # an exception aborts the whole transaction
        live, _dead, max_raft = t.segment(seg)
        if max_raft > hwm:
            raise _Changed()
        moved = 0
        for cid, lsn, size in rows:
            row = t.chunk(cid)
            if row is None or row[0] != lsn:
                continue  # released since the pass
            if not 0 < row[3] <= hwm:
                raise _Changed()
            t.put_chunk(cid, COLD, 0, row[2], row[3])
            t.add_cold(cid)
            moved += size
            cold += 1
        if moved != live:
            raise _Changed()
        t.delete_segment(seg)
        if max_raft > t.meta("wal_gone_raft", 0):  # for Engine.scan_applied's holes
            t.set_meta("wal_gone_raft", max_raft)
    return cold


__all__ = ["EvictReport", "evict"]

"""Building the canonical cold segment of a log LSN range from one engine.

`build_segment` streams into a `SegmentWriter`: every entry the engine applied in
[lsn_lo, lsn_hi] (from its WAL's APPLY records, `Engine.scan_applied`) and, once each,
the data of every chunk those entries introduced. One chunk is in memory at a time.

A chunk is *introduced* by an entry when the entry references it and either the
entry's transaction wrote it here (the APPLY record names its WAL location), or the
catalog row of that chunk was created by this entry (`intro_lsn`: the node building
the segment may have missed the upload, so it holds the row as MISSING). The second
rule is what lets a replica mark a chunk "in cold storage" from the segment's LSN
range alone, without a per-chunk list in the `SegmentShipped` entry.

Where a chunk's bytes come from, in order:
1. `engine.read_chunk_by_id` (the catalog's copy, pinned, SHA-256 verified);
2. the CHUNK record the APPLY record names, if that WAL segment is still there (the
   object was deleted or overwritten since);
3. `fetch(chunk_id)`, if given (a peer's copy), verified here.
If none has it, `ChunkUnavailable` names the chunk. A chunk that the catalog no longer
holds and that no source has is skipped only when no row references it any more
(deleted before shipping): the current state never needs it. On any error the bytes
already written to `fileobj` are garbage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Callable

from engine.applied_scan import read_logged_chunk
from engine.entries import CheckpointsDropped, SegmentShipped, decode_entry
from tiering.segment_format import SegmentInfo, SegmentWriter

from .background import Yielder

Fetch = Callable[[bytes], "bytes | None"]


class ChunkUnavailable(Exception):
    """A chunk introduced in the range is held neither in the engine's catalog nor at
    the WAL location its entry recorded (nor by `fetch`): it must be fetched before the
    segment can be built."""

    def __init__(self, chunk_id: bytes, lsn: int, wal_lsn: int | None):
        where = f"its WAL record at {wal_lsn} has been reclaimed" if wal_lsn is not None \
            else "this node never held it"
        super().__init__(
            f"chunk {bytes(chunk_id).hex()} (introduced by log LSN {lsn}) is not available "
            f"on this engine: missing from the catalog and {where}")
        self.chunk_id = bytes(chunk_id)
        self.lsn = lsn
        self.wal_lsn = wal_lsn


@dataclass(frozen=True)
class RangePlan:
    """What `plan_range` found above the HWM: cut the segment at `lsn_hi`."""

    lsn_hi: int
    entries: int
    chunk_bytes: int  # bytes of chunks written here by the entries (an estimate of the segment)
    full: bool  # True: the size target was reached (seal now)


def plan_range(engine, lsn_lo: int, lsn_max: int, target_bytes: int) -> RangePlan | None:
    """Where to cut a segment starting at lsn_lo: at the first entry that brings the
    chunk bytes to target_bytes, else at the last applied entry <= lsn_max. None if
    no entry lies in [lsn_lo, lsn_max], or only the cold tier's own records
    (`SegmentShipped`, `CheckpointsDropped`) do: they ride along with the next real
    segment instead of each getting a segment (and another SegmentShipped) of its
    own, forever. Reads APPLY records
    only (chunks are skipped)."""
    if lsn_max < lsn_lo:
        return None
    entries, total, last, real = 0, 0, None, False
    pause = Yielder()
    for item in engine.scan_applied(lsn_lo, lsn_max):
        pause()
        entries += 1
        real = real or not _is_shipped_record(item.entry)
        total += len(item.entry) + sum(size for _cid, _lsn, size in item.locations)
        last = item.lsn
        if total >= target_bytes:
            return RangePlan(last, entries, total, True)
    if last is None or not real:
        return None
    return RangePlan(lsn_max, entries, total, False)


def _is_shipped_record(entry: bytes) -> bool:
    return (isinstance(entry, (bytes, memoryview))
            and decode_entry(entry).OP in (SegmentShipped.OP, CheckpointsDropped.OP))


def build_segment(engine, lsn_lo: int, lsn_hi: int, fileobj: BinaryIO, *,
                  level: int = 3, fetch: Fetch | None = None) -> SegmentInfo:
    """Write the segment of [lsn_lo, lsn_hi] to fileobj; returns what it holds (with
    the whole file's SHA-256). Raises ChunkUnavailable, AppliedRangeUnavailable (part
    of the range is no longer in the engine's WAL) or ValueError (not applied yet)."""
    applied = engine.scan_applied(lsn_lo, lsn_hi)  # checks the range before writing
    writer = SegmentWriter(fileobj, lsn_lo, lsn_hi, level=level)
    stored: set[bytes] = set()
    pause = Yielder()
    for item in applied:
        pause()
        writer.add_entry(item.lsn, item.entry)
        held = {cid: wal_lsn for cid, wal_lsn, _size in item.locations}
        for chunk_id in _introduced(engine, item, held):
            if chunk_id in stored:
                continue
            data = _chunk_data(engine, chunk_id, held.get(chunk_id), item.lsn, fetch)
            if data is None:
                continue  # released before shipping: nothing references it any more
            writer.add_chunk(chunk_id, data, verified=True)  # every source checked it
            del data
            stored.add(chunk_id)
    return writer.finish()


def _introduced(engine, item, held: dict) -> list[bytes]:
    refs = getattr(decode_entry(item.entry), "chunks", None) or ()
    out, seen = [], set()
    for cid, _length in refs:
        cid = bytes(cid)
        if cid in seen:
            continue
        seen.add(cid)
        if cid in held:
            out.append(cid)
            continue
        info = engine.chunk_info(cid)
        if info is not None and info.intro_lsn == item.lsn:
            out.append(cid)
    return out


def _chunk_data(engine, chunk_id: bytes, wal_lsn: int | None, lsn: int, fetch: Fetch | None):
    data = engine.read_chunk_by_id(chunk_id)
    if data is None and wal_lsn is not None:
        data = read_logged_chunk(engine, chunk_id, wal_lsn)
    if data is None and fetch is not None:
        data = fetch(chunk_id)
        if data is not None and hashlib.sha256(data).digest() != chunk_id:
            data = None
    if data is None:
        info = engine.chunk_info(chunk_id)
        if info is None or info.intro_lsn != lsn:
            return None  # no row created by this entry references it any more
        raise ChunkUnavailable(chunk_id, lsn, wal_lsn)
    return data

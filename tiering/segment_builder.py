"""Building the canonical cold segment of a log LSN range from one engine.

`build_segment` streams into a `SegmentWriter`: every entry the engine applied in
[lsn_lo, lsn_hi] (from its WAL's APPLY records, `Engine.scan_applied`) and, once each,
the data of every chunk those entries introduced (held by the entry's transaction and
referenced by the entry). One chunk is in memory at a time.

Where a chunk's bytes come from, in order:
1. `engine.read_chunk_by_id` (the catalog's copy, pinned, SHA-256 verified);
2. if the catalog no longer has it (the object was deleted or overwritten since, the
   entry failed, or the row is MISSING after a release), the CHUNK record the APPLY
   record names, if that WAL segment is still there (also SHA-256 verified).
If neither has it, `ChunkUnavailable` names the chunk: the caller fetches it (from a
peer or elsewhere) and builds again. A corrupt local copy raises the engine's
`ChunkCorrupt`. On any error the bytes already written to `fileobj` are garbage.
"""

from __future__ import annotations

from typing import BinaryIO

from engine.applied_scan import read_logged_chunk
from tiering.segment_format import SegmentInfo, SegmentWriter


class ChunkUnavailable(Exception):
    """A chunk introduced in the range is held neither in the engine's catalog nor at
    the WAL location its entry recorded: it must be fetched before the segment can be
    built."""

    def __init__(self, chunk_id: bytes, lsn: int, wal_lsn: int):
        super().__init__(
            f"chunk {bytes(chunk_id).hex()} (introduced by log LSN {lsn}) is not available "
            f"on this engine: missing from the catalog and its WAL record at {wal_lsn} "
            "has been reclaimed")
        self.chunk_id = bytes(chunk_id)
        self.lsn = lsn
        self.wal_lsn = wal_lsn


def build_segment(engine, lsn_lo: int, lsn_hi: int, fileobj: BinaryIO, *,
                  level: int = 3) -> SegmentInfo:
    """Write the segment of [lsn_lo, lsn_hi] to fileobj; returns what it holds (with
    the whole file's SHA-256). Raises ChunkUnavailable, AppliedRangeUnavailable (part
    of the range is no longer in the engine's WAL) or ValueError (not applied yet)."""
    applied = engine.scan_applied(lsn_lo, lsn_hi)  # checks the range before writing
    writer = SegmentWriter(fileobj, lsn_lo, lsn_hi, level=level)
    stored: set[bytes] = set()
    for item in applied:
        writer.add_entry(item.lsn, item.entry)
        for chunk_id, wal_lsn, _size in item.locations:
            if chunk_id in stored:
                continue
            data = _chunk_data(engine, chunk_id, wal_lsn, item.lsn)
            writer.add_chunk(chunk_id, data)
            del data
            stored.add(chunk_id)
    return writer.finish()


def _chunk_data(engine, chunk_id: bytes, wal_lsn: int, lsn: int):
    data = engine.read_chunk_by_id(chunk_id)
    if data is None:
        data = read_logged_chunk(engine, chunk_id, wal_lsn)
    if data is None:
        raise ChunkUnavailable(chunk_id, lsn, wal_lsn)
    return data

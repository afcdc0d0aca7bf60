"""What the catalog tells a reader about the cold tier: where a chunk is, and which
shipped cold segment holds a log LSN.

A chunk row is hot (a WAL location here), MISSING (referenced, to be fetched from a
peer) or COLD (referenced, held only in cold storage: shipped, then evicted here or
never received). A COLD chunk is in the cold segment that holds its intro_lsn, the
log LSN of the entry that introduced it, so `cold_segment_for(intro_lsn)` says where
to look. Nothing here does I/O beyond LMDB reads: the engine stays network-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import COLD, MISSING, CatalogTxn


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    state: str  # "hot" | "missing" | "cold"
    wal_lsn: int  # where its CHUNK record is (hot), else MISSING (-1) or COLD (-2)
    size: int  # record bytes in the WAL (0 unless hot)
    refs: int
    intro_lsn: int  # log LSN of the entry that created the row (0: before format 3)

    @classmethod
    def from_row(cls, row: list) -> "ChunkInfo":
        lsn, size, refs, intro = row
        state = "hot" if lsn >= 0 else "missing" if lsn == MISSING else "cold"
        return cls(state, lsn, size, refs, intro)


def chunk_info(t: CatalogTxn, chunk_id: bytes) -> ChunkInfo | None:
    row = t.chunk(bytes(chunk_id))
    return None if row is None else ChunkInfo.from_row(row)


__all__ = ["COLD", "ChunkInfo", "chunk_info"]

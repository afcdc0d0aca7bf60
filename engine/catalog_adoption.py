"""Adopting another node's catalog: a cold catalog checkpoint becomes the starting
point of a new engine (rebuild, restore, rehydrate), without replaying the log up to
it.

The checkpoint is the other node's LMDB catalog as of a log LSN: its objects,
buckets, uploads and cold segments are the store's state and stay as they are. What
is the other node's alone goes: the accounting of its WAL segments, and its WAL
positions (`catalog_wal_lsn`, the WAL LSN each hot chunk row points at). This node's
WAL starts empty, so every entry up to the checkpoint's LSN has no WAL record here
(`wal_gone_raft`), and every chunk is either in cold storage already (introduced at
or below the checkpoint's HWM: COLD, read from the shards) or not yet (MISSING: the
`SegmentShipped` entries replayed after the checkpoint turn it COLD, or a peer fills
it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import COLD, MISSING, Catalog


@dataclass
class Adopted:
    applied_lsn: int
    cold_hwm: int
    objects: int
    chunks_cold: int
    chunks_missing: int


def adopt_catalog(path: str, map_size: int = 64 << 30) -> Adopted:
    """Rewrite the catalog at `path` (a directory holding data.mdb) in one write
    transaction, so that an Engine opened on its parent directory starts from it."""
    cat = Catalog(path, map_size=map_size, sync=True)
    try:
        with cat.write() as t:
            hwm = t.meta("cold_hwm", 0)
            cold = missing = 0
            for cid, row in list(t.chunks()):
                loc, _size, refs, intro = row
                if loc == COLD:
                    cold += 1
                    continue
                if 0 < intro <= hwm:
                    t.put_chunk(cid, COLD, 0, refs, intro)
                    if loc == MISSING:
                        t.remove_missing(cid)
                    t.add_cold(cid)
                    cold += 1
                else:
                    t.put_chunk(cid, MISSING, 0, refs, intro)
                    t.add_missing(cid)
                    missing += 1
            for start, _row in list(t.segments()):
                t.delete_segment(start)
            t._delete("meta", b"catalog_wal_lsn")
            applied = t.meta("applied_lsn", 0)
            t.set_meta("wal_gone_raft", applied)
            objects = t.count("objects")
        cat.sync()
    finally:
        cat.close()
    return Adopted(applied, hwm, objects, cold, missing)

"""Engine settings, with defaults suited to a laptop or a CI machine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    data_dir: str
    segment_size: int = 64 << 20  # WAL segment size: the unit of deletion and of cold shipping
    max_chunk_size: int = 16 << 20  # the largest chunk write_chunk accepts
    pool_budget: int = 64 << 20  # buffer pool memory
    page_size: int = 64 << 10  # buffer pool page
    pool_bypass: int = 1 << 20  # chunks this large stream past the pool (sequential reads)
    fsync: bool = True  # False only for tests that simulate crashes themselves
    # LMDB fdatasyncs each commit (one per publisher batch) but not its meta page
    # (MDB_NOMETASYNC): a power loss may undo the last catalog commit, which redo from
    # the WAL restores, but cannot corrupt the catalog. False: no fsync until the next
    # checkpoint (kill -9 safe, not power-loss safe). STORAGE_ENGINE_PLAN.md, "Power loss".
    catalog_sync: bool = True
    lmdb_map_size: int = 64 << 30
    checkpoint_bytes: int = 64 << 20  # checkpoint after this much WAL...
    checkpoint_interval_s: float = 60.0  # ...or this long, whichever comes first
    txn_timeout_s: float = 900.0  # an idle transaction is a loser after this
    undo_grace_s: float = 0.0  # recovery keeps transactions younger than this open
    maintenance_interval_s: float = 1.0  # background checkpoint/reap cadence; 0: none
    # Cold tier: reclaim also keeps every WAL segment the shipper still needs (its
    # max_raft is above the cold HWM). False: no cold tier, reclaim as before.
    ship_retention: bool = False
    # Compaction (engine/compaction.py): after a maintenance checkpoint, sealed segments
    # whose live chunks take at most this fraction of the file have them copied to the
    # log's end, so that reclaim can delete the segment. 0 disables it.
    compact_live_ratio: float = 0.5
    # live bytes copied per maintenance pass at most (a pass cut short is continued at
    # the next tick: a backlog drains at up to this much per maintenance_interval_s)
    compact_max_bytes: int = 256 << 20

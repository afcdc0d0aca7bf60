"""Tidestore's node-local storage engine: the hot tier.

An ARIES-style engine for a log-structured object store: a segmented WAL that holds
chunk data in place, an LMDB catalog, transactions with compensation records, a
buffer pool, fuzzy checkpoints and analysis/redo/undo recovery. It knows nothing of
Raft or HTTP, and never talks to cold storage: its catalog only records what has been
shipped there (so the WAL keeps what the shipper needs, and shipped segments can be
evicted); see STORAGE_ENGINE_PLAN.md.
"""

from . import entries
from .cold_catalog import ChunkInfo
from .compaction import CompactReport
from .config import EngineConfig
from .dir_lock import DirectoryInUse
from .engine import ChunkRef, Engine, ObjectInfo, ObjectReader, SegmentUsage
from .eviction import EvictReport
from .errors import ChunkCorrupt, ChunkMissing, EngineClosed, EngineError, UnknownTransaction, WalCorruption
from .recovery import RecoveryReport
from .state_machine import ApplyResult

__all__ = [
    "ApplyResult", "ChunkCorrupt", "ChunkInfo", "ChunkMissing", "ChunkRef", "CompactReport",
    "DirectoryInUse",
    "Engine",
    "EngineClosed", "EngineConfig", "EngineError", "EvictReport", "ObjectInfo", "ObjectReader",
    "RecoveryReport",
    "SegmentUsage", "UnknownTransaction", "WalCorruption", "entries",
]

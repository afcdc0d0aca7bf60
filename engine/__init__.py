"""Tidestore's node-local storage engine: the hot tier.

An ARIES-style engine for a log-structured object store: a segmented WAL that holds
chunk data in place, an LMDB catalog, transactions with compensation records, a
buffer pool, fuzzy checkpoints and analysis/redo/undo recovery. It knows nothing of
Raft, HTTP or cold storage; see STORAGE_ENGINE_PLAN.md.
"""

from . import entries
from .config import EngineConfig
from .engine import ChunkRef, Engine, ObjectInfo, ObjectReader, SegmentUsage
from .errors import ChunkCorrupt, ChunkMissing, EngineClosed, EngineError, UnknownTransaction, WalCorruption
from .recovery import RecoveryReport
from .state_machine import ApplyResult

__all__ = [
    "ApplyResult", "ChunkCorrupt", "ChunkMissing", "ChunkRef", "Engine", "EngineClosed",
    "EngineConfig", "EngineError", "ObjectInfo", "ObjectReader", "RecoveryReport",
    "SegmentUsage", "UnknownTransaction", "WalCorruption", "entries",
]

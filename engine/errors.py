"""Engine exceptions: each names a condition a caller must handle differently."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class WalCorruption(EngineError):
    """A record in the middle of the WAL fails its checks: data after it exists, so
    cutting the log there would silently drop committed history. Never skipped."""

    def __init__(self, segment: str, offset: int, reason: str):
        super().__init__(f"corrupt WAL record in {segment} at LSN {offset}: {reason}")
        self.segment = segment
        self.offset = offset
        self.reason = reason


class ChunkMissing(EngineError):
    """The catalog references a chunk this node does not hold: it was down when the
    chunk was replicated (fetch it from a peer), or `cold` is True: the chunk is held
    only in cold storage (Engine.chunk_info and cold_segment_for say where)."""

    def __init__(self, chunk_id: bytes, cold: bool = False):
        where = "held only in cold storage" if cold else "not held locally"
        super().__init__(f"chunk {chunk_id.hex()} is {where}")
        self.chunk_id = chunk_id
        self.cold = cold


class ChunkCorrupt(EngineError):
    """Bytes read back do not hash to the chunk's id: the local copy is damaged."""

    def __init__(self, chunk_id: bytes, lsn: int):
        super().__init__(f"chunk {chunk_id.hex()} at LSN {lsn} fails its content hash")
        self.chunk_id = chunk_id
        self.lsn = lsn


class UnknownTransaction(EngineError):
    """A chunk was written for, or a commit named, a transaction the engine does not
    know (already committed, rolled back, or never begun)."""


class EngineClosed(EngineError):
    """The engine was closed; no further operations are accepted."""

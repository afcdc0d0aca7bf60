"""Payloads of the WAL's record types (the framing is in wal_record.py).

    CHUNK       txn id (16) | chunk id (32, SHA-256 of the data) | wall clock ms (u64) | data
    APPLY       msgpack [raft lsn, encoded entry, txn id or nil, [[chunk id, lsn, size]]]
    CLR         msgpack [txn id, compensated chunk lsn, its record size, undo-next lsn]
    END         msgpack [txn id, outcome]
    CHECKPOINT  checkpoint.CheckpointData
    FILL        msgpack [fill txn id, chunk id, chunk record lsn, its record size]
    RELOCATE    msgpack [txn id, chunk id, old chunk record lsn, new one's lsn, record size]

CHUNK data is raw, so that chunk bytes are written once (no double write) and read
back in place at a fixed offset from the record's LSN.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

from .wal_record import HEADER_SIZE

TXN_ID_LEN = 16
CHUNK_PREFIX = struct.Struct("<16s32sQ")
CHUNK_DATA_OFFSET = HEADER_SIZE + CHUNK_PREFIX.size  # chunk data starts here in a record


def chunk_prefix(txn_id: bytes, chunk_id: bytes, ms: int) -> bytes:
    return CHUNK_PREFIX.pack(txn_id, chunk_id, ms)


def parse_chunk(payload: bytes) -> tuple[bytes, bytes, int, memoryview]:
    txn_id, chunk_id, ms = CHUNK_PREFIX.unpack_from(payload, 0)
    return txn_id, chunk_id, ms, memoryview(payload)[CHUNK_PREFIX.size:]


@dataclass(slots=True)
class ApplyRecord:
    raft_lsn: int
    entry: bytes
    txn_id: bytes | None
    chunks: list  # [(chunk id, lsn, record size)] held here for the entry's transaction

    def encode(self) -> bytes:
        return msgpack.packb([self.raft_lsn, self.entry, self.txn_id,
                              [list(c) for c in self.chunks]], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "ApplyRecord":
        lsn, entry, txn, chunks = msgpack.unpackb(data, raw=False)
        return cls(lsn, entry, txn, [(bytes(c), l, s) for c, l, s in chunks])


@dataclass(slots=True)
class ClrRecord:
    txn_id: bytes
    chunk_lsn: int
    size: int
    undo_next: int  # the next chunk of the transaction to undo (0: none left)

    def encode(self) -> bytes:
        return msgpack.packb([self.txn_id, self.chunk_lsn, self.size, self.undo_next],
                             use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "ClrRecord":
        return cls(*msgpack.unpackb(data, raw=False))


@dataclass(slots=True)
class EndRecord:
    txn_id: bytes
    outcome: str  # "abort" (a commit is ended by its APPLY record)

    def encode(self) -> bytes:
        return msgpack.packb([self.txn_id, self.outcome], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "EndRecord":
        return cls(*msgpack.unpackb(data, raw=False))


@dataclass(slots=True)
class FillRecord:
    """A chunk this node lacked (MISSING in the catalog), fetched from a peer and
    written as a CHUNK record under an internal transaction `txn_id`: FILL is that
    transaction's commit. Its catalog effect: if the row is still MISSING, it gets
    the chunk's location (live bytes); otherwise the chunk's bytes are dead."""

    txn_id: bytes
    chunk_id: bytes
    chunk_lsn: int
    size: int

    def encode(self) -> bytes:
        return msgpack.packb([self.txn_id, self.chunk_id, self.chunk_lsn, self.size],
                             use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "FillRecord":
        txn, cid, lsn, size = msgpack.unpackb(data, raw=False)
        return cls(bytes(txn), bytes(cid), lsn, size)


@dataclass(slots=True)
class RelocateRecord:
    """Compaction: a live chunk copied from `old_lsn` to a new CHUNK record at `new_lsn`
    (near the log's end) under an internal transaction `txn_id`; RELOCATE is that
    transaction's commit. Its catalog effect: if the row still points at old_lsn, it
    takes new_lsn (old copy dead, new copy live); otherwise the new copy is dead."""

    txn_id: bytes
    chunk_id: bytes
    old_lsn: int
    new_lsn: int
    size: int

    def encode(self) -> bytes:
        return msgpack.packb([self.txn_id, self.chunk_id, self.old_lsn, self.new_lsn,
                              self.size], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "RelocateRecord":
        txn, cid, old, new, size = msgpack.unpackb(data, raw=False)
        return cls(bytes(txn), bytes(cid), old, new, size)

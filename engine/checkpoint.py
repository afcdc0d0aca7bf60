"""Fuzzy checkpoints and the master record that points at the last one.

A checkpoint does not stop writers. It forces the catalog to disk, which makes every
catalog change up to `catalog_wal_lsn` durable: that LSN is the redo point (ARIES'
minimum recLSN over the dirty-page table, whose one page is the catalog). It then
writes a CHECKPOINT record with the transaction table as of that record, and once
that record is durable, the master record (a small file, replaced atomically) points
at it. Recovery reads the master record, starts analysis at the checkpoint, and redo
at its redo point; WAL segments wholly before the redo point that hold no live chunk
can then be deleted.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import crc32c
import msgpack

MASTER_NAME = "master"
_MASTER = struct.Struct("<QI")  # checkpoint LSN, crc32c of the LSN bytes


@dataclass
class CheckpointData:
    redo_lsn: int  # redo starts here: the catalog is durable through this record
    applied_lsn: int  # the Raft LSN the catalog had applied then
    txns: list  # TxnTable.snapshot()
    dirty_pages: dict  # {"catalog": recLSN}: what was not durable when the checkpoint began
    time_ms: int

    def encode(self) -> bytes:
        return msgpack.packb([self.redo_lsn, self.applied_lsn, self.txns, self.dirty_pages,
                              self.time_ms], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "CheckpointData":
        redo, applied, txns, dirty, ms = msgpack.unpackb(data, raw=False)
        return cls(redo, applied, txns, dirty, ms)


def write_master(directory: str, checkpoint_lsn: int, fsync: bool = True) -> None:
    lsn_bytes = checkpoint_lsn.to_bytes(8, "little")
    data = _MASTER.pack(checkpoint_lsn, crc32c.crc32c(lsn_bytes))
    tmp = os.path.join(directory, MASTER_NAME + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, MASTER_NAME))
    if fsync:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_master(directory: str) -> int | None:
    """The last checkpoint's LSN, or None if no checkpoint was ever completed."""
    try:
        with open(os.path.join(directory, MASTER_NAME), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if len(data) != _MASTER.size:
        raise ValueError("master record has the wrong size")
    lsn, crc = _MASTER.unpack(data)
    if crc32c.crc32c(lsn.to_bytes(8, "little")) != crc:
        raise ValueError("master record fails its checksum")
    return lsn

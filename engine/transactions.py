"""The transaction table: uploads whose chunks are in the WAL but not yet committed.

A transaction is the set of chunks one upload wrote here. It ends when an applied
entry names it (commit: the entry's manifest takes the chunks it references) or when
it is rolled back (every chunk compensated by a CLR, then an END record). The table
is rebuilt by recovery's analysis from the last checkpoint's snapshot plus the
records after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Txn:
    txn_id: bytes
    chunks: list = field(default_factory=list)  # [(chunk id, record lsn, record size)]
    last_ms: int = 0  # wall clock of the last chunk (recovery's grace period uses it)
    last_active: float = field(default_factory=time.monotonic)

    @property
    def first_lsn(self) -> int | None:
        return self.chunks[0][1] if self.chunks else None


class TxnTable:
    def __init__(self):
        self.txns: dict[bytes, Txn] = {}

    def __contains__(self, txn_id: bytes) -> bool:
        return txn_id in self.txns

    def __len__(self) -> int:
        return len(self.txns)

    def begin(self, txn_id: bytes) -> Txn:
        txn = self.txns.get(txn_id)
        if txn is None:
            txn = self.txns[txn_id] = Txn(txn_id)
        return txn

    def get(self, txn_id: bytes) -> Txn | None:
        return self.txns.get(txn_id)

    def add_chunk(self, txn_id: bytes, chunk_id: bytes, lsn: int, size: int, ms: int) -> None:
        txn = self.begin(txn_id)
        txn.chunks.append((chunk_id, lsn, size))
        txn.last_ms = max(txn.last_ms, ms)
        txn.last_active = time.monotonic()

    def compensated(self, txn_id: bytes, chunk_lsn: int) -> None:
        txn = self.txns.get(txn_id)
        if txn is not None:
            txn.chunks = [c for c in txn.chunks if c[1] != chunk_lsn]

    def end(self, txn_id: bytes) -> Txn | None:
        return self.txns.pop(txn_id, None)

    def oldest_lsn(self) -> int | None:
        firsts = [t.first_lsn for t in self.txns.values() if t.first_lsn is not None]
        return min(firsts) if firsts else None

    def pending_bytes_by_lsn(self):
        for txn in self.txns.values():
            for _cid, lsn, size in txn.chunks:
                yield lsn, size

    def idle_longer_than(self, seconds: float) -> list[bytes]:
        cutoff = time.monotonic() - seconds
        return [t.txn_id for t in self.txns.values() if t.last_active < cutoff]

    def snapshot(self) -> list:
        return [[t.txn_id, [list(c) for c in t.chunks], t.last_ms] for t in self.txns.values()]

    @classmethod
    def restore(cls, snap: list) -> "TxnTable":
        table = cls()
        for txn_id, chunks, last_ms in snap:
            txn = table.begin(bytes(txn_id))
            txn.chunks = [(bytes(c), lsn, size) for c, lsn, size in chunks]
            txn.last_ms = last_ms
        return table

"""What the node needs of a log: order an entry, tell me when it is applied here, and
let me read fresh state. Single-node and 3-node implementations share it."""

from __future__ import annotations

from typing import Protocol

from engine.entries import Entry
from engine.state_machine import ApplyResult


class LogUnavailable(Exception):
    """The log cannot commit right now (no quorum, shutting down): S3 503."""


class JournalLost(Exception):
    """A group member's engine holds applied entries but its Raft journal is empty: the
    directory is a rebuilt or restored store, or a member whose journal was lost.
    pysyncobj would number new entries from 1 again, below what the engine applied
    (so they would be skipped as already applied): refuse to start instead."""


class ReplicatedLog(Protocol):
    async def propose(self, entry: Entry) -> ApplyResult:
        """Commit an entry and return its result once applied on this node."""

    async def read_barrier(self) -> None:
        """Return once this node has applied everything committed before the call."""

    @property
    def applied_lsn(self) -> int: ...

    def status(self) -> dict: ...

    async def close(self) -> None: ...

"""The single-member log: LSNs handed out in order, durability from the engine's WAL.

With one member there is no one to agree with, so the log is just a counter, and the
engine's WAL, which durably records each APPLY before it is published, is the log's
journal. Proposals are submitted in LSN order without waiting, so concurrent requests
share fsyncs (group commit) and catalog commits; each proposer awaits its own result
through a future completed from the engine's publisher thread.
"""

from __future__ import annotations

import asyncio
import threading

from engine import Engine
from engine.entries import Entry
from engine.state_machine import ApplyResult

from .interface import LogUnavailable


class LocalLog:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._next = engine.applied_lsn + 1
        self._closed = False

    async def propose(self, entry: Entry) -> ApplyResult:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self._closed:
                raise LogUnavailable("the log is closed")
            lsn = self._next
            self._next += 1
            pending = self.engine.submit(lsn, entry)

        def done(p):
            loop.call_soon_threadsafe(_settle, fut, p)

        pending.add_done_callback(done)
        return await fut

    async def read_barrier(self) -> None:
        """Alone, every acknowledged write is already visible here."""

    @property
    def applied_lsn(self) -> int:
        return self.engine.applied_lsn

    def status(self) -> dict:
        return {"role": "leader", "members": 1, "term": 0, "commit_lsn": self.engine.applied_lsn,
                "applied_lsn": self.engine.applied_lsn}

    async def close(self) -> None:
        with self._lock:
            self._closed = True


def _settle(fut: asyncio.Future, pending) -> None:
    if fut.done():
        return
    try:
        fut.set_result(pending.result())
    except BaseException as exc:  # noqa: BLE001 - hand the engine's failure to the proposer
        fut.set_exception(LogUnavailable(f"the log failed: {exc}"))

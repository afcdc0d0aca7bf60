"""Group commit: concurrent writers share fsyncs.

The first writer that needs durability becomes the leader: it takes a snapshot of
how far the log is written, fsyncs, and publishes the new durable offset; writers
that arrive meanwhile wait, and one fsync covers them all. Nobody is told its record
is durable before an fsync that started after the record was written has finished.
"""

from __future__ import annotations

import threading
from typing import Callable


class GroupCommit:
    def __init__(self, sync_point: Callable[[], tuple[int, Callable[[], None]]]):
        """sync_point() returns (offset written so far, a function that makes it durable)."""
        self._sync_point = sync_point
        self._cond = threading.Condition()
        self._durable = 0
        self._syncing = False
        self.fsyncs = 0  # how many fsyncs were issued (for benchmarks and tests)

    @property
    def durable(self) -> int:
        return self._durable

    def mark_durable(self, offset: int) -> None:
        """Offsets known durable without a sync of ours (recovery, a rotation's fsync)."""
        with self._cond:
            if offset > self._durable:
                self._durable = offset
                self._cond.notify_all()

    def wait_durable(self, offset: int) -> None:
        with self._cond:
            while self._durable < offset:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target = -1
                # never take the log's lock while holding ours: rotation takes them
                # the other way round (it publishes a sealed segment as durable)
                self._cond.release()
                try:
                    target, do_sync = self._sync_point()
                    do_sync()
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self.fsyncs += 1
                    if target > self._durable:
                        self._durable = target
                    self._cond.notify_all()

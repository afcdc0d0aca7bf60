"""Publishes catalog changes in WAL order, each only after its record is durable.

The rule this enforces is the WAL protocol: the catalog never holds a change whose
log record could still be lost. A writer appends its record (getting a ticket in log
order), waits for group commit to make it durable (sharing the fsync with everyone
else waiting), then waits its turn and applies its change to LMDB. So the catalog's
`catalog_wal_lsn` is never ahead of the durable log, readers never see a write that
a crash could take back, and redo after any crash starts from a consistent catalog.

If a writer fails between its ticket and its turn (an fsync error), the engine is
poisoned: waiting writers are released with the error instead of hanging forever.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class Sequencer:
    def __init__(self):
        self._cond = threading.Condition()
        self._issued = 0
        self._next = 1
        self.failure: BaseException | None = None

    def issue(self) -> int:
        """A ticket; call while holding the lock that orders WAL appends."""
        self._issued += 1
        return self._issued

    @contextmanager
    def turn(self, ticket: int):
        with self._cond:
            while self._next != ticket:
                if self.failure is not None:
                    raise RuntimeError("engine failed; refusing further changes") from self.failure
                self._cond.wait()
            if self.failure is not None:
                raise RuntimeError("engine failed; refusing further changes") from self.failure
        try:
            yield
        finally:
            with self._cond:
                self._next = ticket + 1
                self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self.failure is None:
                self.failure = exc
            self._cond.notify_all()

"""Publishes catalog changes in WAL order, each only after its record is durable.

This enforces the WAL protocol: the catalog never holds a change whose log record
could still be lost. Writers append their record and enqueue the catalog change
(both under the engine's log lock, so queue order is log order) and go on; one
publisher thread takes everything queued, waits for a single group-committed fsync
that covers the whole batch, applies the batch to LMDB in one write transaction, and
completes each writer's Pending. So a caller that submits many entries without
waiting (the Raft apply thread) gets both group commit and batched catalog commits,
the catalog's `catalog_wal_lsn` is never ahead of the durable log, and readers never
see a write that a crash could take back.

If the fsync or the catalog write fails, the engine is poisoned: every pending and
future change fails with the error instead of hanging or running on a bad log.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

_MAX_BATCH = 4096


class Pending:
    """A submitted change; wait() returns its result once durable and visible."""

    __slots__ = ("lsn", "end", "change", "_event", "_done", "_result", "_error", "_callbacks",
                 "_cb_lock")

    def __init__(self, lsn: int, end: int, change: Callable | None):
        self.lsn = lsn  # the record whose change this is: catalog_wal_lsn once published
        self.end = end
        self.change = change
        self._event: threading.Event | None = None  # made by the first wait(): event
        # loops use add_done_callback and never need one
        self._done = False
        self._result = None
        self._error: BaseException | None = None
        self._callbacks: list = []
        self._cb_lock = threading.Lock()

    def _finish(self, result=None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self.change = None  # applied: what it held (an entry, its chunks) can go
        with self._cb_lock:
            self._done = True
            if self._event is not None:
                self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, cb: Callable[["Pending"], None]) -> None:
        """cb(pending) once done (at once if already done), on the publisher thread:
        how an event loop awaits a change without parking a thread on wait()."""
        with self._cb_lock:
            if not self._done:
                self._callbacks.append(cb)
                return
        cb(self)

    def result(self):
        """The result of a finished change (raises its error)."""
        return self.wait(0)

    @property
    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None = None):
        with self._cb_lock:
            if not self._done and self._event is None:
                self._event = threading.Event()
            event = self._event
        if event is not None and not event.wait(timeout):
            raise TimeoutError("change not yet durable")
        if self._error is not None:
            raise RuntimeError("engine failed; the change was not applied") from self._error
        return self._result


class Publisher:
    def __init__(self, wait_durable: Callable[[int], None], catalog_write, on_published):
        """catalog_write() is a context manager yielding a catalog transaction;
        on_published(lsn) is told the last published record's LSN after each commit."""
        self._wait_durable = wait_durable
        self._catalog_write = catalog_write
        self._on_published = on_published
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.failure: BaseException | None = None
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="engine-publisher", daemon=True)
        self._thread.start()

    def enqueue(self, pending: Pending) -> Pending:
        """Call while holding the lock that orders WAL appends."""
        with self._cond:
            if self.failure is not None:
                pending._finish(error=self.failure)
                return pending
            self._queue.append(pending)
            self._cond.notify()
        return pending

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = []
                while self._queue and len(batch) < _MAX_BATCH:
                    batch.append(self._queue.popleft())
            try:
                self._wait_durable(batch[-1].end)
                results = []
                with self._catalog_write() as t:
                    for p in batch:
                        results.append(p.change(t))
                    t.set_meta_at_end("catalog_wal_lsn", batch[-1].lsn)
                self._on_published(batch[-1].lsn)  # only now is it committed
                self.batches += 1
            except BaseException as exc:  # noqa: BLE001 - poison, fail everyone, stop
                self.fail(exc)
                for p in batch:
                    p._finish(error=exc)
                return
            for p, r in zip(batch, results):
                p._finish(result=r)

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self.failure is None:
                self.failure = exc
            doomed = list(self._queue)
            self._queue.clear()
            self._stopping = True
            self._cond.notify_all()
        for p in doomed:
            p._finish(error=exc)

    def stop(self) -> None:
        """Publish what is queued, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def join(self) -> None:
        self._thread.join()

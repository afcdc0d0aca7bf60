"""The pushing half of the data path: stream an upload's chunks to the peers while
the coordinator writes them locally, learn when a quorum holds them durably, and
fetch chunks a replica lacks.

Connections: each (upload, peer) pair has a connection of its own for the upload's
lifetime, taken from a small pool of idle authenticated connections per peer and
returned there once every chunk written on it is acknowledged. Owning the
connection keeps one upload's chunks and acks in order (acks are cumulative), lets a
stalled upload be cut off without touching others, and the pool spares small
objects a TCP connect and a handshake each.

Memory stays bounded by a window per peer (`window` chunks handed over but not yet
written to the socket): send_chunk blocks its calling thread when a peer's window is
full, and a peer whose window stays full for `peer_timeout` is dropped from the
upload (it will fetch the chunks after applying the entry). Chunks written to the
socket are not kept: a failed peer is never re-sent to, only dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque

from . import data_wire as wire

log = logging.getLogger(__name__)

_HAS_BATCH = 1024  # chunk ids per presence query (keeps the header small)


class PeerUnavailable(Exception):
    """No peer could serve the request."""


class QuorumNotReached(Exception):
    """Too few peers hold the upload's chunks durably: do not propose the entry."""


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


class _Pool:
    """Idle authenticated connections to one peer."""

    def __init__(self, peer_id: str, addr: tuple[str, int], client: "DataClient"):
        self.peer_id = peer_id
        self.addr = addr
        self.client = client
        self.idle: list[wire.Channel] = []

    async def acquire(self) -> wire.Channel:
        while self.idle:
            ch = self.idle.pop()
            if ch.usable:
                return ch
            ch.close()
        return await asyncio.wait_for(
            wire.connect(*self.addr, self.client._secret, self.client.node_id),
            self.client.peer_timeout)

    def release(self, ch: wire.Channel) -> None:
        if ch.usable and len(self.idle) < self.client.max_idle and not self.client._closed:
            self.idle.append(ch)
        else:
            ch.close()

    def close(self) -> None:
        for ch in self.idle:
            ch.close()
        self.idle.clear()


class DataClient:
    def __init__(self, secret: str, peers: dict[str, tuple[str, int]], *, node_id: str = "",
                 loop=None, peer_timeout: float = 5.0, window: int = 2, max_idle: int = 4):
        """`loop` runs the connections (default: the running loop at first use);
        `peer_timeout` bounds a connect, a stalled send and a final ack wait."""
        self._secret = wire.secret_key(secret)
        self.node_id = node_id
        self.peer_timeout = peer_timeout
        self.window = window
        self.max_idle = max_idle
        self._loop = loop
        self._pools = {pid: _Pool(pid, tuple(addr), self) for pid, addr in peers.items()}
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _call_soon(self, fn, *args) -> None:
        if self._on_loop_thread():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _spawn(self, coro) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def open_upload(self, txn: bytes) -> "UploadReplication":
        """Start replicating one upload (transaction `txn`) to every peer. Callable
        from any thread; connections are opened at once, ahead of the first chunk."""
        if self._closed:
            raise RuntimeError("the data client is closed")
        if len(txn) != 16:
            raise ValueError("transaction ids are 16 bytes")
        return UploadReplication(self, txn)

    async def fetch_chunk(self, chunk_id: bytes, peers: list[str] | None = None,
                          timeout: float = 10.0) -> bytes:
        """The chunk's bytes from the first of `peers` (default: all) that has a copy
        matching its id; `timeout` bounds each peer's attempt."""
        failures = {}
        for pid in (self._pools if peers is None else peers):
            pool = self._pools.get(pid)
            if pool is None:
                failures[pid] = "unknown peer"
                continue
            try:
                data = await asyncio.wait_for(self._fetch_from(pool, chunk_id), timeout)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError,
                    wire.WireError) as e:
                failures[pid] = _describe(e)
                continue
            if data is not None:
                return data
            failures[pid] = "no verified copy"
        raise PeerUnavailable(f"chunk {chunk_id.hex()} not available: {failures}")

    async def _fetch_from(self, pool: _Pool, chunk_id: bytes) -> bytes | None:
        header, payload = await self._request(pool, {"t": "fetch", "id": chunk_id})
        if header["t"] == "absent":
            return None
        if header["t"] != "chunk" or header.get("id") != chunk_id or payload is None:
            raise wire.WireError(f"unexpected reply {header['t']!r} to a fetch")
        digest = await self.loop.run_in_executor(None, wire.sha256, payload)
        if digest != chunk_id:
            log.warning("peer %s sent chunk %s with the wrong content", pool.peer_id, chunk_id.hex())
            return None
        return payload

    async def has_chunks(self, peer: str, chunk_ids: list[bytes]) -> list[bool]:
        """Which of `chunk_ids` `peer`'s catalog holds (committed, not missing)."""
        pool = self._pools[peer]
        held: list[bool] = []
        try:
            for i in range(0, len(chunk_ids), _HAS_BATCH):
                batch = list(chunk_ids[i:i + _HAS_BATCH])
                header, _ = await asyncio.wait_for(
                    self._request(pool, {"t": "has", "ids": batch}), self.peer_timeout)
                got = header.get("held")
                if header["t"] != "have" or not isinstance(got, list) or len(got) != len(batch):
                    raise wire.WireError(f"unexpected reply {header['t']!r} to a presence query")
                held.extend(bool(h) for h in got)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError, wire.WireError) as e:
            raise PeerUnavailable(f"peer {peer}: {_describe(e)}") from e
        return held

    async def _request(self, pool: _Pool, header: dict) -> tuple[dict, bytes | None]:
        """One request and its reply on a pooled connection."""
        ch = await pool.acquire()
        try:
            ch.send(header)
            await ch.drain()
            reply = await ch.recv()
        except BaseException:
            ch.close()
            raise
        pool.release(ch)
        return reply

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in self._pools.values():
            pool.close()


class UploadReplication:
    """One upload's chunks on their way to every peer. The thread-side methods
    (send_chunk, abort, close) and the loop side share state under `_cond`."""

    def __init__(self, client: DataClient, txn: bytes):
        self.client = client
        self.txn = txn
        self._cond = threading.Condition()
        self._sent = 0  # chunks handed to send_chunk
        self._state = "open"  # -> "closed" (committed) or "aborted"
        self._changed = asyncio.Event()  # an ack arrived or a peer failed
        self._streams = {pid: _PeerStream(self, pid, pool) for pid, pool in client._pools.items()}
        client._call_soon(self._start)

    def _start(self) -> None:
        for stream in self._streams.values():
            stream.sender = self.client._spawn(stream.send_loop())

    def _progress(self) -> None:
        self._changed.set()

    def send_chunk(self, chunk_id: bytes, data) -> None:
        """Queue one chunk for every live peer, in order. Blocks the calling thread
        while a peer's window is full; drops the peers whose window stays full for
        `peer_timeout`. `data` is kept by reference until written: do not mutate it.
        Must not be called on the event loop's thread (it would block the loop)."""
        if self.client._on_loop_thread():
            raise RuntimeError("send_chunk blocks: call it from a worker thread")
        if len(chunk_id) != 32:
            raise ValueError("chunk ids are 32-byte SHA-256 digests")
        if memoryview(data).nbytes > wire.MAX_PAYLOAD:
            raise ValueError(f"chunk larger than {wire.MAX_PAYLOAD} bytes")
        timeout, window = self.client.peer_timeout, self.client.window
        stalled = []
        with self._cond:
            deadline = time.monotonic() + timeout
            while self._state == "open":
                full = [s for s in self._streams.values() if not s.failed and s.queued >= window]
                remaining = deadline - time.monotonic()
                if full and remaining > 0:
                    self._cond.wait(remaining)
                    continue
                for s in full:
                    s.mark_failed(f"send window full for {timeout:g}s")
                    stalled.append(s)
                break
            if self._state == "aborted":
                return
            if self._state == "closed":
                raise RuntimeError("send_chunk after the upload was closed")
            k = self._sent
            self._sent += 1
            for s in self._streams.values():
                if not s.failed:
                    s.pending.append((k, chunk_id, data))
                    s.queued += 1
        for s in stalled:
            self.client.loop.call_soon_threadsafe(s.teardown)
        self.client.loop.call_soon_threadsafe(self._wake_senders)

    def _wake_senders(self) -> None:
        for s in self._streams.values():
            s.wake.set()

    async def wait_quorum(self, needed: int, timeout: float) -> list[str]:
        """Ids of the peers that acknowledged every chunk sent so far as durable,
        once there are at least `needed` of them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            with self._cond:
                target = self._sent
                if self._state == "aborted":
                    raise QuorumNotReached(f"upload {self.txn.hex()} was aborted")
            done = [pid for pid, s in self._streams.items()
                    if s.acked >= target and (target or not s.failed)]
            if len(done) >= needed:
                return done
            alive = sum(1 for s in self._streams.values() if not s.failed and s.acked < target)
            if len(done) + alive < needed:
                raise QuorumNotReached(
                    f"{len(done)} of the {needed} peers needed hold upload {self.txn.hex()}; "
                    f"failed: {self._failures()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise QuorumNotReached(
                    f"{len(done)} of the {needed} peers needed acknowledged upload "
                    f"{self.txn.hex()} within {timeout:g}s; failed: {self._failures()}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _failures(self) -> dict:
        return {pid: s.error for pid, s in self._streams.items() if s.failed}

    def abort(self) -> None:
        """Stop sending and tell every peer to roll the transaction back (best effort:
        a peer that misses it reaps the transaction after the engine's timeout)."""
        if self._finish("aborted"):
            self.client._call_soon(self._abort_on_loop)

    def _abort_on_loop(self) -> None:
        for s in self._streams.values():
            with self._cond:
                s.mark_failed("upload aborted", quiet=True)
            s.teardown()
        for pool in self.client._pools.values():
            self.client._spawn(self._send_abort(pool))

    async def _send_abort(self, pool: _Pool) -> None:
        timeout = self.client.peer_timeout
        try:
            header, _ = await asyncio.wait_for(
                self.client._request(pool, {"t": "abort", "txn": self.txn}), timeout)
            if header["t"] != "aborted":
                raise wire.WireError(f"unexpected reply {header['t']!r} to an abort")
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError, wire.WireError) as e:
            log.info("could not abort upload %s on %s: %s", self.txn.hex(), pool.peer_id,
                     _describe(e))

    def close(self) -> None:
        """The upload is committed. Each live peer still gets the chunks already
        queued for it; its connection returns to the pool once they are acknowledged
        (or is dropped after `peer_timeout`)."""
        if self._finish("closed"):
            self.client._call_soon(self._wake_senders)

    def _finish(self, state: str) -> bool:
        with self._cond:
            if self._state != "open":
                return False
            self._state = state
            self._cond.notify_all()
        return True

    @property
    def closing(self) -> bool:
        return self._state != "open"


class _PeerStream:
    """One upload's replication to one peer: the sender task writes queued chunks in
    order; the receiver task turns cumulative acks into `acked`."""

    def __init__(self, up: UploadReplication, peer_id: str, pool: _Pool):
        self.up = up
        self.peer_id = peer_id
        self.pool = pool
        self.pending: deque = deque()  # (k, chunk id, data) not yet written; under up._cond
        self.queued = 0  # len(pending) plus the chunk being written; under up._cond
        self.failed = False  # under up._cond
        self.error: str | None = None
        self.written = 0  # chunks written to the socket (loop only)
        self.acked = 0  # chunks the peer made durable (loop only)
        self.wake = asyncio.Event()  # pending grew, or the upload finished
        self.sender: asyncio.Task | None = None
        self.receiver: asyncio.Task | None = None
        self.ch: wire.Channel | None = None

    async def send_loop(self) -> None:
        up, timeout = self.up, self.up.client.peer_timeout
        try:
            self.ch = await self.pool.acquire()
            self.receiver = up.client._spawn(self.recv_loop())
            while True:
                with up._cond:
                    item = self.pending.popleft() if self.pending and not self.failed else None
                if item is None:
                    if up.closing or self.failed:
                        break
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                k, chunk_id, data = item
                self.ch.send({"t": "push", "txn": up.txn, "k": k, "id": chunk_id}, data)
                del item, data
                await asyncio.wait_for(self.ch.drain(), timeout)
                self.written = k + 1
                with up._cond:
                    self.queued = max(self.queued - 1, 0)
                    up._cond.notify_all()
            await self._release(timeout)
        except asyncio.CancelledError:  # teardown, or the client closing under us
            with up._cond:
                self.mark_failed("stopped", quiet=True)
            if self.ch is not None:
                self.ch.close()
                self.ch = None
            raise
        except Exception as e:  # noqa: BLE001 - any failure drops this peer from the upload
            self.fail(_describe(e))

    async def _release(self, timeout: float) -> None:
        """Upload closed: wait for the last acks, then give the connection back."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.acked < self.written and not self.failed:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise asyncio.TimeoutError("final acknowledgements")
            self.wake.clear()
            await asyncio.wait_for(self.wake.wait(), remaining)
        if self.failed:
            return
        self.receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.receiver
        self.pool.release(self.ch)
        self.ch = None

    async def recv_loop(self) -> None:
        try:
            while True:
                header, _ = await self.ch.recv()
                if header["t"] == "ack" and isinstance(header.get("k"), int):
                    self.acked = header["k"] + 1
                    self.wake.set()
                    self.up._progress()
                elif header["t"] == "error":
                    raise wire.WireError(f"peer refused: {header.get('msg')}")
                else:
                    raise wire.WireError(f"unexpected frame {header['t']!r}")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure drops this peer from the upload
            self.fail(_describe(e))

    def mark_failed(self, reason: str, quiet: bool = False) -> bool:
        """Stop feeding this peer (caller holds up._cond). True if it was live."""
        if self.failed:
            return False
        self.failed = True
        self.error = reason
        self.pending.clear()
        self.queued = 0
        self.up._cond.notify_all()
        if not quiet:
            log.warning("upload %s: dropping peer %s: %s", self.up.txn.hex(), self.peer_id, reason)
        return True

    def fail(self, reason: str) -> None:
        with self.up._cond:
            self.mark_failed(reason)
        self.teardown()

    def teardown(self) -> None:
        """Cancel this stream's tasks and drop its connection (loop thread)."""
        current = asyncio.current_task()
        for task in (self.sender, self.receiver):
            if task is not None and task is not current:
                task.cancel()
        if self.ch is not None:
            self.ch.close()
            self.ch = None
        self.up._progress()

"""The serving half of the data path: peers push an upload's chunks here before its
entry is proposed, and fetch chunks from here that they lack after applying one.

Pushed chunks are verified (SHA-256 against their id) and written into the local
engine under the coordinator's transaction id, so the entry that later names that
transaction commits them here exactly as on the coordinator. Durability is
acknowledged cumulatively after the engine's group commit, never by an fsync of our
own: concurrent uploads share fsyncs. A dropped connection leaves the transaction
open (the entry may already be proposed); the engine reaps it if no entry ever
commits it, or an `abort` message rolls it back now.

Per connection at most two chunks are in memory: one being written by the engine
while the next is read off the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict, deque

from engine.errors import EngineError, UnknownTransaction

from . import data_wire as wire

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
_ABORTED_MEMORY = 4096  # recently aborted transactions whose late chunks are refused


class _Refused(Exception):
    """A request this server will not carry out; reported to the peer, then the
    connection is closed."""


def _bytes_field(header: dict, name: str, size: int) -> bytes:
    value = header.get(name)
    if not isinstance(value, bytes) or len(value) != size:
        raise wire.WireError(f"frame field {name!r} must be {size} bytes")
    return value


class DataServer:
    def __init__(self, host: str, port: int, secret: str, engine, *, executor=None,
                 node_id: str = ""):
        self.host = host
        self.port = port
        self.node_id = node_id
        self.engine = engine
        self._secret = wire.secret_key(secret)
        self._executor = executor
        # where a chunk this engine no longer holds is read for a peer (the node's cold
        # tier): a rehydrated member fills chunks its peers have already evicted
        self.read_elsewhere = None  # callable(chunk_id) -> bytes | None, blocking
        self._server: asyncio.AbstractServer | None = None
        self._sessions: dict[asyncio.Task, asyncio.StreamWriter] = {}
        # aborts and writes are ordered under this lock, so a chunk that was still in
        # flight on another connection cannot reopen an aborted transaction
        self._txn_lock = threading.Lock()
        self._aborted: OrderedDict[bytes, None] = OrderedDict()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=wire.STREAM_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in self._sessions.values():  # sessions end on the lost connection
            writer.transport.abort()
        if self._sessions:
            _done, stuck = await asyncio.wait(list(self._sessions), timeout=HANDSHAKE_TIMEOUT)
            for task in stuck:
                task.cancel()
        await self._server.wait_closed()
        self._server = None

    def _run(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _serve(self, reader, writer) -> None:
        task = asyncio.current_task()
        self._sessions[task] = writer
        peer = writer.get_extra_info("peername")
        try:
            try:
                ch = await asyncio.wait_for(
                    wire.server_handshake(reader, writer, self._secret, self.node_id),
                    HANDSHAKE_TIMEOUT)
            except asyncio.IncompleteReadError:
                log.warning("data connection from %s closed during the handshake", peer)
                writer.transport.abort()
                return
            except (wire.WireError, asyncio.TimeoutError, OSError) as e:
                log.warning("data connection from %s refused: %s", peer, e or type(e).__name__)
                writer.transport.abort()
                return
            await _Session(self, ch).run()
        except asyncio.CancelledError:
            pass  # close() gave up waiting; asyncio 3.11 logs a cancelled callback task
        finally:
            self._sessions.pop(task, None)

    # ---- engine work (executor threads) -----------------------------------------------
    def _write(self, txn: bytes, chunk_id: bytes, data: bytes, begin: bool) -> int:
        """Write a pushed chunk into its transaction; returns the WAL end to wait for."""
        if wire.sha256(data) != chunk_id:
            raise _Refused(f"chunk {chunk_id.hex()} does not match its content")
        with self._txn_lock:
            if txn in self._aborted:
                raise _Refused(f"transaction {txn.hex()} was aborted")
            try:
                if begin:
                    self.engine.begin(txn)
                return self.engine.write_chunk(txn, data, chunk_id).end
            except UnknownTransaction as exc:
                gone = exc
        return self._late(txn, chunk_id, data, gone)

    def _late(self, txn: bytes, chunk_id: bytes, data: bytes, gone: UnknownTransaction) -> int:
        """A chunk pushed after an entry committed its transaction here. This node was
        not in the quorum the coordinator waited for (a slower peer): the entry was
        applied while the upload, or the rest of it, was still on its way, and its
        chunks not received became MISSING. Once that entry's catalog change is
        published, such a chunk is filled in from the push itself (durable on return)
        rather than fetched again later; one already held, or no longer needed (the
        entry was refused, the object already replaced), is acknowledged: the upload
        is over. A transaction that no entry committed (rolled back by the reaper) is
        refused as before."""
        change = self.engine.committed_change(txn)
        if change is None:
            raise gone
        change.wait()
        self.engine.fill_chunk(chunk_id, data)
        return 0
    def _abort(self, txn: bytes) -> int:
        with self._txn_lock:
            self._aborted[txn] = None
            while len(self._aborted) > _ABORTED_MEMORY:
                self._aborted.popitem(last=False)
        return self.engine.abort(txn)

    def _read(self, chunk_id: bytes) -> bytes | None:
        try:
            data = self.engine.read_chunk_by_id(chunk_id)
        except EngineError as e:  # a damaged local copy: let the peer try elsewhere
            log.warning("cannot serve chunk %s: %s", chunk_id.hex(), e)
            return None
        if data is None and self.read_elsewhere is not None:
            try:
                data = self.read_elsewhere(chunk_id)
            except Exception as e:  # noqa: BLE001 - the peer tries elsewhere
                log.warning("cannot serve chunk %s from cold storage: %s", chunk_id.hex(), e)
                return None
        return data

    def _has(self, chunk_ids: list) -> list[bool]:
        return [self.engine.has_chunk(c) for c in chunk_ids]


class _Session:
    """One authenticated connection. The receive loop reads frames in order and hands
    each pushed chunk to the engine without waiting for it; the acker task awaits the
    writes in order, waits for their durability and acknowledges cumulatively."""

    def __init__(self, server: DataServer, ch: wire.Channel):
        self.server = server
        self.ch = ch
        self.txn: bytes | None = None  # the transaction this connection pushes into
        self.writing: asyncio.Future | None = None  # the last chunk handed to the engine
        self.written: deque = deque()  # (k, write future) in push order, not yet acked
        self.wrote = asyncio.Event()

    async def run(self) -> None:
        acker = asyncio.create_task(self._ack_loop())
        try:
            while True:
                header, payload = await self.ch.recv()
                await self._settle()
                if acker.done():  # a push was refused: stop here
                    break
                kind = header["t"]
                if kind == "push":
                    self._push(header, payload)
                elif kind == "abort":
                    await self._on_abort(_bytes_field(header, "txn", 16))
                elif kind == "fetch":
                    await self._on_fetch(_bytes_field(header, "id", 32))
                elif kind == "has":
                    await self._on_has(header.get("ids"))
                else:
                    raise wire.WireError(f"unknown frame type {kind!r}")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away: transactions stay open (reaped or committed)
        except wire.WireError as e:
            log.warning("data connection from %s dropped: %s", self.ch.peer_id, e)
        except Exception:  # noqa: BLE001 - one broken session must not stop the server
            log.exception("data connection from %s failed", self.ch.peer_id)
        finally:
            acker.cancel()
            with contextlib.suppress(BaseException):
                await acker
            if self.writing is not None:  # let the engine finish; nobody is told
                with contextlib.suppress(BaseException):
                    await self.writing
            self.ch.close()

    async def _settle(self) -> None:
        """Wait for the previous chunk's write: one in the engine, one in hand."""
        if self.writing is not None:
            await asyncio.wait([self.writing])

    def _push(self, header: dict, payload: bytes | None) -> None:
        txn = _bytes_field(header, "txn", 16)
        chunk_id = _bytes_field(header, "id", 32)
        k = header.get("k")
        if payload is None or not isinstance(k, int):
            raise wire.WireError("malformed push")
        begin = txn != self.txn
        self.txn = txn
        self.writing = self.server._run(self.server._write, txn, chunk_id, payload, begin)
        self.written.append((k, self.writing))
        self.wrote.set()

    async def _ack_loop(self) -> None:
        server = self.server
        while True:
            while not self.written:
                self.wrote.clear()
                await self.wrote.wait()
            k, fut = self.written.popleft()
            try:
                end = await fut
                while self.written and self.written[0][1].done():  # one ack for all of them
                    k, fut = self.written.popleft()
                    end = max(end, fut.result())
                await server._run(server.engine.wait_durable, end)
            except Exception as e:  # noqa: BLE001 - reported to the pusher, who drops us
                log.warning("push from %s refused: %s", self.ch.peer_id, e)
                self.ch.send({"t": "error", "k": k, "msg": str(e)})
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ch.drain(), 1.0)
                self.ch.close()
                return
            self.ch.send({"t": "ack", "k": k})
            await self.ch.drain()

    async def _on_abort(self, txn: bytes) -> None:
        if self.txn == txn:
            self.txn = None
        undone = await self.server._run(self.server._abort, txn)
        self.ch.send({"t": "aborted", "txn": txn, "chunks": undone})
        await self.ch.drain()

    async def _on_fetch(self, chunk_id: bytes) -> None:
        data = await self.server._run(self.server._read, chunk_id)
        if data is None:
            self.ch.send({"t": "absent", "id": chunk_id})
        else:
            self.ch.send({"t": "chunk", "id": chunk_id}, data)
        await self.ch.drain()

    async def _on_has(self, ids) -> None:
        if not isinstance(ids, list) or not all(isinstance(c, bytes) and len(c) == 32 for c in ids):
            raise wire.WireError("malformed has request")
        self.ch.send({"t": "have", "held": await self.server._run(self.server._has, ids)})
        await self.ch.drain()

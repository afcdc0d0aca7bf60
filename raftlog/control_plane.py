"""Small, latency-bound RPCs between the nodes of a group, over QUIC.

Read barriers to the leader, chunk-presence queries and status gathering are small
and concurrent: one QUIC connection per peer carries them all, one bidirectional
stream per call, so a slow call never holds up the others and TLS comes built in.
Bulk data does not belong here: aioquic moves ~10 MB/s per connection
(DESIGN.md, "Measured facts").

Authentication (see `cluster_tls`): the client pins the certificate derived from the
cluster secret, so a server without the secret fails the handshake; every request
starts with the HMAC token derived from the secret, so a client without it gets
"unauthorized" and no handler runs. The token goes on every request rather than
once per connection: streams of one connection may arrive in any order, and the
check is a 32-byte constant-time compare made before anything is decoded.

Wire format, one stream per call: the request is `token || msgpack([caller node id,
method, params])`, the reply `msgpack([True, result])` or `msgpack([False, server
node id, error kind, message])`; the FIN of each direction delimits the message.

A peer can vanish without a word (a crash, a kill -9): its restarted process ignores
packets of the old connection, which would then swallow every call until the idle
timeout. So a connection that has heard nothing from its peer for a while is probed
with a PING before it carries a call (on no answer, the call goes out on a fresh
connection), and one that stayed silent for a whole call is dropped (that call fails
with ControlUnavailable, the next one reconnects). A call is never sent twice: the
handler runs at most once per call.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable

import msgpack
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from .cluster_tls import (
    SERVER_NAME,
    TOKEN_SIZE,
    cluster_certificate_pem,
    cluster_identity,
    request_token,
)

logger = logging.getLogger(__name__)

ALPN = "tidestore-ctl/1"

Handler = Callable[[dict], Awaitable[object]]

_MAX_REQUEST = 16 * 1024 * 1024
_MAX_STREAMS_IN_FLIGHT = 100
"""Per connection, under the 128 streams an aioquic peer allows: a request never waits
for stream credit inside aioquic, where a caller that gives up could not withdraw it
(aioquic mishandles resetting such a stream). Calls beyond it wait here, unsent."""
_CONNECT_TIMEOUT = 5.0
"""Bounds a handshake that outlives the call that started it (other calls may join it)."""
_QUIET_BEFORE_PROBE = 0.2
"""Seconds without a packet from the peer after which a connection is probed before
use (costs ~1.5 ms: aioquic delays the ACK of a lone PING by 1 ms). A peer restarted
faster than this costs the first call its timeout; no process restarts that fast."""
_PROBE_TIMEOUT = 0.25
"""A PING's ACK arrives within an RTT plus the peer's ACK delay (at most 25 ms)."""


class ControlError(Exception):
    """The remote handler raised, the method is unknown, or the request was refused."""


class ControlUnavailable(ControlError):
    """The peer could not be reached, did not answer in time, or failed authentication.

    After a timeout the handler may or may not have run."""


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False)


def _settle(future: asyncio.Future, outcome: object) -> None:
    """Resolve `future` unless its waiter gave up already (a timeout cancels it)."""
    if not future.done():
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class _Protocol(QuicConnectionProtocol):
    """Sends what is queued once per loop iteration, and nothing once its socket is
    closing (aioquic's timers may still fire)."""

    _flush_scheduled = False

    def flush_soon(self) -> None:
        """Coalesce: calls or replies queued in one loop iteration leave together."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.transmit()

    def transmit(self) -> None:
        if not self._transport.is_closing():
            super().transmit()


class _ServerProtocol(_Protocol):
    """One client connection: each finished request stream becomes a handler task."""

    def __init__(self, quic: QuicConnection, server: ControlServer) -> None:
        super().__init__(quic)
        self._server = server
        # stream id -> the request received so far; None once it was refused.
        self._requests: dict[int, bytearray | None] = {}

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived) and not event.stream_id & 2:
            self._receive(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            self._requests.pop(event.stream_id, None)

    def _receive(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        request = self._requests.setdefault(stream_id, bytearray())
        if request is not None:
            request += data
            refusal = self._refusal(request, end_stream)
            if refusal is not None:
                self._requests[stream_id] = None
                self._reply(stream_id, _pack([False, self._server.node_id, *refusal]))
            elif end_stream:
                self._server._spawn(self._serve(stream_id, bytes(request)))
        if end_stream:
            del self._requests[stream_id]

    def _refusal(self, request: bytearray, end_stream: bool) -> tuple[str, str] | None:
        if len(request) >= TOKEN_SIZE or end_stream:
            if not hmac.compare_digest(bytes(request[:TOKEN_SIZE]), self._server._token):
                return "Unauthorized", "unauthorized: bad or missing cluster token"
        if len(request) > _MAX_REQUEST:
            return "RequestTooLarge", f"request larger than {_MAX_REQUEST} bytes"
        return None

    async def _serve(self, stream_id: int, request: bytes) -> None:
        server = self._server
        caller, method = "?", "?"
        try:
            caller, method, params = _unpack(request[TOKEN_SIZE:])
            handler = server.handlers.get(method)
            if handler is None:
                reply = [False, server.node_id, "UnknownMethod", f"unknown method {method!r}"]
            else:
                reply = [True, await handler(params)]
            data = _pack(reply)
        except Exception as exc:  # noqa: BLE001 - the caller gets it as ControlError
            logger.debug("control call %s from %s failed", method, caller, exc_info=True)
            data = _pack([False, server.node_id, type(exc).__name__, str(exc)])
        self._reply(stream_id, data)

    def _reply(self, stream_id: int, data: bytes) -> None:
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=True)
        except (RuntimeError, ValueError):
            return  # the client stopped or abandoned this stream: nobody is waiting
        self.flush_soon()


class _Listener(QuicServer):
    """aioquic's server socket, telling when it is really closed: asyncio closes it
    an iteration after `close()`, and a restart on the same port must wait for that."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        _settle(self.closed, None)


class ControlServer:
    """Answers control calls from the other nodes of the group."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: str,
        handlers: dict[str, Handler],
        *,
        node_id: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.handlers = handlers
        self.node_id = node_id
        self._token = request_token(secret)
        self._secret = secret
        self._listener: _Listener | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        key, certificate = cluster_identity(self._secret)
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN],
            certificate=certificate,
            private_key=key,
        )
        transport, self._listener = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Listener(
                configuration=configuration,
                create_protocol=lambda quic, stream_handler: _ServerProtocol(quic, self),
            ),
            local_addr=(self.host, self.port),
        )
        self.port = transport.get_extra_info("sockname")[1]

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Say goodbye to every client (CONNECTION_CLOSE), then stop listening."""
        if self._listener is not None:
            self._listener.close()
            await self._listener.closed
            self._listener = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _ClientProtocol(_Protocol):
    """One connection to a peer, on its own connected UDP socket.

    The connected socket turns the ICMP "port unreachable" of a peer that is down
    into `error_received`, so calls fail at once instead of at their timeout."""

    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.dead: str | None = None
        self.last_heard = self._loop.time()
        # stream id -> (reply so far, its future); a stream holds a slot until its
        # reply arrives, even after its caller gave up, since the peer still has it open.
        self._calls: dict[int, tuple[bytearray, asyncio.Future[bytes]]] = {}
        self._slots = asyncio.Semaphore(_MAX_STREAMS_IN_FLIGHT)
        self._probes: dict[int, asyncio.Future[bool]] = {}
        self._next_probe = 0

    async def request(self, body: bytes) -> bytes:
        await self._slots.acquire()
        if self.dead is not None:
            self._slots.release()
            raise ControlUnavailable(f"connection lost: {self.dead}")
        stream_id = self._quic.get_next_available_stream_id()
        reply: asyncio.Future[bytes] = self._loop.create_future()
        self._calls[stream_id] = (bytearray(), reply)
        self._quic.send_stream_data(stream_id, body, end_stream=True)
        self.flush_soon()
        sent_at = self._loop.time()
        try:
            return await reply
        except asyncio.CancelledError:
            silent_for = self._loop.time() - sent_at
            if self.last_heard < sent_at and silent_for >= _PROBE_TIMEOUT:
                self.close("peer silent during a call")
            raise

    def quiet_for(self) -> float:
        return self._loop.time() - self.last_heard

    async def probe(self) -> bool:
        """Does the peer still answer on this connection? (a PING and its ACK)"""
        if self.dead is not None:
            return False
        uid = self._next_probe = self._next_probe + 1
        acked = self._probes[uid] = self._loop.create_future()
        self._quic.send_ping(uid)
        self.transmit()
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                return await acked
        except TimeoutError:
            return False
        finally:
            self._probes.pop(uid, None)

    def close(self, reason: str = "closed by this node") -> None:
        if self.dead is None:
            super().close()  # sends CONNECTION_CLOSE
            self._die(reason)

    def datagram_received(self, data: bytes, addr) -> None:
        self.last_heard = self._loop.time()
        super().datagram_received(data, addr)
        # aioquic reports a close (the peer's CONNECTION_CLOSE, or its own after a
        # TLS failure) only after a draining period; the connection is useless from
        # now on, so say so at once.
        close_event = self._quic._close_event
        if close_event is not None:
            self._die(f"connection closed: {close_event.reason_phrase or 'no reason given'}")

    def error_received(self, exc: Exception) -> None:
        self._die(f"peer unreachable: {exc}")

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            call = self._calls.get(event.stream_id)
            if call is not None:
                received, reply = call
                received += event.data
                if event.end_stream:
                    del self._calls[event.stream_id]
                    self._slots.release()
                    _settle(reply, bytes(received))
        elif isinstance(event, events.StreamReset):
            call = self._calls.pop(event.stream_id, None)
            if call is not None:
                self._slots.release()
                _settle(call[1], ControlError("the peer reset the call's stream"))
        elif isinstance(event, events.PingAcknowledged):
            acked = self._probes.get(event.uid)
            if acked is not None:
                _settle(acked, True)
        elif isinstance(event, events.HandshakeCompleted):
            _settle(self.ready, None)
        elif isinstance(event, events.ConnectionTerminated):
            self._die(event.reason_phrase or "connection terminated")

    def _die(self, reason: str) -> None:
        if self.dead is not None:
            return
        self.dead = reason
        _settle(self.ready, None)
        for _, reply in self._calls.values():
            self._slots.release()
            _settle(reply, ControlUnavailable(f"connection lost: {reason}"))
        self._calls.clear()
        for acked in self._probes.values():
            _settle(acked, False)
        # Not now: aioquic may be in the middle of sending datagrams on it.
        self._loop.call_soon(self._transport.close)


def _usable(task: asyncio.Task[_ClientProtocol]) -> bool:
    """Connecting, or connected and not dead since."""
    if not task.done():
        return True
    return not task.cancelled() and task.exception() is None and task.result().dead is None


class ControlClient:
    """Calls methods on peers; one lasting connection per peer address, at most 100
    calls on the wire on each (the others wait for a slot within their timeout)."""

    def __init__(self, secret: str, *, node_id: str = "") -> None:
        self._node_id = node_id
        self._token = request_token(secret)
        self._configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN],
            server_name=SERVER_NAME,
            cadata=cluster_certificate_pem(secret),
        )
        self._connections: dict[tuple[str, int], asyncio.Task[_ClientProtocol]] = {}

    async def call(
        self,
        addr: tuple[str, int],
        method: str,
        params: dict | None = None,
        timeout: float = 2.0,
    ) -> object:
        """Run `method` on the peer at `addr` and return what its handler returned."""
        addr = (addr[0], int(addr[1]))
        body = self._token + _pack([self._node_id, method, {} if params is None else params])
        try:
            async with asyncio.timeout(timeout):
                connection = await self._connection(addr)
                if connection.quiet_for() > _QUIET_BEFORE_PROBE:
                    if not await connection.probe():
                        connection.close("peer did not answer a probe")
                        connection = await self._connection(addr)
                reply = await connection.request(body)
        except TimeoutError:
            raise ControlUnavailable(f"{method} on {addr}: no answer within {timeout}s") from None
        except ControlUnavailable as exc:
            raise ControlUnavailable(f"{method} on {addr}: {exc}") from None
        ok, *rest = _unpack(reply)
        if ok:
            return rest[0]
        node, kind, message = rest
        raise ControlError(f"{method} on {node or addr}: {kind}: {message}")

    async def _connection(self, addr: tuple[str, int]) -> _ClientProtocol:
        task = self._connections.get(addr)
        if task is None or not _usable(task):
            task = self._connections[addr] = asyncio.ensure_future(self._connect(addr))
            task.add_done_callback(lambda done: self._forget_failed(addr, done))
        return await asyncio.shield(task)

    def _forget_failed(self, addr: tuple[str, int], task: asyncio.Task) -> None:
        # _usable() also retrieves the exception, which nobody else may await.
        if not _usable(task) and self._connections.get(addr) is task:
            del self._connections[addr]

    async def _connect(self, addr: tuple[str, int]) -> _ClientProtocol:
        loop = asyncio.get_running_loop()
        try:
            family, _, _, _, sockaddr = (await loop.getaddrinfo(*addr, type=socket.SOCK_DGRAM))[0]
            _, connection = await loop.create_datagram_endpoint(
                lambda: _ClientProtocol(QuicConnection(configuration=self._configuration)),
                remote_addr=sockaddr,
                family=family,
            )
        except OSError as exc:
            raise ControlUnavailable(f"cannot reach the peer: {exc}") from exc
        connection.connect(sockaddr)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await asyncio.shield(connection.ready)
        except BaseException as exc:
            connection.close("handshake abandoned")
            if isinstance(exc, TimeoutError):
                raise ControlUnavailable(f"no handshake within {_CONNECT_TIMEOUT}s") from None
            raise
        if connection.dead is not None:
            raise ControlUnavailable(f"handshake failed: {connection.dead}")
        return connection

    async def close(self) -> None:
        for task in self._connections.values():
            if not task.done():
                task.cancel()
            elif _usable(task):
                task.result().close()
        await asyncio.gather(*self._connections.values(), return_exceptions=True)
        self._connections.clear()

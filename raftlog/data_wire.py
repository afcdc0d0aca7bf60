"""Framing and mutual authentication for the inter-node data path (object chunks).

Chunks travel between replicas over plain TCP: asyncio streams carry ~1 GB/s on
loopback where QUIC managed ~10 MB/s (DESIGN.md, "Measured facts").

The connection is NOT encrypted: the data path is meant for loopback or a private
LAN. What it guarantees is that both ends hold the cluster secret and that nothing on
the wire was forged, altered or replayed:

- handshake, before anything else: each side sends a random 32-byte nonce and its
  node id, then proves it knows the secret with HMAC-SHA256(secret, label || nonces
  || ids). Client and server use different labels, so one side's proof can never be
  reflected back as the other's. The client sends its proof only after checking the
  server's, so a server without the secret learns nothing it could replay.
- frames: a u32 header length, a msgpack header (type, ids, payload length `n`), a
  16-byte tag over (frame sequence number || header) under a per-direction session
  key derived from both nonces, then `n` raw payload bytes. The tag is keyed BLAKE2b
  (a MAC by design, RFC 7693), not HMAC: OpenSSL's one-shot HMAC costs 2.1 us and
  gives up the GIL on every call, and on a busy node the event loop then waits for
  it behind the other threads; BLAKE2b keyed costs 0.7 us and keeps it. Payloads are not
  MACed (that would cost a second pass over every chunk): each one is a chunk whose
  id, its SHA-256, is in an authenticated header or in the request, and every
  receiver checks the hash before using the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct

import msgpack

MAGIC = b"TSD2"  # 2: BLAKE2b frame tags (a TSD1 peer fails the handshake, not a frame)
NONCE_LEN = 32
TAG_LEN = 16
MAX_HEADER = 256 << 10
MAX_PAYLOAD = 16 << 20  # the engine's largest chunk
SMALL_PAYLOAD = 64 << 10  # copied into its frame: one socket write instead of two
STREAM_LIMIT = 1 << 20  # StreamReader buffer: fewer pause/resume cycles per 4 MiB chunk

_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_SERVER_PROOF = b"tidestore-data/1 server proof"
_CLIENT_PROOF = b"tidestore-data/1 client proof"
_C2S_KEY = b"tidestore-data/1 client-to-server frames"
_S2C_KEY = b"tidestore-data/1 server-to-client frames"


class WireError(Exception):
    """The peer broke the protocol: the connection must be dropped."""


class AuthFailed(WireError):
    """The peer could not prove it holds the cluster secret."""


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.digest(key, b"".join(parts), "sha256")


def _frame_tag(key: bytes, seq: int, raw: bytes) -> bytes:
    h = hashlib.blake2b(_SEQ.pack(seq), key=key, digest_size=TAG_LEN)
    h.update(raw)
    return h.digest()


def _hello(nonce: bytes, node_id: str) -> bytes:
    ident = node_id.encode()
    if len(ident) > 255:
        raise ValueError("node ids are at most 255 bytes")
    return MAGIC + nonce + bytes([len(ident)]) + ident


async def _read_hello(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(len(MAGIC) + NONCE_LEN + 1)
    if head[:len(MAGIC)] != MAGIC:
        raise WireError("not a tidestore data-path peer")
    ident = await reader.readexactly(head[-1])
    return head[len(MAGIC):-1], ident


class Channel:
    """An authenticated connection: send() and recv() whole frames.

    One task may send while another receives (the two directions have their own
    keys and sequence numbers); send() writes a whole frame without yielding, so
    frames from several tasks never interleave."""

    def __init__(self, reader, writer, send_key: bytes, recv_key: bytes, peer_id: str):
        self.reader = reader
        self.writer = writer
        self.peer_id = peer_id
        self._send_key = send_key
        self._recv_key = recv_key
        self._send_seq = 0
        self._recv_seq = 0
        self.broken = False  # a frame was cut short or refused: never reuse

    def send(self, header: dict, payload=None) -> None:
        if payload is not None:
            payload = memoryview(payload).cast("B")
            header["n"] = payload.nbytes
        raw = msgpack.packb(header, use_bin_type=True)
        tag = _frame_tag(self._send_key, self._send_seq, raw)
        self._send_seq += 1
        frame = _LEN.pack(len(raw)) + raw + tag
        if payload is None or not payload.nbytes:
            self.writer.write(frame)
        elif payload.nbytes <= SMALL_PAYLOAD:  # one send for a small chunk's frame
            self.writer.write(frame + payload)
        else:
            self.writer.write(frame)
            self.writer.write(payload)

    async def drain(self) -> None:
        await self.writer.drain()

    async def recv(self) -> tuple[dict, bytes | None]:
        """The next frame: (header, payload or None). Raises IncompleteReadError at EOF."""
        started = False
        try:
            (size,) = _LEN.unpack(await self.reader.readexactly(_LEN.size))
            started = True
            if size > MAX_HEADER:
                raise WireError(f"frame header of {size} bytes")
            block = await self.reader.readexactly(size + TAG_LEN)
            raw, tag = block[:size], block[size:]
            want = _frame_tag(self._recv_key, self._recv_seq, raw)
            if not hmac.compare_digest(tag, want):
                raise WireError("frame authentication failed")
            self._recv_seq += 1
            header = msgpack.unpackb(raw, raw=False)
            if not isinstance(header, dict) or not isinstance(header.get("t"), str):
                raise WireError("malformed frame header")
            n = header.get("n")
            if n is None:
                return header, None
            if not isinstance(n, int) or not 0 <= n <= MAX_PAYLOAD:
                raise WireError(f"bad payload length {n!r}")
            return header, await self.reader.readexactly(n)
        except BaseException:
            if started:
                self.broken = True
            raise

    @property
    def usable(self) -> bool:
        return not (self.broken or self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        """Drop the connection at once, discarding anything not yet sent (a peer
        that stopped reading must not keep our buffers alive)."""
        self.broken = True
        self.writer.transport.abort()


def _session(secret: bytes, cn: bytes, sn: bytes, cid: bytes, sid: bytes):
    ids = bytes([len(cid)]) + cid + bytes([len(sid)]) + sid
    return (_mac(secret, _SERVER_PROOF, cn, sn, ids), _mac(secret, _CLIENT_PROOF, cn, sn, ids),
            _mac(secret, _C2S_KEY, cn, sn, ids), _mac(secret, _S2C_KEY, cn, sn, ids))


def secret_key(secret: str) -> bytes:
    if not secret:
        raise ValueError("the data path needs a non-empty cluster secret")
    return secret.encode()


async def client_handshake(reader, writer, secret: bytes, node_id: str) -> Channel:
    cn = os.urandom(NONCE_LEN)
    writer.write(_hello(cn, node_id))
    await writer.drain()
    sn, sid = await _read_hello(reader)
    server_proof = await reader.readexactly(32)
    want_server, client_proof, c2s, s2c = _session(secret, cn, sn, node_id.encode(), sid)
    if not hmac.compare_digest(server_proof, want_server):
        raise AuthFailed("the server did not prove the cluster secret")
    writer.write(client_proof)
    await writer.drain()
    return Channel(reader, writer, c2s, s2c, sid.decode(errors="replace"))


async def server_handshake(reader, writer, secret: bytes, node_id: str) -> Channel:
    cn, cid = await _read_hello(reader)
    sn = os.urandom(NONCE_LEN)
    server_proof, want_client, c2s, s2c = _session(secret, cn, sn, cid, node_id.encode())
    writer.write(_hello(sn, node_id) + server_proof)
    await writer.drain()
    if not hmac.compare_digest(await reader.readexactly(32), want_client):
        raise AuthFailed("the client did not prove the cluster secret")
    peer_id = cid.decode(errors="replace") or str(writer.get_extra_info("peername"))
    return Channel(reader, writer, s2c, c2s, peer_id)


async def connect(host: str, port: int, secret: bytes, node_id: str) -> Channel:
    reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
    try:
        return await client_handshake(reader, writer, secret, node_id)
    except BaseException:
        writer.transport.abort()
        raise


def sha256(data) -> bytes:
    return hashlib.sha256(data).digest()

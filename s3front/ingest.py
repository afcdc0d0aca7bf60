"""Request bodies in, chunks out: streaming, hashed in one pass, never held whole.

A body (plain, or `aws-chunked` with per-chunk signatures and trailing checksums) is
cut into the node's chunk size. Each chunk is hashed (MD5 for the ETag, the requested
flexible checksums, SHA-256 when the signature covers the payload) and written to the
WAL on the I/O pool while the next chunk is read from the socket, so network, hashing
and disk overlap on two cores. An upload holds at most two chunks (the one being
read, the one being written), and every chunk buffer takes a slot of the node's
ingest budget: past it, uploads wait and TCP flow control slows their clients, so
the server's memory is bounded whatever the number of concurrent uploads. If
anything goes wrong, the upload's transaction is rolled back and the error raised.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .aws_chunked import AwsChunkedDecoder
from .checksums import MultiHasher, checksum_headers
from .errors import S3Error
from .sigv4 import AuthResult, PayloadMode, verify_payload_sha256

PIECE = 1 << 20
FLUSH_BEHIND = 16 << 20  # large uploads start group commits as they go, not all at the end


class Body:
    """The decoded bytes of a request body, and its trailers once read."""

    def __init__(self, request, auth: AuthResult):
        self.request = request
        self.auth = auth
        self.trailers: dict = {}
        mode = auth.payload_mode
        headers = request.headers
        if mode.is_streaming:
            declared = headers.get("x-amz-decoded-content-length")
            if declared is None or not declared.isdigit():
                raise S3Error.of("MissingContentLength", "x-amz-decoded-content-length is required")
            self.length = int(declared)
            trailer_names = [t for t in headers.get("x-amz-trailer", "").split(",") if t.strip()]
            self._decoder = AwsChunkedDecoder(request.content, mode, auth.signing,
                                              decoded_content_length=self.length,
                                              expected_trailers=trailer_names)
            self.plain = False
        else:
            self.plain = True
            if request.content_length is None and "chunked" not in headers.get("Transfer-Encoding", ""):
                if request.method == "PUT":
                    raise S3Error.of("MissingContentLength")
            self.length = request.content_length
            self._decoder = None

    async def pieces(self):
        if self._decoder is not None:
            async for piece in self._decoder:
                yield piece
            self.trailers = self._decoder.trailers
            return
        got = 0
        content = self.request.content
        while True:
            piece = await content.read(PIECE)
            if not piece:
                break
            got += len(piece)
            yield piece
        if self.length is not None and got != self.length:
            raise S3Error.of("IncompleteBody")

    async def chunks(self, size: int):
        """The body in chunks of exactly `size` bytes (the last one shorter). A plain
        body is read with readexactly, so each chunk is assembled in one copy."""
        if self._decoder is None and self.length is not None:
            remaining = self.length
            content = self.request.content
            while remaining:
                n = min(size, remaining)
                try:
                    chunk = await content.readexactly(n)
                except asyncio.IncompleteReadError:
                    raise S3Error.of("IncompleteBody") from None
                remaining -= n
                yield chunk
            return
        buf = bytearray()
        async for piece in self.pieces():
            buf += piece
            if len(buf) >= size:
                chunk = bytes(buf[:size])
                del buf[:size]
                yield chunk
        if buf:
            yield bytes(buf)

    async def read_small(self, limit: int) -> bytes:
        """A small XML body, refusing more than `limit` bytes."""
        out = bytearray()
        async for piece in self.pieces():
            out += piece
            if len(out) > limit:
                raise S3Error.of("MaxMessageLengthExceeded", "Your request was too big.")
        if self.auth.payload_mode is PayloadMode.SHA256:
            import hashlib

            verify_payload_sha256(self.auth, hashlib.sha256(out).hexdigest())
        return bytes(out)


@dataclass
class Ingested:
    txn: bytes
    chunks: list = field(default_factory=list)  # [(chunk id, length)]
    size: int = 0
    etag: str = ""
    checksums: dict = field(default_factory=dict)  # algorithm -> base64


async def ingest(node, request, auth: AuthResult, max_size: int,
                 also: str | None = None) -> Ingested:
    """Stream the body into a new transaction; verify every digest the client sent.
    `also`: a checksum algorithm computed even if the client sent none (a part of an
    upload created with one)."""
    headers = request.headers
    expected = checksum_headers(headers)
    algorithms = set(expected)
    for name in headers.get("x-amz-trailer", "").split(","):
        name = name.strip().lower()
        if name.startswith("x-amz-checksum-"):
            algorithms.add(name[len("x-amz-checksum-"):].upper())
    sdk_alg = headers.get("x-amz-sdk-checksum-algorithm") or headers.get("x-amz-checksum-algorithm")
    if sdk_alg:
        algorithms.add(sdk_alg.upper())
    if also:
        algorithms.add(also)
    hasher = MultiHasher(algorithms, sha256=auth.payload_mode is PayloadMode.SHA256)
    body = Body(request, auth)
    if body.length is not None and body.length > max_size:
        raise S3Error.of("EntityTooLarge", ProposedSize=str(body.length), MaxSizeAllowed=str(max_size))
    if body.plain and body.length is not None and body.length <= min(node.config.chunk_size, 1 << 20):
        return await _ingest_small(node, body, auth, hasher, expected, algorithms)
    budget: asyncio.Semaphore = node.ingest_slots
    out = Ingested(node.begin())
    in_flight: asyncio.Future | None = None

    engine = node.engine
    hashes: list = []  # hashing of the last two chunks (MD5 and checksums, in order)
    flushed_to = 0  # flush-behind: a background group commit every FLUSH_BEHIND bytes
    flushing: asyncio.Future | None = None

    async def hash_after(prev, data):
        if prev is not None:
            await prev
        await node.in_io(hasher.update, data)

    async def settle():
        """Wait for the previous chunk's write (and the one before's hashing), so an
        upload never runs more than one write and two hashes ahead of its reads."""
        nonlocal in_flight
        if len(hashes) > 1:
            await hashes.pop(0)
        if in_flight is not None:
            fut, in_flight = in_flight, None
            ref = await fut
            out.chunks.append((ref.chunk_id, ref.length))
            kick_flush(ref.end)

    def kick_flush(end: int) -> None:
        nonlocal flushed_to, flushing
        if end - flushed_to >= FLUSH_BEHIND and (flushing is None or flushing.done()):
            flushed_to = end
            flushing = asyncio.ensure_future(node.in_io(engine.wait_durable, end))
            flushing.add_done_callback(_ignore_result)

    def submit(data):
        """Start one chunk: MD5/checksums on one thread, SHA-256 + WAL append on another;
        its budget slot is released by their completion itself, so a finished chunk
        frees memory even while its upload is blocked waiting for a slot."""
        nonlocal in_flight
        prev = hashes[-1] if hashes else None
        if len(data) <= 64 << 10 and node.inline_writes and (prev is None or prev.done()):
            hasher.update(data)  # small: inline, cheaper than a thread hop
            hashed = asyncio.get_running_loop().create_future()
            hashed.set_result(None)
            write = asyncio.get_running_loop().create_future()
            try:
                write.set_result(node.write_chunk(out.txn, data))
            except BaseException as exc:  # noqa: BLE001 - delivered by settle()
                write.set_exception(exc)
        else:
            hashed = asyncio.ensure_future(hash_after(prev, data))
            write = asyncio.ensure_future(node.in_io(node.write_chunk, out.txn, data))
        hashes.append(hashed)
        asyncio.gather(write, hashed, return_exceptions=True).add_done_callback(
            lambda _f: budget.release())
        in_flight = write

    async def finish_hashing():
        while hashes:
            await hashes.pop(0)

    chunks = body.chunks(node.config.chunk_size).__aiter__()
    try:
        while True:
            await budget.acquire()  # before reading: the slot pays for the next chunk
            try:
                chunk = await chunks.__anext__()
            except BaseException:
                budget.release()
                raise
            out.size += len(chunk)
            if out.size > max_size:
                budget.release()
                raise S3Error.of("EntityTooLarge", MaxSizeAllowed=str(max_size))
            try:
                await settle()  # at most one write in flight per upload, in order
            except BaseException:
                budget.release()
                raise
            submit(chunk)
    except StopAsyncIteration:
        pass
    except BaseException:
        await _quietly(settle())
        await _quietly(finish_hashing())
        await node.abort(out.txn)
        raise
    try:
        await settle()
        await finish_hashing()
        if auth.payload_mode is PayloadMode.SHA256:
            verify_payload_sha256(auth, hasher.sha256_hex())
        if "Content-MD5" in headers:
            hasher.verify_content_md5(headers["Content-MD5"])
        trailed = {k[len("x-amz-checksum-"):].upper(): v for k, v in body.trailers.items()
                   if k.startswith("x-amz-checksum-")}
        hasher.verify({**expected, **trailed})
    except BaseException:
        await _quietly(settle())
        await _quietly(finish_hashing())
        await node.abort(out.txn)
        raise
    out.etag = hasher.md5_hex()
    out.checksums = {alg: v for alg, v in hasher.checksums().items()
                     if alg in algorithms}
    return out


async def _ingest_small(node, body: "Body", auth: AuthResult, hasher, expected: dict,
                        algorithms: set) -> Ingested:
    """A plain body of at most one small chunk: read whole, hashed and written inline
    (no thread hop, no pipeline): most of a small PUT's cost is per request."""
    try:
        data = await body.request.content.readexactly(body.length) if body.length else b""
    except asyncio.IncompleteReadError:
        raise S3Error.of("IncompleteBody") from None
    hasher.update(data)
    if auth.payload_mode is PayloadMode.SHA256:
        verify_payload_sha256(auth, hasher.sha256_hex())
    headers = body.request.headers
    if "Content-MD5" in headers:
        hasher.verify_content_md5(headers["Content-MD5"])
    hasher.verify(expected)
    out = Ingested(node.begin(), size=len(data))
    if data:
        # a verified signed payload hash of a one-chunk body is the chunk's id already
        signed = hasher.digest("SHA256") if auth.payload_mode is PayloadMode.SHA256 else None
        if node.inline_writes:
            ref = node.write_chunk(out.txn, data, signed)
        else:
            ref = await node.in_io(node.write_chunk, out.txn, data, signed)
        out.chunks.append((ref.chunk_id, ref.length))
    out.etag = hasher.md5_hex()
    out.checksums = {alg: v for alg, v in hasher.checksums().items() if alg in algorithms}
    return out


async def _quietly(awaitable) -> None:
    """Finish an in-flight write while already failing; its own error adds nothing."""
    try:
        await awaitable
    except BaseException:  # noqa: BLE001
        pass


def _ignore_result(fut: asyncio.Future) -> None:
    """A flush-behind is advisory: the commit waits for durability itself."""
    if not fut.cancelled():
        fut.exception()

"""Streaming decoder for ``Content-Encoding: aws-chunked`` request bodies.

Why: SDKs upload with ``aws-chunked`` framing whenever they stream a body
whose hash they cannot compute up front (signed chunks) or when they send a
checksum as a trailer (botocore's default for PutObject/UploadPart). The
server must strip the framing, verify each chunk signature against the chain
that starts at the request's seed signature, and collect trailing headers,
without ever holding more than one chunk in memory.

Wire format (``hex-size`` has no leading ``0x``; sizes are of decoded data)::

    signed:          hex-size;chunk-signature=SIG\\r\\n DATA \\r\\n ... 0;chunk-signature=SIG\\r\\n\\r\\n
    signed+trailer:  ... 0;chunk-signature=SIG\\r\\n name:value\\r\\n x-amz-trailer-signature:SIG\\r\\n\\r\\n
    unsigned+trailer: hex-size\\r\\n DATA \\r\\n ... 0\\r\\n name:value\\r\\n\\r\\n

A chunk signature covers its whole chunk, so a signed chunk is buffered and
released only once verified; its declared size is capped (16 MiB by
default). Unsigned chunks are passed through as they arrive.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import AsyncIterator, Iterable, Protocol

from .errors import S3Error
from .sigv4 import EMPTY_SHA256, PayloadMode, SigningContext

__all__ = [
    "ByteSource",
    "BytesSource",
    "AwsChunkedDecoder",
    "DEFAULT_MAX_CHUNK_SIZE",
    "trailer_canonical",
]

DEFAULT_MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_PIECE_SIZE = 1024 * 1024
MAX_LINE = 4096
MAX_TRAILER_BYTES = 16 * 1024
_READ_SIZE = 256 * 1024
_HEX_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_HEX64 = re.compile(rb"[0-9a-f]{64}")


class ByteSource(Protocol):
    """What the decoder reads from: aiohttp's ``StreamReader`` fits.

    ``read(n)`` returns at most ``n`` bytes, and ``b""`` only at the end.
    """

    async def read(self, n: int = -1) -> bytes: ...


class BytesSource:
    """A :class:`ByteSource` over in-memory bytes, delivered in fragments.

    ``fragment`` bounds each ``read``, so callers (and tests) can exercise
    framing split at arbitrary points.
    """

    def __init__(self, data: bytes, fragment: int | None = None) -> None:
        self._data = memoryview(bytes(data))
        self._pos = 0
        self._fragment = fragment

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self._data) - self._pos
        if self._fragment is not None:
            n = min(n, self._fragment)
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out


def trailer_canonical(trailers: dict[str, str]) -> bytes:
    """The bytes whose SHA-256 the trailer signature covers: ``name:value\\n`` sorted."""
    return "".join(f"{name}:{trailers[name]}\n" for name in sorted(trailers)).encode("utf-8")


def _framing(detail: str) -> S3Error:
    return S3Error.of("InvalidRequest", f"Malformed aws-chunked body: {detail}")


def _incomplete() -> S3Error:
    return S3Error.of("IncompleteBody", "The aws-chunked body ended before its final chunk")


class AwsChunkedDecoder:
    """Decode one ``aws-chunked`` body; iterate it for the decoded bytes.

    ``async for piece in decoder`` yields non-empty pieces of at most
    ``piece_size`` bytes. When the iteration ends normally the body was
    complete and every signature verified; :attr:`trailers` then holds the
    trailing headers (lower-case names, without ``x-amz-trailer-signature``)
    and :attr:`decoded_length` the number of bytes yielded. Any problem raises
    :class:`S3Error`.

    ``signing`` (from :class:`~s3front.sigv4.AuthResult`) is required for the
    signed modes. ``decoded_content_length`` is the request's
    ``x-amz-decoded-content-length``; when given, the total must match.
    ``expected_trailers`` (from ``x-amz-trailer``) must all be present.
    """

    def __init__(
        self,
        source: ByteSource,
        mode: PayloadMode,
        signing: SigningContext | None = None,
        *,
        decoded_content_length: int | None = None,
        expected_trailers: Iterable[str] = (),
        max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
        piece_size: int = DEFAULT_PIECE_SIZE,
    ) -> None:
        if not mode.is_streaming:
            raise ValueError(f"{mode} is not an aws-chunked payload mode")
        if mode.chunks_signed and signing is None:
            raise ValueError("signed aws-chunked payloads need a SigningContext")
        self._source = source
        self._mode = mode
        self._signing = signing
        self._previous = signing.seed_signature if signing else ""
        self._declared = decoded_content_length
        self._expected_trailers = [t.strip().lower() for t in expected_trailers if t.strip()]
        self._max_chunk = max_chunk_size
        self._piece = piece_size
        self._buf = bytearray()
        self._eof = False
        self._started = False
        self.trailers: dict[str, str] = {}
        self.decoded_length = 0
        self.finished = False

    # -- low-level buffered reads ------------------------------------------------

    async def _fill(self, want: int = _READ_SIZE) -> bool:
        """Read more from the source into the buffer; False at end of input."""
        if self._eof:
            return False
        data = await self._source.read(max(want, 1))
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def _readline(self, limit: int = MAX_LINE) -> bytes | None:
        """A CRLF-terminated line without its CRLF; None at a clean end of input."""
        start = 0
        while True:
            idx = self._buf.find(b"\r\n", start)
            if idx >= 0:
                if idx > limit:
                    raise _framing("line too long")
                line = bytes(self._buf[:idx])
                del self._buf[: idx + 2]
                return line
            if len(self._buf) > limit:
                raise _framing("line too long")
            start = max(0, len(self._buf) - 1)
            if not await self._fill(MAX_LINE):
                if self._buf:
                    raise _incomplete()
                return None

    async def _read_some(self, n: int) -> bytes:
        """Up to ``n`` (> 0) bytes, from the buffer first; raise at end of input."""
        if not self._buf and not await self._fill(max(n, 64 * 1024)):
            raise _incomplete()
        out = bytes(self._buf[:n])
        del self._buf[: len(out)]
        return out

    async def _expect_crlf(self) -> None:
        while len(self._buf) < 2:
            if not await self._fill(2):
                raise _incomplete()
        if self._buf[:2] != b"\r\n":
            raise _framing("chunk data not followed by CRLF")
        del self._buf[:2]

    # -- framing -----------------------------------------------------------------

    def _parse_chunk_header(self, line: bytes) -> tuple[int, bytes | None]:
        size_part, _, ext = line.partition(b";")
        if not _HEX_SIZE.fullmatch(size_part):
            raise _framing("invalid chunk size")
        size = int(size_part, 16)
        signature = None
        if ext:
            name, _, value = ext.partition(b"=")
            if name.strip() == b"chunk-signature":
                signature = value.strip()
        if self._mode.chunks_signed:
            if signature is None or not _HEX64.fullmatch(signature):
                raise S3Error.of("SignatureDoesNotMatch", "Missing or malformed chunk-signature")
        if size > self._max_chunk:
            raise _framing(f"chunk size {size} exceeds the limit of {self._max_chunk} bytes")
        return size, signature

    def _account(self, n: int) -> None:
        self.decoded_length += n
        if self._declared is not None and self.decoded_length > self._declared:
            raise S3Error.of(
                "InvalidRequest",
                "The aws-chunked body is longer than x-amz-decoded-content-length",
            )

    def _verify_chunk(self, signature: bytes, digest_hex: str) -> None:
        assert self._signing is not None
        expected = self._signing.chunk_signature(self._previous, digest_hex)
        if not hmac.compare_digest(expected.encode(), signature):
            raise S3Error.of(
                "SignatureDoesNotMatch",
                "The chunk signature we calculated does not match the signature you provided",
            )
        self._previous = expected

    async def _signed_chunk(self, size: int, signature: bytes) -> bytearray:
        data = bytearray()
        while len(data) < size:
            data += await self._read_some(size - len(data))
        await self._expect_crlf()
        self._verify_chunk(signature, hashlib.sha256(data).hexdigest())
        return data

    async def _read_trailers(self) -> None:
        raw: dict[str, str] = {}
        signature: str | None = None
        total = 0
        while True:
            line = await self._readline()
            if line is None or line == b"":
                break  # a missing final CRLF at the very end is tolerated
            total += len(line) + 2
            if total > MAX_TRAILER_BYTES:
                raise S3Error.of("MalformedTrailerError", "Trailing headers are too large")
            name, colon, value = line.partition(b":")
            name_s = name.strip().lower().decode("ascii", "replace")
            if not colon or not name_s:
                raise S3Error.of("MalformedTrailerError")
            value_s = value.strip().decode("utf-8", "replace")
            if name_s == "x-amz-trailer-signature":
                signature = value_s
            elif name_s in raw:
                raise S3Error.of("MalformedTrailerError", f"Duplicate trailer {name_s}")
            else:
                raw[name_s] = value_s
        if self._mode is PayloadMode.STREAMING_SIGNED_TRAILER:
            self._verify_trailer_signature(raw, signature)
        missing = [t for t in self._expected_trailers if t not in raw]
        if missing:
            raise S3Error.of(
                "MalformedTrailerError", f"Declared trailer {', '.join(missing)} was not sent"
            )
        self.trailers = raw

    def _verify_trailer_signature(self, trailers: dict[str, str], signature: str | None) -> None:
        assert self._signing is not None
        if signature is None:
            raise S3Error.of("SignatureDoesNotMatch", "Missing x-amz-trailer-signature")
        canonical = trailer_canonical(trailers)
        # With no trailer at all, SDKs disagree on "" vs "\n"; accept both.
        bodies = [canonical] if trailers else [b"", b"\n"]
        for body in bodies:
            expected = self._signing.trailer_signature(
                self._previous, hashlib.sha256(body).hexdigest()
            )
            if hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
                return
        raise S3Error.of(
            "SignatureDoesNotMatch",
            "The trailer signature we calculated does not match the signature you provided",
        )

    async def _finish(self) -> None:
        if self._mode.has_trailer:
            await self._read_trailers()
        else:
            line = await self._readline()
            if line is None:
                raise _incomplete()
            if line != b"":
                raise _framing("unexpected data after the final chunk")
        if self._buf or await self._fill(1):
            raise _framing("unexpected data after the end of the body")
        if self._declared is not None and self.decoded_length != self._declared:
            raise S3Error.of(
                "IncompleteBody",
                f"The aws-chunked body carried {self.decoded_length} bytes, "
                f"x-amz-decoded-content-length said {self._declared}",
            )
        self.finished = True

    # -- public iteration ----------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise RuntimeError("an AwsChunkedDecoder can be iterated only once")
        self._started = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        piece = self._piece
        while True:
            line = await self._readline()
            if line is None:
                raise _incomplete()
            size, signature = self._parse_chunk_header(line)
            if size == 0:
                if self._mode.chunks_signed:
                    assert signature is not None
                    self._verify_chunk(signature, EMPTY_SHA256)
                await self._finish()
                return
            self._account(size)
            if self._mode.chunks_signed:
                assert signature is not None
                data = await self._signed_chunk(size, signature)
                view = memoryview(data)
                for start in range(0, size, piece):
                    yield bytes(view[start : start + piece])
            else:
                remaining = size
                while remaining:
                    part = await self._read_some(min(remaining, piece))
                    remaining -= len(part)
                    yield part
                await self._expect_crlf()

    async def read_all(self) -> bytes:
        """Decode the whole body into memory (small bodies and tests only)."""
        out = bytearray()
        async for part in self:
            out += part
        return bytes(out)

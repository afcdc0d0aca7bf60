"""aws-chunked decoding: the AWS documentation example, a reference encoder
written here, and bodies produced by botocore itself."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import os
import zlib
from datetime import datetime, timezone

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, Sha256Checksum

from s3front.aws_chunked import AwsChunkedDecoder, BytesSource, trailer_canonical
from s3front.checksums import MultiHasher
from s3front.errors import S3Error
from s3front.sigv4 import (
    EMPTY_SHA256,
    STREAMING_SIGNED,
    PayloadMode,
    SigningContext,
    derive_signing_key,
    verify_request,
)
from s3front_botocore_util import lookup, make_client

SIGNED = PayloadMode.STREAMING_SIGNED
SIGNED_TRAILER = PayloadMode.STREAMING_SIGNED_TRAILER
UNSIGNED_TRAILER = PayloadMode.STREAMING_UNSIGNED_TRAILER

CTX = SigningContext(
    key=derive_signing_key("secret", "20260101", "us-east-1"),
    amz_date="20260101T000000Z",
    scope="20260101/us-east-1/s3/aws4_request",
    seed_signature="0" * 64,
)


def decode(body: bytes, mode=SIGNED, ctx=CTX, fragment=None, **kwargs):
    decoder = AwsChunkedDecoder(BytesSource(body, fragment), mode, ctx, **kwargs)

    async def run():
        pieces = [piece async for piece in decoder]
        return pieces

    pieces = asyncio.run(run())
    return b"".join(pieces), decoder, pieces


def decode_error(body: bytes, mode=SIGNED, ctx=CTX, **kwargs) -> S3Error:
    with pytest.raises(S3Error) as info:
        decode(body, mode, ctx, **kwargs)
    return info.value


def encode(chunks, mode=SIGNED, ctx=CTX, trailers=None, bad_chunk=None, bad_trailer=False):
    """Reference aws-chunked encoder (independent of the decoder under test)."""
    out = bytearray()
    previous = ctx.seed_signature if ctx else ""
    for i, chunk in enumerate(list(chunks) + [b""]):
        if mode.chunks_signed:
            sts = "\n".join(
                [
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    ctx.amz_date,
                    ctx.scope,
                    previous,
                    EMPTY_SHA256,
                    hashlib.sha256(chunk).hexdigest(),
                ]
            )
            previous = hmac.new(ctx.key, sts.encode(), hashlib.sha256).hexdigest()
            sig = "f" * 64 if i == bad_chunk else previous
            out += f"{len(chunk):x};chunk-signature={sig}\r\n".encode()
        else:
            out += f"{len(chunk):x}\r\n".encode()
        if chunk:
            out += chunk + b"\r\n"
    if mode.has_trailer:
        trailers = trailers or {}
        for name, value in trailers.items():
            out += f"{name}:{value}\r\n".encode()
        if mode.chunks_signed:
            canonical = "".join(f"{n}:{trailers[n]}\n" for n in sorted(trailers)).encode()
            sts = "\n".join(
                [
                    "AWS4-HMAC-SHA256-TRAILER",
                    ctx.amz_date,
                    ctx.scope,
                    previous,
                    hashlib.sha256(canonical).hexdigest(),
                ]
            )
            sig = hmac.new(ctx.key, sts.encode(), hashlib.sha256).hexdigest()
            if bad_trailer:
                sig = "0" * 64
            out += f"x-amz-trailer-signature:{sig}\r\n".encode()
    out += b"\r\n"
    return bytes(out)


# --- AWS documentation example ---------------------------------------------------


def test_aws_documentation_example_body():
    headers = {
        "Host": "s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": STREAMING_SIGNED,
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "Content-Length": "66824",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/"
        "s3/aws4_request,SignedHeaders=content-encoding;content-length;host;"
        "x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
        "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
    }
    auth = verify_request(
        "PUT",
        "/examplebucket/chunkObject.txt",
        "",
        headers,
        lambda ak: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        datetime(2013, 5, 24, 0, 1, tzinfo=timezone.utc),
    )
    body = (
        b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
        + b"a" * 65536
        + b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
        + b"a" * 1024
        + b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"
    )
    assert len(body) == 66824  # the example's Content-Length
    for fragment in (None, 1000, 7):
        data, decoder, _ = decode(
            body, SIGNED, auth.signing, fragment=fragment, decoded_content_length=66560
        )
        assert data == b"a" * 66560 and decoder.finished and decoder.decoded_length == 66560
    # one flipped byte in the second chunk breaks its signature
    broken = bytearray(body)
    broken[-200] = ord("b")
    assert decode_error(bytes(broken), SIGNED, auth.signing).code == "SignatureDoesNotMatch"


# --- signed chunks -----------------------------------------------------------------


@pytest.mark.parametrize("fragment", [None, 1, 3, 64, 4096])
def test_signed_roundtrip_any_fragmentation(fragment):
    chunks = [os.urandom(5000), os.urandom(1), os.urandom(70000)]
    body = encode(chunks)
    data, decoder, _ = decode(body, fragment=fragment, decoded_content_length=75001)
    assert data == b"".join(chunks)
    assert decoder.trailers == {}


def test_signed_empty_body():
    data, decoder, pieces = decode(encode([]), decoded_content_length=0)
    assert data == b"" and pieces == [] and decoder.finished


def test_signed_pieces_are_bounded():
    chunks = [os.urandom(10000), os.urandom(2500)]
    _, _, pieces = decode(encode(chunks), piece_size=1024)
    assert max(len(p) for p in pieces) <= 1024
    assert b"".join(pieces) == b"".join(chunks)


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_signed_bad_chunk_signature(bad):
    body = encode([b"a" * 100, b"b" * 100], bad_chunk=bad)
    assert decode_error(body).code == "SignatureDoesNotMatch"


def test_signed_wrong_seed_or_key():
    body = encode([b"data"])
    other_seed = SigningContext(CTX.key, CTX.amz_date, CTX.scope, "1" * 64)
    assert decode_error(body, ctx=other_seed).code == "SignatureDoesNotMatch"
    other_key = SigningContext(b"k" * 32, CTX.amz_date, CTX.scope, CTX.seed_signature)
    assert decode_error(body, ctx=other_key).code == "SignatureDoesNotMatch"


def test_signed_chunks_cannot_be_reordered_or_dropped():
    a, b = b"first chunk", b"second chunk"
    body = encode([a, b])
    first_end = body.index(b"\r\n", body.index(a)) + 2
    second_end = body.index(b"\r\n", body.index(b)) + 2
    swapped = body[first_end:second_end] + body[:first_end] + body[second_end:]
    assert decode_error(swapped).code == "SignatureDoesNotMatch"
    dropped = body[first_end:]
    assert decode_error(dropped).code == "SignatureDoesNotMatch"


def test_signed_missing_or_malformed_signature():
    assert decode_error(b"5\r\nhello\r\n0\r\n\r\n").code == "SignatureDoesNotMatch"
    assert decode_error(b"5;chunk-signature=abc\r\nhello\r\n").code == "SignatureDoesNotMatch"


def test_signed_data_is_released_only_after_verification():
    body = encode([b"x" * 1000])

    class Cut:
        """Delivers the header and half the chunk, then fails."""

        def __init__(self):
            self.sent = False

        async def read(self, n=-1):
            if self.sent:
                raise ConnectionResetError("client went away")
            self.sent = True
            return body[: body.index(b"\r\n") + 2 + 500]

    for mode, chunk_body, expect_released in [
        (SIGNED, body, 0),
        (UNSIGNED_TRAILER, b"3e8\r\n" + b"x" * 1000 + b"\r\n0\r\n\r\n", 500),
    ]:
        released = []

        async def run():
            async for piece in AwsChunkedDecoder(src, mode, CTX if mode.chunks_signed else None):
                released.append(piece)

        body = chunk_body
        src = Cut()
        with pytest.raises(ConnectionResetError):
            asyncio.run(run())
        assert sum(map(len, released)) == expect_released


# --- framing errors -------------------------------------------------------------------


def test_truncated_bodies_are_incomplete():
    body = encode([b"a" * 300, b"b" * 300])
    for cut in (1, 10, 90, 95, 200, len(body) - 60, len(body) - 3, len(body) - 1):
        err = decode_error(body[:-cut])
        assert err.code in ("IncompleteBody",), (cut, err)
    assert decode_error(b"").code == "IncompleteBody"


def test_framing_errors():
    good = encode([b"hello"])
    assert decode_error(good.replace(b"5;", b"5x;", 1)).code == "InvalidRequest"
    assert decode_error(good.replace(b"5;", b"-5;", 1)).code == "InvalidRequest"
    assert decode_error(good.replace(b"hello\r\n", b"hello\n\n", 1)).code == "InvalidRequest"
    assert decode_error(good + b"garbage").code == "InvalidRequest"
    assert decode_error(good[:-2] + b"XX\r\n").code == "InvalidRequest"
    assert decode_error(good[:-2] + b"XX").code == "IncompleteBody"
    assert decode_error(b"1" * 5000 + b"\r\n").code == "InvalidRequest"
    assert decode_error(b"11111111111111111;chunk-signature=" + b"0" * 64 + b"\r\n").code == (
        "InvalidRequest"
    )


def test_chunk_size_cap():
    body = encode([b"z" * 2048])
    assert decode_error(body, max_chunk_size=1024).code == "InvalidRequest"
    assert decode(body, max_chunk_size=2048)[0] == b"z" * 2048
    # a declared size far beyond the cap fails before any data is buffered
    huge = b"fffffff;chunk-signature=" + b"0" * 64 + b"\r\n"
    assert decode_error(huge).code == "InvalidRequest"


def test_decoded_content_length_must_match():
    body = encode([b"a" * 10, b"b" * 10])
    assert decode(body, decoded_content_length=20)[0] == b"a" * 10 + b"b" * 10
    assert decode_error(body, decoded_content_length=21).code == "IncompleteBody"
    assert decode_error(body, decoded_content_length=15).code == "InvalidRequest"


# --- trailers ----------------------------------------------------------------------------


def _crc32_b64(data: bytes) -> str:
    return base64.b64encode((zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "big")).decode()


def test_signed_trailer_roundtrip():
    payload = os.urandom(3000)
    trailers = {"x-amz-checksum-crc32": _crc32_b64(payload)}
    body = encode([payload[:1000], payload[1000:]], SIGNED_TRAILER, trailers=trailers)
    for fragment in (None, 5):
        data, decoder, _ = decode(
            body,
            SIGNED_TRAILER,
            fragment=fragment,
            decoded_content_length=3000,
            expected_trailers=["x-amz-checksum-crc32"],
        )
        assert data == payload
        assert decoder.trailers == trailers


def test_signed_trailer_failures():
    payload = b"p" * 100
    trailers = {"x-amz-checksum-crc32": _crc32_b64(payload)}
    body = encode([payload], SIGNED_TRAILER, trailers=trailers, bad_trailer=True)
    assert decode_error(body, SIGNED_TRAILER).code == "SignatureDoesNotMatch"
    good = encode([payload], SIGNED_TRAILER, trailers=trailers)
    altered = good.replace(trailers["x-amz-checksum-crc32"].encode(), b"AAAAAA==")
    assert decode_error(altered, SIGNED_TRAILER).code == "SignatureDoesNotMatch"
    no_sig = good[: good.index(b"x-amz-trailer-signature")] + b"\r\n"
    assert decode_error(no_sig, SIGNED_TRAILER).code == "SignatureDoesNotMatch"
    bad_line = good.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32 ", 1)
    assert decode_error(bad_line, SIGNED_TRAILER).code == "MalformedTrailerError"


def test_signed_trailer_with_no_trailer_headers():
    body = encode([b"abc"], SIGNED_TRAILER, trailers={})
    data, decoder, _ = decode(body, SIGNED_TRAILER)
    assert data == b"abc" and decoder.trailers == {}


def test_unsigned_trailer_roundtrip_and_declared_trailer():
    payload = b"hello unsigned"
    trailers = {"x-amz-checksum-crc32c": "sOO8/Q=="}
    body = encode([payload], UNSIGNED_TRAILER, ctx=None, trailers=trailers)
    data, decoder, _ = decode(body, UNSIGNED_TRAILER, ctx=None, expected_trailers=["X-Amz-Checksum-CRC32C"])
    assert data == payload and decoder.trailers == trailers
    err = decode_error(body, UNSIGNED_TRAILER, ctx=None, expected_trailers=["x-amz-checksum-sha256"])
    assert err.code == "MalformedTrailerError"
    # the final empty line may be missing at the very end of the stream
    assert decode(body[:-2], UNSIGNED_TRAILER, ctx=None)[1].trailers == trailers


def test_trailer_canonical_form():
    assert trailer_canonical({"b": "2", "a": "1"}) == b"a:1\nb:2\n"
    assert trailer_canonical({}) == b""


# --- botocore's own aws-chunked bodies ---------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3, 1000, 4096])
@pytest.mark.parametrize("checksum_cls", [Crc32Checksum, Sha256Checksum, None])
def test_botocore_aws_chunked_wrapper(chunk_size, checksum_cls):
    payload = os.urandom(10000)
    name = {Crc32Checksum: "x-amz-checksum-crc32", Sha256Checksum: "x-amz-checksum-sha256"}.get(
        checksum_cls, "x-amz-checksum"
    )
    wrapper = AwsChunkedWrapper(
        io.BytesIO(payload), checksum_cls=checksum_cls, checksum_name=name, chunk_size=chunk_size
    )
    body = wrapper.read()
    data, decoder, _ = decode(
        body, UNSIGNED_TRAILER, ctx=None, fragment=777, decoded_content_length=len(payload)
    )
    assert data == payload
    if checksum_cls is None:
        assert decoder.trailers == {}
    else:
        alg = name.rsplit("-", 1)[1].upper()
        hasher = MultiHasher([alg], md5=False)
        hasher.update(data)
        assert decoder.trailers == {name: hasher.checksums()[alg]}


def test_botocore_client_put_object_over_https_end_to_end():
    client, rec = make_client(endpoint="https://127.0.0.1:9443")
    rec.respond(b"", headers={"ETag": '"x"'})
    payload = os.urandom(3 * 1024 * 1024 + 17)
    client.put_object(Bucket="bucket", Key="big object", Body=payload)
    captured = rec.last
    auth = verify_request(
        captured.method, captured.raw_path, captured.raw_query, captured.headers, lookup
    )
    assert auth.payload_mode is UNSIGNED_TRAILER
    headers = {k.lower(): v for k, v in captured.headers.items()}
    assert "aws-chunked" in headers["content-encoding"]
    data, decoder, pieces = decode(
        captured.body,
        auth.payload_mode,
        auth.signing,
        fragment=65536,
        decoded_content_length=int(headers["x-amz-decoded-content-length"]),
        expected_trailers=[headers["x-amz-trailer"]],
        piece_size=256 * 1024,
    )
    assert data == payload
    assert max(map(len, pieces)) <= 256 * 1024
    hasher = MultiHasher(["CRC32"])
    hasher.update(data)
    hasher.verify({"CRC32": decoder.trailers["x-amz-checksum-crc32"]})


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=3000), max_size=6),
    fragment=st.integers(min_value=1, max_value=5000),
    mode=st.sampled_from([SIGNED, SIGNED_TRAILER, UNSIGNED_TRAILER]),
    piece=st.integers(min_value=1, max_value=4096),
)
def test_property_roundtrip(chunks, fragment, mode, piece):
    payload = b"".join(chunks)
    trailers = {"x-amz-checksum-crc32": _crc32_b64(payload)} if mode.has_trailer else None
    ctx = CTX if mode.chunks_signed else None
    body = encode(chunks, mode, ctx=ctx, trailers=trailers)
    data, decoder, pieces = decode(
        body, mode, ctx, fragment=fragment, piece_size=piece, decoded_content_length=len(payload)
    )
    assert data == payload
    assert all(0 < len(p) <= piece for p in pieces)
    assert decoder.trailers == (trailers or {})

"""AWS Signature Version 4 verification for S3 requests (server side).

Why: every S3 client signs its requests with SigV4, either in the
``Authorization`` header or in the query string of a presigned URL. The
server must rebuild the exact canonical request the client signed, from what
it sees on the wire, and compare signatures in constant time. This module is
pure (no I/O, no engine): the HTTP layer hands it the method, the raw path
and query, the headers and a secret lookup, and gets back who signed the
request plus what the body must satisfy (a SHA-256, nothing, or an
``aws-chunked`` stream whose chunk signatures chain from the seed signature
carried in :class:`SigningContext`).

Canonical URI, as S3 does it: the path is percent-decoded once and each byte
re-encoded with RFC 3986 (unreserved ``A-Za-z0-9-_.~`` and ``/`` kept); no
double encoding and no ``.``/``..``/``//`` normalisation. For a client that
encodes the path that way on the wire (botocore, the AWS SDKs) this is the
raw path itself. A client that signed its raw path verbatim with a different
but equivalent escaping (``%7E`` for ``~``, ``%2F`` inside a key, lower-case
hex) is also accepted: the raw form is tried as a second candidate. Both
forms decode to the same resource, so accepting either grants nothing more.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Iterable, Mapping
from urllib.parse import quote, unquote_to_bytes

from .errors import S3Error

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "UNSIGNED_PAYLOAD",
    "STREAMING_SIGNED",
    "STREAMING_SIGNED_TRAILER",
    "STREAMING_UNSIGNED_TRAILER",
    "MAX_SKEW",
    "PayloadMode",
    "SigningContext",
    "AuthResult",
    "derive_signing_key",
    "verify_request",
    "verify_payload_sha256",
    "split_raw_target",
    "canonical_uri",
    "canonical_query_string",
    "parse_query",
]

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
_ECDSA_MODES = (
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
)
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 604800  # one week, in seconds
SERVICE = "s3"

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_DATE8 = re.compile(r"\d{8}")


class PayloadMode(enum.Enum):
    """What the request body must satisfy, from ``x-amz-content-sha256``."""

    SHA256 = "sha256"  # body must hash to AuthResult.payload_sha256
    UNSIGNED = UNSIGNED_PAYLOAD
    STREAMING_SIGNED = STREAMING_SIGNED
    STREAMING_SIGNED_TRAILER = STREAMING_SIGNED_TRAILER
    STREAMING_UNSIGNED_TRAILER = STREAMING_UNSIGNED_TRAILER

    @property
    def is_streaming(self) -> bool:
        """The body is ``aws-chunked`` framed."""
        return self.value.startswith("STREAMING-")

    @property
    def chunks_signed(self) -> bool:
        return self in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)

    @property
    def has_trailer(self) -> bool:
        return self.value.endswith("-TRAILER")


@functools.lru_cache(maxsize=1024)
def derive_signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """kSigning = HMAC chain over date, region, service, ``aws4_request`` (cached)."""
    k = hmac.new(("AWS4" + secret).encode("utf-8"), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode("utf-8"), hashlib.sha256).digest()
    k = hmac.new(k, service.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class SigningContext:
    """What chunk and trailer signatures of a streaming body chain from."""

    key: bytes = field(repr=False)
    amz_date: str  # e.g. 20130524T000000Z
    scope: str  # e.g. 20130524/us-east-1/s3/aws4_request
    seed_signature: str

    def sign(self, string_to_sign: str) -> str:
        return hmac.new(self.key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()

    def chunk_signature(self, previous: str, chunk_sha256_hex: str) -> str:
        return self.sign(
            f"AWS4-HMAC-SHA256-PAYLOAD\n{self.amz_date}\n{self.scope}\n{previous}\n"
            f"{EMPTY_SHA256}\n{chunk_sha256_hex}"
        )

    def trailer_signature(self, previous: str, trailer_sha256_hex: str) -> str:
        return self.sign(
            f"AWS4-HMAC-SHA256-TRAILER\n{self.amz_date}\n{self.scope}\n{previous}\n"
            f"{trailer_sha256_hex}"
        )


@dataclass(frozen=True, slots=True)
class AuthResult:
    """A verified request: who signed it and what its body must satisfy."""

    access_key: str
    region: str
    payload_mode: PayloadMode
    payload_sha256: str | None  # lower-case hex when payload_mode is SHA256
    signing: SigningContext
    signed_headers: tuple[str, ...]
    presigned: bool = False
    expires_at: datetime | None = None  # presigned URLs only


def split_raw_target(target: str) -> tuple[str, str]:
    """Split a raw request-target (aiohttp's ``request.raw_path``) into path and query."""
    path, _, query = target.partition("?")
    return path, query


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Split a raw query string into (raw name, raw value) pairs, still encoded.

    A parameter without ``=`` gets an empty value (``?uploads``).
    """
    pairs = []
    for piece in raw_query.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((name, value))
    return pairs


def _uri_encode(raw: str, safe: str) -> str:
    # Decode once (``+`` stays a plus: this is not form encoding), then
    # encode every byte outside the RFC 3986 unreserved set (and ``safe``).
    return quote(unquote_to_bytes(raw), safe=safe)


def canonical_uri(raw_path: str) -> str:
    """S3's canonical URI for a raw path: decode once, re-encode each byte once."""
    return _uri_encode(raw_path, "/") if raw_path else "/"


def canonical_query_string(
    pairs: Iterable[tuple[str, str]], exclude: str | None = None
) -> str:
    """Canonical query string from raw pairs: re-encoded, sorted by name then value."""
    encoded = sorted(
        (_uri_encode(name, ""), _uri_encode(value, ""))
        for name, value in pairs
        if name != exclude
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def _raw_query_string(pairs: Iterable[tuple[str, str]], exclude: str | None) -> str:
    return "&".join(f"{n}={v}" for n, v in sorted(p for p in pairs if p[0] != exclude))


def _headers_map(headers: Mapping[str, str]) -> dict[str, list[str]]:
    # Works for dicts and for aiohttp's CIMultiDict (whose items() yields
    # every value of a repeated header).
    out: dict[str, list[str]] = {}
    for name, value in headers.items():
        out.setdefault(name.lower(), []).append(value)
    return out


def _canonical_headers(hmap: dict[str, list[str]], signed: tuple[str, ...]) -> str:
    lines = []
    for name in signed:
        values = hmap.get(name, ())
        lines.append(name + ":" + ",".join(" ".join(v.split()) for v in values) + "\n")
    return "".join(lines)


def _first(hmap: dict[str, list[str]], name: str) -> str | None:
    values = hmap.get(name)
    return values[0] if values else None


def _format_amz(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_amz_date(value: str) -> datetime | None:
    if not _AMZ_DATE.fullmatch(value):
        return None
    try:  # slicing: strptime costs a third of a whole verification
        return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]),
                        int(value[11:13]), int(value[13:15]), tzinfo=timezone.utc)
    except ValueError:
        return None


def _payload_mode(value: str) -> tuple[PayloadMode, str | None]:
    if _HEX64.fullmatch(value):
        return PayloadMode.SHA256, value.lower()
    try:
        mode = PayloadMode(value)
    except ValueError:
        mode = None
    if mode is not None and mode is not PayloadMode.SHA256:
        return mode, None
    if value in _ECDSA_MODES:
        raise S3Error.of(
            "NotImplemented",
            "SigV4a (ECDSA) streaming payloads are not implemented",
            **{"Header": "x-amz-content-sha256"},
        )
    raise S3Error.of(
        "InvalidArgument",
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
        "or a valid sha256 value.",
        argument_name="x-amz-content-sha256",
        argument_value=value,
    )


@dataclass(slots=True)
class _Credential:
    access_key: str
    date: str
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def _parse_credential(value: str, fail: Callable[[str], S3Error]) -> _Credential:
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or parts[4] != "aws4_request":
        raise fail(
            'the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
        )
    cred = _Credential(*parts[:4])
    if not _DATE8.fullmatch(cred.date):
        raise fail(f'Invalid credential date "{cred.date}". This date is not the same as X-Amz-Date.')
    if not cred.region:
        raise fail("the region in the Credential is empty.")
    if cred.service != SERVICE:
        raise fail(f'incorrect service "{cred.service}". This endpoint belongs to "s3".')
    return cred


def _header_malformed(detail: str) -> S3Error:
    return S3Error.of(
        "AuthorizationHeaderMalformed", f"The authorization header is malformed; {detail}"
    )


def _query_malformed(detail: str) -> S3Error:
    return S3Error.of("AuthorizationQueryParametersError", detail)


def _parse_signed_headers(value: str, fail: Callable[[str], S3Error]) -> tuple[str, ...]:
    names = tuple(value.split(";")) if value else ()
    if not names or any(not n or n != n.strip().lower() for n in names):
        raise fail("the SignedHeaders are mal-formed.")
    return names


def _parse_authorization(value: str) -> tuple[_Credential, tuple[str, ...], str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS":
            raise S3Error.of(
                "InvalidRequest",
                "The authorization mechanism you have provided is not supported. "
                "Please use AWS4-HMAC-SHA256.",
            )
        if algorithm == "AWS4-ECDSA-P256-SHA256":
            raise S3Error.of("NotImplemented", "SigV4a (AWS4-ECDSA-P256-SHA256) is not implemented")
        raise _header_malformed(f'the authorization mechanism "{algorithm}" is not supported.')
    fields: dict[str, str] = {}
    for component in rest.split(","):
        name, eq, val = component.strip().partition("=")
        if not eq or name in fields:
            raise _header_malformed(f'the authorization component "{component.strip()}" is malformed.')
        fields[name] = val.strip()
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing:
        raise _header_malformed(f"the authorization header requires {', '.join(missing)}.")
    cred = _parse_credential(fields["Credential"], _header_malformed)
    signed = _parse_signed_headers(fields["SignedHeaders"], _header_malformed)
    return cred, signed, fields["Signature"]


def _unsigned_amz_headers(hmap: dict[str, list[str]], signed: tuple[str, ...]) -> list[str]:
    signed_set = set(signed)
    return sorted(n for n in hmap if n.startswith("x-amz-") and n not in signed_set)


def _require_signed(hmap, signed: tuple[str, ...], also: Iterable[str] = ()) -> None:
    missing = _unsigned_amz_headers(hmap, signed)
    missing += [n for n in also if n not in signed]
    if missing:
        raise S3Error.of(
            "AccessDenied",
            "There were headers present in the request which were not signed",
            HeadersNotSigned=", ".join(missing),
        )


def verify_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    lookup_secret: Callable[[str], str | None],
    now: datetime | None = None,
    *,
    max_skew: timedelta = MAX_SKEW,
    require_signed_amz_headers: bool = True,
) -> AuthResult:
    """Verify a SigV4-signed S3 request; raise :class:`S3Error` if it is not.

    ``raw_path`` and ``raw_query`` are the request-target as sent on the wire
    (still percent-encoded; see :func:`split_raw_target`). ``headers`` may be
    a plain mapping or a case-insensitive multidict. ``lookup_secret`` maps an
    access key to its secret key, or ``None`` if unknown. ``now`` defaults to
    the current UTC time. With ``require_signed_amz_headers`` (the S3
    behaviour) any ``x-amz-*`` header present but not signed is refused.
    """
    if now is None:
        now = datetime.now(timezone.utc)
    hmap = _headers_map(headers)
    pairs = parse_query(raw_query)
    authorization = _first(hmap, "authorization")
    query_auth = any(_uri_decode_str(n) == "X-Amz-Algorithm" for n, _ in pairs)
    if authorization is not None and query_auth:
        raise S3Error.of(
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            argument_name="Authorization",
            argument_value=authorization,
        )
    if authorization is not None:
        return _verify_header_auth(
            method, raw_path, pairs, hmap, authorization, lookup_secret, now, max_skew,
            require_signed_amz_headers,
        )
    if query_auth:
        return _verify_query_auth(
            method, raw_path, pairs, hmap, lookup_secret, now, max_skew,
            require_signed_amz_headers,
        )
    if any(_uri_decode_str(n) in ("AWSAccessKeyId", "Signature") for n, _ in pairs):
        raise S3Error.of(
            "InvalidRequest",
            "The authorization mechanism you have provided is not supported. "
            "Please use AWS4-HMAC-SHA256.",
        )
    raise S3Error.of("AccessDenied", "Anonymous access is not allowed")


def _uri_decode_str(raw: str) -> str:
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def _lookup(lookup_secret: Callable[[str], str | None], access_key: str) -> str:
    secret = lookup_secret(access_key)
    if secret is None:
        raise S3Error.of("InvalidAccessKeyId", AWSAccessKeyId=access_key)
    return secret


def _check_signature(
    method: str,
    raw_path: str,
    pairs: list[tuple[str, str]],
    hmap: dict[str, list[str]],
    signed: tuple[str, ...],
    payload_hash: str,
    amz_date: str,
    cred: _Credential,
    secret: str,
    provided: str,
    exclude_param: str | None,
) -> SigningContext:
    key = derive_signing_key(secret, cred.date, cred.region, cred.service)
    headers_block = _canonical_headers(hmap, signed)
    tail = f"{headers_block}\n{';'.join(signed)}\n{payload_hash}"
    candidates = [(canonical_uri(raw_path), canonical_query_string(pairs, exclude_param))]
    raw = (raw_path or "/", _raw_query_string(pairs, exclude_param))
    if raw != candidates[0]:
        candidates.append(raw)
    provided_bytes = provided.encode("utf-8", "replace")
    first_sts = first_cr = None
    for uri, query in candidates:
        canonical_request = f"{method}\n{uri}\n{query}\n{tail}"
        string_to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{cred.scope}\n"
            f"{hashlib.sha256(canonical_request.encode('utf-8', 'surrogateescape')).hexdigest()}"
        )
        expected = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected.encode(), provided_bytes):
            return SigningContext(key, amz_date, cred.scope, expected)
        if first_sts is None:
            first_sts, first_cr = string_to_sign, canonical_request
    raise S3Error.of(
        "SignatureDoesNotMatch",
        AWSAccessKeyId=cred.access_key,
        StringToSign=first_sts,
        SignatureProvided=provided,
        CanonicalRequest=first_cr,
    )


def _verify_header_auth(
    method, raw_path, pairs, hmap, authorization, lookup_secret, now, max_skew, strict
) -> AuthResult:
    cred, signed, provided = _parse_authorization(authorization)
    content_sha = _first(hmap, "x-amz-content-sha256")
    if content_sha is None:
        raise S3Error.of(
            "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
        )
    mode, payload_sha = _payload_mode(content_sha)

    amz_date_raw = _first(hmap, "x-amz-date")
    if amz_date_raw is not None:
        when = _parse_amz_date(amz_date_raw.strip())
        date_header = "x-amz-date"
    else:
        amz_date_raw = _first(hmap, "date")
        date_header = "date"
        try:
            when = parsedate_to_datetime(amz_date_raw) if amz_date_raw else None
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    if when is None:
        raise S3Error.of("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
    amz_date = amz_date_raw.strip() if date_header == "x-amz-date" else _format_amz(when)
    if cred.date != amz_date[:8]:
        raise _header_malformed(
            f'Invalid credential date "{cred.date}". This date is not the same as X-Amz-Date: "{amz_date[:8]}".'
        )
    if strict:
        _require_signed(hmap, signed, also=("host", date_header))
    elif "host" not in signed:
        _require_signed({}, signed, also=("host",))

    secret = _lookup(lookup_secret, cred.access_key)
    if abs(now - when) > max_skew:
        raise S3Error.of(
            "RequestTimeTooSkewed",
            RequestTime=amz_date_raw,
            ServerTime=_iso(now),
            MaxAllowedSkewMilliseconds=str(int(max_skew.total_seconds() * 1000)),
        )
    ctx = _check_signature(
        method, raw_path, pairs, hmap, signed, content_sha, amz_date, cred, secret, provided, None
    )
    return AuthResult(cred.access_key, cred.region, mode, payload_sha, ctx, signed)


_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)


def _verify_query_auth(
    method, raw_path, pairs, hmap, lookup_secret, now, max_skew, strict
) -> AuthResult:
    params: dict[str, str] = {}
    for name, value in pairs:
        params.setdefault(_uri_decode_str(name), _uri_decode_str(value))
    if any(p not in params for p in _PRESIGN_PARAMS):
        raise _query_malformed(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and "
            "X-Amz-Expires parameters."
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise _query_malformed('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    cred = _parse_credential(params["X-Amz-Credential"], _query_malformed)
    when = _parse_amz_date(params["X-Amz-Date"])
    if when is None:
        raise _query_malformed(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
        )
    amz_date = params["X-Amz-Date"]
    if cred.date != amz_date[:8]:
        raise _query_malformed(
            f'Invalid credential date "{cred.date}". This date is not the same as X-Amz-Date: "{amz_date[:8]}".'
        )
    expires_raw = params["X-Amz-Expires"]
    if not expires_raw.isdigit() or not expires_raw.isascii():
        raise _query_malformed("X-Amz-Expires should be a number")
    expires = int(expires_raw)
    if expires > MAX_PRESIGN_EXPIRES:
        raise _query_malformed(
            "X-Amz-Expires must be less than a week (in seconds) that is 604800"
        )
    if expires < 1:
        raise _query_malformed("X-Amz-Expires must be a positive number of seconds")
    signed = _parse_signed_headers(params["X-Amz-SignedHeaders"], _query_malformed)
    if strict:
        _require_signed(hmap, signed, also=("host",))
    elif "host" not in signed:
        _require_signed({}, signed, also=("host",))

    # The payload hash is UNSIGNED-PAYLOAD unless the client carried one,
    # hoisted into the query (some SDKs) or as a signed header.
    content_sha = next(
        (v for n, v in params.items() if n.lower() == "x-amz-content-sha256"), None
    )
    if content_sha is None and "x-amz-content-sha256" in signed:
        content_sha = _first(hmap, "x-amz-content-sha256")
    if content_sha is None:
        content_sha = UNSIGNED_PAYLOAD
    mode, payload_sha = _payload_mode(content_sha)
    if mode.is_streaming:
        raise S3Error.of("InvalidRequest", "Presigned requests cannot use a streaming payload")

    secret = _lookup(lookup_secret, cred.access_key)
    expires_at = when + timedelta(seconds=expires)
    if now - when < -max_skew:
        raise S3Error.of("AccessDenied", "Request is not valid yet", **{"X-Amz-Date": amz_date})
    if now > expires_at:
        raise S3Error.of(
            "AccessDenied",
            "Request has expired",
            **{"X-Amz-Expires": expires_raw, "Expires": _iso(expires_at), "ServerTime": _iso(now)},
        )
    ctx = _check_signature(
        method, raw_path, pairs, hmap, signed, content_sha, amz_date, cred, secret,
        params["X-Amz-Signature"], "X-Amz-Signature",
    )
    return AuthResult(
        cred.access_key, cred.region, mode, payload_sha, ctx, signed, True, expires_at
    )


def verify_payload_sha256(auth: AuthResult, computed_hex: str) -> None:
    """After reading a body whose mode is SHA256, check the client's hash."""
    if auth.payload_mode is PayloadMode.SHA256 and not hmac.compare_digest(
        computed_hex.lower().encode(), (auth.payload_sha256 or "").encode()
    ):
        raise S3Error.of(
            "XAmzContentSHA256Mismatch",
            ClientComputedContentSHA256=auth.payload_sha256,
            S3ComputedContentSHA256=computed_hex,
        )

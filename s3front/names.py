"""Bucket-name and object-key rules.

Why: a bucket name ends up in DNS names (virtual-host addressing) and both
names end up in the catalog, so the front end refuses invalid ones early,
with the S3 codes clients expect (``InvalidBucketName``, ``KeyTooLongError``),
instead of letting odd names reach storage.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from .errors import S3Error

__all__ = [
    "MAX_KEY_BYTES",
    "is_valid_bucket_name",
    "check_bucket_name",
    "check_key",
    "decode_key",
]

MAX_KEY_BYTES = 1024
_BUCKET_CHARS = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")


def _bucket_problem(name: str) -> str | None:
    if not 3 <= len(name) <= 63:
        return "Bucket name must be between 3 and 63 characters long"
    if not _BUCKET_CHARS.fullmatch(name):
        return (
            "Bucket name can consist only of lowercase letters, numbers, dots and "
            "hyphens, and must begin and end with a letter or number"
        )
    if ".." in name or ".-" in name or "-." in name:
        return "Bucket name must not contain two adjacent periods or a period next to a hyphen"
    if _IPV4_LIKE.fullmatch(name):
        return "Bucket name must not be formatted as an IP address"
    if name.startswith(_RESERVED_PREFIXES):
        return "Bucket name must not start with a reserved prefix"
    if name.endswith(_RESERVED_SUFFIXES):
        return "Bucket name must not end with a reserved suffix"
    return None


def is_valid_bucket_name(name: str) -> bool:
    return _bucket_problem(name) is None


def check_bucket_name(name: str) -> str:
    """Return ``name`` or raise InvalidBucketName."""
    problem = _bucket_problem(name)
    if problem is not None:
        raise S3Error.of("InvalidBucketName", problem, bucket=name)
    return name


def check_key(key: str, max_bytes: int = None) -> str:
    """Return ``key`` if it is 1..1024 bytes (or `max_bytes`, if the store's limit is
    lower) of valid UTF-8; raise otherwise."""
    limit = MAX_KEY_BYTES if max_bytes is None else min(max_bytes, MAX_KEY_BYTES)
    if not key:
        raise S3Error.of("UserKeyMustBeSpecified", "The object key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: not valid UTF-8
        raise S3Error.of("InvalidArgument", "Object key is not valid UTF-8") from None
    if size > limit:
        raise S3Error.of(
            "KeyTooLongError",
            MaxSizeAllowed=str(limit),
            Size=str(size),
        )
    return key


def decode_key(raw: str | bytes) -> str:
    """Decode and check a key taken from a request path.

    A ``str`` is the raw, percent-encoded path segment (``+`` stays a literal
    plus: paths are not form-encoded); ``bytes`` are taken as already decoded.
    Bytes that are not UTF-8 are refused (InvalidURI), as are keys over 1024
    bytes (KeyTooLongError).
    """
    data = raw if isinstance(raw, bytes) else unquote_to_bytes(raw)
    try:
        key = data.decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error.of("InvalidURI", "Object key is not valid UTF-8") from None
    return check_key(key)

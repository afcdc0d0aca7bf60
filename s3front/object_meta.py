"""What an object keeps of its request headers, and how it gives them back.

Stored: the standard content headers, `x-amz-meta-*` (user metadata, 2 KiB at most as
in S3) and the flexible checksums. The `aws-chunked` content coding is a transfer
detail and is never stored.
"""

from __future__ import annotations

import functools
from email.utils import formatdate

from .errors import S3Error

CONTENT_HEADERS = ("Content-Type", "Content-Encoding", "Content-Disposition",
                   "Content-Language", "Cache-Control", "Expires")
_OVERRIDES = {"response-content-type": "Content-Type", "response-content-language": "Content-Language",
              "response-expires": "Expires", "response-cache-control": "Cache-Control",
              "response-content-disposition": "Content-Disposition",
              "response-content-encoding": "Content-Encoding"}
USER_META_LIMIT = 2048
DEFAULT_TYPE = "binary/octet-stream"


def from_request(headers, checksums: dict | None = None) -> dict:
    stored = {}
    for name in CONTENT_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if name == "Content-Encoding":
            codings = [c.strip() for c in value.split(",") if c.strip() and c.strip() != "aws-chunked"]
            if not codings:
                continue
            value = ",".join(codings)
        stored[name] = value
    user = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith("x-amz-meta-"):
            user[lname[len("x-amz-meta-"):]] = value
    if sum(len(k) + len(v) for k, v in user.items()) > USER_META_LIMIT:
        raise S3Error.of("MetadataTooLarge")
    return {"headers": stored, "user": user, "checksums": dict(checksums or {})}


def response_headers(info, query=None) -> dict:
    """Headers of a GET/HEAD answer for an object (ObjectInfo)."""
    meta = info.meta or {}
    out = {"ETag": f'"{info.etag}"', "Last-Modified": http_date(info.mtime_ms),
           "Accept-Ranges": "bytes"}
    stored = meta.get("headers", {})
    out["Content-Type"] = stored.get("Content-Type", DEFAULT_TYPE)
    for name, value in stored.items():
        out[name] = value
    for k, v in meta.get("user", {}).items():
        out["x-amz-meta-" + k] = v
    if info.parts:
        out["x-amz-mp-parts-count"] = str(len(info.parts))
    for param, header in _OVERRIDES.items():
        if query is not None and param in query:
            out[header] = query[param]
    return out


def http_date(ms: int) -> str:
    return _http_date_s(ms // 1000)


@functools.lru_cache(maxsize=4096)
def _http_date_s(seconds: int) -> str:
    """Last-Modified has one-second resolution, and the objects read often share
    their few seconds: formatting costs 4% of a small GET, a cache hit almost nothing."""
    return formatdate(seconds, usegmt=True)

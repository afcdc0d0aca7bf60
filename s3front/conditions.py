"""Conditional requests and byte ranges, as S3 answers them.

Evaluation order follows RFC 7232 section 6, which is what S3 does: If-Match, then
If-Unmodified-Since (only without If-Match), then If-None-Match, then
If-Modified-Since (only without If-None-Match). Failed preconditions on a read give
304 Not Modified for the "none-match"/"modified-since" pair and 412 otherwise.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from .errors import S3Error


def _etags(value: str) -> list[str]:
    return [v.strip().strip('"') for v in value.split(",") if v.strip()]


def _matches(header: str, etag: str) -> bool:
    tags = _etags(header)
    return "*" in tags or etag in tags


def _when(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None  # S3 ignores an unparseable date


class NotModified(Exception):
    """304: the client's copy is current."""


def check(headers, etag: str, mtime_ms: int, prefix: str = "") -> None:
    """Raise S3Error(PreconditionFailed) or NotModified; `prefix` selects the
    x-amz-copy-source-if-* family (which gives 412 in every failing case)."""
    seconds = mtime_ms // 1000  # HTTP dates have whole seconds
    im = headers.get(prefix + "If-Match")
    ius = _when(headers.get(prefix + "If-Unmodified-Since"))
    inm = headers.get(prefix + "If-None-Match")
    ims = _when(headers.get(prefix + "If-Modified-Since"))
    if im is not None:
        if not _matches(im, etag):
            raise S3Error.of("PreconditionFailed", Condition=prefix + "If-Match")
    elif ius is not None and seconds > ius:
        raise S3Error.of("PreconditionFailed", Condition=prefix + "If-Unmodified-Since")
    if inm is not None:
        if _matches(inm, etag):
            if prefix:
                raise S3Error.of("PreconditionFailed", Condition=prefix + "If-None-Match")
            raise NotModified()
    elif ims is not None and seconds <= ims:
        if prefix:
            raise S3Error.of("PreconditionFailed", Condition=prefix + "If-Modified-Since")
        raise NotModified()


def write_conditions(headers) -> dict:
    """If-None-Match / If-Match on a write (PutObject, CompleteMultipartUpload), as
    fields of the log entry, which judges them atomically when it is applied. S3 takes
    only `*` for If-None-Match on a write."""
    out = {}
    inm = headers.get("If-None-Match")
    if inm is not None:
        if inm.strip() != "*":
            raise S3Error.of("NotImplemented", "If-None-Match on a write only takes '*'.")
        out["if_none_match"] = True
    im = headers.get("If-Match")
    if im is not None:
        out["if_match"] = im.strip()
    return out


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) for a single `bytes=` range, None for no (or an ignorable) range;
    raises InvalidRange (416) when the range cannot be satisfied."""
    if not value:
        return None
    value = value.strip()
    if not value.startswith("bytes=") or "," in value:
        return None  # S3 ignores what it does not support, and serves the whole object
    spec = value[len("bytes="):].strip()
    first, dash, last = spec.partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                raise _unsatisfiable(size)
            return max(size - n, 0), size
        start = int(first)
        end = int(last) + 1 if last != "" else size
    except ValueError:
        return None
    if start < 0 or (last != "" and end <= start):
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def parse_copy_range(value: str, size: int) -> tuple[int, int]:
    """x-amz-copy-source-range: must be `bytes=a-b` and inside the source."""
    spec = value.strip()
    if not spec.startswith("bytes="):
        raise S3Error.of("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last")
    first, _, last = spec[6:].partition("-")
    try:
        start, end = int(first), int(last) + 1
    except ValueError:
        raise S3Error.of("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last") from None
    if start < 0 or end <= start or end > size:
        raise S3Error.of("InvalidRange", "The requested range is not satisfiable",
                         ActualObjectSize=str(size), RangeRequested=value)
    return start, end


def _unsatisfiable(size: int) -> S3Error:
    err = S3Error.of("InvalidRange", "The requested range is not satisfiable",
                     ActualObjectSize=str(size))
    err.headers = {"Content-Range": f"bytes */{size}"}
    return err

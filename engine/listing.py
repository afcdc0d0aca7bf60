"""S3 listing over the catalog: prefix, delimiter, start-after, max-keys, in UTF-8
byte order, costing O(page) cursor steps rather than a bucket scan.

A common prefix is emitted once and then skipped in one seek: keys are valid UTF-8,
which never contains the byte 0xFF, so `prefix + b"\\xff"` sorts after every key that
starts with `prefix`. The rule for the marker is strict: everything returned, keys and
common prefixes alike, sorts after start_after, so a caller can page with the last
item returned (S3's NextMarker / continuation token) and never see it twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import CatalogTxn, bucket_prefix, unpack

_AFTER_ALL = b"\xff"


@dataclass
class ListPage:
    entries: list = field(default_factory=list)  # [(key, record)]
    common_prefixes: list = field(default_factory=list)  # [str]
    is_truncated: bool = False
    next_marker: str | None = None  # the last key or common prefix returned


def _walk(cur, base: bytes, prefix: bytes, delimiter: bytes, start_after: bytes,
          max_items: int, decode_value: bool = True):
    """Yields ("key", rel, value) / ("prefix", rel, None) in order, max_items + 1 at most
    (the extra one tells the caller the page is truncated)."""
    seek = base + prefix
    if start_after and start_after >= prefix:
        seek = max(seek, base + start_after + b"\0")
    full_prefix = base + prefix
    found = cur.set_range(seek)
    produced = 0
    while found and produced <= max_items:
        k = cur.key()
        if not k.startswith(full_prefix):
            return
        rel = bytes(k[len(base):])
        if delimiter:
            i = rel.find(delimiter, len(prefix))
            if i >= 0:
                cp = rel[: i + len(delimiter)]
                if not (start_after and cp <= start_after):
                    yield "prefix", cp, None
                    produced += 1
                found = cur.set_range(base + cp + _AFTER_ALL)
                continue
        yield "key", rel, (unpack(cur.value()) if decode_value else None)
        produced += 1
        found = cur.next()


def list_objects(t: CatalogTxn, bucket: str, prefix: str = "", delimiter: str = "",
                 start_after: str = "", max_keys: int = 1000) -> ListPage:
    page = ListPage()
    if max_keys <= 0:  # as S3: nothing listed, and nothing left to resume from
        return page
    cur = t.cursor("objects")
    count = 0
    for kind, rel, value in _walk(cur, bucket_prefix(bucket), prefix.encode(),
                                  delimiter.encode(), start_after.encode(), max_keys):
        if count == max_keys:
            page.is_truncated = True
            break
        name = rel.decode()
        if kind == "prefix":
            page.common_prefixes.append(name)
        else:
            page.entries.append((name, value))
        page.next_marker = name
        count += 1
    return page


@dataclass
class UploadPage:
    uploads: list = field(default_factory=list)  # [(key, upload_id, record)]
    common_prefixes: list = field(default_factory=list)
    is_truncated: bool = False
    next_key_marker: str | None = None
    next_upload_id_marker: str | None = None


def list_uploads(t: CatalogTxn, bucket: str, prefix: str = "", delimiter: str = "",
                 key_marker: str = "", upload_id_marker: str = "",
                 max_uploads: int = 1000) -> UploadPage:
    """In-progress multipart uploads, ordered by key then upload id (S3's order for
    ListMultipartUploads; upload ids here are generated in time order)."""
    page = UploadPage()
    if max_uploads <= 0:
        return page
    base = bucket_prefix(bucket)
    cur = t.cursor("uploads")
    pfx, delim = prefix.encode(), delimiter.encode()
    km = key_marker.encode()
    seek = base + pfx
    if km:
        # S3: with upload-id-marker, uploads of key_marker after that id are listed;
        # without it, listing starts after key_marker entirely.
        after = km + b"\0" + upload_id_marker.encode() + b"\0" if upload_id_marker else km + b"\x01"
        seek = max(seek, base + after)
    found = cur.set_range(seek)
    count = 0
    while found:
        k = bytes(cur.key())
        if not k.startswith(base + pfx):
            break
        rel = k[len(base):]
        okey, _, uid = rel.rpartition(b"\0")
        if delim:
            i = okey.find(delim, len(pfx))
            if i >= 0:
                cp = okey[: i + len(delim)]
                if not (km and cp <= km):
                    if count == max_uploads:
                        page.is_truncated = True
                        break
                    page.common_prefixes.append(cp.decode())
                    page.next_key_marker, page.next_upload_id_marker = cp.decode(), None
                    count += 1
                found = cur.set_range(base + cp + _AFTER_ALL)
                continue
        if count == max_uploads:
            page.is_truncated = True
            break
        page.uploads.append((okey.decode(), uid.decode(), unpack(cur.value())))
        page.next_key_marker, page.next_upload_id_marker = okey.decode(), uid.decode()
        count += 1
        found = cur.next()
    return page

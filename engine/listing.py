"""S3 listing over the catalog: prefix, delimiter, start-after, max-keys, in UTF-8
byte order, costing O(page) cursor steps rather than a bucket scan.

A common prefix is emitted once and then skipped in one seek: keys are valid UTF-8,
which never contains the byte 0xFF, so `prefix + b"\\xff\\x00"` sorts after every key
that starts with `prefix` (and after a long-key group stored under `prefix + 0xFF`).
Long-key groups (keys over 380 bytes, see catalog.py) are expanded in place, in
order. The rule for the marker is strict: everything returned, keys and
common prefixes alike, sorts after start_after, so a caller can page with the last
item returned (S3's NextMarker / continuation token) and never see it twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import GROUP_MARK, SHORT_KEY, CatalogTxn, bucket_prefix, is_group, unpack

# Seek here to skip every key starting with cp: keys are UTF-8 (no 0xFF), so only a
# long-key group stored under exactly cp + 0xFF sits between, and its members start
# with cp too.
_AFTER_ALL = b"\xff\x00"


@dataclass
class ListPage:
    entries: list = field(default_factory=list)  # [(key, record)]
    common_prefixes: list = field(default_factory=list)  # [str]
    is_truncated: bool = False
    next_marker: str | None = None  # the last key or common prefix returned


def _walk(cur, base: bytes, prefix: bytes, delimiter: bytes, start_after: bytes,
          max_items: int):
    """Yields ("key", rel, record) / ("prefix", rel, None) in order, max_items + 1 at most
    (the extra one tells the caller the page is truncated). Long-key groups (see
    catalog.py) are expanded in place, in order."""
    produced = 0
    if len(prefix) > SHORT_KEY:
        # every key with this prefix lives in one long-key group
        if cur.set_key(base + prefix[:SHORT_KEY] + GROUP_MARK):
            yield from _group_items(cur, base, prefix, delimiter, start_after, max_items)
        return
    seek = base + prefix
    if start_after and start_after >= prefix:
        seek = max(seek, base + (start_after[:SHORT_KEY] if len(start_after) > SHORT_KEY
                                 else start_after + b"\0"))
    full_prefix = base + prefix
    found = cur.set_range(seek)
    while found and produced <= max_items:
        k = cur.key()
        if not k.startswith(full_prefix):
            return
        rel = bytes(k[len(base):])
        if is_group(rel):
            for item in _group_items(cur, base, prefix, delimiter, start_after, max_items - produced):
                if item[0] == "seek":
                    found = cur.set_range(base + item[1] + _AFTER_ALL)
                    break
                yield item
                produced += 1
            else:
                found = cur.next()
            continue
        if delimiter:
            i = rel.find(delimiter, len(prefix))
            if i >= 0:
                cp = rel[: i + len(delimiter)]
                if not (start_after and cp <= start_after):
                    yield "prefix", cp, None
                    produced += 1
                found = cur.set_range(base + cp + _AFTER_ALL)
                continue
        if not (start_after and rel <= start_after):
            yield "key", rel, unpack(cur.value())
            produced += 1
        found = cur.next()


def _group_items(cur, base, prefix, delimiter, start_after, budget):
    """The members of the long-key group under the cursor, in key order, as _walk
    yields them; ("seek", cp) when a common prefix covers the rest of the group (and
    maybe more), so the caller seeks past it."""
    head = bytes(cur.key()[len(base):-1])
    produced = 0
    skip_cp = None
    for suffix, rec in unpack(cur.value()):
        if produced > budget:
            return
        full = head + bytes(suffix)
        if not full.startswith(prefix) or (start_after and full <= start_after):
            continue
        if skip_cp is not None and full.startswith(skip_cp):
            continue
        if delimiter:
            i = full.find(delimiter, len(prefix))
            if i >= 0:
                cp = full[: i + len(delimiter)]
                if not (start_after and cp <= start_after):
                    yield "prefix", cp, None
                    produced += 1
                if len(cp) <= SHORT_KEY:  # covers the whole group: leave it
                    yield "seek", cp, None
                    return
                skip_cp = cp  # members sharing it are next to each other
                continue
        yield "key", full, rec
        produced += 1


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
        okey_enc, _, uid = rel.rpartition(b"\0")
        rec = unpack(cur.value())
        okey = rec["key"].encode()  # the real key (long keys are encoded in the table key)
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
                if len(cp) <= SHORT_KEY:
                    found = cur.set_range(base + cp + _AFTER_ALL)
                else:
                    found = cur.next()
                continue
        if count == max_uploads:
            page.is_truncated = True
            break
        page.uploads.append((okey.decode(), uid.decode(), rec))
        page.next_key_marker, page.next_upload_id_marker = okey.decode(), uid.decode()
        count += 1
        found = cur.next()
    return page

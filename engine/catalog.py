"""The catalog: LMDB tables for buckets, objects, multipart uploads, chunk locations,
per-segment space accounting, and the engine's own bookkeeping.

LMDB is opened without per-commit sync: durability comes from the WAL, and every
write transaction stores `catalog_wal_lsn`, the LSN of the last WAL record whose
effect it holds. That number plays ARIES' pageLSN for the one "page" the catalog is,
so redo replays exactly the records after it, and is idempotent. Checkpoints force
LMDB to disk.

Keys (all byte strings, so LMDB's order is S3's UTF-8 byte order):
    buckets   name                                   -> {created_ms, region}
    objects   bucket "/" key                          -> object record
    uploads   bucket "/" key "\\0" upload_id          -> {initiated_ms, meta}
    upload_ix upload_id                               -> bucket "/" key
    parts     upload_id "\\0" part_number (u32 BE)    -> part record
    chunks    chunk id (32-byte SHA-256)              -> [wal lsn | -1 MISSING | -2 COLD, record bytes,
                                                          refs, intro_lsn]
    missing   chunk id                                -> b"" (exactly the chunks rows that are MISSING)
    cold      chunk id                                -> b"" (exactly the chunks rows that are COLD)
    segments  segment start LSN (u64 BE)              -> [live bytes, dead bytes, max_raft]
    cold_segments last log LSN (u64 BE)               -> {first, last, locations}
    meta      name                                    -> value

intro_lsn is the log LSN of the entry that created a chunk row (0: created before
format 3), the same on every replica; the cold segment holding that entry holds the
chunk. max_raft is the highest log LSN that still needs a WAL segment: of its APPLY
records, of entries that introduced a chunk located there, of a filled row's intro.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
from contextlib import contextmanager

import lmdb
import msgpack

# 2: the `missing` table; 3: intro_lsn in chunk rows, max_raft in segment rows, the
# `cold` and `cold_segments` tables. Older catalogs are upgraded on open.
FORMAT_VERSION = 3
MISSING = -1  # chunk row location: referenced, not held here, to be fetched from a peer
COLD = -2  # chunk row location: referenced, held only in cold storage
LMDB_MAX_KEY = 511  # LMDB's compiled-in key limit (lmdb.Environment.max_key_size())
UPLOAD_ID_MAX = 40
MAX_OBJECT_KEY = 1024  # S3's limit
# Object keys longer than SHORT_KEY bytes do not fit LMDB's keys: all those sharing
# their first SHORT_KEY bytes P live in one "long-key group" stored under P + 0xFF
# (no UTF-8 key contains 0xFF, and P + 0xFF sorts after every key of the form
# P + <UTF-8>), as a list sorted by the rest of the key. Listing expands a group in
# place, so S3's byte order stays exact. 64 (bucket "/") + 380 + 1 + 8 + 1 + 40 (an
# upload's key, below) fits in 511.
SHORT_KEY = 380
GROUP_MARK = b"\xff"


def max_key_bytes(bucket: str) -> int:
    """The longest object key (UTF-8 bytes) the catalog holds: S3's 1024."""
    return MAX_OBJECT_KEY

_TABLES = ("buckets", "objects", "uploads", "upload_ix", "parts", "chunks", "missing", "cold",
           "segments", "cold_segments", "meta")
TABLES = _TABLES  # for tools that read a catalog without this class (read-only)
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data) -> object:
    return msgpack.unpackb(data, raw=False)


def object_key(bucket: str, key: str) -> bytes:
    """The LMDB key of an object, or of its long-key group."""
    kb = key.encode()
    if len(kb) > SHORT_KEY:
        kb = kb[:SHORT_KEY] + GROUP_MARK
    return bucket.encode() + b"/" + kb


def is_group(rel: bytes) -> bool:
    return len(rel) == SHORT_KEY + 1 and rel[-1:] == GROUP_MARK


def bucket_prefix(bucket: str) -> bytes:
    return bucket.encode() + b"/"


def upload_key(bucket: str, key: str, upload_id: str) -> bytes:
    """Uploads of a long key sit under its first SHORT_KEY bytes, 0xFF and 8 bytes of
    its hash: in order except among long keys sharing SHORT_KEY bytes (hash order)."""
    kb = key.encode()
    if len(kb) > SHORT_KEY:
        kb = kb[:SHORT_KEY] + GROUP_MARK + hashlib.sha256(kb).digest()[:8]
    return bucket.encode() + b"/" + kb + b"\0" + upload_id.encode()


def part_key(upload_id: str, number: int) -> bytes:
    return upload_id.encode() + b"\0" + _U32.pack(number)


class Catalog:
    def __init__(self, path: str, map_size: int = 64 << 30, sync: bool = False,
                 wal_segments=()):
        """`wal_segments`: the WAL segments on disk now, given rows when an older
        catalog is upgraded (a format-2 catalog has no row for a segment without
        chunk records, yet its APPLY records may still be needed by the shipper)."""
        os.makedirs(path, exist_ok=True)
        self.env = lmdb.open(path, map_size=map_size, max_dbs=len(_TABLES) + 1,
                             sync=sync, metasync=False, writemap=False, readahead=False)
        self.db = {name: self.env.open_db(name.encode()) for name in _TABLES}
        with self.write() as t:
            fmt = t.meta("format")
            if fmt is None:
                t.set_meta("format", FORMAT_VERSION)
            elif fmt in (1, 2):
                _upgrade(t, fmt, wal_segments)
                t.set_meta("format", FORMAT_VERSION)
            elif fmt != FORMAT_VERSION:
                raise RuntimeError(f"catalog format {fmt} is not {FORMAT_VERSION}")

    @contextmanager
    def read(self):
        with self.env.begin(buffers=False) as txn:
            yield CatalogTxn(self, txn)

    @contextmanager
    def write(self):
        with self.env.begin(write=True) as txn:
            t = CatalogTxn(self, txn)
            yield t
            t.flush()

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()


def _upgrade(t: "CatalogTxn", fmt: int, wal_segments) -> None:
    """Format 1 or 2 to 3, in the caller's write transaction (all or nothing).
    1: build `missing` from the chunk rows. 2: chunk rows get intro_lsn 0 ("from before
    cold tracking": never in cold storage, never evicted); segment rows, and rows for
    WAL segments that had none, get max_raft = applied_lsn (conservative: kept for the
    shipper until the cold HWM passes everything applied before the upgrade); the
    highest log LSN that may have been in a deleted segment is applied_lsn too."""
    rows = list(t.chunks())
    if fmt == 1:
        for cid, row in rows:
            if row[0] == MISSING:
                t.add_missing(cid)
    for cid, row in rows:
        t._put("chunks", cid, [row[0], row[1], row[2], 0])
    applied = t.meta("applied_lsn", 0)
    segs = dict(t.segments())
    for start in wal_segments:
        segs.setdefault(start, [0, 0])
    for start, row in segs.items():
        t._put("segments", _U64.pack(start), [row[0], row[1], applied])
    t.set_meta("wal_gone_raft", applied)


class CatalogTxn:
    """Typed access to the tables inside one LMDB transaction.

    A write transaction may cover a whole publisher batch of entries, so the hottest
    bookkeeping is gathered in memory and written once at the end (`flush`): segment
    byte counts are summed, deferred meta values keep the last one, and bucket records
    are read once. (py-lmdb releases the GIL on every call, which makes each call
    expensive while the event loop thread is busy: fewer calls, more commits/s.)"""

    __slots__ = ("cat", "txn", "_seg_delta", "_meta_later", "_buckets")

    def __init__(self, cat: Catalog, txn: lmdb.Transaction):
        self.cat = cat
        self.txn = txn
        self._seg_delta: dict = {}
        self._meta_later: dict = {}
        self._buckets: dict = {}

    def flush(self) -> None:
        for start, (live, dead, max_raft) in self._seg_delta.items():
            cur = self._get("segments", _U64.pack(start)) or [0, 0, 0]
            self._put("segments", _U64.pack(start),
                      [cur[0] + live, cur[1] + dead, max(cur[2], max_raft)])
        self._seg_delta.clear()
        for name, value in self._meta_later.items():
            self._put("meta", name.encode(), value)
        self._meta_later.clear()

    def _get(self, table, key):
        raw = self.txn.get(key, db=self.cat.db[table])
        return None if raw is None else unpack(raw)

    def _put(self, table, key, value):
        self.txn.put(key, pack(value), db=self.cat.db[table])

    def _delete(self, table, key):
        self.txn.delete(key, db=self.cat.db[table])

    def cursor(self, table: str) -> lmdb.Cursor:
        return self.txn.cursor(db=self.cat.db[table])

    # meta
    def meta(self, name: str, default=None):
        v = self._get("meta", name.encode())
        return default if v is None else v

    def set_meta(self, name: str, value) -> None:
        self._meta_later.pop(name, None)
        self._put("meta", name.encode(), value)

    def set_meta_at_end(self, name: str, value) -> None:
        """Written by flush(): for values overwritten by every entry of a batch."""
        self._meta_later[name] = value

    # buckets
    def bucket(self, name: str):
        if name not in self._buckets:
            self._buckets[name] = self._get("buckets", name.encode())
        return self._buckets[name]

    def put_bucket(self, name: str, record: dict) -> None:
        self._buckets[name] = record
        self._put("buckets", name.encode(), record)

    def delete_bucket(self, name: str) -> None:
        self._buckets[name] = None
        self._delete("buckets", name.encode())

    def buckets(self):
        for k, v in self.cursor("buckets"):
            yield k.decode(), unpack(v)

    def bucket_has_objects(self, name: str) -> bool:
        return self._has_prefix("objects", bucket_prefix(name))

    def _has_prefix(self, table: str, prefix: bytes) -> bool:
        cur = self.cursor(table)
        return cur.set_range(prefix) and cur.key().startswith(prefix)

    # objects
    def object(self, bucket: str, key: str):
        kb = key.encode()
        if len(kb) <= SHORT_KEY:
            return self._get("objects", object_key(bucket, key))
        group, i, found = self._group_slot(bucket, key, kb)
        return group[i][1] if found else None

    def put_object(self, bucket: str, key: str, record: dict) -> None:
        kb = key.encode()
        if len(kb) <= SHORT_KEY:
            self._put("objects", object_key(bucket, key), record)
            return
        group, i, found = self._group_slot(bucket, key, kb)
        if found:
            group[i][1] = record
        else:
            group.insert(i, [kb[SHORT_KEY:], record])
        self._put("objects", object_key(bucket, key), group)

    def delete_object(self, bucket: str, key: str) -> None:
        kb = key.encode()
        if len(kb) <= SHORT_KEY:
            self._delete("objects", object_key(bucket, key))
            return
        group, i, found = self._group_slot(bucket, key, kb)
        if not found:
            return
        del group[i]
        if group:
            self._put("objects", object_key(bucket, key), group)
        else:
            self._delete("objects", object_key(bucket, key))

    def _group_slot(self, bucket: str, key: str, kb: bytes) -> tuple[list, int, bool]:
        """(the long-key group of key, where key is or would be in it, is it there)."""
        group = self._get("objects", object_key(bucket, key)) or []
        suffix = kb[SHORT_KEY:]
        i = bisect.bisect_left([bytes(s) for s, _r in group], suffix)
        return group, i, i < len(group) and bytes(group[i][0]) == suffix

    # multipart
    def upload(self, bucket: str, key: str, upload_id: str):
        return self._get("uploads", upload_key(bucket, key, upload_id))

    def put_upload(self, bucket: str, key: str, upload_id: str, record: dict) -> None:
        self._put("uploads", upload_key(bucket, key, upload_id), dict(record, key=key))
        self.txn.put(upload_id.encode(), bucket.encode() + b"/" + key.encode(),
                     db=self.cat.db["upload_ix"])

    def delete_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._delete("uploads", upload_key(bucket, key, upload_id))
        self._delete("upload_ix", upload_id.encode())

    def upload_owner(self, upload_id: str) -> tuple[str, str] | None:
        raw = self.txn.get(upload_id.encode(), db=self.cat.db["upload_ix"])
        if raw is None:
            return None
        bucket, _, key = bytes(raw).partition(b"/")
        return bucket.decode(), key.decode()

    def part(self, upload_id: str, number: int):
        return self._get("parts", part_key(upload_id, number))

    def put_part(self, upload_id: str, number: int, record: dict) -> None:
        self._put("parts", part_key(upload_id, number), record)

    def delete_part(self, upload_id: str, number: int) -> None:
        self._delete("parts", part_key(upload_id, number))

    def parts(self, upload_id: str, after: int = 0):
        """(number, record) for the parts of an upload, in part-number order."""
        prefix = upload_id.encode() + b"\0"
        cur = self.cursor("parts")
        if not cur.set_range(prefix + _U32.pack(after + 1 if after < 0xFFFFFFFF else after)):
            return
        for k, v in cur:
            if not k.startswith(prefix):
                return
            yield _U32.unpack(k[len(prefix):])[0], unpack(v)

    # chunks
    def chunk(self, chunk_id: bytes):
        return self._get("chunks", chunk_id)

    def put_chunk(self, chunk_id: bytes, lsn: int, rec_size: int, refs: int,
                  intro_lsn: int) -> None:
        self._put("chunks", chunk_id, [lsn, rec_size, refs, intro_lsn])

    def delete_chunk(self, chunk_id: bytes) -> None:
        self._delete("chunks", chunk_id)

    def chunks(self):
        for k, v in self.cursor("chunks"):
            yield bytes(k), unpack(v)

    # missing chunks: kept by the state machine in step with the MISSING chunk rows
    def add_missing(self, chunk_id: bytes) -> None:
        self.txn.put(chunk_id, b"", db=self.cat.db["missing"])

    def remove_missing(self, chunk_id: bytes) -> None:
        self.txn.delete(chunk_id, db=self.cat.db["missing"])

    def missing(self, limit: int):
        """Up to `limit` ids of chunks referenced here but not held, in id order."""
        out = []
        if limit <= 0:
            return out
        for k in self.cursor("missing").iternext(keys=True, values=False):
            out.append(bytes(k))
            if len(out) >= limit:
                break
        return out

    # cold chunks: kept in step with the COLD chunk rows (so they are counted cheaply)
    def add_cold(self, chunk_id: bytes) -> None:
        self.txn.put(chunk_id, b"", db=self.cat.db["cold"])

    def remove_cold(self, chunk_id: bytes) -> None:
        self.txn.delete(chunk_id, db=self.cat.db["cold"])

    # cold segments: the log LSN ranges shipped to cold storage, keyed by last LSN
    def put_cold_segment(self, first: int, last: int, locations: dict) -> None:
        self._put("cold_segments", _U64.pack(last),
                  {"first": first, "last": last, "locations": locations})

    def delete_cold_segment(self, last: int) -> None:
        self._delete("cold_segments", _U64.pack(last))

    def cold_segment_for(self, lsn: int) -> dict | None:
        """The cold segment whose [first, last] holds lsn: the first row keyed at or
        after lsn (one cursor seek), if its range starts at or before lsn."""
        if lsn < 0:
            return None
        cur = self.cursor("cold_segments")
        if not cur.set_range(_U64.pack(lsn)):
            return None
        row = unpack(cur.value())
        return row if row["first"] <= lsn else None

    def cold_segments(self, after_last: int = 0, limit: int = 1000) -> list:
        """Up to `limit` cold segments with last LSN above after_last, in LSN order."""
        out = []
        if limit <= 0:
            return out
        cur = self.cursor("cold_segments")
        if not cur.set_range(_U64.pack(after_last + 1)):
            return out
        for _k, v in cur:
            out.append(unpack(v))
            if len(out) >= limit:
                break
        return out

    def count(self, table: str) -> int:
        """Entries in a table (LMDB keeps the count: no scan)."""
        return self.txn.stat(self.cat.db[table])["entries"]

    # segment accounting
    def segment(self, start: int) -> list:
        """[live, dead, max_raft] of a segment, including this transaction's changes."""
        cur = self._get("segments", _U64.pack(start)) or [0, 0, 0]
        live, dead, max_raft = self._seg_delta.get(start, (0, 0, 0))
        return [cur[0] + live, cur[1] + dead, max(cur[2], max_raft)]

    def add_segment_bytes(self, start: int, live: int = 0, dead: int = 0) -> None:
        cur = self._seg_delta.get(start, (0, 0, 0))
        self._seg_delta[start] = (cur[0] + live, cur[1] + dead, cur[2])

    def note_segment_raft(self, start: int, raft_lsn: int) -> None:
        """The entry at log LSN raft_lsn needs this segment (max_raft never decreases)."""
        cur = self._seg_delta.get(start, (0, 0, 0))
        if raft_lsn > cur[2]:
            self._seg_delta[start] = (cur[0], cur[1], raft_lsn)

    def delete_segment(self, start: int) -> None:
        self._seg_delta.pop(start, None)
        self._delete("segments", _U64.pack(start))

    def segments(self):
        for k, v in self.cursor("segments"):
            yield _U64.unpack(k)[0], unpack(v)

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
    chunks    chunk id (32-byte SHA-256)              -> [lsn or -1 if missing, record bytes, refs]
    missing   chunk id                                -> b"" (exactly the chunks rows that are MISSING)
    segments  segment start LSN (u64 BE)              -> [live bytes, dead bytes]
    meta      name                                    -> value
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
from contextlib import contextmanager

import lmdb
import msgpack

FORMAT_VERSION = 2  # 2: the `missing` table (a format-1 catalog is upgraded on open)
MISSING = -1
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

_TABLES = ("buckets", "objects", "uploads", "upload_ix", "parts", "chunks", "missing", "segments",
           "meta")
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
    def __init__(self, path: str, map_size: int = 64 << 30, sync: bool = False):
        os.makedirs(path, exist_ok=True)
        self.env = lmdb.open(path, map_size=map_size, max_dbs=len(_TABLES) + 1,
                             sync=sync, metasync=False, writemap=False, readahead=False)
        self.db = {name: self.env.open_db(name.encode()) for name in _TABLES}
        with self.write() as t:
            fmt = t.meta("format")
            if fmt is None:
                t.set_meta("format", FORMAT_VERSION)
            elif fmt == 1:  # before the `missing` table: build it from the chunk rows, once
                for cid, row in list(t.chunks()):
                    if row[0] == MISSING:
                        t.add_missing(cid)
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
        for start, (live, dead) in self._seg_delta.items():
            cur = self._get("segments", _U64.pack(start)) or [0, 0]
            self._put("segments", _U64.pack(start), [cur[0] + live, cur[1] + dead])
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

    def put_chunk(self, chunk_id: bytes, lsn: int, rec_size: int, refs: int) -> None:
        self._put("chunks", chunk_id, [lsn, rec_size, refs])

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

    def count(self, table: str) -> int:
        """Entries in a table (LMDB keeps the count: no scan)."""
        return self.txn.stat(self.cat.db[table])["entries"]

    # segment accounting
    def segment(self, start: int) -> list:
        cur = self._get("segments", _U64.pack(start)) or [0, 0]
        live, dead = self._seg_delta.get(start, (0, 0))
        return [cur[0] + live, cur[1] + dead]

    def add_segment_bytes(self, start: int, live: int = 0, dead: int = 0) -> None:
        cur = self._seg_delta.get(start, (0, 0))
        self._seg_delta[start] = (cur[0] + live, cur[1] + dead)

    def delete_segment(self, start: int) -> None:
        self._seg_delta.pop(start, None)
        self._delete("segments", _U64.pack(start))

    def segments(self):
        for k, v in self.cursor("segments"):
            yield _U64.unpack(k)[0], unpack(v)

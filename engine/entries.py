"""The committed log entries an engine applies: small metadata, never object bytes.

Every field a replica needs to reach the same state is in the entry (timestamps,
upload ids, the proposer's minimum part size), so applying is deterministic: the same
entries in the same LSN order give byte-identical catalogs on every replica.
Chunks are referenced by id with their length: `chunks` is a list of (id, length).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import msgpack

Chunks = list  # list[tuple[bytes, int]]: (sha256 chunk id, length)


@dataclass(frozen=True)
class Entry:
    OP: ClassVar[str] = ""
    REGISTRY: ClassVar[dict] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Entry.REGISTRY[cls.OP] = cls

    @property
    def txn(self) -> bytes | None:
        return None


@dataclass(frozen=True)
class CreateBucket(Entry):
    OP: ClassVar[str] = "create_bucket"
    bucket: str
    created_ms: int
    region: str = ""


@dataclass(frozen=True)
class DeleteBucket(Entry):
    OP: ClassVar[str] = "delete_bucket"
    bucket: str
    at_ms: int = 0  # when it was proposed: point-in-time restores find it by time


@dataclass(frozen=True)
class PutObject(Entry):
    OP: ClassVar[str] = "put_object"
    bucket: str
    key: str
    size: int
    etag: str
    chunks: Chunks
    mtime_ms: int
    meta: dict = field(default_factory=dict)  # content headers, x-amz-meta-*, checksums
    txn_id: bytes | None = None
    parts: list | None = None  # multipart layout: [(part size, chunk count)], for partNumber reads
    if_none_match: bool = False  # create only: PreconditionFailed if the key exists
    if_match: str | None = None  # replace only this ETag ("*": any existing object)

    @property
    def txn(self):
        return self.txn_id


@dataclass(frozen=True)
class DeleteObject(Entry):
    OP: ClassVar[str] = "delete_object"
    bucket: str
    key: str
    at_ms: int = 0  # when it was proposed: point-in-time restores find it by time


@dataclass(frozen=True)
class DeleteObjects(Entry):
    OP: ClassVar[str] = "delete_objects"
    bucket: str
    keys: list
    at_ms: int = 0  # when it was proposed: point-in-time restores find it by time


@dataclass(frozen=True)
class CopyObject(Entry):
    """Copy by reference: the destination shares the source's chunks. The source is
    read as of this entry's LSN; `if_etag` makes the copy conditional on it."""

    OP: ClassVar[str] = "copy_object"
    src_bucket: str
    src_key: str
    bucket: str
    key: str
    mtime_ms: int
    meta: dict | None = None  # None: COPY the source's metadata; a dict: REPLACE
    if_etag: str | None = None


@dataclass(frozen=True)
class CreateMultipartUpload(Entry):
    OP: ClassVar[str] = "create_upload"
    bucket: str
    key: str
    upload_id: str
    initiated_ms: int
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PutPart(Entry):
    OP: ClassVar[str] = "put_part"
    bucket: str
    key: str
    upload_id: str
    part_number: int
    size: int
    etag: str
    chunks: Chunks
    mtime_ms: int
    checksums: dict = field(default_factory=dict)
    txn_id: bytes | None = None

    @property
    def txn(self):
        return self.txn_id


@dataclass(frozen=True)
class CompleteMultipartUpload(Entry):
    OP: ClassVar[str] = "complete_upload"
    bucket: str
    key: str
    upload_id: str
    parts: list  # [(part number, etag)] as the client listed them
    mtime_ms: int
    min_part_size: int = 5 << 20
    if_none_match: bool = False
    if_match: str | None = None
    # the object's checksum, computed by the front from the parts' ({algorithm, type,
    # value, parts: each listed part's checksum}); applied only if the parts still
    # carry those checksums (a part uploaded again meanwhile: InvalidPart)
    checksum: dict | None = None


@dataclass(frozen=True)
class AbortMultipartUpload(Entry):
    OP: ClassVar[str] = "abort_upload"
    bucket: str
    key: str
    upload_id: str
    at_ms: int = 0  # when it was proposed: point-in-time restores find it by time


@dataclass(frozen=True)
class SegmentShipped(Entry):
    """Cold tier: the LSN range [first, last] is stored in cold storage. Applying it
    advances the cold high-water mark; shard locations are filled in by the cold tier."""

    OP: ClassVar[str] = "segment_shipped"
    first_lsn: int
    last_lsn: int
    locations: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentsCompacted(Entry):
    """Cold compaction: the shipped segments covering exactly [first, last] are
    replaced by one segment (described by `locations`) holding their live chunks."""

    OP: ClassVar[str] = "segments_compacted"
    first_lsn: int
    last_lsn: int
    locations: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointsDropped(Entry):
    """Cold tier: catalog checkpoints no restore inside the history window needs any
    more. Applying it removes their records from the cold segment rows (so `verify`
    stops expecting their shards); the leader then deletes the shards."""

    OP: ClassVar[str] = "checkpoints_dropped"
    ids: list = field(default_factory=list)


@dataclass(frozen=True)
class Noop(Entry):
    """An entry that changes nothing (a new Raft leader's first entry, barriers)."""

    OP: ClassVar[str] = "noop"


def _plain(value):
    """Tuples as lists, recursively: what msgpack gives back, so encode(decode(x)) is x."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) if isinstance(v, (list, tuple, dict)) else v for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) if isinstance(v, (list, tuple, dict)) else v for k, v in value.items()}
    return value


_FIELD_NAMES: dict = {}


_TIME_FIELDS = ("mtime_ms", "created_ms", "initiated_ms", "at_ms")


def entry_time_ms(entry: Entry) -> int | None:
    """When the entry was proposed (wall clock of the proposer), if it says: every
    client-visible change carries a time; Noop and the cold tier's entries do not."""
    for name in _TIME_FIELDS:
        value = getattr(entry, name, None)
        if value:
            return value
    return None


def encode_entry(entry: Entry) -> bytes:
    cls = type(entry)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    body = {name: _plain(getattr(entry, name)) for name in names}
    return msgpack.packb([entry.OP, body], use_bin_type=True)


def decode_entry(data: bytes) -> Entry:
    op, body = msgpack.unpackb(data, raw=False)
    cls = Entry.REGISTRY.get(op)
    if cls is None:
        raise ValueError(f"unknown log entry type {op!r}")
    if "chunks" in body:
        body["chunks"] = [(bytes(c), int(n)) for c, n in body["chunks"]]
    return cls(**body)


__all__ = [name for name, obj in dict(globals()).items()
           if isinstance(obj, type) and issubclass(obj, Entry)] + [
    "encode_entry", "decode_entry", "asdict"]

"""Applying one committed entry to the catalog, deterministically.

Called inside one LMDB write transaction, both at run time and by redo, with the
same inputs (the entry, and the locations of the chunks its transaction wrote here,
which the APPLY record carries), so a replayed entry lands in exactly the same state.
Errors that depend only on catalog state (NoSuchBucket, InvalidPart, ...) are results,
not exceptions: every replica reaches the same verdict, and the proposer reports it.

Chunks are reference counted: objects and parts hold references; a chunk whose count
drops to zero is deleted from the catalog and its bytes count as dead in its segment.
A transaction's chunk that nobody references (a duplicate, or an entry that failed)
is dead at once. A referenced chunk this node does not hold is a MISSING row, listed
in the `missing` table (kept in step here) until a FILL record or a later upload of
the same bytes fills it, or its last reference goes. A RELOCATE record (compaction)
moves a hot row to a copy of its chunk nearer the log's end.

Cold tier: a row remembers the log LSN of the entry that created it (intro_lsn, the
same on every replica), and each WAL segment the highest log LSN that still needs it
(max_raft: its APPLY records, noted by the engine; chunks an entry introduced there;
a filled or relocated row's intro_lsn). A SegmentShipped entry advances the cold HWM
by exactly one contiguous range and turns MISSING rows introduced in it COLD: read
from cold storage instead of a peer. COLD rows (also made by eviction) are never
filled again here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

from . import entries as E
from .catalog import COLD, MISSING, UPLOAD_ID_MAX, CatalogTxn, max_key_bytes, unpack


@dataclass
class ApplyResult:
    error: str | None = None
    value: dict = field(default_factory=dict)
    skipped: bool = False  # the entry was at or below the applied LSN: nothing done

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped


def _too_long(bucket: str, key: str) -> bool:
    return len(key.encode()) > max_key_bytes(bucket)


def _norm_etag(etag: str) -> str:
    return etag.strip().strip('"')


def _write_condition(e, old) -> ApplyResult | None:
    """If-None-Match: * / If-Match on a write, judged against the object as of this
    entry's LSN: the log orders writes, so a conditional write is a compare-and-swap."""
    if e.if_none_match and old is not None:
        return ApplyResult("PreconditionFailed")
    if e.if_match is not None:
        if old is None:
            return ApplyResult("NoSuchKey")
        if e.if_match.strip() != "*" and _norm_etag(e.if_match) != _norm_etag(old["etag"]):
            return ApplyResult("PreconditionFailed")
    return None


class StateMachine:
    """Binds a catalog transaction to the segment lookup and applies entries."""

    def __init__(self, t: CatalogTxn, segment_of: Callable[[int], int],
                 txn_chunks: list | None, lsn: int = 0):
        self.t = t
        self.segment_of = segment_of
        # chunks this node holds for the entry's transaction: [(id, lsn, record size)]
        self.pending = list(txn_chunks or [])
        self.lsn = lsn  # the entry's log LSN: intro_lsn of the rows it creates

    # ---- chunk references -----------------------------------------------------
    def _note_introduced(self, entry: E.Entry) -> None:
        """Segments holding chunks the entry introduced (its transaction's chunks that
        it references, as Engine.scan_applied yields them) are needed by the shipper
        until the cold HWM passes this entry, taken or not: a failed entry's chunks and
        a duplicate of a held chunk are shipped too, read from their CHUNK record."""
        if not self.pending:
            return
        refs = {bytes(c) for c, _n in getattr(entry, "chunks", None) or ()}
        for cid, lsn, _size in self.pending:
            if cid in refs:
                self.t.note_segment_raft(self.segment_of(lsn), self.lsn)

    def _take(self, chunks) -> None:
        t = self.t
        for cid, _length in chunks:
            row = t.chunk(cid)
            if row is not None:
                t.put_chunk(cid, row[0], row[1], row[2] + 1, row[3])
                if row[0] == MISSING:
                    self._fill_missing(cid, row)
                continue
            for i, (pid, lsn, size) in enumerate(self.pending):
                if pid == cid:
                    del self.pending[i]
                    t.put_chunk(cid, lsn, size, 1, self.lsn)
                    t.add_segment_bytes(self.segment_of(lsn), live=size)
                    break
            else:
                t.put_chunk(cid, MISSING, 0, 1, self.lsn)
                t.add_missing(cid)

    def _fill_missing(self, cid: bytes, row) -> None:
        for i, (pid, lsn, size) in enumerate(self.pending):
            if pid == cid:
                del self.pending[i]
                t = self.t
                t.put_chunk(cid, lsn, size, t.chunk(cid)[2], row[3])
                t.add_segment_bytes(self.segment_of(lsn), live=size)
                t.remove_missing(cid)
                return

    def fill(self, cid: bytes, lsn: int, size: int) -> bool:
        """A FILL record: the chunk at `lsn` (fetched from a peer) fills the row if it
        is still MISSING at this point of the log; otherwise (filled meanwhile, turned
        COLD, or no longer referenced) its bytes are dead. Returns whether it filled
        the row. A filled row's segment is needed until the HWM passes its intro_lsn."""
        t = self.t
        row = t.chunk(cid)
        if row is not None and row[0] == MISSING:
            seg = self.segment_of(lsn)
            t.put_chunk(cid, lsn, size, row[2], row[3])
            t.add_segment_bytes(seg, live=size)
            t.note_segment_raft(seg, row[3])
            t.remove_missing(cid)
            return True
        t.add_segment_bytes(self.segment_of(lsn), dead=size)
        return False

    def relocate(self, cid: bytes, old_lsn: int, new_lsn: int, size: int) -> bool:
        """A RELOCATE record (compaction): the copy at `new_lsn` takes the row if the row
        still points at `old_lsn` at this point of the log (same refs and intro_lsn; the
        old copy's bytes become dead). Otherwise (released, moved again, turned COLD
        meanwhile) the new copy is dead. Returns whether the row moved.

        The new copy's segment is needed by the cold tier until the HWM passes the
        row's intro_lsn (the shipper reads the chunk through the row), as for a fill:
        every hot row's intro_lsn stays at or below its segment's max_raft."""
        t = self.t
        row = t.chunk(cid)
        new_seg = self.segment_of(new_lsn)
        if row is not None and row[0] == old_lsn:
            t.put_chunk(cid, new_lsn, size, row[2], row[3])
            t.add_segment_bytes(self.segment_of(old_lsn), live=-row[1], dead=row[1])
            t.add_segment_bytes(new_seg, live=size)
            t.note_segment_raft(new_seg, row[3])
            return True
        t.add_segment_bytes(new_seg, dead=size)
        return False

    def _release(self, chunks) -> None:
        t = self.t
        for cid, _length in chunks:
            row = t.chunk(cid)
            if row is None:
                continue
            lsn, size, refs, intro = row
            if refs > 1:
                t.put_chunk(cid, lsn, size, refs - 1, intro)
                continue
            t.delete_chunk(cid)
            if lsn >= 0:
                seg = self.segment_of(lsn)
                t.add_segment_bytes(seg, live=-size, dead=size)
            elif lsn == MISSING:
                t.remove_missing(cid)
            else:  # COLD: its bytes left this node already
                t.remove_cold(cid)

    def finish(self) -> None:
        """Whatever the transaction wrote that nothing took is dead space."""
        for _cid, lsn, size in self.pending:
            self.t.add_segment_bytes(self.segment_of(lsn), dead=size)
        self.pending = []

    # ---- entries ----------------------------------------------------------------
    def apply(self, entry: E.Entry) -> ApplyResult:
        handler = getattr(self, "_" + entry.OP)
        self._note_introduced(entry)
        result = handler(entry)
        at = E.entry_time_ms(entry)
        if at is not None:
            # the catalog's own time: a catalog checkpoint says what moment it holds
            # (point-in-time restores pick their starting checkpoint by it)
            self.t.set_meta_at_end("time_ms", at)
        self.finish()
        return result if result is not None else ApplyResult()

    def _noop(self, e: E.Noop):
        return None

    def _create_bucket(self, e: E.CreateBucket):
        if self.t.bucket(e.bucket) is not None:
            return ApplyResult("BucketAlreadyOwnedByYou")
        self.t.put_bucket(e.bucket, {"created_ms": e.created_ms, "region": e.region})
        return None

    def _delete_bucket(self, e: E.DeleteBucket):
        t = self.t
        if t.bucket(e.bucket) is None:
            return ApplyResult("NoSuchBucket")
        if t.bucket_has_objects(e.bucket):
            return ApplyResult("BucketNotEmpty")
        # In-progress multipart uploads do not keep a bucket alive: abort them.
        prefix = e.bucket.encode() + b"/"
        doomed = []
        cur = t.cursor("uploads")
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                _okey, _, uid = bytes(k)[len(prefix):].rpartition(b"\0")
                doomed.append((unpack(v)["key"], uid.decode()))
        for key, uid in doomed:
            self._drop_upload(e.bucket, key, uid)
        t.delete_bucket(e.bucket)
        return None

    def _put_object(self, e: E.PutObject):
        t = self.t
        if t.bucket(e.bucket) is None:
            return ApplyResult("NoSuchBucket")
        if _too_long(e.bucket, e.key):
            return ApplyResult("KeyTooLongError")
        old = t.object(e.bucket, e.key)
        refused = _write_condition(e, old)
        if refused is not None:
            return refused
        self._take(e.chunks)
        if old is not None:
            self._release(old["chunks"])
        t.put_object(e.bucket, e.key, {
            "size": e.size, "etag": e.etag, "mtime": e.mtime_ms,
            "chunks": [[c, n] for c, n in e.chunks], "meta": e.meta, "parts": e.parts,
        })
        return ApplyResult(value={"etag": e.etag, "mtime_ms": e.mtime_ms})

    def _delete_one(self, bucket: str, key: str) -> bool:
        old = self.t.object(bucket, key)
        if old is None:
            return False
        self._release(old["chunks"])
        self.t.delete_object(bucket, key)
        return True

    def _delete_object(self, e: E.DeleteObject):
        if self.t.bucket(e.bucket) is None:
            return ApplyResult("NoSuchBucket")
        return ApplyResult(value={"deleted": self._delete_one(e.bucket, e.key)})

    def _delete_objects(self, e: E.DeleteObjects):
        if self.t.bucket(e.bucket) is None:
            return ApplyResult("NoSuchBucket")
        deleted = [k for k in e.keys if self._delete_one(e.bucket, k)]
        return ApplyResult(value={"deleted": deleted})

    def _copy_object(self, e: E.CopyObject):
        t = self.t
        if t.bucket(e.src_bucket) is None or t.bucket(e.bucket) is None:
            return ApplyResult("NoSuchBucket")
        src = t.object(e.src_bucket, e.src_key)
        if src is None:
            return ApplyResult("NoSuchKey")
        if e.if_etag is not None and _norm_etag(e.if_etag) != _norm_etag(src["etag"]):
            return ApplyResult("PreconditionFailed")
        if _too_long(e.bucket, e.key):
            return ApplyResult("KeyTooLongError")
        chunks = [(bytes(c), n) for c, n in src["chunks"]]
        self._take(chunks)  # take before releasing: source and destination may be one
        old = t.object(e.bucket, e.key)
        if old is not None:
            self._release(old["chunks"])
        record = dict(src)
        record["mtime"] = e.mtime_ms
        record["parts"] = None
        if e.meta is not None:
            record["meta"] = e.meta
        t.put_object(e.bucket, e.key, record)
        return ApplyResult(value={"etag": src["etag"], "mtime_ms": e.mtime_ms})

    def _create_upload(self, e: E.CreateMultipartUpload):
        if self.t.bucket(e.bucket) is None:
            return ApplyResult("NoSuchBucket")
        if _too_long(e.bucket, e.key):
            return ApplyResult("KeyTooLongError")
        if len(e.upload_id.encode()) > UPLOAD_ID_MAX:
            return ApplyResult("InvalidArgument")
        self.t.put_upload(e.bucket, e.key, e.upload_id,
                          {"initiated_ms": e.initiated_ms, "meta": e.meta})
        return ApplyResult(value={"upload_id": e.upload_id})

    def _put_part(self, e: E.PutPart):
        t = self.t
        if t.upload(e.bucket, e.key, e.upload_id) is None:
            return ApplyResult("NoSuchUpload")
        old = t.part(e.upload_id, e.part_number)
        self._take(e.chunks)
        if old is not None:
            self._release(old["chunks"])
        t.put_part(e.upload_id, e.part_number, {
            "size": e.size, "etag": e.etag, "mtime": e.mtime_ms,
            "chunks": [[c, n] for c, n in e.chunks], "checksums": e.checksums,
        })
        return ApplyResult(value={"etag": e.etag})

    def _drop_upload(self, bucket: str, key: str, upload_id: str) -> None:
        t = self.t
        numbers = []
        for number, part in t.parts(upload_id):
            self._release([(bytes(c), n) for c, n in part["chunks"]])
            numbers.append(number)
        for number in numbers:
            t.delete_part(upload_id, number)
        t.delete_upload(bucket, key, upload_id)

    def _complete_upload(self, e: E.CompleteMultipartUpload):
        t = self.t
        upload = t.upload(e.bucket, e.key, e.upload_id)
        if upload is None:
            return ApplyResult("NoSuchUpload")
        if not e.parts:
            return ApplyResult("MalformedXML")
        numbers = [int(n) for n, _ in e.parts]
        if any(b <= a for a, b in zip(numbers, numbers[1:])):
            return ApplyResult("InvalidPartOrder")
        chosen = []
        for number, etag in e.parts:
            part = t.part(e.upload_id, int(number))
            if part is None or _norm_etag(etag) != _norm_etag(part["etag"]):
                return ApplyResult("InvalidPart", {"part_number": int(number)})
            chosen.append(part)
        for number, part in zip(numbers[:-1], chosen[:-1]):
            if part["size"] < e.min_part_size:
                return ApplyResult("EntityTooSmall", {"part_number": number})
        meta = upload["meta"]
        if e.checksum:
            alg = e.checksum["algorithm"]
            for number, part, value in zip(numbers, chosen, e.checksum["parts"]):
                if (part.get("checksums") or {}).get(alg) != value:
                    return ApplyResult("InvalidPart", {"part_number": number})
            meta = {**meta, "checksums": {alg: e.checksum["value"]},
                    "checksum_type": e.checksum["type"]}
        refused = _write_condition(e, t.object(e.bucket, e.key))
        if refused is not None:
            return refused  # the upload stays, as in S3: the client may retry without it
        md5s = b"".join(bytes.fromhex(_norm_etag(p["etag"]).split("-")[0]) for p in chosen)
        etag = f"{hashlib.md5(md5s).hexdigest()}-{len(chosen)}"
        chunks = [(bytes(c), n) for p in chosen for c, n in p["chunks"]]
        self._take(chunks)
        old = t.object(e.bucket, e.key)
        if old is not None:
            self._release(old["chunks"])
        self._drop_upload(e.bucket, e.key, e.upload_id)
        t.put_object(e.bucket, e.key, {
            "size": sum(p["size"] for p in chosen), "etag": etag, "mtime": e.mtime_ms,
            "chunks": [[c, n] for c, n in chunks], "meta": meta,
            "parts": [[p["size"], len(p["chunks"])] for p in chosen],
        })
        return ApplyResult(value={"etag": etag, "mtime_ms": e.mtime_ms})

    def _abort_upload(self, e: E.AbortMultipartUpload):
        if self.t.upload(e.bucket, e.key, e.upload_id) is None:
            return ApplyResult("NoSuchUpload")
        self._drop_upload(e.bucket, e.key, e.upload_id)
        return None

    def _segment_shipped(self, e: E.SegmentShipped):
        """Log LSNs [first, last] are in cold storage. Only the range right after the
        HWM counts (a duplicate, or a new leader's retry of a range already shipped, is
        refused harmlessly), and only an already committed range (last below this
        entry). MISSING rows introduced in the range become COLD: cold storage, not a
        peer, has them. The `missing` table is small, so it is walked whole."""
        t = self.t
        hwm = t.meta("cold_hwm", 0)
        if not (e.first_lsn == hwm + 1 and e.first_lsn <= e.last_lsn < self.lsn):
            return ApplyResult("SegmentOutOfOrder", {"cold_hwm": hwm})
        t.set_meta("cold_hwm", e.last_lsn)
        locations = e.locations
        if locations.get("checkpoint"):
            # where the checkpoint was recorded: a replay of cold storage can start from
            # it only once this entry is in cold storage too (the HWM has passed it)
            locations = {**locations, "checkpoint": {**locations["checkpoint"],
                                                      "recorded_lsn": self.lsn}}
        t.put_cold_segment(e.first_lsn, e.last_lsn, locations)
        for cid in t.missing(1 << 62):
            row = t.chunk(cid)
            if row is not None and 0 < row[3] <= e.last_lsn:
                t.put_chunk(cid, COLD, 0, row[2], row[3])
                t.remove_missing(cid)
                t.add_cold(cid)
        return ApplyResult(value={"cold_hwm": e.last_lsn})

    def _checkpoints_dropped(self, e: E.CheckpointsDropped):
        """The named checkpoints' records leave the rows that hold them; the newest
        recorded checkpoint never does (rebuilds start from it), nor the newest one
        cold storage can be replayed from (rehydrate and compaction go by it)."""
        t = self.t
        rows = []
        after = 0
        while True:
            batch = t.cold_segments(after, 1000)
            if not batch:
                break
            rows += [r for r in batch if r["locations"].get("checkpoint")]
            after = batch[-1]["last"]
        if not rows:
            return ApplyResult(value={"dropped": 0})
        hwm = t.meta("cold_hwm", 0)
        ckpts = [r["locations"]["checkpoint"] for r in rows]
        keep = {max(ckpts, key=lambda c: c["lsn"])["id"]}
        reachable = [c for c in ckpts if replayable(c, hwm)]
        if reachable:
            keep.add(max(reachable, key=lambda c: c["lsn"])["id"])
        doomed = set(e.ids) - keep
        dropped = 0
        for r in rows:
            if r["locations"]["checkpoint"].get("id") in doomed:
                locations = {k: v for k, v in r["locations"].items() if k != "checkpoint"}
                t.put_cold_segment(r["first"], r["last"], locations)
                dropped += 1
        return ApplyResult(value={"dropped": dropped})

    def _segments_compacted(self, e: E.SegmentsCompacted):
        """Cold compaction: the shipped rows covering exactly [first, last] (each
        inside it, the first starting at `first`, the last ending at `last`, all below
        the HWM) give way to one row for the rewritten segment. Anything else (a
        stale plan: the rows changed meanwhile) is refused, and changes nothing."""
        t = self.t
        rows = t.cold_segments(e.first_lsn - 1, 1 << 30)
        inside = [r for r in rows if r["last"] <= e.last_lsn]
        if not (inside and inside[0]["first"] == e.first_lsn and inside[-1]["last"] == e.last_lsn
                and e.last_lsn <= t.meta("cold_hwm", 0)):
            return ApplyResult("SegmentRangeMismatch")
        for r in inside:
            t.delete_cold_segment(r["last"])
        t.put_cold_segment(e.first_lsn, e.last_lsn, e.locations)
        return ApplyResult(value={"replaced": len(inside)})


def replayable(checkpoint: dict, hwm: int) -> bool:
    """Whether a replay of cold storage can start from this recorded checkpoint: the
    `SegmentShipped` that recorded it is at or below the HWM. A record from before
    `recorded_lsn` was kept is taken to be (as it was then)."""
    recorded = checkpoint.get("recorded_lsn")
    return recorded is None or recorded <= hwm

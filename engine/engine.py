"""The engine facade: one node's hot tier, driven by committed log entries.

Writers stream chunks into a transaction (`begin`, `write_chunk`), make them durable
(`wait_durable`), and a committed entry naming the transaction makes them part of an
object (`apply`). Readers look objects up and stream them back (`open_object`).
Everything here is local: no network, no Raft, no cold storage. The catalog knows
about the cold tier (what is shipped, which chunks are COLD) so that the WAL keeps
what the shipper needs and hot segments already in cold storage can be evicted.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterator

from . import entries as E
from .applied_scan import AppliedEntry, scan_applied as _scan_applied
from .buffer_pool import BufferPool
from .catalog import COLD, MISSING, Catalog, CatalogTxn, max_key_bytes
from .checkpoint import CheckpointData, write_master
from .cold_catalog import ChunkInfo, chunk_info as _chunk_info
from .dir_lock import DirLock
from .compaction import CompactReport, candidates as _compaction_candidates, compact as _compact
from .config import EngineConfig
from .errors import ChunkCorrupt, ChunkMissing, EngineClosed, UnknownTransaction
from .eviction import EvictReport, evict as _evict
from .listing import ListPage, UploadPage, list_objects, list_uploads
from .log_records import (
    CHUNK_DATA_OFFSET,
    CHUNK_PREFIX,
    TXN_ID_LEN,
    ApplyRecord,
    ClrRecord,
    EndRecord,
    FillRecord,
    RelocateRecord,
    chunk_prefix,
)
from .recovery import RecoveryReport, recover
from .publisher import Pending, Publisher
from .state_machine import ApplyResult, StateMachine
from .transactions import TxnTable
from .wal import Wal
from .wal_record import RecordType, parse_header

_DIRECT_READ = 1 << 20  # piece size for reads that bypass the pool
COMMITTED_TXN_MEMORY = 4096  # transactions remembered as committed (see committed_change)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Where write_chunk put a chunk; durable once wait_durable(end) returns."""

    chunk_id: bytes
    lsn: int
    length: int
    end: int


@dataclass
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str
    mtime_ms: int
    meta: dict
    chunks: list  # [(chunk id, length)]
    parts: list | None = None

    @classmethod
    def from_record(cls, bucket: str, key: str, rec: dict) -> "ObjectInfo":
        return cls(bucket, key, rec["size"], rec["etag"], rec["mtime"], rec["meta"],
                   [(bytes(c), n) for c, n in rec["chunks"]], rec.get("parts"))


@dataclass
class CheckpointInfo:
    lsn: int
    redo_lsn: int
    active_txns: int
    duration_s: float
    reclaimed_bytes: int = 0


@dataclass
class SegmentUsage:
    segment: int
    size: int
    live: int
    dead: int
    pending: int
    active: bool
    max_raft: int = 0  # highest log LSN that needs this segment (the shipper's view)
    other: int = field(init=False)  # log records (entries, checkpoints, framing)

    def __post_init__(self):
        self.other = max(self.size - self.live - self.dead - self.pending, 0)


class Engine:
    def __init__(self, config: EngineConfig | str, **overrides):
        if isinstance(config, str):
            config = EngineConfig(data_dir=config, **overrides)
        elif overrides:
            raise TypeError("pass either an EngineConfig or a directory with overrides")
        self.config = config
        self.dir = config.data_dir
        os.makedirs(self.dir, exist_ok=True)
        self._dir_lock = DirLock(self.dir)  # DirectoryInUse: another process has it
        try:
            self._open(config)
        except BaseException:
            self._dir_lock.release()
            raise

    def _open(self, config: EngineConfig) -> None:
        self.wal = Wal(os.path.join(self.dir, "wal"), config.segment_size, config.fsync)
        self.catalog = Catalog(os.path.join(self.dir, "catalog"), config.lmdb_map_size,
                               sync=config.catalog_sync and config.fsync,
                               wal_segments=self.wal.segments)
        self.pool = BufferPool(self._read_segment, config.page_size, config.pool_budget)
        self.txns = TxnTable()
        self._committed_txns: OrderedDict = OrderedDict()  # txn id -> Pending, the latest
        # COMMITTED_TXN_MEMORY entries that committed a transaction
        self._lock = threading.RLock()  # orders WAL appends with their catalog tickets
        self._ckpt_lock = threading.RLock()  # one deleter of WAL segments at a time
        self._pins: Counter = Counter()  # segments a reader is streaming from
        # chunks of changes submitted but not yet published: reclaim must keep them
        # ((record lsn, lowest chunk lsn) in log order; published in order, so trimmed
        # from the front)
        self._unpublished: deque = deque()
        self._pins_lock = threading.Lock()
        self._filling: dict[bytes, Pending] = {}  # chunk id -> its fill in flight
        self._compact_lock = threading.Lock()  # one compaction pass at a time
        self._compact_more = False  # the last maintenance pass stopped at its byte bound
        self._compacted: Counter = Counter()  # since open: segments, bytes copied, freed
        self._applied_lsn = 0
        self._catalog_wal_lsn = 0
        self._cold_hwm = 0  # as published; _staged: set by a change not yet committed
        self.last_data_lsn = 0  # since open: the last entry that is not cold bookkeeping
        self._cold_hwm_staged = 0
        self._closed = False
        self._ckpt_lsn: int | None = None
        self._ckpt_redo = 0
        self._ckpt_at_bytes = 0
        self._ckpt_at_time = time.monotonic()
        self._publisher = Publisher(self.wal.wait_durable, self.catalog.write,
                                    self._note_published)
        self.recovery_report: RecoveryReport = recover(self)
        with self.catalog.read() as t:
            self._cold_hwm = self._cold_hwm_staged = t.meta("cold_hwm", 0)
        self.checkpoint()
        self._stop = threading.Event()
        self._maint: threading.Thread | None = None
        if config.maintenance_interval_s > 0:
            self._maint = threading.Thread(target=self._maintenance_loop,
                                           name="engine-maintenance", daemon=True)
            self._maint.start()

    # ---- write path --------------------------------------------------------------
    def begin(self, txn_id: bytes | None = None) -> bytes:
        """Start (or rejoin) a transaction; a replica passes the coordinator's id.
        UnknownTransaction if an entry already committed that id here (a replica's
        late chunks must not reopen it: see `committed_change`)."""
        txn_id = txn_id or os.urandom(TXN_ID_LEN)
        if len(txn_id) != TXN_ID_LEN:
            raise ValueError(f"transaction ids are {TXN_ID_LEN} bytes")
        with self._lock:
            self._check_open()
            if txn_id in self._committed_txns:
                raise UnknownTransaction(f"transaction {txn_id.hex()} was committed")
            self.txns.begin(txn_id)
        return txn_id

    def committed_change(self, txn_id: bytes) -> Pending | None:
        """The change of the entry that committed `txn_id` here, if it was one of the
        last COMMITTED_TXN_MEMORY: a replica that was slower than the quorum applies an
        entry while the chunks of its upload may still be on their way; wait() on it,
        and its MISSING rows are there to be filled with them."""
        with self._lock:
            return self._committed_txns.get(txn_id)

    def write_chunk(self, txn_id: bytes, data, chunk_id: bytes | None = None) -> ChunkRef:
        """Append one chunk to the WAL inside a transaction. Not durable on return.
        `chunk_id`, when given, must be the SHA-256 of `data` that the caller has
        already computed (and verified): hashing it again is skipped. Reads verify it."""
        if len(data) > self.config.max_chunk_size:
            raise ValueError(f"chunk of {len(data)} bytes exceeds {self.config.max_chunk_size}")
        if chunk_id is None:
            chunk_id = hashlib.sha256(data).digest()
        ms = int(time.time() * 1000)
        with self._lock:
            self._check_open()
            if txn_id not in self.txns:
                raise UnknownTransaction(f"transaction {txn_id.hex()} is not open")
            lsn, end = self.wal.append(RecordType.CHUNK, [chunk_prefix(txn_id, chunk_id, ms), data])
            self.txns.add_chunk(txn_id, chunk_id, lsn, end - lsn, ms)
        return ChunkRef(chunk_id, lsn, len(data), end)

    def wait_durable(self, end: int | None = None) -> None:
        """Block until the log is durable up to `end` (default: all written so far)."""
        self.wal.wait_durable(self.wal.end if end is None else end)

    def abort(self, txn_id: bytes) -> int:
        """Roll back a transaction: one CLR per chunk (its bytes become dead), then END.
        Returns how many chunks were undone; unknown transactions are a no-op."""
        with self._lock:
            txn = self.txns.end(txn_id)
            if txn is None or not txn.chunks:
                return 0
            chunks = txn.chunks
            clrs = []
            for i in range(len(chunks) - 1, -1, -1):
                _cid, lsn, size = chunks[i]
                clr = ClrRecord(txn_id, lsn, size, chunks[i - 1][1] if i else 0)
                clr_lsn, _ = self.wal.append(RecordType.CLR, [clr.encode()])
                clrs.append((clr_lsn, clr))
            _, end = self.wal.append(RecordType.END, [EndRecord(txn_id, "abort").encode()])
            self._unpublished.append((clrs[-1][0], min(c[1] for c in chunks)))
            pending = self._publisher.enqueue(
                Pending(clrs[-1][0], end, lambda t: self._clrs_to_catalog(t, clrs)))
        pending.wait()
        return len(chunks)

    def reap_expired(self, timeout_s: float | None = None) -> list[bytes]:
        """Roll back transactions idle longer than the timeout (client gone, coordinator
        dead): the run-time half of loser handling."""
        timeout = self.config.txn_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            idle = self.txns.idle_longer_than(timeout)
        for txn_id in idle:
            self.abort(txn_id)
        return idle

    def apply(self, lsn: int, entry: E.Entry) -> ApplyResult:
        """Apply a committed log entry. Idempotent by LSN; returns once the change is
        durable and visible to readers."""
        return self.submit(lsn, entry).wait()

    def submit(self, lsn: int, entry: E.Entry) -> Pending:
        """Log a committed entry and queue its catalog change without waiting: a
        caller applying a stream of entries (the Raft apply thread) submits them all
        and they share fsyncs and catalog commits. Pending.wait() gives the result."""
        with self._lock:
            self._check_open()
            if lsn <= self._applied_lsn:
                done = Pending(0, 0, None)
                done._finish(ApplyResult(skipped=True))
                return done
            txn = self.txns.end(entry.txn) if entry.txn is not None else None
            record = ApplyRecord(lsn, E.encode_entry(entry), entry.txn,
                                 txn.chunks if txn is not None else [])
            rec_lsn, end = self.wal.append(RecordType.APPLY, [record.encode()])
            self._applied_lsn = lsn
            if not isinstance(entry, (E.SegmentShipped, E.CheckpointsDropped, E.Noop)):
                self.last_data_lsn = lsn
            if record.chunks:
                self._unpublished.append((rec_lsn, min(c[1] for c in record.chunks)))
            pending = Pending(rec_lsn, end,
                              lambda t: self._apply_to_catalog(t, record, entry, rec_lsn))
            if entry.txn is not None:
                committed = self._committed_txns
                committed[bytes(entry.txn)] = pending
                while len(committed) > COMMITTED_TXN_MEMORY:
                    committed.popitem(last=False)
            return self._publisher.enqueue(pending)

    # ---- missing chunks: fetched from a peer, filled in ---------------------------------
    def fill_chunk(self, chunk_id: bytes, data) -> bool:
        """Fill in a chunk that committed entries reference but this node lacks (its
        catalog row is MISSING), with bytes fetched from a peer. Returns True once the
        chunk is durable here and visible to readers; False, writing nothing, if the
        chunk is not missing (held already, no longer referenced, or being filled by a
        concurrent call, which this one then waits for). ValueError if the data does
        not hash to chunk_id.

        Logged as a CHUNK record under an internal transaction, followed at once (same
        lock hold) by a FILL record that commits it. The FILL's catalog change runs in
        log order like any entry: if the row is still MISSING then, it gets this
        location; if an entry released it meanwhile, the bytes count as dead."""
        chunk_id = bytes(chunk_id)
        if len(data) > self.config.max_chunk_size:
            raise ValueError(f"chunk of {len(data)} bytes exceeds {self.config.max_chunk_size}")
        if hashlib.sha256(data).digest() != chunk_id:
            raise ValueError(f"data does not hash to chunk {chunk_id.hex()}")
        failure: BaseException | None = None
        with self._lock:
            self._check_open()
            other = self._filling.get(chunk_id)
            if other is None:
                # checked under the lock: a fill published just before is seen here
                # (its _filling slot is dropped only after publication)
                with self.catalog.read() as t:
                    row = t.chunk(chunk_id)
                if row is None or row[0] != MISSING:
                    return False
                txn_id, ref = self._write_fill_chunk(chunk_id, data)
                try:
                    pending = self._log_fill(txn_id, ref)
                except BaseException as exc:  # noqa: BLE001 - rolled back below
                    failure = exc
                else:
                    self._filling[chunk_id] = pending
        if other is not None:
            other.wait()
            return False
        if failure is not None:  # the CHUNK is logged without its FILL: roll it back
            try:
                self.abort(txn_id)
            except Exception:  # noqa: BLE001 - recovery or the reaper will
                pass
            raise failure
        try:
            return pending.wait()
        finally:
            with self._lock:
                if self._filling.get(chunk_id) is pending:
                    del self._filling[chunk_id]

    def _write_fill_chunk(self, chunk_id: bytes, data) -> tuple[bytes, ChunkRef]:
        """Step 1 of a fill or a relocation (caller holds the log lock): the CHUNK
        record, under a fresh internal transaction. Without its FILL or RELOCATE it is
        a loser and gets rolled back."""
        txn_id = os.urandom(TXN_ID_LEN)
        ms = int(time.time() * 1000)
        lsn, end = self.wal.append(RecordType.CHUNK, [chunk_prefix(txn_id, chunk_id, ms), data])
        self.txns.add_chunk(txn_id, chunk_id, lsn, end - lsn, ms)
        return txn_id, ChunkRef(chunk_id, lsn, len(data), end)

    def _log_fill(self, txn_id: bytes, ref: ChunkRef) -> Pending:
        """Step 2 (caller holds the log lock): the FILL record, which commits the fill's
        transaction, and its catalog change queued for publication."""
        record = FillRecord(txn_id, ref.chunk_id, ref.lsn, ref.end - ref.lsn)
        lsn, end = self.wal.append(RecordType.FILL, [record.encode()])
        self.txns.end(txn_id)
        self._unpublished.append((lsn, ref.lsn))
        return self._publisher.enqueue(
            Pending(lsn, end, lambda t: self._fill_to_catalog(t, record)))

    def _fill_to_catalog(self, t: CatalogTxn, record: FillRecord) -> bool:
        return StateMachine(t, self.wal.segment_of, None).fill(
            record.chunk_id, record.chunk_lsn, record.size)

    # ---- compaction: live chunks of mostly dead segments copied forward -----------------
    def compact(self, max_live_ratio: float = 0.5, max_bytes: int | None = None) -> CompactReport:
        """Copy the live chunks of sealed segments that are at most max_live_ratio live
        (by bytes) to the log's end, oldest segment first, until max_bytes of live data
        is taken (None: no bound); then, once every move is published, checkpoint, so
        that reclaim deletes the emptied segments. Writers and readers keep going.
        Rules, records and crash safety: engine/compaction.py."""
        self._check_open()
        return _compact(self, max_live_ratio, max_bytes)

    def _relocate_chunk(self, chunk_id: bytes, old_lsn: int, data) -> tuple[Pending, int]:
        """Move one live chunk (its verified bytes `data`, read at old_lsn): a CHUNK
        record under an internal transaction, then at once a RELOCATE that commits it.
        Returns the RELOCATE's Pending (its result: whether the row moved) and the
        bytes written for the copy."""
        failure: BaseException | None = None
        with self._lock:
            self._check_open()
            txn_id, ref = self._write_fill_chunk(chunk_id, data)
            try:
                pending = self._log_relocate(txn_id, ref, old_lsn)
            except BaseException as exc:  # noqa: BLE001 - rolled back below
                failure = exc
        if failure is not None:  # the CHUNK is logged without its RELOCATE: roll it back
            try:
                self.abort(txn_id)
            except Exception:  # noqa: BLE001 - recovery or the reaper will
                pass
            raise failure
        return pending, ref.end - ref.lsn

    def _log_relocate(self, txn_id: bytes, ref: ChunkRef, old_lsn: int) -> Pending:
        """Step 2 of a relocation (caller holds the log lock): the RELOCATE record,
        which commits the copy's transaction, and its catalog change queued."""
        record = RelocateRecord(txn_id, ref.chunk_id, old_lsn, ref.lsn, ref.end - ref.lsn)
        lsn, end = self.wal.append(RecordType.RELOCATE, [record.encode()])
        self.txns.end(txn_id)
        self._unpublished.append((lsn, ref.lsn))
        return self._publisher.enqueue(
            Pending(lsn, end, lambda t: self._relocate_to_catalog(t, record)))

    def _relocate_to_catalog(self, t: CatalogTxn, record: RelocateRecord) -> bool:
        return StateMachine(t, self.wal.segment_of, None).relocate(
            record.chunk_id, record.old_lsn, record.new_lsn, record.size)

    def _note_compaction(self, report: CompactReport) -> None:
        with self._lock:
            self._compacted["segments"] += report.segments_compacted
            self._compacted["chunks"] += report.chunks_moved
            self._compacted["bytes_copied"] += report.bytes_copied
            self._compacted["bytes_freed"] += report.bytes_freed

    def scan_applied(self, lsn_lo: int, lsn_hi: int) -> Iterator[AppliedEntry]:
        """Entries applied here with log LSN in [lsn_lo, lsn_hi], with the chunks each
        introduced, streamed from the WAL's APPLY records (engine/applied_scan.py)."""
        return _scan_applied(self, lsn_lo, lsn_hi)

    def missing_chunks(self, limit: int = 1000) -> list[bytes]:
        """Ids of chunks that committed entries reference but this node lacks (at most
        `limit`, in id order): what to fetch from peers and hand to fill_chunk."""
        with self.catalog.read() as t:
            return t.missing(limit)

    def has_chunk(self, chunk_id: bytes) -> bool:
        """Whether the catalog holds this chunk here (referenced, not MISSING or COLD)."""
        with self.catalog.read() as t:
            row = t.chunk(bytes(chunk_id))
        return row is not None and row[0] >= 0

    def read_chunk_by_id(self, chunk_id: bytes) -> bytes | None:
        """The whole of a chunk held here, SHA-256 verified (ChunkCorrupt otherwise),
        or None if the catalog has no such chunk or it is MISSING or COLD. For serving
        peers' fetches. The segment is pinned from the catalog lookup on, so a
        concurrent delete plus reclamation or eviction cannot remove it mid-read."""
        chunk_id = bytes(chunk_id)
        while True:
            with self.catalog.read() as t:
                row = t.chunk(chunk_id)
                if row is None or row[0] < 0:
                    return None
                lsn = row[0]
                try:
                    seg = self.wal.segment_of(lsn)
                except KeyError:
                    seg = None
                if seg is not None and self._pin_present((seg,)):
                    break
            # the segment went after this snapshot began: look again in a new one
            with self.catalog.read() as t:
                again = t.chunk(chunk_id)
            if again == row:
                raise ChunkCorrupt(chunk_id, lsn)
        try:
            head = self._read_segment(seg, lsn - seg, CHUNK_DATA_OFFSET)
            h = parse_header(head, lsn)
            if h is None or h.rtype != RecordType.CHUNK or h.length < CHUNK_PREFIX.size:
                raise ChunkCorrupt(chunk_id, lsn)
            length = h.length - CHUNK_PREFIX.size
            data = self._read_segment(seg, lsn + CHUNK_DATA_OFFSET - seg, length)
        finally:
            self._unpin_segments((seg,))
        if len(data) != length or hashlib.sha256(data).digest() != chunk_id:
            raise ChunkCorrupt(chunk_id, lsn)
        return data

    def _note_published(self, lsn: int) -> None:
        self._catalog_wal_lsn = lsn
        self._cold_hwm = self._cold_hwm_staged
        with self._lock:
            unpublished = self._unpublished
            while unpublished and unpublished[0][0] <= lsn:
                unpublished.popleft()

    def _apply_to_catalog(self, t: CatalogTxn, record: ApplyRecord, entry: E.Entry,
                          rec_lsn: int) -> ApplyResult:
        """rec_lsn: where the APPLY record is; the shipper reads it until the cold HWM
        passes its entry, so its segment's max_raft covers it."""
        result = StateMachine(t, self.wal.segment_of, record.chunks,
                              record.raft_lsn).apply(entry)
        t.note_segment_raft(self.wal.segment_of(rec_lsn), record.raft_lsn)
        t.set_meta_at_end("applied_lsn", record.raft_lsn)
        if isinstance(entry, E.SegmentShipped) and result.ok:
            self._cold_hwm_staged = entry.last_lsn  # published by _note_published
        return result

    def _clrs_to_catalog(self, t: CatalogTxn, clrs: list) -> None:
        for _clr_lsn, clr in clrs:
            t.add_segment_bytes(self.wal.segment_of(clr.chunk_lsn), dead=clr.size)

    # ---- read path -----------------------------------------------------------------
    @property
    def applied_lsn(self) -> int:
        """The highest log LSN whose entry this engine has applied (visible or not yet)."""
        return self._applied_lsn

    def applied_and_wal_end(self) -> tuple[int, int]:
        """(applied LSN, WAL end) read together: every APPLY record below that end is
        for an entry at or below that LSN, and every later one lies above the end."""
        with self._lock:
            return self._applied_lsn, self.wal.end

    @staticmethod
    def max_key_bytes(bucket: str) -> int:
        """Longest object key this engine can hold in `bucket` (entries naming a longer
        one are refused with KeyTooLongError, deterministically, never half-applied)."""
        return max_key_bytes(bucket)

    def bucket(self, name: str) -> dict | None:
        with self.catalog.read() as t:
            return t.bucket(name)

    def list_buckets(self) -> list[tuple[str, dict]]:
        with self.catalog.read() as t:
            return list(t.buckets())

    def head_object(self, bucket: str, key: str) -> ObjectInfo | None:
        with self.catalog.read() as t:
            rec = t.object(bucket, key)
        return None if rec is None else ObjectInfo.from_record(bucket, key, rec)

    def open_object(self, bucket: str, key: str) -> "ObjectReader | None":
        """A reader over one version of an object, resolved in one snapshot, that keeps
        the segments it needs from being reclaimed until it is closed."""
        before = None
        while True:
            with self.catalog.read() as t:
                rec = t.object(bucket, key)
                if rec is None:
                    return None
                info = ObjectInfo.from_record(bucket, key, rec)
                locations = []
                for cid, length in info.chunks:
                    row = t.chunk(cid)
                    locations.append((cid, length, MISSING if row is None else row[0]))
                try:
                    segs = {self.wal.segment_of(lsn) for _c, _n, lsn in locations if lsn >= 0}
                except KeyError:
                    segs = None
                if segs is not None and self._pin_present(segs):
                    return ObjectReader(self, info, locations, segs)
            # a segment was reclaimed or evicted after this snapshot began: a new one
            # no longer points there, unless the catalog itself is wrong
            if locations == before:
                cid, _n, lsn = next((c for c in locations if c[2] >= 0
                                     and not self._segment_present(c[2])), locations[0])
                raise ChunkCorrupt(cid, lsn)
            before = locations

    def list_objects(self, bucket: str, prefix: str = "", delimiter: str = "",
                     start_after: str = "", max_keys: int = 1000) -> ListPage:
        with self.catalog.read() as t:
            return list_objects(t, bucket, prefix, delimiter, start_after, max_keys)

    def upload(self, bucket: str, key: str, upload_id: str) -> dict | None:
        with self.catalog.read() as t:
            return t.upload(bucket, key, upload_id)

    def list_parts(self, upload_id: str, after: int = 0, max_parts: int = 1000) -> tuple[list, bool]:
        """([(part number, record)], is_truncated)."""
        with self.catalog.read() as t:
            out = []
            for number, rec in t.parts(upload_id, after):
                if len(out) == max_parts:
                    return out, True
                out.append((number, rec))
            return out, False

    def list_uploads(self, bucket: str, prefix: str = "", delimiter: str = "",
                     key_marker: str = "", upload_id_marker: str = "",
                     max_uploads: int = 1000) -> UploadPage:
        with self.catalog.read() as t:
            return list_uploads(t, bucket, prefix, delimiter, key_marker, upload_id_marker,
                                max_uploads)

    def read_chunk(self, chunk_id: bytes, lsn: int, length: int, lo: int = 0,
                   hi: int | None = None):
        """Stream bytes [lo, hi) of a chunk, verifying the whole chunk's SHA-256 as it
        goes; the last piece is released only once the hash matches."""
        if lsn < 0:
            raise ChunkMissing(chunk_id, cold=lsn == COLD)
        hi = length if hi is None else hi
        seg = self.wal.segment_of(lsn)
        start = lsn + CHUNK_DATA_OFFSET - seg
        if length >= self.config.pool_bypass:
            pieces = self._direct_pieces(seg, start, length)
        else:
            pieces = self.pool.read(seg, start, length)
        digest = hashlib.sha256()
        held = None
        pos = 0
        for piece in pieces:
            digest.update(piece)
            a, b = max(lo, pos), min(hi, pos + len(piece))
            if a < b:
                if held is not None:
                    yield held
                held = piece[a - pos: b - pos]
            pos += len(piece)
        if pos != length or digest.digest() != chunk_id:
            raise ChunkCorrupt(chunk_id, lsn)
        if held is not None:
            yield held

    def read_chunk_bytes(self, chunk_id: bytes, lsn: int, length: int, lo: int = 0,
                         hi: int | None = None) -> memoryview:
        """Bytes [lo, hi) of one chunk, read whole in one pread and verified before
        anything is returned. For callers that read chunks ahead on several threads
        (large GETs): verification then runs in parallel, one chunk per thread."""
        if lsn < 0:
            raise ChunkMissing(chunk_id, cold=lsn == COLD)
        seg = self.wal.segment_of(lsn)
        data = self._read_segment(seg, lsn + CHUNK_DATA_OFFSET - seg, length)
        if len(data) != length or hashlib.sha256(data).digest() != chunk_id:
            raise ChunkCorrupt(chunk_id, lsn)
        return memoryview(data)[lo:length if hi is None else hi]

    def _direct_pieces(self, seg: int, start: int, length: int):
        fd_read = self._read_segment
        off, end = start, start + length
        while off < end:
            data = fd_read(seg, off, min(_DIRECT_READ, end - off))
            if not data:
                return
            yield data
            off += len(data)

    def _read_segment(self, seg: int, offset: int, n: int) -> bytes:
        return os.pread(self.wal._read_fd(seg), n, offset)

    def _pin_segments(self, segs) -> None:
        with self._pins_lock:
            self._pins.update(segs)

    def _segment_present(self, lsn: int) -> bool:
        try:
            return self.wal.segment_of(lsn) in self.wal.segments
        except KeyError:
            return False

    def _pin_present(self, segs) -> bool:
        """Pin segs if every one is still on disk (checked under the lock deleters hold
        from their pin check to the unlink, so a pinned segment stays); else pin
        nothing and return False: a reader whose snapshot predates a reclaim or an
        eviction must look again in a new snapshot."""
        with self._pins_lock:
            present = self.wal.segments
            if not all(s in present for s in segs):
                return False
            self._pins.update(segs)
            return True

    def _unpin_segments(self, segs) -> None:
        with self._pins_lock:
            self._pins.subtract(segs)
            for s in segs:
                if self._pins[s] <= 0:
                    del self._pins[s]

    # ---- checkpoints, space, maintenance ----------------------------------------------
    def checkpoint(self) -> CheckpointInfo:
        """Fuzzy checkpoint: sync the catalog, log the transaction table, point the
        master record at it, then delete WAL segments nobody needs any more."""
        t0 = time.perf_counter()
        with self._ckpt_lock:
            cat_lsn = self._catalog_wal_lsn
            applied = self._applied_lsn
            self.catalog.sync()  # catalog durable through cat_lsn (and possibly beyond)
            with self._lock:
                redo = cat_lsn if cat_lsn else (self.wal.segments[0] if self.wal.segments else 0)
                data = CheckpointData(redo, applied, self.txns.snapshot(),
                                      {"catalog": cat_lsn}, int(time.time() * 1000))
                ck_lsn, end = self.wal.append(RecordType.CHECKPOINT, [data.encode()])
                active = len(self.txns)
            self.wal.wait_durable(end)
            write_master(self.dir, ck_lsn, self.config.fsync)
            self._ckpt_lsn, self._ckpt_redo = ck_lsn, redo
            self._ckpt_at_bytes = self.wal.bytes_appended
            self._ckpt_at_time = time.monotonic()
            freed = self.reclaim()
        return CheckpointInfo(ck_lsn, redo, active, time.perf_counter() - t0, freed)

    def _keep_from(self) -> int | None:
        """WAL below this LSN is read by no recovery, transaction or pending change:
        min(checkpoint redo point, checkpoint, oldest open transaction, oldest
        unpublished change). None before the first checkpoint."""
        if self._ckpt_lsn is None:
            return None
        with self._lock:
            oldest_txn = self.txns.oldest_lsn()
            oldest_unpublished = min((lo for _r, lo in self._unpublished), default=None)
        return min(x for x in (self._ckpt_redo, self._ckpt_lsn, oldest_txn, oldest_unpublished)
                   if x is not None)

    def reclaim(self) -> int:
        """Delete sealed WAL segments that recovery no longer reads and that hold no
        live or pending chunk and no reader; with `ship_retention`, also none the
        shipper still needs (max_raft above the cold HWM). Returns bytes freed."""
        with self._ckpt_lock:
            keep_from = self._keep_from()
            if keep_from is None:
                return 0
            with self.catalog.read() as t:
                usage = dict(t.segments())
                hwm = t.meta("cold_hwm", 0)
                gone = t.meta("wal_gone_raft", 0)
            retain = self.config.ship_retention
            segs = list(self.wal.segments)
            candidates = []
            for seg, nxt in zip(segs, segs[1:]):
                if nxt > keep_from:
                    break
                live, _dead, max_raft = usage.get(seg, (0, 0, 0))
                if live > 0 or (retain and max_raft > hwm):
                    continue
                candidates.append((seg, max_raft))
            high = max((m for _s, m in candidates), default=0)
            if high > gone:  # durable before any of them goes (scan_applied's holes)
                with self.catalog.write() as t:
                    t.set_meta("wal_gone_raft", high)
            if candidates:
                # the catalog state read above (nothing live there) may be newer than the
                # checkpoint's sync: make it durable before any file goes, or a power
                # loss could bring back a row pointing into a deleted segment, which
                # redo would then touch (a release, a RELOCATE)
                self.catalog.sync()
            freed = 0
            doomed = []
            for seg, _m in candidates:
                with self._pins_lock:
                    if self._pins.get(seg):
                        continue
                    freed += self.wal.delete_segment(seg)
                self.pool.invalidate_segment(seg)
                doomed.append(seg)
            # rows of segments already gone (a crash between unlink and this write) go too
            stale = [seg for seg in usage if seg not in self.wal.segments]
            if doomed or stale:
                with self.catalog.write() as t:
                    for seg in doomed + stale:
                        t.delete_segment(seg)
            return freed

    def evict(self, target_hot_bytes: int) -> EvictReport:
        """Cold tier: delete sealed WAL segments, oldest first, whose entries and live
        chunks are all in cold storage, until the WAL takes at most target_hot_bytes
        on disk (or nothing more can go). Their live chunks become COLD: reads raise
        ChunkMissing(cold=True). Rules and crash safety: engine/eviction.py."""
        self._check_open()
        return _evict(self, target_hot_bytes)

    def hot_bytes(self) -> int:
        """Bytes the WAL takes on disk (every segment, the active one included)."""
        return sum(self.wal.segment_size_on_disk(s) for s in list(self.wal.segments))

    def unshipped_bytes(self) -> int:
        """WAL bytes on disk that the cold tier still needs: segments holding an entry
        above the cold HWM, or a chunk such an entry took (what the lag bound counts)."""
        hwm = self._cold_hwm
        with self.catalog.read() as t:
            needed = [seg for seg, row in t.segments() if row[2] > hwm]
        present = set(self.wal.segments)
        return sum(self.wal.segment_size_on_disk(s) for s in needed if s in present)

    def wal_raft_floor(self) -> int:
        """The highest log LSN whose APPLY record may be gone from the local WAL (a
        deleted segment held it): a single node's LWM. With ship_retention it never
        passes the cold HWM."""
        with self.catalog.read() as t:
            return t.meta("wal_gone_raft", 0)

    # ---- cold tier: what the catalog knows ----------------------------------------------
    @property
    def cold_hwm(self) -> int:
        """The cold high-water mark: log LSNs 1..cold_hwm are in cold storage."""
        return self._cold_hwm

    def chunk_info(self, chunk_id: bytes) -> ChunkInfo | None:
        """Where a referenced chunk is: hot here, missing (fetch from a peer), or cold
        (in the cold segment holding its intro_lsn); None if nothing references it."""
        with self.catalog.read() as t:
            return _chunk_info(t, chunk_id)

    def live_chunk_intros(self, first: int, last: int) -> list[tuple[bytes, int]]:
        """(chunk id, intro_lsn) of every referenced chunk introduced in [first, last]:
        what cold compaction must keep of the segments covering that range. One pass
        over the chunks table (no index by intro_lsn), in a read transaction."""
        out = []
        with self.catalog.read() as t:
            for cid, row in t.chunks():
                if first <= row[3] <= last and row[2] > 0:
                    out.append((bytes(cid), row[3]))
        return out

    def cold_segment_for(self, lsn: int) -> dict | None:
        """The shipped cold segment {first, last, locations} whose range holds log
        LSN lsn, or None."""
        with self.catalog.read() as t:
            return t.cold_segment_for(lsn)

    def cold_segments(self, after_last: int = 0, limit: int = 1000) -> list[dict]:
        """Shipped cold segments with last LSN above after_last, in order (at most limit)."""
        with self.catalog.read() as t:
            return t.cold_segments(after_last, limit)

    def segment_usage(self) -> list[SegmentUsage]:
        """Hot-tier accounting: per WAL segment, bytes of live chunks (referenced),
        dead chunks (deleted, overwritten, rolled back), pending (open transactions)."""
        with self.catalog.read() as t:
            usage = dict(t.segments())
        pending: Counter = Counter()
        with self._lock:
            for lsn, size in self.txns.pending_bytes_by_lsn():
                pending[self.wal.segment_of(lsn)] += size
        active = self.wal.segments[-1] if self.wal.segments else None
        out = []
        for seg in list(self.wal.segments):
            live, dead, max_raft = usage.get(seg, (0, 0, 0))
            out.append(SegmentUsage(seg, self.wal.segment_size_on_disk(seg), live, dead,
                                    pending[seg], seg == active, max_raft))
        return out

    def stats(self) -> dict:
        with self.catalog.read() as t:  # LMDB keeps these counts: no scans
            missing, cold = t.count("missing"), t.count("cold")
            cold_segments = t.count("cold_segments")
        return {
            "applied_lsn": self._applied_lsn,
            "catalog_wal_lsn": self._catalog_wal_lsn,
            "wal_end": self.wal.end,
            "wal_durable": self.wal.durable,
            "wal_segments": len(self.wal.segments),
            "fsyncs": self.wal.commit.fsyncs,
            "open_txns": len(self.txns),
            "missing_chunks": missing,
            "checkpoint_lsn": self._ckpt_lsn,
            "cold_hwm": self._cold_hwm,
            "hot_bytes": self.hot_bytes(),
            "cold_segments": cold_segments,
            "cold_chunks": cold,
            "compacted_segments": self._compacted["segments"],
            "compacted_chunks": self._compacted["chunks"],
            "compaction_bytes_copied": self._compacted["bytes_copied"],
            "compaction_bytes_freed": self._compacted["bytes_freed"],
            "buffer_pool": self.pool.stats(),
        }

    def _maintenance_loop(self) -> None:
        cfg = self.config
        while not self._stop.wait(cfg.maintenance_interval_s):
            try:
                self.reap_expired()
                grown = self.wal.bytes_appended - self._ckpt_at_bytes
                due = time.monotonic() - self._ckpt_at_time >= cfg.checkpoint_interval_s
                checkpointed = False
                if grown >= cfg.checkpoint_bytes or (due and grown > 0):
                    self.checkpoint()
                    checkpointed = True
                # compaction after a checkpoint (which may have made segments eligible),
                # or again at once while a backlog is left over from the last pass
                if (cfg.compact_live_ratio > 0 and (checkpointed or self._compact_more)
                        and _compaction_candidates(self, cfg.compact_live_ratio)):
                    report = self.compact(cfg.compact_live_ratio, cfg.compact_max_bytes)
                    self._compact_more = report.more
                else:
                    self._compact_more = False
            except Exception:  # noqa: BLE001 - keep maintaining; the next call reports
                if self._closed:
                    return

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("engine is closed")

    def close(self) -> None:
        """Clean shutdown: a final checkpoint makes the next open's recovery trivial."""
        if self._closed:
            return
        self._stop.set()
        if self._maint is not None:
            self._maint.join()
        with self._lock:
            self._closed = True  # no new changes; queued ones still publish
        self._publisher.stop()
        if self._publisher.failure is None:
            self.checkpoint()
        self.wal.close()
        self.catalog.close()
        self._dir_lock.release()

    def abandon(self) -> None:
        """Drop the engine the way a crash does: no checkpoint, no final sync; the
        files stay as they are. For crash-simulating tests and for fatal errors."""
        self._stop.set()
        if self._maint is not None:
            self._maint.join()
        with self._lock:
            self._closed = True
        self._publisher.fail(EngineClosed("engine abandoned"))
        self._publisher.join()
        self.wal.close(sync=False)
        self.catalog.close()
        self._dir_lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ObjectReader:
    """Streams a byte range of one object version; close() releases its segments."""

    def __init__(self, engine: Engine, info: ObjectInfo, locations: list, segs: set):
        self.engine = engine
        self.info = info
        self._locations = locations
        self._segs = segs
        self._closed = False

    def spans(self, start: int = 0, end: int | None = None) -> list:
        """[(chunk id, lsn, length, lo, hi)] for the chunks covering [start, end): the
        arguments of Engine.read_chunk / read_chunk_bytes, in order."""
        end = self.info.size if end is None else min(end, self.info.size)
        out = []
        pos = 0
        for cid, length, lsn in self._locations:
            c_start, c_end = pos, pos + length
            pos = c_end
            if c_end <= start:
                continue
            if c_start >= end:
                break
            out.append((cid, lsn, length, max(start - c_start, 0), min(end, c_end) - c_start))
        return out

    def read(self, start: int = 0, end: int | None = None):
        """Yields buffers covering [start, end) of the object (end exclusive)."""
        for span in self.spans(start, end):
            yield from self.engine.read_chunk(*span)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine._unpin_segments(self._segs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

"""Crash recovery, ARIES-style: analysis, redo, undo. Runs every time an engine opens.

Analysis starts at the checkpoint the master record names, with that checkpoint's
transaction table, and reads every record after it: chunks join their transaction,
APPLY, FILL and END records end one, CLRs remove a compensated chunk. It finds the end of
the log, cutting a torn tail; corruption anywhere else stops recovery with an error.
RELOCATE records (compaction) end their transaction as FILL records do.

Redo starts at the checkpoint's redo point and replays each APPLY, CLR, FILL and
RELOCATE record whose LSN is above the catalog's own `catalog_wal_lsn` (the pageLSN
rule), so it is idempotent and safe to interrupt. A FILL (a chunk fetched from a peer,
written as a CHUNK under an internal transaction that the FILL commits) fills its row
only if the row is still MISSING at that point of the log; otherwise its bytes are
dead. A fill's CHUNK without its FILL is a loser like any other, and undone. A RELOCATE (a live chunk
copied forward by compaction, its copy written as a CHUNK under an internal
transaction that the RELOCATE commits) moves its row only if the row still points at
the old copy at that point of the log; otherwise the new copy is dead. A relocation's
CHUNK without its RELOCATE is a loser too: the row stays where it was.

Undo rolls back the losers, transactions with chunks but no commit, writing one CLR
per chunk (newest first, each naming the next to undo) and an END. With a grace period
(for replicas, whose coordinator may still commit), a transaction younger than the
grace is kept open and left to the run-time timeout instead.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .checkpoint import CheckpointData, read_master
from .entries import decode_entry
from .log_records import ApplyRecord, ClrRecord, EndRecord, FillRecord, RelocateRecord, parse_chunk
from .transactions import TxnTable
from .wal_record import RecordType

if TYPE_CHECKING:
    from .engine import Engine

REDO_BATCH = 512  # records redone per LMDB transaction
# records with a catalog effect
_REDONE = (RecordType.APPLY, RecordType.CLR, RecordType.FILL, RecordType.RELOCATE)


@dataclass
class RecoveryReport:
    checkpoint_lsn: int | None = None
    redo_lsn: int = 0
    end_lsn: int = 0
    catalog_lsn_before: int = 0
    applied_lsn: int = 0
    records_scanned: int = 0
    records_redone: int = 0
    txns_undone: int = 0
    chunks_undone: int = 0
    txns_kept_open: int = 0
    tail_cut: list = field(default_factory=list)
    analysis_s: float = 0.0
    redo_s: float = 0.0
    undo_s: float = 0.0
    duration_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def recover(engine: "Engine") -> RecoveryReport:
    report = RecoveryReport()
    t0 = time.perf_counter()
    wal = engine.wal

    # ---- analysis ----------------------------------------------------------------
    ck_lsn = read_master(engine.dir)
    if ck_lsn is not None:
        ck_rec = wal.read_record(ck_lsn)
        if ck_rec.rtype != RecordType.CHECKPOINT:
            raise RuntimeError(f"master record points at LSN {ck_lsn}, which is not a checkpoint")
        ck = CheckpointData.decode(ck_rec.payload)
        txns = TxnTable.restore(ck.txns)
        report.checkpoint_lsn = ck_lsn
        report.redo_lsn = ck.redo_lsn
        scan_from = ck_rec.end
    else:
        txns = TxnTable()
        first = wal.segments[0] if wal.segments else 0
        report.redo_lsn = scan_from = first
    end = scan_from
    cuts: list = []
    for rec in wal.scan(scan_from, cuts):
        report.records_scanned += 1
        end = rec.end
        rtype = rec.rtype
        if rtype == RecordType.CHUNK:
            txn_id, chunk_id, ms, _data = parse_chunk(rec.payload)
            txns.add_chunk(txn_id, chunk_id, rec.lsn, rec.end - rec.lsn, ms)
        elif rtype == RecordType.APPLY:
            ar = ApplyRecord.decode(rec.payload)
            if ar.txn_id is not None:
                txns.end(ar.txn_id)
        elif rtype == RecordType.CLR:
            clr = ClrRecord.decode(rec.payload)
            txns.compensated(clr.txn_id, clr.chunk_lsn)
        elif rtype == RecordType.END:
            txns.end(EndRecord.decode(rec.payload).txn_id)
        elif rtype == RecordType.FILL:
            txns.end(FillRecord.decode(rec.payload).txn_id)  # commits the fill's chunk
        elif rtype == RecordType.RELOCATE:
            txns.end(RelocateRecord.decode(rec.payload).txn_id)  # commits the new copy
        elif rtype == RecordType.CHECKPOINT:
            # a checkpoint whose master record was never written: its table is
            # what we already hold, since we scanned everything before it
            pass
    report.tail_cut = [asdict(c) for c in cuts]
    report.end_lsn = end
    report.analysis_s = time.perf_counter() - t0

    # ---- redo ----------------------------------------------------------------------
    t1 = time.perf_counter()
    with engine.catalog.read() as t:
        cat_lsn = t.meta("catalog_wal_lsn", -1)
    report.catalog_lsn_before = max(cat_lsn, 0)
    if cat_lsn >= end:
        raise RuntimeError(
            f"catalog holds changes up to LSN {cat_lsn} but the log ends at {end}: "
            "the catalog is ahead of the durable log")
    redo_from = cat_lsn if cat_lsn >= report.redo_lsn else report.redo_lsn
    batch: list = []
    for rec in wal.scan(redo_from):
        if rec.lsn <= cat_lsn or rec.rtype not in _REDONE:
            continue
        batch.append(rec)
        if len(batch) >= REDO_BATCH:
            _redo_batch(engine, batch)
            report.records_redone += len(batch)
            batch = []
    if batch:
        _redo_batch(engine, batch)
        report.records_redone += len(batch)
    with engine.catalog.read() as t:
        engine._catalog_wal_lsn = t.meta("catalog_wal_lsn", 0)
        engine._applied_lsn = report.applied_lsn = t.meta("applied_lsn", 0)
    report.redo_s = time.perf_counter() - t1

    # ---- undo ----------------------------------------------------------------------
    t2 = time.perf_counter()
    wal.open_for_append(end)
    engine.txns = txns
    grace_ms = engine.config.undo_grace_s * 1000
    now_ms = time.time() * 1000
    for txn in list(txns.txns.values()):
        if grace_ms and txn.last_ms > now_ms - grace_ms:
            report.txns_kept_open += 1
            continue
        report.chunks_undone += engine.abort(txn.txn_id)
        report.txns_undone += 1
    report.undo_s = time.perf_counter() - t2
    report.duration_s = time.perf_counter() - t0
    return report


def _redo_batch(engine: "Engine", records: list) -> None:
    with engine.catalog.write() as t:
        for rec in records:
            if rec.rtype == RecordType.APPLY:
                ar = ApplyRecord.decode(rec.payload)
                engine._apply_to_catalog(t, ar, decode_entry(ar.entry), rec.lsn)
            elif rec.rtype == RecordType.FILL:
                engine._fill_to_catalog(t, FillRecord.decode(rec.payload))
            elif rec.rtype == RecordType.RELOCATE:
                engine._relocate_to_catalog(t, RelocateRecord.decode(rec.payload))
            else:
                engine._clrs_to_catalog(t, [(rec.lsn, ClrRecord.decode(rec.payload))])
        t.set_meta_at_end("catalog_wal_lsn", records[-1].lsn)

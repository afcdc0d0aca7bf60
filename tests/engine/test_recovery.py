"""Recovery: losers undone with CLRs, redo from the checkpoint, torn tails, grace
periods, interrupted rollbacks, run-time timeouts, segment reclamation."""

import os
import shutil

from engine import Engine
from engine import entries as E
from engine.log_records import ClrRecord
from engine.wal_record import RecordType
from engine_testkit import MIB, Writer, read_all


def reopen(data_dir, **kw):
    kw.setdefault("maintenance_interval_s", 0)
    return Engine(data_dir, **kw)


def test_losers_are_rolled_back_with_clrs_and_their_space_is_dead(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    w.put("b", "kept", b"K" * 5000)
    txn = eng.begin()
    for _ in range(3):
        eng.write_chunk(txn, os.urandom(4000))
    eng.wait_durable()
    eng.abandon()

    eng = reopen(data_dir)
    rep = eng.recovery_report
    assert rep.txns_undone == 1 and rep.chunks_undone == 3
    assert read_all(eng, "b", "kept") == b"K" * 5000
    assert len(eng.txns) == 0
    dead = sum(u.dead for u in eng.segment_usage())
    assert dead >= 12000
    clrs = [r for r in eng.wal.scan(0) if r.rtype == RecordType.CLR]
    undone = [ClrRecord.decode(r.payload) for r in clrs]
    assert len(undone) == 3 and undone[-1].undo_next == 0  # newest first, chain ends
    eng.close()
    eng = reopen(data_dir)  # and it stays done
    assert eng.recovery_report.txns_undone == 0
    eng.close()


def test_redo_rebuilds_a_catalog_that_lost_everything_since_the_checkpoint(data_dir):
    """Power loss can leave the catalog as of its last sync: redo must bring it back."""
    eng = reopen(data_dir)
    eng.close()  # a checkpoint with an (almost) empty catalog
    snapshot = data_dir + ".catalog-at-checkpoint"
    shutil.copytree(os.path.join(data_dir, "catalog"), snapshot)
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    data = {f"k{i}": os.urandom(1000 + i) for i in range(30)}
    for k, v in data.items():
        w.put("b", k, v)
    w.apply(E.DeleteObject("b", "k3"))
    w.apply(E.CopyObject("b", "k4", "b", "copy", 9))
    eng.abandon()
    shutil.rmtree(os.path.join(data_dir, "catalog"))
    shutil.copytree(snapshot, os.path.join(data_dir, "catalog"))

    eng = reopen(data_dir)
    rep = eng.recovery_report
    assert rep.records_redone == 1 + 30 + 1 + 1  # bucket, puts, delete, copy
    assert eng.applied_lsn == w.lsn
    keys = [k for k, _ in eng.list_objects("b").entries]
    assert sorted(keys) == sorted([k for k in data if k != "k3"] + ["copy"])
    for k, v in data.items():
        if k != "k3":
            assert read_all(eng, "b", k) == v
    assert read_all(eng, "b", "copy") == data["k4"]
    eng.close()


def test_redo_is_idempotent_when_the_catalog_is_already_current(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    w.put("b", "k", b"v")
    eng.abandon()
    eng = reopen(data_dir)
    assert eng.recovery_report.records_redone == 0
    assert eng.recovery_report.records_scanned >= 3
    assert read_all(eng, "b", "k") == b"v"
    eng.close()


def test_a_torn_tail_is_cut_and_reported(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    w.put("b", "k", b"v" * 100)
    txn = eng.begin()
    ref = eng.write_chunk(txn, b"t" * 10000)
    eng.abandon()
    seg = eng.wal.segment_of(ref.lsn)
    os.truncate(os.path.join(data_dir, "wal", f"{seg:016x}.wal"), ref.lsn - seg + 5000)
    eng = reopen(data_dir)
    rep = eng.recovery_report
    assert len(rep.tail_cut) == 1 and rep.tail_cut[0]["lsn"] == ref.lsn
    assert rep.txns_undone == 0  # the torn chunk never made it into the table
    assert read_all(eng, "b", "k") == b"v" * 100
    eng.close()


def test_interrupted_rollback_resumes_where_it_stopped(data_dir):
    eng = reopen(data_dir)
    txn = eng.begin()
    refs = [eng.write_chunk(txn, os.urandom(2000)) for _ in range(4)]
    eng.wait_durable()
    # a rollback that got as far as two CLRs before the crash
    for i in (3, 2):
        clr = ClrRecord(txn, refs[i].lsn, refs[i].end - refs[i].lsn, refs[i - 1].lsn)
        eng.wal.append(RecordType.CLR, [clr.encode()])
    eng.wait_durable()
    eng.abandon()
    eng = reopen(data_dir)
    assert eng.recovery_report.chunks_undone == 2  # only the two not yet compensated
    assert sum(u.dead for u in eng.segment_usage()) == sum(r.end - r.lsn for r in refs)
    eng.close()


def test_grace_period_keeps_young_transactions_open(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    txn = eng.begin()
    ref = eng.write_chunk(txn, b"replica chunk")
    eng.wait_durable()
    eng.abandon()
    eng = reopen(data_dir, undo_grace_s=3600)
    assert eng.recovery_report.txns_kept_open == 1 and txn in eng.txns
    # the coordinator's entry arrives later and commits it
    w = Writer(eng)
    w.apply(E.PutObject("b", "k", 13, "e", [(ref.chunk_id, 13)], 1, txn_id=txn))
    assert read_all(eng, "b", "k") == b"replica chunk"
    eng.close()


def test_idle_transactions_are_reaped_at_run_time(data_dir):
    eng = reopen(data_dir)
    idle = eng.begin()
    eng.write_chunk(idle, b"abandoned upload")
    busy = eng.begin()
    assert eng.reap_expired(timeout_s=3600) == []
    assert sorted(eng.reap_expired(timeout_s=0)) == sorted([idle, busy])
    assert len(eng.txns) == 0
    assert sum(u.dead for u in eng.segment_usage()) > 0
    eng.close()


def test_dead_segments_behind_the_checkpoint_are_deleted(data_dir):
    eng = reopen(data_dir, segment_size=256 << 10)
    w = Writer(eng)
    w.bucket()
    for i in range(12):
        w.put("b", f"tmp{i}", os.urandom(100 << 10))
    w.put("b", "keep", b"precious" * 1000)
    for i in range(12):
        w.apply(E.DeleteObject("b", f"tmp{i}"))
    before = len(eng.wal.segments)
    info = eng.checkpoint()
    assert info.reclaimed_bytes > 768 << 10 and len(eng.wal.segments) < before
    assert read_all(eng, "b", "keep") == b"precious" * 1000
    eng.close()
    eng = reopen(data_dir, segment_size=256 << 10)
    assert read_all(eng, "b", "keep") == b"precious" * 1000
    eng.close()


def test_a_reader_keeps_its_segments_alive(data_dir):
    eng = reopen(data_dir, segment_size=128 << 10)
    w = Writer(eng)
    w.bucket()
    data = os.urandom(100 << 10)
    w.put("b", "k", data)
    reader = eng.open_object("b", "k")
    w.apply(E.DeleteObject("b", "k"))
    for i in range(5):
        w.put("b", f"filler{i}", os.urandom(100 << 10))
    eng.checkpoint()
    assert b"".join(bytes(p) for p in reader.read()) == data  # deleted, but still streaming
    reader.close()
    freed = eng.checkpoint().reclaimed_bytes
    assert freed > 0
    eng.close()


def test_clean_close_makes_the_next_recovery_trivial(data_dir):
    eng = reopen(data_dir)
    w = Writer(eng)
    w.bucket()
    for i in range(100):
        w.put("b", f"k{i}", b"x" * 100)
    eng.close()
    eng = reopen(data_dir)
    rep = eng.recovery_report
    assert rep.records_scanned == 0 and rep.records_redone == 0 and rep.applied_lsn == 101
    eng.close()


def test_reclaim_keeps_chunks_of_changes_not_yet_published(data_dir):
    """Regression: a checkpoint between submit() and publication once deleted the
    segment holding the committing transaction's chunks, poisoning the engine."""
    import hashlib
    import time

    eng = reopen(data_dir, segment_size=4 * MIB)
    w = Writer(eng)
    w.bucket()
    a = eng.begin()
    data_a = os.urandom(MIB)
    ref_a = eng.write_chunk(a, data_a)
    loser = eng.begin()
    for _ in range(3):
        eng.write_chunk(loser, os.urandom(MIB - 4096))
    eng.wait_durable()
    eng.abort(loser)  # the rest of segment 0 is dead
    for i in range(2):
        w.put("b", f"other{i}", os.urandom(MIB))
    assert eng.wal.segment_of(ref_a.lsn) == eng.wal.segments[0] and len(eng.wal.segments) > 1
    real = eng._publisher._wait_durable
    eng._publisher._wait_durable = lambda end: (time.sleep(0.3), real(end))[1]  # widen the gap
    pending = eng.submit(w.next_lsn(), E.PutObject("b", "A", MIB, hashlib.md5(data_a).hexdigest(),
                                                     [(ref_a.chunk_id, MIB)], 1, txn_id=a))
    eng.checkpoint()
    assert pending.wait().ok
    assert read_all(eng, "b", "A") == data_a
    eng.close()
    eng = reopen(data_dir, segment_size=4 * MIB)
    assert read_all(eng, "b", "A") == data_a
    eng.close()

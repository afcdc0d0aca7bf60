"""WAL framing, segment rotation, torn-tail cutting, corruption reporting, group commit."""

import os
import threading

import pytest

from engine import Engine, WalCorruption
from engine.group_commit import GroupCommit
from engine.wal import Wal
from engine.wal_record import HEADER_SIZE, RecordType, padded


def make_wal(path, segment_size=4096, records=()):
    wal = Wal(str(path), segment_size=segment_size, fsync=False)
    wal.open_for_append(0)
    out = [wal.append(RecordType.APPLY, [p]) for p in records]
    return wal, out


def reopen_scan(path, segment_size=4096):
    wal = Wal(str(path), segment_size=segment_size, fsync=False)
    cuts = []
    recs = list(wal.scan(wal.segments[0] if wal.segments else 0, cuts))
    return wal, recs, cuts


def seg_path(path, start):
    return os.path.join(str(path), f"{start:016x}.wal")


def test_lsn_is_the_byte_address_and_records_round_trip(tmp_path):
    payloads = [b"a" * n for n in (0, 1, 7, 8, 100, 1000)]
    wal, out = make_wal(tmp_path, records=payloads)
    lsn = 0
    for (rec_lsn, end), p in zip(out, payloads):
        assert rec_lsn == lsn and rec_lsn % 8 == 0
        assert end - rec_lsn == padded(len(p))
        assert wal.read_record(rec_lsn).payload == p
        lsn = end
    wal.close()
    _, recs, cuts = reopen_scan(tmp_path)
    assert [r.payload for r in recs] == payloads and cuts == []


def test_rotation_keeps_records_whole_and_gives_big_records_their_own_segment(tmp_path):
    payloads = [bytes([i]) * 1500 for i in range(10)] + [b"X" * 10000, b"tail"]
    wal, out = make_wal(tmp_path, segment_size=4096, records=payloads)
    assert len(wal.segments) > 3
    for (lsn, end), seg in ((o, wal.segment_of(o[0])) for o in out):
        nxt = [s for s in wal.segments if s > seg]
        assert not nxt or end <= nxt[0], "a record spans two segments"
    wal.close()
    _, recs, cuts = reopen_scan(tmp_path)
    assert [r.payload for r in recs] == payloads and not cuts


@pytest.mark.parametrize("cut_into", [1, HEADER_SIZE - 1, HEADER_SIZE + 3, -1])
def test_torn_last_record_is_cut(tmp_path, cut_into):
    wal, out = make_wal(tmp_path, segment_size=1 << 20, records=[b"one" * 10, b"two" * 10, b"three" * 50])
    wal.close()
    last_lsn, last_end = out[-1]
    torn_at = last_lsn + (cut_into if cut_into > 0 else (last_end - last_lsn) - 1)
    os.truncate(seg_path(tmp_path, 0), torn_at)
    _, recs, cuts = reopen_scan(tmp_path, 1 << 20)
    assert [r.payload for r in recs] == [b"one" * 10, b"two" * 10]
    assert len(cuts) == 1 and cuts[0].lsn == last_lsn
    assert os.path.getsize(seg_path(tmp_path, 0)) == last_lsn  # the file was truncated


def test_bad_crc_in_last_record_is_cut(tmp_path):
    wal, out = make_wal(tmp_path, segment_size=1 << 20, records=[b"keep", b"flipme" * 20])
    wal.close()
    with open(seg_path(tmp_path, 0), "r+b") as f:
        f.seek(out[-1][0] + HEADER_SIZE + 5)
        f.write(b"\xff")
    _, recs, cuts = reopen_scan(tmp_path, 1 << 20)
    assert [r.payload for r in recs] == [b"keep"]
    assert cuts[0].reason == "CRC mismatch"


def test_garbage_after_the_last_record_is_cut(tmp_path):
    wal, out = make_wal(tmp_path, segment_size=1 << 20, records=[b"a", b"b"])
    wal.close()
    with open(seg_path(tmp_path, 0), "ab") as f:
        f.write(os.urandom(333))
    _, recs, cuts = reopen_scan(tmp_path, 1 << 20)
    assert [r.payload for r in recs] == [b"a", b"b"] and cuts[0].bytes_cut == 333


def test_corrupt_record_in_the_middle_is_reported_not_skipped(tmp_path):
    payloads = [bytes([65 + i]) * 200 for i in range(6)]
    wal, out = make_wal(tmp_path, segment_size=1 << 20, records=payloads)
    wal.close()
    bad_lsn = out[2][0]
    with open(seg_path(tmp_path, 0), "r+b") as f:
        f.seek(bad_lsn + HEADER_SIZE + 10)
        f.write(b"\x00")
    size_before = os.path.getsize(seg_path(tmp_path, 0))
    wal = Wal(str(tmp_path), segment_size=1 << 20, fsync=False)
    with pytest.raises(WalCorruption) as err:
        list(wal.scan(0, []))
    assert err.value.offset == bad_lsn and "valid record follows" in err.value.reason
    assert os.path.getsize(seg_path(tmp_path, 0)) == size_before  # nothing was cut


def test_corrupt_record_in_a_sealed_segment_is_reported(tmp_path):
    wal, out = make_wal(tmp_path, segment_size=2048, records=[b"x" * 1500 for _ in range(4)])
    wal.close()
    assert len(wal.segments) >= 3
    first = wal.segments[0]
    with open(seg_path(tmp_path, first), "r+b") as f:
        f.seek(HEADER_SIZE + 1)
        f.write(b"!")
    wal = Wal(str(tmp_path), segment_size=2048, fsync=False)
    with pytest.raises(WalCorruption, match="sealed segment"):
        list(wal.scan(0, []))


def test_engine_refuses_to_open_over_mid_log_corruption(data_dir):
    from engine_testkit import Writer

    eng = Engine(data_dir, maintenance_interval_s=0)
    w = Writer(eng)
    w.bucket()
    for i in range(5):
        w.put("b", f"k{i}", bytes([65 + i]) * 3000)
    eng.abandon()  # a crash: recovery will have to scan these records
    wal_dir = os.path.join(data_dir, "wal")
    path = os.path.join(wal_dir, sorted(os.listdir(wal_dir))[0])
    with open(path, "r+b") as f:
        pos = f.read().find(b"C" * 3000)  # the third object's chunk, mid-log
        assert pos > 0
        f.seek(pos + 100)
        f.write(b"c")
    with pytest.raises(WalCorruption):
        Engine(data_dir, maintenance_interval_s=0)


def test_group_commit_shares_fsyncs_and_never_acknowledges_early(tmp_path):
    written = [0]
    durable_by_sync = [0]
    lock = threading.Lock()
    syncs = []

    def sync_point():
        with lock:
            target = written[0]

        def do_sync():
            syncs.append(target)
            threading.Event().wait(0.002)  # an fsync takes time; others pile up
            durable_by_sync[0] = max(durable_by_sync[0], target)

        return target, do_sync

    gc = GroupCommit(sync_point)
    violations = []

    def writer(n):
        for i in range(50):
            with lock:
                written[0] += 10
                mine = written[0]
            gc.wait_durable(mine)
            if durable_by_sync[0] < mine:
                violations.append((n, mine))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not violations, "a writer returned before an fsync covered its record"
    assert gc.durable == 16 * 50 * 10
    assert len(syncs) < 16 * 50 / 4, f"{len(syncs)} fsyncs for 800 commits: no grouping"


def test_real_fsync_group_commit_on_the_engine_wal(tmp_path):
    wal = Wal(str(tmp_path), segment_size=1 << 20, fsync=True)
    wal.open_for_append(0)
    before = wal.commit.fsyncs

    def writer():
        for _ in range(20):
            _, end = wal.append(RecordType.APPLY, [b"x" * 100])
            wal.wait_durable(end)
            assert wal.durable >= end

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wal.commit.fsyncs - before < 160
    wal.close()


def test_rotation_while_others_wait_for_durability_does_not_deadlock(tmp_path):
    """Regression: rotation (WAL lock, then group-commit lock) against a group-commit
    leader (group-commit lock, then WAL lock) deadlocked."""
    wal = Wal(str(tmp_path), segment_size=4096, fsync=True)
    wal.open_for_append(0)
    errors = []

    def writer():
        try:
            for _ in range(100):
                _, end = wal.append(RecordType.APPLY, [b"r" * 700])
                wal.wait_durable(end)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "writers hung: deadlock"
    assert not errors and len(wal.segments) > 50
    wal.close()

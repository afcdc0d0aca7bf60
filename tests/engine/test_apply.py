"""Applying committed entries: every entry type, deterministic errors, idempotency by
LSN, chunk reference counts and live/dead accounting."""

import hashlib
import os

import pytest

from engine import Engine, UnknownTransaction
from engine import entries as E
from engine_testkit import MIB, Writer, read_all


@pytest.fixture
def eng(data_dir):
    e = Engine(data_dir, maintenance_interval_s=0)
    yield e
    e.close()


def live_dead(eng):
    usage = eng.segment_usage()
    return sum(u.live for u in usage), sum(u.dead for u in usage)


def test_reapplying_at_or_below_the_applied_lsn_is_a_noop(eng):
    assert eng.apply(1, E.CreateBucket("b", 1)).ok
    again = eng.apply(1, E.CreateBucket("b", 1))
    assert again.skipped and again.error is None
    assert eng.apply(2, E.DeleteBucket("b")).ok
    # a journal replay of LSN 1 after a restart must not resurrect the bucket
    assert eng.apply(1, E.CreateBucket("b", 1)).skipped
    assert eng.bucket("b") is None and eng.applied_lsn == 2


def test_replay_after_restart_is_idempotent(data_dir):
    eng = Engine(data_dir, maintenance_interval_s=0)
    w = Writer(eng)
    w.bucket()
    w.put("b", "k", b"v1")
    log = [(1, E.CreateBucket("b", 1))]
    eng.close()
    eng = Engine(data_dir, maintenance_interval_s=0)
    for lsn, entry in log:
        assert eng.apply(lsn, entry).skipped
    assert read_all(eng, "b", "k") == b"v1"
    eng.close()


def test_bucket_lifecycle_and_errors(eng):
    w = Writer(eng)
    assert w.bucket("b").ok
    assert w.apply(E.CreateBucket("b", 2)).error == "BucketAlreadyOwnedByYou"
    assert w.apply(E.DeleteBucket("nope")).error == "NoSuchBucket"
    w.put("b", "k", b"x")
    assert w.apply(E.DeleteBucket("b")).error == "BucketNotEmpty"
    assert w.apply(E.DeleteObject("b", "k")).value == {"deleted": True}
    assert w.apply(E.DeleteObject("b", "k")).value == {"deleted": False}
    assert w.apply(E.DeleteBucket("b")).ok
    assert eng.list_buckets() == []


def test_put_into_missing_bucket_fails_and_its_chunks_are_dead(eng):
    w = Writer(eng)
    res = w.put("nobucket", "k", b"z" * 5000)
    assert res.error == "NoSuchBucket"
    live, dead = live_dead(eng)
    assert live == 0 and dead >= 5000


def test_overwrite_and_delete_move_bytes_from_live_to_dead(eng):
    w = Writer(eng)
    w.bucket()
    w.put("b", "k", os.urandom(10000))
    live1, dead1 = live_dead(eng)
    assert live1 >= 10000 and dead1 == 0
    w.put("b", "k", os.urandom(20000))
    live2, dead2 = live_dead(eng)
    assert live2 >= 20000 and live2 < live1 + 20000 and dead2 == live1
    w.apply(E.DeleteObject("b", "k"))
    live3, dead3 = live_dead(eng)
    assert live3 == 0 and dead3 == live1 + live2


def test_identical_chunks_are_stored_once_in_the_catalog(eng):
    w = Writer(eng)
    w.bucket()
    data = b"same" * 1000
    w.put("b", "a", data)
    w.put("b", "b", data)  # same content: the second copy is dead at once
    live, dead = live_dead(eng)
    assert live == dead
    w.apply(E.DeleteObject("b", "a"))
    assert read_all(eng, "b", "b") == data  # still referenced by "b"
    assert live_dead(eng)[0] == live


def test_copy_shares_chunks_and_honours_conditions(eng):
    w = Writer(eng)
    w.bucket("src")
    w.bucket("dst")
    data = os.urandom(3 * MIB + 17)
    w.put("src", "obj", data, meta={"content-type": "a/b"})
    etag = eng.head_object("src", "obj").etag
    live_before = live_dead(eng)[0]
    assert w.apply(E.CopyObject("src", "obj", "dst", "copy", 2000, if_etag="wrong")).error == "PreconditionFailed"
    assert w.apply(E.CopyObject("src", "missing", "dst", "c", 2000)).error == "NoSuchKey"
    assert w.apply(E.CopyObject("src", "obj", "nobucket", "c", 2000)).error == "NoSuchBucket"
    res = w.apply(E.CopyObject("src", "obj", "dst", "copy", 2000, if_etag=f'"{etag}"'))
    assert res.ok and res.value["etag"] == etag
    assert live_dead(eng)[0] == live_before  # no data copied
    info = eng.head_object("dst", "copy")
    assert info.meta == {"content-type": "a/b"} and info.mtime_ms == 2000
    w.apply(E.CopyObject("src", "obj", "src", "obj", 3000, meta={"x-amz-meta-k": "v"}))
    assert eng.head_object("src", "obj").meta == {"x-amz-meta-k": "v"}
    w.apply(E.DeleteObject("src", "obj"))
    assert read_all(eng, "dst", "copy") == data


def multipart(w, bucket, key, parts, upload_id="u1", min_part=5):
    w.apply(E.CreateMultipartUpload(bucket, key, upload_id, 1, {"content-type": "t/x"}))
    listed = []
    for number, data in parts:
        txn, chunks = w.chunks(data)
        etag = hashlib.md5(data).hexdigest()
        assert w.apply(E.PutPart(bucket, key, upload_id, number, len(data), etag, chunks, 1,
                                 txn_id=txn)).ok
        listed.append((number, etag))
    return listed


def test_multipart_complete_builds_the_object_and_its_etag(eng):
    w = Writer(eng)
    w.bucket()
    p1, p2, p3 = os.urandom(100), os.urandom(2 * MIB + 5), os.urandom(7)
    listed = multipart(w, "b", "big", [(1, p1), (2, p2), (3, p3)])
    res = w.apply(E.CompleteMultipartUpload("b", "big", "u1", listed, 5000, min_part_size=50))
    md5s = b"".join(hashlib.md5(p).digest() for p in (p1, p2, p3))
    assert res.ok and res.value["etag"] == hashlib.md5(md5s).hexdigest() + "-3"
    assert read_all(eng, "b", "big") == p1 + p2 + p3
    info = eng.head_object("b", "big")
    assert info.meta == {"content-type": "t/x"} and info.parts == [[100, 1], [2 * MIB + 5, 3], [7, 1]]
    assert eng.upload("b", "big", "u1") is None
    assert eng.list_parts("u1") == ([], False)


def test_multipart_errors_are_deterministic_results(eng):
    w = Writer(eng)
    w.bucket()
    listed = multipart(w, "b", "k", [(1, b"a" * 10), (2, b"b" * 10)])
    c = lambda parts, mps=5 << 20: w.apply(E.CompleteMultipartUpload("b", "k", "u1", parts, 1, mps))
    assert c([listed[1], listed[0]], 1).error == "InvalidPartOrder"
    assert c([(1, listed[0][1]), (2, "0" * 32)], 1).error == "InvalidPart"
    assert c([(1, listed[0][1]), (9, listed[1][1])], 1).error == "InvalidPart"
    assert c(listed).error == "EntityTooSmall"  # 10-byte first part under the 5 MiB minimum
    assert c(listed[:1]).ok  # a single (last) part may be small; part 2 is dropped
    assert read_all(eng, "b", "k") == b"a" * 10
    assert c(listed).error == "NoSuchUpload"


def test_part_overwrite_and_abort_release_chunks(eng):
    w = Writer(eng)
    w.bucket()
    multipart(w, "b", "k", [(1, os.urandom(1000)), (1, os.urandom(2000)), (2, os.urandom(500))])
    parts, truncated = eng.list_parts("u1")
    assert [(n, r["size"]) for n, r in parts] == [(1, 2000), (2, 500)] and not truncated
    assert w.apply(E.AbortMultipartUpload("b", "k", "u1")).ok
    assert w.apply(E.AbortMultipartUpload("b", "k", "u1")).error == "NoSuchUpload"
    assert w.apply(E.PutPart("b", "k", "u1", 3, 1, "e", [], 1)).error == "NoSuchUpload"
    assert live_dead(eng)[0] == 0


def test_delete_bucket_aborts_its_unfinished_uploads(eng):
    w = Writer(eng)
    w.bucket()
    multipart(w, "b", "k", [(1, b"data")])
    assert w.apply(E.DeleteBucket("b")).ok
    assert eng.upload("b", "k", "u1") is None and live_dead(eng)[0] == 0


def test_delete_objects_batch(eng):
    w = Writer(eng)
    w.bucket()
    for k in "abc":
        w.put("b", k, k.encode())
    res = w.apply(E.DeleteObjects("b", ["a", "c", "zz"]))
    assert res.value == {"deleted": ["a", "c"]}
    assert [k for k, _ in eng.list_objects("b").entries] == ["b"]


def test_unknown_transaction_and_entry_without_chunks(eng):
    w = Writer(eng)
    w.bucket()
    with pytest.raises(UnknownTransaction):
        eng.write_chunk(os.urandom(16), b"data")
    # a zero-byte object needs no transaction
    assert w.apply(E.PutObject("b", "empty", 0, hashlib.md5(b"").hexdigest(), [], 1)).ok
    assert read_all(eng, "b", "empty") == b""


def test_chunk_not_held_here_is_recorded_missing(eng):
    from engine import ChunkMissing

    w = Writer(eng)
    w.bucket()
    ghost = hashlib.sha256(b"elsewhere").digest()
    assert w.apply(E.PutObject("b", "k", 9, "e", [(ghost, 9)], 1)).ok
    with pytest.raises(ChunkMissing):
        read_all(eng, "b", "k")


def test_range_reads_across_chunks(eng):
    w = Writer(eng)
    w.bucket()
    data = os.urandom(3 * MIB + 1234)
    w.put("b", "k", data)
    for a, b in [(0, 1), (MIB - 1, MIB + 1), (5, 3 * MIB), (3 * MIB, 3 * MIB + 1234), (0, None)]:
        assert read_all(eng, "b", "k", a, b) == data[a:b]


def test_corrupt_chunk_bytes_are_detected_on_read(eng, data_dir):
    from engine import ChunkCorrupt

    w = Writer(eng)
    w.bucket()
    w.put("b", "small", b"S" * 5000)
    w.put("b", "large", b"L" * (2 * MIB))
    for marker in (b"S" * 5000, b"L" * MIB):
        wal_dir = os.path.join(data_dir, "wal")
        for name in os.listdir(wal_dir):
            with open(os.path.join(wal_dir, name), "r+b") as f:
                pos = f.read().find(marker)
                if pos >= 0:
                    f.seek(pos + 10)
                    f.write(b"?")
    with pytest.raises(ChunkCorrupt):
        read_all(eng, "b", "small")
    with pytest.raises(ChunkCorrupt):
        read_all(eng, "b", "large", 0, 10)  # even a small range verifies its whole chunk


def test_a_key_the_catalog_cannot_hold_is_refused_deterministically(data_dir):
    """Regression: a key over LMDB's limit raised inside the publisher, poisoning the
    engine and its WAL (restart failed in redo)."""
    from engine.catalog import max_key_bytes

    eng = Engine(data_dir, maintenance_interval_s=0)
    w = Writer(eng)
    w.bucket("bkt")
    limit = max_key_bytes("bkt")
    assert w.put("bkt", "k" * limit, b"fits").ok
    assert w.put("bkt", "k" * (limit + 1), b"too long").error == "KeyTooLongError"
    assert w.apply(E.CreateMultipartUpload("bkt", "m" * (limit + 1), "u", 1)).error == "KeyTooLongError"
    assert w.apply(E.CopyObject("bkt", "k" * limit, "bkt", "c" * (limit + 1), 1)).error == "KeyTooLongError"
    assert w.put("bkt", "after", b"still writable").ok
    eng.abandon()
    eng = Engine(data_dir, maintenance_interval_s=0)  # redo replays the refused entries too
    assert read_all(eng, "bkt", "k" * limit) == b"fits" and eng.head_object("bkt", "after")
    eng.close()


def test_conditional_puts_are_judged_at_apply_time(eng):
    """Two writers racing with If-None-Match: * both stream their data; the log
    decides, and exactly one wins (the loser's chunks are dead space)."""
    w = Writer(eng)
    w.bucket()
    t1, c1 = w.chunks(b"first writer")
    t2, c2 = w.chunks(b"second writer")
    first = w.apply(E.PutObject("b", "k", 12, "e1", c1, 1, txn_id=t1, if_none_match=True))
    second = w.apply(E.PutObject("b", "k", 13, "e2", c2, 1, txn_id=t2, if_none_match=True))
    assert first.ok and second.error == "PreconditionFailed"
    assert read_all(eng, "b", "k") == b"first writer"
    assert w.apply(E.PutObject("b", "k", 1, "e3", [], 1, if_match='"wrong"')).error == "PreconditionFailed"
    assert w.apply(E.PutObject("b", "nope", 1, "e3", [], 1, if_match="*")).error == "NoSuchKey"
    assert w.apply(E.PutObject("b", "k", 0, "e4", [], 1, if_match='"e1"')).ok
    assert eng.head_object("b", "k").etag == "e4"
    assert sum(u.live for u in eng.segment_usage()) == 0  # both writers' chunks are dead now

"""Cold compaction on a real engine and real `file://` shard stores: segments left
mostly dead by deletes are rewritten into one holding their live chunks, the old
shards go, and every live object still reads back from cold storage."""

from __future__ import annotations

import os

import pytest

from engine import Engine
from engine import entries as E
from tiering.cold_compactor import ColdCompactor
from tiering.cold_config import ColdConfig
from tiering.cold_reader import ColdReader
from tiering.shipper import Shipper

from test_shipper import Log, objects, read_object

MiB = 1 << 20


def cold_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(root) for f in fs)


@pytest.fixture
def setup(tmp_path):
    engine = Engine(str(tmp_path / "engine"), segment_size=MiB, maintenance_interval_s=0,
                    ship_retention=True)
    config = ColdConfig(stores=[f"file://{tmp_path}/cold/d{i}" for i in range(6)],
                        segment_bytes=400_000, seal_age_s=0.0, checkpoint_segments=1,
                        compact_live_ratio=0.5, history_retention_s=0)
    stores = config.open_stores(str(tmp_path))
    log = Log(engine)
    log.propose(E.CreateBucket("b", 1))
    shipper = Shipper(engine, config, stores, str(tmp_path / "ship"), propose=log.propose)
    compactor = ColdCompactor(engine, config, stores, str(tmp_path / "ship"), propose=log.propose,
                              store_shards=shipper._store_shards, delete_grace_s=0)
    yield engine, stores, log, shipper, compactor, tmp_path
    engine.close()


def ship_all(shipper):
    while shipper.step():
        pass


def test_mostly_dead_segments_are_rewritten_and_space_comes_back(setup):
    engine, stores, log, shipper, compactor, tmp = setup
    written = objects(log, 8, 300_000)
    ship_all(shipper)
    segments_before = len(engine.cold_segments())
    assert segments_before >= 4
    for key in list(written)[:6]:  # most of it dies
        log.propose(E.DeleteObject("b", key))
        del written[key]
    assert compactor.plan() is None  # no checkpoint covers the deletes yet
    for i in range(2):  # more writes: a checkpoint after the deletes gets recorded
        written.update(objects(log, 1, 300_000, tag=f"n{i}-"))
        ship_all(shipper)
    before = cold_bytes(f"{tmp}/cold")
    run = compactor.plan()
    assert run and len(run) >= 2
    first, last = run[0]["first"], run[-1]["last"]
    locations = compactor.compact(run)
    row = engine.cold_segment_for(first)
    assert row["first"] == first and row["last"] == last and row["locations"]["id"] == locations["id"]
    assert locations["entries"] == 0 and locations["compacted"] == [r["locations"]["id"] for r in run]
    assert len(engine.cold_segments()) < segments_before + 2
    compactor.delete_due()
    assert compactor.shards_deleted == 6 * len(run)
    assert cold_bytes(f"{tmp}/cold") < before
    # the hot copies go too: every live object now reads from the rewritten segment
    engine.checkpoint()
    engine.evict(0)
    reader = ColdReader(engine, stores)
    for key, data in written.items():
        assert read_object(engine, reader, key) == data
    # the checkpoint record survives the rows it was in
    ckpts = [r["locations"].get("checkpoint") for r in engine.cold_segments()]
    assert any(ckpts)
    # nothing left worth rewriting: a second plan finds nothing (or only newer dead rows)
    again = compactor.plan()
    assert again is None or again[0]["first"] > last


def test_a_stale_compaction_is_refused(setup):
    engine, stores, log, shipper, compactor, tmp = setup
    objects(log, 4, 300_000)
    ship_all(shipper)
    rows = engine.cold_segments()
    # a range that does not line up with the rows (it splits one): refused, no change
    res = log.propose(E.SegmentsCompacted(rows[0]["first"], rows[0]["last"] - 1, {"id": "x"}))
    assert res.error == "SegmentRangeMismatch"
    # above the HWM: refused
    res = log.propose(E.SegmentsCompacted(rows[0]["first"], engine.cold_hwm + 5, {"id": "x"}))
    assert res.error == "SegmentRangeMismatch"
    assert engine.cold_segments() == rows


def test_history_inside_the_retention_window_is_never_compacted(setup, tmp_path):
    engine, stores, log, shipper, compactor, tmp = setup
    compactor.config.history_retention_s = 3600
    written = objects(log, 6, 300_000)
    ship_all(shipper)
    for key in written:
        log.propose(E.DeleteObject("b", key))
    for i in range(2):
        objects(log, 1, 300_000, tag=f"n{i}-")
        ship_all(shipper)
    assert compactor.plan() is None  # all dead, but younger than an hour
    assert compactor.plan(now_ms=int(__import__("time").time() * 1000) + 3_700_000) is not None

"""Cold catalog checkpoints are kept for the history window and no longer, on a real
engine and real `file://` stores: the records of checkpoints older than the window
(but the newest of those) are dropped by a `CheckpointsDropped` entry, their shards
deleted, and rebuilds from cold storage alone, restores to any LSN inside the window
and `verify`'s view of what must exist still hold."""

from __future__ import annotations

import os

from engine import Engine
from engine import entries as E
from test_shipper import MiB, Log, objects
from tiering.checkpoint_retention import checkpoints_to_drop, recorded_checkpoints, retire_checkpoints
from tiering.cold_config import ColdConfig
from tiering.cold_rebuild import discover_checkpoints, rebuild
from tiering.segment_builder import plan_range
from tiering.shipper import Shipper


def setup(tmp_path):
    engine = Engine(str(tmp_path / "engine"), segment_size=MiB, maintenance_interval_s=0,
                    ship_retention=True)
    config = ColdConfig(stores=[f"file://{tmp_path}/cold/d{i}" for i in range(6)],
                        segment_bytes=256 << 10, seal_age_s=0.0, checkpoint_segments=1)
    stores = config.open_stores(str(tmp_path))
    log = Log(engine)
    log.propose(E.CreateBucket("b", 1))
    shipper = Shipper(engine, config, stores, str(tmp_path / "ship"), propose=log.propose)
    return engine, stores, log, shipper


def rows_of(engine):
    return engine.cold_segments(0, 1 << 30)


def etags(engine) -> dict:
    page = engine.list_objects("b", max_keys=100000)
    return {key: rec["etag"] for key, rec in page.entries}


def test_checkpoints_older_than_the_window_go_but_the_newest_of_them(tmp_path):
    engine, stores, log, shipper = setup(tmp_path)
    try:
        lsn_at = []  # the log LSN after each round: restore targets
        for r in range(6):  # a round per segment, a checkpoint per segment
            objects(log, 3, 100_000, tag=f"r{r}-")
            while shipper.step():
                pass
            lsn_at.append(log.lsn)
        recorded = recorded_checkpoints(rows_of(engine))
        assert len(recorded) >= 4
        times = [ms for ms, _c in recorded]
        assert times == sorted(times) and len(set(times)) == len(times)
        # the window begins between the third and the fourth checkpoint
        now_ms = times[3] + 3_600_000
        retention_s = (now_ms - (times[2] + times[3]) / 2) / 1000
        doomed = checkpoints_to_drop(rows_of(engine), now_ms, retention_s)
        assert [c["id"] for c in doomed] == [c["id"] for _ms, c in recorded[:2]]

        before = etags(engine)
        applied = log.lsn
        dropped, deleted = retire_checkpoints(engine, stores, log.propose, retention_s,
                                              garbage_age_s=60, now=now_ms / 1000)
        assert dropped == 2 and deleted == 2 * 6
        assert log.lsn == applied + 1  # one CheckpointsDropped entry
        kept = [c["id"] for _ms, c in recorded[2:]]
        assert [c["id"] for _ms, c in recorded_checkpoints(rows_of(engine))] == kept
        # and a checkpoint stored after the last segment, to be recorded by the next one
        pending = [shipper._pending_checkpoint["id"]] if shipper._pending_checkpoint else []
        assert sorted(c["id"] for c in discover_checkpoints(stores)) == sorted(kept + pending)
        # the entry alone is cold bookkeeping: it is not shipped as a segment of its own
        assert plan_range(engine, engine.cold_hwm + 1, log.lsn, 1 << 20) is None

        # a rebuild from cold storage alone starts from the newest checkpoint and is whole
        report = rebuild(stores, str(tmp_path / "rebuilt"))
        assert report.checkpoint_lsn == recorded[-1][1]["lsn"]
        rebuilt = Engine(str(tmp_path / "rebuilt"), maintenance_interval_s=0)
        try:
            assert etags(rebuilt) == before
        finally:
            rebuilt.close()
        # a restore to the oldest LSN the window holds starts from the newest old checkpoint
        oldest_kept = recorded[2][1]["lsn"]
        target = next(lsn for lsn in lsn_at if lsn >= oldest_kept)
        report = rebuild(stores, str(tmp_path / "restored"), upto_lsn=target)
        assert report.checkpoint_lsn == oldest_kept
        restored = Engine(str(tmp_path / "restored"), maintenance_interval_s=0)
        try:
            assert restored.applied_lsn >= target
            assert set(etags(restored)) == {k for k in before if int(k[1]) <= lsn_at.index(target)}
        finally:
            restored.close()

        # with no window at all, the newest checkpoint still stays: rebuilds need one
        retire_checkpoints(engine, stores, log.propose, 0, garbage_age_s=60, now=now_ms / 1000)
        left = recorded_checkpoints(rows_of(engine))
        assert [c["id"] for _ms, c in left] == [recorded[-1][1]["id"]]
        assert sorted(c["id"] for c in discover_checkpoints(stores)) == sorted([recorded[-1][1]["id"]] + pending)
    finally:
        engine.close()


def test_an_unrecorded_checkpoint_is_deleted_only_when_old_and_behind_the_newest(tmp_path):
    """A checkpoint stored but not (yet) recorded: one newer than every recorded
    checkpoint may be on its way to being recorded and stays; an older one goes once
    older than garbage_age_s."""
    engine, stores, log, shipper = setup(tmp_path)
    try:
        for r in range(3):
            objects(log, 3, 100_000, tag=f"r{r}-")
            while shipper.step():
                pass
        pending = shipper.ship_checkpoint()  # stored now, recorded by no row
        recorded = recorded_checkpoints(rows_of(engine))
        assert pending["lsn"] > recorded[-1][1]["lsn"]
        old = recorded[0][1]
        # make the oldest recorded one unrecorded (as a dropped or orphan one would be)
        for row in rows_of(engine):
            if row["locations"].get("checkpoint", {}).get("id") == old["id"]:
                loc = {k: v for k, v in row["locations"].items() if k != "checkpoint"}
                with engine.catalog.write() as t:
                    t.put_cold_segment(row["first"], row["last"], loc)
        ids = {c["id"] for c in discover_checkpoints(stores)}
        assert {old["id"], pending["id"]} <= ids
        import time as _time

        now = _time.time()
        assert retire_checkpoints(engine, stores, log.propose, 1e9, garbage_age_s=3600, now=now) == (0, 0)
        dropped, deleted = retire_checkpoints(engine, stores, log.propose, 1e9, garbage_age_s=3600,
                                              now=now + 7200)
        assert (dropped, deleted) == (0, 6)
        left = {c["id"] for c in discover_checkpoints(stores)}
        assert old["id"] not in left and pending["id"] in left
        assert os.path.isdir(str(tmp_path / "cold"))
    finally:
        engine.close()

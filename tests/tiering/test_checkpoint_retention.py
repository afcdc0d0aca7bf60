"""Cold catalog checkpoints are kept for the history window and no longer, on a real
engine and real `file://` stores: the records of checkpoints older than the window
(but the newest of those) are dropped by a `CheckpointsDropped` entry, their shards
deleted, and rebuilds from cold storage alone, restores to any LSN inside the window
and `verify`'s view of what must exist still hold."""

from __future__ import annotations

import hashlib
import os
import time

from engine import Engine
from engine import entries as E
from test_shipper import checkpointing, objects
from engine.state_machine import replayable
from tiering.checkpoint_retention import (CLOCK_MARGIN_MAX_S, checkpoints_to_drop, recorded_checkpoints,
                                          retire_checkpoints)
from tiering.cold_rebuild import discover_checkpoints, rebuild, replay
from tiering.segment_builder import plan_range
from tiering.shipper import Shipper


def setup(tmp_path):
    engine, config, stores, log = checkpointing(tmp_path, 256 << 10)
    shipper = Shipper(engine, config, stores, str(tmp_path / "ship"), propose=log.propose)
    return engine, stores, log, shipper


def put_now(log, tag: str, n: int, size: int) -> None:
    """Objects stamped with the real time, so that restores by time can find them."""
    for i in range(n):
        data = os.urandom(size)
        txn = log.engine.begin()
        log.engine.write_chunk(txn, data)
        log.engine.wait_durable()
        res = log.propose(E.PutObject("b", f"{tag}{i}", len(data), hashlib.md5(data).hexdigest(),
                                      [(hashlib.sha256(data).digest(), len(data))],
                                      int(time.time() * 1000), txn_id=txn))
        assert res.ok, res


def rows_of(engine):
    return engine.cold_segments(0, 1 << 30)


def etags(engine) -> dict:
    page = engine.list_objects("b", max_keys=100000)
    return {key: rec["etag"] for key, rec in page.entries}


def test_checkpoints_older_than_the_window_go_but_the_newest_of_them(tmp_path):
    engine, stores, log, shipper = setup(tmp_path)
    try:
        lsn_at, ms_at = [], []  # after each round: restore targets
        for r in range(6):  # a round per segment, a checkpoint per segment
            put_now(log, f"r{r}-", 3, 100_000)
            while shipper.step():
                pass
            lsn_at.append(log.lsn)
            ms_at.append(int(time.time() * 1000))
            time.sleep(0.01)
        recorded = recorded_checkpoints(rows_of(engine))
        assert len(recorded) >= 5
        times = [ms for ms, _c in recorded]
        assert times == sorted(times) and len(set(times)) == len(times)
        # the newest recorded checkpoint's own record is above the HWM (it ships with
        # the next segment): a replay of cold storage cannot start from it yet
        hwm = engine.cold_hwm
        assert not replayable(recorded[-1][1], hwm) and replayable(recorded[-2][1], hwm)
        pending = shipper._pending_checkpoint  # stored after the last segment, unrecorded
        assert pending is not None and pending["lsn"] > recorded[-1][1]["lsn"]

        # the window begins between the third and the fourth checkpoint
        now_ms = times[3] + 20 * 3_600_000  # a window long enough for the widest clock margin
        retention_s = (now_ms - (times[2] + times[3]) / 2) / 1000 - CLOCK_MARGIN_MAX_S
        doomed = checkpoints_to_drop(rows_of(engine), now_ms, retention_s, hwm)
        assert [c["id"] for c in doomed] == [c["id"] for _ms, c in recorded[:2]]

        before = etags(engine)
        applied = log.lsn
        dropped, deleted = retire_checkpoints(engine, stores, log.propose, retention_s,
                                              garbage_age_s=60, now=now_ms / 1000)
        assert dropped == 2 and deleted == 2 * 6
        assert log.lsn == applied + 1  # one CheckpointsDropped entry
        kept = [c["id"] for _ms, c in recorded[2:]]
        assert [c["id"] for _ms, c in recorded_checkpoints(rows_of(engine))] == kept
        assert sorted(c["id"] for c in discover_checkpoints(stores)) == sorted(kept + [pending["id"]])
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
        # restores to the oldest LSN, and the oldest moment, the window holds start from
        # the newest old checkpoint
        oldest_kept = recorded[2][1]["lsn"]
        round_ = next(i for i, lsn in enumerate(lsn_at) if lsn >= oldest_kept)
        for name, kw in (("by-lsn", {"upto_lsn": lsn_at[round_]}), ("by-time", {"upto_ms": ms_at[round_]})):
            report = rebuild(stores, str(tmp_path / name), **kw)
            assert report.checkpoint_lsn == oldest_kept, name
            restored = Engine(str(tmp_path / name), maintenance_interval_s=0)
            try:
                assert set(etags(restored)) == {k for k in before if int(k[1]) <= round_}, name
            finally:
                restored.close()

        # with no window at all, what rebuilds and rehydrates start from stays: the
        # newest recorded checkpoint, and the newest one a replay can start from
        retire_checkpoints(engine, stores, log.propose, 0, garbage_age_s=60, now=now_ms / 1000)
        left = [c["id"] for _ms, c in recorded_checkpoints(rows_of(engine))]
        assert left == [recorded[-2][1]["id"], recorded[-1][1]["id"]]
        assert sorted(c["id"] for c in discover_checkpoints(stores)) == sorted(left + [pending["id"]])
        report, rehydrated, _read = replay(stores, str(tmp_path / "rehydrated"),
                                           checkpoint=next(c for c in discover_checkpoints(stores)
                                                           if c["id"] == left[0]))
        try:  # as `tidestore rehydrate` requires: the replay's HWM reaches the checkpoint
            assert rehydrated.cold_hwm >= recorded[-2][1]["lsn"]
        finally:
            rehydrated.close()
    finally:
        engine.close()


def test_a_deposed_leader_does_not_record_its_stale_checkpoint(tmp_path):
    """A checkpoint stored by a leader that then lost its post is never recorded: a
    newer leader may have shipped past it, and retention deletes unrecorded ones."""
    engine, stores, log, shipper = setup(tmp_path)
    try:
        objects(log, 3, 100_000, tag="a")
        while shipper.step():
            pass
        stale = shipper._pending_checkpoint
        assert stale is not None
        other = Shipper(engine, shipper.config, stores, str(tmp_path / "ship2"), propose=log.propose)
        objects(log, 3, 100_000, tag="b")
        while other.step():  # another leader ships past the stale checkpoint's LSN
            pass
        objects(log, 3, 100_000, tag="c")
        while shipper.step():  # the first leads again
            pass
        recorded = {c["id"] for _ms, c in recorded_checkpoints(rows_of(engine))}
        assert stale["id"] not in recorded
        leader = [True]
        follower = Shipper(engine, shipper.config, stores, str(tmp_path / "ship3"), propose=log.propose,
                           is_leader=lambda: leader[0])
        objects(log, 3, 100_000, tag="d")
        while follower.step():
            pass
        assert follower._pending_checkpoint is not None
        leader[0] = False
        assert not follower.step() and follower._pending_checkpoint is None
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

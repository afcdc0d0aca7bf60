"""The shipper on a real engine and real `file://` shard stores: a shipment advances
the HWM, evicted chunks read back from the shards, and every crash point of the
shipping protocol leaves the HWM where it was and is repaired by the retry."""

from __future__ import annotations

import hashlib
import os

import pytest

from engine import Engine
from engine import entries as E
from tiering.chunk_cache import ChunkCache
from tiering.cold_config import ColdConfig
from tiering.cold_reader import ColdReader
from tiering.errors import ColdChunkUnavailable
from tiering.shipper import Shipper, shard_name, segment_id

MiB = 1 << 20


def cid(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Log:
    """A one-member log on the engine: entries applied at LSNs 1, 2, ..."""

    def __init__(self, engine):
        self.engine = engine
        self.lsn = engine.applied_lsn
        self.proposals = 0
        self.fail_next = 0

    def propose(self, entry):
        self.proposals += 1
        if self.fail_next:
            self.fail_next -= 1
            raise TimeoutError("no commit (the shipper's leader lost its quorum)")
        self.lsn += 1
        return self.engine.apply(self.lsn, entry)

    def put(self, key: str, data: bytes):
        txn = self.engine.begin()
        self.engine.write_chunk(txn, data)
        self.engine.wait_durable()
        res = self.propose(E.PutObject("b", key, len(data), hashlib.md5(data).hexdigest(),
                                       [(cid(data), len(data))], 1000, txn_id=txn))
        assert res.ok, res


@pytest.fixture
def setup(tmp_path):
    engine = Engine(str(tmp_path / "engine"), segment_size=MiB, maintenance_interval_s=0,
                    ship_retention=True)
    config = ColdConfig(stores=[f"file://{tmp_path}/cold/d{i}" for i in range(6)],
                        segment_bytes=2 * MiB, seal_age_s=0.0)
    stores = config.open_stores(str(tmp_path))
    log = Log(engine)
    log.propose(E.CreateBucket("b", 1))
    shipper = Shipper(engine, config, stores, str(tmp_path / "ship"), propose=log.propose)
    yield engine, config, stores, log, shipper, tmp_path
    engine.close()


def checkpointing(tmp_path, segment_bytes: int):
    """An engine, shard stores and a log, shipped with a checkpoint after every segment."""
    engine = Engine(str(tmp_path / "engine"), segment_size=MiB, maintenance_interval_s=0,
                    ship_retention=True)
    config = ColdConfig(stores=[f"file://{tmp_path}/cold/d{i}" for i in range(6)],
                        segment_bytes=segment_bytes, seal_age_s=0.0, checkpoint_segments=1)
    log = Log(engine)
    log.propose(E.CreateBucket("b", 1))
    return engine, config, config.open_stores(str(tmp_path)), log


def objects(log, n: int, size: int, tag: str = "o") -> dict:
    out = {}
    for i in range(n):
        data = os.urandom(size)
        log.put(f"{tag}{i}", data)
        out[f"{tag}{i}"] = data
    return out


def read_object(engine, reader, key):
    info = engine.head_object("b", key)
    return b"".join(reader.read_chunk(c) for c, _n in info.chunks)


def test_a_shipment_advances_the_hwm_and_evicted_chunks_read_back(setup):
    engine, config, stores, log, shipper, tmp = setup
    written = objects(log, 12, 300_000)
    while shipper.step():
        pass
    assert engine.cold_hwm == log.lsn - 1  # all but the last SegmentShipped itself
    assert shipper.state.segments_shipped >= 2  # 3.6 MB in 2 MiB segments
    engine.checkpoint()
    report = engine.evict(0)
    assert report.segments_evicted > 0
    reader = ColdReader(engine, stores, ChunkCache(str(tmp / "cache"), 0))
    evicted = 0
    for key, data in written.items():
        info = engine.chunk_info(engine.head_object("b", key).chunks[0][0])
        evicted += info.state == "cold"
        assert read_object(engine, reader, key) == data
    assert evicted > 0 and reader.reads >= evicted


def test_the_cache_serves_repeated_cold_reads_and_drops_damaged_files(setup):
    engine, config, stores, log, shipper, tmp = setup
    data = os.urandom(200_000)
    log.put("x", data)
    while shipper.step():
        pass
    cache = ChunkCache(str(tmp / "cache"), 10 * MiB)
    reader = ColdReader(engine, stores, cache)
    chunk = cid(data)
    assert reader.read_chunk(chunk) == data and reader.read_chunk(chunk) == data
    assert reader.reads == 1 and cache.hits == 1
    with open(os.path.join(cache.dir, chunk.hex()), "r+b") as f:
        f.write(b"damage")
    assert reader.read_chunk(chunk) == data and reader.reads == 2


def test_a_store_down_leaves_the_hwm_and_the_retry_ships(setup):
    engine, config, stores, log, shipper, tmp = setup
    written = objects(log, 4, 100_000)
    hi = log.lsn
    os.rename(f"{tmp}/cold/d4", f"{tmp}/cold/d4-away")  # a drive unmounted
    assert not shipper.step()
    assert engine.cold_hwm == 0 and log.proposals == 1 + 4  # nothing proposed
    assert shipper.state.failures == 1 and "d4" in shipper.state.last_error
    assert shipper.state.retry_at > 0
    leftovers = [f for d in range(4) for _r, _d, fs in os.walk(f"{tmp}/cold/d{d}") for f in fs]
    assert leftovers == []  # no shard committed, no temporary file left behind
    os.rename(f"{tmp}/cold/d4-away", f"{tmp}/cold/d4")
    shipper.state.retry_at = 0  # skip the backoff
    assert shipper.step()
    assert engine.cold_hwm == hi
    reader = ColdReader(engine, stores)
    for key, data in written.items():
        assert read_object(engine, reader, key) == data


def test_crash_after_three_of_six_shards_then_retry(setup):
    engine, config, stores, log, shipper, tmp = setup
    written = objects(log, 4, 100_000)
    hi = log.lsn
    log.fail_next = 1  # the shipper dies before its entry commits...
    assert not shipper.step()
    seg = segment_id(1, hi)
    for i in (3, 4, 5):  # ...and only shards 0-2 had reached their stores
        os.unlink(f"{tmp}/cold/d{i}/{shard_name(seg, i)}")
    assert engine.cold_hwm == 0
    shipper.state.retry_at = 0
    assert shipper.step() and engine.cold_hwm == hi
    for i in range(6):
        assert os.path.exists(f"{tmp}/cold/d{i}/{shard_name(seg, i)}")
    engine.checkpoint()
    engine.evict(0)
    reader = ColdReader(engine, stores)
    for key, data in written.items():
        assert read_object(engine, reader, key) == data


def test_crash_before_the_entry_commits_is_retried_with_the_same_shards(setup):
    engine, config, stores, log, shipper, tmp = setup
    objects(log, 3, 100_000)
    hi = log.lsn
    log.fail_next = 1  # every shard written and verified; the proposal fails
    assert not shipper.step()
    assert engine.cold_hwm == 0
    seg = segment_id(1, hi)
    first = os.stat(f"{tmp}/cold/d0/{shard_name(seg, 0)}").st_ino
    shipper.state.retry_at = 0
    assert shipper.step() and engine.cold_hwm == hi
    # the same range, the same names: the retry overwrote, it did not add
    assert os.listdir(f"{tmp}/cold/d0/segments") == [seg]
    assert os.stat(f"{tmp}/cold/d0/{shard_name(seg, 0)}").st_ino != first


def test_a_duplicate_or_competing_shipment_is_a_harmless_no_op(setup):
    engine, config, stores, log, shipper, tmp = setup
    objects(log, 3, 50_000)
    hi = log.lsn
    assert shipper.step() and engine.cold_hwm == hi
    # a deposed leader that built [1, hi - 1] proposes it late: out of order
    res = log.propose(E.SegmentShipped(1, hi - 1, {"id": "late"}))
    assert res.error == "SegmentOutOfOrder" and engine.cold_hwm == hi
    # and the same shipment proposed twice
    locations = engine.cold_segment_for(hi)["locations"]
    res = log.propose(E.SegmentShipped(1, hi, locations))
    assert res.error == "SegmentOutOfOrder" and engine.cold_hwm == hi


def test_a_chunk_never_shipped_is_not_read_from_cold(setup):
    engine, config, stores, log, shipper, tmp = setup
    data = os.urandom(1000)
    log.put("late", data)
    reader = ColdReader(engine, stores)
    assert not reader.holds(cid(data))
    with pytest.raises(ColdChunkUnavailable):
        reader.read_chunk(cid(data))


def test_only_cold_bookkeeping_above_the_hwm_is_not_shipped_again(setup):
    engine, config, stores, log, shipper, tmp = setup
    objects(log, 2, 10_000)
    assert shipper.step()
    assert engine.cold_hwm == log.lsn - 1  # the SegmentShipped entry is above it
    assert not shipper.step() and shipper.state.state == "idle"
    assert shipper.state.segments_shipped == 1


def test_a_catalog_checkpoint_ships_and_restores_from_any_k_shards(tmp_path):
    engine = Engine(str(tmp_path / "engine"), segment_size=MiB, maintenance_interval_s=0,
                    ship_retention=True)
    config = ColdConfig(stores=[f"file://{tmp_path}/cold/d{i}" for i in range(6)],
                        segment_bytes=2 * MiB, seal_age_s=0.0, checkpoint_segments=1)
    stores = config.open_stores(str(tmp_path))
    log = Log(engine)
    log.propose(E.CreateBucket("b", 1))
    shipper = Shipper(engine, config, stores, str(tmp_path / "ship"), propose=log.propose)
    try:
        first = objects(log, 3, 50_000, tag="a")
        assert shipper.step()  # ships, then checkpoints the catalog as of its own entry
        pending = shipper._pending_checkpoint
        assert pending is not None and pending["lsn"] == log.lsn
        etags = {k: engine.head_object("b", k).etag for k in first}
        objects(log, 2, 50_000, tag="later")  # not in the checkpoint
        assert shipper.step()
        recorded = engine.cold_segment_for(engine.cold_hwm)["locations"]["checkpoint"]
        assert recorded["lsn"] == pending["lsn"] <= engine.cold_hwm
        assert shipper.status()["last_checkpoint_lsn"] == recorded["lsn"]
        for drive in (1, 4):  # any two shards may be lost
            os.unlink(f"{tmp_path}/cold/d{drive}/{shard_name(recorded['id'], drive, 'checkpoints')}")
        from engine.catalog import Catalog
        from tiering.catalog_checkpoint import restore

        assert restore(recorded, stores, str(tmp_path / "restored")) == recorded["lsn"]
        cat = Catalog(str(tmp_path / "restored"))
        with cat.read() as t:
            assert t.meta("applied_lsn") == recorded["lsn"]
            assert {k: t.object("b", k)["etag"] for k in first} == etags
            assert t.object("b", "later0") is None
        cat.close()
    finally:
        engine.close()


class CountingStore:
    """A real file store, counting the ranged reads it serves."""

    def __init__(self, store):
        self.store, self.reads = store, 0
        self.url = store.url

    def read_range(self, name, offset, length):
        self.reads += 1
        return self.store.read_range(name, offset, length)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_cold_chunk_read_costs_one_ranged_read_per_shard_used(setup):
    engine, config, stores, log, shipper, tmp = setup
    written = objects(log, 6, 200_000)
    while shipper.step():
        pass
    counting = [CountingStore(s) for s in stores]
    reader = ColdReader(engine, counting)
    keys = list(written)
    assert read_object(engine, reader, keys[0]) == written[keys[0]]  # opens the segment
    before = sum(s.reads for s in counting)
    for key in keys[1:]:
        assert read_object(engine, reader, key) == written[key]
    per_chunk = (sum(s.reads for s in counting) - before) / (len(keys) - 1)
    assert per_chunk == config.k  # one run of fragments from each data shard; headers cached


def test_a_short_segment_waits_without_rescanning_and_ships_once_full_or_old(tmp_path, monkeypatch):
    """While the data above the HWM is short of a segment the shipper waits; it does
    not re-read the WAL for a plan until enough was written to fill one (or the seal
    age passes), and it never misses the moment a segment is full."""
    import tiering.shipper as shipper_module

    engine = Engine(str(tmp_path / "engine"), segment_size=MiB, maintenance_interval_s=0,
                    ship_retention=True)
    config = ColdConfig(stores=[f"file://{tmp_path}/cold/d{i}" for i in range(6)],
                        segment_bytes=2 * MiB, seal_age_s=60.0)
    log = Log(engine)
    log.propose(E.CreateBucket("b", 1))
    shipper = Shipper(engine, config, config.open_stores(str(tmp_path)), str(tmp_path / "ship"),
                      propose=log.propose)
    plans = []
    real_plan = shipper_module.plan_range
    monkeypatch.setattr(shipper_module, "plan_range",
                        lambda *a: plans.append(a[1:3]) or real_plan(*a))
    try:
        objects(log, 4, 64 << 10, "a")  # 256 KiB: an eighth of a segment
        t0 = 1000.0
        assert not shipper.step(now=t0) and shipper.state.state == "waiting"
        assert len(plans) == 1
        for i in range(20):  # nothing written: the plan stands, whatever the time
            assert not shipper.step(now=t0 + 1 + i) and shipper.state.state == "waiting"
        assert len(plans) == 1
        objects(log, 1, 64 << 10, "b")  # written, and the plan is older than PLAN_MEMO_S:
        assert not shipper.step(now=t0 + 21)  # planned again
        assert len(plans) == 2
        objects(log, 2, 64 << 10, "b2")  # still short, even counting every byte written
        assert not shipper.step(now=t0 + 22)
        assert len(plans) == 2 and engine.cold_hwm == 0
        objects(log, 28, 64 << 10, "c")  # enough to fill a segment: planned, and shipped,
        assert shipper.step(now=t0 + 23) and engine.cold_hwm > 0  # within PLAN_MEMO_S
        assert len(plans) == 3
        while shipper.step(now=t0 + 24):
            pass
        hwm = engine.cold_hwm
        objects(log, 1, 64 << 10, "d")  # a short tail: waits until the seal age, then ships
        assert not shipper.step(now=t0 + 25) and engine.cold_hwm == hwm
        assert shipper.step(now=t0 + 25 + config.seal_age_s) and engine.cold_hwm > hwm
    finally:
        engine.close()


def test_checkpoints_never_outweigh_the_segments_shipped_between_them(tmp_path):
    """Many small objects make a catalog bigger than the segments that fill between
    two checkpoints: the shipper then spaces checkpoints out, so that the bytes of
    checkpoints stored never exceed the bytes of segments (checkpoints are kept)."""
    engine, config, stores, log = checkpointing(tmp_path, 32 << 10)
    shipper = Shipper(engine, config, stores, str(tmp_path / "ship"), propose=log.propose)
    shipped = []  # ("segment" | "checkpoint", bytes stored), in the order they were stored
    ship, ship_checkpoint = shipper.ship, shipper.ship_checkpoint
    shipper.ship = lambda lo, hi: shipped.append(("segment", (loc := ship(lo, hi))["size"])) or loc
    shipper.ship_checkpoint = lambda: shipped.append(("checkpoint", (c := ship_checkpoint())["size"])) or c
    try:
        for r in range(30):
            objects(log, 40, 1000, tag=f"r{r:02d}-")
            while shipper.step():
                pass
        checkpoints = [size for kind, size in shipped if kind == "checkpoint"]
        segments = [size for kind, size in shipped if kind == "segment"]
        assert len(checkpoints) >= 3
        assert checkpoints[-1] > max(segments)  # the catalog did outgrow a segment
        last_checkpoint, since = None, 0
        for kind, size in shipped:
            if kind == "segment":
                since += size
                continue
            if last_checkpoint is not None:
                assert since >= last_checkpoint
            last_checkpoint, since = size, 0
        assert sum(checkpoints) <= sum(segments)
        assert len(checkpoints) < len(segments) // 2  # not one per segment, as configured
    finally:
        engine.close()


def test_a_new_shipper_spaces_checkpoints_from_the_last_one_recorded(tmp_path):
    """After a restart (or on a new leader) the spacing rule goes on from the newest
    checkpoint the catalog records, not from nothing."""
    engine, config, stores, log = checkpointing(tmp_path, 32 << 10)

    def new_shipper():
        return Shipper(engine, config, stores, str(tmp_path / "ship"), propose=log.propose)

    try:
        first = new_shipper()
        for r in range(12):  # a catalog bigger than a segment, and checkpoints of it recorded
            objects(log, 40, 1000, tag=f"r{r:02d}-")
            while first.step():
                pass
        recorded = max((r["locations"]["checkpoint"] for r in engine.cold_segments(0, 1 << 30)
                        if "checkpoint" in r["locations"]), key=lambda c: c["lsn"])
        assert recorded["size"] > config.segment_bytes
        second = new_shipper()  # the node restarted
        stored = []
        ship_checkpoint = second.ship_checkpoint
        second.ship_checkpoint = lambda: stored.append(ship_checkpoint()) or stored[-1]
        objects(log, 40, 1000, tag="after-")  # one segment's worth: less than the checkpoint
        while second.step():
            pass
        assert stored == []
    finally:
        engine.close()

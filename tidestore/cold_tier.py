"""A node's cold tier: the shipper (when this node leads), cold reads, hot-tier
eviction, the lag bound that turns writes away with SlowDown, and the Raft log's
truncation up to the HWM.

The pieces live in `tiering/`; this module wires them to one engine and one log and
runs the periodic work on one maintenance thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from engine import Engine
from tiering.checkpoint_retention import retire_checkpoints
from tiering.chunk_cache import ChunkCache
from tiering.cold_garbage import collect, find_garbage
from tiering.cold_compactor import ColdCompactor
from tiering.cold_config import ColdConfig
from tiering.cold_reader import ColdReader
from tiering.errors import ColdLagExceeded
from tiering.shipper import Shipper

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 1.0
LAG_RECOUNT_S = 0.05  # the lag bound's byte count is redone at least this often under writes


class ColdTier:
    def __init__(self, config: ColdConfig, engine: Engine, data_dir: str, *,
                 propose, is_leader, fetch=None, truncate=None):
        """`propose(entry)` commits an entry from a non-loop thread (blocking);
        `fetch(chunk_id)` gets a chunk this node lacks from a peer (blocking);
        `truncate(hwm)` lets the log drop what cold storage now holds."""
        self.config = config
        self.engine = engine
        self.stores = config.open_stores(data_dir)
        self.store_urls = config.store_urls(data_dir)
        self.cache = ChunkCache(os.path.join(data_dir, "cold-cache"), config.cache_bytes)
        self.reader = ColdReader(engine, self.stores, self.cache)
        self.shipper = Shipper(engine, config, self.stores, os.path.join(data_dir, "ship"),
                               propose=propose, is_leader=is_leader, fetch=fetch)
        self._propose = propose
        self.compactor = ColdCompactor(engine, config, self.stores, os.path.join(data_dir, "ship"),
                                       propose=propose, store_shards=self.shipper._store_shards,
                                       delete_grace_s=config.compact_delete_grace_s)
        self.is_leader = is_leader
        self._compacted_at = time.monotonic()
        self._swept_at = time.monotonic()
        self.garbage = {"sweeps": 0, "segments_deleted": 0, "shards_deleted": 0,
                        "waiting": 0, "waiting_bytes": 0, "checkpoints_dropped": 0,
                        "checkpoint_shards_deleted": 0, "last_error": None}
        self.truncate = truncate
        self.evicted_segments = 0
        self.evicted_bytes = 0
        self.slowdowns = 0
        self._lag_count = (float("-inf"), 0, 0)  # (when, WAL end, unshipped bytes) last counted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_evict_error: str | None = None

    def start(self) -> None:
        if not self.config.read_only:
            self.shipper.start()
        self._thread = threading.Thread(target=self._maintain, name="cold-maintenance",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.shipper.stop()
        if self._thread is not None:
            self._thread.join()

    # ---- reads --------------------------------------------------------------------
    def holds(self, chunk_id: bytes) -> bool:
        return self.reader.holds(chunk_id)

    def read_chunk(self, chunk_id: bytes) -> bytes:
        """Blocking: the whole chunk from the cache or cold storage, verified."""
        return self.reader.read_chunk(chunk_id)

    # ---- the lag bound ---------------------------------------------------------------
    def lag(self) -> tuple[int, int]:
        """(entries, bytes) above the HWM on this node."""
        return (max(0, self.engine.applied_lsn - self.engine.cold_hwm),
                self.engine.unshipped_bytes())

    def check_backpressure(self) -> None:
        """Called before every write. The byte count reads the catalog and stats the WAL
        segments (~35 us, 8% of a small PUT), so between counts, at most
        LAG_RECOUNT_S apart, it is estimated from the WAL's growth since the last one
        (an upper bound, except for entries that take chunks from older segments,
        which the next count sees)."""
        cfg = self.config
        if cfg.read_only:
            return  # nothing ships: new writes stay in the hot tier
        engine = self.engine
        entries = engine.applied_lsn - engine.cold_hwm
        now, end = time.monotonic(), engine.wal.end
        counted_at, counted_end, counted = self._lag_count
        if (entries <= cfg.max_lag_entries and now - counted_at < LAG_RECOUNT_S
                and counted + (end - counted_end) <= cfg.max_lag_bytes):
            return
        nbytes = engine.unshipped_bytes()
        self._lag_count = (now, end, nbytes)
        entries = max(0, entries)
        if entries > cfg.max_lag_entries or nbytes > cfg.max_lag_bytes:
            self.slowdowns += 1
            self.shipper.nudge()
            why = self.shipper.state.last_error or "shipping is behind"
            raise ColdLagExceeded(
                f"{entries} entries / {nbytes} bytes are not in cold storage yet (bounds "
                f"{cfg.max_lag_entries} / {cfg.max_lag_bytes}): {why}")

    # ---- periodic work ------------------------------------------------------------------
    def _maintain(self) -> None:
        while not self._stop.wait(MAINTENANCE_INTERVAL_S):
            try:
                self.maintain_once()
            except Exception as exc:  # noqa: BLE001 - report in status, keep going
                self._last_evict_error = f"{type(exc).__name__}: {exc}"
                log.exception("cold tier maintenance failed")

    def maintain_once(self) -> None:
        if self.config.read_only:
            return
        budget = self.config.hot_budget
        if budget and self.engine.hot_bytes() > budget:
            # eviction only takes segments behind the checkpoint's redo point
            self.engine.checkpoint()
            report = self.engine.evict(budget)
            self.evicted_segments += report.segments_evicted
            self.evicted_bytes += report.bytes_freed + report.bytes_left_for_reclaim
        if self.truncate is not None:
            self.truncate(self.engine.cold_hwm)
        if time.monotonic() - self._compacted_at >= self.config.compact_interval_s:
            self._compacted_at = time.monotonic()
            if self.is_leader():
                while self.compactor.step() and not self._stop.is_set():
                    pass
            else:
                self.compactor.delete_due()
        if (self.config.garbage_age_s > 0 and self.is_leader()
                and time.monotonic() - self._swept_at >= self.config.garbage_interval_s):
            self._swept_at = time.monotonic()
            self.sweep_garbage()

    def sweep_garbage(self) -> None:
        """On the leader: delete shards no catalog row names, at or below the HWM, once
        older than `garbage_age_s` (tiering/cold_garbage.py says why that is safe), and
        the catalog checkpoints the history window no longer needs
        (tiering/checkpoint_retention.py)."""
        g = self.garbage
        cfg = self.config
        try:
            referenced = {r["locations"]["id"] for r in self.engine.cold_segments(0, 1 << 30)}
            found = find_garbage(self.stores, referenced, self.engine.cold_hwm)
            segments, shards = collect(self.stores, found, cfg.garbage_age_s)
            young = [x for x in found if x.age_s < cfg.garbage_age_s]
            g.update(sweeps=g["sweeps"] + 1, segments_deleted=g["segments_deleted"] + segments,
                     shards_deleted=g["shards_deleted"] + shards, waiting=len(young),
                     waiting_bytes=sum(x.bytes for x in young), last_error=None)
            if segments:
                log.info("cold garbage: deleted %d segments (%d shards)", segments, shards)
            dropped, ck_shards = retire_checkpoints(self.engine, self.stores, self._propose,
                                                    cfg.history_retention_s, cfg.garbage_age_s)
            g["checkpoints_dropped"] += dropped
            g["checkpoint_shards_deleted"] += ck_shards
            if dropped or ck_shards:
                log.info("cold garbage: %d checkpoints dropped, %d checkpoint shards deleted",
                         dropped, ck_shards)
        except Exception as exc:  # noqa: BLE001 - a store down: try at the next sweep
            g["last_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("cold garbage sweep failed: %s", exc)

    def status(self) -> dict:
        entries, nbytes = self.lag()
        return {
            "hwm": self.engine.cold_hwm,
            # the last entry that is not the cold tier's own bookkeeping: once the HWM
            # reaches it, everything written so far is in cold storage
            "data_lsn": self.engine.last_data_lsn,
            "lag_entries": entries, "lag_bytes": nbytes,
            "max_lag_entries": self.config.max_lag_entries,
            "max_lag_bytes": self.config.max_lag_bytes,
            "slowdown": entries > self.config.max_lag_entries or nbytes > self.config.max_lag_bytes,
            "hot_bytes": self.engine.hot_bytes(), "hot_budget": self.config.hot_budget,
            "evicted_segments": self.evicted_segments, "evicted_bytes": self.evicted_bytes,
            "cold_reads": self.reader.reads, "cold_read_bytes": self.reader.bytes_read,
            "cache": self.cache.stats(), "shipper": self.shipper.status(),
            "compaction": self.compactor.status(), "garbage": dict(self.garbage),
            "slowdowns": self.slowdowns, "stores": len(self.store_urls),
            "k": self.config.k, "m": self.config.m,
            "maintenance_error": self._last_evict_error, "time": time.time(),
        }

"""The shipper: cuts the log above the cold HWM into canonical segments, stores them
erasure-coded, and proposes `SegmentShipped` so that every replica advances its HWM.

One shipper is active at a time: the Raft leader's (a single node is always its own
leader). A new leader simply starts again from the HWM it has applied, so a shipment
interrupted by a crash or a leadership change is retried from scratch; shipping is
idempotent because shard names are a function of the LSN range (a retry overwrites
the same objects) and `SegmentShipped` applies only if it starts right after the
HWM (a duplicate or a competing range is a no-op: `SegmentOutOfOrder`).

Crash points (STORAGE_ENGINE_PLAN.md, "Shipping protocol"):
- before every shard is written and verified: no entry was proposed, the HWM has not
  moved, the Raft log still holds the range; the shards written are orphans that the
  retry overwrites (same range) or that `verify` reports (a different range);
- after the shards, before the entry commits: same as above; the retry rewrites them;
- after the entry commits: the HWM moved on every replica that applied it; the range
  is in cold storage; only now may the Raft log be truncated up to it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from engine.applied_scan import AppliedRangeUnavailable
from engine.entries import SegmentShipped

from . import catalog_checkpoint
from .checkpoint_retention import all_rows, recorded_checkpoints
from .cold_config import ColdConfig
from .erasure import HEADER as SHARD_HEADER
from .erasure import ShardHeader
from .segment_builder import Fetch, build_segment, plan_range
from .shard_store import ShardStore

log = logging.getLogger(__name__)

SEGMENT_FORMAT = 1
PLAN_MEMO_S = 5.0  # a plan short of a segment is redone at least this often under writes


def segment_id(lsn_lo: int, lsn_hi: int) -> str:
    return f"{lsn_lo:016x}-{lsn_hi:016x}"


def shard_name(seg_id: str, index: int, kind: str = "segments") -> str:
    return f"{kind}/{seg_id}/shard-{index:02d}"


class ShippingFailed(Exception):
    pass


@dataclass
class ShipperState:
    state: str = "idle"  # idle | waiting (not sealed yet) | shipping | retrying | follower
    segments_shipped: int = 0
    bytes_shipped: int = 0  # segment bytes (before erasure coding)
    last_segment: dict | None = None
    last_error: str | None = None
    failures: int = 0  # consecutive
    retry_at: float = 0.0
    history: list = field(default_factory=list)  # recent shipments, newest last
    last_checkpoint: dict | None = None


class Shipper:
    def __init__(self, engine, config: ColdConfig, stores: list[ShardStore], work_dir: str, *,
                 propose: Callable[[SegmentShipped], object],
                 is_leader: Callable[[], bool] = lambda: True,
                 fetch: Fetch | None = None):
        self.engine = engine
        self.config = config
        self.stores = stores
        self.work_dir = work_dir
        self.propose = propose
        self.is_leader = is_leader
        self.fetch = fetch
        self.state = ShipperState()
        self._since_checkpoint = 0  # segments shipped since the last catalog checkpoint
        self._bytes_since_checkpoint = 0  # and their bytes
        self._last_checkpoint_size: int | None = None  # bytes of the last checkpoint (compressed)
        self._pending_checkpoint: dict | None = None  # stored, waiting for the HWM to reach it
        self._waiting_since: float | None = None  # first seen something above the HWM
        self._plan_memo: tuple | None = None  # (lsn_lo, WAL end, bytes, when) of a short plan
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        os.makedirs(work_dir, exist_ok=True)
        for name in os.listdir(work_dir):  # a shipment interrupted by a crash
            if name.endswith(".tmp"):
                os.unlink(os.path.join(work_dir, name))

    # ---- running ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cold-shipper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def nudge(self) -> None:
        """Look for work now (tests, and the lag bound)."""
        self._plan_memo = None
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.ship_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                while self.step() and not self._stop.is_set():
                    pass  # a backlog: ship segment after segment
            except Exception:  # noqa: BLE001 - step() records failures; never die
                log.exception("cold shipper: unexpected error")

    def step(self, now: float | None = None) -> bool:
        """Ship one segment if one is due. Returns True if it shipped one."""
        now = time.monotonic() if now is None else now
        st = self.state
        if not self.is_leader():
            st.state, self._waiting_since = "follower", None
            # a checkpoint stored while leading is recorded by this leader or never:
            # another may record newer ones, and retention deletes unrecorded ones
            self._pending_checkpoint = None
            return False
        if now < st.retry_at:
            st.state = "retrying"
            return False
        hwm = self.engine.cold_hwm
        applied, wal_end = self.engine.applied_and_wal_end()  # see _still_short
        if applied <= hwm:
            st.state, self._waiting_since = "idle", None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        sealing = now - self._waiting_since >= self.config.seal_age_s
        if not sealing and self._still_short(hwm + 1, wal_end, now):
            st.state = "waiting"
            return False
        try:
            plan = plan_range(self.engine, hwm + 1, applied, self.config.segment_bytes)
            if plan is None:
                st.state = "idle"
                return False
            if not plan.full and not sealing:
                self._plan_memo = (hwm + 1, wal_end, plan.chunk_bytes, now)
                st.state = "waiting"
                return False
            st.state = "shipping"
            self.ship(hwm + 1, plan.lsn_hi)
            self._maybe_checkpoint()
        except Exception as exc:  # noqa: BLE001 - cold storage trouble: back off, retry
            st.failures += 1
            backoff = min(self.config.retry_max_s, 0.5 * 2 ** min(st.failures, 10))
            st.retry_at = now + backoff
            st.state = "retrying"
            st.last_error = f"{type(exc).__name__}: {exc}"
            level = logging.ERROR if isinstance(exc, AppliedRangeUnavailable) else logging.WARNING
            log.log(level, "cold shipper: shipping from LSN %d failed (%s); retry in %.1fs",
                    hwm + 1, st.last_error, backoff)
            return False
        st.failures, st.retry_at, st.last_error = 0, 0.0, None
        self._waiting_since = None
        return True

    def _still_short(self, lsn_lo: int, wal_end: int, now: float) -> bool:
        """Whether the last plan from `lsn_lo`, which fell short of a segment, still
        must: planning reads every APPLY record above the HWM, so while a segment fills
        slowly it is redone only once the WAL has grown enough to fill it (the WAL
        holds every byte a plan counts, nearly always written after the last plan),
        or after PLAN_MEMO_S (chunks written earlier, taken by a later entry)."""
        memo = self._plan_memo
        if memo is None or memo[0] != lsn_lo:
            return False
        _lo, end, nbytes, at = memo
        if wal_end == end:
            return True  # nothing appended, so nothing applied: the plan stands
        return now - at < PLAN_MEMO_S and nbytes + (wal_end - end) < self.config.segment_bytes

    # ---- one shipment -------------------------------------------------------------------
    def ship(self, lsn_lo: int, lsn_hi: int) -> dict:
        """Build, encode, store and verify the segment of [lsn_lo, lsn_hi], then propose
        SegmentShipped. Returns the locations recorded."""
        t0 = time.perf_counter()
        cfg = self.config
        seg_id = segment_id(lsn_lo, lsn_hi)
        tmp = os.path.join(self.work_dir, seg_id + ".seg.tmp")
        try:
            with open(tmp, "w+b") as f:
                info = build_segment(self.engine, lsn_lo, lsn_hi, f, level=cfg.zstd_level,
                                     fetch=self.fetch)
            t_build = time.perf_counter()
            shards = self._store_shards(seg_id, tmp)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        t_store = time.perf_counter()
        locations = {
            "id": seg_id, "format": SEGMENT_FORMAT, "size": info.size, "sha256": info.sha256,
            "k": cfg.k, "m": cfg.m, "ec_type": cfg.ec_type, "stripe_size": cfg.stripe_size,
            "entries": info.entry_count, "chunks": info.chunk_count,
            "chunk_bytes": info.chunk_bytes, "stored_ms": int(time.time() * 1000),
            # [store index, shard name, shard size, shard sha256]
            "shards": shards,
        }
        checkpoint = self._pending_checkpoint
        if checkpoint is not None and checkpoint["lsn"] < lsn_lo:
            checkpoint = self._pending_checkpoint = None  # another leader shipped past it
        if checkpoint is not None and checkpoint["lsn"] <= lsn_hi:
            locations["checkpoint"] = checkpoint  # usable from this HWM on
        result = self.propose(SegmentShipped(lsn_lo, lsn_hi, locations))
        error = getattr(result, "error", None)
        if error and error != "SegmentOutOfOrder":
            raise ShippingFailed(f"SegmentShipped [{lsn_lo}, {lsn_hi}] was refused: {error}")
        if not error:
            self._since_checkpoint += 1
            self._bytes_since_checkpoint += info.size
            if "checkpoint" in locations:
                self._pending_checkpoint = None
                self.state.last_checkpoint = checkpoint
        done = time.perf_counter()
        st = self.state
        st.segments_shipped += 0 if error else 1
        st.bytes_shipped += 0 if error else info.size
        st.last_segment = {"first": lsn_lo, "last": lsn_hi, "size": info.size,
                           "chunks": info.chunk_count, "entries": info.entry_count,
                           "build_s": round(t_build - t0, 3),
                           "store_s": round(t_store - t_build, 3),
                           "commit_s": round(done - t_store, 3),
                           "duplicate": bool(error)}
        st.history = (st.history + [st.last_segment])[-20:]
        log.info("cold shipper: shipped [%d, %d]: %d bytes, %d chunks in %.2fs%s", lsn_lo, lsn_hi,
                 info.size, info.chunk_count, done - t0, " (already shipped)" if error else "")
        return locations

    def _maybe_checkpoint(self) -> None:
        """Every `checkpoint_segments` segments, ship the catalog too, but never more
        bytes of checkpoints than of segments: the catalog of a store of many small
        objects can outgrow the data shipped between two checkpoints (a million
        objects make a catalog of a few hundred MB), and checkpoints are kept, so the
        next one waits until the segments shipped since the last one are at least
        its size. A failure here only delays the checkpoint: shipping segments does
        not depend on it."""
        every = self.config.checkpoint_segments
        if not every or self._pending_checkpoint is not None or self._since_checkpoint < every:
            return
        if self._last_checkpoint_size is None:  # a new shipper: the last one recorded
            self._last_checkpoint_size = self._recorded_checkpoint_size()
        if self._bytes_since_checkpoint < self._last_checkpoint_size:
            return
        try:
            self._pending_checkpoint = self.ship_checkpoint()
            self._last_checkpoint_size = self._pending_checkpoint["size"]
        except Exception as exc:  # noqa: BLE001 - retried after the next segment
            log.warning("cold shipper: catalog checkpoint failed: %s", exc)
            return
        self._since_checkpoint = 0
        self._bytes_since_checkpoint = 0

    def _recorded_checkpoint_size(self) -> int:
        """The size of the newest checkpoint the catalog records (0 if none): after a
        restart or a change of leader the spacing rule goes on from it."""
        recorded = recorded_checkpoints(all_rows(self.engine))
        return recorded[-1][1].get("size", 0) if recorded else 0

    def ship_checkpoint(self) -> dict:
        """Store a catalog checkpoint; returns its locations (recorded by the next
        SegmentShipped that reaches its LSN)."""
        cfg = self.config
        path, lsn, raw_size, sha = catalog_checkpoint.snapshot(self.engine, self.work_dir,
                                                               cfg.zstd_level)
        try:
            ckpt_id = f"{lsn:016x}"
            shards = self._store_shards(ckpt_id, path, kind="checkpoints")
            size = os.path.getsize(path)
        finally:
            os.unlink(path)
        log.info("cold shipper: catalog checkpoint at LSN %d: %d bytes (%d raw)", lsn, size, raw_size)
        return {"id": ckpt_id, "format": catalog_checkpoint.FORMAT, "lsn": lsn, "size": size,
                "raw_size": raw_size, "sha256": sha, "k": cfg.k, "m": cfg.m,
                "ec_type": cfg.ec_type, "stripe_size": cfg.stripe_size, "shards": shards}

    def _store_shards(self, seg_id: str, path: str, kind: str = "segments") -> list:
        cfg = self.config
        n = len(self.stores)
        names = [shard_name(seg_id, i, kind) for i in range(cfg.k + cfg.m)]
        writers = []
        try:
            for i, name in enumerate(names):
                writers.append(self.stores[i % n].open_writer(name))
            infos = cfg.erasure().encode(path, writers)
            for w in writers:
                w.commit()
        except BaseException:
            for w in writers:
                try:
                    w.abort()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
            raise
        out = []
        for i, (name, shard) in enumerate(zip(names, infos)):
            store = self.stores[i % n]
            self._verify(store, name, shard.size, i)
            out.append([i % n, name, shard.size, shard.sha256])
        return out

    @staticmethod
    def _verify(store: ShardStore, name: str, size: int, index: int) -> None:
        """A stored shard reads back with its size and a valid header naming its index
        (its bytes were checked on the way in: fsync'd file or S3 Content-MD5)."""
        got = store.size(name)
        if got != size:
            raise ShippingFailed(f"{store.url}: {name} is {got} bytes, wrote {size}")
        header = ShardHeader.unpack(store.read_range(name, 0, SHARD_HEADER.size))
        if header.index != index:
            raise ShippingFailed(f"{store.url}: {name} holds shard {header.index}, not {index}")

    def status(self) -> dict:
        st = self.state
        return {"state": st.state, "segments_shipped": st.segments_shipped,
                "bytes_shipped": st.bytes_shipped, "last_segment": st.last_segment,
                "last_error": st.last_error, "failures": st.failures,
                "last_checkpoint_lsn": (st.last_checkpoint or {}).get("lsn"),
                "retry_in_s": max(0.0, round(st.retry_at - time.monotonic(), 1)) if st.retry_at else 0.0}

"""Cold compaction: shipped segments dominated by dead chunks (objects deleted or
overwritten since) are rewritten into one segment holding only their live chunks, and
the old shards are deleted, so that space comes back in cold storage.

What may be dropped: a segment's *entries* once a catalog checkpoint at or after its
range is recorded (the state they built is in the checkpoint; a rebuild starts from
it), and only when the whole segment is older than `history_retention_s` (the log is
the history that point-in-time restores read: compaction never shortens it below that
window). What must be kept: every chunk some object or part still references. A
compacted segment covers the same LSN range as the segments it replaces, with no
entries, so a chunk is still found by its `intro_lsn`.

Protocol (on the leader, after the shipper): build and store the new segment under a
new name, propose `SegmentsCompacted(first, last, locations)`, and once it is applied
here delete the old shards after `delete_grace_s` (replicas that have not applied the
entry yet still read the old ones meanwhile). A crash before the entry commits leaves
the new shards as orphans; a crash after it leaves the old ones (both are garbage
that the leader collects after `garbage_age_s`: tiering/cold_garbage.py).
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from typing import Callable

from engine.entries import SegmentsCompacted
from engine.state_machine import replayable

from .background import Yielder
from .cold_config import ColdConfig
from .cold_reader import segment_reader
from .segment_format import SegmentWriter
from .shard_store import ShardStore

log = logging.getLogger(__name__)


def latest_checkpoint(rows: list[dict], hwm: int | None = None) -> dict | None:
    """The newest checkpoint the rows record; with `hwm`, the newest a replay of cold
    storage can start from (its recording entry at or below the HWM)."""
    found = [r["locations"]["checkpoint"] for r in rows if r["locations"].get("checkpoint")]
    if hwm is not None:
        found = [c for c in found if replayable(c, hwm)]
    return max(found, key=lambda c: c["lsn"]) if found else None


class ColdCompactor:
    def __init__(self, engine, config: ColdConfig, stores: list[ShardStore], work_dir: str, *,
                 propose: Callable, store_shards: Callable, delete_grace_s: float = 60.0):
        """`store_shards(name, path, kind)` is the shipper's: encode, store, verify."""
        self.engine = engine
        self.config = config
        self.stores = stores
        self.work_dir = work_dir
        self.propose = propose
        self.store_shards = store_shards
        self.delete_grace_s = delete_grace_s
        self._doomed: list[tuple[float, list]] = []  # (when, [[store index, name], ...])
        self.compactions = 0
        self.bytes_dropped = 0  # segment bytes replaced
        self.bytes_written = 0
        self.shards_deleted = 0
        self.last_error: str | None = None

    # ---- choosing --------------------------------------------------------------
    def plan(self, now_ms: int | None = None) -> list[dict] | None:
        """The oldest run of consecutive shipped segments worth rewriting, or None."""
        cfg = self.config
        if cfg.compact_live_ratio <= 0:
            return None
        rows = self.engine.cold_segments(0, 1 << 30)
        # what a rehydrate can start from: segments behind it may lose their entries
        ckpt = latest_checkpoint(rows, self.engine.cold_hwm)
        if ckpt is None:
            return None
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        horizon = now_ms - int(cfg.history_retention_s * 1000)
        eligible = [r for r in rows if r["last"] <= ckpt["lsn"]
                    and r["locations"].get("stored_ms", now_ms) <= horizon]
        if not eligible:
            return None
        live = sorted(self.engine.live_chunk_intros(eligible[0]["first"], eligible[-1]["last"]),
                      key=lambda ci: ci[1])
        intros = [intro for _c, intro in live]
        run, kept = [], 0
        for row in eligible:
            lo = bisect.bisect_left(intros, row["first"])
            hi = bisect.bisect_right(intros, row["last"])
            in_row = [c for c, _intro in live[lo:hi]]
            loc = row["locations"]
            # something to drop: entries, or chunks no longer referenced
            droppable = loc.get("entries", 1) > 0 or len(in_row) < loc.get("chunks", 0)
            ratio = _live_ratio(row, in_row, self.stores) if droppable else 1.0
            if ratio <= cfg.compact_live_ratio and (not run or run[-1]["last"] + 1 == row["first"]):
                run.append(row)
                kept += ratio * row["locations"]["size"]
                if kept >= 4 * cfg.segment_bytes or len(run) >= 64:
                    break  # one rewrite at a time stays bounded
            elif run:
                break
        return run or None

    # ---- rewriting -----------------------------------------------------------------
    def compact(self, run: list[dict]) -> dict:
        first, last = run[0]["first"], run[-1]["last"]
        live = {c for c, intro in self.engine.live_chunk_intros(first, last)}
        seg_id = f"{first:016x}-{last:016x}-c{int(time.time() * 1000):x}"
        tmp = os.path.join(self.work_dir, seg_id + ".seg.tmp")
        try:
            with open(tmp, "w+b") as f:
                writer = SegmentWriter(f, first, last, level=self.config.zstd_level)
                pause = Yielder()
                for row in run:
                    reader = segment_reader(row["locations"], self.stores)
                    for cid in reader.chunk_ids():
                        pause()
                        if cid in live:
                            writer.add_chunk(cid, reader.read_chunk(cid), verified=True)
                info = writer.finish()
            shards = self.store_shards(seg_id, tmp, "segments")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        cfg = self.config
        locations = {
            "id": seg_id, "format": 1, "size": info.size, "sha256": info.sha256,
            "k": cfg.k, "m": cfg.m, "ec_type": cfg.ec_type, "stripe_size": cfg.stripe_size,
            "entries": 0, "chunks": info.chunk_count, "chunk_bytes": info.chunk_bytes,
            "stored_ms": max(r["locations"].get("stored_ms", 0) for r in run),
            "compacted": [r["locations"]["id"] for r in run], "shards": shards,
        }
        ckpt = latest_checkpoint(run)
        if ckpt is not None:
            locations["checkpoint"] = ckpt  # the record must outlive the rows it was in
        result = self.propose(SegmentsCompacted(first, last, locations))
        if getattr(result, "error", None):
            self._doomed.append((0.0, [[s[0], s[1]] for s in shards]))  # ours: unused
            raise RuntimeError(f"SegmentsCompacted [{first}, {last}] refused: {result.error}")
        old = [[s[0], s[1]] for r in run for s in r["locations"]["shards"]]
        self._doomed.append((time.monotonic() + self.delete_grace_s, old))
        self.compactions += 1
        self.bytes_dropped += sum(r["locations"]["size"] for r in run)
        self.bytes_written += info.size
        log.info("cold compaction: [%d, %d] from %d segment(s), %d -> %d bytes", first, last,
                 len(run), sum(r["locations"]["size"] for r in run), info.size)
        return locations

    def step(self) -> bool:
        self.delete_due()
        try:
            run = self.plan()
            if run is None:
                return False
            self.compact(run)
            self.last_error = None
            return True
        except Exception as exc:  # noqa: BLE001 - cold storage trouble: next time
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("cold compaction failed: %s", self.last_error)
            return False

    def delete_due(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        keep = []
        for when, shards in self._doomed:
            if when > now:
                keep.append((when, shards))
                continue
            for store_index, name in shards:
                try:
                    self.stores[store_index].delete(name)
                    self.shards_deleted += 1
                except Exception:  # noqa: BLE001 - garbage left behind; verify reports it
                    log.warning("cold compaction: could not delete %s", name)
        self._doomed = keep

    def status(self) -> dict:
        return {"compactions": self.compactions, "bytes_dropped": self.bytes_dropped,
                "bytes_written": self.bytes_written, "shards_deleted": self.shards_deleted,
                "pending_deletes": sum(len(s) for _w, s in self._doomed),
                "last_error": self.last_error}


def _live_ratio(row: dict, live_ids: list, stores) -> float:
    """Fraction of the segment's chunk bytes still referenced."""
    loc = row["locations"]
    total = loc.get("chunk_bytes", 0)
    if not live_ids or total <= 0:
        return 0.0
    reader = segment_reader(loc, stores)
    live = sum(reader.chunk_span(c)[1] for c in live_ids if reader.has_chunk(c))
    return live / max(1, loc.get("size", total))

"""Which cold catalog checkpoints to keep: the history window, and no more.

Rebuild, restore and rehydrate start from a catalog checkpoint and replay the
segments after it. A restore to a moment inside the history window
(`history_retention_s`, the window within which cold compaction keeps every entry)
starts from the newest checkpoint not after that moment; so every checkpoint taken
inside the window (widened by a tenth, an hour at most: the time is the shipping
leader's clock, the sweep the current leader's) is kept, plus the newest one taken before it
(the start for the window's oldest moments), the newest recorded one (a rebuild's
start) and the newest one whose recording `SegmentShipped` is itself below the HWM
(a rehydrate's start: the newest recorded one is not, until the next segment ships).
The older ones are dropped: a `CheckpointsDropped` entry removes their records (so
`verify` no longer expects their shards), then their shards are deleted. A
checkpoint's time is when the segment that records it was stored (`stored_ms`),
never earlier than the state it holds; a row that does not say is kept.

Checkpoints the stores hold but no row records (stored by a leader that lost its
post before recording one, or dropped by the entry) are deleted once older than
`garbage_age_s` and older than the newest recorded checkpoint: a checkpoint still
to be recorded is newer than every recorded one (a shipper drops its pending
checkpoint when it stops leading, or when another leader shipped past it).
"""

from __future__ import annotations

import time

from engine.entries import CheckpointsDropped
from engine.state_machine import replayable

from .cold_rebuild import discover_checkpoints
from .shard_store import ShardNotFound, ShardStore

CLOCK_MARGIN = 0.1  # the window is widened by a tenth (leaders' clocks may disagree)...
CLOCK_MARGIN_MAX_S = 3600.0  # ...by an hour at most


def recorded_checkpoints(rows: list[dict]) -> list[tuple[int | None, dict]]:
    """[(stored_ms of the row recording it, None if it does not say; checkpoint)],
    in LSN order."""
    found = [(r["locations"].get("stored_ms"), r["locations"]["checkpoint"])
             for r in rows if r["locations"].get("checkpoint")]
    return sorted(found, key=lambda f: f[1]["lsn"])


def checkpoints_to_drop(rows: list[dict], now_ms: int, retention_s: float,
                        hwm: int) -> list[dict]:
    """The recorded checkpoints to drop: those recorded before the window (less a
    margin for the leaders' clocks), except the newest of them, the newest recorded
    one (rebuilds start there) and the newest one a replay of cold storage can start
    from (its recording entry below the HWM: rehydrate and compaction go by it)."""
    margin_s = min(retention_s * CLOCK_MARGIN, CLOCK_MARGIN_MAX_S)
    horizon = now_ms - int((retention_s + margin_s) * 1000)
    recorded = recorded_checkpoints(rows)
    if not recorded:
        return []
    old = [ckpt for stored_ms, ckpt in recorded if stored_ms is not None and stored_ms < horizon]
    keep = {recorded[-1][1]["id"]}
    if old:
        keep.add(old[-1]["id"])
    reachable = [ckpt for _ms, ckpt in recorded if replayable(ckpt, hwm)]
    if reachable:
        keep.add(reachable[-1]["id"])
    return [ckpt for ckpt in old if ckpt["id"] not in keep]


def all_rows(engine) -> list[dict]:
    rows, after = [], 0
    while True:
        batch = engine.cold_segments(after, 1000)
        if not batch:
            return rows
        rows += batch
        after = batch[-1]["last"]


def retire_checkpoints(engine, stores: list[ShardStore], propose, retention_s: float,
                       garbage_age_s: float, now: float | None = None) -> tuple[int, int]:
    """On the leader: drop the records of checkpoints the window does not need, then
    delete the shards of unrecorded checkpoints old enough. Returns (checkpoints
    dropped from the catalog, shards deleted)."""
    now = time.time() if now is None else now
    dropped = 0
    doomed = checkpoints_to_drop(all_rows(engine), int(now * 1000), retention_s, engine.cold_hwm)
    if doomed:
        result = propose(CheckpointsDropped([c["id"] for c in doomed]))
        error = getattr(result, "error", None)
        if error:
            raise RuntimeError(f"CheckpointsDropped was refused: {error}")
        dropped = (getattr(result, "value", None) or {}).get("dropped", 0)
    recorded = recorded_checkpoints(all_rows(engine))
    if not recorded:
        return dropped, 0
    keep = {c["id"] for _ms, c in recorded}
    newest = recorded[-1][1]["lsn"]
    deleted = 0
    for ckpt in discover_checkpoints(stores):
        if ckpt["id"] in keep or ckpt["lsn"] >= newest:
            continue
        shards = list(ckpt["shards"].values())
        try:
            youngest = max(stores[si].modified(name) for si, name in shards)
        except ShardNotFound:
            continue  # being deleted meanwhile
        if garbage_age_s <= 0 or now - youngest < garbage_age_s:
            continue
        for si, name in shards:
            try:
                stores[si].delete(name)
                deleted += 1
            except ShardNotFound:
                pass
    return dropped, deleted

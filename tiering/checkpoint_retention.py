"""Which cold catalog checkpoints to keep: the history window, and no more.

Rebuild, restore and rehydrate start from a catalog checkpoint and replay the
segments after it. A restore to a moment inside the history window
(`history_retention_s`, the window within which cold compaction keeps every entry)
starts from the newest checkpoint not after that moment; so every checkpoint taken
inside the window is kept, plus the newest one taken before it (the start for the
window's oldest moments), and the older ones are dropped: a `CheckpointsDropped`
entry removes their records (so `verify` no longer expects their shards), then their
shards are deleted. A checkpoint's time is when the segment that records it was
stored (`stored_ms`), never earlier than the state it holds.

Checkpoints the stores hold but no row records (stored by a leader that lost its
post before recording one, or dropped by the entry) are deleted once older than
`garbage_age_s` and older than the newest recorded checkpoint: a checkpoint being
recorded right now is newer than every recorded one.
"""

from __future__ import annotations

import time

from engine.entries import CheckpointsDropped

from .cold_rebuild import discover_checkpoints
from .shard_store import ShardNotFound, ShardStore


def recorded_checkpoints(rows: list[dict]) -> list[tuple[int, dict]]:
    """[(stored_ms of the row recording it, checkpoint)] in LSN order."""
    found = [(r["locations"].get("stored_ms", 0), r["locations"]["checkpoint"])
             for r in rows if r["locations"].get("checkpoint")]
    return sorted(found, key=lambda f: f[1]["lsn"])


def checkpoints_to_drop(rows: list[dict], now_ms: int, retention_s: float) -> list[dict]:
    """The recorded checkpoints older than the window, but the newest of those."""
    horizon = now_ms - int(retention_s * 1000)
    old = [ckpt for stored_ms, ckpt in recorded_checkpoints(rows) if stored_ms < horizon]
    return old[:-1]


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
    doomed = checkpoints_to_drop(all_rows(engine), int(now * 1000), retention_s)
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

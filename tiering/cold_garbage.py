"""Cold-tier garbage: segment shards that no `cold_segments` row names.

They come from a shipment or a compaction whose entry never committed (the leader
died between storing the shards and the commit: orphans), and from originals a crash
left behind after their compaction was applied. Once the HWM has passed their range
nothing will ever record them: a shipment in flight always starts right after the
HWM. They are recognised by listing the stores (segment names carry their LSN
ranges) against the catalog's rows, and deleted only once every shard is older than
an age far beyond any entry's time to commit: an entry proposed by an earlier leader
is either committed by the next one at its first commit or never, and compaction's own
replaced shards go after its grace period anyway.

Catalog checkpoints are not this module's: they are kept for the history window
(tiering/checkpoint_retention.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from .cold_rebuild import discover
from .shard_store import ShardNotFound, ShardStore


@dataclass
class Garbage:
    id: str
    first: int
    last: int
    shards: list = field(default_factory=list)  # [(store index, name)]
    bytes: int = 0
    age_s: float = 0.0  # of its youngest shard

    def to_dict(self) -> dict:
        return asdict(self)


def find_garbage(stores: list[ShardStore], referenced: set[str], hwm: int,
                 now: float | None = None) -> list[Garbage]:
    """Every segment in the stores that no row names and that lies at or below the
    HWM, with its size and the age of its youngest shard."""
    now = time.time() if now is None else now
    out = []
    for seg in discover(stores).values():
        if seg["id"] in referenced or seg["last"] > hwm:
            continue
        g = Garbage(seg["id"], seg["first"], seg["last"], sorted(seg["shards"].values()))
        youngest = 0.0
        for si, name in g.shards:
            try:
                g.bytes += stores[si].size(name)
                youngest = max(youngest, stores[si].modified(name))
            except ShardNotFound:
                continue  # deleted meanwhile
        g.age_s = round(now - youngest, 1) if youngest else 0.0
        out.append(g)
    return sorted(out, key=lambda g: (g.first, g.last))


def collect(stores: list[ShardStore], garbage: list[Garbage], older_than_s: float) -> tuple[int, int]:
    """Delete the garbage older than `older_than_s`; returns (segments, shards) deleted."""
    segments = shards = 0
    for g in garbage:
        if older_than_s <= 0 or g.age_s < older_than_s:
            continue
        for si, name in g.shards:
            try:
                stores[si].delete(name)
                shards += 1
            except ShardNotFound:
                pass
        segments += 1
    return segments, shards

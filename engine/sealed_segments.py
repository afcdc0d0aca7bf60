"""The WAL segments that space management (eviction, compaction) may touch: sealed,
and wholly below the bound recovery and open transactions still need."""

from __future__ import annotations

from collections import Counter
from typing import Iterator


def sealed_below(segs: list[int], keep_from: int, skipped: Counter) -> Iterator[tuple[int, int]]:
    """(segment start, next segment start) oldest first, for segments wholly below
    keep_from; the active segment and those recovery needs are counted in skipped."""
    for i, seg in enumerate(segs):
        if i + 1 == len(segs):
            skipped["active"] += 1
            return
        nxt = segs[i + 1]
        if nxt > keep_from:
            skipped["needed_by_recovery"] += len(segs) - 1 - i
            skipped["active"] += 1
            return
        yield seg, nxt

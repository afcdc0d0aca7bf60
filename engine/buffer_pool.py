"""Buffer pool: fixed-size pages of WAL segment data under a memory budget.

Pages are keyed by (segment start LSN, page number). Eviction is CLOCK (a reference
bit per frame, a hand that sweeps); a pinned page is never evicted, so a reader that
is streaming a page keeps it resident. When every frame is pinned the read goes
through uncached rather than exceeding the budget or blocking. A page at the end of
the active segment may still grow, so a short (partial) page is never cached.
Hit / miss / eviction counters feed metrics and benchmarks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable


@dataclass(slots=True, eq=False)
class Page:
    key: tuple
    data: bytes
    pins: int = 0
    ref: bool = True
    frame: int = -1  # -1: not pooled (read-through)


class BufferPool:
    def __init__(self, read: Callable[[int, int, int], bytes], page_size: int = 64 << 10,
                 budget: int = 64 << 20):
        """read(segment_start, offset_in_segment, n) returns up to n bytes."""
        if page_size <= 0 or budget < page_size:
            raise ValueError("budget must hold at least one page")
        self._read = read
        self.page_size = page_size
        self.nframes = budget // page_size
        self._frames: list[Page | None] = [None] * self.nframes
        self._table: dict[tuple, Page] = {}
        self._hand = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.read_through = 0

    @property
    def resident_bytes(self) -> int:
        return sum(len(p.data) for p in self._table.values())

    def pin(self, segment: int, page_no: int) -> Page:
        key = (segment, page_no)
        with self._lock:
            page = self._table.get(key)
            if page is not None:
                page.pins += 1
                page.ref = True
                self.hits += 1
                return page
            self.misses += 1
        data = self._read(segment, page_no * self.page_size, self.page_size)
        page = Page(key, data, pins=1)
        if len(data) < self.page_size:
            self.read_through += 1
            return page
        with self._lock:
            existing = self._table.get(key)
            if existing is not None:  # another reader loaded it meanwhile
                existing.pins += 1
                existing.ref = True
                return existing
            frame = self._victim()
            if frame < 0:
                self.read_through += 1
                return page
            page.frame = frame
            self._frames[frame] = page
            self._table[key] = page
            return page

    def unpin(self, page: Page) -> None:
        with self._lock:
            page.pins -= 1
            if page.pins < 0:
                raise RuntimeError(f"page {page.key} unpinned more often than pinned")

    def _victim(self) -> int:
        """A free or evictable frame (CLOCK), or -1 if every frame is pinned."""
        for _ in range(2 * self.nframes):
            i = self._hand
            self._hand = (self._hand + 1) % self.nframes
            page = self._frames[i]
            if page is None:
                return i
            if page.pins:
                continue
            if page.ref:
                page.ref = False
                continue
            del self._table[page.key]
            self._frames[i] = None
            self.evictions += 1
            return i
        return -1

    def invalidate_segment(self, segment: int) -> None:
        """Drop a deleted segment's pages (pinned ones stay with their readers)."""
        with self._lock:
            for key in [k for k in self._table if k[0] == segment]:
                page = self._table.pop(key)
                self._frames[page.frame] = None
                page.frame = -1

    def read(self, segment: int, offset: int, n: int):
        """Yields memoryview pieces of [offset, offset+n) of a segment, pinning each
        page only while its piece is being consumed."""
        ps = self.page_size
        end = offset + n
        while offset < end:
            page_no, within = divmod(offset, ps)
            page = self.pin(segment, page_no)
            try:
                take = min(end - offset, len(page.data) - within)
                if take <= 0:
                    raise EOFError(f"segment {segment:x} ends before offset {offset}")
                yield memoryview(page.data)[within: within + take]
            finally:
                self.unpin(page)
            offset += take

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "read_through": self.read_through, "frames": self.nframes,
                "page_size": self.page_size, "resident_bytes": self.resident_bytes}

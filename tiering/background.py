"""Background work that gives the GIL back to the event loop often.

A node's threads share one GIL. The cold tier's shipper and compactor run long Python
loops (an entry decoded, a chunk looked up, per item); CPython only takes the GIL
from a running thread every `sys.getswitchinterval()` (5 ms), so each time the event
loop gave it up for a system call while the shipper was busy, the loop waited up to
5 ms to get it back, and a request makes several such calls: small PUTs saw p99s of
120-140 ms while a segment of small objects shipped. These loops call a `Yielder`
per item, which lets any waiting thread run every YIELD_EVERY_S of their work.
"""

from __future__ import annotations

import time

YIELD_EVERY_S = 0.0005


class Yielder:
    def __init__(self, every_s: float = YIELD_EVERY_S):
        self.every_s = every_s
        self._next = time.perf_counter() + every_s

    def __call__(self) -> None:
        now = time.perf_counter()
        if now >= self._next:
            time.sleep(0)  # releases the GIL: a waiting thread usually takes it (not guaranteed)
            self._next = time.perf_counter() + self.every_s

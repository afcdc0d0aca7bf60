"""Reading chunks back from cold storage: only the shards' fragments that cover the
chunk, from any k of the k + m shards, verified, decompressed, cached.

A chunk's cold home is found from the catalog alone: its row's `intro_lsn` (the entry
that introduced it) falls in exactly one shipped range, and that range's
`SegmentShipped` record says where the shards are. The segment's index (two ranged
reads) is cached per segment, so a chunk read costs one ranged read per shard used.
"""

from __future__ import annotations

import collections
import threading
import time

from .chunk_cache import ChunkCache
from .erasure import HEADER as SHARD_HEADER
from .erasure import ErasureCode
from .errors import ColdChunkUnavailable
from .segment_format import SegmentReader
from .shard_store import ShardNotFound, ShardStore


class ColdReader:
    SEGMENTS_CACHED = 64

    def __init__(self, engine, stores: list[ShardStore], cache: ChunkCache | None = None):
        self.engine = engine
        self.stores = stores
        self.cache = cache
        self._readers: collections.OrderedDict[str, SegmentReader] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0
        self.bytes_read = 0

    def holds(self, chunk_id: bytes) -> bool:
        """Whether the catalog says this chunk is in a shipped segment."""
        info = self.engine.chunk_info(chunk_id)
        return info is not None and 0 < info.intro_lsn <= self.engine.cold_hwm

    def read_chunk(self, chunk_id: bytes) -> bytes:
        """The whole chunk, SHA-256 verified (blocking: call it off the event loop)."""
        chunk_id = bytes(chunk_id)
        if self.cache is not None:
            data = self.cache.get(chunk_id)
            if data is not None:
                return data
        info = self.engine.chunk_info(chunk_id)
        if info is None or not 0 < info.intro_lsn <= self.engine.cold_hwm:
            raise ColdChunkUnavailable(f"chunk {chunk_id.hex()} is not in cold storage")
        for attempt in (1, 2):  # a compaction may have replaced the segment meanwhile
            seg = self.engine.cold_segment_for(info.intro_lsn)
            if seg is None:
                raise ColdChunkUnavailable(
                    f"no shipped segment covers log LSN {info.intro_lsn} (chunk {chunk_id.hex()})")
            seg_id = seg["locations"]["id"]
            try:
                data = self._segment(seg["locations"]).read_chunk(chunk_id)
                break
            except KeyError:
                error = f"segment {seg_id} does not hold chunk {chunk_id.hex()}"
            except Exception as exc:  # noqa: BLE001 - NotEnoughShards, SegmentCorrupt, store errors
                error = f"chunk {chunk_id.hex()} in segment {seg_id}: {exc}"
            with self._lock:
                self._readers.pop(seg_id, None)
            if attempt == 2 or self.engine.cold_segment_for(info.intro_lsn) == seg:
                raise ColdChunkUnavailable(error)
        self.reads += 1
        self.bytes_read += len(data)
        if self.cache is not None:
            self.cache.put(chunk_id, data)
        return data

    def _segment(self, loc: dict) -> SegmentReader:
        seg_id = loc["id"]
        with self._lock:
            reader = self._readers.get(seg_id)
            if reader is not None:
                self._readers.move_to_end(seg_id)
                return reader
        reader = segment_reader(loc, self.stores)
        with self._lock:
            self._readers[seg_id] = reader
            while len(self._readers) > self.SEGMENTS_CACHED:
                self._readers.popitem(last=False)
        return reader


DOWN_FOR_S = 5.0  # an endpoint that failed is skipped this long (a read fails fast)
_down_until: dict[str, float] = {}


def _endpoint(store: ShardStore) -> str:
    return getattr(store, "endpoint_url", None) or store.url


def shard_fetch(loc: dict, stores: list[ShardStore], skip=frozenset()):
    """The `fetch(shard, offset, n)` that ErasureCode's readers take, for one shipped
    segment or checkpoint: None for a shard in `skip`, one that is missing, or one on
    an endpoint that did not answer (skipped for DOWN_FOR_S, so that with cold storage
    down a read fails in one timeout, not one per shard and per retry). Shard headers
    are kept: every ranged read starts with them."""
    shards = loc["shards"]
    headers: dict[int, bytes] = {}

    def fetch(index: int, offset: int, n: int):
        if index in skip:
            return None
        if offset == 0 and n == SHARD_HEADER.size and index in headers:
            return headers[index]
        store = stores[shards[index][0]]
        endpoint = _endpoint(store)
        if _down_until.get(endpoint, 0.0) > time.monotonic():
            return None
        try:
            data = store.read_range(shards[index][1], offset, n)
        except ShardNotFound:
            return None  # lost: parity replaces it
        except Exception:  # noqa: BLE001 - unreachable or failing: skip it for a while
            _down_until[endpoint] = time.monotonic() + DOWN_FOR_S
            return None
        if offset == 0 and n == SHARD_HEADER.size and len(data) == n:
            headers[index] = data
        return data

    return fetch


def erasure_code(loc: dict) -> ErasureCode:
    return ErasureCode(loc["k"], loc["m"], loc["ec_type"], loc["stripe_size"])


def segment_reader(loc: dict, stores: list[ShardStore]) -> SegmentReader:
    """Random access to a shipped segment through its shards (any k of k + m)."""
    code, fetch = erasure_code(loc), shard_fetch(loc, stores)
    return SegmentReader(lambda offset, n: code.read_range(fetch, offset, n), loc["size"])

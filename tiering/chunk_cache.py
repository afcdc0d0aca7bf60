"""A bounded on-disk cache of chunks read back from cold storage.

A cold read costs k ranged requests to shard stores; a chunk read twice should cost
that once. Files are named by the chunk id (its SHA-256) and checked against it on
every hit, so a damaged cache file is dropped, never served. Least recently used
chunks go first once the byte budget is exceeded. The index lives in memory and is
rebuilt from the directory at start (oldest modification first).
"""

from __future__ import annotations

import collections
import hashlib
import os
import tempfile
import threading


class ChunkCache:
    def __init__(self, directory: str, budget: int):
        self.dir = directory
        self.budget = budget
        self._lock = threading.Lock()
        self._lru: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0
        os.makedirs(directory, exist_ok=True)
        found = []
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.startswith(".") or len(name) != 64:
                os.unlink(path)  # a temp file of an interrupted put
                continue
            st = os.stat(path)
            found.append((st.st_mtime, bytes.fromhex(name), st.st_size))
        for _mtime, cid, size in sorted(found):
            self._lru[cid] = size
            self._bytes += size
        self._shrink()

    def _path(self, chunk_id: bytes) -> str:
        return os.path.join(self.dir, chunk_id.hex())

    def get(self, chunk_id: bytes) -> bytes | None:
        chunk_id = bytes(chunk_id)
        with self._lock:
            if chunk_id not in self._lru:
                self.misses += 1
                return None
            self._lru.move_to_end(chunk_id)
        try:
            with open(self._path(chunk_id), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = None
        if data is None or hashlib.sha256(data).digest() != chunk_id:
            self._drop(chunk_id)
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return data

    def put(self, chunk_id: bytes, data) -> None:
        """Keep a verified chunk (the caller checked it against its id)."""
        chunk_id = bytes(chunk_id)
        if self.budget <= 0 or len(data) > self.budget:
            return
        with self._lock:
            if chunk_id in self._lru:
                return
        fd, tmp = tempfile.mkstemp(prefix=".", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path(chunk_id))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        with self._lock:
            if chunk_id not in self._lru:
                self._lru[chunk_id] = len(data)
                self._bytes += len(data)
        self._shrink()

    def _drop(self, chunk_id: bytes) -> None:
        with self._lock:
            size = self._lru.pop(chunk_id, None)
            if size is not None:
                self._bytes -= size
        try:
            os.unlink(self._path(chunk_id))
        except FileNotFoundError:
            pass

    def _shrink(self) -> None:
        while True:
            with self._lock:
                if self._bytes <= self.budget or not self._lru:
                    return
                cid, size = self._lru.popitem(last=False)
                self._bytes -= size
                self.evictions += 1
            try:
                os.unlink(self._path(cid))
            except FileNotFoundError:
                pass

    def stats(self) -> dict:
        with self._lock:
            return {"bytes": self._bytes, "chunks": len(self._lru), "budget": self.budget,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}

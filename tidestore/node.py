"""One Tidestore node: the engine, the log, and the calls the S3 front makes of them.

This is the facade DESIGN.md puts between `s3front` and the rest: the front streams
bytes and speaks S3; the node turns that into chunk writes, proposals and reads, and
hides whether the log has one member or three.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from engine import ChunkRef, Engine, EngineConfig
from engine.entries import Entry
from engine.state_machine import ApplyResult
from raftlog import LocalLog

from . import credentials
from .config import NodeConfig



class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        if config.clean_slate and os.path.isdir(config.data_dir):
            shutil.rmtree(config.data_dir)
        os.makedirs(config.data_dir, exist_ok=True)
        self.access_key, self.secret_key, self.generated_credentials = credentials.load_or_create(
            config.data_dir, config.access_key, config.secret_key)
        self.engine = Engine(EngineConfig(data_dir=os.path.join(config.data_dir, "engine"),
                                          **config.engine))
        self.log = LocalLog(self.engine)
        self.io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="node-io")
        # chunk buffers of uploads in progress, across all connections
        self.ingest_slots = asyncio.Semaphore(max(2, config.ingest_budget // config.chunk_size))

    def lookup_secret(self, access_key: str) -> str | None:
        return self.secret_key if access_key == self.access_key else None

    # ---- the data path ---------------------------------------------------------
    def begin(self) -> bytes:
        return self.engine.begin()

    def write_chunk(self, txn: bytes, data, chunk_id: bytes | None = None) -> ChunkRef:
        """Write one chunk of an upload (blocking: callers choose the thread). The seam
        where the 3-node data path will also send the chunk to the peers."""
        return self.engine.write_chunk(txn, data, chunk_id)

    async def in_io(self, fn, *args):
        """Run blocking work (hashing, disk reads) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def abort(self, txn: bytes) -> None:
        await self.in_io(self.engine.abort, txn)

    async def commit(self, entry: Entry) -> ApplyResult:
        """Propose an entry (its chunks, if any, already written here) and return its
        result once applied on this node. The APPLY record follows the chunks in the
        same WAL, so the one fsync that makes it durable covers them too."""
        return await self.log.propose(entry)

    async def fresh(self) -> None:
        """Before a read: make sure this node has applied everything acknowledged."""
        await self.log.read_barrier()

    async def close(self) -> None:
        await self.log.close()
        await self.in_io(self.engine.close)
        self.io.shutdown(wait=True)

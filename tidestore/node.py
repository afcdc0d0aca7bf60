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
from engine.errors import ChunkMissing
from engine.state_machine import ApplyResult
from raftlog import LocalLog

from . import credentials
from .config import NodeConfig



KEEP_ALL_AT_RECOVERY = 100 * 365 * 86400.0  # seconds: an undo grace no transaction outlives


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        if config.clean_slate and os.path.isdir(config.data_dir):
            shutil.rmtree(config.data_dir)
        os.makedirs(config.data_dir, exist_ok=True)
        self.access_key, self.secret_key, self.generated_credentials = credentials.load_or_create(
            config.data_dir, config.access_key, config.secret_key)
        engine_settings = dict(config.engine)
        if config.clustered:
            # A member may hold durable chunks of a transaction whose entry is
            # committed but not yet applied here when it crashes: the journal replays
            # the entry after recovery. Undoing such a transaction at recovery would
            # drop a quorum copy of acknowledged data, so recovery undoes none; the
            # run-time reaper rolls back those no entry takes, `txn_timeout_s` after
            # the restart (its idle clock starts at recovery), however long the node
            # was down.
            engine_settings.setdefault("undo_grace_s", KEEP_ALL_AT_RECOVERY)
        self.engine = Engine(EngineConfig(data_dir=os.path.join(config.data_dir, "engine"),
                                          **engine_settings))
        self.io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="node-io")
        if config.clustered:
            from .cluster import Cluster

            self.cluster = Cluster(config, self.engine, self.io)
            self.log = self.cluster.log
        else:
            self.cluster = None
            self.log = LocalLog(self.engine)
        # a chunk write may be done on the event loop itself only when it never waits
        # (in a group it hands the chunk to the peers, with backpressure)
        self.inline_writes = self.cluster is None
        self.advertised = config.listen  # the S3 address, once bound (port 0 resolved)
        # chunk buffers of uploads in progress, across all connections
        self.ingest_slots = asyncio.Semaphore(max(2, config.ingest_budget // config.chunk_size))

    async def start(self) -> None:
        """Start what needs the event loop (the group's servers)."""
        if self.cluster is not None:
            await self.cluster.start()

    def lookup_secret(self, access_key: str) -> str | None:
        return self.secret_key if access_key == self.access_key else None

    # ---- the data path ---------------------------------------------------------
    def begin(self) -> bytes:
        return self.engine.begin()

    def write_chunk(self, txn: bytes, data, chunk_id: bytes | None = None) -> ChunkRef:
        """Write one chunk of an upload (blocking: callers choose the thread); in a
        group, also stream it to the peers."""
        ref = self.engine.write_chunk(txn, data, chunk_id)
        if self.cluster is not None:
            self.cluster.replicate(txn, ref.chunk_id, data)
        return ref

    async def in_io(self, fn, *args):
        """Run blocking work (hashing, disk reads) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def abort(self, txn: bytes) -> None:
        """The upload failed before anything was proposed: roll its chunks back here
        and on the peers."""
        if self.cluster is not None:
            self.cluster.finished(txn, committed=False)
        await self.in_io(self.engine.abort, txn)

    async def commit(self, entry: Entry) -> ApplyResult:
        """Propose an entry (its chunks, if any, already written here) and return its
        result once applied on this node. Alone, the APPLY record follows the chunks
        in the same WAL, so the one fsync that makes it durable covers them too; in a
        group the chunks must first be durable on a quorum. If the proposal fails its
        outcome may be unknown (it may still commit), so its chunks are not rolled
        back here or on the peers: an entry that never commits leaves a transaction
        that the engines reap after their timeout."""
        txn = getattr(entry, "txn", None)
        if self.cluster is None or txn is None:
            return await self.log.propose(entry)
        try:
            await self.cluster.quorum_durable(txn)
            return await self.log.propose(entry)
        finally:
            self.cluster.finished(txn, committed=True)

    async def read_chunk_bytes(self, chunk_id: bytes, lsn: int, length: int, lo: int = 0,
                               hi: int | None = None):
        """Bytes [lo, hi) of a chunk, verified; from a peer if this node lacks it."""
        try:
            return await self.in_io(self.engine.read_chunk_bytes, chunk_id, lsn, length, lo, hi)
        except ChunkMissing:
            if self.cluster is None:
                raise
        data = await self.cluster.fetch_chunk(chunk_id)
        return memoryview(data)[lo:length if hi is None else hi]

    async def group_status(self) -> list:
        """Every member's status (one entry alone)."""
        if self.cluster is not None:
            return await self.cluster.group_status()
        st = self.log.status()
        st.update(node_id="single", s3=self.advertised, healthy=True, lag=0,
                  missing_chunks=0, leader="single")
        return [st]

    async def fresh(self) -> None:
        """Before a read: make sure this node has applied everything acknowledged."""
        await self.log.read_barrier()

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.close()
        else:
            await self.log.close()
        await self.in_io(self.engine.close)
        self.io.shutdown(wait=True)

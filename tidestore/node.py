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
from tiering.cold_config import ColdConfig
from tiering.errors import ColdChunkUnavailable

from . import credentials
from .config import NodeConfig



KEEP_ALL_AT_RECOVERY = 100 * 365 * 86400.0  # seconds: an undo grace no transaction outlives
REHYDRATING = "REHYDRATING"  # in a data directory `tidestore rehydrate` has not finished


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        if config.clean_slate and os.path.isdir(config.data_dir):
            shutil.rmtree(config.data_dir)
        os.makedirs(config.data_dir, exist_ok=True)
        if os.path.exists(os.path.join(config.data_dir, REHYDRATING)):
            raise SystemExit(f"tidestore: the rehydration of {config.data_dir} has not finished: run "
                             "`tidestore rehydrate --config <this node's config>` again (it resumes)")
        self.access_key, self.secret_key, self.generated_credentials = credentials.load_or_create(
            config.data_dir, config.access_key, config.secret_key)
        engine_settings = dict(config.engine)
        self.cold_config = ColdConfig.from_dict(config.cold)
        if self.cold_config.enabled:
            # keep WAL segments the shipper still needs (entries above the cold HWM)
            engine_settings.setdefault("ship_retention", True)
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
        self.cold = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start what needs the event loop (the group's servers, the cold tier)."""
        self.loop = asyncio.get_running_loop()
        if self.cluster is not None:
            await self.cluster.start()
        if self.cold_config.enabled:
            from .cold_tier import ColdTier

            cluster = self.cluster
            self.cold = ColdTier(
                self.cold_config, self.engine, self.config.data_dir,
                propose=self._propose_from_thread,
                is_leader=(lambda: True) if cluster is None else cluster.is_leader,
                fetch=None if cluster is None else self._fetch_from_thread,
                truncate=None if cluster is None else cluster.truncate_journal)
            self.cold.start()
            if cluster is not None:
                cluster.extra_status = self.cold_status
                cluster.data_server.read_elsewhere = self._cold_chunk_or_none

    def _cold_chunk_or_none(self, chunk_id: bytes) -> bytes | None:
        """For a peer's fetch (blocking): a chunk this node evicted, from cold storage."""
        return self.cold.read_chunk(chunk_id) if self.cold.holds(chunk_id) else None

    def _propose_from_thread(self, entry: Entry) -> ApplyResult:
        """For the shipper's thread: commit an entry through the log on the loop."""
        fut = asyncio.run_coroutine_threadsafe(self.log.propose(entry), self.loop)
        return fut.result(timeout=60)

    def _fetch_from_thread(self, chunk_id: bytes) -> bytes | None:
        fut = asyncio.run_coroutine_threadsafe(self.cluster.fetch_chunk(chunk_id), self.loop)
        try:
            return fut.result(timeout=60)
        except Exception:  # noqa: BLE001 - no peer has it now: the shipper retries later
            return None

    def cold_status(self) -> dict:
        """This node's HWM, LWM and cold-tier state (empty without a cold tier)."""
        if self.cold is None:
            return {}
        # the LWM first: it only follows the HWM, so read in this order lwm <= hwm holds
        lwm = self.cluster.log.raft.lwm if self.cluster is not None else self.engine.wal_raft_floor()
        st = self.cold.status()
        st["lwm"] = lwm
        return {"cold": st, "hwm": st["hwm"], "lwm": lwm}

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
        if self.cold is not None:
            self.cold.check_backpressure()  # ColdLagExceeded: 503 SlowDown
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
        """Bytes [lo, hi) of a chunk, verified: from this node's WAL, else from cold
        storage if the chunk was shipped, else from a peer (a replica that missed it)."""
        try:
            return await self.in_io(self.engine.read_chunk_bytes, chunk_id, lsn, length, lo, hi)
        except ChunkMissing:
            if self.cluster is None and self.cold is None:
                raise
        data = None
        if self.cold is not None and self.cold.holds(chunk_id):
            try:
                data = await self.in_io(self.cold.read_chunk, chunk_id)
            except ColdChunkUnavailable:
                if self.cluster is None:
                    raise  # 503: cold storage cannot give it back right now
        if data is None:
            if self.cluster is None:
                raise ChunkMissing(chunk_id)
            data = await self.cluster.fetch_chunk(chunk_id)
        return memoryview(data)[lo:length if hi is None else hi]

    async def group_status(self) -> list:
        """Every member's status (one entry alone)."""
        if self.cluster is not None:
            return await self.cluster.group_status()
        return [self.local_status()]

    def local_status(self) -> dict:
        """This node's role, LSNs (commit, applied, HWM, LWM) and health."""
        if self.cluster is not None:
            return self.cluster.local_status()
        st = self.log.status()
        st.update(node_id="single", s3=self.advertised, healthy=True, lag=0,
                  missing_chunks=0, leader="single")
        st.update(self.cold_status())
        return st

    async def fresh(self) -> None:
        """Before a read: make sure this node has applied everything acknowledged."""
        await self.log.read_barrier()

    async def close(self) -> None:
        if self.cold is not None:
            await self.in_io(self.cold.close)
        if self.cluster is not None:
            await self.cluster.close()
        else:
            await self.log.close()
        await self.in_io(self.engine.close)
        self.io.shutdown(wait=True)

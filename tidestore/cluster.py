"""A node's membership in a 3-node group: Raft, the chunk data path, the control plane.

Wires raftlog's parts to one engine and gives the Node facade what it needs:
- replicate an upload's chunks to the peers while they are written here, and hold the
  proposal until a quorum (this node and at least one peer) has them durably;
- read a chunk this node lacks (it applied the entry while it was down) from a peer;
- fill such chunks in the background, so the node converges without being asked;
- gather the status of every member for `tidestore status`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from engine import Engine
from raftlog import LogUnavailable
from raftlog.control_plane import ControlClient, ControlServer
from raftlog.data_client import DataClient, PeerUnavailable, QuorumNotReached
from raftlog.data_server import DataServer
from raftlog.raft_log import RaftLog

from .config import NodeConfig, split_listen

log = logging.getLogger(__name__)

FILL_INTERVAL_S = 1.0
FILL_BATCH = 64
WATCH_INTERVAL_S = 2.0


class Cluster:
    def __init__(self, config: NodeConfig, engine: Engine, executor):
        self.config = config
        self.engine = engine
        self.executor = executor
        self.node_id = config.node_id
        members = {config.node_id: {"raft": config.raft_listen,
                                    "control": split_listen(config.control_listen),
                                    "data": split_listen(config.data_listen),
                                    "listen": config.listen}}
        for p in config.peers:
            route = p.get("route", {})
            members[p["id"]] = {"raft": p["raft"], "raft_connect": route.get("raft"),
                                "control": split_listen(route.get("control", p["control"])),
                                "data": split_listen(route.get("data", p["data"])),
                                "listen": p.get("listen", "")}
        self.members = members
        self.peer_ids = [mid for mid in members if mid != config.node_id]
        self.control = ControlClient(config.cluster_secret, node_id=config.node_id)
        self.log = RaftLog(engine, node_id=config.node_id, members=members,
                           secret=config.cluster_secret,
                           journal_dir=os.path.join(config.data_dir, "raft"),
                           control_client=self.control,
                           commit_timeout_s=config.commit_timeout_s,
                           barrier_timeout_s=config.barrier_timeout_s)
        self.uploads: dict = {}  # txn -> UploadReplication
        self._filler: asyncio.Task | None = None
        self.filled = 0
        self.fetched_for_reads = 0
        self.extra_status = dict  # the node adds its cold tier's state (HWM, LWM)
        # the applied LSN each peer last reported: the Raft journal keeps every entry a
        # member may still need, so it is truncated no further than the lowest of them
        self.peer_applied: dict[str, int] = {}
        self._watcher: asyncio.Task | None = None

    async def start(self) -> None:
        host, port = split_listen(self.config.control_listen)
        self.control_server = ControlServer(host, port, self.config.cluster_secret, {
            "read_index": self.log.handle_read_index,
            "status": self._handle_status,
            "journal_entry": self._handle_journal_entry,
        }, node_id=self.node_id)
        await self.control_server.start()
        host, port = split_listen(self.config.data_listen)
        self.data_server = DataServer(host, port, self.config.cluster_secret, self.engine,
                                      executor=self.executor, node_id=self.node_id)
        await self.data_server.start()
        self.data = DataClient(self.config.cluster_secret,
                               {mid: self.members[mid]["data"] for mid in self.peer_ids},
                               node_id=self.node_id, loop=asyncio.get_running_loop(),
                               max_idle=64)  # one pooled connection per concurrent upload
        self._filler = asyncio.ensure_future(self._fill_missing_forever())
        self._watcher = asyncio.ensure_future(self._watch_peers_forever())

    def is_leader(self) -> bool:
        return self.log.raft._isLeader()

    def truncate_journal(self, hwm: int) -> None:
        """LWM = HWM, held back by any member that has not applied that far (or has
        not reported yet): it would otherwise need a snapshot to catch up. A member
        that stays down therefore pins the journal; `tidestore status` shows it."""
        if any(mid not in self.peer_applied for mid in self.peer_ids):
            return
        floor = min(hwm, self.log.applied_lsn, *self.peer_applied.values())
        if floor > 0:
            self.log.truncate_to(floor)

    async def _watch_peers_forever(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            await self.group_status()

    # ---- writes ---------------------------------------------------------------
    def replicate(self, txn: bytes, chunk_id: bytes, data) -> None:
        """Called on an I/O thread right after the chunk went into the local WAL."""
        rep = self.uploads.get(txn)
        if rep is None:
            rep = self.uploads[txn] = self.data.open_upload(txn)
        rep.send_chunk(chunk_id, data)

    async def quorum_durable(self, txn: bytes) -> None:
        """Before proposing an entry for `txn`: its chunks are durable here and on at
        least one peer (a majority of three), or LogUnavailable."""
        rep = self.uploads.get(txn)
        local = asyncio.get_running_loop().run_in_executor(self.executor, self.engine.wait_durable)
        if rep is None:
            await local
            return
        needed = len(self.members) // 2  # peers needed besides this node
        try:
            await asyncio.gather(local, rep.wait_quorum(needed, self.config.quorum_timeout_s))
        except QuorumNotReached as exc:
            raise LogUnavailable(f"the upload's chunks did not reach a quorum: {exc}") from None

    def finished(self, txn: bytes, committed: bool) -> None:
        rep = self.uploads.pop(txn, None)
        if rep is not None:
            rep.close() if committed else rep.abort()

    # ---- reads of chunks this node lacks ----------------------------------------------
    async def fetch_chunk(self, chunk_id: bytes) -> bytes:
        try:
            data = await self.data.fetch_chunk(chunk_id, self._peers_leader_first())
        except PeerUnavailable as exc:
            raise LogUnavailable(f"chunk {chunk_id.hex()[:16]} is on no reachable peer: {exc}") from None
        self.fetched_for_reads += 1
        asyncio.get_running_loop().run_in_executor(self.executor, self._fill_quietly, chunk_id, data)
        return data

    def _fill_quietly(self, chunk_id: bytes, data) -> None:
        try:
            if self.engine.fill_chunk(chunk_id, data):
                self.filled += 1
        except Exception:  # noqa: BLE001 - the background filler will try again
            log.exception("filling chunk %s failed", chunk_id.hex())

    def _peers_leader_first(self) -> list:
        leader = self.log.leader_id()
        return sorted(self.peer_ids, key=lambda mid: mid != leader)

    async def _fill_missing_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FILL_INTERVAL_S)
            try:
                missing = await loop.run_in_executor(self.executor, self.engine.missing_chunks, FILL_BATCH)
                for chunk_id in missing:
                    try:
                        data = await self.data.fetch_chunk(chunk_id, self._peers_leader_first())
                    except PeerUnavailable:
                        continue
                    await loop.run_in_executor(self.executor, self._fill_quietly, chunk_id, data)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep trying; a closed engine ends the task below
                log.exception("background chunk fill failed")

    # ---- status -----------------------------------------------------------------------
    def local_status(self) -> dict:
        st = self.log.status()
        stats = self.engine.stats()
        st.update(s3=self.config.listen, missing_chunks=stats.get("missing_chunks", 0),
                  chunks_filled=self.filled, healthy=True, time=time.time())
        st.update(self.extra_status())
        return st

    async def _handle_status(self, _params: dict) -> dict:
        return self.local_status()

    async def _handle_journal_entry(self, params: dict) -> dict:
        """For `tidestore rehydrate` seeding a lost member's journal: one entry of this
        member's journal (the anchor), its range, and the current term."""
        first, last, entry = self.log.journal.entry_at(int(params["index"]))
        raft = self.log.raft
        return {"node_id": self.node_id, "first": first, "last": last,
                "term": raft._SyncObj__raftCurrentTerm, "commit": raft._SyncObj__raftCommitIndex,
                "entry": [bytes(entry[0]), entry[1], entry[2]] if entry else None}

    async def group_status(self) -> list:
        """Every member's status, this one's first; an unreachable member says so."""
        async def one(mid):
            try:
                return await self.control.call(self.members[mid]["control"], "status", {}, timeout=1.5)
            except Exception as exc:  # noqa: BLE001 - reported as the member's health
                return {"node_id": mid, "s3": self.members[mid]["listen"], "healthy": False,
                        "error": str(exc) or type(exc).__name__}
        others = await asyncio.gather(*(one(mid) for mid in self.peer_ids))
        for mid, st in zip(self.peer_ids, others):
            if st.get("healthy") and isinstance(st.get("applied_lsn"), int):
                self.peer_applied[mid] = st["applied_lsn"]
        return [self.local_status(), *others]

    async def close(self) -> None:
        for task in (self._filler, self._watcher):
            if task is not None:
                task.cancel()
        for txn in list(self.uploads):
            self.finished(txn, committed=False)
        await self.log.close()
        for closer in (self.data.close, self.data_server.close, self.control_server.close,
                       self.control.close):
            try:
                await closer()
            except Exception:  # noqa: BLE001 - shutting down: close the rest anyway
                log.exception("closing %s", closer)

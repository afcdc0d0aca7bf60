"""The replicated log of a 3-node group, behind the same interface as LocalLog.

- propose(): the entry goes to pysyncobj (forwarded to the leader when this node is a
  follower); the caller gets the result once the entry is committed AND applied and
  published by this node's engine, so what it acknowledges it can also read.
- read_barrier(): linearizable reads on every replica. The leader commits a no-op
  through Raft (proof that it is still the leader of a quorum, and an index at least
  as high as every write acknowledged before the read started); a follower asks the
  leader for that index over the QUIC control plane; then the node waits until it has
  applied up to it. Barriers are coalesced: every read that arrives while one is in
  flight shares the next one, so the cost under load is one Raft round per batch
  (a read cannot join a barrier already in flight: that one may have been ordered
  before a write the read must see).
- Unavailability is prompt: no known leader for `leader_wait_s`, no commit within
  `commit_timeout_s`, or no barrier within `barrier_timeout_s` raises LogUnavailable
  (S3 503), never a hang.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time

from pysyncobj import FAIL_REASON

from engine import Engine
from engine.entries import Entry, Noop, decode_entry, encode_entry
from engine.publisher import Pending
from engine.state_machine import ApplyResult

from .interface import JournalLost, LogUnavailable
from .raft_journal import DurableJournal
from .raft_node import RaftMember

log = logging.getLogger(__name__)

_DONE = Pending(0, 0, None)
_DONE._finish(ApplyResult(skipped=True))

_RETRYABLE = {FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED}
_REASONS = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}


class RaftLog:
    def __init__(self, engine: Engine, *, node_id: str, members: dict, secret: str,
                 journal_dir: str, control_client, commit_timeout_s: float = 5.0,
                 barrier_timeout_s: float = 3.0, leader_wait_s: float = 2.0,
                 election_timeout: tuple = (0.4, 1.2)):
        """`members`: node id -> {"raft": "host:port", "control": (host, port)} for
        every member, this node included; "raft_connect" (optional) reaches a peer's
        Raft port through another address."""
        self.engine = engine
        self.node_id = node_id
        self.members = members
        self.control = control_client
        self.commit_timeout_s = commit_timeout_s
        self.barrier_timeout_s = barrier_timeout_s
        self.leader_wait_s = leader_wait_s
        self._by_raft = {m["raft"]: mid for mid, m in members.items()}
        self._visible = engine.applied_lsn  # highest LSN applied and published here
        self._last_pending = None  # the engine's Pending of the last entry submitted
        self._waiters: list = []  # heap of (lsn, seq, loop, future)
        self._waiters_lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self._barrier = _Coalescer(self._leader_barrier)
        self._follower_barrier = _Coalescer(self._ask_leader)
        self.journal = DurableJournal(journal_dir)
        if not len(self.journal) and engine.applied_lsn > 0:
            self.journal.close()
            raise JournalLost(
                f"this node's engine has applied LSN {engine.applied_lsn} but its Raft journal "
                f"({journal_dir}) is empty: a rebuilt or restored store is served on its own "
                "(a config without [[peers]]), and a member that lost its journal is rebuilt "
                "with `tidestore rehydrate` (move its data directory aside first)")
        partners = [(m["raft"], m["raft_connect"]) if m.get("raft_connect") else m["raft"]
                    for mid, m in members.items() if mid != node_id]
        self.raft = RaftMember(members[node_id]["raft"], partners, self.journal, self._apply,
                               password=secret, election_timeout=election_timeout)

    # ---- the Raft thread ----------------------------------------------------------
    def _apply(self, lsn: int, payload: bytes):
        """Runs on pysyncobj's thread for each committed entry, in order."""
        entry = decode_entry(payload)
        if isinstance(entry, Noop):
            # a read barrier changes nothing: it never touches the engine (no WAL
            # record, no fsync, no catalog commit on any member). It is visible here
            # once everything before it is, i.e. when the last submitted entry is
            # published (the publisher completes in log order).
            pending = self._last_pending
            if pending is None or pending.done:
                self._published(lsn)
            else:
                pending.add_done_callback(lambda _p: self._published(lsn))
            return lsn, _DONE
        pending = self.engine.submit(lsn, entry)
        self._last_pending = pending
        pending.add_done_callback(lambda _p: self._published(lsn))
        return lsn, pending

    def _published(self, lsn: int) -> None:
        """The engine made entry `lsn` visible (publisher thread, in LSN order)."""
        if lsn > self._visible:
            self._visible = lsn
        with self._waiters_lock:
            ready = []
            while self._waiters and self._waiters[0][0] <= lsn:
                ready.append(heapq.heappop(self._waiters))
        for _lsn, _seq, loop, fut in ready:
            loop.call_soon_threadsafe(_resolve, fut, None)

    # ---- proposing ------------------------------------------------------------------
    async def propose(self, entry: Entry) -> ApplyResult:
        _lsn, result = await self._propose(entry)
        return result

    async def _propose(self, entry: Entry) -> tuple[int, ApplyResult]:
        if self._closed:
            raise LogUnavailable("the log is closed")
        payload = encode_entry(entry)
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        while True:
            fut = loop.create_future()

            def callback(res, err, fut=fut):
                loop.call_soon_threadsafe(_resolve, fut, (res, err))

            self.raft.apply_entry(payload, callback=callback)
            left = self.commit_timeout_s - (time.monotonic() - start)
            try:
                res, err = await asyncio.wait_for(fut, max(left, 0.01))
            except asyncio.TimeoutError:
                raise LogUnavailable(f"no commit within {self.commit_timeout_s:.0f}s "
                                     f"(no quorum reachable from {self.node_id}?)") from None
            if err == FAIL_REASON.SUCCESS:
                lsn, pending = res
                return lsn, await _await_pending(loop, pending)
            waited = time.monotonic() - start
            if err in _RETRYABLE and waited < self.leader_wait_s:
                await asyncio.sleep(0.05)
                continue
            raise LogUnavailable(f"the entry was not committed: {_REASONS.get(err, err)}")

    # ---- reading fresh --------------------------------------------------------------
    async def read_barrier(self) -> None:
        if self._closed:
            raise LogUnavailable("the log is closed")
        try:
            if self.raft._isLeader():
                lsn = await asyncio.wait_for(self._barrier.run(), self.barrier_timeout_s)
            else:
                lsn = await asyncio.wait_for(self._follower_barrier.run(), self.barrier_timeout_s)
            await asyncio.wait_for(self.wait_applied(lsn), self.barrier_timeout_s)
        except asyncio.TimeoutError:
            raise LogUnavailable("cannot confirm this replica is up to date "
                                 f"(no quorum reachable from {self.node_id}?)") from None

    async def _leader_barrier(self) -> int:
        lsn, _result = await self._propose(Noop())
        await self.wait_applied(lsn)
        return lsn

    async def _ask_leader(self) -> int:
        deadline = time.monotonic() + self.leader_wait_s
        while True:
            leader = self.leader_id()
            if leader == self.node_id:
                return await self._barrier.run()
            if leader is not None:
                try:
                    return await self.control.call(self.members[leader]["control"], "read_index",
                                                   {}, timeout=self.barrier_timeout_s)
                except Exception as exc:  # noqa: BLE001 - leader changed or unreachable: retry
                    err = exc
            else:
                err = None
            if time.monotonic() >= deadline:
                raise LogUnavailable(f"no leader reachable from {self.node_id}"
                                     + (f": {err}" if err else ""))
            await asyncio.sleep(0.05)

    async def handle_read_index(self, _params: dict) -> int:
        """Control-plane handler: a follower's read barrier, answered by the leader."""
        if not self.raft._isLeader():
            raise LogUnavailable("not the leader")
        return await self._barrier.run()

    async def wait_applied(self, lsn: int) -> None:
        if self._visible >= lsn:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._waiters_lock:
            if self._visible >= lsn:
                return
            self._seq += 1
            heapq.heappush(self._waiters, (lsn, self._seq, loop, fut))
        await fut

    # ---- status ---------------------------------------------------------------------
    def leader_id(self) -> str | None:
        leader = self.raft._getLeader()
        return None if leader is None else self._by_raft.get(leader.id if hasattr(leader, "id")
                                                              else str(leader))

    @property
    def applied_lsn(self) -> int:
        return self._visible

    def status(self) -> dict:
        for _ in range(5):
            try:
                raw = self.raft.getStatus()
                break
            except RuntimeError:  # a dict changed size under us (pysyncobj's thread)
                continue
        else:
            raw = {}
        state = raw.get("state")
        role = {0: "follower", 1: "candidate", 2: "leader"}.get(state, str(state))
        commit = raw.get("commit_idx", 0)
        peers = {}
        for mid, m in self.members.items():
            if mid == self.node_id:
                continue
            peers[mid] = {
                "connected": raw.get("partner_node_status_server_" + m["raft"]) == 2,
                "match_lsn": raw.get("match_idx_server_" + m["raft"]),
            }
        return {
            "node_id": self.node_id, "role": role, "term": raw.get("raft_term", 0),
            "leader": self.leader_id(), "members": len(self.members),
            "has_quorum": bool(raw.get("has_quorum")), "commit_lsn": commit,
            "applied_lsn": self._visible, "lag": max(0, commit - self._visible),
            "journal_entries": raw.get("log_len", 0), "journal_bytes": self.journal.bytes,
            "journal_fsyncs": self.journal.fsyncs, "lwm": self.raft.lwm, "peers": peers,
        }

    def truncate_to(self, lsn: int) -> None:
        """Let the Raft journal drop entries below `lsn` (LWM <= cold HWM: the caller
        passes at most the HWM, and at most what every member has applied)."""
        self.raft.request_truncation(lsn)

    async def close(self) -> None:
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._destroy)

    def _destroy(self) -> None:
        self.raft.destroy_synchronous()
        self.journal.close()


class _Coalescer:
    """Runs `fn` for batches of callers: whoever arrives while a run is in flight
    waits for the next run, which then serves all of them at once."""

    def __init__(self, fn):
        self.fn = fn
        self._next: asyncio.Future | None = None
        self._running = False

    async def run(self):
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        fut = self._next
        if not self._running:
            self._running = True
            asyncio.ensure_future(self._loop())
        return await asyncio.shield(fut)

    async def _loop(self):
        try:
            while self._next is not None:
                fut, self._next = self._next, None
                try:
                    fut.set_result(await self.fn())
                except Exception as exc:  # noqa: BLE001 - every waiter of this batch gets it
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: waiters may all have timed out
        finally:
            self._running = False


def _resolve(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


async def _await_pending(loop, pending) -> ApplyResult:
    fut = loop.create_future()
    pending.add_done_callback(lambda p: loop.call_soon_threadsafe(_resolve, fut, p))
    p = await fut
    try:
        return p.result()
    except Exception as exc:  # noqa: BLE001 - the engine failed: this node cannot serve
        raise LogUnavailable(f"the engine failed: {exc}") from exc

"""The pysyncobj member: consensus on small entries, applied into the engine.

pysyncobj runs its own thread (ticks, sockets, elections). Every committed entry
reaches `apply_entry` on that thread, in index order, on every member; the Raft index
is the entry's LSN. Applying only *submits* the entry to the engine (a WAL append and
a queued catalog change), so the Raft thread never waits for an fsync of the engine;
the engine's publisher makes entries visible in the same order.

Two things pysyncobj does not do are added here:
- durability: `DurableJournal` on disk, and `DurableTransport`, which holds back every
  message that claims durability until one fsync per tick covers it;
- a cheaper link cipher: `RaftCipher` (AES-GCM) where pysyncobj would use Fernet;
- a Raft index for the applied entry: pysyncobj applies entries strictly one after the
  other and bumps `raftLastApplied` after each, so inside `apply_entry` the entry's
  index is `raftLastApplied + 1`.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pysyncobj.syncobj as _syncobj_module
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport

from .raft_cipher import RaftCipher
from .raft_journal import DurableJournal

# messages that claim this node's journal holds entries durably
_CLAIMS_DURABILITY = frozenset(("next_node_idx", "response_vote"))

_construct_lock = threading.Lock()


class DurableTransport(TCPTransport):
    """Holds back acknowledgements until the journal is fsync'd.

    pysyncobj handles incoming messages only inside its poll, and runs its tick
    callbacks right before each poll. So: a follower's acks (`next_node_idx`) and
    votes are queued, and `flush_durable()`, a tick callback, fsyncs the journal once
    and sends them all: one fsync per batch of messages, not per entry. The same
    fsync covers the leader's own appends before any ack can be processed (acks are
    only read in the poll that follows), so a leader never counts itself towards a
    quorum for an entry that is not on its disk.
    """

    def __init__(self, syncObj, selfNode, otherNodes):
        super().__init__(syncObj, selfNode, otherNodes)
        self._held: list = []

    def send(self, node, message):
        if message.get("type") in _CLAIMS_DURABILITY:
            self._held.append((node, message))
            return True
        return super().send(node, message)

    def flush_durable(self) -> None:
        self._syncObj.tidestore_journal.sync()
        held, self._held = self._held, []
        for node, message in held:
            super().send(node, message)


class RoutedTCPNode(TCPNode):
    """A peer known by its own address (its Raft identity, which it announces when it
    connects) but reached through another one: a port forward, a NAT, or the test
    suite's partition proxy."""

    def __init__(self, address: str, connect: str):
        super().__init__(address)
        self._connect_host, port = connect.rsplit(":", 1)
        self._connect_port = int(port)

    @property
    def ip(self):
        return globalDnsResolver().resolve(self._connect_host)

    @property
    def port(self):
        return self._connect_port


@contextlib.contextmanager
def _our_parts(journal: DurableJournal):
    """pysyncobj builds its journal and its link cipher inside SyncObj.__init__ from
    module-level factories; hand it ours for the duration of the constructor."""
    with _construct_lock:
        saved = _syncobj_module.createJournal, _syncobj_module.getEncryptor
        _syncobj_module.createJournal = lambda _file=None: journal
        _syncobj_module.getEncryptor = RaftCipher
        try:
            yield
        finally:
            _syncobj_module.createJournal, _syncobj_module.getEncryptor = saved


class RaftMember(SyncObj):
    def __init__(self, self_addr: str, partner_addrs: list, journal: DurableJournal,
                 apply, *, password: str, election_timeout: tuple = (0.4, 1.2),
                 leader_fallback_timeout: float = 2.0, on_state_changed=None):
        """`apply(lsn, payload)` is called on the Raft thread for every committed
        entry; what it returns is handed to the proposer's callback. A partner is
        "host:port", or ("host:port", "connect-host:port") to reach it through a route."""
        partner_addrs = [RoutedTCPNode(*p) if isinstance(p, tuple) else p for p in partner_addrs]
        self.tidestore_journal = journal
        self._tidestore_apply = apply
        conf = SyncObjConf(
            password=password,
            appendEntriesUseBatch=False,  # send at once: ~2 ms commits, not 45-200 ms
            commandsWaitLeader=False,  # no leader: fail fast (the caller retries briefly)
            raftMinTimeout=election_timeout[0],
            raftMaxTimeout=election_timeout[1],
            leaderFallbackTimeout=leader_fallback_timeout,  # a cut-off leader steps down
            connectionRetryTime=0.5,
            connectionTimeout=2.0,
            # no pysyncobj snapshots: the engine is the state; the log is truncated only
            # up to what the cold tier holds (issue 5), never by a pysyncobj dump
            logCompactionMinEntries=1 << 62,
            logCompactionMinTime=1 << 62,
            journalFile=None,
            dynamicMembershipChange=False,
            onStateChanged=on_state_changed,
        )
        with _our_parts(journal):
            super().__init__(self_addr, partner_addrs, conf, transportClass=DurableTransport)
        # a journal truncated up to the cold HWM starts at its anchor entry, which (like
        # everything before it) the engine has applied: resume applying after it
        # (pysyncobj assumes a journal starting at index 1 unless it loads a dump)
        if len(journal) and journal[0][1] > self._SyncObj__raftLastApplied:
            self._SyncObj__raftLastApplied = journal[0][1]
        self._truncate_to = 0
        transport = self._SyncObj__transport
        self.addOnTickCallback(transport.flush_durable)
        self.addOnTickCallback(self._truncate_journal)
        self.addOnTickCallback(self._check_vote_floor)
        self._deliver = transport._onMessageReceivedCallback
        transport.setOnMessageReceivedCallback(self._on_message)

    def _applyCommand(self, command, callback, commandType=None):
        """Queue a proposal and always wake the Raft thread (pysyncobj skips the
        wake-up while `_checkCommandsToApply` below has batching switched on)."""
        super()._applyCommand(command, callback, commandType)
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            notifier.notify()

    def _checkCommandsToApply(self):
        """Append every queued proposal, then send them to the followers in one
        message each: pysyncobj (appendEntriesUseBatch=False) sends after every single
        command, one pickled, encrypted message per entry per follower."""
        conf = self._SyncObj__conf
        before = self._SyncObj__raftLog[-1][1]
        conf.appendEntriesUseBatch = True
        try:
            super()._checkCommandsToApply()
        finally:
            conf.appendEntriesUseBatch = False
        if self._isLeader() and self._SyncObj__raftLog[-1][1] != before:
            self._SyncObj__sendAppendEntries()

    def _onTick(self, timeToWait=0.0):
        """A rehydrated member below its vote floor (DurableJournal.vote_floor) does not
        stand for election: its election deadline is kept in the future."""
        if self._vote_floor and not self._isLeader():
            self._SyncObj__raftElectionDeadline = time.monotonic() + 1.0
        super()._onTick(timeToWait)

    @property
    def _vote_floor(self) -> int:
        return self.tidestore_journal.vote_floor

    def _check_vote_floor(self) -> None:
        journal = self.tidestore_journal
        if journal.vote_floor and len(journal) and journal[-1][1] >= journal.vote_floor:
            journal.clear_vote_floor()  # caught up: a full member again

    def _on_message(self, node, message):
        """pysyncobj 0.3.17's leader sets a follower's next index back to `acked + 1`
        on every successful ack, although it has already sent the entries after it:
        with acks in flight (held until the follower's fsync) it then re-sends them,
        and the follower deletes its log from there and re-appends the same entries,
        including entries it had already acknowledged as durable (pysyncobj logs
        "truncating already-applied log entries"). A successful ack only moves the
        match index forward; the next index never goes back on success. (A real gap,
        a lost connection, is answered by the follower with reset=True, which still
        rewinds it.)"""
        if message.get("type") == "request_vote" and self._vote_floor:
            return  # below its vote floor a rehydrated member votes for no one
        if message.get("type") == "next_node_idx" and message.get("success") and not message.get("reset"):
            next_index = self._SyncObj__raftNextIndex
            before = next_index.get(node)
            self._deliver(node, message)
            if before is not None and next_index.get(node, before) < before:
                next_index[node] = before
            return
        self._deliver(node, message)

    def request_truncation(self, lsn: int) -> None:
        """Drop journal entries below `lsn` (which stays, as the anchor whose term
        the next append is checked against). The caller guarantees that `lsn` is in
        cold storage and applied by every member that may still need the entries;
        done on the Raft thread at its next tick."""
        if lsn > self._truncate_to:
            self._truncate_to = lsn

    def _truncate_journal(self) -> None:
        journal = self.tidestore_journal
        if not len(journal):
            return
        target = min(self._truncate_to, self._SyncObj__raftLastApplied, self._SyncObj__raftCommitIndex)
        if target > journal[0][1]:
            self._SyncObj__deleteEntriesTo(target)

    @property
    def lwm(self) -> int:
        """The low-water mark: the highest index no longer in the journal (its first
        entry, the anchor, is the one after it; 0 when nothing was truncated)."""
        journal = self.tidestore_journal
        return journal[0][1] - 1 if len(journal) else 0

    @replicated
    def apply_entry(self, payload: bytes):
        return self._tidestore_apply(self.raftLastApplied + 1, payload)

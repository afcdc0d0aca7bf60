"""pysyncobj's journal, made durable and kept on disk instead of in RAM.

pysyncobj 0.3.17's FileJournal holds every entry in a Python list and never fsyncs,
and writes term/vote without fsync (DESIGN.md, "Measured facts"). Raft's guarantee
needs more: a follower may say it holds an entry only once the entry is on its disk,
and a leader may count itself towards a quorum only for entries on its disk; a vote
must be durable before it is granted.

This journal appends records to one file and does not fsync on append. `sync()` does
one fdatasync for everything appended since the last one; `DurableTransport` (in
raft_node.py) calls it once per pysyncobj tick, before the poll in which acks are
read, and holds back every message that claims durability (a follower's
`next_node_idx` acknowledgement, a vote) until then. So a burst of entries costs one
fsync per tick, not one per entry, and nothing is claimed before it is true. Term and vote are written with fsync + rename + directory fsync before
pysyncobj returns from setCurrentTerm, i.e. before the vote message goes out.

RAM holds only the file offset of each entry and a bounded cache of recent entries
(what the leader sends and the apply loop reads); older entries are read back from
the file when a lagging follower needs them.

Record: crc32c u32 | length u32 | idx u64 | term u64 | command (length bytes).
The crc covers length..command. A torn or corrupt tail is cut at open; entries behind
it were never acknowledged (the fsync that would have covered them did not finish).
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import threading
from array import array

import crc32c
import msgpack
from pysyncobj.journal import Journal

log = logging.getLogger(__name__)

RECORD = struct.Struct("<IIQQ")
MAGIC = b"TIDESTORE-RAFT-JOURNAL-1\n"
CACHE_ENTRIES = 4096


class DurableJournal(Journal):
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.path = os.path.join(directory, "journal.log")
        self.meta_path = os.path.join(directory, "meta.msgpack")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._offsets = array("Q")  # file offset of entry number i (0-based position)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._dirty = False
        # pysyncobj's thread owns the journal; the lock only orders another thread's
        # `entry_at` (a peer seeding a rehydrated member) with truncations
        self._lock = threading.Lock()
        self.fsyncs = 0
        self.torn_tail_cut = 0
        self._meta = self._load_meta()
        self._meta_dirty = False
        self._open_file()

    # ---- opening --------------------------------------------------------------
    def _open_file(self) -> None:
        size = os.fstat(self._fd).st_size
        if size < len(MAGIC):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, MAGIC, 0)
            os.fdatasync(self._fd)
            self._end = len(MAGIC)
            return
        if os.pread(self._fd, len(MAGIC), 0) != MAGIC:
            raise RuntimeError(f"{self.path} is not a Tidestore Raft journal")
        pos = len(MAGIC)
        with open(self.path, "rb", buffering=1 << 20) as f:
            f.seek(pos)
            while True:
                head = f.read(RECORD.size)
                if len(head) < RECORD.size:
                    break
                crc, length, _idx, _term = RECORD.unpack(head)
                body = f.read(length)
                if len(body) < length or crc32c.crc32c(body, crc32c.crc32c(head[4:])) != crc:
                    break
                self._offsets.append(pos)
                pos += RECORD.size + length
        if pos < size:
            self.torn_tail_cut = size - pos
            log.warning("raft journal: cut %d bytes of torn tail at offset %d", size - pos, pos)
            os.ftruncate(self._fd, pos)
            os.fdatasync(self._fd)
        self._end = pos

    def _load_meta(self) -> dict:
        try:
            with open(self.meta_path, "rb") as f:
                return msgpack.unpackb(f.read(), raw=False)
        except FileNotFoundError:
            return {}

    def _store_meta(self) -> None:
        tmp = self.meta_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(self._meta, use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.meta_path)
        _fsync_dir(self.directory)
        self._meta_dirty = False

    # ---- durability -------------------------------------------------------------
    def sync(self) -> None:
        """Make every appended entry durable (one fdatasync for all of them)."""
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
            self.fsyncs += 1

    @property
    def bytes(self) -> int:
        return self._end

    # ---- pysyncobj's Journal interface --------------------------------------------
    def add(self, command, idx, term):
        command = bytes(command)
        record = _encode(command, idx, term)
        os.pwrite(self._fd, record, self._end)
        self._offsets.append(self._end)
        self._end += len(record)
        self._dirty = True
        self._remember(len(self._offsets) - 1, (command, idx, term))

    def clear(self):
        self._truncate(0)

    def deleteEntriesFrom(self, entryFrom):
        if entryFrom < len(self._offsets):
            self._truncate(entryFrom)

    def deleteEntriesTo(self, entryTo):
        """Drop the first `entryTo` entries (truncation up to the cold HWM): copy the
        rest, byte for byte, into a new file made durable before it replaces the old
        one (then the directory is synced). Streams: memory does not grow with the log."""
        with self._lock:
            self._delete_entries_to(entryTo)

    def _delete_entries_to(self, entryTo):
        entryTo = min(entryTo, len(self._offsets))
        start = self._offsets[entryTo] if entryTo < len(self._offsets) else self._end
        shift = start - len(MAGIC)
        tmp = self.path + ".compact"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, MAGIC)
            pos = start
            while pos < self._end:
                n = os.copy_file_range(self._fd, fd, min(8 << 20, self._end - pos), pos)
                if n <= 0:
                    raise OSError(f"raft journal: short copy at offset {pos}")
                pos += n
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        os.close(self._fd)
        self._fd = fd
        self._offsets = array("Q", (o - shift for o in self._offsets[entryTo:]))
        self._end -= shift
        self._cache = collections.OrderedDict(
            (pos - entryTo, entry) for pos, entry in self._cache.items() if pos >= entryTo)
        self._dirty = False

    def __getitem__(self, item):
        n = len(self._offsets)
        if isinstance(item, slice):
            return _View(self, *item.indices(n))
        if item < 0:
            item += n
        if not 0 <= item < n:
            raise IndexError(item)
        hit = self._cache.get(item)
        if hit is not None:
            return hit
        return self._read(item)

    def __len__(self):
        return len(self._offsets)

    def _destroy(self):
        self.close()

    # ---- rehydration ------------------------------------------------------------------
    def entry_at(self, index: int):
        """(first index, last index, (command, index, term) or None): safe from any
        thread. None when `index` is outside the journal."""
        with self._lock:
            n = len(self._offsets)
            if not n:
                return 0, 0, None
            first = self[0][1]
            last = self[n - 1][1]
            entry = self[index - first] if first <= index <= last else None
            return first, last, entry

    def seed(self, entry: tuple | None, term: int, vote_floor: int) -> None:
        """Start an empty journal (a rehydrated member's) at `entry`, the anchor: its
        engine holds everything up to it (None: nothing, the journal starts at 1). `term` is the group's current term, with a
        vote already cast in it (no second vote in a term this member may have voted
        in before it lost its disk); `vote_floor`: see `vote_floor`."""
        if len(self):
            raise RuntimeError(f"{self.path} is not empty: a seed starts a new journal")
        index = 0
        if entry is not None:
            command, index, entry_term = entry
            self.add(command, index, entry_term)
            self.sync()
        self._meta.update(term=term, voted_for="(rehydrated)", commit=max(index, 1),
                          vote_floor=vote_floor)
        self._store_meta()

    @property
    def vote_floor(self) -> int:
        """A rehydrated member neither votes nor stands for election until its journal
        reaches this index: the highest commit index its peers reported when it was
        seeded. Entries committed with its acknowledgement, before its disk was lost,
        lie at or below it, and a member that forgot them must not help elect a leader
        that lacks them."""
        return self._meta.get("vote_floor", 0)

    def clear_vote_floor(self) -> None:
        self._meta.pop("vote_floor", None)
        self._store_meta()

    def setRaftCommitIndex(self, raftCommitIndex):
        if self._meta.get("commit") != raftCommitIndex:
            self._meta["commit"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self):
        commit = self._meta.get("commit", 1)
        if self._offsets:
            commit = min(commit, self[-1][1])
        return commit

    def setCurrentTerm(self, term, votedForNodeId):
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self):
        return self._meta.get("term", 0)

    def getVotedForNodeId(self):
        return self._meta.get("voted_for")

    def onOneSecondTimer(self):
        if self._meta_dirty:
            self._store_meta()

    # ---- internals ------------------------------------------------------------------
    def _remember(self, pos: int, entry: tuple) -> None:
        cache = self._cache
        cache[pos] = entry
        if len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)

    def _read(self, pos: int) -> tuple:
        off = self._offsets[pos]
        head = os.pread(self._fd, RECORD.size, off)
        _crc, length, idx, term = RECORD.unpack(head)
        command = os.pread(self._fd, length, off + RECORD.size)
        return (command, idx, term)

    def _truncate(self, pos: int) -> None:
        with self._lock:
            self._truncate_locked(pos)

    def _truncate_locked(self, pos: int) -> None:
        end = self._offsets[pos] if pos < len(self._offsets) else self._end
        if pos == 0:
            end = len(MAGIC)
        os.ftruncate(self._fd, end)
        del self._offsets[pos:]
        self._end = end
        for k in [k for k in self._cache if k >= pos]:
            del self._cache[k]
        self._dirty = True

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            if self._meta_dirty:
                self._store_meta()
            os.close(self._fd)
            self._fd = -1


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _encode(command: bytes, idx: int, term: int) -> bytes:
    rest = RECORD.pack(0, len(command), idx, term)[4:] + command
    return struct.pack("<I", crc32c.crc32c(rest)) + rest


class _View:
    """A slice of the journal that reads entries only when they are looked at:
    pysyncobj slices `log[diff:]` and then keeps only a batch's worth."""

    def __init__(self, journal: DurableJournal, start: int, stop: int, step: int):
        assert step == 1
        self._j, self._start, self._stop = journal, start, max(start, stop)

    def __len__(self):
        return self._stop - self._start

    def __iter__(self):
        for i in range(self._start, self._stop):
            yield self._j[i]

    def __getitem__(self, item):
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            return [self._j[self._start + i] for i in range(start, stop, step)]
        if item < 0:
            item += len(self)
        if not 0 <= item < len(self):
            raise IndexError(item)
        return self._j[self._start + item]

    def __bool__(self):
        return len(self) > 0

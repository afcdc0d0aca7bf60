"""The Raft journal handed to pysyncobj: on disk, durable on sync(), small in RAM."""

import os

import pytest

from raftlog import raft_journal
from raftlog.raft_journal import DurableJournal


def fill(j, n, start=1, term=1):
    for i in range(start, start + n):
        j.add(b"cmd-%d" % i, i, term)


def test_entries_survive_reopen_and_read_back_in_order(tmp_path):
    j = DurableJournal(str(tmp_path))
    fill(j, 100)
    j.sync()
    j.close()
    j = DurableJournal(str(tmp_path))
    assert len(j) == 100
    assert j[0] == (b"cmd-1", 1, 1)
    assert j[-1] == (b"cmd-100", 100, 1)
    assert [e[1] for e in j[10:20]] == list(range(11, 21))
    j.close()


def test_old_entries_are_read_from_disk_not_kept_in_ram(tmp_path, monkeypatch):
    monkeypatch.setattr(raft_journal, "CACHE_ENTRIES", 16)
    j = DurableJournal(str(tmp_path))
    fill(j, 200)
    assert len(j._cache) == 16
    assert j[3] == (b"cmd-4", 4, 1)  # a cache miss: read back from the file
    view = j[5:]
    assert len(view) == 195
    assert view[0][1] == 6 and view[-1][1] == 200
    assert [e[1] for e in view[:3]] == [6, 7, 8]
    j.close()


def test_sync_is_one_fdatasync_for_many_appends(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(raft_journal.os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    j = DurableJournal(str(tmp_path))
    calls.clear()
    fill(j, 50)
    assert calls == []  # appending never claims durability
    j.sync()
    j.sync()  # nothing new: no second fsync
    assert len(calls) == 1 and j.fsyncs == 1
    j.close()


def test_conflicting_suffix_is_deleted_and_stays_deleted(tmp_path):
    j = DurableJournal(str(tmp_path))
    fill(j, 10)
    j.deleteEntriesFrom(6)  # positions 6.. (entries 7..10) replaced by a new leader's
    fill(j, 2, start=7, term=2)
    j.sync()
    j.close()
    j = DurableJournal(str(tmp_path))
    assert [(e[1], e[2]) for e in j[0:len(j)]] == [(i, 1) for i in range(1, 7)] + [(7, 2), (8, 2)]
    j.close()


def test_torn_tail_is_cut_at_open(tmp_path):
    j = DurableJournal(str(tmp_path))
    fill(j, 20)
    j.sync()
    j.close()
    path = os.path.join(str(tmp_path), "journal.log")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 3)  # the last record half written
    j = DurableJournal(str(tmp_path))
    assert len(j) == 19 and j[-1][1] == 19
    assert j.torn_tail_cut > 0
    fill(j, 1, start=20, term=3)  # appends continue after the cut
    j.sync()
    j.close()
    j = DurableJournal(str(tmp_path))
    assert j[-1] == (b"cmd-20", 20, 3)
    j.close()


def test_corrupt_record_is_not_returned(tmp_path):
    j = DurableJournal(str(tmp_path))
    fill(j, 5)
    j.sync()
    j.close()
    path = os.path.join(str(tmp_path), "journal.log")
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 2)
        f.write(b"XX")  # flip bytes of the last command
    j = DurableJournal(str(tmp_path))
    assert len(j) == 4
    j.close()


def test_term_and_vote_are_durable_at_once(tmp_path):
    j = DurableJournal(str(tmp_path))
    j.setCurrentTerm(7, "127.0.0.1:7001")
    # no close(): what a crash right after the vote leaves on disk
    j2 = DurableJournal(str(tmp_path))
    assert j2.getCurrentTerm() == 7 and j2.getVotedForNodeId() == "127.0.0.1:7001"
    j2.close()
    j.close()


def test_commit_index_never_exceeds_the_journal(tmp_path):
    j = DurableJournal(str(tmp_path))
    fill(j, 5)
    j.setRaftCommitIndex(9)
    j.onOneSecondTimer()
    j.close()
    j = DurableJournal(str(tmp_path))
    assert j.getRaftCommitIndex() == 5
    j.close()


def test_compaction_keeps_the_tail(tmp_path):
    j = DurableJournal(str(tmp_path))
    fill(j, 30)
    j.deleteEntriesTo(25)
    assert len(j) == 5 and j[0][1] == 26
    fill(j, 1, start=31)
    j.sync()
    j.close()
    j = DurableJournal(str(tmp_path))
    assert [e[1] for e in j[0:len(j)]] == [26, 27, 28, 29, 30, 31]
    j.close()


def test_not_a_journal_is_refused(tmp_path):
    with open(os.path.join(str(tmp_path), "journal.log"), "wb") as f:
        f.write(b"something else entirely, not ours\n")
    with pytest.raises(RuntimeError):
        DurableJournal(str(tmp_path))

"""`tidestore recover`: offline crash recovery of one node's data directory, with a
report. It is what a node runs at every start; run alone it says what it did (and
fails clearly) without serving anything.

The engine's recovery (analysis, redo, undo; a torn WAL tail is cut, corruption in the
middle refuses) runs on open; a group member's Raft journal is opened too, which cuts
its own torn tail. A group member's unfinished uploads are kept (the journal may still
commit them once the node rejoins), exactly as at a normal start.
"""

from __future__ import annotations

import json
import os
import sys

from engine import DirectoryInUse, Engine, EngineConfig, WalCorruption

from .node import KEEP_ALL_AT_RECOVERY


def recover(data_dir: str) -> dict:
    engine_dir = os.path.join(data_dir, "engine")
    raft_dir = os.path.join(data_dir, "raft")
    member = os.path.isdir(raft_dir)
    engine = Engine(EngineConfig(data_dir=engine_dir, maintenance_interval_s=0,
                                 undo_grace_s=KEEP_ALL_AT_RECOVERY if member else 0.0))
    try:
        report = engine.recovery_report.to_dict()
        stats = engine.stats()
    finally:
        engine.close()  # a final checkpoint: the next start recovers nothing
    out = {"data_dir": os.path.abspath(data_dir), "engine": report,
           "applied_lsn": stats["applied_lsn"], "cold_hwm": stats.get("cold_hwm", 0),
           "raft_journal": None}
    if member:
        from raftlog.raft_journal import DurableJournal

        journal = DurableJournal(raft_dir)
        try:
            n = len(journal)
            out["raft_journal"] = {
                "entries": n, "first_index": journal[0][1] if n else None,
                "last_index": journal[-1][1] if n else None,
                "commit_index": journal.getRaftCommitIndex(), "term": journal.getCurrentTerm(),
                "torn_tail_cut_bytes": journal.torn_tail_cut,
            }
        finally:
            journal.close()
    return out


def human(rep: dict) -> str:
    e = rep["engine"]
    lines = [f"Recovered {rep['data_dir']} in {e['duration_s']:.3f}s "
             f"(analysis {e['analysis_s']:.3f}s, redo {e['redo_s']:.3f}s, undo {e['undo_s']:.3f}s)",
             f"  WAL: checkpoint at {e['checkpoint_lsn']}, redo from {e['redo_lsn']} to {e['end_lsn']}; "
             f"{e['records_scanned']} records scanned, {e['records_redone']} redone",
             f"  uploads rolled back: {e['txns_undone']} ({e['chunks_undone']} chunks); "
             f"kept open: {e['txns_kept_open']}",
             "  torn tail cut: " + ("; ".join(str(t) for t in e["tail_cut"]) or "none"),
             f"  applied LSN {rep['applied_lsn']}, cold HWM {rep['cold_hwm']}"]
    j = rep["raft_journal"]
    if j is not None:
        lines.append(f"  Raft journal: {j['entries']} entries ({j['first_index']}..{j['last_index']}), "
                     f"commit {j['commit_index']}, term {j['term']}, torn tail cut "
                     f"{j['torn_tail_cut_bytes']} bytes")
    return "\n".join(lines)


def run(data_dir: str, as_json: bool, out=sys.stdout) -> int:
    """0: recovered; 1: could not (in use, corruption); 2: not a data directory."""
    if not os.path.isdir(os.path.join(data_dir, "engine")):
        print(f"tidestore: {data_dir} is not a Tidestore data directory (no engine/ in it)",
              file=sys.stderr)
        return 2
    try:
        rep = recover(data_dir)
    except DirectoryInUse as exc:
        print(f"tidestore: {exc}; stop the node first", file=sys.stderr)
        return 1
    except WalCorruption as exc:
        print(f"tidestore: cannot recover {data_dir}: {exc}. This is damage in the middle of "
              "the log, not a torn tail, so nothing was cut or redone; restore this node from its peers "
              "or from cold storage.", file=sys.stderr)
        return 1
    if as_json:
        json.dump(rep, out, indent=2)
        out.write("\n")
    else:
        print(human(rep), file=out)
    return 0

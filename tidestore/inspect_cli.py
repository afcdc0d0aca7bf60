"""`tidestore inspect`: what is in a node's data directory, and where every member
stands on the log, for a person (or, with --json, a script).

- `--data-dir DIR` reads a (stopped or running) node's files and never writes: WAL
  segments with their record counts by type, live/dead bytes and the highest log LSN
  each still serves (`max_raft`), the catalog's watermarks and table sizes, the Raft
  journal's range. LMDB is opened read-only without its lock file; the WAL and the
  journal are read with plain reads.
- `--endpoint URL` asks a running node for every member's status and draws each
  member's LSN timeline: LWM (journal truncated up to), HWM (in cold storage up to),
  applied, commit. The gaps are what a person needs to see: between LWM and HWM the
  log is in both the journal and cold storage, above the HWM only in the journals.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import sys
from collections import Counter

import lmdb
import msgpack

from engine.catalog import TABLES
from engine.checkpoint import read_master
from engine.wal_record import HEADER_SIZE, RecordType, crc_ok, parse_header
from raftlog.raft_journal import MAGIC as JOURNAL_MAGIC
from raftlog.raft_journal import RECORD as JOURNAL_RECORD

BAR = 56


def _wal_segments(wal_dir: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(wal_dir, "*.wal"))):
        start = int(os.path.basename(path)[:-4], 16)
        size = os.path.getsize(path)
        kinds: Counter = Counter()
        pos, problem = start, None
        with open(path, "rb", buffering=1 << 20) as f:
            while pos - start < size:
                head = f.read(HEADER_SIZE)
                h = parse_header(head, pos)
                if h is None:
                    problem = f"unreadable record at LSN {pos} ({size - (pos - start)} bytes to the end)"
                    break
                payload = f.read(h.length)
                if len(payload) < h.length or not crc_ok(head, payload, h.crc):
                    problem = f"record at LSN {pos} fails its checksum"
                    break
                f.seek(h.size - HEADER_SIZE - h.length, os.SEEK_CUR)
                kinds[RecordType(h.rtype).name] += 1
                pos += h.size
        out.append({"start": start, "size": size, "records": dict(kinds), "problem": problem})
    return out


def _catalog(path: str) -> dict | None:
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return None
    env = open_catalog_readonly(path)
    try:
        dbs = {name: env.open_db(name.encode(), create=False) for name in TABLES
               if _has_db(env, name)}
        with env.begin(buffers=False) as txn:
            meta = {k.decode(): msgpack.unpackb(v, raw=False) for k, v in txn.cursor(db=dbs["meta"])}
            counts = {name: txn.stat(db)["entries"] for name, db in dbs.items() if name != "meta"}
            segments = {struct.unpack(">Q", k)[0]: msgpack.unpackb(v, raw=False)
                        for k, v in txn.cursor(db=dbs["segments"])} if "segments" in dbs else {}
    finally:
        env.close()
    return {"meta": meta, "counts": counts, "segments": segments}


def open_catalog_readonly(path: str) -> lmdb.Environment:
    """The catalog for reading only: no lock file written, nothing created."""
    return lmdb.open(path, readonly=True, lock=False, max_dbs=len(TABLES) + 1)


def _has_db(env, name: str) -> bool:
    with env.begin() as txn:
        return txn.get(name.encode()) is not None


def _journal(raft_dir: str) -> dict | None:
    path = os.path.join(raft_dir, "journal.log")
    if not os.path.exists(path):
        return None
    first = last = None
    entries = 0
    with open(path, "rb", buffering=1 << 20) as f:
        if f.read(len(JOURNAL_MAGIC)) != JOURNAL_MAGIC:
            return {"problem": "not a Tidestore Raft journal"}
        while True:
            head = f.read(JOURNAL_RECORD.size)
            if len(head) < JOURNAL_RECORD.size:
                break
            _crc, length, idx, _term = JOURNAL_RECORD.unpack(head)
            f.seek(length, os.SEEK_CUR)
            first = idx if first is None else first
            last, entries = idx, entries + 1
    meta = {}
    try:
        with open(os.path.join(raft_dir, "meta.msgpack"), "rb") as f:
            meta = msgpack.unpackb(f.read(), raw=False)
    except FileNotFoundError:
        pass
    return {"entries": entries, "first_index": first, "last_index": last,
            "commit_index": meta.get("commit"), "term": meta.get("term"),
            "bytes": os.path.getsize(path)}


def inspect_dir(data_dir: str) -> dict:
    engine_dir = os.path.join(data_dir, "engine")
    catalog = _catalog(os.path.join(engine_dir, "catalog"))
    seg_rows = catalog["segments"] if catalog else {}
    segments = _wal_segments(os.path.join(engine_dir, "wal"))
    for seg in segments:
        live, dead, max_raft = (seg_rows.get(seg["start"]) or [0, 0, 0])[:3]
        seg.update(live=live, dead=dead, max_raft=max_raft)
    journal = _journal(os.path.join(data_dir, "raft"))
    meta = catalog["meta"] if catalog else {}
    applied = meta.get("applied_lsn", 0)
    if journal and journal.get("first_index"):
        lwm = journal["first_index"] - 1
        commit = max(journal.get("commit_index") or 0, applied)
    else:
        lwm, commit = meta.get("wal_gone_raft", 0), applied
    return {
        "data_dir": os.path.abspath(data_dir),
        "checkpoint_lsn": read_master(engine_dir) if os.path.isdir(engine_dir) else None,
        "catalog": {"meta": meta, "counts": catalog["counts"] if catalog else {}},
        "wal_segments": segments, "raft_journal": journal,
        "timeline": {"lwm": lwm, "hwm": meta.get("cold_hwm", 0), "applied": applied,
                     "commit": commit},
    }


def timeline(name: str, t: dict, top: int) -> list[str]:
    """One member's log drawn to scale: '.' truncated from its journal, '=' in the
    journal and in cold storage, '#' only in the journal (not yet in cold), ' ' not
    applied here yet (up to the group's highest commit)."""
    top = max(top, 1)

    def col(lsn):
        return min(BAR, round(BAR * max(lsn or 0, 0) / top))
    lwm, hwm, applied = col(t.get("lwm")), col(t.get("hwm")), col(t.get("applied"))
    cells = ["." if i < lwm else "=" if i < hwm else "#" if i < applied else " " for i in range(BAR)]
    gaps = []
    if (t.get("hwm") or 0) < (t.get("applied") or 0):
        gaps.append(f"{t['applied'] - t['hwm']} not in cold storage yet")
    if (t.get("applied") or 0) < (t.get("commit") or 0):
        gaps.append(f"{t['commit'] - t['applied']} committed, not applied here")
    return [f"{name:<6} |{''.join(cells)}|",
            f"{'':<6}  LWM {t.get('lwm')}  HWM {t.get('hwm')}  applied {t.get('applied')}  "
            f"commit {t.get('commit')}" + (f"  ({'; '.join(gaps)})" if gaps else "")]


def human_dir(rep: dict) -> str:
    meta, counts = rep["catalog"]["meta"], rep["catalog"]["counts"]
    lines = [f"Data directory {rep['data_dir']}",
             f"  catalog format {meta.get('format')}: applied LSN {meta.get('applied_lsn')}, "
             f"cold HWM {meta.get('cold_hwm', 0)}, WAL published to {meta.get('catalog_wal_lsn')}, "
             f"checkpoint at WAL LSN {rep['checkpoint_lsn']}",
             "  " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
             "", "WAL segments:",
             f"  {'start':>18} {'size':>10} {'live':>10} {'dead':>10} {'max_raft':>9}  records"]
    for s in rep["wal_segments"]:
        recs = " ".join(f"{k.lower()} {v}" for k, v in sorted(s["records"].items()))
        lines.append(f"  {s['start']:>18} {s['size']:>10} {s['live']:>10} {s['dead']:>10} "
                     f"{s['max_raft']:>9}  {recs}" + (f"  !! {s['problem']}" if s["problem"] else ""))
    j = rep["raft_journal"]
    if j:
        lines += ["", f"Raft journal: {j.get('entries')} entries, {j.get('first_index')}..{j.get('last_index')}, "
                      f"commit {j.get('commit_index')}, term {j.get('term')}, {j.get('bytes')} bytes"]
    t = rep["timeline"]
    lines += ["", "LSN timeline ('.' truncated, '=' journal + cold, '#' journal only):"]
    lines += timeline("node", t, max(t["commit"], t["applied"]))
    return "\n".join(lines)


def human_group(members: list) -> str:
    top = max([m.get("commit_lsn") or 0 for m in members] + [1])
    lines = ["LSN timeline per member ('.' truncated from its journal, '=' in the journal and "
             "in cold storage, '#' in the journal only, ' ' not applied yet):"]
    for m in members:
        if not m.get("healthy"):
            lines.append(f"{m.get('node_id', '?'):<6} DOWN: {str(m.get('error', ''))[:60]}")
            continue
        lines += timeline(m.get("node_id", "?"), {"lwm": m.get("lwm"), "hwm": m.get("hwm"),
                                                   "applied": m.get("applied_lsn"),
                                                   "commit": m.get("commit_lsn")}, top)
    return "\n".join(lines)


def run(data_dir: str | None, endpoint: str | None, as_json: bool, out=sys.stdout) -> int:
    if endpoint:
        from .status_cli import fetch

        try:
            members = fetch(endpoint)["members"]
        except (OSError, ValueError) as exc:
            print(f"tidestore: no status from {endpoint}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
            return 2
        if as_json:
            json.dump({"members": members}, out, indent=2)
            out.write("\n")
        else:
            print(human_group(members), file=out)
        return 0
    if not os.path.isdir(os.path.join(data_dir, "engine")):
        print(f"tidestore: {data_dir} is not a Tidestore data directory (no engine/ in it)",
              file=sys.stderr)
        return 2
    try:
        rep = inspect_dir(data_dir)
    except (OSError, lmdb.Error, ValueError) as exc:
        print(f"tidestore: cannot inspect {data_dir}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(rep, out, indent=2, default=str)
        out.write("\n")
    else:
        print(human_dir(rep), file=out)
    return 0

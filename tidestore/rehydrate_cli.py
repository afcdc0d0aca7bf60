"""`tidestore rehydrate`: one member of a running group lost its data directory (a dead
disk, an `rm -rf`); rebuild it from the cold tier and its peers while the other two
keep serving, then start it as usual and it rejoins.

1. Cold storage up to its top T: the newest usable catalog checkpoint, then the
   segments after it, replayed at their own LSNs (they are the group's log, so the
   result is exactly the group's state at T; nothing is recorded that the group did
   not commit). A checkpoint is usable when the replay reaches the `SegmentShipped`
   that recorded it (the HWM passes its LSN), so that this member never needs an entry
   below it that neither its WAL nor cold storage's HWM covers; otherwise the next
   older one is tried, then LSN 1.
2. The Raft journal: seeded with entry T, fetched from a peer (its term is what the
   leader checks the next append against), the group's current term with a vote
   already cast, and a vote floor (DurableJournal.vote_floor). pysyncobj then sends
   the entries above T as to any follower; their chunks come from the peers through
   the background filler, or from cold storage once shipped.
3. The directory carries a REHYDRATING marker until the journal is seeded: `serve`
   refuses it, and a second run resumes (the engine replay is idempotent by LSN, so
   it goes on after what it applied).

The peers' journals hold everything above T: a member that is down pins every journal
at the LSN it last applied (cluster.py), and the cold HWM never passes T. Should they
start above T anyway (the peers restarted and truncated further), the rehydration
says so and asks to be run again after the next shipment.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time

from raftlog.control_plane import ControlClient
from raftlog.raft_journal import DurableJournal
from tiering.cold_config import ColdConfig
from tiering.cold_rebuild import (
    RebuildImpossible,
    RebuildReport,
    chain,
    discover,
    discover_checkpoints,
    replay,
    usable_checkpoints,
)

from .config import load, split_listen
from .node import REHYDRATING


class RehydrateFailed(Exception):
    pass


async def _ask_peers(config, index: int) -> dict:
    client = ControlClient(config.cluster_secret, node_id=config.node_id)

    async def one(peer):
        addr = split_listen(peer.get("route", {}).get("control", peer["control"]))
        try:
            return peer["id"], await client.call(addr, "journal_entry", {"index": index}, timeout=3.0)
        except Exception as exc:  # noqa: BLE001 - reported per peer
            return peer["id"], {"error": str(exc) or type(exc).__name__}
    try:
        return dict(await asyncio.gather(*(one(p) for p in config.peers)))
    finally:
        await client.close()


def _check_peers(answers: dict, force: bool) -> dict:
    ok = {pid: a for pid, a in answers.items() if "error" not in a}
    down = {pid: a["error"] for pid, a in answers.items() if "error" in a}
    if not ok:
        raise RehydrateFailed(f"no peer answered ({down}): the group must be running")
    if down and not force:
        raise RehydrateFailed(
            f"peer(s) {', '.join(down)} did not answer ({'; '.join(down.values())}). With a peer "
            "down, entries this member acknowledged before it was lost may be held by that "
            "peer alone; wait for it, or pass --force to rehydrate from the peers that answer")
    return ok


def _write_marker(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _replay_cold(config, stores, engine_dir: str, marker: str, state: dict, progress):
    """Replay (or resume); falls back to older checkpoints as described above."""
    segs, _ = chain(discover(stores))
    candidates = usable_checkpoints(segs, discover_checkpoints(stores)) if segs else []
    candidates = [c for c in candidates if c["lsn"] not in state["checkpoints_tried"]]
    while True:
        resuming = os.path.exists(os.path.join(engine_dir, "catalog", "data.mdb"))
        checkpoint = None
        if not resuming:
            checkpoint = candidates.pop(0) if candidates else None
            state["checkpoint_lsn"] = checkpoint["lsn"] if checkpoint else 0
            _write_marker(marker, state)
        report, engine, read = replay(stores, engine_dir, progress, checkpoint=checkpoint,
                                      engine_config=dict(config.engine))
        ckpt = state["checkpoint_lsn"]
        if engine.cold_hwm >= ckpt or not ckpt:
            return report, engine, read
        # the SegmentShipped that recorded this checkpoint is past the top of cold
        # storage: start again from an older one
        engine.close()
        state["checkpoints_tried"].append(ckpt)
        shutil.rmtree(engine_dir)
        if progress:
            progress(0, 0, None, note=f"checkpoint at LSN {ckpt} is not recorded below the HWM yet; "
                                      "trying an older start")


def run(config_path: str, as_json: bool, force: bool = False, out=sys.stdout) -> int:
    """0: rehydrated (start the member); 1: could not (says why; run again to resume);
    2: bad arguments or a directory that holds a live member's data."""
    try:
        config = load(config_path)
        if not config.clustered:
            raise ValueError("rehydrate rebuilds a member of a group (this config names no "
                             "[[peers]]); a single node is rebuilt with `tidestore rebuild`")
        cold = ColdConfig.from_dict(config.cold)
        if not cold.stores:
            raise ValueError("the config names no [cold] stores")
        data_dir = config.data_dir
        marker = os.path.join(data_dir, REHYDRATING)
        engine_dir = os.path.join(data_dir, "engine")
        journal_dir = os.path.join(data_dir, "raft")
        resuming = os.path.exists(marker)
        if not resuming and (os.path.exists(engine_dir) or os.path.exists(journal_dir)):
            raise ValueError(f"{data_dir} holds a member's data (engine or journal); rehydrate "
                             "fills an empty or lost directory: move this one aside first")
        os.makedirs(data_dir, exist_ok=True)
        stores = cold.open_stores(data_dir, create=False)
    except (OSError, ValueError) as exc:
        print(f"tidestore: {exc}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()

    def progress(done, total, rep, note=None):
        if as_json:
            return
        if note:
            print(f"\n  {note}", file=sys.stderr, flush=True)
            return
        width = 30
        filled = width * done // max(total, 1)
        print(f"\r  cold storage [{'#' * filled}{'.' * (width - filled)}] segment {done}/{total}: "
              f"LSN {rep.last_lsn}, {rep.entries} entries, {rep.segment_bytes / 1e6:.1f} MB",
              end="", file=sys.stderr, flush=True)

    try:
        _check_peers(asyncio.run(_ask_peers(config, 0)), force)  # fail fast, before the replay
        state = {"started": time.time(), "checkpoints_tried": [], "checkpoint_lsn": 0}
        if resuming:
            try:
                with open(marker) as f:
                    state.update(json.load(f))
            except (OSError, ValueError):
                pass
            if not as_json:
                print(f"Resuming the rehydration of {data_dir}", file=sys.stderr)
        else:
            _write_marker(marker, state)
        if not chain(discover(stores))[0]:
            # nothing shipped yet (a young group): nothing was truncated either, so the
            # member catches up from LSN 1 through the peers' journals
            report, top, hwm, applied, objects, missing = RebuildReport(), 0, 0, 0, 0, 0
        else:
            try:
                report, engine, read = _replay_cold(config, stores, engine_dir, marker, state, progress)
            except RebuildImpossible as exc:
                raise RehydrateFailed(f"cold storage cannot give this member's start: {exc}") from None
            try:
                if not as_json:
                    print(file=sys.stderr)
                top = max(read[-1]["last"] if read else 0, engine.applied_lsn)
                hwm, applied = engine.cold_hwm, engine.applied_lsn
                with engine.catalog.read() as t:
                    objects = t.count("objects")
                missing = engine.stats().get("missing_chunks", 0)
            finally:
                engine.close()

        answers = _check_peers(asyncio.run(_ask_peers(config, top)), force)
        holders = {pid: a for pid, a in answers.items() if a.get("entry")}
        if top == 0:
            if any(a["first"] > 1 for a in answers.values()):
                raise RehydrateFailed("the peers' journals were truncated but cold storage holds no "
                                      "segment: check the [cold] stores of this config")
            holders = {pid: {"entry": None} for pid in answers}
        if not holders:
            firsts = {pid: a["first"] for pid, a in answers.items()}
            raise RehydrateFailed(
                f"cold storage reaches LSN {top} but the peers' journals start at {firsts}: wait "
                "for the next shipment to cold storage and run rehydrate again (it resumes)")
        anchor = next(iter(holders.values()))["entry"]  # None: start at LSN 1
        term = max(a["term"] for a in answers.values())
        # every entry committed with the lost member's acknowledgement is at or below the
        # leader's commit index (with both peers answering, one of them is the leader:
        # without the lost member no other could have been elected)
        vote_floor = max(a.get("commit", a["last"]) for a in answers.values())
        if os.path.exists(journal_dir):
            shutil.rmtree(journal_dir)  # a seed interrupted before the marker went
        journal = DurableJournal(journal_dir)
        try:
            journal.seed(tuple(anchor) if anchor else None, term, vote_floor)
        finally:
            journal.close()
        os.unlink(marker)
        dfd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except RehydrateFailed as exc:
        print(f"\ntidestore: cannot rehydrate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ntidestore: interrupted; run `tidestore rehydrate --config {config_path}` again "
              "to resume", file=sys.stderr)
        return 130

    result = {**report.to_dict(), "checkpoint_lsn": state["checkpoint_lsn"],
              "node_id": config.node_id, "anchor_lsn": top, "cold_hwm": hwm,
              "applied_lsn": applied, "objects": objects, "chunks_to_fetch": missing,
              "term": term, "vote_floor": vote_floor, "peers": sorted(answers),
              "duration_s": round(time.perf_counter() - t0, 3)}
    if as_json:
        json.dump(result, out, indent=2)
        out.write("\n")
    else:
        start = f"catalog checkpoint at LSN {state['checkpoint_lsn']} + " if state["checkpoint_lsn"] else ""
        print(f"Rehydrated {config.node_id} in {os.path.abspath(data_dir)} from cold storage "
              f"({start}{report.entries} entries, {report.segment_bytes / 1e6:.1f} MB, up to LSN {top}) "
              f"in {result['duration_s']:.2f}s: {objects} objects.", file=out)
        print(f"Its journal starts at LSN {top} (term {term}); the peers send the entries above it "
              f"and their chunks once it runs. It votes again once it holds LSN {vote_floor}.", file=out)
        if not config.access_key:
            print("Note: this config gives no access_key/secret_key; credentials kept in the lost "
                  "directory are gone, and the member will generate new ones.", file=out)
        print(f"Start it: tidestore serve --config {config_path}", file=out)
    return 0

"""`tidestore verify [--heal]`: scrub a node's hot WAL and the cold shards its catalog
records, say what is damaged, and (with --heal) rebuild damaged or missing shards from
the others.

Hot: every WAL record's header and CRC32C (what recovery does not read below its
checkpoint). Cold: for every shipped segment and recorded catalog checkpoint, each
shard's size, header, per-fragment CRC32C and whole-shard SHA-256 against what the
`SegmentShipped` entry recorded (a shard with valid CRCs but the wrong SHA-256 is
another segment's, or stale). Healing needs k good shards of the k + m: each bad one
is reconstructed byte-identical (`ErasureCode.reconstruct_shard`), checked against its
recorded SHA-256, then written to its store. The data directory is only read, never
written; `--heal` writes only to the shard stores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import lmdb
import msgpack

from tiering.cold_config import ColdConfig
from tiering.cold_garbage import find_garbage
from tiering.cold_reader import erasure_code, shard_fetch
from tiering.shard_store import ShardNotFound

from .inspect_cli import _catalog, _has_db, _wal_segments, open_catalog_readonly


def shipped_objects(catalog_dir: str) -> list[tuple[str, dict]]:
    """(what, locations) of every shipped segment and recorded catalog checkpoint."""
    env = open_catalog_readonly(catalog_dir)
    try:
        if not _has_db(env, "cold_segments"):
            return []
        db = env.open_db(b"cold_segments", create=False)
        out, checkpoints = [], {}
        with env.begin(buffers=False) as txn:
            for _k, v in txn.cursor(db=db):
                row = msgpack.unpackb(v, raw=False)
                loc = row["locations"]
                out.append((f"segment {loc['id']}", loc))
                ckpt = loc.get("checkpoint")
                if ckpt:
                    checkpoints[ckpt["id"]] = ckpt
        out += [(f"checkpoint {cid}", loc) for cid, loc in sorted(checkpoints.items())]
        return out
    finally:
        env.close()


def check_object(what: str, loc: dict, stores) -> list[dict]:
    """The damaged shards of one shipped object: [{what, shard, name, problem}]."""
    code = erasure_code(loc)
    bad = []
    for index, (store_index, name, size, sha) in enumerate(loc["shards"]):
        store = stores[store_index]
        problem = None
        try:
            actual = store.size(name)
            report = code.verify_shard(lambda o, n: store.read_range(name, o, n), actual)
            if report.problems:
                problem = "; ".join(report.problems[:3])
            elif (size is not None and actual != size) or (sha is not None and report.sha256 != sha):
                problem = "does not match the recorded size and SHA-256"
        except ShardNotFound:
            problem = "missing"
        except Exception as exc:  # noqa: BLE001 - unreachable store: reported, not healed
            problem = f"unreadable: {exc}"
        if problem:
            bad.append({"what": what, "shard": index, "name": name, "store": store.url,
                        "problem": problem})
    return bad


def heal_object(loc: dict, bad: list[dict], stores, work_dir: str) -> tuple[list, list]:
    """Rebuild each bad shard from the good ones. Returns (healed, not healed)."""
    code = erasure_code(loc)
    shards = loc["shards"]
    bad_index = {b["shard"] for b in bad}
    if len(shards) - len(bad_index) < loc["k"]:
        reason = f"only {len(shards) - len(bad_index)} good shards, {loc['k']} needed"
        return [], [dict(b, reason=reason) for b in bad]

    fetch = shard_fetch(loc, stores, skip=bad_index)

    healed, failed = [], []
    for b in bad:
        store_index, name, _size, sha = shards[b["shard"]]
        with tempfile.TemporaryFile(dir=work_dir) as f:
            try:
                info = code.reconstruct_shard(fetch, b["shard"], f)
                if sha is not None and info.sha256 != sha:
                    raise ValueError("the rebuilt shard does not match its recorded SHA-256")
                f.seek(0)
                stores[store_index].put(name, f, info.size)
            except Exception as exc:  # noqa: BLE001 - reported per shard
                failed.append(dict(b, reason=str(exc)))
                continue
        healed.append(b)
    return healed, failed


def verify(data_dir: str, config: ColdConfig, heal: bool, work_dir: str | None = None) -> dict:
    engine_dir = os.path.join(data_dir, "engine")
    wal = _wal_segments(os.path.join(engine_dir, "wal"))
    wal_problems = [{"segment": s["start"], "problem": s["problem"],
                     "last": i == len(wal) - 1} for i, s in enumerate(wal) if s["problem"]]
    objects = shipped_objects(os.path.join(engine_dir, "catalog"))
    stores = config.open_stores(data_dir, create=heal) if objects else []
    damaged, healed, unhealed = [], [], []
    for what, loc in objects:
        bad = check_object(what, loc, stores)
        damaged += bad
        if bad and heal:
            ok, failed = heal_object(loc, bad, stores, work_dir or tempfile.gettempdir())
            healed += ok
            unhealed += failed
        elif bad:
            unhealed += bad
    # garbage, as this node's catalog sees it (reported only: the group's leader
    # collects it, with the group's newest catalog)
    garbage = []
    if stores:
        referenced = {loc["id"] for what, loc in objects if what.startswith("segment ")}
        catalog = _catalog(os.path.join(engine_dir, "catalog")) or {"meta": {}}
        garbage = [g.to_dict() for g in find_garbage(stores, referenced,
                                                     catalog["meta"].get("cold_hwm", 0))]
    # a torn tail of the last segment is normal after a crash (recovery cuts it)
    serious_wal = [p for p in wal_problems if not p["last"]]
    return {"data_dir": os.path.abspath(data_dir), "wal_segments": len(wal),
            "wal_problems": wal_problems, "shipped_objects": len(objects),
            "shards_checked": sum(len(loc["shards"]) for _w, loc in objects),
            "damaged": damaged, "healed": healed, "not_healed": unhealed, "garbage": garbage,
            "clean": not serious_wal and not unhealed}


def human(rep: dict) -> str:
    lines = [f"Verified {rep['data_dir']}: {rep['wal_segments']} WAL segments, "
             f"{rep['shipped_objects']} shipped segments/checkpoints ({rep['shards_checked']} shards)"]
    for p in rep["wal_problems"]:
        tail = " (the tail of the last segment: recovery cuts it at the next start)" if p["last"] else ""
        lines.append(f"  WAL segment {p['segment']}: {p['problem']}{tail}")
    for b in rep["damaged"]:
        lines.append(f"  damaged: {b['what']} shard {b['shard']} on {b['store']}: {b['problem']}")
    for b in rep["healed"]:
        lines.append(f"  healed:  {b['what']} shard {b['shard']}")
    for b in rep["not_healed"]:
        lines.append(f"  NOT healed: {b['what']} shard {b['shard']}: {b.get('reason', 'run with --heal')}")
    if rep["garbage"]:
        mb = sum(g["bytes"] for g in rep["garbage"]) / 1e6
        lines.append(f"  garbage: {len(rep['garbage'])} segments ({mb:.1f} MB) no catalog row names, at "
                     "or below the HWM (the leader deletes them once older than [cold] garbage_age_s):")
        for g in rep["garbage"][:10]:
            lines.append(f"    {g['id']}: {len(g['shards'])} shards, {g['bytes'] / 1e6:.1f} MB, "
                         f"{g['age_s']:.0f}s old")
    lines.append("clean" if rep["clean"] else "damage remains")
    return "\n".join(lines)


def run(data_dir: str, config_path: str | None, heal: bool, as_json: bool, out=sys.stdout) -> int:
    """0: clean (after healing); 1: damage remains; 2: bad arguments."""
    if not os.path.isdir(os.path.join(data_dir, "engine")):
        print(f"tidestore: {data_dir} is not a Tidestore data directory (no engine/ in it)",
              file=sys.stderr)
        return 2
    try:
        cold = {}
        if config_path:
            from .config import load

            cold = load(config_path).cold
        config = ColdConfig.from_dict(cold)
        rep = verify(data_dir, config, heal)
    except (OSError, ValueError, lmdb.Error) as exc:
        print(f"tidestore: cannot verify {data_dir}: {exc}", file=sys.stderr)
        return 2
    if as_json:
        json.dump(rep, out, indent=2)
        out.write("\n")
    else:
        print(human(rep), file=out)
    return 0 if rep["clean"] else 1

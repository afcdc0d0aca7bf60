"""`tidestore restore`: the store as it was at an LSN or a time, into a new directory,
from the cold tier's history (its segments are the log), without touching the running
group: the stores are only read, and the restored store is given a config whose cold
tier is read-only (it reads its chunks from the group's stores and ships nothing).

`--bucket B` restores one bucket: the whole log is replayed to the point (an entry
may read another bucket: a copy's source), then every other bucket is removed from
the restored store by entries of its own, after the point."""

from __future__ import annotations

import datetime
import json
import os
import sys

from engine import Engine, EngineConfig
from engine.entries import AbortMultipartUpload, DeleteBucket, DeleteObjects
from tiering.cold_config import ColdConfig
from tiering.cold_rebuild import RebuildImpossible, rebuild

from .config import load
from .rebuild_cli import write_config


def parse_time(text: str) -> int:
    """Epoch milliseconds from ISO 8601 (a naive time is UTC) or epoch seconds."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1000)


def keep_only_bucket(engine_dir: str, bucket: str) -> int:
    """Remove every bucket but `bucket` from a restored store; returns the number of
    objects removed. Raises LookupError if `bucket` did not exist at that point."""
    engine = Engine(EngineConfig(data_dir=engine_dir, maintenance_interval_s=0, ship_retention=True))
    try:
        names = [name for name, _rec in engine.list_buckets()]
        if bucket not in names:
            raise LookupError(f"bucket {bucket!r} did not exist at that point (buckets then: "
                              f"{', '.join(names) or 'none'})")
        lsn, removed = engine.applied_lsn, 0
        for name in names:
            if name == bucket:
                continue
            while True:
                page = engine.list_uploads(name, max_uploads=1000)
                for key, upload_id, _rec in page.uploads:
                    lsn += 1
                    engine.apply(lsn, AbortMultipartUpload(name, key, upload_id))
                if not page.is_truncated:
                    break
            while True:
                page = engine.list_objects(name, max_keys=1000)
                if not page.entries:
                    break
                lsn += 1
                engine.apply(lsn, DeleteObjects(name, [k for k, _rec in page.entries]))
                removed += len(page.entries)
            lsn += 1
            result = engine.apply(lsn, DeleteBucket(name))
            if result.error:
                raise RuntimeError(f"removing bucket {name} from the restored store: {result.error}")
        return removed
    finally:
        engine.close()


def run(config_path: str, into: str, lsn: int | None, at: str | None, as_json: bool,
        out=sys.stdout, bucket: str | None = None) -> int:
    """0: restored; 1: cold storage cannot give that point; 2: bad arguments."""
    if os.path.exists(os.path.join(into, "engine")):
        print(f"tidestore: {into} already holds a store; restore into a new directory", file=sys.stderr)
        return 2
    try:
        if lsn is not None and lsn < 1:
            raise ValueError(f"--lsn must be a log LSN, 1 or more (not {lsn})")
        upto_ms = parse_time(at) if at is not None else None
        config = load(config_path)
        cold = ColdConfig.from_dict(config.cold)
        if not cold.stores:
            raise ValueError("the config names no [cold] stores")
        stores = cold.open_stores(into, create=False)
    except (OSError, ValueError) as exc:
        print(f"tidestore: {exc}", file=sys.stderr)
        return 2
    try:
        rep = rebuild(stores, os.path.join(into, "engine"), upto_lsn=lsn, upto_ms=upto_ms)
    except RebuildImpossible as exc:
        print(f"tidestore: cannot restore: {exc}", file=sys.stderr)
        return 1
    others_removed = 0
    if bucket is not None:
        try:
            others_removed = keep_only_bucket(os.path.join(into, "engine"), bucket)
        except LookupError as exc:
            print(f"tidestore: cannot restore: {exc.args[0]}", file=sys.stderr)
            return 1
    restored_cfg = write_config(os.path.join(into, "restore.toml"), config, read_only=True)
    result = {**rep.to_dict(), "restored_to_lsn": rep.last_lsn, "config": restored_cfg,
              "bucket": bucket, "other_objects_removed": others_removed}
    if bucket is not None:
        result["objects"] = rep.objects - others_removed
    if as_json:
        json.dump(result, out, indent=2)
        out.write("\n")
    else:
        what = f"bucket {bucket} " if bucket else ""
        print(f"Restored {what}into {os.path.abspath(into)} as of LSN {rep.last_lsn} ({rep.entries} "
              f"entries replayed, {result['objects']} objects) in {rep.duration_s:.2f}s", file=out)
        print(f"Serve it (its cold tier is read-only): tidestore serve --config {restored_cfg} "
              f"--data-dir {into} --listen 127.0.0.1:9100", file=out)
    return 0

"""`tidestore restore`: the store as it was at an LSN or a time, into a new directory,
from the cold tier's history (its segments are the log), without touching the running
group: the stores are only read, and the restored store is given a config whose cold
tier is read-only (it reads its chunks from the group's stores and ships nothing)."""

from __future__ import annotations

import datetime
import json
import os
import sys

from tiering.cold_config import ColdConfig
from tiering.cold_rebuild import RebuildImpossible, rebuild

from .config import load


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


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value)  # strings, numbers and lists of strings are valid TOML


def run(config_path: str, into: str, lsn: int | None, at: str | None, as_json: bool,
        out=sys.stdout) -> int:
    """0: restored; 1: cold storage cannot give that point; 2: bad arguments."""
    if os.path.exists(os.path.join(into, "engine")):
        print(f"tidestore: {into} already holds a store; restore into a new directory", file=sys.stderr)
        return 2
    try:
        upto_ms = parse_time(at) if at is not None else None
        cold_table = dict(load(config_path).cold)
        cold = ColdConfig.from_dict(cold_table)
        if not cold.stores:
            raise ValueError("the config names no [cold] stores")
        stores = cold.open_stores(into)
    except (OSError, ValueError) as exc:
        print(f"tidestore: {exc}", file=sys.stderr)
        return 2
    try:
        rep = rebuild(stores, os.path.join(into, "engine"), upto_lsn=lsn, upto_ms=upto_ms)
    except RebuildImpossible as exc:
        print(f"tidestore: cannot restore: {exc}", file=sys.stderr)
        return 1
    cold_table["read_only"] = True
    restored_cfg = os.path.join(into, "restore.toml")
    fd = os.open(restored_cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold keys
    with os.fdopen(fd, "w") as f:
        f.write("[cold]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in cold_table.items()
                                     if v is not None))
    result = {**rep.to_dict(), "restored_to_lsn": rep.last_lsn, "config": restored_cfg}
    if as_json:
        json.dump(result, out, indent=2)
        out.write("\n")
    else:
        print(f"Restored {os.path.abspath(into)} as of LSN {rep.last_lsn} ({rep.entries} entries "
              f"replayed, {rep.objects} objects) in {rep.duration_s:.2f}s", file=out)
        print(f"Serve it (its cold tier is read-only): tidestore serve --config {restored_cfg} "
              f"--data-dir {into} --listen 127.0.0.1:9100", file=out)
    return 0

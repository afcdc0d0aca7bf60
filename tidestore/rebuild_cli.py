"""`tidestore rebuild`: every replica lost, the cold tier left. Rebuild a complete,
consistent store as of the last LSN in cold storage into a new data directory that
`tidestore serve` then serves (tiering/cold_rebuild.py says how)."""

from __future__ import annotations

import json
import os
import sys

from tiering.cold_config import ColdConfig
from tiering.cold_rebuild import RebuildImpossible, rebuild

from .config import load


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value)  # strings, numbers and lists of strings are valid TOML


def write_config(path: str, config, **cold_overrides) -> str:
    """The rebuilt (or restored) store's own config: the same S3 credentials, engine
    and cold settings, and no [[peers]]: it is served as a single node (its log
    starts where the rebuilt one ends; a group member's journal would not)."""
    lines = [f"{k} = {_toml(getattr(config, k))}" for k in ("access_key", "secret_key", "region")
             if getattr(config, k, None)]
    for table, values in (("engine", dict(config.engine)), ("cold", {**config.cold, **cold_overrides})):
        lines += ["", f"[{table}]"] + [f"{k} = {_toml(v)}" for k, v in values.items() if v is not None]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds keys
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run(config_path: str, into: str, as_json: bool, out=sys.stdout) -> int:
    """0: rebuilt; 1: cold storage cannot give a complete store; 2: bad arguments."""
    if os.path.exists(os.path.join(into, "engine")):
        print(f"tidestore: {into} already holds a store; rebuild into a new directory",
              file=sys.stderr)
        return 2
    try:
        config = load(config_path)
        cold = ColdConfig.from_dict(config.cold)
        if not cold.stores:
            raise ValueError("the config names no [cold] stores (the embedded default lived in "
                             "the lost data directory)")
        stores = cold.open_stores(into, create=False)
    except (OSError, ValueError) as exc:
        print(f"tidestore: {exc}", file=sys.stderr)
        return 2

    def progress(done, total, rep):
        if not as_json:
            print(f"\r  segment {done}/{total}: {rep.entries} entries, "
                  f"{rep.segment_bytes / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)

    try:
        rep = rebuild(stores, os.path.join(into, "engine"), progress)
    except RebuildImpossible as exc:
        print(f"\ntidestore: cannot rebuild from cold storage: {exc}", file=sys.stderr)
        return 1
    if not as_json:
        print(file=sys.stderr)
    rebuilt_cfg = write_config(os.path.join(into, "rebuilt.toml"), config)
    if as_json:
        json.dump({**rep.to_dict(), "config": rebuilt_cfg}, out, indent=2)
        out.write("\n")
    else:
        print(f"Rebuilt {os.path.abspath(into)} from {rep.segments} segments "
              f"(LSN {rep.first_lsn}..{rep.last_lsn}, {rep.entries} entries, "
              f"{rep.segment_bytes / 1e6:.1f} MB) in {rep.duration_s:.2f}s: {rep.objects} objects, "
              f"{rep.cold_chunks} chunks in cold storage", file=out)
        print(f"Serve it: tidestore serve --config {rebuilt_cfg} --data-dir {into}", file=out)
    return 0

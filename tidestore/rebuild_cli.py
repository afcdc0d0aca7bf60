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


def run(config_path: str, into: str, as_json: bool, out=sys.stdout) -> int:
    """0: rebuilt; 1: cold storage cannot give a complete store; 2: bad arguments."""
    if os.path.exists(os.path.join(into, "engine")):
        print(f"tidestore: {into} already holds a store; rebuild into a new directory",
              file=sys.stderr)
        return 2
    try:
        cold = ColdConfig.from_dict(load(config_path).cold)
        if not cold.stores:
            raise ValueError("the config names no [cold] stores (the embedded default lived in "
                             "the lost data directory)")
        stores = cold.open_stores(into)
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
    if as_json:
        json.dump(rep.to_dict(), out, indent=2)
        out.write("\n")
    else:
        print(f"Rebuilt {os.path.abspath(into)} from {rep.segments} segments "
              f"(LSN {rep.first_lsn}..{rep.last_lsn}, {rep.entries} entries, "
              f"{rep.segment_bytes / 1e6:.1f} MB) in {rep.duration_s:.2f}s: {rep.objects} objects, "
              f"{rep.cold_chunks} chunks in cold storage", file=out)
        print(f"Serve it: tidestore serve --config {config_path} --data-dir {into}", file=out)
    return 0

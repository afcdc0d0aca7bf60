"""Cold-tier garbage on a real node: shards of segments no catalog row names (here, an
orphan of a shipment whose entry never committed, planted beside the real segments)
are reported by `verify` and deleted by the node once older than `garbage_age_s`;
younger ones, and everything the catalog names, stay."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from tidestore.testing import tidestore_server, wait_for

from test_cold_tier_server import COLD, ENGINE, read_all_back, settle, status, write_config, write_objects


def plant_orphan(drives: list[str], like: str, new_id: str, age_s: float) -> None:
    for d in drives:
        src, dst = os.path.join(d, "segments", like), os.path.join(d, "segments", new_id)
        shutil.copytree(src, dst)
        for name in os.listdir(dst):
            when = time.time() - age_s
            os.utime(os.path.join(dst, name), (when, when))


def test_garbage_is_reported_and_collected_once_old(tmp_path):
    cold = {**COLD, "garbage_age_s": 3600, "garbage_interval_s": 0.5}
    cfg = write_config(tmp_path / "node.toml", ENGINE, cold)
    with tidestore_server(str(tmp_path / "data"), extra_args=("--config", cfg)) as srv:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="gc-bucket")
        written = write_objects(s3, "gc-bucket", 16, 256 << 10)
        settle(srv)
        drives = [os.path.join(srv.data_dir, "cold", f"drive-{i}") for i in range(6)]
        segs = sorted(os.listdir(os.path.join(drives[0], "segments")))
        first, last = (int(x, 16) for x in segs[0].split("-")[:2])
        old, young = f"{first:016x}-{last + 1:016x}", f"{first:016x}-{last + 2:016x}"
        assert last + 2 <= status(srv)["hwm"]
        plant_orphan(drives, segs[0], old, age_s=7200)
        plant_orphan(drives, segs[0], young, age_s=60)

        def swept():
            g = status(srv)["cold"]["garbage"]
            return g if g["segments_deleted"] >= 1 and g["waiting"] >= 1 else None
        g = wait_for(swept, timeout=30, interval=0.3)
        assert g["shards_deleted"] == 6 and g["last_error"] is None
        left = set(os.listdir(os.path.join(drives[0], "segments")))
        assert not os.listdir(os.path.join(drives[0], "segments", old))  # (its directory stays)
        assert young in left and all(s in left for s in segs)
        read_all_back(s3, "gc-bucket", written)  # nothing the catalog names was touched

        out = subprocess.run([sys.executable, "-m", "tidestore", "verify", "--data-dir", srv.data_dir,
                              "--config", cfg, "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        rep = json.loads(out.stdout)
        assert [x["id"] for x in rep["garbage"]] == [young] and rep["garbage"][0]["age_s"] < 3600


def test_a_node_keeps_catalog_checkpoints_for_the_history_window_only(tmp_path):
    """With no history window, a node keeps only the catalog checkpoints rebuilds and
    rehydrates start from (the newest recorded one, the newest one recorded below the
    HWM) and one being recorded: the rest are dropped from the catalog and their
    shards deleted, `verify` finds nothing missing, and every object reads back."""
    cold = {**COLD, "checkpoint_segments": 1, "history_retention_s": 0, "garbage_age_s": 1,
            "garbage_interval_s": 0.5}
    cfg = write_config(tmp_path / "node.toml", ENGINE, cold)
    with tidestore_server(str(tmp_path / "data"), extra_args=("--config", cfg)) as srv:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="ckpt-bucket")
        written = {}
        for r in range(8):  # a few segments, most followed by a checkpoint
            written.update(write_objects(s3, "ckpt-bucket", 6, 256 << 10, prefix=f"r{r}"))
            settle(srv, min_evicted=0)
        ck_dir = os.path.join(srv.data_dir, "cold", "drive-0", "checkpoints")

        def stored_checkpoints():
            return sorted(d for d in os.listdir(ck_dir) if os.listdir(os.path.join(ck_dir, d)))

        def trimmed():
            g = status(srv)["cold"]["garbage"]
            return g if g["checkpoints_dropped"] >= 1 and len(stored_checkpoints()) <= 3 else None
        g = wait_for(trimmed, timeout=60, interval=0.3)
        assert g["checkpoint_shards_deleted"] >= 1 and g["last_error"] is None
        read_all_back(s3, "ckpt-bucket", written)

        out = subprocess.run([sys.executable, "-m", "tidestore", "verify", "--data-dir", srv.data_dir,
                              "--config", cfg, "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        rep = json.loads(out.stdout)
        assert rep["damaged"] == [] and rep["not_healed"] == []

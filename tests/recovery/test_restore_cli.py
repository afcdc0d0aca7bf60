"""`tidestore restore` to an earlier LSN and to an earlier time, while the original
keeps running: each restored store serves exactly a model of the store at that
moment, and never writes into the original's cold stores."""

from __future__ import annotations

import datetime
import glob
import json
import os
import subprocess
import sys
import time

from tidestore.testing import start, stop, wait_for, write_until

from test_inspect_cli import status
from test_rebuild_cli import CONFIG


def restore(cfg, into, *point) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidestore", "restore", "--config", cfg,
                           "--into", into, *point, "--json"], capture_output=True, text=True,
                          timeout=120)


def serves_exactly(into: str, model: dict) -> None:
    srv = start(into, extra_args=("--config", os.path.join(into, "restore.toml")))
    try:
        s3 = srv.boto3_client()
        listed = {o["Key"] for o in s3.list_objects_v2(Bucket="pit").get("Contents", [])}
        assert listed == set(model)
        for key, data in model.items():
            assert s3.get_object(Bucket="pit", Key=key)["Body"].read() == data, key
        s3.put_object(Bucket="pit", Key="restored-only", Body=b"x")  # stays in its hot tier
        assert status(srv)["cold"]["shipper"]["segments_shipped"] == 0
    finally:
        stop(srv)


def test_restore_to_an_earlier_lsn_and_time_beside_the_running_store(tmp_path):
    stores = ", ".join(json.dumps(f"file://{tmp_path}/cold/d{i}") for i in range(6))
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG.format(stores=stores))
    srv = start(str(tmp_path / "node"), extra_args=("--config", str(cfg)))
    try:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="pit")
        then = {}
        for i in range(10):
            then[f"k{i}"] = data = os.urandom(150_000 + i)
            s3.put_object(Bucket="pit", Key=f"k{i}", Body=data)
        lsn_then = status(srv)["cold"]["data_lsn"]
        time.sleep(0.05)
        at_then = datetime.datetime.now(datetime.timezone.utc).isoformat()
        time.sleep(1.0)
        now = dict(then)
        for i in range(3):
            now[f"k{i}"] = data = os.urandom(60_000)
            s3.put_object(Bucket="pit", Key=f"k{i}", Body=data)
        s3.delete_objects(Bucket="pit", Delete={"Objects": [{"Key": f"k{i}"} for i in (3, 4)]})
        s3.delete_object(Bucket="pit", Key="k5")
        for i in (3, 4, 5):
            del now[f"k{i}"]
        now["new"] = os.urandom(1000)
        s3.put_object(Bucket="pit", Key="new", Body=now["new"])
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)
        shards_before = sorted(glob.glob(f"{tmp_path}/cold/*/segments/*/*"))

        by_lsn = restore(str(cfg), str(tmp_path / "r-lsn"), "--lsn", str(lsn_then))
        assert by_lsn.returncode == 0, by_lsn.stderr
        assert json.loads(by_lsn.stdout)["restored_to_lsn"] == lsn_then
        serves_exactly(str(tmp_path / "r-lsn"), then)
        by_time = restore(str(cfg), str(tmp_path / "r-time"), "--time", at_then)
        assert by_time.returncode == 0, by_time.stderr
        # (the cold tier's own entries after the last write carry no time: they ride along)
        assert lsn_then <= json.loads(by_time.stdout)["restored_to_lsn"] < target
        serves_exactly(str(tmp_path / "r-time"), then)

        # the original never noticed: same shards, same objects
        assert sorted(glob.glob(f"{tmp_path}/cold/*/segments/*/*")) == shards_before
        for key, data in now.items():
            assert s3.get_object(Bucket="pit", Key=key)["Body"].read() == data
        later = restore(str(cfg), str(tmp_path / "r-late"), "--lsn", str(10 ** 9))
        assert later.returncode == 1 and "not in cold storage yet" in later.stderr
    finally:
        stop(srv)


def test_restore_one_bucket(tmp_path):
    """--bucket: the restored store holds that bucket alone, as it was at the point,
    including an object copied into it from a bucket that is left out."""
    stores = ", ".join(json.dumps(f"file://{tmp_path}/cold/d{i}") for i in range(6))
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG.format(stores=stores))
    srv = start(str(tmp_path / "node"), extra_args=("--config", str(cfg)))
    try:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="pit")
        s3.create_bucket(Bucket="other")
        then = {}
        for i in range(6):
            then[f"k{i}"] = data = os.urandom(120_000 + i)
            s3.put_object(Bucket="pit", Key=f"k{i}", Body=data)
            s3.put_object(Bucket="other", Key=f"o{i}", Body=os.urandom(1000))
        src = os.urandom(70_000)
        s3.put_object(Bucket="other", Key="source", Body=src)
        s3.copy_object(Bucket="pit", Key="copied", CopySource={"Bucket": "other", "Key": "source"})
        then["copied"] = src
        s3.create_multipart_upload(Bucket="other", Key="open-upload")
        lsn_then = status(srv)["cold"]["data_lsn"]
        s3.delete_object(Bucket="pit", Key="k0")  # after the point
        s3.put_object(Bucket="pit", Key="k1", Body=b"overwritten later")
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)

        into = str(tmp_path / "r-bucket")
        out = restore(str(cfg), into, "--lsn", str(lsn_then), "--bucket", "pit")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["bucket"] == "pit" and rep["objects"] == len(then) and rep["other_objects_removed"] == 7
        serves_exactly(into, then)
        srv2 = start(into, extra_args=("--config", os.path.join(into, "restore.toml")))
        try:
            assert [b["Name"] for b in srv2.boto3_client().list_buckets()["Buckets"]] == ["pit"]
        finally:
            stop(srv2)
        missing = restore(str(cfg), str(tmp_path / "r-none"), "--lsn", str(lsn_then), "--bucket", "nope")
        assert missing.returncode == 1 and "did not exist" in missing.stderr and "Traceback" not in missing.stderr
    finally:
        stop(srv)


def test_restore_to_a_time_past_compacted_history(tmp_path):
    """Compaction dropped the early entries: a time restore starts from the newest
    catalog checkpoint that is not after the time (not simply the newest one), and a
    time older than the history kept is refused."""
    stores = ", ".join(json.dumps(f"file://{tmp_path}/cold/d{i}") for i in range(6))
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG.format(stores=stores) + "checkpoint_segments = 1\nhistory_retention_s = 0\n"
                   "compact_interval_s = 0.5\ncompact_delete_grace_s = 0\n")
    srv = start(str(tmp_path / "node"), extra_args=("--config", str(cfg)))
    try:
        s3 = srv.boto3_client()
        before_all = datetime.datetime.now(datetime.timezone.utc).isoformat()
        time.sleep(0.05)
        s3.create_bucket(Bucket="pit")
        for i in range(24):
            s3.put_object(Bucket="pit", Key=f"doomed/{i}", Body=os.urandom(256 << 10))
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)
        s3.delete_objects(Bucket="pit", Delete={"Objects": [{"Key": f"doomed/{i}"} for i in range(24)]})
        then = {}
        for i in range(8):
            then[f"kept/{i}"] = data = os.urandom(256 << 10)
            s3.put_object(Bucket="pit", Key=f"kept/{i}", Body=data)
        def bridge(i):  # compaction waits for the next segments to ship (see test_rebuild_cli)
            then[f"bridge/{i}"] = data = os.urandom(50_000)
            s3.put_object(Bucket="pit", Key=f"bridge/{i}", Body=data)
        write_until(lambda: (lambda c: c["compactions"] and c["shards_deleted"] and not c["pending_deletes"])(
            status(srv)["cold"]["compaction"]), bridge)
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)
        time.sleep(0.05)
        at_then = datetime.datetime.now(datetime.timezone.utc).isoformat()
        time.sleep(1.0)
    finally:
        stop(srv)
    # from here on, history is kept (as history_retention_s does for its window): a
    # compaction after the point could drop chunks live at the point
    cfg.write_text(cfg.read_text().replace("compact_interval_s = 0.5", "compact_interval_s = 3600"))
    srv = start(str(tmp_path / "node"), extra_args=("--config", str(cfg)))
    try:
        s3 = srv.boto3_client()
        for i in range(4):  # after the point: overwrites, a delete, new keys
            s3.put_object(Bucket="pit", Key=f"kept/{i}", Body=b"later")
        s3.delete_object(Bucket="pit", Key="kept/7")
        for i in range(3):
            s3.put_object(Bucket="pit", Key=f"late/{i}", Body=os.urandom(200_000))
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)

        out = restore(str(cfg), str(tmp_path / "r-time"), "--time", at_then)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["checkpoint_lsn"] > 0  # not from LSN 1: that history is gone
        serves_exactly(str(tmp_path / "r-time"), then)
        early = restore(str(cfg), str(tmp_path / "r-early"), "--time", before_all)
        assert early.returncode == 1 and "older than the history" in early.stderr, early.stderr
    finally:
        stop(srv)


def test_restore_refuses_points_that_are_not_points(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG.format(stores=json.dumps(f"file://{tmp_path}/cold/d0")))
    for point in (("--lsn", "0"), ("--lsn", "-5"), ("--time", "last tuesday")):
        out = restore(str(cfg), str(tmp_path / "r"), *point)
        assert out.returncode == 2 and "tidestore:" in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert not os.path.exists(tmp_path / "r" / "engine")

"""Every replica lost, the cold tier left: `tidestore rebuild` makes a store that
serves exactly what was written up to the HWM (a model of the store is kept as the
writes are acknowledged)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

from tidestore.testing import start, stop, wait_for, write_until

from test_inspect_cli import status

CONFIG = """
[engine]
segment_size = 1048576
checkpoint_bytes = 1048576
checkpoint_interval_s = 1.0
[cold]
stores = [{stores}]
segment_bytes = 1048576
seal_age_s = 0.5
ship_interval_s = 0.2
hot_budget = 3145728
cache_bytes = 0
"""


def rebuild(cfg, into, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidestore", "rebuild", "--config", cfg,
                           "--into", into, *extra], capture_output=True, text=True, timeout=120)


def test_rebuild_from_cold_alone_serves_the_store_as_of_the_hwm(tmp_path):
    stores = ", ".join(json.dumps(f"file://{tmp_path}/cold/d{i}") for i in range(6))
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG.format(stores=stores))
    data_dir = str(tmp_path / "node")
    srv = start(data_dir, extra_args=("--config", str(cfg)))
    model = {}
    try:
        s3 = srv.boto3_client()
        for b in ("alpha", "beta"):
            s3.create_bucket(Bucket=b)
        for i in range(16):
            model[("alpha", f"k{i}")] = data = os.urandom(200_000 + i)
            s3.put_object(Bucket="alpha", Key=f"k{i}", Body=data, ContentType="application/x-test")
        for i in range(4):  # overwritten
            model[("alpha", f"k{i}")] = data = os.urandom(50_000)
            s3.put_object(Bucket="alpha", Key=f"k{i}", Body=data)
        for i in range(4, 8):  # deleted
            s3.delete_object(Bucket="alpha", Key=f"k{i}")
            del model[("alpha", f"k{i}")]
        mpu = s3.create_multipart_upload(Bucket="beta", Key="big")
        parts = [os.urandom(5 << 20), os.urandom(1 << 20)]
        etags = [s3.upload_part(Bucket="beta", Key="big", UploadId=mpu["UploadId"], PartNumber=n + 1,
                                Body=p)["ETag"] for n, p in enumerate(parts)]
        s3.complete_multipart_upload(Bucket="beta", Key="big", UploadId=mpu["UploadId"], MultipartUpload={
            "Parts": [{"PartNumber": n + 1, "ETag": e} for n, e in enumerate(etags)]})
        model[("beta", "big")] = b"".join(parts)
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)
        etag_of = {k: s3.head_object(Bucket=k[0], Key=k[1])["ETag"] for k in model}
    finally:
        stop(srv, signal.SIGKILL)
    shutil.rmtree(data_dir)  # every replica lost
    shutil.rmtree(tmp_path / "cold" / "d5")  # and a cold drive: any k = 4 of the 6 shards do

    into = str(tmp_path / "rebuilt")
    out = rebuild(str(cfg), into, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["last_lsn"] >= target and rep["objects"] == len(model)
    assert rep["cold_chunks"] > 0
    again = rebuild(str(cfg), into)
    assert again.returncode == 2 and "already holds a store" in again.stderr

    srv = start(into, extra_args=("--config", str(cfg)))
    try:
        s3 = srv.boto3_client()
        assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == ["alpha", "beta"]
        listed = {("alpha", o["Key"]) for o in s3.list_objects_v2(Bucket="alpha")["Contents"]}
        assert listed == {k for k in model if k[0] == "alpha"}
        for (bucket, key), data in model.items():
            got = s3.get_object(Bucket=bucket, Key=key)
            assert got["Body"].read() == data and got["ETag"] == etag_of[(bucket, key)]
        assert s3.head_object(Bucket="alpha", Key="k10")["ContentType"] == "application/x-test"
        # and it is a live store again: it takes writes and ships them
        s3.put_object(Bucket="alpha", Key="after", Body=b"new")
        assert s3.get_object(Bucket="alpha", Key="after")["Body"].read() == b"new"
    finally:
        stop(srv)


def test_rebuild_says_what_it_needs(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text("[cold]\nenabled = true\n")
    out = rebuild(str(cfg), str(tmp_path / "x"))
    assert out.returncode == 2 and "no [cold] stores" in out.stderr
    cfg.write_text(CONFIG.format(stores=json.dumps(f"file://{tmp_path}/empty")))
    out = rebuild(str(cfg), str(tmp_path / "y"))
    assert out.returncode == 1 and "no segment starting at LSN 1" in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "empty")  # a mistyped store is not created by a reader


def test_rebuild_past_compacted_history_starts_from_a_catalog_checkpoint(tmp_path):
    """Cold compaction drops the entries of mostly dead segments: a replay from LSN 1
    is impossible, so the rebuild adopts the newest catalog checkpoint the chain
    reaches and replays only what follows it."""
    stores = ", ".join(json.dumps(f"file://{tmp_path}/cold/d{i}") for i in range(6))
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG.format(stores=stores) + "checkpoint_segments = 1\nhistory_retention_s = 0\n"
                   "compact_interval_s = 0.5\ncompact_delete_grace_s = 0\n")
    data_dir = str(tmp_path / "node")
    srv = start(data_dir, extra_args=("--config", str(cfg)))
    model = {}
    try:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="bkt")
        for i in range(24):
            s3.put_object(Bucket="bkt", Key=f"doomed/{i}", Body=os.urandom(256 << 10))
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)
        s3.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": f"doomed/{i}"} for i in range(24)]})
        for i in range(8):
            model[f"kept/{i}"] = data = os.urandom(256 << 10)
            s3.put_object(Bucket="bkt", Key=f"kept/{i}", Body=data)
        # compaction goes only as far as the newest checkpoint a replay of cold storage
        # can start from (the segment after the one recording it has shipped): writes
        # go on, a little at a time, until it has
        def bridge(i):
            model[f"bridge/{i}"] = data = os.urandom(50_000)
            s3.put_object(Bucket="bkt", Key=f"bridge/{i}", Body=data)
        write_until(lambda: (lambda c: c["compactions"] and c["shards_deleted"] and not c["pending_deletes"])(
            status(srv)["cold"]["compaction"]), bridge)
        for i in range(4):  # and some history after the compaction
            model[f"late/{i}"] = data = os.urandom(100_000)
            s3.put_object(Bucket="bkt", Key=f"late/{i}", Body=data)
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)
    finally:
        stop(srv, signal.SIGKILL)
    shutil.rmtree(data_dir)
    segments = os.listdir(tmp_path / "cold" / "d0" / "segments")
    assert any(len(s.split("-")) > 2 for s in segments), segments  # a compacted segment is there

    into = str(tmp_path / "rebuilt")
    out = rebuild(str(cfg), into, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["checkpoint_lsn"] > 0 and rep["last_lsn"] >= target and rep["objects"] == len(model)
    srv = start(into, extra_args=("--config", str(cfg)))
    try:
        s3 = srv.boto3_client()
        assert {o["Key"] for o in s3.list_objects_v2(Bucket="bkt")["Contents"]} == set(model)
        for key, data in model.items():
            assert s3.get_object(Bucket="bkt", Key=key)["Body"].read() == data, key
    finally:
        stop(srv)


def test_rebuild_walks_past_an_orphan_wider_than_the_recorded_segment(tmp_path):
    """A shipment whose entry never committed leaves shards for a range a later leader
    shipped over other boundaries. The orphan below reaches into the middle of the next
    recorded segment: a chain that took the widest segment at each step would stop
    there, short of the HWM."""
    stores = [f"{tmp_path}/cold/d{i}" for i in range(6)]
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG.format(stores=", ".join(json.dumps("file://" + s) for s in stores)))
    data_dir = str(tmp_path / "node")
    srv = start(data_dir, extra_args=("--config", str(cfg)))
    model = {}
    try:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="orph")
        for i in range(12):
            model[f"k{i}"] = data = os.urandom(300_000)
            s3.put_object(Bucket="orph", Key=f"k{i}", Body=data)
            if i % 4 == 3:  # a few segments
                target = status(srv)["cold"]["data_lsn"]
                wait_for(lambda: status(srv)["hwm"] >= target, timeout=60)
    finally:
        stop(srv, signal.SIGKILL)
    shutil.rmtree(data_dir)
    segs = sorted(os.listdir(os.path.join(stores[0], "segments")))
    assert len(segs) >= 3, segs
    first, last = (int(x, 16) for x in segs[1].split("-")[:2])
    nxt_first, nxt_last = (int(x, 16) for x in segs[2].split("-")[:2])
    assert nxt_last > nxt_first  # the orphan ends inside the next segment
    orphan = f"{first:016x}-{nxt_first:016x}"
    for d in stores:
        shutil.copytree(os.path.join(d, "segments", segs[1]), os.path.join(d, "segments", orphan))

    out = rebuild(str(cfg), str(tmp_path / "rebuilt"), "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert orphan in rep["orphans_ignored"] and rep["objects"] == len(model)
    srv = start(str(tmp_path / "rebuilt"), extra_args=("--config", str(cfg)))
    try:
        s3 = srv.boto3_client()
        for key, data in model.items():
            assert s3.get_object(Bucket="orph", Key=key)["Body"].read() == data, key
    finally:
        stop(srv)

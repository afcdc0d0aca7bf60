"""The cold tier as users meet it: a real `tidestore serve` process, real boto3, real
shard stores (directories, and moto's standalone S3 server).

Small sizes make every mechanism run within seconds: 1 MiB WAL segments, 1 MiB cold
segments sealed after half a second, a 3 MiB hot budget, no cold-read cache (every
read of an evicted object goes to the shards).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import urllib.request

import pytest
from botocore.exceptions import ClientError

import moto_server
from tidestore.testing import tidestore_server, wait_for, write_until

MiB = 1 << 20
HOT_BUDGET = 3 * MiB
ENGINE = {"segment_size": MiB, "checkpoint_bytes": MiB, "checkpoint_interval_s": 1.0}
COLD = {"segment_bytes": MiB, "seal_age_s": 0.5, "ship_interval_s": 0.2,
        "hot_budget": HOT_BUDGET, "cache_bytes": 0}


def _toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_config(path, engine: dict, cold: dict) -> str:
    lines = ["[engine]"] + [f"{k} = {_toml_value(v)}" for k, v in engine.items()]
    lines += ["", "[cold]"] + [f"{k} = {_toml_value(v)}" for k, v in cold.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def status(srv) -> dict:
    with urllib.request.urlopen(srv.endpoint + "/_tidestore/status", timeout=5) as r:
        return json.load(r)["members"][0]


def body(i: int, size: int) -> bytes:
    seed = hashlib.sha256(b"cold-%d" % i).digest()
    return (seed * (size // 32 + 1))[:size - 8] + os.urandom(8)  # mostly compressible


def write_objects(s3, bucket: str, count: int, size: int, prefix: str = "obj") -> dict:
    written = {}
    for i in range(count):
        data = body(i, size + i * 97)
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{i:04d}", Body=data)
        written[f"{prefix}/{i:04d}"] = data
    return written


def shipped_up_to(srv, lsn: int) -> dict | None:
    st = status(srv)
    return st if st["hwm"] >= lsn else None


def settle(srv, min_evicted: int = 1) -> dict:
    """Everything written so far shipped, and the hot tier back under its budget."""
    target = status(srv)["cold"]["data_lsn"]

    def ok():
        st = status(srv)
        cold = st["cold"]
        if st["hwm"] >= target and cold["evicted_segments"] >= min_evicted \
                and cold["hot_bytes"] <= HOT_BUDGET + 2 * MiB:
            return st
        return None
    return wait_for(ok, timeout=60, interval=0.2)


def read_all_back(s3, bucket: str, written: dict) -> None:
    for key, data in written.items():
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert got == data, key


@pytest.fixture
def cold_dir_server(tmp_path):
    cfg = write_config(tmp_path / "node.toml", ENGINE, COLD)
    with tidestore_server(str(tmp_path / "data"), extra_args=("--config", cfg)) as srv:
        yield srv


def test_writes_beyond_the_hot_budget_ship_evict_and_read_back(cold_dir_server, tmp_path):
    srv = cold_dir_server
    s3 = srv.boto3_client()
    s3.create_bucket(Bucket="cold")
    written = write_objects(s3, "cold", 40, 256 << 10)  # ~10 MiB: three times the budget
    written.update(write_objects(s3, "cold", 30, 3000, prefix="small"))
    st = settle(srv)
    assert st["hwm"] > 0 and st["lwm"] <= st["hwm"]
    # the embedded default: six drives under the data directory, 4 + 2 shards each
    drives = sorted(os.listdir(os.path.join(srv.data_dir, "cold")))
    assert drives == [f"drive-{i}" for i in range(6)]
    segments = os.listdir(os.path.join(srv.data_dir, "cold", "drive-0", "segments"))
    assert len(segments) == st["cold"]["shipper"]["segments_shipped"] >= 3
    before = st["cold"]["cold_reads"]
    read_all_back(s3, "cold", written)
    assert status(srv)["cold"]["cold_reads"] > before  # evicted objects came from the shards
    # a range of an evicted object reads only what it needs, and is right
    got = s3.get_object(Bucket="cold", Key="obj/0001", Range="bytes=1000-70999")["Body"].read()
    assert got == written["obj/0001"][1000:71000]
    # a range of a large cold object fetches only the chunks in range: 9 MiB is three
    # 4 MiB chunks; the middle of the second needs one chunk from the shards
    big = body(999, 9 * MiB)
    s3.put_object(Bucket="cold", Key="big", Body=big)
    written_more = write_objects(s3, "cold", 16, 256 << 10, prefix="push")  # evict "big"
    settle(srv, min_evicted=st["cold"]["evicted_segments"] + 1)
    before = status(srv)["cold"]["cold_reads"]
    got = s3.get_object(Bucket="cold", Key="big", Range=f"bytes={5 * MiB}-{6 * MiB - 1}")["Body"].read()
    assert got == big[5 * MiB:6 * MiB]
    assert status(srv)["cold"]["cold_reads"] == before + 1
    assert s3.get_object(Bucket="cold", Key="big")["Body"].read() == big
    read_all_back(s3, "cold", written_more)
    # listing and deleting cold objects
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="cold", Prefix="obj/")["Contents"]]
    assert keys == sorted(k for k in written if k.startswith("obj/"))
    s3.delete_object(Bucket="cold", Key="obj/0000")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="cold", Key="obj/0000")
    assert err.value.response["Error"]["Code"] == "NoSuchKey"


def test_cold_objects_survive_a_restart(tmp_path):
    cfg = write_config(tmp_path / "node.toml", ENGINE, COLD)
    data_dir = str(tmp_path / "data")
    with tidestore_server(data_dir, extra_args=("--config", cfg)) as srv:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="cold")
        written = write_objects(s3, "cold", 24, 256 << 10)
        settle(srv)
        srv.process.send_signal(signal.SIGKILL)  # no final checkpoint
        srv.process.wait()
    with tidestore_server(data_dir, extra_args=("--config", cfg)) as srv:
        s3 = srv.boto3_client()
        read_all_back(s3, "cold", written)
        st = status(srv)
        assert st["hwm"] > 0 and st["cold"]["cold_reads"] > 0


def test_deleted_data_is_compacted_away_in_cold_storage(tmp_path):
    cold = {**COLD, "checkpoint_segments": 1, "history_retention_s": 0, "compact_interval_s": 0.5,
            "compact_delete_grace_s": 0}
    cfg = write_config(tmp_path / "node.toml", ENGINE, cold)
    size = 256 << 10

    def put_random(s3, prefix, n):
        out = {}
        for i in range(n):
            out[f"{prefix}/{i:04d}"] = data = os.urandom(size)  # incompressible
            s3.put_object(Bucket="cold", Key=f"{prefix}/{i:04d}", Body=data)
        return out

    with tidestore_server(str(tmp_path / "data"), extra_args=("--config", cfg)) as srv:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="cold")
        drives = os.path.join(srv.data_dir, "cold")

        def on_disk():
            return sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(drives) for f in fs)
        doomed = put_random(s3, "doomed", 24)
        settle(srv)
        assert on_disk() > 1.5 * 24 * size  # 4 + 2 shards of everything
        s3.delete_objects(Bucket="cold", Delete={"Objects": [{"Key": k} for k in doomed]})
        kept = put_random(s3, "kept", 8)
        settle(srv, min_evicted=0)

        def compacted():
            st = status(srv)["cold"]["compaction"]
            return st if st["compactions"] and st["shards_deleted"] and st["pending_deletes"] == 0 \
                and on_disk() < 1.5 * (8 + 24 / 2) * size + len(bridge) * 60_000 else None
        # compaction goes only as far as the newest checkpoint a replay of cold storage
        # can start from (the segment after the one recording it has shipped): writes
        # go on, a little at a time, until it has
        bridge = {}

        def write_bridge(i):
            bridge[f"bridge/{i:04d}"] = data = os.urandom(20_000)
            s3.put_object(Bucket="cold", Key=f"bridge/{i:04d}", Body=data)
        st = write_until(compacted, write_bridge)
        kept.update(bridge)
        assert st["bytes_written"] < st["bytes_dropped"] and st["last_error"] is None
        read_all_back(s3, "cold", kept)
        assert not s3.list_objects_v2(Bucket="cold", Prefix="doomed/").get("Contents")


def _shard_paths(data_dir: str, drive: int) -> list[str]:
    root = os.path.join(data_dir, "cold", f"drive-{drive}", "segments")
    return sorted(os.path.join(root, seg, name) for seg in os.listdir(root)
                  for name in os.listdir(os.path.join(root, seg)))


def test_losing_m_shards_of_every_segment_loses_nothing(cold_dir_server):
    srv = cold_dir_server
    s3 = srv.boto3_client()
    s3.create_bucket(Bucket="cold")
    written = write_objects(s3, "cold", 36, 256 << 10)
    settle(srv)
    # m = 2: delete every shard on drive 0 and corrupt every shard on drive 3 (shard i
    # is on drive i: two data shards, so every read needs both parity shards)
    for path in _shard_paths(srv.data_dir, 0):
        os.unlink(path)
    for path in _shard_paths(srv.data_dir, 3):
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            for off in range(100, size, 4096):
                f.seek(off)
                f.write(b"\xff\x00\xff\x00")
    read_all_back(s3, "cold", written)
    # a third loss is more than 4 + 2 can take: a clear 503, never a wrong byte
    for path in _shard_paths(srv.data_dir, 1):
        os.unlink(path)
    evicted = [k for k in written
               if not _readable(s3, "cold", k, written[k])]
    assert evicted, "some objects are only in cold storage by now"


def _readable(s3, bucket, key, data) -> bool:
    try:
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert exc.response["Error"]["Code"] == "ServiceUnavailable"
        return False
    assert got == data
    return True


class WatermarkWatch:
    """Reads the node's status every 50 ms for the whole run: LWM must never pass HWM."""

    def __init__(self, srv):
        self.srv, self.samples, self.violations = srv, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(0.05):
            try:
                st = status(self.srv)
            except OSError:
                continue
            self.samples += 1
            if st["lwm"] > st["hwm"]:
                self.violations.append((st["lwm"], st["hwm"]))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.fixture(scope="module")
def moto():
    server = moto_server.start()
    yield server
    server.stop()


def _s3_cold(moto, bucket: str, **extra) -> dict:
    return {**COLD, "stores": [f"s3://{bucket}/drive-{i}" for i in range(6)],
            "endpoint_url": moto.endpoint_url, "access_key": moto_server.ACCESS_KEY,
            "secret_key": moto_server.SECRET_KEY, **extra}


def test_cold_tier_on_a_real_s3_endpoint(moto, tmp_path):
    cfg = write_config(tmp_path / "node.toml", ENGINE, _s3_cold(moto, "tidecold"))
    with tidestore_server(str(tmp_path / "data"), extra_args=("--config", cfg)) as srv:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="cold")
        written = write_objects(s3, "cold", 32, 256 << 10)
        st = settle(srv)
        shards = moto.client.list_objects_v2(Bucket="tidecold", Prefix="drive-0/segments/")
        assert shards["KeyCount"] == st["cold"]["shipper"]["segments_shipped"] > 0
        read_all_back(s3, "cold", written)
        assert status(srv)["cold"]["cold_reads"] > 0


def test_cold_backend_down_slows_writes_then_drains(moto, tmp_path):
    cold = _s3_cold(moto, "tidecold-down", max_lag_bytes=3 * MiB, timeout_s=1.0,
                    retry_max_s=1.0)
    cfg = write_config(tmp_path / "node.toml", ENGINE, cold)
    with tidestore_server(str(tmp_path / "data"), extra_args=("--config", cfg)) as srv, \
            WatermarkWatch(srv) as watch:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="cold")
        written = write_objects(s3, "cold", 4, 256 << 10, prefix="before")
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: shipped_up_to(srv, target), timeout=30, interval=0.2)
        os.kill(moto.process.pid, signal.SIGSTOP)  # the endpoint hangs
        try:
            refused = None
            for i in range(200):
                data = body(1000 + i, 256 << 10)
                try:
                    s3.put_object(Bucket="cold", Key=f"during/{i:04d}", Body=data)
                except ClientError as exc:
                    refused = exc.response
                    break
                written[f"during/{i:04d}"] = data
            assert refused is not None, "writes were never slowed down"
            assert refused["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert refused["Error"]["Code"] == "SlowDown"
            st = status(srv)
            assert st["cold"]["slowdown"] and st["hwm"] < st["applied_lsn"]
            assert 10 <= len([k for k in written if k.startswith("during/")]) <= 40
            # reads of what is still hot keep working meanwhile; what was evicted (if
            # the budget has pushed it out by now) gets a clear 503, never a hang
            read_all_back(s3, "cold", {k: v for k, v in written.items() if k.startswith("during/")})
            evicted = [k for k, v in written.items() if k.startswith("before/")
                       and not _readable(s3, "cold", k, v)]
        finally:
            os.kill(moto.process.pid, signal.SIGCONT)
        target = status(srv)["cold"]["data_lsn"]
        st = wait_for(lambda: shipped_up_to(srv, target), timeout=60, interval=0.2)
        assert not st["cold"]["slowdown"]
        # cold reads skip an endpoint for a few seconds after it failed: the first
        # evicted object reads again within that
        for key in evicted[:1]:
            wait_for(lambda: _readable(s3, "cold", key, written[key]), timeout=15, interval=0.5)
        written.update(write_objects(s3, "cold", 3, 256 << 10, prefix="after"))
        read_all_back(s3, "cold", written)
        wait_for(lambda: status(srv)["lwm"] > 0, timeout=30, interval=0.2)  # WAL reclaimed
    assert watch.samples > 20 and not watch.violations, watch.violations

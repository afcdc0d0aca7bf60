"""`tidestore verify [--heal]` against a real node's cold shards (file:// drives): damage
is found, healed byte-identical while at least k shards remain, reported when not."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

from tidestore.testing import start, stop, wait_for

from test_inspect_cli import CONFIG, listing, status

CONFIG_NO_CACHE = CONFIG + "cache_bytes = 0\n"


def verify(data_dir, cfg, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidestore", "verify", "--data-dir", data_dir,
                           "--config", cfg, *extra], capture_output=True, text=True, timeout=120)


def shipped_node(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG_NO_CACHE)
    data_dir = str(tmp_path / "node")
    srv = start(data_dir, extra_args=("--config", str(cfg)))
    s3 = srv.boto3_client()
    s3.create_bucket(Bucket="ver")
    written = {}
    for i in range(20):
        written[f"k{i}"] = data = os.urandom(256 << 10)
        s3.put_object(Bucket="ver", Key=f"k{i}", Body=data)
    target = status(srv)["cold"]["data_lsn"]
    wait_for(lambda: status(srv)["hwm"] >= target and status(srv)["cold"]["evicted_segments"] > 0,
             timeout=60)
    stop(srv, signal.SIGKILL)
    return data_dir, str(cfg), written


def shards(data_dir, drive):
    return sorted(glob.glob(os.path.join(data_dir, "cold", f"drive-{drive}", "segments", "*", "shard-*")))


def test_verify_finds_damage_heal_rebuilds_it_and_everything_reads_back(tmp_path):
    data_dir, cfg, written = shipped_node(tmp_path)
    clean = verify(data_dir, cfg, "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    rep = json.loads(clean.stdout)
    assert rep["clean"] and rep["shards_checked"] >= 6 * 3 and not rep["damaged"]
    lost = shards(data_dir, 0)[0]
    os.unlink(lost)  # a lost shard
    rotten = shards(data_dir, 4)[-1]
    with open(rotten, "r+b") as f:  # bit rot in a parity shard
        f.seek(5000)
        f.write(b"\x00\x01\x02\x03")
    before = listing(os.path.join(data_dir, "engine"))
    found = verify(data_dir, cfg, "--json")
    assert found.returncode == 1
    damaged = {(d["name"].split("/")[-1], d["problem"]) for d in json.loads(found.stdout)["damaged"]}
    assert ("shard-00", "missing") in damaged and any(n == "shard-04" for n, _p in damaged)
    healed = verify(data_dir, cfg, "--heal")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "healed:" in healed.stdout and "clean" in healed.stdout
    assert os.path.exists(lost)
    again = verify(data_dir, cfg, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["clean"]
    assert listing(os.path.join(data_dir, "engine")) == before  # the node's files untouched
    # the healed shards serve reads: with two others gone, decoding needs them
    for drive in (1, 2):
        for path in shards(data_dir, drive):
            os.unlink(path)
    srv = start(data_dir, extra_args=("--config", cfg))
    try:
        s3 = srv.boto3_client()
        for key, data in written.items():
            assert s3.get_object(Bucket="ver", Key=key)["Body"].read() == data
        assert status(srv)["cold"]["cold_reads"] > 0
    finally:
        stop(srv)


def test_more_than_m_lost_is_reported_as_not_healable(tmp_path):
    data_dir, cfg, _written = shipped_node(tmp_path)
    victim = os.path.dirname(shards(data_dir, 0)[0]).split(os.sep)[-1]
    for drive in (0, 1, 5):  # three of six: beyond m = 2
        os.unlink(os.path.join(data_dir, "cold", f"drive-{drive}", "segments", victim,
                               f"shard-{drive:02d}"))
    out = verify(data_dir, cfg, "--heal")
    assert out.returncode == 1
    assert "NOT healed" in out.stdout and "only 3 good shards, 4 needed" in out.stdout
    assert "Traceback" not in out.stderr

"""`tidestore inspect` on a real node's data directory (read-only) and endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tidestore.testing import start, stop, wait_for

MiB = 1 << 20
CONFIG = """
[engine]
segment_size = 1048576
checkpoint_bytes = 1048576
checkpoint_interval_s = 1.0
[cold]
segment_bytes = 1048576
seal_age_s = 0.5
ship_interval_s = 0.2
hot_budget = 3145728
"""


def inspect(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidestore", "inspect", *args],
                          capture_output=True, text=True, timeout=60)


def listing(root: str) -> dict:
    out = {}
    for d, _s, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def status(srv) -> dict:
    import urllib.request

    with urllib.request.urlopen(srv.endpoint + "/_tidestore/status", timeout=5) as r:
        return json.load(r)["members"][0]


def test_inspect_shows_segments_watermarks_and_never_writes(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text(CONFIG)
    data_dir = str(tmp_path / "node")
    srv = start(data_dir, extra_args=("--config", str(cfg)))
    try:
        s3 = srv.boto3_client()
        s3.create_bucket(Bucket="ins")
        for i in range(24):
            s3.put_object(Bucket="ins", Key=f"k{i}", Body=os.urandom(256 << 10))
        target = status(srv)["cold"]["data_lsn"]
        wait_for(lambda: status(srv)["hwm"] >= target and status(srv)["lwm"] > 0, timeout=60)
        live = inspect("--endpoint", srv.endpoint)
        assert live.returncode == 0 and "single |" in live.stdout and "LWM" in live.stdout
    finally:
        stop(srv, signal.SIGKILL)
    before = listing(data_dir)
    out = inspect("--data-dir", data_dir, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    t = rep["timeline"]
    assert 0 < t["lwm"] <= t["hwm"] <= t["applied"] == rep["catalog"]["meta"]["applied_lsn"]
    segs = rep["wal_segments"]
    assert segs and all(s["problem"] is None for s in segs[:-1])
    assert sum(s["records"].get("CHUNK", 0) for s in segs) > 0
    assert rep["catalog"]["counts"]["objects"] == 24 and rep["catalog"]["counts"]["cold_segments"] > 0
    human = inspect("--data-dir", data_dir)
    assert human.returncode == 0 and "WAL segments:" in human.stdout and "LSN timeline" in human.stdout
    assert listing(data_dir) == before  # read-only: not a byte, not a timestamp changed


def test_inspect_refuses_what_is_not_a_data_directory(tmp_path):
    out = inspect("--data-dir", str(tmp_path))
    assert out.returncode == 2 and "not a Tidestore data directory" in out.stderr
    out = inspect("--endpoint", "http://127.0.0.1:9")
    assert out.returncode == 2 and "no status from" in out.stderr

"""`tidestore recover` on real data directories: after kill -9 of a real server, with a
torn tail, with damage in the middle of the log, and while a node still runs."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

from tidestore.testing import start, stop

MiB = 1 << 20


def recover(data_dir: str, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tidestore", "recover", "--data-dir", data_dir, *extra],
                          capture_output=True, text=True, timeout=120)


def write_some(srv, n: int = 8) -> dict:
    s3 = srv.boto3_client()
    s3.create_bucket(Bucket="rec")
    out = {}
    for i in range(n):
        out[f"k{i}"] = data = os.urandom(100_000 + i)
        s3.put_object(Bucket="rec", Key=f"k{i}", Body=data)
    return out


def read_back(srv, written: dict) -> None:
    s3 = srv.boto3_client()
    for key, data in written.items():
        assert s3.get_object(Bucket="rec", Key=key)["Body"].read() == data


def test_recover_after_kill_9_reports_and_the_node_serves_everything(tmp_path):
    data_dir = str(tmp_path / "node")
    srv = start(data_dir)
    written = write_some(srv)
    stop(srv, signal.SIGKILL)
    out = recover(data_dir, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["engine"]["records_scanned"] > 0 and rep["applied_lsn"] == 1 + len(written)
    assert rep["raft_journal"] is None  # a single node has none
    # the final checkpoint: recovering again finds nothing to redo
    again = json.loads(recover(data_dir, "--json").stdout)
    assert again["engine"]["records_redone"] == 0 and again["engine"]["txns_undone"] == 0
    human = recover(data_dir)
    assert human.returncode == 0 and "Recovered" in human.stdout and "torn tail cut: none" in human.stdout
    srv = start(data_dir)
    try:
        read_back(srv, written)
    finally:
        stop(srv)


def test_a_torn_tail_is_cut_and_reported(tmp_path):
    data_dir = str(tmp_path / "node")
    srv = start(data_dir)
    written = write_some(srv, 3)
    stop(srv, signal.SIGKILL)
    last = sorted(glob.glob(os.path.join(data_dir, "engine", "wal", "*.wal")))[-1]
    with open(last, "ab") as f:  # half a record: what a crash mid-append leaves
        f.write(b"\x12\x34\x56\x78" * 10)
    out = recover(data_dir, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["engine"]["tail_cut"]
    srv = start(data_dir)
    try:
        read_back(srv, written)
    finally:
        stop(srv)


def test_damage_in_the_middle_of_the_log_fails_clearly(tmp_path):
    data_dir = str(tmp_path / "node")
    srv = start(data_dir, extra_args=())
    write_some(srv, 6)
    stop(srv, signal.SIGKILL)
    wal = sorted(glob.glob(os.path.join(data_dir, "engine", "wal", "*.wal")))[-1]
    with open(wal, "r+b") as f:  # flip bytes inside the first object's chunk record
        f.seek(300)
        f.write(b"\xff" * 16)
    before = os.path.getsize(wal)
    out = recover(data_dir)
    assert out.returncode == 1
    assert "corrupt WAL record" in out.stderr and "Traceback" not in out.stderr
    assert os.path.getsize(wal) == before  # nothing was cut


def test_recover_refuses_a_directory_a_node_is_using(tmp_path):
    data_dir = str(tmp_path / "node")
    srv = start(data_dir)
    try:
        out = recover(data_dir)
        assert out.returncode == 1 and "in use" in out.stderr and "Traceback" not in out.stderr
        # and so does a second server on the same directory
        second = subprocess.run([sys.executable, "-m", "tidestore", "serve", "--data-dir", data_dir,
                                 "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "in use" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        stop(srv)


def test_recover_says_when_a_directory_is_not_a_data_directory(tmp_path):
    out = recover(str(tmp_path))
    assert out.returncode == 2 and "not a Tidestore data directory" in out.stderr
    assert not os.listdir(tmp_path)  # it wrote nothing there

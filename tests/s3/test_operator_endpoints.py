"""The operator endpoints of a single node: status and health, next to S3."""

import json
import subprocess
import sys
import urllib.request


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, json.load(r)


def test_status_and_health_of_a_single_node(server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    status, body = get_json(server.endpoint + "/_tidestore/status")
    assert status == 200
    (me,) = body["members"]
    assert me["role"] == "leader" and me["healthy"] and me["lag"] == 0
    assert me["applied_lsn"] == me["commit_lsn"] > 0
    assert me["s3"] == server.endpoint.removeprefix("http://")  # the bound port, not ":0"
    assert get_json(server.endpoint + "/_tidestore/health") == (200, {"healthy": True})
    out = subprocess.run([sys.executable, "-m", "tidestore", "status", "--endpoint", server.endpoint],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.split()[:12] == [
        "NODE", "ROLE", "TERM", "LWM", "HWM", "COMMIT", "APPLIED", "LAG", "MISSING", "COLD",
        "HEALTH", "S3"]
    # the cold tier's watermarks: nothing shipped yet (not sealed), nothing truncated
    assert me["lwm"] == 0 and me["hwm"] == 0 and me["cold"]["lag_entries"] == me["applied_lsn"]
    assert me["cold"]["shipper"]["state"] in ("idle", "waiting", "shipping")


def test_metrics_export_the_lsn_timeline(server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    with urllib.request.urlopen(server.endpoint + "/_tidestore/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    for name in ("tidestore_commit_lsn", "tidestore_applied_lsn", "tidestore_cold_hwm",
                 "tidestore_raft_lwm", "tidestore_cold_lag_entries", "tidestore_hot_bytes"):
        assert name in values, name
    assert values["tidestore_applied_lsn"] >= 2  # the bucket and the object
    assert values["tidestore_raft_lwm"] <= values["tidestore_cold_hwm"]
    assert values["tidestore_cold_lag_entries"] == values["tidestore_applied_lsn"] - values["tidestore_cold_hwm"]


def test_operator_paths_do_not_shadow_s3(server, s3, bucket):
    # "_tidestore" cannot be a bucket name, so S3 requests never reach these routes,
    # and other methods on them are still answered by S3 (with an S3 error)
    req = urllib.request.Request(server.endpoint + "/_tidestore/status", method="PUT", data=b"")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("PUT /_tidestore/status succeeded")
    except urllib.error.HTTPError as err:
        assert err.code in (400, 403) and b"<Error>" in err.read()

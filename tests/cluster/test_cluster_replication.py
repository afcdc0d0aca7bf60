"""Three real node processes: any replica serves S3, reads are fresh everywhere, and
the replicas converge to identical catalogs. (Failures: test_cluster_failures.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from group import Group, catalog

MIB = 1 << 20


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    g = Group(str(tmp_path_factory.mktemp("group"))).start()
    yield g
    g.close()


def body(seed: int, size: int) -> bytes:
    return hashlib.sha256(b"%d" % seed).digest() * (size // 32) + b"x" * (size % 32)


def test_a_write_through_one_node_is_read_identical_through_the_others(group):
    a, b, c = (m.client() for m in group.members)
    a.create_bucket(Bucket="rep")
    small, big = body(1, 1000), body(2, 9 * MIB + 123)  # big: three chunks
    a.put_object(Bucket="rep", Key="small", Body=small, ContentType="text/plain",
                 Metadata={"who": "a"})
    etag = b.put_object(Bucket="rep", Key="big", Body=big)["ETag"]
    for client in (a, b, c):  # no waiting: every replica answers with the writes
        got = client.get_object(Bucket="rep", Key="small")
        assert got["Body"].read() == small
        assert got["ContentType"] == "text/plain" and got["Metadata"] == {"who": "a"}
        got = client.get_object(Bucket="rep", Key="big")
        assert got["ETag"] == etag and got["Body"].read() == big
        part = client.get_object(Bucket="rep", Key="big", Range="bytes=4194300-4194310")
        assert part["Body"].read() == big[4194300:4194311]
    c.delete_object(Bucket="rep", Key="small")
    for client in (a, b, c):
        with pytest.raises(ClientError) as err:
            client.head_object(Bucket="rep", Key="small")
        assert err.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_multipart_and_copy_through_different_nodes(group):
    a, b, c = (m.client() for m in group.members)
    a.create_bucket(Bucket="mpu")
    upload = a.create_multipart_upload(Bucket="mpu", Key="obj")["UploadId"]
    parts = [body(10 + i, 5 * MIB) for i in range(2)] + [body(12, 1234)]
    etags = []
    for i, (client, data) in enumerate(zip((a, b, c), parts), start=1):  # each part via another node
        etags.append(client.upload_part(Bucket="mpu", Key="obj", UploadId=upload, PartNumber=i,
                                        Body=data)["ETag"])
    listed = c.list_parts(Bucket="mpu", Key="obj", UploadId=upload)["Parts"]
    assert [p["ETag"] for p in listed] == etags
    done = b.complete_multipart_upload(Bucket="mpu", Key="obj", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, start=1)]})
    assert done["ETag"].endswith('-3"')
    c.copy_object(Bucket="mpu", Key="copy", CopySource={"Bucket": "mpu", "Key": "obj"})
    whole = b"".join(parts)
    for client in (a, b, c):
        assert client.get_object(Bucket="mpu", Key="obj")["Body"].read() == whole
        assert client.get_object(Bucket="mpu", Key="copy")["Body"].read() == whole


def test_listing_is_fresh_on_every_replica(group):
    a, b, c = (m.client() for m in group.members)
    a.create_bucket(Bucket="fresh")
    for i in range(30):
        writer = (a, b, c)[i % 3]
        writer.put_object(Bucket="fresh", Key=f"k{i:03d}", Body=b"v%d" % i)
        reader = (c, a, b)[i % 3]  # another node, at once
        keys = [o["Key"] for o in reader.list_objects_v2(Bucket="fresh")["Contents"]]
        assert keys == [f"k{j:03d}" for j in range(i + 1)]


def test_replicas_hold_identical_catalogs(group):
    group.wait_converged()
    catalogs = [catalog(m.client()) for m in group.members]
    assert catalogs[0] and catalogs[0] == catalogs[1] == catalogs[2]
    applied = {m.own_status()["applied_lsn"] for m in group.members}
    assert len(applied) == 1


def test_status_reports_every_member(group):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))}
    out = subprocess.run([sys.executable, "-m", "tidestore", "status", "--endpoint",
                          group[1].endpoint, "--json"], capture_output=True, text=True, env=env,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    members = json.loads(out.stdout)["members"]
    assert sorted(m["node_id"] for m in members) == ["n1", "n2", "n3"]
    assert sum(m["role"] == "leader" for m in members) == 1
    assert len({m["term"] for m in members}) == 1
    for m in members:
        assert m["healthy"] and m["commit_lsn"] >= m["applied_lsn"] > 0
        assert m["lag"] == m["commit_lsn"] - m["applied_lsn"]
        assert 0 <= m["lwm"] <= m["hwm"] <= m["applied_lsn"]
    human = subprocess.run([sys.executable, "-m", "tidestore", "status", "--endpoint",
                            group[2].endpoint], capture_output=True, text=True, env=env, timeout=30)
    assert human.returncode == 0
    lines = human.stdout.strip().splitlines()
    assert lines[0].split()[:8] == ["NODE", "ROLE", "TERM", "LWM", "HWM", "COMMIT", "APPLIED", "LAG"]
    assert len(lines) == 4 and "leader" in human.stdout


def test_status_of_an_unreachable_endpoint_fails_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tidestore", "status", "--endpoint",
                          "http://127.0.0.1:9"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "no status from" in out.stderr

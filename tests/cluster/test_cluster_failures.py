"""Failures, caused for real on three node processes: kill -9 of the leader under
concurrent writes, a follower down for a while, a node cut off from the other two.
The rule checked throughout: every acknowledged write is readable, identical, from
every replica that is up, and the replicas converge to identical catalogs."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError

from group import Group, catalog

MIB = 1 << 20
# what a writer may meet while a node dies or is cut off: an S3 error (503), or the
# connection refused, reset or timing out (botocore wraps those in BotoCoreError)
TRANSIENT = (ClientError, BotoCoreError, HTTPError, ConnectionError, OSError)


@pytest.fixture
def group(tmp_path):
    g = Group(str(tmp_path)).start()
    yield g
    g.close()


def data(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


class Writers:
    """Concurrent PUTs (single and multipart) through every given node; records
    which ones were acknowledged."""

    def __init__(self, members, bucket: str, threads_per_node: int = 2):
        self.bucket = bucket
        self.acked: dict = {}  # key -> etag
        self.failed = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(m, f"{m.id}-{t}"), daemon=True)
                        for m in members for t in range(threads_per_node)]

    def run(self, member, name):
        client = member.client()
        i = 0
        while not self.stop.is_set():
            i += 1
            key = f"{name}/{i:05d}"
            try:
                if i % 5 == 0:
                    etag = self.multipart(client, key)
                else:
                    body = data(key, (i % 3) * 3 * MIB + 100)  # 100 B .. 6 MiB
                    etag = client.put_object(Bucket=self.bucket, Key=key, Body=body)["ETag"]
            except TRANSIENT:
                with self.lock:
                    self.failed += 1
                time.sleep(0.05)
                continue
            with self.lock:
                self.acked[key] = etag

    def multipart(self, client, key):
        upload = client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        whole = data(key, 5 * MIB + 777)
        parts = []
        for n, (lo, hi) in enumerate(((0, 5 * MIB), (5 * MIB, len(whole))), start=1):
            etag = client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=n,
                                      Body=whole[lo:hi])["ETag"]
            parts.append({"PartNumber": n, "ETag": etag})
        return client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload,
                                                MultipartUpload={"Parts": parts})["ETag"]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def wait_acked(self, n: int, timeout: float = 60.0) -> None:
        """Until at least n writes were acknowledged (the load is really running)."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {n} writes acknowledged"
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def size_of(key: str) -> int:
    i = int(key.rsplit("/", 1)[1])
    return 5 * MIB + 777 if i % 5 == 0 else (i % 3) * 3 * MIB + 100


def assert_all_readable(member, bucket: str, acked: dict) -> None:
    client = member.client()
    for key, etag in sorted(acked.items()):
        got = client.get_object(Bucket=bucket, Key=key)
        assert got["ETag"] == etag, (member.id, key)
        assert got["Body"].read() == data(key, size_of(key)), (member.id, key)


def assert_identical_catalogs(group) -> None:
    group.wait_converged(timeout=60)
    catalogs = [catalog(m.client()) for m in group.members]
    assert catalogs[0] == catalogs[1] == catalogs[2]


def test_kill_9_of_the_leader_under_concurrent_writes_loses_no_acknowledged_write(group):
    leader = group.wait_leader()
    leader.client().create_bucket(Bucket="kill")
    with Writers(group.members, "kill") as w:
        w.wait_acked(50)
        before = len(w.acked)
        leader.kill()
        w.wait_acked(before + 40)  # writes go on through the survivors (after a new election)
    survivors = [m for m in group.members if m is not leader]
    group.wait_leader(among=survivors)
    print(f"\n[kill-9] acknowledged {before} before the kill, {len(w.acked)} in all; "
          f"{w.failed} attempts refused or cut off")
    assert before > 0 and len(w.acked) > before, (before, len(w.acked), w.failed)
    for m in survivors:
        assert_all_readable(m, "kill", w.acked)
    leader.start()  # the old leader comes back on its data directory
    group.wait_leader()
    assert_identical_catalogs(group)
    assert_all_readable(leader, "kill", w.acked)


def test_a_stopped_follower_catches_up_its_log_and_chunks(group):
    leader = group.wait_leader()
    follower = next(m for m in group.members if m is not leader)
    other = next(m for m in group.members if m not in (leader, follower))
    client = leader.client()
    client.create_bucket(Bucket="lag")
    follower.kill()
    acked = {}
    for i in range(12):  # written while the follower is down: it holds none of these chunks
        key = f"while-down/{i:05d}"
        acked[key] = (other if i % 2 else leader).client().put_object(
            Bucket="lag", Key=key, Body=data(key, size_of(key)))["ETag"]
    follower.start()
    group.wait_leader()
    # at once, before it has fetched anything: served (from a peer if need be), never an error
    assert_all_readable(follower, "lag", acked)
    assert_identical_catalogs(group)  # includes: no chunk missing anywhere
    st = follower.own_status()
    assert st["missing_chunks"] == 0
    assert st["chunks_filled"] > 0  # it really lacked chunks and fetched them from peers


def test_an_isolated_node_refuses_writes_while_the_majority_goes_on(group):
    leader = group.wait_leader()
    leader.client().create_bucket(Bucket="split")
    leader.client().put_object(Bucket="split", Key="before", Body=b"before")
    isolated = leader  # the hardest case: the cut-off node believed it led
    majority = [m for m in group.members if m is not isolated]
    group.isolate(isolated)
    try:
        # the isolated node refuses a write promptly: 503, not a hang and not a 200
        t0 = time.monotonic()
        with pytest.raises(ClientError) as err:
            isolated.client().put_object(Bucket="split", Key="lost", Body=b"x")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert time.monotonic() - t0 < 10
        # and a read it cannot prove fresh
        with pytest.raises(ClientError) as err:
            isolated.client().get_object(Bucket="split", Key="before")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        # the majority elects a leader and keeps accepting writes
        group.wait_leader(among=majority)
        acked = {}
        for i in range(6):
            key = f"during/{i:05d}"
            acked[key] = majority[i % 2].client().put_object(
                Bucket="split", Key=key, Body=data(key, size_of(key)))["ETag"]
        for m in majority:
            assert_all_readable(m, "split", acked)
    finally:
        group.heal(isolated)
    group.wait_leader()
    assert_all_readable(isolated, "split", acked)  # served by the rejoined node
    keys = {o["Key"] for o in isolated.client().list_objects_v2(Bucket="split")["Contents"]}
    assert "lost" not in keys  # the refused write never appeared
    assert_identical_catalogs(group)


def test_a_node_without_the_cluster_secret_cannot_join_or_read(group, tmp_path):
    leader = group.wait_leader()
    leader.client().create_bucket(Bucket="secret")
    leader.client().put_object(Bucket="secret", Key="k", Body=b"classified")
    intruder = group[2] if group[2] is not leader else group[1]
    intruder.kill()
    group.cluster_secret = "not-the-cluster-secret"  # the intruder's config only
    intruder.data_dir = str(tmp_path / "intruder")
    intruder.start()
    # it is up, and its health check (a read barrier with the group) fails: 503
    assert not group.healthy(intruder)
    st = intruder.own_status()
    assert st["applied_lsn"] == 0 and st["role"] != "leader"
    with pytest.raises(ClientError) as err:
        intruder.client().get_object(Bucket="secret", Key="k")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    # the two real members still form a quorum
    survivors = [m for m in group.members if m is not intruder]
    leader.client().put_object(Bucket="secret", Key="k2", Body=b"still writable")
    for m in survivors:
        assert m.client().get_object(Bucket="secret", Key="k2")["Body"].read() == b"still writable"


def test_all_three_killed_at_once_come_back_with_every_acknowledged_write(group):
    """kill -9 of the whole group mid-stream (what a power cut does to the processes;
    the disks keep what was fsync'd): on restart the journals replay into the
    engines and nothing acknowledged is missing."""
    leader = group.wait_leader()
    leader.client().create_bucket(Bucket="blackout")
    with Writers(group.members, "blackout", threads_per_node=1) as w:
        w.wait_acked(30)
        for m in group.members:
            m.kill()
    assert len(w.acked) > 0
    for m in group.members:
        m.start()
    group.wait_leader()
    assert_identical_catalogs(group)
    for m in group.members:
        assert_all_readable(m, "blackout", w.acked)

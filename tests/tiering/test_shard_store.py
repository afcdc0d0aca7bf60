"""Shard stores against real backends: a directory in tmp_path and a real moto S3 server
process (one per module, a fresh bucket per test). The same contract tests run on both."""

import hashlib
import io
import itertools
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import moto_server  # next to this file (tests/tiering is not a package: it would shadow tiering)
import pytest
from botocore.exceptions import ClientError

from tiering.shard_store import (
    PART_SIZE,
    FileShardStore,
    InvalidShardName,
    S3ShardStore,
    ShardNotFound,
    ShardStoreError,
    ShardStoreUnavailable,
    open_store,
)

MiB = 1 << 20
_buckets = itertools.count()


@pytest.fixture(scope="module")
def moto():
    server = moto_server.start()
    yield server
    server.stop()


def new_bucket(moto, create=True) -> str:
    name = f"shards-{os.getpid()}-{next(_buckets)}"
    if create:
        moto.client.create_bucket(Bucket=name)
    return name


def s3_store(endpoint_url, bucket, prefix="cold/d0", **kw) -> S3ShardStore:
    return open_store(f"s3://{bucket}/{prefix}", endpoint_url=endpoint_url,
                      access_key=moto_server.ACCESS_KEY, secret_key=moto_server.SECRET_KEY, **kw)


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(f"file://{tmp_path}/cold")
    moto = request.getfixturevalue("moto")
    return s3_store(moto.endpoint_url, new_bucket(moto))


class LimitedReader:
    """A non-seekable source that refuses to hand over more than PART_SIZE at once."""

    def __init__(self, f):
        self._f = f
        self.largest = 0

    def read(self, n=-1):
        if n is None or n < 0 or n > PART_SIZE:
            raise AssertionError(f"read({n}) would hold too much of the shard in memory")
        self.largest = max(self.largest, n)
        return self._f.read(n)


def put_bytes(store, name, data):
    store.put(name, io.BytesIO(data), len(data))


# -- the contract, on both backends ---------------------------------------------------------

def test_round_trip(store):
    data = bytes(range(256)) * 40
    put_bytes(store, "seg/000001/shard-00", data)
    put_bytes(store, "seg/000001/shard-01", b"parity")
    put_bytes(store, "seg/000002/shard-00", b"x")
    put_bytes(store, "top", b"t")

    assert store.exists("seg/000001/shard-00")
    assert not store.exists("seg/000001/shard-02")
    assert store.size("seg/000001/shard-00") == len(data)
    assert abs(store.modified("seg/000001/shard-00") - time.time()) < 60  # what garbage ages by
    assert store.read_range("seg/000001/shard-00", 0, len(data)) == data
    assert list(store.list()) == ["seg/000001/shard-00", "seg/000001/shard-01",
                                  "seg/000002/shard-00", "top"]
    assert list(store.list("seg/000001/")) == ["seg/000001/shard-00", "seg/000001/shard-01"]
    assert list(store.list("seg/00000")) == ["seg/000001/shard-00", "seg/000001/shard-01",
                                             "seg/000002/shard-00"]
    assert list(store.list("t")) == ["top"]
    assert list(store.list("nothing/")) == []
    assert b"".join(store.iter_read("seg/000001/shard-00", chunk=1000)) == data

    put_bytes(store, "top", b"replaced")  # a re-shipped shard replaces the old one whole
    assert store.read_range("top", 0, 100) == b"replaced"

    store.delete("seg/000001/shard-00")
    assert not store.exists("seg/000001/shard-00")
    assert list(store.list("seg/000001/")) == ["seg/000001/shard-01"]


def test_ranges(store):
    data = os.urandom(10_000)
    put_bytes(store, "s", data)
    assert store.read_range("s", 0, 10) == data[:10]
    assert store.read_range("s", 4321, 1234) == data[4321:5555]
    assert store.read_range("s", 9990, 10) == data[9990:]
    assert store.read_range("s", 9995, 100) == data[9995:]  # fewer only at the end
    assert store.read_range("s", 10_000, 5) == b""
    assert store.read_range("s", 20_000, 5) == b""
    assert store.read_range("s", 5, 0) == b""
    with pytest.raises(ValueError):
        store.read_range("s", -1, 5)


def test_empty_shard(store):
    put_bytes(store, "empty", b"")
    assert store.exists("empty")
    assert store.size("empty") == 0
    assert store.read_range("empty", 0, 10) == b""
    assert b"".join(store.iter_read("empty")) == b""
    assert list(store.list()) == ["empty"]


def test_large_shard_is_streamed(store, tmp_path):
    src_path = tmp_path / "big.src"
    data = os.urandom(20 * MiB + 12345)
    src_path.write_bytes(data)
    with open(src_path, "rb") as f:
        src = LimitedReader(f)
        store.put("big/shard", src, len(data))
    assert 0 < src.largest <= PART_SIZE
    assert store.size("big/shard") == len(data)
    assert store.read_range("big/shard", PART_SIZE - 7, 14) == data[PART_SIZE - 7:PART_SIZE + 7]
    assert store.read_range("big/shard", len(data) - 3, 10) == data[-3:]
    digest = hashlib.sha256()
    for chunk in store.iter_read("big/shard", chunk=MiB):
        assert len(chunk) <= MiB
        digest.update(chunk)
    assert digest.digest() == hashlib.sha256(data).digest()


def test_short_source_leaves_nothing(store):
    with pytest.raises(ShardStoreError, match="expected 100"):
        store.put("short", io.BytesIO(b"only 12 byte"), 100)
    assert not store.exists("short")
    assert list(store.list()) == []


def test_writer_commit(store):
    w = store.open_writer("seg/9/shard-3")
    for i in range(5):
        w.write(bytes([i]) * 1000)
    assert not store.exists("seg/9/shard-3")
    with pytest.raises(ShardNotFound):
        store.read_range("seg/9/shard-3", 0, 10)
    assert list(store.list()) == []
    w.commit()
    assert store.size("seg/9/shard-3") == 5000
    assert store.read_range("seg/9/shard-3", 999, 2) == b"\x00\x01"
    with pytest.raises(ValueError):
        w.write(b"more")


def test_writer_abort(store):
    w = store.open_writer("seg/9/shard-4")
    w.write(b"partial")
    w.abort()
    w.abort()  # idempotent
    assert not store.exists("seg/9/shard-4")
    assert list(store.list()) == []

    with store.open_writer("left") as w:  # leaving the block without commit() discards
        w.write(b"partial")
    with pytest.raises(RuntimeError):
        with store.open_writer("failed") as w:
            w.write(b"partial")
            raise RuntimeError("shipper crashed mid-shard")
    with store.open_writer("kept") as w:
        w.write(b"whole")
        w.commit()
    assert list(store.list()) == ["kept"]


def test_missing_and_delete_idempotent(store):
    for op in (lambda: store.read_range("nope", 0, 1), lambda: store.size("nope"),
               lambda: store.modified("nope"),
               lambda: store.iter_read("nope"), lambda: store.read_range("a/b/nope", 0, 0)):
        with pytest.raises(ShardNotFound) as err:
            op()
        assert store.url in str(err.value)
    assert not store.exists("nope")
    store.delete("nope")
    put_bytes(store, "gone", b"x")
    store.delete("gone")
    store.delete("gone")
    assert not store.exists("gone")


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/etc/passwd", "", "a//b",
                                  "a/", ".hidden", "a/.tmp", "a\\..\\b"])
def test_invalid_names_refused(store, name):
    with pytest.raises(InvalidShardName):
        store.put(name, io.BytesIO(b"x"))
    with pytest.raises(InvalidShardName):
        store.read_range(name, 0, 1)
    with pytest.raises(InvalidShardName):
        store.open_writer(name)


def test_list_prefix_cannot_escape(store):
    put_bytes(store, "a/b", b"x")
    for prefix in ("../", "../../etc/", "a/../", "/"):
        with pytest.raises(InvalidShardName):
            list(store.list(prefix))


def test_concurrent_shards(store):
    """The shipper writes the k+m shards of a segment from parallel threads."""
    shards = {f"seg/7/shard-{i:02d}": os.urandom(256 * 1024 + i) for i in range(9)}
    with ThreadPoolExecutor(9) as pool:
        list(pool.map(lambda kv: put_bytes(store, *kv), shards.items()))
        got = dict(zip(shards, pool.map(lambda n: store.read_range(n, 0, 1 << 30), shards)))
    assert got == shards
    assert list(store.list("seg/7/")) == sorted(shards)


# -- file:// --------------------------------------------------------------------------------

def test_file_layout_and_leftover_temp_files(tmp_path):
    store = FileShardStore(str(tmp_path / "d0"))
    assert store.url == f"file://{tmp_path}/d0"
    put_bytes(store, "seg/1/shard-0", b"data")
    assert (tmp_path / "d0" / "seg" / "1" / "shard-0").read_bytes() == b"data"
    # what a crash between write and rename leaves behind
    (tmp_path / "d0" / "seg" / "1" / ".shard-1.k3j4h5.tmp").write_bytes(b"half")
    (tmp_path / "d0" / ".top.abcdef.tmp").write_bytes(b"half")
    assert list(store.list()) == ["seg/1/shard-0"]
    with pytest.raises(InvalidShardName):
        put_bytes(store, "../escape", b"x")
    assert sorted(os.listdir(tmp_path)) == ["d0"]


def test_file_writer_uses_hidden_temp_file(tmp_path):
    store = FileShardStore(str(tmp_path / "d0"))
    w = store.open_writer("seg/2/shard-5")
    w.write(b"abc")
    assert [p.name.startswith(".shard-5.") for p in (tmp_path / "d0" / "seg" / "2").iterdir()] \
        == [True]
    w.abort()
    assert list((tmp_path / "d0" / "seg" / "2").iterdir()) == []


def test_file_store_directory_gone_is_unavailable(tmp_path):
    store = FileShardStore(str(tmp_path / "d0"))
    put_bytes(store, "a", b"x")
    os.rename(tmp_path / "d0", tmp_path / "unmounted")
    with pytest.raises(ShardStoreUnavailable, match="d0"):
        store.read_range("a", 0, 1)
    with pytest.raises(ShardStoreUnavailable):
        put_bytes(store, "b", b"y")
    assert not (tmp_path / "d0").exists()  # not silently recreated


def test_open_store_urls(tmp_path):
    assert isinstance(open_store(f"file://{tmp_path}/x"), FileShardStore)
    with pytest.raises(ValueError):
        open_store("ftp://host/dir")
    with pytest.raises(ValueError) as err:
        open_store("s3://AKIA:hunter2@bucket/prefix")
    assert "hunter2" not in str(err.value)


# -- s3:// ----------------------------------------------------------------------------------

def test_s3_keys_live_under_the_prefix(moto):
    bucket = new_bucket(moto)
    client = moto.client
    client.put_object(Bucket=bucket, Key="cold/d00", Body=b"not ours")
    client.put_object(Bucket=bucket, Key="elsewhere/x", Body=b"not ours")
    store = s3_store(moto.endpoint_url, bucket, prefix="/cold/d0/")
    assert store.url == f"s3://{bucket}/cold/d0"
    put_bytes(store, "seg/1/shard-0", b"data")
    assert client.get_object(Bucket=bucket, Key="cold/d0/seg/1/shard-0")["Body"].read() == b"data"
    assert list(store.list()) == ["seg/1/shard-0"]
    whole = s3_store(moto.endpoint_url, bucket, prefix="")
    assert list(whole.list()) == ["cold/d0/seg/1/shard-0", "cold/d00", "elsewhere/x"]


def test_s3_large_shards_are_multipart_and_aborts_leave_nothing(moto):
    bucket = new_bucket(moto)
    store = s3_store(moto.endpoint_url, bucket)
    put_bytes(store, "big", os.urandom(2 * PART_SIZE + 1))
    assert moto.client.head_object(Bucket=bucket, Key="cold/d0/big")["ETag"].endswith('-3"')
    w = store.open_writer("aborted")
    w.write(os.urandom(PART_SIZE + 1))  # one part already uploaded
    assert moto.client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    w.abort()
    assert not moto.client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not store.exists("aborted")


def test_s3_create_bucket(moto):
    bucket = new_bucket(moto, create=False)
    store = s3_store(moto.endpoint_url, bucket, create_bucket=True)
    put_bytes(store, "s", b"x")
    moto.client.head_bucket(Bucket=bucket)
    assert store.read_range("s", 0, 1) == b"x"


def test_s3_missing_bucket_is_a_clear_error(moto):
    bucket = new_bucket(moto, create=False)
    store = open_store(f"s3://{bucket}/p", endpoint_url=moto.endpoint_url,
                       access_key="AKIDSHOULDNOTLEAK", secret_key="secret/SHOULDNOTLEAK")
    for op in (lambda: store.exists("s"), lambda: put_bytes(store, "s", b"x"),
               lambda: list(store.list())):
        with pytest.raises(ShardStoreError) as err:
            op()
        assert type(err.value) is ShardStoreError
        assert f"s3://{bucket}/p" in str(err.value) and "does not exist" in str(err.value)
        assert "SHOULDNOTLEAK" not in str(err.value)
    assert "SHOULDNOTLEAK" not in repr(store) + store.url
    with pytest.raises(ClientError):  # and not created behind the operator's back
        moto.client.head_bucket(Bucket=bucket)


def test_s3_server_killed_is_unavailable_quickly():
    server = moto_server.start()  # its own: this test kills it
    try:
        store = s3_store(server.endpoint_url, new_bucket(server), timeout=2.0)
        put_bytes(store, "s", b"x")
        server.kill()
        for op in (lambda: store.read_range("s", 0, 1), lambda: put_bytes(store, "t", b"y"),
                   lambda: store.exists("s")):
            started = time.monotonic()
            with pytest.raises(ShardStoreUnavailable) as err:
                op()
            assert time.monotonic() - started < 8
            assert store.url in str(err.value)
    finally:
        server.stop()


def test_s3_unresponsive_endpoint_times_out():
    """An endpoint that accepts connections and never answers (a hung server) must not
    hang the shipper: read timeouts bound every attempt."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes the handshakes; nobody ever reads
        port = listener.getsockname()[1]
        store = s3_store(f"http://127.0.0.1:{port}", "hung-bucket", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ShardStoreUnavailable, match="timed out"):
            store.exists("s")
        assert time.monotonic() - started < 8

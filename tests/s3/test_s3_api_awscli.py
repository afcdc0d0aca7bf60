"""The AWS CLI against a real `tidestore serve` process: a multipart `aws s3 cp` of a
~20 MiB file up and down, and `aws s3 sync` of a small tree both ways (with --delete),
comparing bytes. The CLI runs with its own HOME and config file (multipart threshold and
part size 5 MB, set with `aws configure set`)."""

import filecmp
import hashlib
import os
import shutil
import subprocess

import pytest

AWS = shutil.which("aws")
pytestmark = pytest.mark.skipif(AWS is None, reason="the AWS CLI is not installed")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def cli(server, tmp_path_factory):
    home = tmp_path_factory.mktemp("awscli-home")
    env = server.env()
    env.update(HOME=str(home), AWS_CONFIG_FILE=str(home / ".aws" / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / ".aws" / "credentials"),
               AWS_PAGER="", AWS_RETRY_MODE="standard", AWS_MAX_ATTEMPTS="2")
    env.pop("AWS_PROFILE", None)

    def run(*args, check=True, timeout=120):
        proc = subprocess.run([AWS, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"aws {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
        return proc

    for setting, value in (("default.s3.multipart_threshold", "5MB"),
                           ("default.s3.multipart_chunksize", "5MB")):
        run("configure", "set", setting, value)
    config = (home / ".aws" / "config").read_text()
    assert "multipart_threshold = 5MB" in config

    def s3(*args, **kw):
        return run("--endpoint-url", server.endpoint, "s3", *args, **kw)

    def s3api(*args, **kw):
        return run("--endpoint-url", server.endpoint, "s3api", *args, **kw)

    return s3, s3api


def multipart_etag(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def test_cp_multipart_round_trip(cli, s3, bucket, tmp_path):
    aws_s3, _ = cli
    data = os.urandom(20 * MiB + 12345)
    src = tmp_path / "big file.bin"
    src.write_bytes(data)
    aws_s3("cp", str(src), f"s3://{bucket}/uploads/big file.bin")
    head = s3.head_object(Bucket=bucket, Key="uploads/big file.bin")
    assert head["ContentLength"] == len(data)
    # it really went up in 5 MiB parts: the multipart ETag, computed here
    assert head["ETag"] == multipart_etag(data, 5 * MiB)
    assert head["PartsCount"] == 5
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)

    dst = tmp_path / "down.bin"
    aws_s3("cp", f"s3://{bucket}/uploads/big file.bin", str(dst))  # ranged, parallel GETs
    got = dst.read_bytes()
    assert len(got) == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    # a server-side copy (CopyObject, or UploadPartCopy for large objects) through the CLI
    aws_s3("cp", f"s3://{bucket}/uploads/big file.bin", f"s3://{bucket}/copies/big.bin")
    copied = s3.get_object(Bucket=bucket, Key="copies/big.bin")["Body"].read()
    assert hashlib.sha256(copied).digest() == hashlib.sha256(data).digest()

    out = aws_s3("ls", f"s3://{bucket}/", "--recursive").stdout
    assert "uploads/big file.bin" in out and "copies/big.bin" in out


def test_cp_small_file_and_errors(cli, s3, bucket, tmp_path):
    aws_s3, s3api = cli
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from the aws cli\n")
    aws_s3("cp", str(small), f"s3://{bucket}/small.txt", "--content-type", "text/plain",
           "--metadata", "origin=cli")
    head = s3.head_object(Bucket=bucket, Key="small.txt")
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"origin": "cli"}
    proc = aws_s3("cp", f"s3://{bucket}/absent.txt", str(tmp_path / "x"), check=False)
    assert proc.returncode != 0
    assert "404" in proc.stderr or "Not Found" in proc.stderr
    out = s3api("head-object", "--bucket", bucket, "--key", "small.txt").stdout
    assert '"ContentLength": 23' in out


def write_tree(root, files):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def assert_same_tree(a, b):
    def walk(root):
        out = {}
        for dirpath, _dirs, names in os.walk(root):
            for n in names:
                full = os.path.join(dirpath, n)
                out[os.path.relpath(full, root)] = full
        return out
    left, right = walk(a), walk(b)
    assert sorted(left) == sorted(right)
    for rel in left:
        assert filecmp.cmp(left[rel], right[rel], shallow=False), rel


def test_sync_both_ways(cli, s3, bucket, tmp_path):
    aws_s3, _ = cli
    files = {
        "readme.txt": b"top level\n",
        "empty.dat": b"",
        "sub/data.bin": os.urandom(300_000),
        "sub/deeper/with space & plus+.txt": b"odd name\n",
        "sub/deeper/ünïcødé.txt": "unicode ✓\n".encode(),
        "other/big.bin": os.urandom(6 * MiB + 5),  # above the threshold: multipart
    }
    up = tmp_path / "up"
    write_tree(up, files)
    aws_s3("sync", str(up), f"s3://{bucket}/tree")
    listed = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="tree/") for o in page.get("Contents", [])}
    assert listed == {f"tree/{k}": len(v) for k, v in files.items()}
    for rel, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=f"tree/{rel}")["Body"].read() == data

    down = tmp_path / "down"
    aws_s3("sync", f"s3://{bucket}/tree", str(down))
    assert_same_tree(up, down)

    # a second sync uploads nothing (sizes and times match what is listed)
    proc = aws_s3("sync", str(up), f"s3://{bucket}/tree")
    assert "upload:" not in proc.stdout

    # change, add and remove locally; sync up with --delete; sync down with --delete
    (up / "readme.txt").write_bytes(b"top level, edited and longer\n")
    (up / "sub" / "new.txt").write_bytes(b"new file\n")
    (up / "empty.dat").unlink()
    proc = aws_s3("sync", str(up), f"s3://{bucket}/tree", "--delete")
    assert "delete:" in proc.stdout
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="tree/")["Contents"]}
    assert "tree/empty.dat" not in keys and "tree/sub/new.txt" in keys
    assert s3.get_object(Bucket=bucket, Key="tree/readme.txt")["Body"].read() == b"top level, edited and longer\n"
    aws_s3("sync", f"s3://{bucket}/tree", str(down), "--delete")
    assert_same_tree(up, down)

"""CopyObject against a real `tidestore serve` process: COPY and REPLACE directives,
x-amz-copy-source-if-* conditions, across buckets, onto itself, missing sources."""

import datetime as dt
import hashlib
import os
import time

import pytest
from botocore.exceptions import ClientError

from test_s3_api_support import code_of, fresh_name, signed, status_of

PAST = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
OTHER = '"0123456789abcdef0123456789abcdef"'


@pytest.fixture
def src(s3, bucket):
    data = os.urandom(5000)
    s3.put_object(Bucket=bucket, Key="src", Body=data, ContentType="text/x-src",
                  CacheControl="max-age=1", Metadata={"origin": "source"})
    return bucket, "src", data


def test_copy_with_copy_directive_keeps_metadata(s3, src):
    bucket, key, data = src
    out = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": key})
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    assert out["CopyObjectResult"]["ETag"] == etag
    assert abs((dt.datetime.now(dt.timezone.utc) - out["CopyObjectResult"]["LastModified"]).total_seconds()) < 60
    got = s3.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == data
    assert got["ETag"] == etag
    assert got["ContentType"] == "text/x-src"
    assert got["CacheControl"] == "max-age=1"
    assert got["Metadata"] == {"origin": "source"}
    # metadata sent with a COPY directive is ignored, as in S3
    s3.copy_object(Bucket=bucket, Key="dst2", CopySource=f"{bucket}/{key}",
                   Metadata={"ignored": "yes"}, MetadataDirective="COPY")
    assert s3.head_object(Bucket=bucket, Key="dst2")["Metadata"] == {"origin": "source"}


def test_copy_with_replace_directive(s3, src):
    bucket, key, data = src
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": key},
                   MetadataDirective="REPLACE", Metadata={"new": "meta"}, ContentType="text/plain")
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["Metadata"] == {"new": "meta"}
    assert head["ContentType"] == "text/plain"
    assert "CacheControl" not in head
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == data
    # the source is untouched
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {"origin": "source"}


def test_copy_onto_itself(s3, src):
    bucket, key, data = src
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key})
    assert code_of(ei) == "InvalidRequest"
    assert status_of(ei) == 400
    before = s3.head_object(Bucket=bucket, Key=key)
    time.sleep(1.05)  # Last-Modified has whole seconds
    s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                   MetadataDirective="REPLACE", Metadata={"changed": "1"})
    after = s3.head_object(Bucket=bucket, Key=key)
    assert after["Metadata"] == {"changed": "1"}
    assert after["ETag"] == before["ETag"]
    assert after["LastModified"] > before["LastModified"]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_copy_across_buckets(s3, src):
    bucket, key, data = src
    other = fresh_name("dst")
    s3.create_bucket(Bucket=other)
    s3.copy_object(Bucket=other, Key="copied/here", CopySource={"Bucket": bucket, "Key": key})
    assert s3.get_object(Bucket=other, Key="copied/here")["Body"].read() == data
    # deleting the source leaves the copy intact (chunks are shared, not moved)
    s3.delete_object(Bucket=bucket, Key=key)
    assert s3.get_object(Bucket=other, Key="copied/here")["Body"].read() == data


def test_copy_of_odd_key_names(s3, bucket):
    key = "dir/spa ce+plus%pct/ünï?#"
    s3.put_object(Bucket=bucket, Key=key, Body=b"odd")
    s3.copy_object(Bucket=bucket, Key=key + "-copy", CopySource={"Bucket": bucket, "Key": key})
    assert s3.get_object(Bucket=bucket, Key=key + "-copy")["Body"].read() == b"odd"


def test_copy_of_large_object(s3, bucket):
    data = os.urandom(9 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    s3.copy_object(Bucket=bucket, Key="big2", CopySource={"Bucket": bucket, "Key": "big"})
    assert s3.get_object(Bucket=bucket, Key="big2")["Body"].read() == data


def test_copy_missing_source(s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "missing"})
    assert code_of(ei) == "NoSuchKey"
    assert status_of(ei) == 404
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": fresh_name("none"), "Key": "k"})
    assert code_of(ei) == "NoSuchBucket"


def test_copy_into_missing_bucket(s3, src):
    bucket, key, _ = src
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=fresh_name("none"), Key="dst", CopySource={"Bucket": bucket, "Key": key})
    assert code_of(ei) == "NoSuchBucket"


def test_copy_bad_directive_and_source(server, s3, src):
    bucket, key, _ = src
    r = signed(server, "PUT", f"/{bucket}/dst", headers={
        "x-amz-copy-source": f"/{bucket}/{key}", "x-amz-metadata-directive": "MERGE"})
    assert r.status == 400
    assert r.error()["Code"] == "InvalidArgument"
    r = signed(server, "PUT", f"/{bucket}/dst", headers={"x-amz-copy-source": "no-slash"})
    assert r.status == 400
    assert r.error()["Code"] == "InvalidArgument"
    r = signed(server, "PUT", f"/{bucket}/dst", headers={
        "x-amz-copy-source": f"/{bucket}/{key}?versionId=abc"})
    assert r.status == 400
    # the null version is the only version there is
    r = signed(server, "PUT", f"/{bucket}/dst", headers={
        "x-amz-copy-source": f"/{bucket}/{key}?versionId=null"})
    assert r.status == 200, r.body


def copy_outcome(s3, bucket, key, **cond):
    try:
        s3.copy_object(Bucket=bucket, Key="cond-dst", CopySource={"Bucket": bucket, "Key": key}, **cond)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "PreconditionFailed"
        return exc.response["ResponseMetadata"]["HTTPStatusCode"]
    return 200


def test_copy_source_conditions(s3, src):
    bucket, key, _ = src
    head = s3.head_object(Bucket=bucket, Key=key)
    etag, mtime = head["ETag"], head["LastModified"]
    cases = [
        ({"CopySourceIfMatch": etag}, 200),
        ({"CopySourceIfMatch": OTHER}, 412),
        ({"CopySourceIfNoneMatch": OTHER}, 200),
        ({"CopySourceIfNoneMatch": etag}, 412),
        ({"CopySourceIfModifiedSince": PAST}, 200),
        ({"CopySourceIfModifiedSince": FUTURE}, 412),
        ({"CopySourceIfModifiedSince": mtime}, 412),
        ({"CopySourceIfUnmodifiedSince": FUTURE}, 200),
        ({"CopySourceIfUnmodifiedSince": PAST}, 412),
        # S3: if-match true and if-unmodified-since false -> copied
        ({"CopySourceIfMatch": etag, "CopySourceIfUnmodifiedSince": PAST}, 200),
        # S3: if-none-match false and if-modified-since true -> 412
        ({"CopySourceIfNoneMatch": etag, "CopySourceIfModifiedSince": PAST}, 412),
        ({"CopySourceIfMatch": OTHER, "CopySourceIfNoneMatch": OTHER}, 412),
    ]
    for cond, expected in cases:
        s3.delete_object(Bucket=bucket, Key="cond-dst")
        assert copy_outcome(s3, bucket, key, **cond) == expected, cond
        exists = True
        try:
            s3.head_object(Bucket=bucket, Key="cond-dst")
        except ClientError:
            exists = False
        assert exists == (expected == 200), cond

"""Range GETs and conditional GET/HEAD (RFC 7232 precedence, as S3 applies it)
against a real `tidestore serve` process."""

import datetime as dt
import os

import pytest
from botocore.exceptions import ClientError

from test_s3_api_support import code_of, raw, signed, status_of

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable enough
SIZE = len(DATA)


@pytest.fixture
def obj(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="r", Body=DATA)
    head = s3.head_object(Bucket=bucket, Key="r")
    return bucket, "r", put["ETag"], head["LastModified"]


@pytest.mark.parametrize("spec,start,end", [
    ("bytes=0-9", 0, 10),
    ("bytes=100-100", 100, 101),
    ("bytes=1000-", 1000, SIZE),        # open-ended
    ("bytes=-24", SIZE - 24, SIZE),     # suffix
    ("bytes=-5000", 0, SIZE),           # suffix longer than the object: all of it
    ("bytes=1000-999999", 1000, SIZE),  # beyond the end: clamped
    ("bytes=1023-", 1023, SIZE),        # the last byte
])
def test_satisfiable_ranges(s3, obj, spec, start, end):
    bucket, key, etag, _ = obj
    got = s3.get_object(Bucket=bucket, Key=key, Range=spec)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["Body"].read() == DATA[start:end]
    assert got["ContentRange"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert got["ContentLength"] == end - start
    assert got["ETag"] == etag
    assert got["AcceptRanges"] == "bytes"
    head = s3.head_object(Bucket=bucket, Key=key, Range=spec)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert head["ContentRange"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert head["ContentLength"] == end - start


@pytest.mark.parametrize("spec", ["bytes=1024-", "bytes=5000-6000", "bytes=1024-1024"])
def test_range_starting_beyond_the_end_is_416(server, s3, obj, spec):
    bucket, key, _, _ = obj
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key=key, Range=spec)
    assert code_of(ei) == "InvalidRange"
    assert status_of(ei) == 416
    assert ei.value.response["ResponseMetadata"]["HTTPHeaders"]["content-range"] == f"bytes */{SIZE}"
    r = signed(server, "GET", f"/{bucket}/{key}", headers={"Range": spec})
    assert r.status == 416
    assert r.header("Content-Range") == f"bytes */{SIZE}"
    err = r.error()
    assert err["Code"] == "InvalidRange"
    assert err["ActualObjectSize"] == str(SIZE)
    assert err["RequestId"] == r.header("x-amz-request-id")
    h = signed(server, "HEAD", f"/{bucket}/{key}", headers={"Range": spec})
    assert h.status == 416
    assert h.body == b""


def test_ranges_on_a_zero_byte_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="z", Body=b"")
    for spec in ("bytes=0-0", "bytes=0-", "bytes=-1"):
        with pytest.raises(ClientError) as ei:
            s3.get_object(Bucket=bucket, Key="z", Range=spec)
        assert status_of(ei) == 416, spec
        assert ei.value.response["ResponseMetadata"]["HTTPHeaders"]["content-range"] == "bytes */0"


@pytest.mark.parametrize("spec", ["bytes=abc", "items=0-4", "bytes=5-2", "bytes=0-1,4-5", "bytes"])
def test_unsupported_or_invalid_range_serves_the_whole_object(s3, obj, spec):
    bucket, key, _, _ = obj
    got = s3.get_object(Bucket=bucket, Key=key, Range=spec)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert got["Body"].read() == DATA
    assert "ContentRange" not in got


def test_range_on_large_streamed_object(s3, bucket):
    data = os.urandom(6 * 1024 * 1024 + 17)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    lo, hi = 4 * 1024 * 1024 - 10, 6 * 1024 * 1024  # across a chunk boundary, > 1 MiB
    got = s3.get_object(Bucket=bucket, Key="big", Range=f"bytes={lo}-{hi}")
    assert got["Body"].read() == data[lo:hi + 1]
    got = s3.get_object(Bucket=bucket, Key="big", Range="bytes=-3")
    assert got["Body"].read() == data[-3:]


# ---- conditional requests ----------------------------------------------------------

PAST = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
OTHER = '"0123456789abcdef0123456789abcdef"'


def outcome(s3, method, bucket, key, **cond):
    call = s3.get_object if method == "GET" else s3.head_object
    try:
        out = call(Bucket=bucket, Key=key, **cond)
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    if method == "GET":
        assert out["Body"].read() == DATA
    return out["ResponseMetadata"]["HTTPStatusCode"]


def conditions_for(etag, mtime):
    """(conditions, expected status) following RFC 7232 section 6."""
    return [
        ({"IfMatch": etag}, 200),
        ({"IfMatch": "*"}, 200),
        ({"IfMatch": f"{OTHER}, {etag}"}, 200),
        ({"IfMatch": OTHER}, 412),
        ({"IfNoneMatch": etag}, 304),
        ({"IfNoneMatch": "*"}, 304),
        ({"IfNoneMatch": OTHER}, 200),
        ({"IfModifiedSince": PAST}, 200),
        ({"IfModifiedSince": mtime}, 304),            # not modified since exactly then
        ({"IfModifiedSince": FUTURE}, 304),
        ({"IfUnmodifiedSince": FUTURE}, 200),
        ({"IfUnmodifiedSince": mtime}, 200),
        ({"IfUnmodifiedSince": PAST}, 412),
        # If-Match true makes If-Unmodified-Since irrelevant
        ({"IfMatch": etag, "IfUnmodifiedSince": PAST}, 200),
        # If-Match is evaluated first
        ({"IfMatch": OTHER, "IfNoneMatch": etag}, 412),
        ({"IfMatch": OTHER, "IfModifiedSince": FUTURE}, 412),
        ({"IfUnmodifiedSince": PAST, "IfNoneMatch": etag}, 412),
        # If-None-Match present: If-Modified-Since is ignored
        ({"IfNoneMatch": OTHER, "IfModifiedSince": FUTURE}, 200),
        ({"IfNoneMatch": etag, "IfModifiedSince": PAST}, 304),
        ({"IfMatch": etag, "IfNoneMatch": etag}, 304),
        ({"IfMatch": etag, "IfModifiedSince": FUTURE}, 304),
        ({"IfUnmodifiedSince": FUTURE, "IfModifiedSince": PAST}, 200),
    ]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_conditional_requests_follow_rfc7232(s3, obj, method):
    bucket, key, etag, mtime = obj
    for cond, expected in conditions_for(etag, mtime):
        assert outcome(s3, method, bucket, key, **cond) == expected, (method, cond)


def test_unquoted_etag_and_bad_dates(server, obj):
    bucket, key, etag, _ = obj
    r = signed(server, "GET", f"/{bucket}/{key}", headers={"If-Match": etag.strip('"')})
    assert r.status == 200
    r = signed(server, "GET", f"/{bucket}/{key}", headers={"If-None-Match": etag.strip('"')})
    assert r.status == 304
    # an unparseable date is ignored, as S3 does
    r = signed(server, "GET", f"/{bucket}/{key}", headers={"If-Modified-Since": "not a date"})
    assert r.status == 200
    assert r.body == DATA


def test_304_and_412_responses(server, obj):
    bucket, key, etag, mtime = obj
    r = signed(server, "GET", f"/{bucket}/{key}", headers={"If-None-Match": etag})
    assert r.status == 304
    assert r.body == b""
    assert r.header("ETag") == etag
    assert r.header("Last-Modified")
    assert r.header("x-amz-request-id")
    r = signed(server, "GET", f"/{bucket}/{key}", headers={"If-Match": OTHER})
    assert r.status == 412
    err = r.error()
    assert err["Code"] == "PreconditionFailed"
    assert err["Condition"] == "If-Match"
    assert err["RequestId"] == r.header("x-amz-request-id")
    r = signed(server, "HEAD", f"/{bucket}/{key}", headers={"If-Match": OTHER})
    assert r.status == 412
    assert r.body == b""


def test_conditions_are_checked_before_the_range(s3, obj):
    bucket, key, etag, _ = obj
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key=key, IfMatch=OTHER, Range="bytes=5000-")
    assert status_of(ei) == 412
    got = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag, Range="bytes=0-3")
    assert got["Body"].read() == DATA[:4]


def test_conditional_on_missing_key_is_404(s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="missing", IfMatch=OTHER)
    assert code_of(ei) == "NoSuchKey"


def test_anonymous_range_request_is_still_refused(server, obj):
    bucket, key, _, _ = obj
    r = raw(server, "GET", f"/{bucket}/{key}", headers={"Range": "bytes=0-1"})
    assert r.status == 403

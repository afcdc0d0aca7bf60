"""Object operations against a real `tidestore serve` process: PutObject, GetObject,
HeadObject, DeleteObject, DeleteObjects, stored headers, response-* overrides, odd keys
(and that keys never become file names on the server's disk), virtual-host addressing."""

import datetime as dt
import email.utils
import hashlib
import os
import random
from urllib.parse import unquote_plus

import pytest
from botocore.exceptions import ClientError

from test_s3_api_support import code_of, fresh_name, raw, signed, status_of


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_put_get_head_delete_round_trip(s3, bucket):
    data = os.urandom(3000)
    put = s3.put_object(Bucket=bucket, Key="obj", Body=data)
    assert put["ETag"] == f'"{md5(data)}"'
    got = s3.get_object(Bucket=bucket, Key="obj")
    assert got["Body"].read() == data
    assert got["ETag"] == put["ETag"]
    assert got["ContentLength"] == len(data)
    assert got["ContentType"] == "binary/octet-stream"
    assert got["AcceptRanges"] == "bytes"
    head = s3.head_object(Bucket=bucket, Key="obj")
    assert head["ContentLength"] == len(data)
    assert head["ETag"] == put["ETag"]
    assert head["LastModified"] == got["LastModified"]
    now = dt.datetime.now(dt.timezone.utc)
    assert abs((now - head["LastModified"]).total_seconds()) < 60
    out = s3.delete_object(Bucket=bucket, Key="obj")
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="obj")
    assert code_of(ei) == "NoSuchKey"
    assert status_of(ei) == 404
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=bucket, Key="obj")
    assert status_of(ei) == 404


def test_overwrite_replaces_content_and_metadata(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"first", Metadata={"a": "1"}, ContentType="text/plain")
    s3.put_object(Bucket=bucket, Key="k", Body=b"second!")
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"second!"
    assert got["Metadata"] == {}
    assert got["ContentType"] == "binary/octet-stream"


def test_large_object_streams_back_intact(s3, bucket):
    data = random.Random(7).randbytes(9 * 1024 * 1024 + 12345)  # several chunks, streamed GET
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    got = s3.get_object(Bucket=bucket, Key="big")["Body"].read()
    assert len(got) == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_stored_headers_come_back(s3, bucket):
    expires = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    s3.put_object(Bucket=bucket, Key="h", Body=b"<p>hi</p>", ContentType="text/html; charset=utf-8",
                  ContentEncoding="identity", ContentDisposition='attachment; filename="x.html"',
                  ContentLanguage="de-DE", CacheControl="max-age=60, public", Expires=expires,
                  Metadata={"color": "blue", "Mixed-Case": "Value With Spaces"})
    for out in (s3.get_object(Bucket=bucket, Key="h"), s3.head_object(Bucket=bucket, Key="h")):
        assert out["ContentType"] == "text/html; charset=utf-8"
        assert out["ContentEncoding"] == "identity"
        assert out["ContentDisposition"] == 'attachment; filename="x.html"'
        assert out["ContentLanguage"] == "de-DE"
        assert out["CacheControl"] == "max-age=60, public"
        assert out["ExpiresString"] == "Thu, 02 Jan 2031 03:04:05 GMT"
        assert out["Metadata"] == {"color": "blue", "mixed-case": "Value With Spaces"}
        assert out["ETag"] == f'"{md5(b"<p>hi</p>")}"'
        assert out["AcceptRanges"] == "bytes"
        lm = out["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
        assert email.utils.parsedate_to_datetime(lm) == out["LastModified"]
        assert lm.endswith(" GMT")


def test_response_overrides_on_get(s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"data", ContentType="text/plain",
                  CacheControl="no-cache")
    got = s3.get_object(Bucket=bucket, Key="o", ResponseContentType="application/json",
                        ResponseContentLanguage="fr", ResponseExpires=dt.datetime(2030, 5, 6, tzinfo=dt.timezone.utc),
                        ResponseCacheControl="max-age=5",
                        ResponseContentDisposition="inline; filename=o.json",
                        ResponseContentEncoding="gzip")
    assert got["Body"].read() == b"data"
    assert got["ContentType"] == "application/json"
    assert got["ContentLanguage"] == "fr"
    assert got["CacheControl"] == "max-age=5"
    assert got["ContentDisposition"] == "inline; filename=o.json"
    assert got["ContentEncoding"] == "gzip"
    assert got["ExpiresString"].startswith("Mon, 06 May 2030")
    # the stored values are untouched
    head = s3.head_object(Bucket=bucket, Key="o")
    assert head["ContentType"] == "text/plain"
    assert head["CacheControl"] == "no-cache"


def test_zero_byte_object(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert put["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    got = s3.get_object(Bucket=bucket, Key="empty")
    assert got["Body"].read() == b""
    assert got["ContentLength"] == 0
    assert s3.head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Size"] == 0


def test_user_metadata_too_large(s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="m", Body=b"x", Metadata={"big": "v" * 2100})
    assert code_of(ei) == "MetadataTooLarge"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="m")


def test_missing_bucket_and_key_errors(s3, bucket):
    missing = fresh_name("none")
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=missing, Key="k", Body=b"x")
    assert code_of(ei) == "NoSuchBucket"
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=missing, Key="k")
    assert code_of(ei) == "NoSuchBucket"
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="nope")
    assert code_of(ei) == "NoSuchKey"
    err = ei.value.response["Error"]
    assert err["Key"] == "nope"
    # DeleteObject of an absent key succeeds, as in S3
    assert s3.delete_object(Bucket=bucket, Key="nope")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as ei:
        s3.delete_object(Bucket=missing, Key="k")
    assert code_of(ei) == "NoSuchBucket"


ODD_KEYS = [
    "with space", "plus+sign", "per%cent", "100% real+done", "ünïcødé/日本語 ключ",
    "../escape-attempt-dotdot", "../../../../../../tmp/escape-attempt-abs", "a/../b",
    "double//slash", "/leading-slash", "//two-leading", "trailing/", "./dot", ".", "..",
    "q?x#y&z=1", "tab\tand~tilde", "emoji-🙂", "semi;colon,comma:colon@at!bang$'()*",
    "back\\slash", "percent-2F-%2F-literal", "new\nline", "cr\r\nlf", "ctl\x01\x7f",
]


def test_odd_keys_round_trip_and_never_touch_the_filesystem(server, s3, bucket):
    marker = f"zzkeymarker{os.getpid()}"
    keys = ODD_KEYS + [k + "-" + marker for k in ODD_KEYS]
    parent = os.path.dirname(os.path.abspath(server.data_dir))
    before_parent = sorted(os.listdir(parent))
    cwd_before = set(os.listdir(os.getcwd()))
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=f"body-{i}".encode())
    for i, key in enumerate(keys):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == f"body-{i}".encode(), key
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(f"body-{i}")
    listed = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        listed += [o["Key"] for o in page.get("Contents", [])]
    assert listed == sorted(keys, key=lambda k: k.encode())
    listed_url = []
    for page in s3.get_paginator("list_objects").paginate(Bucket=bucket, EncodingType="url"):
        # an explicit EncodingType is not decoded by botocore: the keys come back encoded
        listed_url += [unquote_plus(o["Key"]) for o in page.get("Contents", [])]
    assert listed_url == listed

    # nothing was created next to the data directory, nor in the working directory
    assert sorted(os.listdir(parent)) == before_parent
    assert set(os.listdir(os.getcwd())) == cwd_before
    assert not os.path.exists("/tmp/escape-attempt-abs-" + marker)
    # and no file or directory inside the data directory is named after a key
    data_root = os.path.realpath(server.data_dir)
    for root, dirs, files in os.walk(data_root):
        assert os.path.realpath(root).startswith(data_root)
        for name in dirs + files:
            assert marker not in name, os.path.join(root, name)
            assert name not in ("escape-attempt-dotdot", "escape-attempt-abs", "with space", "b")

    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_key_length_limit_is_checked_before_storage(s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"x")
    assert code_of(ei) == "KeyTooLongError"
    assert status_of(ei) == 400
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="é" * 512 + "x", Body=b"x")  # 1025 bytes of UTF-8
    assert code_of(ei) == "KeyTooLongError"
    with pytest.raises(ClientError) as ei:
        s3.create_multipart_upload(Bucket=bucket, Key="k" * 1025)
    assert code_of(ei) == "KeyTooLongError"
    s3.put_object(Bucket=bucket, Key="k" * 400, Body=b"x")  # well inside every limit
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


@pytest.fixture
def own_server(tmp_path):
    """A server of its own: a failure here must not take the module's server down."""
    from tidestore.testing import start, stop
    srv = start(str(tmp_path / "data"))
    yield srv
    stop(srv)


def test_key_of_1024_bytes_is_stored(own_server):
    s3 = own_server.boto3_client()
    s3.create_bucket(Bucket="long-keys")
    for key in ("k" * 1024, "é" * 512, "p/" * 300):  # 1024, 1024 and 600 bytes
        s3.put_object(Bucket="long-keys", Key=key, Body=key[:3].encode())
        assert s3.get_object(Bucket="long-keys", Key=key)["Body"].read() == key[:3].encode()
    up = s3.create_multipart_upload(Bucket="long-keys", Key="m" * 1024)
    s3.abort_multipart_upload(Bucket="long-keys", Key="m" * 1024, UploadId=up["UploadId"])
    s3.put_object(Bucket="long-keys", Key="short", Body=b"still writable")
    # keys sharing their first 380+ bytes list in exact byte order, with delimiters
    base = "d/" * 200
    names = [base + s for s in ("b", "a/x", "a/y", "c" * 500, "a")]
    for name in names:
        s3.put_object(Bucket="long-keys", Key=name, Body=b"v")
    got = [o["Key"] for o in s3.list_objects_v2(Bucket="long-keys", Prefix=base)["Contents"]]
    assert got == sorted(names, key=str.encode)
    page = s3.list_objects_v2(Bucket="long-keys", Prefix=base, Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == [base + "a/"]
    assert [o["Key"] for o in page["Contents"]] == [base + "a", base + "b", base + "c" * 500]
    paged, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket="long-keys", Prefix=base, MaxKeys=2, **kw)
        paged += [o["Key"] for o in r["Contents"]]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert paged == sorted(names, key=str.encode)
    mp_key = base + "multipart"
    uid = s3.create_multipart_upload(Bucket="long-keys", Key=mp_key)["UploadId"]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket="long-keys")["Uploads"]] == [mp_key]
    part = s3.upload_part(Bucket="long-keys", Key=mp_key, UploadId=uid, PartNumber=1, Body=b"mp")
    s3.complete_multipart_upload(Bucket="long-keys", Key=mp_key, UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object(Bucket="long-keys", Key=mp_key)["Body"].read() == b"mp"
    for name in names + [mp_key]:
        s3.delete_object(Bucket="long-keys", Key=name)


def test_keys_over_the_store_limit_are_refused_cleanly_and_the_store_stays_healthy(own_server):
    from engine import Engine

    s3 = own_server.boto3_client()
    s3.create_bucket(Bucket="lim")
    limit = Engine.max_key_bytes("lim")
    s3.put_object(Bucket="lim", Key="k" * limit, Body=b"fits")
    for call in (lambda: s3.put_object(Bucket="lim", Key="k" * (limit + 1), Body=b"x"),
                 lambda: s3.create_multipart_upload(Bucket="lim", Key="é" * limit),
                 lambda: s3.copy_object(Bucket="lim", Key="c" * (limit + 1),
                                        CopySource={"Bucket": "lim", "Key": "k" * limit})):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] == "KeyTooLongError"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    s3.put_object(Bucket="lim", Key="still-writable", Body=b"yes")
    assert s3.get_object(Bucket="lim", Key="k" * limit)["Body"].read() == b"fits"


def test_delete_objects_verbose_and_quiet(s3, bucket):
    for k in ("a", "b", "c", "d", "e"):
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"},
                                                              {"Key": "absent"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["a", "absent", "b"]
    assert "Errors" not in out
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "c"}, {"Key": "d"}],
                                                   "Quiet": True})
    assert "Deleted" not in out
    assert "Errors" not in out
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["e"]


def test_delete_objects_reports_per_key_errors(s3, bucket):
    s3.put_object(Bucket=bucket, Key="keep", Body=b"1")
    s3.put_object(Bucket=bucket, Key="drop", Body=b"1")
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "drop"}, {"Key": "keep", "VersionId": "not-a-version"}, {"Key": "x" * 1025}],
        "Quiet": True})
    errors = {e["Key"]: e["Code"] for e in out["Errors"]}
    assert errors == {"keep": "NoSuchVersion", "x" * 1025: "KeyTooLongError"}
    assert "Deleted" not in out
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["keep"]


def test_delete_objects_missing_bucket_and_malformed_body(server, s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.delete_objects(Bucket=fresh_name("none"), Delete={"Objects": [{"Key": "a"}]})
    assert code_of(ei) == "NoSuchBucket"
    r = signed(server, "POST", f"/{bucket}?delete", body=b"<Delete><Object></Delete>")
    assert r.status == 400
    assert r.error()["Code"] == "MalformedXML"


def test_virtual_host_addressing(server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="dir/v host.txt", Body=b"vhost body")
    port = server.endpoint.rsplit(":", 1)[1]
    host = f"{bucket}.localhost:{port}"
    r = signed(server, "GET", "/dir/v%20host.txt", host=host)
    assert r.status == 200, r.body
    assert r.body == b"vhost body"
    r = signed(server, "PUT", "/made-by-vhost", body=b"vput", host=host)
    assert r.status == 200, r.body
    assert s3.get_object(Bucket=bucket, Key="made-by-vhost")["Body"].read() == b"vput"
    r = signed(server, "GET", "/?list-type=2&prefix=dir%2F", host=host)
    assert r.status == 200
    assert b"<Key>dir/v host.txt</Key>" in r.body
    # anonymous through the virtual host is still refused
    r = raw(server, "GET", "/dir/v%20host.txt", host=host)
    assert r.status == 403
    assert r.error()["Code"] == "AccessDenied"


def test_conditional_writes_are_compare_and_swap(server, s3, bucket):
    """If-None-Match: * (create only) and If-Match on PutObject and
    CompleteMultipartUpload, judged by the log entry when it is applied."""
    s3.put_object(Bucket=bucket, Key="keep", Body=b"first", IfNoneMatch="*")  # absent: created
    etag = s3.head_object(Bucket=bucket, Key="keep")["ETag"]
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="keep", Body=b"second", IfNoneMatch="*")
    assert (code_of(ei), status_of(ei)) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="keep", Body=b"second", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert (code_of(ei), status_of(ei)) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch=etag)
    assert (code_of(ei), status_of(ei)) == ("NoSuchKey", 404)
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"first"
    s3.put_object(Bucket=bucket, Key="keep", Body=b"second", IfMatch=etag)  # the right ETag: swapped
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"second"
    uid = s3.create_multipart_upload(Bucket=bucket, Key="keep")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="keep", UploadId=uid, PartNumber=1, Body=b"mp")
    parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=bucket, Key="keep", UploadId=uid, IfNoneMatch="*",
                                     MultipartUpload=parts)
    assert code_of(ei) == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"second"
    s3.complete_multipart_upload(Bucket=bucket, Key="keep", UploadId=uid, MultipartUpload=parts)
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"mp"
    r = signed(server, "PUT", f"/{bucket}/keep", body=b"x", headers={"If-None-Match": '"abc"'})
    assert r.status == 501


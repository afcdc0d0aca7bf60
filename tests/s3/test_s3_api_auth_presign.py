"""Authentication against a real `tidestore serve` process: anonymous requests, wrong
secret, unknown access key, clock skew, and presigned GET/PUT URLs used with plain
HTTP (urllib), including an expired one."""

import datetime as dt
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from test_s3_api_support import code_of, raw, signed, status_of


def client(server, access_key=None, secret_key=None):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=access_key or server.access_key,
                        aws_secret_access_key=secret_key or server.secret_key,
                        config=Config(signature_version="s3v4", retries={"max_attempts": 1}))


def http(method, url, data=None, headers=None):
    """(status, headers, body) for a plain urllib request; errors are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def error_code(body: bytes) -> str:
    return ET.fromstring(body).findtext("Code")


@pytest.mark.parametrize("method,target", [
    ("GET", "/"), ("GET", "/{b}"), ("GET", "/{b}/k"), ("PUT", "/{b}/anon"), ("DELETE", "/{b}/k"),
    ("PUT", "/anon-bucket-x"), ("POST", "/{b}?delete"), ("GET", "/{b}?list-type=2"),
])
def test_anonymous_requests_are_access_denied(server, s3, bucket, method, target):
    s3.put_object(Bucket=bucket, Key="k", Body=b"secret")
    r = raw(server, method, target.format(b=bucket), body=b"x" if method in ("PUT", "POST") else b"")
    assert r.status == 403
    assert r.header("Content-Type") == "application/xml"
    err = r.error()
    assert err["Code"] == "AccessDenied"
    assert err["Message"]
    assert err["RequestId"] == r.header("x-amz-request-id")
    # nothing was changed
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"secret"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="anon")
    assert "anon-bucket-x" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_anonymous_head_has_no_body(server, bucket):
    r = raw(server, "HEAD", f"/{bucket}/k")
    assert r.status == 403
    assert r.body == b""
    assert r.header("x-amz-request-id")


def test_wrong_secret_is_signature_does_not_match(server, bucket):
    bad = client(server, secret_key="not-the-secret-key-at-all-000000000000")
    for call in (lambda: bad.list_buckets(), lambda: bad.put_object(Bucket=bucket, Key="x", Body=b"x"),
                 lambda: bad.get_object(Bucket=bucket, Key="x")):
        with pytest.raises(ClientError) as ei:
            call()
        assert code_of(ei) == "SignatureDoesNotMatch"
        assert status_of(ei) == 403


def test_unknown_access_key_is_invalid_access_key_id(server, bucket):
    bad = client(server, access_key="AKIDUNKNOWN000000000")
    with pytest.raises(ClientError) as ei:
        bad.list_objects_v2(Bucket=bucket)
    assert code_of(ei) == "InvalidAccessKeyId"
    assert status_of(ei) == 403


@pytest.mark.parametrize("minutes", [-20, 20, -60 * 24])
def test_clock_skew_is_request_time_too_skewed(server, s3, bucket, minutes):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes)
    r = signed(server, "GET", f"/{bucket}?list-type=2", when=when)
    assert r.status == 403
    assert r.error()["Code"] == "RequestTimeTooSkewed"
    r = signed(server, "PUT", f"/{bucket}/skewed", body=b"late", when=when)
    assert r.error()["Code"] == "RequestTimeTooSkewed"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="skewed")


@pytest.mark.parametrize("minutes", [-10, 10])
def test_small_clock_skew_is_accepted(server, bucket, minutes):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes)
    r = signed(server, "GET", f"/{bucket}?list-type=2", when=when)
    assert r.status == 200, r.body


def test_tampered_request_is_refused(server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="a", Body=b"a")
    s3.put_object(Bucket=bucket, Key="b", Body=b"b")
    good = signed(server, "GET", f"/{bucket}/a")
    assert good.status == 200
    # replay the signature of /a against /b
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest("GET", f"{server.endpoint}/{bucket}/a")
    S3SigV4Auth(Credentials(server.access_key, server.secret_key), "s3", "us-east-1").add_auth(req)
    r = raw(server, "GET", f"/{bucket}/b", headers=dict(req.headers.items()))
    assert r.status == 403
    assert r.error()["Code"] == "SignatureDoesNotMatch"


def test_malformed_authorization_header(server, bucket):
    r = raw(server, "GET", f"/{bucket}", headers={"Authorization": "AWS4-HMAC-SHA256 garbage",
                                                 "x-amz-date": "20240101T000000Z"})
    assert r.status == 400
    assert r.error()["Code"] in ("AuthorizationHeaderMalformed", "InvalidArgument")


def test_presigned_get_with_plain_http(server, s3, bucket):
    data = b"presigned body \x00\xff"
    key = "pre/signed key+plus%.bin"
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/x-pre")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    assert "X-Amz-Signature=" in url
    status, headers, body = http("GET", url)
    assert status == 200
    assert body == data
    assert headers["Content-Type"] == "application/x-pre"
    # with a response-* override, which is part of the signed query
    url = s3.generate_presigned_url("get_object", ExpiresIn=300, Params={
        "Bucket": bucket, "Key": key, "ResponseContentDisposition": "attachment; filename=x.bin"})
    status, headers, body = http("GET", url)
    assert status == 200
    assert headers["Content-Disposition"] == "attachment; filename=x.bin"
    # HEAD with a URL presigned for head_object
    url = s3.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    status, headers, body = http("HEAD", url)
    assert status == 200
    assert headers["Content-Length"] == str(len(data))


def test_presigned_get_of_missing_key(s3, bucket):
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "absent"}, ExpiresIn=300)
    status, _, body = http("GET", url)
    assert status == 404
    assert error_code(body) == "NoSuchKey"


def test_presigned_put_with_plain_http(s3, bucket):
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "uploaded"}, ExpiresIn=300)
    data = bytes(range(256)) * 1000
    status, headers, body = http("PUT", url, data=data)
    assert status == 200, body
    assert headers["ETag"].strip('"') == __import__("hashlib").md5(data).hexdigest()
    assert s3.get_object(Bucket=bucket, Key="uploaded")["Body"].read() == data


def test_presigned_url_is_bound_to_its_method_and_key(s3, bucket):
    s3.put_object(Bucket=bucket, Key="a", Body=b"a")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "a"}, ExpiresIn=300)
    status, _, body = http("PUT", url, data=b"overwrite")
    assert status == 403
    assert error_code(body) == "SignatureDoesNotMatch"
    status, _, body = http("GET", url.replace(f"/{bucket}/a?", f"/{bucket}/b?"))
    assert status == 403
    assert error_code(body) == "SignatureDoesNotMatch"
    tampered = url.replace("X-Amz-Expires=300", "X-Amz-Expires=301")
    status, _, body = http("GET", tampered)
    assert status == 403
    assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == b"a"


def test_expired_presigned_url_is_access_denied(s3, bucket):
    s3.put_object(Bucket=bucket, Key="exp", Body=b"e")
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "exp"}, ExpiresIn=1)
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "exp2"}, ExpiresIn=1)
    time.sleep(2.1)
    status, headers, body = http("GET", get_url)
    assert status == 403
    assert error_code(body) == "AccessDenied"
    assert headers["x-amz-request-id"]
    status, _, body = http("PUT", put_url, data=b"late")
    assert status == 403
    assert error_code(body) == "AccessDenied"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="exp2")


def test_presigned_url_with_unknown_key_or_wrong_secret(server, bucket):
    bad = client(server, secret_key="wrong-secret-wrong-secret-wrong-secret00")
    url = bad.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
    status, _, body = http("GET", url)
    assert status == 403
    assert error_code(body) == "SignatureDoesNotMatch"
    bad = client(server, access_key="AKIDUNKNOWN000000000")
    url = bad.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
    status, _, body = http("GET", url)
    assert status == 403
    assert error_code(body) == "InvalidAccessKeyId"


def test_presigned_expiry_longer_than_a_week_is_refused(s3, bucket):
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"},
                                    ExpiresIn=604801)
    status, _, body = http("GET", url)
    assert status in (400, 403)
    assert error_code(body) in ("AuthorizationQueryParametersError", "AccessDenied")

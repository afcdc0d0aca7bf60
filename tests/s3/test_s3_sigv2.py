"""Signature V2: boto3's default presigned URLs, `aws s3 presign` (AWS CLI v1), and V2
header auth, against the real server with real clients."""

import shutil
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config


@pytest.fixture(scope="module")
def s3v2(server):
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=Config(signature_version="s3", retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def presigner(server):
    """boto3 with no signature_version: its presigned URLs are V2."""
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1")


def http(url, data=None, method="GET", headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_default_boto3_presigned_get_and_put_with_plain_http(s3, presigner, bucket):
    key = "dir/a b+c/ü.txt"
    s3.put_object(Bucket=bucket, Key=key, Body=b"presigned!")
    url = presigner.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    assert "AWSAccessKeyId=" in url  # really V2
    assert http(url)[:2] == (200, b"presigned!")
    url = presigner.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key, "ResponseContentType": "text/x-test"})
    status, body, headers = http(url)
    assert status == 200 and headers["Content-Type"] == "text/x-test"
    url = presigner.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up"})
    assert http(url, b"uploaded", "PUT", {"Content-Type": ""})[0] == 200
    assert s3.get_object(Bucket=bucket, Key="up")["Body"].read() == b"uploaded"


def test_v2_presigned_url_expiry_and_tampering(presigner, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    url = presigner.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1)
    time.sleep(2)
    status, body, _ = http(url)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body and b"expired" in body
    url = presigner.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    status, body, _ = http(url.replace(f"/{bucket}/k", f"/{bucket}/other"))
    assert status == 403 and b"SignatureDoesNotMatch" in body


def test_v2_header_auth_for_bucket_and_object_operations(s3v2):
    s3v2.create_bucket(Bucket="sigv2-bucket")
    s3v2.put_object(Bucket="sigv2-bucket", Key="v2 key", Body=b"x")
    assert s3v2.get_object(Bucket="sigv2-bucket", Key="v2 key")["Body"].read() == b"x"
    assert [o["Key"] for o in s3v2.list_objects(Bucket="sigv2-bucket", Prefix="v")["Contents"]] == ["v2 key"]
    s3v2.delete_object(Bucket="sigv2-bucket", Key="v2 key")
    s3v2.delete_bucket(Bucket="sigv2-bucket")


def test_v2_header_auth_with_a_wrong_secret_is_refused(server):
    bad = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                       aws_secret_access_key="wrong", region_name="us-east-1",
                       config=Config(signature_version="s3", retries={"max_attempts": 1}))
    with pytest.raises(bad.exceptions.ClientError) as err:
        bad.list_buckets()
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


@pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI is a test dependency")
def test_aws_cli_presign(server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="cli", Body=b"from the cli")
    out = subprocess.run(["aws", "s3", "presign", f"s3://{bucket}/cli", "--endpoint-url", server.endpoint],
                         env=server.env(), capture_output=True, text=True, check=True)
    assert http(out.stdout.strip())[:2] == (200, b"from the cli")

"""Routing and error documents against a real `tidestore serve` process: sub-resources
the server does not implement answer 501 and never fall through to another operation;
version-targeted requests never act on the current object; every error is S3 XML with
Code, Message and RequestId plus the x-amz-request-id header; HEAD errors have no body."""

import pytest
from botocore.exceptions import ClientError

from test_s3_api_support import code_of, fresh_name, raw, signed, status_of


def assert_s3_error(r, status, code):
    assert r.status == status, (r.status, r.body)
    assert r.header("x-amz-request-id")
    assert r.header("Content-Type") == "application/xml"
    err = r.error()
    assert err["Code"] == code, err
    assert err["Message"]
    assert err["RequestId"] == r.header("x-amz-request-id")
    return err


@pytest.fixture
def seeded(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"original", Metadata={"m": "1"})
    return bucket


UNSUPPORTED_BUCKET = [
    ("PUT", "tagging"), ("GET", "tagging"), ("DELETE", "tagging"),
    ("PUT", "acl"), ("GET", "acl"),
    ("PUT", "lifecycle"), ("GET", "lifecycle"), ("DELETE", "lifecycle"),
    ("PUT", "policy"), ("GET", "policy"), ("DELETE", "policy"),
    ("PUT", "cors"), ("GET", "cors"), ("DELETE", "cors"),
    ("PUT", "website"), ("DELETE", "website"), ("PUT", "encryption"), ("DELETE", "encryption"),
    ("PUT", "notification"), ("PUT", "replication"), ("PUT", "object-lock"), ("GET", "logging"),
    ("PUT", "publicAccessBlock"), ("DELETE", "ownershipControls"),
]


@pytest.mark.parametrize("method,sub", UNSUPPORTED_BUCKET)
def test_unsupported_bucket_subresources_are_501(server, s3, seeded, method, sub):
    bucket = seeded
    r = signed(server, method, f"/{bucket}?{sub}", body=b"<x/>" if method == "PUT" else b"")
    assert_s3_error(r, 501, "NotImplemented")
    # the bucket and its object are untouched (not a CreateBucket / DeleteBucket / ListObjects)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"original"


@pytest.mark.parametrize("method,sub", [
    ("GET", "acl"), ("PUT", "acl"), ("GET", "tagging"), ("PUT", "tagging"), ("DELETE", "tagging"),
    ("GET", "attributes"), ("POST", "restore"), ("POST", "select"), ("GET", "torrent"),
    ("PUT", "retention"), ("GET", "legal-hold"),
])
def test_unsupported_object_subresources_are_501(server, s3, seeded, method, sub):
    bucket = seeded
    r = signed(server, method, f"/{bucket}/k?{sub}", body=b"<x/>" if method in ("PUT", "POST") else b"")
    assert_s3_error(r, 501, "NotImplemented")
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"original"  # not a PutObject, not a DeleteObject
    assert got["Metadata"] == {"m": "1"}


def test_put_bucket_tagging_does_not_create_a_bucket(server, s3):
    name = fresh_name("tag")
    r = signed(server, "PUT", f"/{name}?tagging", body=b"<Tagging><TagSet/></Tagging>")
    assert_s3_error(r, 501, "NotImplemented")
    with pytest.raises(ClientError) as ei:
        s3.head_bucket(Bucket=name)
    assert status_of(ei) == 404


def test_unsupported_through_boto3(s3, seeded):
    bucket = seeded
    calls = [
        lambda: s3.get_object_acl(Bucket=bucket, Key="k"),
        lambda: s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}),
        lambda: s3.get_object_tagging(Bucket=bucket, Key="k"),
        lambda: s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}),
        lambda: s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}),
        lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket),
        lambda: s3.put_bucket_policy(Bucket=bucket, Policy="{}"),
        lambda: s3.delete_bucket_policy(Bucket=bucket),
        lambda: s3.get_bucket_cors(Bucket=bucket),
        lambda: s3.delete_bucket_cors(Bucket=bucket),
        lambda: s3.get_bucket_acl(Bucket=bucket),
    ]
    for call in calls:
        with pytest.raises(ClientError) as ei:
            call()
        assert code_of(ei) == "NotImplemented"
        assert status_of(ei) == 501
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"original"


def test_version_targeted_requests_never_touch_the_current_object(server, s3, seeded):
    """Versioning is off: the only version of an object is "null". A request for any
    other version must not be answered with, or act on, the current object."""
    bucket = seeded
    for method in ("GET", "DELETE"):
        r = signed(server, method, f"/{bucket}/k?versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY")
        assert_s3_error(r, 404, "NoSuchVersion")
    r = signed(server, "HEAD", f"/{bucket}/k?versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY")
    assert r.status == 404
    assert r.body == b""
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"original"
    with pytest.raises(ClientError) as ei:
        s3.delete_object(Bucket=bucket, Key="k", VersionId="some-old-version")
    assert code_of(ei) == "NoSuchVersion"
    assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == 8
    # the null version is the object itself
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"original"
    assert s3.head_object(Bucket=bucket, Key="k", VersionId="null")["ContentLength"] == 8
    s3.delete_object(Bucket=bucket, Key="k", VersionId="null")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="k")


@pytest.mark.parametrize("method,target,status,code", [
    ("GET", "/{b}/missing", 404, "NoSuchKey"),
    ("GET", "/{b}/new%0Aline", 404, "NoSuchKey"),
    ("GET", "/{nb}/cr%0D%0Alf", 404, "NoSuchBucket"),
    ("GET", "/{nb}/k", 404, "NoSuchBucket"),
    ("GET", "/{nb}", 404, "NoSuchBucket"),
    ("DELETE", "/{nb}", 404, "NoSuchBucket"),
    ("PATCH", "/{b}/k", 405, "MethodNotAllowed"),
    ("POST", "/{b}/k", 405, "MethodNotAllowed"),
    ("GET", "/{b}/k?uploads", 405, "MethodNotAllowed"),
    ("PUT", "/{b}/k?partNumber=1", 400, "InvalidRequest"),
    ("GET", "/{b}/bad%FFutf8", 400, "InvalidURI"),
    ("GET", "/Bad_Bucket/k", 400, "InvalidBucketName"),
    ("GET", "/{b}?list-type=2&max-keys=-1", 400, "InvalidArgument"),
    ("GET", "/{b}?list-type=2&continuation-token=%25%25%25", 400, "InvalidArgument"),
    ("GET", "/{b}?encoding-type=base64", 400, "InvalidArgument"),
    ("GET", "/{b}/k?partNumber=0", 400, "InvalidArgument"),
    ("DELETE", "/{b}/k?uploadId=nope", 404, "NoSuchUpload"),
])
def test_error_documents(server, seeded, method, target, status, code):
    target = target.format(b=seeded, nb=fresh_name("none"))
    r = signed(server, method, target, body=b"x" if method in ("PUT", "POST", "PATCH") else b"")
    err = assert_s3_error(r, status, code)
    assert err.get("Resource", "").startswith("/")
    assert r.header("x-amz-id-2")


def test_error_documents_carry_the_resource_names(server, seeded):
    r = signed(server, "GET", f"/{seeded}/missing/key")
    err = assert_s3_error(r, 404, "NoSuchKey")
    assert err["Key"] == "missing/key"
    assert err["Resource"] == f"/{seeded}/missing/key"
    name = fresh_name("none")
    err = assert_s3_error(signed(server, "GET", f"/{name}?list-type=2"), 404, "NoSuchBucket")
    assert err["BucketName"] == name


@pytest.mark.parametrize("target,status", [
    ("/{b}/missing", 404), ("/{nb}", 404), ("/{nb}/k", 404), ("/{b}/k?acl", 501),
])
def test_head_errors_have_no_body(server, seeded, target, status):
    r = signed(server, "HEAD", target.format(b=seeded, nb=fresh_name("none")))
    assert r.status == status
    assert r.body == b""
    assert r.header("x-amz-request-id")


def test_request_ids_are_unique(server, seeded):
    ids = {signed(server, "GET", f"/{seeded}/missing").header("x-amz-request-id") for _ in range(20)}
    assert len(ids) == 20
    ok = signed(server, "GET", f"/{seeded}/k")
    assert ok.status == 200
    assert ok.header("x-amz-request-id")


def test_service_level_methods(server):
    r = signed(server, "GET", "/")
    assert r.status == 200
    assert r.xml().tag.endswith("ListAllMyBucketsResult")
    assert_s3_error(signed(server, "DELETE", "/"), 405, "MethodNotAllowed")
    r = signed(server, "HEAD", "/")
    assert r.status == 405
    assert r.body == b""


def test_anonymous_error_is_xml(server, seeded):
    r = raw(server, "GET", f"/{seeded}/k?acl")
    assert_s3_error(r, 403, "AccessDenied")  # authentication comes before routing


@pytest.mark.parametrize("method,sub", [
    ("PUT", "uploads"), ("PUT", "delete"), ("PUT", "location"), ("PUT", "versions"),
    ("PUT", "versioning"), ("GET", "versioning"), ("GET", "location"), ("GET", "versions"),
    ("HEAD", "versioning"), ("DELETE", "versions"), ("DELETE", "versioning"), ("DELETE", "location"),
    ("DELETE", "uploads"),
])
def test_bucket_subresources_on_an_object_never_fall_through(server, s3, seeded, method, sub):
    """`PUT /b/k?uploads` is not a PutObject and `DELETE /b/k?versioning` is not a
    DeleteObject: a sub-resource the object operations do not define is refused."""
    bucket = seeded
    r = signed(server, method, f"/{bucket}/k?{sub}", body=b"replaced" if method == "PUT" else b"")
    assert r.status == 405, (r.status, r.body)
    if method != "HEAD":
        assert_s3_error(r, 405, "MethodNotAllowed")
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"original"
    assert got["Metadata"] == {"m": "1"}

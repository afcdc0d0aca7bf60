"""Bucket operations against a real `tidestore serve` process, through boto3:
ListBuckets, CreateBucket, HeadBucket, DeleteBucket, GetBucketLocation,
GetBucketVersioning, ListObjectVersions."""

import pytest
from botocore.exceptions import ClientError
from botocore.handlers import validate_bucket_name

from test_s3_api_support import code_of, fresh_name, signed, status_of


def test_list_buckets_shows_created_buckets_with_owner_and_dates(s3):
    names = [fresh_name("ls") for _ in range(3)]
    for n in names:
        s3.create_bucket(Bucket=n)
    out = s3.list_buckets()
    listed = [b["Name"] for b in out["Buckets"]]
    for n in names:
        assert n in listed
    assert listed == sorted(listed)
    assert out["Owner"]["ID"]
    for b in out["Buckets"]:
        assert b["CreationDate"].year >= 2024


def test_create_bucket_returns_location_and_is_headable(s3):
    name = fresh_name()
    out = s3.create_bucket(Bucket=name)
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert out["Location"] == "/" + name
    head = s3.head_bucket(Bucket=name)
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"


@pytest.mark.parametrize("bad", [
    "ab",                      # too short
    "a" * 64,                  # too long
    "UpperCase",               # capitals
    "under_score",
    "-leadinghyphen",
    "trailinghyphen-",
    "two..dots",
    "dot.-hyphen",
    "192.168.1.1",             # an IP address
    "xn--punycode",            # reserved prefix
    "name-s3alias",            # reserved suffix
])
def test_create_bucket_invalid_names(server, bad):
    # botocore validates some names client side; switch that off to reach the server
    s3 = server.boto3_client()
    s3.meta.events.unregister("before-parameter-build.s3", validate_bucket_name)
    with pytest.raises(ClientError) as ei:
        s3.create_bucket(Bucket=bad)
    assert code_of(ei) == "InvalidBucketName"
    assert status_of(ei) == 400
    assert bad not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_create_existing_bucket_is_already_owned_by_you(s3):
    name = fresh_name()
    s3.create_bucket(Bucket=name)
    with pytest.raises(ClientError) as ei:
        s3.create_bucket(Bucket=name)
    assert code_of(ei) == "BucketAlreadyOwnedByYou"
    assert status_of(ei) == 409


def test_create_bucket_location_constraint(s3):
    name = fresh_name("loc")
    # the server's own region is accepted, explicitly
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-east-1"})
    # us-east-1 is reported as an empty (null) LocationConstraint, as S3 does
    assert s3.get_bucket_location(Bucket=name).get("LocationConstraint") in (None, "")
    with pytest.raises(ClientError) as ei:
        s3.create_bucket(Bucket=fresh_name("loc"),
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert code_of(ei) == "InvalidLocationConstraint"
    assert status_of(ei) == 400


def test_create_bucket_malformed_configuration(server, s3):
    name = fresh_name("xml")
    r = signed(server, "PUT", f"/{name}", body=b"<not-xml")
    assert r.status == 400, r.body
    assert r.error()["Code"] == "MalformedXML"
    with pytest.raises(ClientError):
        s3.head_bucket(Bucket=name)


def test_head_bucket_missing_is_404(s3):
    with pytest.raises(ClientError) as ei:
        s3.head_bucket(Bucket=fresh_name("missing"))
    assert status_of(ei) == 404
    assert code_of(ei) in ("404", "NoSuchBucket")


def test_delete_bucket(s3):
    name = fresh_name("del")
    s3.create_bucket(Bucket=name)
    out = s3.delete_bucket(Bucket=name)
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as ei:
        s3.head_bucket(Bucket=name)
    assert status_of(ei) == 404
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_delete_bucket_not_empty_then_empty(s3):
    name = fresh_name("full")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    with pytest.raises(ClientError) as ei:
        s3.delete_bucket(Bucket=name)
    assert code_of(ei) == "BucketNotEmpty"
    assert status_of(ei) == 409
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)


def test_delete_bucket_with_pending_multipart_upload_drops_the_upload(s3):
    # as in S3, in-progress uploads do not keep a bucket alive; they go with it
    name = fresh_name("mpu")
    s3.create_bucket(Bucket=name)
    up = s3.create_multipart_upload(Bucket=name, Key="big")
    s3.upload_part(Bucket=name, Key="big", UploadId=up["UploadId"], PartNumber=1, Body=b"p")
    s3.delete_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=name)
    with pytest.raises(ClientError) as ei:
        s3.list_parts(Bucket=name, Key="big", UploadId=up["UploadId"])
    assert code_of(ei) == "NoSuchUpload"


def test_delete_missing_bucket(s3):
    with pytest.raises(ClientError) as ei:
        s3.delete_bucket(Bucket=fresh_name("none"))
    assert code_of(ei) == "NoSuchBucket"
    assert status_of(ei) == 404


def test_recreate_after_delete(s3):
    name = fresh_name("again")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"one")
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    assert s3.list_objects_v2(Bucket=name)["KeyCount"] == 0


def test_get_bucket_location(s3, bucket):
    out = s3.get_bucket_location(Bucket=bucket)
    assert out.get("LocationConstraint") in (None, "")
    with pytest.raises(ClientError) as ei:
        s3.get_bucket_location(Bucket=fresh_name("none"))
    assert code_of(ei) == "NoSuchBucket"


def test_get_bucket_versioning_is_unset(s3, bucket):
    out = s3.get_bucket_versioning(Bucket=bucket)
    assert "Status" not in out
    assert "MFADelete" not in out
    with pytest.raises(ClientError) as ei:
        s3.get_bucket_versioning(Bucket=fresh_name("none"))
    assert code_of(ei) == "NoSuchBucket"


def test_put_bucket_versioning_is_not_implemented(s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert code_of(ei) == "NotImplemented"
    assert status_of(ei) == 501
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)


def test_list_object_versions_lists_current_objects_with_null_version(s3, bucket):
    bodies = {"a": b"1", "b/c": b"22", "b/d": b"333", "e": b""}
    etags = {}
    for k, v in bodies.items():
        etags[k] = s3.put_object(Bucket=bucket, Key=k, Body=v)["ETag"]
    s3.put_object(Bucket=bucket, Key="a", Body=b"overwritten")  # only the latest is listed
    etags["a"] = s3.head_object(Bucket=bucket, Key="a")["ETag"]
    out = s3.list_object_versions(Bucket=bucket)
    versions = out["Versions"]
    assert [v["Key"] for v in versions] == ["a", "b/c", "b/d", "e"]
    for v in versions:
        assert v["VersionId"] == "null"
        assert v["IsLatest"] is True
        assert v["ETag"] == etags[v["Key"]]
    assert {v["Key"]: v["Size"] for v in versions} == {"a": 11, "b/c": 2, "b/d": 3, "e": 0}
    assert "DeleteMarkers" not in out
    assert out["IsTruncated"] is False

    # prefix + delimiter, and pagination by key marker
    out = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [v["Key"] for v in out["Versions"]] == ["a", "e"]
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["b/"]
    out = s3.list_object_versions(Bucket=bucket, Prefix="b/")
    assert [v["Key"] for v in out["Versions"]] == ["b/c", "b/d"]
    seen = []
    kwargs = {}
    while True:
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=1, **kwargs)
        seen += [v["Key"] for v in page.get("Versions", [])]
        if not page["IsTruncated"]:
            break
        assert page["NextVersionIdMarker"] == "null"
        kwargs = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    assert seen == ["a", "b/c", "b/d", "e"]

    # deleting leaves no version (and no delete marker) behind: versioning is off
    s3.delete_object(Bucket=bucket, Key="e")
    out = s3.list_object_versions(Bucket=bucket)
    assert [v["Key"] for v in out["Versions"]] == ["a", "b/c", "b/d"]
    assert "DeleteMarkers" not in out


def test_get_object_with_null_version_id(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"v"


def test_list_object_versions_missing_bucket(s3):
    with pytest.raises(ClientError) as ei:
        s3.list_object_versions(Bucket=fresh_name("none"))
    assert code_of(ei) == "NoSuchBucket"

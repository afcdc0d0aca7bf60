"""S3 XML: bodies serialized by botocore parse; our responses are read back by
a real botocore client (its RestXML parser and S3 after-call handlers,
including the encoding-type=url decoding it asks for by default)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from botocore.parsers import RestXMLParser

from s3front.errors import S3Error
from s3front.xml_io import (
    BucketEntry,
    CompletedPart,
    DeletedEntry,
    DeleteErrorEntry,
    DeleteMarkerEntry,
    ObjectEntry,
    ObjectIdentifier,
    Owner,
    PartEntry,
    UploadEntry,
    complete_multipart_upload_result,
    copy_object_result,
    copy_part_result,
    delete_result,
    format_time,
    initiate_multipart_upload_result,
    list_buckets_result,
    list_multipart_uploads_result,
    list_objects_v1_result,
    list_objects_v2_result,
    list_parts_result,
    list_versions_result,
    location_constraint,
    parse_complete_multipart_upload,
    parse_create_bucket_configuration,
    parse_delete,
    versioning_configuration,
)
from s3front_botocore_util import make_client

T0 = datetime(2026, 11, 22, 3, 4, 5, 678_901, tzinfo=timezone.utc)
OWNER = Owner("owner-id-1", "tide")
KEYS = [
    "plain",
    "with space",
    "plus+sign",
    "percent%25 and %",
    "amp&lt<gt>\"quote'",
    "unicode/ключ/日本語",
    "../dots/./x",
    "a//b",
    "tab\tnewline\ncr\rend",
    "ctrl\x01\x1f",
    "~tilde?query#frag",
]


def _xml_error(fn, *args) -> S3Error:
    with pytest.raises(S3Error) as info:
        fn(*args)
    return info.value


# --- parsing requests serialized by botocore --------------------------------------


def test_parse_complete_multipart_upload_from_botocore():
    client, rec = make_client()
    rec.respond(complete_multipart_upload_result(location="l", bucket="b", key="k", etag="e-2"))
    client.complete_multipart_upload(
        Bucket="b",
        Key="k",
        UploadId="u",
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": '"aaa"', "ChecksumCRC32": "AAAAAA=="},
                {"PartNumber": 2, "ETag": "bbb"},
                {"PartNumber": 10000, "ETag": '"ccc"', "ChecksumSHA256": "x" * 44},
            ]
        },
    )
    parts = parse_complete_multipart_upload(rec.last.body)
    assert parts == [
        CompletedPart(1, "aaa", {"CRC32": "AAAAAA=="}),
        CompletedPart(2, "bbb", {}),
        CompletedPart(10000, "ccc", {"SHA256": "x" * 44}),
    ]


def test_parse_complete_multipart_upload_errors():
    def body(parts_xml: str, ns=True) -> bytes:
        xmlns = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' if ns else ""
        return f"<CompleteMultipartUpload{xmlns}>{parts_xml}</CompleteMultipartUpload>".encode()

    part = "<Part><PartNumber>{}</PartNumber><ETag>e</ETag></Part>"
    assert len(parse_complete_multipart_upload(body(part.format(1), ns=False))) == 1
    assert _xml_error(parse_complete_multipart_upload, body("")).code == "MalformedXML"
    assert _xml_error(parse_complete_multipart_upload, body(part.format("x"))).code == "MalformedXML"
    assert _xml_error(parse_complete_multipart_upload, body("<Part><PartNumber>1</PartNumber></Part>")).code == "MalformedXML"
    assert _xml_error(parse_complete_multipart_upload, body(part.format(0))).code == "InvalidArgument"
    assert _xml_error(parse_complete_multipart_upload, body(part.format(10001))).code == "InvalidArgument"
    assert _xml_error(parse_complete_multipart_upload, body(part.format(2) + part.format(1))).code == "InvalidPartOrder"
    assert _xml_error(parse_complete_multipart_upload, body(part.format(2) + part.format(2))).code == "InvalidPartOrder"
    assert _xml_error(parse_complete_multipart_upload, b"<Wrong/>").code == "MalformedXML"
    assert _xml_error(parse_complete_multipart_upload, b"<CompleteMultipartUpload>").code == "MalformedXML"
    assert _xml_error(parse_complete_multipart_upload, b"").code == "MalformedXML"


def test_parse_delete_from_botocore():
    client, rec = make_client()
    rec.respond(delete_result([DeletedEntry(k) for k in KEYS[:3]]))
    objects = [{"Key": k} for k in KEYS if "\r" not in k and "\x01" not in k]
    objects.append({"Key": "versioned", "VersionId": "v1"})
    client.delete_objects(Bucket="b", Delete={"Objects": objects, "Quiet": True})
    request = parse_delete(rec.last.body)
    assert request.quiet is True
    assert request.objects[:-1] == [ObjectIdentifier(o["Key"]) for o in objects[:-1]]
    assert request.objects[-1] == ObjectIdentifier("versioned", "v1")
    client.delete_objects(Bucket="b", Delete={"Objects": [{"Key": " padded "}]})
    request = parse_delete(rec.last.body)
    assert request.quiet is False and request.objects == [ObjectIdentifier(" padded ")]


def test_parse_delete_limits_and_errors():
    def body(n: int, quiet: str = "") -> bytes:
        objs = "".join(f"<Object><Key>k{i}</Key></Object>" for i in range(n))
        return f"<Delete>{quiet}{objs}</Delete>".encode()

    assert len(parse_delete(body(1000)).objects) == 1000
    assert _xml_error(parse_delete, body(1001)).code == "MalformedXML"
    assert _xml_error(parse_delete, body(0)).code == "MalformedXML"
    assert _xml_error(parse_delete, body(1, "<Quiet>maybe</Quiet>")).code == "MalformedXML"
    assert parse_delete(body(1, "<Quiet>TRUE</Quiet>")).quiet
    assert _xml_error(parse_delete, b"<Delete><Object><VersionId>1</VersionId></Object></Delete>").code == "MalformedXML"
    assert _xml_error(parse_delete, b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>").code == "MalformedXML"
    big = b"<Delete>" + b"<Object><Key>" + b"k" * (3 * 1024 * 1024) + b"</Key></Object></Delete>"
    assert _xml_error(parse_delete, big).code == "MaxMessageLengthExceeded"
    # 1000 keys of 1024 bytes fit under the cap
    full = "".join(f"<Object><Key>{i:04d}{'k' * 1020}</Key></Object>" for i in range(1000))
    assert len(parse_delete(f"<Delete>{full}</Delete>".encode()).objects) == 1000


@pytest.mark.parametrize(
    "evil",
    [
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "boom">]><Delete><Object><Key>&x;</Key></Object></Delete>',
        b'<?xml version="1.0"?><!DOCTYPE d SYSTEM "http://example.invalid/d.dtd"><Delete/>',
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><Delete><Object><Key>&x;</Key></Object></Delete>',
        b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><Delete><Object><Key>&lol2;</Key></Object></Delete>',
    ],
)
def test_dtds_and_entities_are_refused(evil):
    assert _xml_error(parse_delete, evil).code == "MalformedXML"


def test_parse_create_bucket_configuration_from_botocore():
    client, rec = make_client(region="eu-west-3")
    client.create_bucket(Bucket="b", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    assert parse_create_bucket_configuration(rec.last.body) == "eu-west-3"
    client, rec = make_client(region="us-east-1")
    client.create_bucket(Bucket="b")
    assert parse_create_bucket_configuration(rec.last.body) is None
    assert parse_create_bucket_configuration(b"<CreateBucketConfiguration/>") is None
    assert _xml_error(parse_create_bucket_configuration, b"<Nope/>").code == "MalformedXML"


# --- responses read by botocore --------------------------------------------------------


def _objects(keys, owner=None):
    return [
        ObjectEntry(k, T0 + timedelta(seconds=i), f"{i:032x}", i * 10, owner=owner)
        for i, k in enumerate(keys)
    ]


def test_list_objects_v2_with_url_encoding_roundtrip():
    client, rec = make_client()
    prefixes = ["dir one/", "ü+/"]
    body_for = lambda encoding: list_objects_v2_result(  # noqa: E731
        bucket="b",
        prefix="p r+e",
        delimiter="/",
        max_keys=50,
        is_truncated=True,
        contents=_objects(KEYS, OWNER),
        common_prefixes=prefixes,
        continuation_token="tok/1+2",
        next_continuation_token="tok/3+4=",
        start_after="s a+",
        encoding_type=encoding,
        fetch_owner=True,
    )
    rec.respond(body_for("url"))
    out = client.list_objects_v2(Bucket="b", Prefix="p r+e", Delimiter="/", FetchOwner=True)
    assert "encoding-type=url" in rec.last.raw_query  # botocore asks for it by default
    assert [c["Key"] for c in out["Contents"]] == KEYS
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == prefixes
    assert (out["Prefix"], out["Delimiter"], out["StartAfter"]) == ("p r+e", "/", "s a+")
    assert out["ContinuationToken"] == "tok/1+2" and out["NextContinuationToken"] == "tok/3+4="
    assert out["KeyCount"] == len(KEYS) + 2 and out["MaxKeys"] == 50 and out["IsTruncated"] is True
    first = out["Contents"][1]
    assert first["ETag"] == '"%032x"' % 1 and first["Size"] == 10
    assert first["LastModified"] == T0.replace(microsecond=678_000) + timedelta(seconds=1)
    assert first["StorageClass"] == "STANDARD"
    assert first["Owner"] == {"ID": "owner-id-1", "DisplayName": "tide"}
    # without url encoding, the keys travel as XML text (control chars excepted)
    plain_keys = [k for k in KEYS if "\x01" not in k]
    rec.respond(
        list_objects_v2_result(bucket="b", contents=_objects(plain_keys), encoding_type=None)
    )
    out = client.list_objects_v2(Bucket="b", EncodingType="url")  # user-set: not decoded
    assert [c["Key"] for c in out["Contents"]] == plain_keys
    assert "Owner" not in out["Contents"][0]


def test_list_objects_v1_roundtrip():
    client, rec = make_client()
    rec.respond(
        list_objects_v1_result(
            bucket="b",
            prefix="pre",
            marker="m a+",
            next_marker="n/é",
            delimiter="/",
            max_keys=3,
            is_truncated=True,
            contents=_objects(KEYS, OWNER),
            common_prefixes=["c p/"],
            encoding_type="url",
        )
    )
    out = client.list_objects(Bucket="b", Marker="m a+")
    assert [c["Key"] for c in out["Contents"]] == KEYS
    assert (out["Marker"], out["NextMarker"], out["Delimiter"]) == ("m a+", "n/é", "/")
    assert out["CommonPrefixes"] == [{"Prefix": "c p/"}]
    assert out["Contents"][0]["Owner"]["ID"] == "owner-id-1"
    assert out["IsTruncated"] is True and out["MaxKeys"] == 3


def test_list_versions_roundtrip():
    client, rec = make_client()
    rec.respond(
        list_versions_result(
            bucket="b",
            prefix="",
            key_marker="k m",
            versions=_objects(KEYS, OWNER),
            delete_markers=[DeleteMarkerEntry("gone key", "v9", T0, False, OWNER)],
            common_prefixes=["x/"],
            delimiter="/",
            next_key_marker="n k",
            next_version_id_marker="null",
            is_truncated=True,
            encoding_type="url",
        )
    )
    out = client.list_object_versions(Bucket="b")
    assert [v["Key"] for v in out["Versions"]] == KEYS
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in out["Versions"])
    assert out["DeleteMarkers"][0]["Key"] == "gone key"
    assert out["DeleteMarkers"][0]["IsLatest"] is False
    assert (out["KeyMarker"], out["NextKeyMarker"], out["NextVersionIdMarker"]) == ("k m", "n k", "null")


def test_list_buckets_roundtrip():
    client, rec = make_client()
    rec.respond(
        list_buckets_result(
            OWNER, [BucketEntry("alpha", T0, "us-east-1"), BucketEntry("beta", 0.0)]
        )
    )
    out = client.list_buckets()
    assert [b["Name"] for b in out["Buckets"]] == ["alpha", "beta"]
    assert out["Buckets"][1]["CreationDate"] == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert out["Buckets"][0]["BucketRegion"] == "us-east-1"
    assert out["Owner"] == {"ID": "owner-id-1", "DisplayName": "tide"}
    rec.respond(list_buckets_result(OWNER, []))
    assert client.list_buckets()["Buckets"] == []


def test_multipart_responses_roundtrip():
    client, rec = make_client()
    rec.respond(initiate_multipart_upload_result("b", "k e&y", "up/1+2"))
    out = client.create_multipart_upload(Bucket="b", Key="k e&y")
    assert (out["Bucket"], out["Key"], out["UploadId"]) == ("b", "k e&y", "up/1+2")

    rec.respond(
        complete_multipart_upload_result(
            location="http://127.0.0.1:9000/b/k", bucket="b", key="k", etag="abc-3",
            checksums={"CRC32": "AAAAAA=="}, checksum_type="COMPOSITE",
        )
    )
    out = client.complete_multipart_upload(
        Bucket="b", Key="k", UploadId="u", MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": "x"}]}
    )
    assert out["ETag"] == '"abc-3"' and out["Location"] == "http://127.0.0.1:9000/b/k"
    assert out["ChecksumCRC32"] == "AAAAAA==" and out["ChecksumType"] == "COMPOSITE"

    parts = [PartEntry(i, T0, f"e{i}", 5 * 1024 * 1024, {"CRC32C": "AAAAAA=="}) for i in (1, 2, 3)]
    rec.respond(
        list_parts_result(
            bucket="b", key="k", upload_id="u", parts=parts, part_number_marker=0,
            next_part_number_marker=3, max_parts=3, is_truncated=True, owner=OWNER,
        )
    )
    out = client.list_parts(Bucket="b", Key="k", UploadId="u")
    assert [p["PartNumber"] for p in out["Parts"]] == [1, 2, 3]
    assert out["Parts"][0]["ETag"] == '"e1"' and out["Parts"][0]["Size"] == 5 * 1024 * 1024
    assert out["Parts"][0]["ChecksumCRC32C"] == "AAAAAA=="
    assert out["NextPartNumberMarker"] == 3 and out["IsTruncated"] is True
    assert out["Initiator"]["ID"] == out["Owner"]["ID"] == "owner-id-1"

    uploads = [UploadEntry(k, f"u{i}", T0, owner=OWNER) for i, k in enumerate(KEYS[:4])]
    rec.respond(
        list_multipart_uploads_result(
            bucket="b", uploads=uploads, common_prefixes=["d/"], delimiter="/",
            next_key_marker="nk", next_upload_id_marker="nu", is_truncated=True,
        )
    )
    out = client.list_multipart_uploads(Bucket="b")
    assert [u["Key"] for u in out["Uploads"]] == KEYS[:4]
    assert out["Uploads"][0]["Initiated"] == T0.replace(microsecond=678_000)
    assert out["CommonPrefixes"] == [{"Prefix": "d/"}]
    assert (out["NextKeyMarker"], out["NextUploadIdMarker"]) == ("nk", "nu")


def test_copy_results_roundtrip():
    client, rec = make_client()
    rec.respond(copy_object_result("etag1", T0, {"SHA256": "s" * 44}))
    out = client.copy_object(Bucket="b", Key="k", CopySource="src/key")
    assert out["CopyObjectResult"]["ETag"] == '"etag1"'
    assert out["CopyObjectResult"]["ChecksumSHA256"] == "s" * 44
    rec.respond(copy_part_result('"etag2"', T0))
    out = client.upload_part_copy(Bucket="b", Key="k", CopySource="src/key", UploadId="u", PartNumber=2)
    assert out["CopyPartResult"]["ETag"] == '"etag2"'
    assert out["CopyPartResult"]["LastModified"] == T0.replace(microsecond=678_000)


def test_delete_result_roundtrip_and_quiet():
    client, rec = make_client()
    deleted = [DeletedEntry("a b"), DeletedEntry("v", "v1", True, "dm1")]
    errors = [DeleteErrorEntry("locked&", "AccessDenied", "Access Denied", "v2")]
    rec.respond(delete_result(deleted, errors))
    out = client.delete_objects(Bucket="b", Delete={"Objects": [{"Key": "a b"}]})
    assert out["Deleted"][0] == {"Key": "a b"}
    assert out["Deleted"][1] == {
        "Key": "v", "VersionId": "v1", "DeleteMarker": True, "DeleteMarkerVersionId": "dm1"
    }
    assert out["Errors"] == [
        {"Key": "locked&", "VersionId": "v2", "Code": "AccessDenied", "Message": "Access Denied"}
    ]
    rec.respond(delete_result(deleted, [], quiet=True))
    out = client.delete_objects(Bucket="b", Delete={"Objects": [{"Key": "a"}], "Quiet": True})
    assert "Deleted" not in out and "Errors" not in out


def test_location_and_versioning():
    client, rec = make_client()
    rec.respond(location_constraint("eu-west-3"))
    assert client.get_bucket_location(Bucket="b")["LocationConstraint"] == "eu-west-3"
    rec.respond(location_constraint("us-east-1"))
    assert client.get_bucket_location(Bucket="b").get("LocationConstraint") is None
    rec.respond(versioning_configuration())
    out = client.get_bucket_versioning(Bucket="b")
    assert "Status" not in out
    rec.respond(versioning_configuration("Suspended"))
    assert client.get_bucket_versioning(Bucket="b")["Status"] == "Suspended"


def test_output_shapes_with_restxml_parser_directly():
    client, _ = make_client()
    model = client.meta.service_model.operation_model("ListObjectsV2")
    body = list_objects_v2_result(bucket="b", contents=_objects(["x"]))
    parsed = RestXMLParser().parse(
        {"body": body, "headers": {}, "status_code": 200}, model.output_shape
    )
    assert parsed["Name"] == "b" and parsed["Contents"][0]["Key"] == "x"


def test_format_time():
    assert format_time(T0) == "2026-11-22T03:04:05.678Z"
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000Z"
    tz = timezone(timedelta(hours=2))
    assert format_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)) == "2026-01-02T01:04:05.000Z"


def test_listing_1000_keys_is_cheap():
    entries = _objects([f"prefix/key-{i:06d}.bin" for i in range(1000)], OWNER)
    start = time.perf_counter()
    for _ in range(10):
        body = list_objects_v2_result(bucket="b", contents=entries, encoding_type="url", fetch_owner=True)
    per_call = (time.perf_counter() - start) / 10
    assert body.count(b"<Contents>") == 1000
    assert per_call < 0.05, per_call  # typically a few milliseconds

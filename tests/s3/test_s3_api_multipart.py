"""Multipart uploads against a real `tidestore serve` process: Create, UploadPart,
UploadPartCopy, Complete (and its errors), Abort, ListParts, ListMultipartUploads,
GetObject/HeadObject with PartNumber."""

import hashlib
import random

import pytest
from botocore.exceptions import ClientError

from test_s3_api_support import code_of, fresh_name, signed, status_of

MiB = 1024 * 1024
_rng = random.Random(1234)
P1 = _rng.randbytes(5 * MiB)
P2 = _rng.randbytes(5 * MiB + 3)
P3 = _rng.randbytes(1000)


def multipart_etag(parts) -> str:
    """S3's multipart ETag, computed here independently: md5 of the parts' binary md5s."""
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def upload_parts(s3, bucket, key, upload_id, parts, start=1):
    out = []
    for i, data in enumerate(parts, start):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=i, Body=data)
        assert r["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
        out.append({"PartNumber": i, "ETag": r["ETag"]})
    return out


def test_full_upload_round_trip(s3, bucket):
    key = "mp/object.bin"
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="application/x-test",
                                    Metadata={"kind": "multipart"})
    assert up["Bucket"] == bucket and up["Key"] == key and up["UploadId"]
    uid = up["UploadId"]
    parts = upload_parts(s3, bucket, key, uid, [P1, P2, P3])
    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                        MultipartUpload={"Parts": parts})
    expected = multipart_etag([P1, P2, P3])
    assert done["ETag"] == expected
    assert done["Bucket"] == bucket and done["Key"] == key
    got = s3.get_object(Bucket=bucket, Key=key)
    body = got["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(P1 + P2 + P3).digest()
    assert got["ETag"] == expected
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"kind": "multipart"}
    assert got["ContentLength"] == len(P1) + len(P2) + len(P3)
    # the upload is gone once completed
    with pytest.raises(ClientError) as ei:
        s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)
    assert code_of(ei) == "NoSuchUpload"
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["ETag"], o["Size"]) for o in listed] == [(key, expected, len(body))]

    # GetObject / HeadObject with PartNumber
    offsets = [0, len(P1), len(P1) + len(P2), len(P1) + len(P2) + len(P3)]
    for n, data in enumerate([P1, P2, P3], 1):
        part = s3.get_object(Bucket=bucket, Key=key, PartNumber=n)
        assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert part["PartsCount"] == 3
        assert part["ContentLength"] == len(data)
        assert part["ContentRange"] == f"bytes {offsets[n - 1]}-{offsets[n] - 1}/{offsets[3]}"
        assert part["Body"].read() == data
        head = s3.head_object(Bucket=bucket, Key=key, PartNumber=n)
        assert head["ContentLength"] == len(data)
        assert head["PartsCount"] == 3
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key=key, PartNumber=4)
    assert code_of(ei) == "InvalidPartNumber"
    assert status_of(ei) == 416


def test_part_number_on_a_plain_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="plain", Body=b"abc")
    got = s3.get_object(Bucket=bucket, Key="plain", PartNumber=1)
    assert got["Body"].read() == b"abc"
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="plain", PartNumber=2)
    assert status_of(ei) == 416


def test_single_small_part_and_reuploaded_part(s3, bucket):
    up = s3.create_multipart_upload(Bucket=bucket, Key="one")
    uid = up["UploadId"]
    s3.upload_part(Bucket=bucket, Key="one", UploadId=uid, PartNumber=1, Body=b"first try")
    parts = upload_parts(s3, bucket, "one", uid, [b"second"])  # replaces part 1
    listed = s3.list_parts(Bucket=bucket, Key="one", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == [(1, 6, parts[0]["ETag"])]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="one", UploadId=uid,
                                        MultipartUpload={"Parts": parts})
    assert done["ETag"] == multipart_etag([b"second"])
    assert s3.get_object(Bucket=bucket, Key="one")["Body"].read() == b"second"


def test_parts_may_skip_numbers(s3, bucket):
    up = s3.create_multipart_upload(Bucket=bucket, Key="gaps")
    uid = up["UploadId"]
    a = s3.upload_part(Bucket=bucket, Key="gaps", UploadId=uid, PartNumber=3, Body=P1)["ETag"]
    b = s3.upload_part(Bucket=bucket, Key="gaps", UploadId=uid, PartNumber=10, Body=b"tail")["ETag"]
    s3.upload_part(Bucket=bucket, Key="gaps", UploadId=uid, PartNumber=7, Body=b"left out")
    done = s3.complete_multipart_upload(Bucket=bucket, Key="gaps", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 3, "ETag": a}, {"PartNumber": 10, "ETag": b}]})
    assert done["ETag"] == multipart_etag([P1, b"tail"])
    assert s3.get_object(Bucket=bucket, Key="gaps")["Body"].read() == P1 + b"tail"
    assert s3.get_object(Bucket=bucket, Key="gaps", PartNumber=2)["Body"].read() == b"tail"


def test_upload_part_copy_with_and_without_range(s3, bucket):
    src = _rng.randbytes(6 * MiB + 11)
    s3.put_object(Bucket=bucket, Key="source", Body=src)
    up = s3.create_multipart_upload(Bucket=bucket, Key="assembled")
    uid = up["UploadId"]
    whole = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "source"})
    assert whole["CopyPartResult"]["ETag"] == f'"{hashlib.md5(src).hexdigest()}"'
    lo, hi = 11, 11 + 5 * MiB - 1  # a 5 MiB range, not on chunk boundaries
    ranged = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=2,
                                 CopySource={"Bucket": bucket, "Key": "source"},
                                 CopySourceRange=f"bytes={lo}-{hi}")
    piece = src[lo:hi + 1]
    assert ranged["CopyPartResult"]["ETag"] == f'"{hashlib.md5(piece).hexdigest()}"'
    tail = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=3,
                               CopySource=f"{bucket}/source", CopySourceRange="bytes=100-200")
    assert tail["CopyPartResult"]["ETag"] == f'"{hashlib.md5(src[100:201]).hexdigest()}"'
    sizes = [p["Size"] for p in s3.list_parts(Bucket=bucket, Key="assembled", UploadId=uid)["Parts"]]
    assert sizes == [len(src), len(piece), 101]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="assembled", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": whole["CopyPartResult"]["ETag"]},
                  {"PartNumber": 2, "ETag": ranged["CopyPartResult"]["ETag"]},
                  {"PartNumber": 3, "ETag": tail["CopyPartResult"]["ETag"]}]})
    assert done["ETag"] == multipart_etag([src, piece, src[100:201]])
    body = s3.get_object(Bucket=bucket, Key="assembled")["Body"].read()
    assert body == src + piece + src[100:201]
    # a completed multipart object can itself be a copy source for a part
    uid2 = s3.create_multipart_upload(Bucket=bucket, Key="again")["UploadId"]
    again = s3.upload_part_copy(Bucket=bucket, Key="again", UploadId=uid2, PartNumber=1,
                                CopySource=f"{bucket}/assembled", CopySourceRange=f"bytes={len(src) - 5}-{len(src) + 4}")
    assert again["CopyPartResult"]["ETag"] == f'"{hashlib.md5(body[len(src) - 5:len(src) + 5]).hexdigest()}"'
    s3.abort_multipart_upload(Bucket=bucket, Key="again", UploadId=uid2)


def test_upload_part_copy_errors(s3, bucket):
    s3.put_object(Bucket=bucket, Key="small-src", Body=b"0123456789")
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    with pytest.raises(ClientError) as ei:
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "small-src"}, CopySourceRange="bytes=5-10")
    assert code_of(ei) == "InvalidRange"
    with pytest.raises(ClientError) as ei:
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "absent"})
    assert code_of(ei) == "NoSuchKey"
    with pytest.raises(ClientError) as ei:
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId="no-such-upload", PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "small-src"})
    assert code_of(ei) == "NoSuchUpload"
    with pytest.raises(ClientError) as ei:
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "small-src"},
                            CopySourceIfMatch='"0123456789abcdef0123456789abcdef"')
    assert code_of(ei) == "PreconditionFailed"
    assert "Parts" not in s3.list_parts(Bucket=bucket, Key="dst", UploadId=uid)


def test_complete_errors_leave_the_upload_usable(s3, bucket):
    key = "errs"
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    small = upload_parts(s3, bucket, key, uid, [b"tiny first", P3])
    # EntityTooSmall: every part but the last must be >= 5 MiB
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": small})
    assert code_of(ei) == "EntityTooSmall"
    assert status_of(ei) == 400
    parts = upload_parts(s3, bucket, key, uid, [P1, P3])  # replace both parts
    # InvalidPart: wrong ETag, and a part that was never uploaded
    bad_etag = [parts[0], {"PartNumber": 2, "ETag": '"0123456789abcdef0123456789abcdef"'}]
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": bad_etag})
    assert code_of(ei) == "InvalidPart"
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={
            "Parts": parts + [{"PartNumber": 9, "ETag": parts[0]["ETag"]}]})
    assert code_of(ei) == "InvalidPart"
    # InvalidPartOrder: descending, or repeated
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                     MultipartUpload={"Parts": list(reversed(parts))})
    assert code_of(ei) == "InvalidPartOrder"
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                     MultipartUpload={"Parts": [parts[0], parts[0], parts[1]]})
    assert code_of(ei) == "InvalidPartOrder"
    # none of those created the object, and the upload is still there
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=key)
    assert len(s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)["Parts"]) == 2
    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})
    assert done["ETag"] == multipart_etag([P1, P3])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == P1 + P3


def test_complete_with_no_parts_is_malformed(server, s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="empty")["UploadId"]
    r = signed(server, "POST", f"/{bucket}/empty?uploadId={uid}",
               body=b"<CompleteMultipartUpload></CompleteMultipartUpload>")
    assert r.status == 400
    assert r.error()["Code"] == "MalformedXML"


def test_abort_and_no_such_upload(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="ab")["UploadId"]
    parts = upload_parts(s3, bucket, "ab", uid, [b"x"])
    out = s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=uid)
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in (
        lambda: s3.list_parts(Bucket=bucket, Key="ab", UploadId=uid),
        lambda: s3.upload_part(Bucket=bucket, Key="ab", UploadId=uid, PartNumber=2, Body=b"y"),
        lambda: s3.complete_multipart_upload(Bucket=bucket, Key="ab", UploadId=uid,
                                             MultipartUpload={"Parts": parts}),
        lambda: s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=uid),
        lambda: s3.list_parts(Bucket=bucket, Key="ab", UploadId="bogus-upload-id"),
        lambda: s3.upload_part(Bucket=bucket, Key="other-key", UploadId=uid, PartNumber=1, Body=b"y"),
    ):
        with pytest.raises(ClientError) as ei:
            call()
        assert code_of(ei) == "NoSuchUpload"
        assert status_of(ei) == 404
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="ab")


def test_upload_id_belongs_to_its_key(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="owner")["UploadId"]
    with pytest.raises(ClientError) as ei:
        s3.list_parts(Bucket=bucket, Key="not-owner", UploadId=uid)
    assert code_of(ei) == "NoSuchUpload"
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=bucket, Key="not-owner", UploadId=uid,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]})
    assert code_of(ei) == "NoSuchUpload"


@pytest.mark.parametrize("number", [0, 10001, -1])
def test_invalid_part_numbers(server, s3, bucket, number):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="pn")["UploadId"]
    r = signed(server, "PUT", f"/{bucket}/pn?partNumber={number}&uploadId={uid}", body=b"x")
    assert r.status == 400
    assert r.error()["Code"] == "InvalidArgument"


def test_multipart_in_missing_bucket(s3):
    with pytest.raises(ClientError) as ei:
        s3.create_multipart_upload(Bucket=fresh_name("none"), Key="k")
    assert code_of(ei) == "NoSuchBucket"


def test_list_parts_pagination(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="lp")["UploadId"]
    sent = upload_parts(s3, bucket, "lp", uid, [f"part-{i}".encode() * i for i in range(1, 8)])
    seen = []
    marker = 0
    pages = 0
    while True:
        page = s3.list_parts(Bucket=bucket, Key="lp", UploadId=uid, MaxParts=3, PartNumberMarker=marker)
        pages += 1
        assert page["MaxParts"] == 3
        assert page["PartNumberMarker"] == marker
        seen += page.get("Parts", [])
        if not page["IsTruncated"]:
            break
        marker = page["NextPartNumberMarker"]
        assert marker == seen[-1]["PartNumber"]
    assert pages == 3
    assert [(p["PartNumber"], p["ETag"]) for p in seen] == [(s["PartNumber"], s["ETag"]) for s in sent]
    assert [p["Size"] for p in seen] == [len(f"part-{i}") * i for i in range(1, 8)]
    # the paginator agrees
    pag = [p["PartNumber"] for page in s3.get_paginator("list_parts").paginate(
        Bucket=bucket, Key="lp", UploadId=uid, PaginationConfig={"PageSize": 2}) for p in page["Parts"]]
    assert pag == list(range(1, 8))
    whole = s3.list_parts(Bucket=bucket, Key="lp", UploadId=uid)
    assert whole["IsTruncated"] is False
    assert whole["Bucket"] == bucket and whole["Key"] == "lp" and whole["UploadId"] == uid


def test_list_multipart_uploads(s3, bucket):
    keys = ["a/1", "a/2", "a/2", "b/1", "c", "d/x/y"]
    made = []
    for k in keys:
        made.append((k, s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"]))
    expected = sorted(made, key=lambda t: (t[0], t[1]))
    out = s3.list_multipart_uploads(Bucket=bucket)
    assert [(u["Key"], u["UploadId"]) for u in out["Uploads"]] == expected
    assert out["IsTruncated"] is False
    assert all(u["Initiated"] for u in out["Uploads"])

    out = s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")
    assert [u["Key"] for u in out["Uploads"]] == ["a/1", "a/2", "a/2"]

    out = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [u["Key"] for u in out["Uploads"]] == ["c"]
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["a/", "b/", "d/"]

    out = s3.list_multipart_uploads(Bucket=bucket, Prefix="d/", Delimiter="/")
    assert "Uploads" not in out
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["d/x/"]

    # pagination with key and upload-id markers, one at a time
    seen = []
    kwargs = {}
    while True:
        page = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=1, **kwargs)
        seen += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
        if not page["IsTruncated"]:
            break
        kwargs = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
    assert seen == expected
    # the paginator (delimiter and page size 2) agrees
    uploads, prefixes = [], []
    for page in s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2}):
        uploads += [u["Key"] for u in page.get("Uploads", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert uploads == ["c"]
    assert prefixes == ["a/", "b/", "d/"]
    # a key marker alone starts after every upload of that key
    out = s3.list_multipart_uploads(Bucket=bucket, KeyMarker="a/2")
    assert [u["Key"] for u in out["Uploads"]] == ["b/1", "c", "d/x/y"]

    for k, uid in made:
        s3.abort_multipart_upload(Bucket=bucket, Key=k, UploadId=uid)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def test_completed_upload_overwrites_existing_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="ow", Body=b"old")
    uid = s3.create_multipart_upload(Bucket=bucket, Key="ow")["UploadId"]
    parts = upload_parts(s3, bucket, "ow", uid, [b"new"])
    # the old object stays readable until the upload completes
    assert s3.get_object(Bucket=bucket, Key="ow")["Body"].read() == b"old"
    s3.complete_multipart_upload(Bucket=bucket, Key="ow", UploadId=uid, MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=bucket, Key="ow")["Body"].read() == b"new"


def test_part_number_and_range_together_are_refused(server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="pr", Body=b"0123456789")
    for method in ("GET", "HEAD"):
        r = signed(server, method, f"/{bucket}/pr?partNumber=1", headers={"Range": "bytes=0-1"})
        assert r.status == 400, (method, r.status, r.body)
        if method == "GET":
            assert r.error()["Code"] == "InvalidRequest"

"""Checksums of multipart objects against a real `tidestore serve` process: COMPOSITE
(the algorithm over the part checksums, `-N`) and FULL_OBJECT (the CRC of the whole
object, which boto3 checks against the body it downloads), returned by Complete and
by HEAD/GET with checksum mode, with the errors S3 gives. Expected values are computed
here from the bytes, independently of the server's code."""

import base64
import hashlib
import os
import zlib

import pytest
from botocore.exceptions import ClientError

from test_s3_api_checksums_integrity import crc32c, expected_checksum
from test_s3_api_support import code_of, fresh_name

MiB = 1 << 20
PARTS = [os.urandom(5 * MiB), os.urandom(5 * MiB + 17), os.urandom(1234)]


def composite(alg: str, parts) -> str:
    raw = b"".join(base64.b64decode(expected_checksum(alg, p)) for p in parts)
    if alg == "CRC32":
        digest = (zlib.crc32(raw) & 0xFFFFFFFF).to_bytes(4, "big")
    elif alg == "CRC32C":
        digest = crc32c(raw).to_bytes(4, "big")
    else:
        digest = hashlib.new(alg.lower(), raw).digest()
    return f"{base64.b64encode(digest).decode()}-{len(parts)}"


def full_crc(alg: str, data: bytes) -> str:
    value = zlib.crc32(data) & 0xFFFFFFFF if alg == "CRC32" else crc32c_fast(data)
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def crc32c_fast(data: bytes) -> int:
    import crc32c as native  # the reference above is bit by bit: too slow for 10 MiB
    return native.crc32c(data)


def upload(s3, bucket, key, alg, kind=None, parts=PARTS):
    extra = {"ChecksumType": kind} if kind else {}
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=alg, **extra)["UploadId"]
    listed = []
    for n, data in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=data,
                           ChecksumAlgorithm=alg)
        listed.append({"PartNumber": n, "ETag": r["ETag"], f"Checksum{alg}": r[f"Checksum{alg}"]})
    return uid, listed


@pytest.mark.parametrize("alg", ["CRC32", "CRC32C", "SHA1", "SHA256"])
def test_composite_checksum(s3, bucket, alg):
    key = fresh_name("comp")
    uid, listed = upload(s3, bucket, key, alg)
    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                        MultipartUpload={"Parts": listed})
    want = composite(alg, PARTS)
    assert done[f"Checksum{alg}"] == want and done["ChecksumType"] == "COMPOSITE"
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head[f"Checksum{alg}"] == want and head["ChecksumType"] == "COMPOSITE"
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert got["Body"].read() == b"".join(PARTS)
    assert f"Checksum{alg}" not in s3.head_object(Bucket=bucket, Key=key)  # only when asked


@pytest.mark.parametrize("alg", ["CRC32", "CRC32C"])
def test_full_object_checksum_is_the_whole_objects_crc(s3, bucket, alg):
    key = fresh_name("full")
    uid, listed = upload(s3, bucket, key, alg, "FULL_OBJECT")
    whole = b"".join(PARTS)
    with pytest.raises(ClientError) as ei:  # a wrong whole-object value is refused
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                     MultipartUpload={"Parts": listed},
                                     **{f"Checksum{alg}": full_crc(alg, whole[:-1])})
    assert code_of(ei) == "BadDigest"
    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                        MultipartUpload={"Parts": listed},
                                        **{f"Checksum{alg}": full_crc(alg, whole)})
    assert done[f"Checksum{alg}"] == full_crc(alg, whole) and done["ChecksumType"] == "FULL_OBJECT"
    # botocore checks a FULL_OBJECT checksum against the body as it reads it
    got = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert got["ChecksumType"] == "FULL_OBJECT" and got["Body"].read() == whole


def test_crc64nvme_is_full_object(s3, bucket):
    checksums = pytest.importorskip("awscrt.checksums")
    key = fresh_name("nvme")
    uid, listed = upload(s3, bucket, key, "CRC64NVME")
    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid,
                                        MultipartUpload={"Parts": listed})
    whole = b"".join(PARTS)
    want = base64.b64encode(checksums.crc64nvme(whole).to_bytes(8, "big")).decode()
    assert done["ChecksumCRC64NVME"] == want and done["ChecksumType"] == "FULL_OBJECT"
    assert s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["Body"].read() == whole


def test_parts_sent_without_checksums_get_the_uploads_algorithm(server, bucket):
    """A client that sends no part checksums (only when required) still gets the
    object's checksum: the server computes each part's, and UploadPartCopy's too."""
    s3 = server.boto3_client(request_checksum_calculation="when_required")
    s3.put_object(Bucket=bucket, Key="copy-src", Body=PARTS[0])
    key = fresh_name("plain")
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32",
                                     ChecksumType="FULL_OBJECT")["UploadId"]
    r1 = s3.upload_part_copy(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "copy-src"})
    r2 = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=2, Body=PARTS[2])
    assert r2["ChecksumCRC32"] == expected_checksum("CRC32", PARTS[2])
    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)["Parts"]
    assert parts[0]["ChecksumCRC32"] == expected_checksum("CRC32", PARTS[0])
    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": r2["ETag"]}]})
    assert done["ChecksumCRC32"] == full_crc("CRC32", PARTS[0] + PARTS[2])


def test_checksum_errors(s3, bucket):
    key = fresh_name("bad")
    with pytest.raises(ClientError) as ei:  # SHA-256 cannot be combined into a whole-object value
        s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256",
                                   ChecksumType="FULL_OBJECT")
    assert code_of(ei) == "InvalidRequest"
    uid, listed = upload(s3, bucket, key, "CRC32", parts=PARTS[:2])
    listed[1]["ChecksumCRC32"] = expected_checksum("CRC32", b"another part")
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": listed})
    assert code_of(ei) == "InvalidPart"
    listed[1]["ChecksumCRC32"] = expected_checksum("CRC32", PARTS[1])  # the upload stays usable
    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": listed})
    assert done["ChecksumCRC32"] == composite("CRC32", PARTS[:2])

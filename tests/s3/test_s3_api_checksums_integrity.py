"""Upload integrity against a real `tidestore serve` process: Content-MD5 (BadDigest,
InvalidDigest), flexible checksums (CRC32, CRC32C, SHA1, SHA256) stored and returned,
wrong checksum values, and x-amz-content-sha256 mismatches. Expected values are
computed here, independently of the server's code."""

import base64
import hashlib
import os
import zlib

import pytest
from botocore.exceptions import ClientError

from test_s3_api_support import code_of, signed, status_of


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def expected_checksum(alg: str, data: bytes) -> str:
    if alg == "CRC32":
        raw = (zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "big")
    elif alg == "CRC32C":
        raw = crc32c(data).to_bytes(4, "big")
    else:
        raw = hashlib.new(alg.lower(), data).digest()
    return base64.b64encode(raw).decode()


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def assert_absent(s3, bucket, key):
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=bucket, Key=key)
    assert status_of(ei) == 404


def test_crc32c_reference_vector():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def test_content_md5_correct(s3, bucket):
    data = b"integrity" * 100
    s3.put_object(Bucket=bucket, Key="ok", Body=data, ContentMD5=b64md5(data))
    assert s3.get_object(Bucket=bucket, Key="ok")["Body"].read() == data


def test_content_md5_wrong_is_bad_digest(server, s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="bad", Body=b"payload", ContentMD5=b64md5(b"other"))
    assert code_of(ei) == "BadDigest"
    assert status_of(ei) == 400
    assert_absent(s3, bucket, "bad")
    r = signed(server, "PUT", f"/{bucket}/bad-raw", body=b"payload",
               headers={"Content-MD5": b64md5(b"other")})
    assert r.status == 400
    assert r.error()["Code"] == "BadDigest"
    assert_absent(s3, bucket, "bad-raw")


@pytest.mark.parametrize("value", ["not-base64!!", base64.b64encode(b"short").decode(), ""])
def test_content_md5_malformed_is_invalid_digest(server, s3, bucket, value):
    r = signed(server, "PUT", f"/{bucket}/malformed", body=b"payload", headers={"Content-MD5": value})
    assert r.status == 400
    assert r.error()["Code"] == "InvalidDigest"
    assert_absent(s3, bucket, "malformed")


def test_content_md5_on_multipart_part(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"part",
                       ContentMD5=b64md5(b"nope"))
    assert code_of(ei) == "BadDigest"
    assert "Parts" not in s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)


def test_content_md5_on_delete_objects(server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="keep", Body=b"1")
    body = b"<Delete><Object><Key>keep</Key></Object></Delete>"
    r = signed(server, "POST", f"/{bucket}?delete", body=body, headers={"Content-MD5": b64md5(b"x")})
    assert r.status == 400
    assert r.error()["Code"] == "BadDigest"
    assert s3.head_object(Bucket=bucket, Key="keep")
    r = signed(server, "POST", f"/{bucket}?delete", body=body, headers={"Content-MD5": b64md5(body)})
    assert r.status == 200, r.body
    assert_absent(s3, bucket, "keep")


def _has_crt() -> bool:
    import importlib.util  # botocore needs awscrt to compute CRC32C itself
    return importlib.util.find_spec("awscrt") is not None


SIZES = [0, 1000, 5 * 1024 * 1024 + 7]


def _want(alg, data):
    if alg == "CRC32C" and len(data) > 10000:
        import crc32c as _fast  # the pure-python reference is too slow for megabytes
        return base64.b64encode(_fast.crc32c(data).to_bytes(4, "big")).decode()
    return expected_checksum(alg, data)


@pytest.mark.parametrize("alg", ["CRC32", "SHA1", "SHA256",
                                 pytest.param("CRC32C", marks=pytest.mark.skipif(
                                     not _has_crt(), reason="botocore computes CRC32C only with awscrt"))])
@pytest.mark.parametrize("size", SIZES)
def test_flexible_checksum_stored_and_returned(s3, bucket, alg, size):
    data = os.urandom(size)
    want = _want(alg, data)
    put = s3.put_object(Bucket=bucket, Key="c", Body=data, ChecksumAlgorithm=alg)
    assert put["Checksum" + alg] == want
    # botocore validates the returned checksum against the body as well
    got = s3.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert got["Checksum" + alg] == want
    assert got["Body"].read() == data
    head = s3.head_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert head["Checksum" + alg] == want
    # without checksum mode, no checksum headers
    plain = s3.head_object(Bucket=bucket, Key="c")
    assert not [k for k in plain if k.startswith("Checksum") and k != "ChecksumType"]
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"][0]
    assert listed.get("ChecksumAlgorithm") == [alg]


@pytest.mark.parametrize("alg", ["CRC32", "CRC32C", "SHA1", "SHA256"])
@pytest.mark.parametrize("size", SIZES)
def test_flexible_checksum_by_header_raw(server, s3, bucket, alg, size):
    """The same through raw signed requests: x-amz-checksum-<alg> on PUT, and
    x-amz-checksum-mode: ENABLED on GET/HEAD (needs no awscrt, covers CRC32C)."""
    data = os.urandom(size)
    want = _want(alg, data)
    r = signed(server, "PUT", f"/{bucket}/h", body=data, headers={"x-amz-checksum-" + alg.lower(): want})
    assert r.status == 200, r.body
    assert r.header("x-amz-checksum-" + alg.lower()) == want
    r = signed(server, "PUT", f"/{bucket}/h2", body=data, headers={"x-amz-sdk-checksum-algorithm": alg})
    assert r.status == 200, r.body
    assert r.header("x-amz-checksum-" + alg.lower()) == want
    for key in ("h", "h2"):
        for method in ("GET", "HEAD"):
            r = signed(server, method, f"/{bucket}/{key}", headers={"x-amz-checksum-mode": "ENABLED"})
            assert r.status == 200
            assert r.header("x-amz-checksum-" + alg.lower()) == want
            if method == "GET":
                assert r.body == data
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size


def test_ranged_get_carries_no_whole_object_checksum(s3, bucket):
    s3.put_object(Bucket=bucket, Key="c", Body=b"0123456789", ChecksumAlgorithm="SHA256")
    got = s3.get_object(Bucket=bucket, Key="c", Range="bytes=0-3", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"0123"
    assert "ChecksumSHA256" not in got


def test_checksum_value_sent_by_the_client(s3, bucket):
    data = b"client computed"
    s3.put_object(Bucket=bucket, Key="v", Body=data, ChecksumSHA256=expected_checksum("SHA256", data))
    head = s3.head_object(Bucket=bucket, Key="v", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == expected_checksum("SHA256", data)


@pytest.mark.parametrize("alg", ["CRC32", "CRC32C", "SHA1", "SHA256"])
def test_wrong_checksum_value_is_bad_digest(server, s3, bucket, alg):
    data = b"the real payload"
    wrong = expected_checksum(alg, b"something else")
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="w", Body=data, **{"Checksum" + alg: wrong})
    assert code_of(ei) == "BadDigest"
    assert status_of(ei) == 400
    assert_absent(s3, bucket, "w")
    r = signed(server, "PUT", f"/{bucket}/w-raw", body=data,
               headers={"x-amz-checksum-" + alg.lower(): wrong})
    assert r.status == 400
    assert r.error()["Code"] == "BadDigest"
    assert_absent(s3, bucket, "w-raw")


def test_malformed_checksum_value_is_invalid_request(server, s3, bucket):
    r = signed(server, "PUT", f"/{bucket}/m", body=b"x", headers={"x-amz-checksum-crc32": "%%%"})
    assert r.status == 400
    assert r.error()["Code"] == "InvalidRequest"
    r = signed(server, "PUT", f"/{bucket}/m", body=b"x", headers={
        "x-amz-checksum-crc32": expected_checksum("CRC32", b"x"),
        "x-amz-checksum-sha1": expected_checksum("SHA1", b"x")})
    assert r.status == 400
    assert r.error()["Code"] == "InvalidRequest"
    r = signed(server, "PUT", f"/{bucket}/m", body=b"x",
               headers={"x-amz-sdk-checksum-algorithm": "MD4"})
    assert r.status == 400
    assert r.error()["Code"] == "InvalidArgument"
    assert_absent(s3, bucket, "m")


def test_upload_part_checksums(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="SHA256")["UploadId"]
    data = b"part data" * 10
    p = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=data,
                       ChecksumAlgorithm="SHA256")
    assert p["ChecksumSHA256"] == expected_checksum("SHA256", data)
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)
    assert parts["Parts"][0]["ChecksumSHA256"] == p["ChecksumSHA256"]
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=2, Body=data,
                       ChecksumSHA256=expected_checksum("SHA256", b"nope"))
    assert code_of(ei) == "BadDigest"
    assert len(s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)["Parts"]) == 1


def test_x_amz_content_sha256_mismatch(server, s3, bucket):
    signed_body, sent_body = b"A" * 64, b"B" * 64  # same length, different bytes
    r = signed(server, "PUT", f"/{bucket}/sha", body=signed_body, send_body=sent_body)
    assert r.status == 400
    err = r.error()
    assert err["Code"] == "XAmzContentSHA256Mismatch"
    assert err["RequestId"] == r.header("x-amz-request-id")
    assert_absent(s3, bucket, "sha")
    # the same for an upload part, and for a small XML body
    uid = s3.create_multipart_upload(Bucket=bucket, Key="sha-mp")["UploadId"]
    r = signed(server, "PUT", f"/{bucket}/sha-mp?partNumber=1&uploadId={uid}",
               body=signed_body, send_body=sent_body)
    assert r.status == 400
    assert r.error()["Code"] == "XAmzContentSHA256Mismatch"
    assert "Parts" not in s3.list_parts(Bucket=bucket, Key="sha-mp", UploadId=uid)
    s3.put_object(Bucket=bucket, Key="victim", Body=b"v")
    body = b"<Delete><Object><Key>victim</Key></Object></Delete>"
    r = signed(server, "POST", f"/{bucket}?delete", body=body,
               send_body=body.replace(b"victim", b"victin"))
    assert r.status == 400
    assert r.error()["Code"] == "XAmzContentSHA256Mismatch"
    assert s3.head_object(Bucket=bucket, Key="victim")
    # a correctly signed raw body is accepted
    r = signed(server, "PUT", f"/{bucket}/sha", body=signed_body)
    assert r.status == 200, r.body
    assert s3.get_object(Bucket=bucket, Key="sha")["Body"].read() == signed_body


def test_short_body_is_incomplete(server, s3, bucket):
    # Content-Length promises more than is sent: the server must not store a partial object
    import socket
    from urllib.parse import urlsplit
    u = urlsplit(server.endpoint)
    r = signed(server, "PUT", f"/{bucket}/probe", body=b"x")  # make sure auth works
    assert r.status == 200
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        req = AWSRequest("PUT", f"{server.endpoint}/{bucket}/short", data=b"",
                         headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
        req.context["payload_signing_enabled"] = False
        S3SigV4Auth(Credentials(server.access_key, server.secret_key), "s3", "us-east-1").add_auth(req)
        head = [f"PUT /{bucket}/short HTTP/1.1", f"Host: {u.netloc}", "Content-Length: 100"]
        head += [f"{k}: {v}" for k, v in req.headers.items() if k.lower() not in ("host", "content-length")]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"only ten b")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    assert_absent(s3, bucket, "short")


def test_crc64nvme_is_stored_and_returned(s3, bucket):
    body = b"hello" * 1000
    put = s3.put_object(Bucket=bucket, Key="crc64", Body=body, ChecksumAlgorithm="CRC64NVME")
    got = s3.get_object(Bucket=bucket, Key="crc64", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ChecksumCRC64NVME"] == put["ChecksumCRC64NVME"] == "RXy0lWEYIi8="

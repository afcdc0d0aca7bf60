"""Checksums against botocore's own implementations and published vectors."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from botocore.httpchecksum import Crc32Checksum, Sha1Checksum, Sha256Checksum

from s3front.checksums import (
    ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    MultiHasher,
    checksum_b64,
    checksum_header,
    checksum_headers,
    new_checksum,
    normalize_algorithm,
    parse_content_md5,
)
from s3front.errors import S3Error

CHECK = b"123456789"


def b64int(value: int, size: int = 4) -> str:
    return base64.b64encode(value.to_bytes(size, "big")).decode()


def test_standard_check_values():
    assert checksum_b64("CRC32", CHECK) == b64int(0xCBF43926)
    assert checksum_b64("crc32c", CHECK) == b64int(0xE3069283)
    assert checksum_b64("SHA1", CHECK) == base64.b64encode(hashlib.sha1(CHECK).digest()).decode()
    assert checksum_b64("CRC32", b"") == "AAAAAA=="
    assert checksum_b64("CRC32C", b"") == "AAAAAA=="


def test_aws_documented_crc32c_of_hello_world():
    # S3 docs and SDK tests: CRC32C("Hello world") is "crUfeA=="
    assert checksum_b64("CRC32C", b"Hello world") == "crUfeA=="


@pytest.mark.parametrize(
    "alg,botocore_cls", [("CRC32", Crc32Checksum), ("SHA1", Sha1Checksum), ("SHA256", Sha256Checksum)]
)
def test_matches_botocore(alg, botocore_cls):
    for data in (b"", b"a", os.urandom(1), os.urandom(100_003)):
        assert checksum_b64(alg, data) == botocore_cls().handle(data)


def test_multi_hasher_one_pass_equals_separate():
    data = os.urandom(1_000_000)
    algs = [a for a in SUPPORTED_ALGORITHMS]
    hasher = MultiHasher(algs, sha256=True)
    for i in range(0, len(data), 65_537):
        hasher.update(memoryview(data)[i : i + 65_537])
    assert hasher.size == len(data)
    assert hasher.md5_hex() == hashlib.md5(data).hexdigest()
    assert hasher.sha256_hex() == hashlib.sha256(data).hexdigest()
    assert hasher.checksums() == {a: checksum_b64(a, data) for a in algs}
    hasher.verify({"CRC32": checksum_b64("CRC32", data)})
    with pytest.raises(S3Error) as info:
        hasher.verify({"CRC32C": checksum_b64("CRC32C", data + b"x")})
    assert info.value.code == "BadDigest" and "CRC32C" in info.value.message


def test_content_md5():
    data = b"some body"
    good = base64.b64encode(hashlib.md5(data).digest()).decode()
    hasher = MultiHasher()
    hasher.update(data)
    hasher.verify_content_md5(good)
    assert parse_content_md5(good) == hashlib.md5(data).digest()
    for bad in ("not base64!", "AAAA", base64.b64encode(b"x" * 17).decode(), ""):
        with pytest.raises(S3Error) as info:
            hasher.verify_content_md5(bad)
        assert (info.value.code, info.value.status) == ("InvalidDigest", 400)
    with pytest.raises(S3Error) as info:
        hasher.verify_content_md5(base64.b64encode(hashlib.md5(b"other").digest()).decode())
    assert (info.value.code, info.value.status) == ("BadDigest", 400)


def test_algorithm_names():
    assert normalize_algorithm(" crc32c ") == "CRC32C"
    assert checksum_header("SHA256") == "x-amz-checksum-sha256"
    assert set(SUPPORTED_ALGORITHMS) <= set(ALGORITHMS)
    with pytest.raises(S3Error) as info:
        normalize_algorithm("MD4")
    assert info.value.code == "InvalidArgument"


def test_crc64nvme_supported_or_refused():
    if "CRC64NVME" in SUPPORTED_ALGORITHMS:
        # the published check value of CRC-64/NVME
        assert checksum_b64("CRC64NVME", CHECK) == b64int(0xAE8B14860A799888, 8)
    else:
        with pytest.raises(S3Error) as info:
            new_checksum("CRC64NVME")
        assert info.value.code == "InvalidArgument"


def test_checksum_headers():
    crc = checksum_b64("CRC32", b"x")
    assert checksum_headers({"X-Amz-Checksum-CRC32": crc, "Content-Type": "a"}) == {"CRC32": crc}
    assert checksum_headers({"x-amz-checksum-type": "FULL_OBJECT", "x-amz-checksum-algorithm": "CRC32"}) == {}
    for headers in (
        {"x-amz-checksum-crc32": "AAAA"},  # wrong length
        {"x-amz-checksum-sha256": "%%%"},
        {"x-amz-checksum-crc32": crc, "x-amz-checksum-crc32c": crc},
    ):
        with pytest.raises(S3Error) as info:
            checksum_headers(headers)
        assert info.value.code == "InvalidRequest"
    with pytest.raises(S3Error) as info:
        checksum_headers({"x-amz-checksum-md4": crc})
    assert info.value.code == "InvalidArgument"

"""Bucket-name and key rules."""

from __future__ import annotations

import pytest

from s3front.errors import S3Error
from s3front.names import check_bucket_name, check_key, decode_key, is_valid_bucket_name

VALID = [
    "abc",
    "a" * 63,
    "my-bucket",
    "my.bucket.name",
    "1bucket",
    "bucket1",
    "192.168.5.x",
    "xn-bucket",
    "bucket-s3",
    "a-b-c.d-e",
    "docexamplewebsite.com",
]
INVALID = [
    "",
    "ab",
    "a" * 64,
    "MyBucket",
    "my_bucket",
    "-bucket",
    "bucket-",
    ".bucket",
    "bucket.",
    "my..bucket",
    "my.-bucket",
    "my-.bucket",
    "192.168.5.4",
    "10.0.0.1",
    "xn--bucket",
    "sthree-bucket",
    "sthree-configurator",
    "amzn-s3-demo-bucket",
    "bucket-s3alias",
    "bucket--ol-s3",
    "bucket.mrap",
    "bucket--x-s3",
    "bücket",
    "bucket name",
    "bucket/",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_bucket_names(name):
    assert is_valid_bucket_name(name)
    assert check_bucket_name(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_bucket_names(name):
    assert not is_valid_bucket_name(name)
    with pytest.raises(S3Error) as info:
        check_bucket_name(name)
    assert (info.value.code, info.value.status) == ("InvalidBucketName", 400)
    assert info.value.extra["BucketName"] == name


def test_key_length_is_in_utf8_bytes():
    assert check_key("k" * 1024) == "k" * 1024
    assert check_key("é" * 512) == "é" * 512  # 1024 bytes
    for key in ("k" * 1025, "é" * 513, "日" * 342):
        with pytest.raises(S3Error) as info:
            check_key(key)
        assert (info.value.code, info.value.status) == ("KeyTooLongError", 400)


def test_empty_and_invalid_keys():
    with pytest.raises(S3Error) as info:
        check_key("")
    assert info.value.code == "UserKeyMustBeSpecified"
    with pytest.raises(S3Error) as info:
        check_key("bad\udcffsurrogate")
    assert info.value.code == "InvalidArgument"


def test_decode_key_from_path():
    assert decode_key("a%20b+c/%E2%82%AC/../x") == "a b+c/€/../x"
    assert decode_key(b"raw bytes \xc3\xa9") == "raw bytes é"
    with pytest.raises(S3Error) as info:
        decode_key("bad%FF")
    assert info.value.code == "InvalidURI"
    with pytest.raises(S3Error) as info:
        decode_key("%41" * 1025)
    assert info.value.code == "KeyTooLongError"

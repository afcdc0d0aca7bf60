"""The S3 error table and the <Error> document, read back by botocore."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from defusedxml.ElementTree import fromstring

from s3front.errors import ERRORS, S3Error, error_xml
from s3front_botocore_util import make_client

EXPECTED_STATUS = {
    "AccessDenied": 403,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "SignatureDoesNotMatch": 403,
    "SlowDown": 503,
    "ServiceUnavailable": 503,
    "XAmzContentSHA256Mismatch": 400,
    "AuthorizationQueryParametersError": 400,
    "AuthorizationHeaderMalformed": 400,
    "InvalidObjectState": 403,
    "AccountProblem": 403,
}


@pytest.mark.parametrize("code,status", sorted(EXPECTED_STATUS.items()))
def test_table(code, status):
    assert ERRORS[code][0] == status
    err = S3Error.of(code)
    assert (err.code, err.status, err.message) == (code, status, ERRORS[code][1])


def test_constructor_and_extras():
    err = S3Error.of("NoSuchKey", resource="/b/k", key="k", bucket="b", upload_id=None)
    assert err.extra == {"Key": "k", "BucketName": "b"}
    assert err.resource == "/b/k" and err.status == 404
    custom = S3Error("Whatever", "msg", 418)
    assert (custom.code, custom.message, custom.status) == ("Whatever", "msg", 418)
    assert S3Error("Unknown").status == 400
    with pytest.raises(ValueError):
        S3Error.of("NoSuchThing")


def test_error_xml_escaping_and_shape():
    err = S3Error.of(
        "NoSuchKey",
        "no <key> & \"quotes\"",
        resource="/b/a&b<c>",
        key="a&b<c>\r\x01",
    )
    body = error_xml(err, "req-1&2")
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = fromstring(body.replace(b"&#x1;", b""))
    assert root.tag == "Error"
    assert [c.tag for c in root] == ["Code", "Message", "Resource", "RequestId", "Key"]
    assert root.findtext("Message") == 'no <key> & "quotes"'
    assert root.findtext("Resource") == "/b/a&b<c>"
    assert root.findtext("RequestId") == "req-1&2"
    assert root.findtext("Key") == "a&b<c>\r"  # \r survives as a character reference


@pytest.mark.parametrize(
    "err",
    [
        S3Error.of("NoSuchKey", key="missing key", resource="/bucket/missing key"),
        S3Error.of("AccessDenied"),
        S3Error.of("SlowDown"),
        S3Error.of("SignatureDoesNotMatch", AWSAccessKeyId="AK", StringToSign="a\nb"),
    ],
)
def test_botocore_reads_error_documents(err):
    client, rec = make_client()
    rec.respond(error_xml(err, "REQ123"), status=err.status)
    with pytest.raises(ClientError) as info:
        client.get_object_acl(Bucket="bucket", Key="k")  # retries disabled
    response = info.value.response
    assert response["Error"]["Code"] == err.code
    assert response["Error"]["Message"] == err.message
    assert response["ResponseMetadata"]["HTTPStatusCode"] == err.status
    for name, value in err.extra.items():
        assert response["Error"][name] == value


def test_request_ids_are_sixteen_hex_digits_and_never_repeat():
    """Clients quote request ids to correlate failures with the server's log: each
    must name one request."""
    import re

    from s3front.app import next_request_id

    ids = [next_request_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9A-F]{16,}", i) for i in ids)

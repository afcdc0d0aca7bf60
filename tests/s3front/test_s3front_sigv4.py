"""SigV4 verification against signatures made by botocore (the real client)
and against the AWS documentation's example vectors."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from s3front.errors import S3Error
from s3front.sigv4 import (
    EMPTY_SHA256,
    STREAMING_SIGNED,
    PayloadMode,
    canonical_query_string,
    canonical_uri,
    derive_signing_key,
    parse_query,
    split_raw_target,
    verify_payload_sha256,
    verify_request,
)
from s3front_botocore_util import AK, SK, lookup, make_client

NOW = lambda: datetime.now(timezone.utc)  # noqa: E731


def verify(captured, now=None, **kwargs):
    return verify_request(
        captured.method,
        captured.raw_path,
        captured.raw_query,
        captured.headers,
        lookup,
        now or NOW(),
        **kwargs,
    )


def error_code(fn, *args, **kwargs) -> S3Error:
    with pytest.raises(S3Error) as info:
        fn(*args, **kwargs)
    return info.value


# --- AWS documentation examples ------------------------------------------------

DOC_AK = "AKIAIOSFODNN7EXAMPLE"
DOC_SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = datetime(2013, 5, 24, 0, 0, 30, tzinfo=timezone.utc)
DOC_CRED = f"{DOC_AK}/20130524/us-east-1/s3/aws4_request"


def doc_lookup(ak):
    return DOC_SK if ak == DOC_AK else None


def doc_auth(signed, signature):
    return f"AWS4-HMAC-SHA256 Credential={DOC_CRED},SignedHeaders={signed},Signature={signature}"


def test_aws_example_get_object_with_range():
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
        "Authorization": doc_auth(
            "host;range;x-amz-content-sha256;x-amz-date",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        ),
    }
    result = verify_request("GET", "/test.txt", "", headers, doc_lookup, DOC_NOW)
    assert result.access_key == DOC_AK
    assert result.region == "us-east-1"
    assert result.payload_mode is PayloadMode.SHA256
    assert result.payload_sha256 == EMPTY_SHA256
    assert result.signing.scope == "20130524/us-east-1/s3/aws4_request"
    assert not result.presigned
    # the same request with the range changed must fail
    headers["Range"] = "bytes=0-10"
    err = error_code(verify_request, "GET", "/test.txt", "", headers, doc_lookup, DOC_NOW)
    assert err.code == "SignatureDoesNotMatch" and err.status == 403


def test_aws_example_put_object_with_date_and_dollar_key():
    body = b"Welcome to Amazon S3."
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Date": "Fri, 24 May 2013 00:00:00 GMT",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
        "Authorization": doc_auth(
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        ),
    }
    result = verify_request("PUT", "/test%24file.text", "", headers, doc_lookup, DOC_NOW)
    verify_payload_sha256(result, hashlib.sha256(body).hexdigest())
    err = error_code(verify_payload_sha256, result, hashlib.sha256(b"other").hexdigest())
    assert err.code == "XAmzContentSHA256Mismatch" and err.status == 400


@pytest.mark.parametrize(
    "query,signature",
    [
        ("lifecycle", "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        ("max-keys=2&prefix=J", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
    ],
)
def test_aws_example_bucket_queries(query, signature):
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-content-sha256": EMPTY_SHA256,
        "Authorization": doc_auth("host;x-amz-content-sha256;x-amz-date", signature),
    }
    verify_request("GET", "/", query, headers, doc_lookup, DOC_NOW)
    # parameter order on the wire does not matter
    reordered = "&".join(reversed(query.split("&")))
    verify_request("GET", "/", reordered, headers, doc_lookup, DOC_NOW)


DOC_PRESIGN_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def test_aws_example_presigned_get():
    headers = {"Host": "examplebucket.s3.amazonaws.com"}
    result = verify_request("GET", "/test.txt", DOC_PRESIGN_QUERY, headers, doc_lookup, DOC_NOW)
    assert result.presigned and result.payload_mode is PayloadMode.UNSIGNED
    assert result.expires_at == datetime(2013, 5, 25, tzinfo=timezone.utc)
    late = datetime(2013, 5, 25, 0, 0, 1, tzinfo=timezone.utc)
    err = error_code(
        verify_request, "GET", "/test.txt", DOC_PRESIGN_QUERY, headers, doc_lookup, late
    )
    assert (err.code, err.message, err.status) == ("AccessDenied", "Request has expired", 403)
    assert err.extra["X-Amz-Expires"] == "86400"


def test_aws_example_streaming_seed_and_chunk_signatures():
    headers = {
        "Host": "s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": STREAMING_SIGNED,
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "Content-Length": "66824",
        "Authorization": doc_auth(
            "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
            "x-amz-decoded-content-length;x-amz-storage-class",
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        ),
    }
    result = verify_request(
        "PUT", "/examplebucket/chunkObject.txt", "", headers, doc_lookup, DOC_NOW
    )
    assert result.payload_mode is PayloadMode.STREAMING_SIGNED
    ctx = result.signing
    assert ctx.seed_signature == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    first = ctx.chunk_signature(ctx.seed_signature, hashlib.sha256(b"a" * 65536).hexdigest())
    assert first == "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    second = ctx.chunk_signature(first, hashlib.sha256(b"a" * 1024).hexdigest())
    assert second == "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    final = ctx.chunk_signature(second, EMPTY_SHA256)
    assert final == "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"


# --- real botocore client requests ----------------------------------------------

TRICKY_KEYS = [
    "plain.txt",
    "with space.txt",
    "plus+sign",
    "100%",
    "%2Fliteral-percent-2F",
    "unicode/ключ/日本語/é",
    "../escape/../../etc/passwd",
    "a//double//slash",
    "./dot/./segments/.",
    "trailing/",
    "~tilde~",
    "sub-delims !$&'()*,;=:@",
    "brackets[]{}<>|^`\\\"#?",
    "tab\tand\nnewline",
]


@pytest.mark.parametrize("key", TRICKY_KEYS)
def test_botocore_put_get_head_with_tricky_keys(key):
    client, rec = make_client()
    rec.respond(b"", headers={"ETag": '"x"'})
    client.put_object(Bucket="bucket", Key=key, Body=b"hello world")
    result = verify(rec.last)
    assert result.access_key == AK
    assert result.payload_mode is PayloadMode.SHA256
    verify_payload_sha256(result, hashlib.sha256(rec.last.body).hexdigest())
    assert rec.last.raw_path == "/bucket/" + quote(key, safe="/~")
    # botocore's wire path is already canonical: no fallback candidate needed
    assert canonical_uri(rec.last.raw_path) == rec.last.raw_path

    client.head_object(Bucket="bucket", Key=key, Range="bytes=0-3")
    verify(rec.last)
    rec.respond(b"data")
    client.get_object(Bucket="bucket", Key=key, VersionId="null", PartNumber=1)
    verify(rec.last)


@pytest.mark.parametrize("key", TRICKY_KEYS)
def test_botocore_presigned_urls_with_tricky_keys(key):
    client, _ = make_client()
    for method, op, params in [
        ("GET", "get_object", {"ResponseContentType": "text/plain; charset=utf-8"}),
        ("PUT", "put_object", {}),
    ]:
        url = client.generate_presigned_url(
            op, Params={"Bucket": "bucket", "Key": key, **params}, ExpiresIn=600
        )
        path, query = split_raw_target(url.split("9000", 1)[1])
        result = verify_request(method, path, query, {"Host": "127.0.0.1:9000"}, lookup, NOW())
        assert result.presigned and result.payload_mode is PayloadMode.UNSIGNED
        # the same URL used with another method or on another key fails
        other = "PUT" if method == "GET" else "GET"
        assert error_code(
            verify_request, other, path, query, {"Host": "127.0.0.1:9000"}, lookup, NOW()
        ).code == "SignatureDoesNotMatch"
        assert error_code(
            verify_request, method, path + "x", query, {"Host": "127.0.0.1:9000"}, lookup, NOW()
        ).code == "SignatureDoesNotMatch"


def test_botocore_queries_lists_and_posts():
    client, rec = make_client()
    rec.respond(b'<?xml version="1.0"?><ListBucketResult></ListBucketResult>')
    client.list_objects_v2(
        Bucket="bucket", Prefix="a b+c/%/ü", Delimiter="/", StartAfter="x&y=z", MaxKeys=7
    )
    verify(rec.last)
    assert "encoding-type=url" in rec.last.raw_query
    rec.respond(b"<InitiateMultipartUploadResult/>")
    client.create_multipart_upload(Bucket="bucket", Key="k y", Metadata={"a": "  b   c  "})
    verify(rec.last)
    rec.respond(b"<DeleteResult/>")
    client.delete_objects(Bucket="bucket", Delete={"Objects": [{"Key": "a"}, {"Key": "b c"}]})
    result = verify(rec.last)
    verify_payload_sha256(result, hashlib.sha256(rec.last.body).hexdigest())
    rec.respond(b"")
    client.put_bucket_versioning(
        Bucket="bucket", VersioningConfiguration={"Status": "Enabled"}
    )
    verify(rec.last)
    client.list_buckets()
    verify(rec.last)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3", "ap-southeast-2", "tidestore"])
def test_any_region_is_accepted(region):
    client, rec = make_client(region=region)
    client.delete_object(Bucket="bucket", Key="k")
    assert verify(rec.last).region == region


def test_https_put_uses_unsigned_trailer_mode():
    client, rec = make_client(endpoint="https://127.0.0.1:9443")
    rec.respond(b"", headers={"ETag": '"x"'})
    client.put_object(Bucket="bucket", Key="k", Body=b"x" * 1000)
    result = verify(rec.last)
    assert result.payload_mode is PayloadMode.STREAMING_UNSIGNED_TRAILER
    assert result.payload_mode.is_streaming and result.payload_mode.has_trailer
    assert not result.payload_mode.chunks_signed


# --- tampering -----------------------------------------------------------------


@pytest.fixture
def signed_put():
    client, rec = make_client()
    rec.respond(b"", headers={"ETag": '"x"'})
    client.put_object(
        Bucket="bucket", Key="dir/key", Body=b"payload", Metadata={"colour": "blue"},
        ContentType="text/plain",
    )
    captured = rec.last
    verify(captured)
    return captured


def _tampered(captured, **changes):
    from dataclasses import replace

    return replace(captured, **changes)


def test_tamper_method(signed_put):
    assert error_code(verify, _tampered(signed_put, method="POST")).code == "SignatureDoesNotMatch"


def test_tamper_path(signed_put):
    bad = _tampered(signed_put, url=signed_put.url.replace("dir/key", "dir/kez"))
    err = error_code(verify, bad)
    assert err.code == "SignatureDoesNotMatch" and err.status == 403
    assert err.extra["AWSAccessKeyId"] == AK
    assert "CanonicalRequest" in err.extra and "StringToSign" in err.extra


def test_tamper_query(signed_put):
    bad = _tampered(signed_put, url=signed_put.url + "?versionId=1")
    assert error_code(verify, bad).code == "SignatureDoesNotMatch"


def test_tamper_signed_header(signed_put):
    headers = dict(signed_put.headers)
    headers["x-amz-meta-colour"] = "red"
    assert error_code(verify, _tampered(signed_put, headers=headers)).code == "SignatureDoesNotMatch"
    headers = dict(signed_put.headers)
    headers["Host"] = "evil.example:9000"
    assert error_code(verify, _tampered(signed_put, headers=headers)).code == "SignatureDoesNotMatch"


def test_unsigned_amz_header_is_refused(signed_put):
    headers = dict(signed_put.headers, **{"x-amz-meta-extra": "1"})
    err = error_code(verify, _tampered(signed_put, headers=headers))
    assert err.code == "AccessDenied"
    assert err.extra["HeadersNotSigned"] == "x-amz-meta-extra"
    # an unsigned non-amz header is fine (e.g. added by a proxy)
    verify(_tampered(signed_put, headers=dict(signed_put.headers, Via="1.1 proxy")))


def test_clock_skew(signed_put):
    verify(signed_put, now=NOW() + timedelta(minutes=14))
    verify(signed_put, now=NOW() - timedelta(minutes=14))
    for delta in (timedelta(minutes=16), -timedelta(minutes=16)):
        err = error_code(verify, signed_put, now=NOW() + delta)
        assert (err.code, err.status) == ("RequestTimeTooSkewed", 403)
        assert err.extra["MaxAllowedSkewMilliseconds"] == "900000"


def test_wrong_secret_and_unknown_key():
    client, rec = make_client(secret_key="not-the-secret")
    client.delete_object(Bucket="bucket", Key="k")
    assert error_code(verify, rec.last).code == "SignatureDoesNotMatch"
    client, rec = make_client(access_key="AKIDUNKNOWN")
    client.delete_object(Bucket="bucket", Key="k")
    err = error_code(verify, rec.last)
    assert (err.code, err.status) == ("InvalidAccessKeyId", 403)
    assert err.extra["AWSAccessKeyId"] == "AKIDUNKNOWN"


def _with_auth(captured, auth):
    return _tampered(captured, headers=dict(captured.headers, Authorization=auth))


@pytest.mark.parametrize(
    "mutate,code",
    [
        (lambda a: a.replace(", Signature=", ", Sig="), "AuthorizationHeaderMalformed"),
        (lambda a: a.split(", Signature=")[0], "AuthorizationHeaderMalformed"),
        (lambda a: a.replace("/s3/", "/ec2/"), "AuthorizationHeaderMalformed"),
        (lambda a: a.replace("/aws4_request", "/aws5_request"), "AuthorizationHeaderMalformed"),
        (lambda a: a.replace("Credential=" + AK + "/", "Credential="), "AuthorizationHeaderMalformed"),
        (lambda a: a.replace("SignedHeaders=", "SignedHeaders=Host;"), "AuthorizationHeaderMalformed"),
        (lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"), "AuthorizationHeaderMalformed"),
        (lambda a: "AWS " + AK + ":c2lnbmF0dXJl", "InvalidRequest"),
        (lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"), "NotImplemented"),
        (lambda a: a[:-1] + ("0" if a[-1] != "0" else "1"), "SignatureDoesNotMatch"),
        (lambda a: a + "00", "SignatureDoesNotMatch"),
        (lambda a: a[:-64] + "Ω" * 64, "SignatureDoesNotMatch"),
    ],
)
def test_malformed_authorization(signed_put, mutate, code):
    auth = signed_put.headers["Authorization"]
    assert error_code(verify, _with_auth(signed_put, mutate(auth))).code == code


def test_credential_date_must_match_request_date(signed_put):
    auth = signed_put.headers["Authorization"]
    today = signed_put.headers["X-Amz-Date"][:8]
    err = error_code(verify, _with_auth(signed_put, auth.replace(today, "20000101")))
    assert err.code == "AuthorizationHeaderMalformed"


def _replace_header(headers, name, value):
    """Set a header whatever the case botocore's signer gave it (its CRT signer uses
    lower case): a plain dict would keep both spellings."""
    out = {k: v for k, v in headers.items() if k.lower() != name.lower()}
    out[name] = value
    return out


def test_missing_or_bad_content_sha256(signed_put):
    headers = {k: v for k, v in signed_put.headers.items() if k.lower() != "x-amz-content-sha256"}
    assert error_code(verify, _tampered(signed_put, headers=headers)).code == "InvalidRequest"
    headers = _replace_header(signed_put.headers, "X-Amz-Content-SHA256", "not-a-hash")
    err = error_code(verify, _tampered(signed_put, headers=headers))
    assert err.code == "InvalidArgument" and err.extra["ArgumentName"] == "x-amz-content-sha256"


def test_missing_or_bad_date(signed_put):
    headers = {k: v for k, v in signed_put.headers.items() if k.lower() != "x-amz-date"}
    assert error_code(verify, _tampered(signed_put, headers=headers)).code == "AccessDenied"
    headers = _replace_header(signed_put.headers, "X-Amz-Date", "2024-01-01T00:00:00Z")
    assert error_code(verify, _tampered(signed_put, headers=headers)).code == "AccessDenied"


def test_anonymous_and_double_auth(signed_put):
    headers = {k: v for k, v in signed_put.headers.items() if k.lower() != "authorization"}
    err = error_code(verify, _tampered(signed_put, headers=headers))
    assert (err.code, err.status) == ("AccessDenied", 403)
    bad = _tampered(signed_put, url=signed_put.url + "?X-Amz-Algorithm=AWS4-HMAC-SHA256")
    assert error_code(verify, bad).code == "InvalidArgument"


# --- presigned URL errors --------------------------------------------------------


def _presigned(expires=3600, **params):
    client, _ = make_client()
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "k", **params}, ExpiresIn=expires
    )
    return split_raw_target(url.split("9000", 1)[1])


def test_presigned_expiry_and_not_yet_valid():
    path, query = _presigned(expires=60)
    host = {"Host": "127.0.0.1:9000"}
    verify_request("GET", path, query, host, lookup, NOW() + timedelta(seconds=50))
    err = error_code(verify_request, "GET", path, query, host, lookup, NOW() + timedelta(seconds=75))
    assert (err.code, err.message) == ("AccessDenied", "Request has expired")
    err = error_code(verify_request, "GET", path, query, host, lookup, NOW() - timedelta(minutes=20))
    assert err.code == "AccessDenied"


@pytest.mark.parametrize(
    "old,new,code",
    [
        ("X-Amz-Expires=3600", "X-Amz-Expires=604801", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=0", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=-5", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=soon", "AuthorizationQueryParametersError"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=3601", "SignatureDoesNotMatch"),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1", "AuthorizationQueryParametersError"),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=", "AuthorizationQueryParametersError"),
        ("&X-Amz-SignedHeaders=host", "", "AuthorizationQueryParametersError"),
        ("%2Fs3%2F", "%2Fsqs%2F", "AuthorizationQueryParametersError"),
        ("X-Amz-Credential=" + AK, "X-Amz-Credential=AKIDNOBODY", "InvalidAccessKeyId"),
        ("X-Amz-Date=", "X-Amz-Date=1", "AuthorizationQueryParametersError"),
    ],
)
def test_presigned_parameter_errors(old, new, code):
    path, query = _presigned()
    assert old in query
    bad = query.replace(old, new, 1)
    err = error_code(verify_request, "GET", path, bad, {"Host": "127.0.0.1:9000"}, lookup, NOW())
    assert err.code == code


def test_presigned_with_extra_parameter_or_unsigned_amz_header():
    path, query = _presigned()
    host = {"Host": "127.0.0.1:9000"}
    assert error_code(
        verify_request, "GET", path, query + "&versionId=2", host, lookup, NOW()
    ).code == "SignatureDoesNotMatch"
    err = error_code(
        verify_request, "GET", path, query, dict(host, **{"x-amz-acl": "public-read"}), lookup, NOW()
    )
    assert err.code == "AccessDenied" and err.extra["HeadersNotSigned"] == "x-amz-acl"


# --- direct botocore signer for header corner cases -------------------------------


def _sign(method, url, headers, body=b"", auth_cls=S3SigV4Auth):
    request = AWSRequest(method=method, url=url, headers=headers, data=body)
    for name, value in getattr(headers, "extra", []):
        request.headers[name] = value  # HTTPHeaders appends a second value
    auth_cls(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    out = CIMultiDict()
    for name, value in request.headers.items():
        out.add(name, value)
    out.add("Host", "127.0.0.1:9000")
    return out


class _Headers(dict):
    extra: list = []


def test_repeated_header_values_and_whitespace_are_canonicalised():
    headers = _Headers({"X-Amz-Meta-Spaces": "  a   lot    of   space  "})
    headers.extra = [("X-Amz-Meta-Multi", "one"), ("X-Amz-Meta-Multi", "two")]
    signed = _sign("PUT", "http://127.0.0.1:9000/b/k", headers, b"x")
    assert signed.getall("X-Amz-Meta-Multi") == ["one", "two"]
    result = verify_request("PUT", "/b/k", "", signed, lookup, NOW())
    assert "x-amz-meta-multi" in result.signed_headers
    signed.popall("X-Amz-Meta-Multi")
    signed.add("X-Amz-Meta-Multi", "two")
    signed.add("X-Amz-Meta-Multi", "one")
    assert error_code(verify_request, "PUT", "/b/k", "", signed, lookup, NOW()).code == (
        "SignatureDoesNotMatch"
    )


def test_date_header_instead_of_x_amz_date():
    signed = _sign("GET", "http://127.0.0.1:9000/b/k", {"Date": "placeholder"})
    assert "X-Amz-Date" not in signed and "date" in signed["Authorization"]
    verify_request("GET", "/b/k", "", signed, lookup, NOW())
    err = error_code(verify_request, "GET", "/b/k", "", signed, lookup, NOW() + timedelta(hours=1))
    assert err.code == "RequestTimeTooSkewed"


class _StreamingAuth(S3SigV4Auth):
    """botocore signer that seeds a signed aws-chunked upload."""

    def payload(self, request):
        return STREAMING_SIGNED


def test_streaming_signed_seed_from_botocore():
    signed = _sign(
        "PUT",
        "http://127.0.0.1:9000/b/k",
        {"Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": "5"},
        auth_cls=_StreamingAuth,
    )
    result = verify_request("PUT", "/b/k", "", signed, lookup, NOW())
    assert result.payload_mode is PayloadMode.STREAMING_SIGNED
    assert result.signing.seed_signature == signed["Authorization"].rsplit("=", 1)[1]
    assert result.signing.amz_date == signed["X-Amz-Date"]


def test_raw_path_fallback_for_other_escapings():
    # A client that signs its raw path with an escaping botocore never
    # produces (encoded "~", lower-case hex, encoded "/" inside the key)
    # still verifies: both forms name the same key.
    for raw in ["/b/%7Etilde", "/b/a%2fb", "/b/%e2%82%ac"]:
        signed = _sign("GET", "http://127.0.0.1:9000" + raw, {})
        verify_request("GET", raw, "", signed, lookup, NOW())


def test_request_time_key_cache():
    derive_signing_key.cache_clear()
    client, rec = make_client()
    for _ in range(5):
        client.delete_object(Bucket="bucket", Key="k")
        verify(rec.last)
    info = derive_signing_key.cache_info()
    assert info.misses == 1 and info.hits == 4


# --- canonical pieces ----------------------------------------------------------------


def test_canonical_uri_and_query_helpers():
    assert canonical_uri("") == "/"
    assert canonical_uri("/b/a%20b+c/%25/../x//y") == "/b/a%20b%2Bc/%25/../x//y"
    assert canonical_uri("/b/caf%C3%A9~") == "/b/caf%C3%A9~"
    assert canonical_uri("/b/%7e") == "/b/~"
    pairs = parse_query("uploads&prefix=a%20b&b=2&a=&b=1&&x=%7E")
    assert pairs == [("uploads", ""), ("prefix", "a%20b"), ("b", "2"), ("a", ""), ("b", "1"), ("x", "%7E")]
    assert canonical_query_string(pairs) == "a=&b=1&b=2&prefix=a%20b&uploads=&x=~"
    assert canonical_query_string(parse_query("k=a+b")) == "k=a%2Bb"
    assert split_raw_target("/b/k?x=1&y") == ("/b/k", "x=1&y")
    assert split_raw_target("/b/k") == ("/b/k", "")


# --- more corner cases -------------------------------------------------------------


def test_lenient_mode_allows_unsigned_amz_headers(signed_put):
    headers = dict(signed_put.headers, **{"x-amz-meta-extra": "1"})
    verify(_tampered(signed_put, headers=headers), require_signed_amz_headers=False)


def test_ecdsa_streaming_and_sigv2_presign_are_refused(signed_put):
    headers = _replace_header(signed_put.headers, "X-Amz-Content-SHA256",
                              "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")
    assert error_code(verify, _tampered(signed_put, headers=headers)).code == "NotImplemented"
    err = error_code(
        verify_request, "GET", "/b/k", "AWSAccessKeyId=AK&Signature=x&Expires=1",
        {"Host": "h"}, lookup, NOW(),
    )
    assert err.code == "InvalidRequest"


def test_presigned_with_hoisted_content_sha256():
    # Some SDKs hoist x-amz-content-sha256 into the presigned query string.
    from botocore.auth import S3SigV4QueryAuth

    request = AWSRequest(
        method="PUT",
        url="http://127.0.0.1:9000/b/k?X-Amz-Content-Sha256=UNSIGNED-PAYLOAD",
    )
    S3SigV4QueryAuth(Credentials(AK, SK), "s3", "us-east-1", expires=60).add_auth(request)
    path, query = split_raw_target(request.url.split("9000", 1)[1])
    result = verify_request("PUT", path, query, {"Host": "127.0.0.1:9000"}, lookup, NOW())
    assert result.payload_mode is PayloadMode.UNSIGNED


from hypothesis import given, settings, strategies as st  # noqa: E402
from botocore.utils import percent_encode_sequence  # noqa: E402

_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
# a query parameter named X-Amz-Algorithm next to an Authorization header is a second
# auth mechanism, refused by design (test_anonymous_and_double_auth); hypothesis mines
# that name from the module under test, so keep it out of "any query"
_param_name = _text.filter(lambda n: n.lower() != "x-amz-algorithm")


@settings(max_examples=150, deadline=None)
@given(key=_text, params=st.dictionaries(_param_name, st.text(st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=4))
def test_property_any_key_and_query_verifies(key, params):
    path = "/bucket/" + quote(key.encode("utf-8"), safe="/~")
    query = percent_encode_sequence(params) if params else ""
    url = "http://127.0.0.1:9000" + path + ("?" + query if query else "")
    signed = _sign("GET", url, {})
    result = verify_request("GET", path, query, signed, lookup, NOW())
    assert result.access_key == AK
    assert canonical_uri(path) == path
    # a different key never verifies with that signature
    other = "/bucket/" + quote((key + "x").encode("utf-8"), safe="/~")
    assert error_code(verify_request, "GET", other, query, signed, lookup, NOW()).code == (
        "SignatureDoesNotMatch"
    )

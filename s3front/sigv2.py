"""AWS Signature Version 2 for S3 (legacy, still what boto3 and AWS CLI v1 use for
presigned URLs unless told otherwise): header auth `Authorization: AWS key:sig` and
query auth `?AWSAccessKeyId=&Expires=&Signature=`.

StringToSign = Verb \\n Content-MD5 \\n Content-Type \\n (Date | Expires) \\n
               CanonicalizedAmzHeaders CanonicalizedResource
as botocore's HmacV1Auth builds it (the reference client we verify against).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

from .errors import S3Error
from .sigv4 import AuthResult, PayloadMode, parse_query

# Query parameters that are part of the canonical resource (botocore's list).
SUBRESOURCES = frozenset("""
accelerate acl cors defaultObjectAcl location logging partNumber policy requestPayment
torrent versioning versionId versions website uploads uploadId response-content-type
response-content-language response-expires response-cache-control
response-content-disposition response-content-encoding delete lifecycle tagging restore
storageClass notification replication analytics metrics inventory select select-type
object-lock
""".split())
MAX_SKEW_S = 15 * 60


def is_v2(headers, raw_query: str) -> bool:
    auth = headers.get("Authorization", "")
    if auth.startswith("AWS "):
        return True
    return not auth and any(n == "AWSAccessKeyId" for n, _ in parse_query(raw_query))


def _canonical_resource(raw_path: str, pairs, vhost_bucket: str | None) -> str:
    path = raw_path if vhost_bucket is None else "/" + vhost_bucket + raw_path
    if path.count("/") == 1 and path != "/":
        path += "/"  # a bucket's own resource is "/bucket/"
    subs = sorted(((n, v) for n, v in pairs if n in SUBRESOURCES), key=lambda nv: nv[0])
    if subs:
        path += "?" + "&".join(f"{n}={unquote(v)}" if v else n for n, v in subs)
    return path


def _amz_headers(headers, extra: dict) -> str:
    found: dict = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith("x-amz-"):
            found.setdefault(lname, []).append(value.strip())
    for lname, value in extra.items():
        found.setdefault(lname, [value])
    return "".join(f"{k}:{','.join(found[k])}\n" for k in sorted(found))


def verify_request(method: str, raw_path: str, raw_query: str, headers, lookup_secret,
                   vhost_bucket: str | None = None, now: float | None = None) -> AuthResult:
    now = time.time() if now is None else now
    pairs = parse_query(raw_query)
    query = {n: unquote(v) for n, v in pairs}
    auth = headers.get("Authorization", "")
    amz_from_query = {}
    if auth.startswith("AWS "):
        access_key, _, signature = auth[4:].partition(":")
        if not access_key or not signature:
            raise S3Error.of("AuthorizationHeaderMalformed", "The authorization header is malformed.")
        date_line = "" if "x-amz-date" in headers else headers.get("Date", "")
        when = headers.get("x-amz-date") or headers.get("Date")
        try:
            stamp = parsedate_to_datetime(when).timestamp() if when else None
        except (TypeError, ValueError):
            stamp = None
        if stamp is None:
            raise S3Error.of("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
        if abs(now - stamp) > MAX_SKEW_S:
            raise S3Error.of("RequestTimeTooSkewed")
    else:
        access_key = query.get("AWSAccessKeyId", "")
        signature = query.get("Signature", "")
        expires = query.get("Expires", "")
        if not access_key or not signature or not expires.isdigit():
            raise S3Error.of("AccessDenied", "Query-string authentication requires the Signature, "
                                             "Expires and AWSAccessKeyId parameters")
        if now > int(expires):
            raise S3Error.of("AccessDenied", "Request has expired", Expires=expires)
        date_line = expires
        amz_from_query = {n.lower(): v for n, v in query.items() if n.lower().startswith("x-amz-")}
    secret = lookup_secret(access_key)
    if secret is None:
        raise S3Error.of("InvalidAccessKeyId", AWSAccessKeyId=access_key)
    content_type = headers.get("Content-Type", query.get("content-type", ""))
    content_md5 = headers.get("Content-MD5", query.get("content-md5", ""))
    string_to_sign = (f"{method}\n{content_md5.strip()}\n{content_type.strip()}\n{date_line}\n"
                      + _amz_headers(headers, amz_from_query)
                      + _canonical_resource(raw_path, pairs, vhost_bucket))
    expected = base64.b64encode(hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha1).digest())
    if not hmac.compare_digest(expected, signature.encode()):
        raise S3Error.of("SignatureDoesNotMatch", AWSAccessKeyId=access_key,
                         StringToSign=string_to_sign)
    return AuthResult(access_key=access_key, region="", payload_mode=PayloadMode.UNSIGNED,
                      payload_sha256=None, signing=None, signed_headers=(),
                      presigned=not auth, expires_at=None)

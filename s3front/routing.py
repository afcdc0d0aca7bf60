"""Which S3 operation a request is: bucket and key from the host or the raw path, then
method + sub-resource. Anything recognised but not implemented is NotImplemented, so a
request never falls through to another operation (a `PUT /bucket?tagging` is not a
CreateBucket, a `GET /b/k?acl` is not a GetObject).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .errors import S3Error
from .names import check_bucket_name

# Sub-resources S3 defines that this server does not implement (any method).
UNSUPPORTED = frozenset("""
accelerate acl analytics attributes cors encryption intelligent-tiering inventory
legal-hold lifecycle logging metadataConfiguration metadataTable metrics notification
object-lock ownershipControls policy policyStatus publicAccessBlock replication
requestPayment restore retention select session tagging torrent website renameObject
""".split())

_BUCKET_OPS = {
    ("GET", "location"): "GetBucketLocation",
    ("GET", "versioning"): "GetBucketVersioning",
    ("GET", "versions"): "ListObjectVersions",
    ("GET", "uploads"): "ListMultipartUploads",
    ("POST", "delete"): "DeleteObjects",
}
_OBJECT_OPS = {
    ("POST", "uploads"): "CreateMultipartUpload",
    ("POST", "uploadId"): "CompleteMultipartUpload",
    ("GET", "uploadId"): "ListParts",
    ("DELETE", "uploadId"): "AbortMultipartUpload",
}
_BUCKET_SUBRESOURCES = {"location", "versioning", "versions", "uploads", "delete"}
_OBJECT_SUBRESOURCES = {"uploads", "uploadId"}


@dataclass(frozen=True, slots=True)
class Route:
    operation: str
    bucket: str | None
    key: str | None


def split_target(host: str, raw_path: str, domains) -> tuple[str | None, str | None]:
    """(bucket, key) from a virtual-hosted Host or the path. The key is taken from the
    raw path and percent-decoded exactly once, so `a//b`, `../x` and `%2F` survive."""
    path = raw_path.split("?", 1)[0]
    bucket_from_host = vhost_bucket(host, domains)
    if not path.startswith("/"):
        raise S3Error.of("InvalidURI", "Couldn't parse the specified URI.")
    rest = path[1:]
    if bucket_from_host is not None:
        bucket, raw_key = bucket_from_host, rest
    else:
        raw_bucket, sep, raw_key = rest.partition("/")
        if not raw_bucket:
            return None, None
        bucket = _decode(raw_bucket)
        if not sep:
            raw_key = ""
    key = _decode(raw_key) if raw_key else None
    return bucket, key


def vhost_bucket(host: str, domains) -> str | None:
    """The bucket named by a virtual-hosted-style Host header, if it is one."""
    hostname = host.rsplit(":", 1)[0].lower() if host and not host.startswith("[") else ""
    for d in domains:
        if hostname.endswith("." + d):
            return hostname[: -len(d) - 1]
    return None


def _decode(raw: str) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error.of("InvalidURI", "Couldn't parse the specified URI.") from None


def resolve(method: str, bucket: str | None, key: str | None, query, headers) -> Route:
    """The operation for a request whose target is already split."""
    if method not in ("GET", "HEAD", "PUT", "POST", "DELETE"):
        raise S3Error.of("MethodNotAllowed", Method=method, ResourceType="OBJECT" if key else "BUCKET")
    unsupported = [q for q in query if q in UNSUPPORTED]
    if unsupported:
        raise S3Error.of("NotImplemented",
                         f"The {unsupported[0]!r} sub-resource is not implemented by this server.")
    if bucket is None:
        if method == "GET":
            return Route("ListBuckets", None, None)
        raise S3Error.of("MethodNotAllowed", Method=method, ResourceType="SERVICE")
    check_bucket_name(bucket)
    if key is None:
        return Route(_bucket_op(method, query), bucket, None)
    return Route(_object_op(method, query, headers), bucket, key)


def _bucket_op(method: str, query) -> str:
    subs = [q for q in query if q in _BUCKET_SUBRESOURCES]
    if subs:
        op = _BUCKET_OPS.get((method, subs[0]))
        if op is None:
            if (method, subs[0]) == ("PUT", "versioning"):
                raise S3Error.of("NotImplemented", "Versioning cannot be enabled on this server.")
            raise S3Error.of("MethodNotAllowed", Method=method, ResourceType=subs[0])
        return op
    if method == "GET":
        return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
    return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(method) or _no(method)


def _object_op(method: str, query, headers) -> str:
    stray = [q for q in query if q in _BUCKET_SUBRESOURCES and q not in _OBJECT_SUBRESOURCES]
    if stray or (method == "PUT" and "uploads" in query):
        # a bucket sub-resource on a key (or `PUT ?uploads`) is no object operation: it
        # must not fall through to PutObject / GetObject / DeleteObject
        raise S3Error.of("MethodNotAllowed", Method=method, ResourceType=(stray or ["uploads"])[0])
    subs = [q for q in query if q in _OBJECT_SUBRESOURCES]
    if method == "PUT":
        if "uploadId" in query or "partNumber" in query:
            if "uploadId" not in query or "partNumber" not in query:
                raise S3Error.of("InvalidRequest", "UploadPart needs both partNumber and uploadId.")
            return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    if subs:
        op = _OBJECT_OPS.get((method, subs[0]))
        if op is None:
            raise S3Error.of("MethodNotAllowed", Method=method, ResourceType=subs[0])
        return op
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method) or _no(method)


def _no(method: str) -> str:
    raise S3Error.of("MethodNotAllowed", Method=method)

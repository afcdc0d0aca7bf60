"""S3 XML: request bodies in, response documents out.

Why: the REST-XML dialect is the contract every S3 SDK parses. Request
bodies are untrusted, so they are parsed with ``defusedxml`` (no DTDs, no
entities) under a size cap and mapped to plain dataclasses, any mistake
becoming ``MalformedXML``. Responses are built by string concatenation with
escaping rather than an element tree: a 1000-key listing is on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping, Sequence
from urllib.parse import quote_plus
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as DET

from .errors import S3Error, xml_text

__all__ = [
    "S3_NS",
    "Owner",
    "CompletedPart",
    "ObjectIdentifier",
    "DeleteRequest",
    "BucketEntry",
    "ObjectEntry",
    "DeleteMarkerEntry",
    "PartEntry",
    "UploadEntry",
    "DeletedEntry",
    "DeleteErrorEntry",
    "format_time",
    "quote_etag",
    "parse_complete_multipart_upload",
    "parse_delete",
    "parse_create_bucket_configuration",
    "list_buckets_result",
    "list_objects_v1_result",
    "list_objects_v2_result",
    "list_versions_result",
    "initiate_multipart_upload_result",
    "complete_multipart_upload_result",
    "list_parts_result",
    "list_multipart_uploads_result",
    "copy_object_result",
    "copy_part_result",
    "delete_result",
    "location_constraint",
    "versioning_configuration",
]

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_PARTS = 10000
MAX_DELETE_OBJECTS = 1000
COMPLETE_BODY_LIMIT = 8 * 1024 * 1024
DELETE_BODY_LIMIT = 2 * 1024 * 1024
SMALL_BODY_LIMIT = 64 * 1024
_CHECKSUM_ELEMENTS = {
    "ChecksumCRC32": "CRC32",
    "ChecksumCRC32C": "CRC32C",
    "ChecksumCRC64NVME": "CRC64NVME",
    "ChecksumSHA1": "SHA1",
    "ChecksumSHA256": "SHA256",
}


# -- parsing -------------------------------------------------------------------


def _malformed(detail: str | None = None) -> S3Error:
    return S3Error.of("MalformedXML", detail)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2] if tag.startswith("{") else tag


def _parse_root(body: bytes, root_name: str, limit: int) -> Element:
    if len(body) > limit:
        raise S3Error.of("MaxMessageLengthExceeded", MaxMessageLengthBytes=str(limit))
    try:
        root = DET.fromstring(body, forbid_dtd=True)
    except (ParseError, defusedxml.DefusedXmlException, ValueError):
        raise _malformed() from None
    if _local(root.tag) != root_name:
        raise _malformed()
    return root


def _children(elem: Element, name: str) -> list[Element]:
    return [c for c in elem if _local(c.tag) == name]


def _child_text(elem: Element, name: str, *, required: bool = False) -> str | None:
    found = _children(elem, name)
    if len(found) > 1:
        raise _malformed()
    if not found:
        if required:
            raise _malformed()
        return None
    return found[0].text or ""


@dataclass(frozen=True, slots=True)
class CompletedPart:
    part_number: int
    etag: str  # without surrounding quotes
    checksums: dict[str, str] = field(default_factory=dict)  # algorithm -> base64


def _strip_etag(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    return value


def parse_complete_multipart_upload(
    body: bytes, *, limit: int = COMPLETE_BODY_LIMIT
) -> list[CompletedPart]:
    """Parts of a CompleteMultipartUpload body, checked to be in ascending order."""
    root = _parse_root(body, "CompleteMultipartUpload", limit)
    parts: list[CompletedPart] = []
    for elem in root:
        if _local(elem.tag) != "Part":
            continue
        number_text = _child_text(elem, "PartNumber", required=True).strip()
        etag = _child_text(elem, "ETag", required=True)
        if not number_text.isdigit() or not number_text.isascii():
            raise _malformed()
        number = int(number_text)
        if not 1 <= number <= MAX_PARTS:
            raise S3Error.of(
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive",
                argument_name="partNumber",
                argument_value=number_text,
            )
        checksums = {
            alg: (_child_text(elem, tag) or "").strip()
            for tag, alg in _CHECKSUM_ELEMENTS.items()
            if _children(elem, tag)
        }
        parts.append(CompletedPart(number, _strip_etag(etag), checksums))
    if not parts:
        raise _malformed()
    if len(parts) > MAX_PARTS:
        raise _malformed()
    for prev, cur in zip(parts, parts[1:]):
        if cur.part_number <= prev.part_number:
            raise S3Error.of("InvalidPartOrder")
    return parts


@dataclass(frozen=True, slots=True)
class ObjectIdentifier:
    key: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    objects: list[ObjectIdentifier]
    quiet: bool = False


def _parse_bool(text: str | None, default: bool = False) -> bool:
    if text is None:
        return default
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise _malformed()
    return value == "true"


def parse_delete(body: bytes, *, limit: int = DELETE_BODY_LIMIT) -> DeleteRequest:
    """A DeleteObjects body: 1..1000 objects, and the Quiet flag."""
    root = _parse_root(body, "Delete", limit)
    quiet = _parse_bool(_child_text(root, "Quiet"))
    objects = []
    for elem in _children(root, "Object"):
        key = _child_text(elem, "Key", required=True)
        version = _child_text(elem, "VersionId")
        objects.append(ObjectIdentifier(key, version.strip() if version is not None else None))
    if not objects or len(objects) > MAX_DELETE_OBJECTS:
        raise _malformed()
    return DeleteRequest(objects, quiet)


def parse_create_bucket_configuration(
    body: bytes, *, limit: int = SMALL_BODY_LIMIT
) -> str | None:
    """The LocationConstraint of a CreateBucket body (None if absent or no body)."""
    if not body.strip():
        return None
    root = _parse_root(body, "CreateBucketConfiguration", limit)
    location = _child_text(root, "LocationConstraint")
    return location.strip() if location is not None else None


# -- building ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owner:
    id: str
    display_name: str | None = None


@dataclass(frozen=True, slots=True)
class BucketEntry:
    name: str
    creation_date: datetime | float
    region: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    key: str
    last_modified: datetime | float
    etag: str
    size: int
    storage_class: str = "STANDARD"
    owner: Owner | None = None
    checksum_algorithm: str | None = None
    version_id: str = "null"  # only used by list_versions_result
    is_latest: bool = True  # only used by list_versions_result


@dataclass(frozen=True, slots=True)
class DeleteMarkerEntry:
    key: str
    version_id: str
    last_modified: datetime | float
    is_latest: bool = True
    owner: Owner | None = None


@dataclass(frozen=True, slots=True)
class PartEntry:
    part_number: int
    last_modified: datetime | float
    etag: str
    size: int
    checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UploadEntry:
    key: str
    upload_id: str
    initiated: datetime | float
    storage_class: str = "STANDARD"
    owner: Owner | None = None
    checksum_algorithm: str | None = None


@dataclass(frozen=True, slots=True)
class DeletedEntry:
    key: str
    version_id: str | None = None
    delete_marker: bool | None = None
    delete_marker_version_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteErrorEntry:
    key: str
    code: str
    message: str
    version_id: str | None = None


def format_time(value: datetime | float | int) -> str:
    """S3's timestamp: ISO 8601, UTC, milliseconds, ``Z``."""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, timezone.utc)
    elif value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _e(name: str, value: object) -> str:
    """One element; nothing at all for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{xml_text(str(value))}</{name}>"


def _doc(root: str, body: Iterable[str]) -> bytes:
    return f'{_DECL}<{root} xmlns="{S3_NS}">{"".join(body)}</{root}>'.encode("utf-8")


def _url(value: str | None, encode: bool) -> str | None:
    if value is None or not encode:
        return value
    return quote_plus(value, safe="/")


def _owner(tag: str, owner: Owner | None) -> str:
    if owner is None:
        return ""
    return f"<{tag}>{_e('ID', owner.id)}{_e('DisplayName', owner.display_name)}</{tag}>"


def _checksums(checksums: Mapping[str, str] | None) -> str:
    if not checksums:
        return ""
    return "".join(_e("Checksum" + alg.upper(), value) for alg, value in checksums.items())


def _common_prefixes(prefixes: Iterable[str], encode: bool) -> str:
    return "".join(
        f"<CommonPrefixes>{_e('Prefix', _url(p, encode))}</CommonPrefixes>" for p in prefixes
    )


def _contents(entries: Iterable[ObjectEntry], encode: bool, with_owner: bool) -> str:
    # The hot path of every listing: one f-string per entry.
    out = []
    for o in entries:
        key = xml_text(quote_plus(o.key, safe="/") if encode else o.key)
        owner = _owner("Owner", o.owner) if with_owner else ""
        alg = _e("ChecksumAlgorithm", o.checksum_algorithm)
        out.append(
            f"<Contents><Key>{key}</Key>"
            f"<LastModified>{format_time(o.last_modified)}</LastModified>"
            f"<ETag>{xml_text(quote_etag(o.etag))}</ETag>{alg}"
            f"<Size>{int(o.size)}</Size>{owner}"
            f"<StorageClass>{xml_text(o.storage_class)}</StorageClass></Contents>"
        )
    return "".join(out)


def list_buckets_result(
    owner: Owner,
    buckets: Iterable[BucketEntry],
    *,
    continuation_token: str | None = None,
    prefix: str | None = None,
) -> bytes:
    """ListAllMyBucketsResult (ListBuckets)."""
    items = "".join(
        "<Bucket>"
        + _e("Name", b.name)
        + _e("CreationDate", format_time(b.creation_date))
        + _e("BucketRegion", b.region)
        + "</Bucket>"
        for b in buckets
    )
    return _doc(
        "ListAllMyBucketsResult",
        [
            _owner("Owner", owner),
            f"<Buckets>{items}</Buckets>",
            _e("ContinuationToken", continuation_token),
            _e("Prefix", prefix),
        ],
    )


def list_objects_v1_result(
    *,
    bucket: str,
    prefix: str = "",
    marker: str = "",
    max_keys: int = 1000,
    is_truncated: bool = False,
    contents: Sequence[ObjectEntry] = (),
    common_prefixes: Sequence[str] = (),
    delimiter: str | None = None,
    next_marker: str | None = None,
    encoding_type: str | None = None,
) -> bytes:
    """ListBucketResult for ListObjects (v1). Owner is always included when known."""
    enc = encoding_type == "url"
    return _doc(
        "ListBucketResult",
        [
            _e("Name", bucket),
            _e("Prefix", _url(prefix, enc)),
            _e("Marker", _url(marker, enc)),
            _e("NextMarker", _url(next_marker, enc)),
            _e("MaxKeys", max_keys),
            _e("Delimiter", _url(delimiter, enc)),
            _e("EncodingType", encoding_type),
            _e("IsTruncated", is_truncated),
            _contents(contents, enc, True),
            _common_prefixes(common_prefixes, enc),
        ],
    )


def list_objects_v2_result(
    *,
    bucket: str,
    prefix: str = "",
    max_keys: int = 1000,
    is_truncated: bool = False,
    contents: Sequence[ObjectEntry] = (),
    common_prefixes: Sequence[str] = (),
    delimiter: str | None = None,
    continuation_token: str | None = None,
    next_continuation_token: str | None = None,
    start_after: str | None = None,
    encoding_type: str | None = None,
    fetch_owner: bool = False,
) -> bytes:
    """ListBucketResult for ListObjectsV2; KeyCount counts keys and common prefixes."""
    enc = encoding_type == "url"
    return _doc(
        "ListBucketResult",
        [
            _e("Name", bucket),
            _e("Prefix", _url(prefix, enc)),
            _e("StartAfter", _url(start_after, enc)),
            _e("ContinuationToken", continuation_token),
            _e("NextContinuationToken", next_continuation_token),
            _e("KeyCount", len(contents) + len(common_prefixes)),
            _e("MaxKeys", max_keys),
            _e("Delimiter", _url(delimiter, enc)),
            _e("EncodingType", encoding_type),
            _e("IsTruncated", is_truncated),
            _contents(contents, enc, fetch_owner),
            _common_prefixes(common_prefixes, enc),
        ],
    )


def list_versions_result(
    *,
    bucket: str,
    prefix: str = "",
    key_marker: str = "",
    version_id_marker: str = "",
    max_keys: int = 1000,
    is_truncated: bool = False,
    versions: Sequence[ObjectEntry] = (),
    delete_markers: Sequence[DeleteMarkerEntry] = (),
    common_prefixes: Sequence[str] = (),
    delimiter: str | None = None,
    next_key_marker: str | None = None,
    next_version_id_marker: str | None = None,
    encoding_type: str | None = None,
) -> bytes:
    """ListVersionsResult. Unversioned objects are listed with VersionId ``null``."""
    enc = encoding_type == "url"
    items = []
    for v in versions:
        items.append(
            "<Version>"
            + _e("Key", _url(v.key, enc))
            + _e("VersionId", v.version_id)
            + _e("IsLatest", v.is_latest)
            + _e("LastModified", format_time(v.last_modified))
            + _e("ETag", quote_etag(v.etag))
            + _e("ChecksumAlgorithm", v.checksum_algorithm)
            + f"<Size>{int(v.size)}</Size>"
            + _owner("Owner", v.owner)
            + _e("StorageClass", v.storage_class)
            + "</Version>"
        )
    for d in delete_markers:
        items.append(
            "<DeleteMarker>"
            + _e("Key", _url(d.key, enc))
            + _e("VersionId", d.version_id)
            + _e("IsLatest", d.is_latest)
            + _e("LastModified", format_time(d.last_modified))
            + _owner("Owner", d.owner)
            + "</DeleteMarker>"
        )
    return _doc(
        "ListVersionsResult",
        [
            _e("Name", bucket),
            _e("Prefix", _url(prefix, enc)),
            _e("KeyMarker", _url(key_marker, enc)),
            _e("VersionIdMarker", version_id_marker),
            _e("NextKeyMarker", _url(next_key_marker, enc)),
            _e("NextVersionIdMarker", next_version_id_marker),
            _e("MaxKeys", max_keys),
            _e("Delimiter", _url(delimiter, enc)),
            _e("EncodingType", encoding_type),
            _e("IsTruncated", is_truncated),
            "".join(items),
            _common_prefixes(common_prefixes, enc),
        ],
    )


def initiate_multipart_upload_result(bucket: str, key: str, upload_id: str) -> bytes:
    return _doc(
        "InitiateMultipartUploadResult",
        [_e("Bucket", bucket), _e("Key", key), _e("UploadId", upload_id)],
    )


def complete_multipart_upload_result(
    *,
    location: str,
    bucket: str,
    key: str,
    etag: str,
    checksums: Mapping[str, str] | None = None,
    checksum_type: str | None = None,
) -> bytes:
    return _doc(
        "CompleteMultipartUploadResult",
        [
            _e("Location", location),
            _e("Bucket", bucket),
            _e("Key", key),
            _e("ETag", quote_etag(etag)),
            _checksums(checksums),
            _e("ChecksumType", checksum_type),
        ],
    )


def list_parts_result(
    *,
    bucket: str,
    key: str,
    upload_id: str,
    parts: Sequence[PartEntry] = (),
    part_number_marker: int = 0,
    next_part_number_marker: int | None = None,
    max_parts: int = 1000,
    is_truncated: bool = False,
    owner: Owner | None = None,
    initiator: Owner | None = None,
    storage_class: str = "STANDARD",
    checksum_algorithm: str | None = None,
) -> bytes:
    items = "".join(
        "<Part>"
        + f"<PartNumber>{int(p.part_number)}</PartNumber>"
        + _e("LastModified", format_time(p.last_modified))
        + _e("ETag", quote_etag(p.etag))
        + f"<Size>{int(p.size)}</Size>"
        + _checksums(p.checksums)
        + "</Part>"
        for p in parts
    )
    return _doc(
        "ListPartsResult",
        [
            _e("Bucket", bucket),
            _e("Key", key),
            _e("UploadId", upload_id),
            _e("PartNumberMarker", part_number_marker),
            _e("NextPartNumberMarker", next_part_number_marker),
            _e("MaxParts", max_parts),
            _e("IsTruncated", is_truncated),
            _owner("Initiator", initiator or owner),
            _owner("Owner", owner),
            _e("StorageClass", storage_class),
            _e("ChecksumAlgorithm", checksum_algorithm),
            items,
        ],
    )


def list_multipart_uploads_result(
    *,
    bucket: str,
    uploads: Sequence[UploadEntry] = (),
    common_prefixes: Sequence[str] = (),
    prefix: str = "",
    key_marker: str = "",
    upload_id_marker: str = "",
    next_key_marker: str | None = None,
    next_upload_id_marker: str | None = None,
    max_uploads: int = 1000,
    is_truncated: bool = False,
    delimiter: str | None = None,
    encoding_type: str | None = None,
) -> bytes:
    enc = encoding_type == "url"
    items = "".join(
        "<Upload>"
        + _e("Key", _url(u.key, enc))
        + _e("UploadId", u.upload_id)
        + _owner("Initiator", u.owner)
        + _owner("Owner", u.owner)
        + _e("StorageClass", u.storage_class)
        + _e("Initiated", format_time(u.initiated))
        + _e("ChecksumAlgorithm", u.checksum_algorithm)
        + "</Upload>"
        for u in uploads
    )
    return _doc(
        "ListMultipartUploadsResult",
        [
            _e("Bucket", bucket),
            _e("KeyMarker", _url(key_marker, enc)),
            _e("UploadIdMarker", upload_id_marker),
            _e("NextKeyMarker", _url(next_key_marker, enc)),
            _e("NextUploadIdMarker", next_upload_id_marker),
            _e("Prefix", _url(prefix, enc)),
            _e("Delimiter", _url(delimiter, enc)),
            _e("MaxUploads", max_uploads),
            _e("EncodingType", encoding_type),
            _e("IsTruncated", is_truncated),
            items,
            _common_prefixes(common_prefixes, enc),
        ],
    )


def _copy_result(root: str, etag: str, last_modified, checksums) -> bytes:
    return _doc(
        root,
        [
            _e("ETag", quote_etag(etag)),
            _e("LastModified", format_time(last_modified)),
            _checksums(checksums),
        ],
    )


def copy_object_result(
    etag: str, last_modified: datetime | float, checksums: Mapping[str, str] | None = None
) -> bytes:
    return _copy_result("CopyObjectResult", etag, last_modified, checksums)


def copy_part_result(
    etag: str, last_modified: datetime | float, checksums: Mapping[str, str] | None = None
) -> bytes:
    return _copy_result("CopyPartResult", etag, last_modified, checksums)


def delete_result(
    deleted: Iterable[DeletedEntry], errors: Iterable[DeleteErrorEntry] = (), *, quiet: bool = False
) -> bytes:
    """DeleteResult; in quiet mode only the errors are reported."""
    items = []
    if not quiet:
        for d in deleted:
            items.append(
                "<Deleted>"
                + _e("Key", d.key)
                + _e("VersionId", d.version_id)
                + _e("DeleteMarker", d.delete_marker)
                + _e("DeleteMarkerVersionId", d.delete_marker_version_id)
                + "</Deleted>"
            )
    for err in errors:
        items.append(
            "<Error>"
            + _e("Key", err.key)
            + _e("VersionId", err.version_id)
            + _e("Code", err.code)
            + _e("Message", err.message)
            + "</Error>"
        )
    return _doc("DeleteResult", items)


def location_constraint(region: str | None) -> bytes:
    """GetBucketLocation: empty for us-east-1 (and for None), as S3 answers."""
    value = "" if not region or region == "us-east-1" else xml_text(region)
    return f'{_DECL}<LocationConstraint xmlns="{S3_NS}">{value}</LocationConstraint>'.encode()


def versioning_configuration(status: str | None = None) -> bytes:
    """GetBucketVersioning: an empty document for a bucket never versioned."""
    return _doc("VersioningConfiguration", [_e("Status", status)])

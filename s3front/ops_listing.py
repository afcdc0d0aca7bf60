"""Listing operations: ListObjects (v1), ListObjectsV2, ListObjectVersions (every
object is its own only version, VersionId "null", until versioning exists)."""

from __future__ import annotations

import base64
import binascii

from .context import Ctx
from .errors import S3Error
from .ops_buckets import owner, require_bucket, xml
from .xml_io import ObjectEntry, list_objects_v1_result, list_objects_v2_result, list_versions_result


def max_keys(query, name: str = "max-keys") -> int:
    raw = query.get(name, "1000")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise S3Error.of("InvalidArgument", f"Provided {name} not an integer or within integer range",
                         ArgumentName=name, ArgumentValue=raw)
    return min(value, 1000)


def encoding_type(query) -> str | None:
    enc = query.get("encoding-type")
    if enc is not None and enc.lower() != "url":
        raise S3Error.of("InvalidArgument", "Invalid Encoding Method specified in Request",
                         ArgumentName="encoding-type", ArgumentValue=enc)
    return "url" if enc else None


def entries(ctx: Ctx, page, with_owner: bool) -> list[ObjectEntry]:
    own = owner(ctx) if with_owner else None
    out = []
    for key, rec in page.entries:
        alg = next(iter(rec["meta"].get("checksums", {})), None) if rec.get("meta") else None
        out.append(ObjectEntry(key, rec["mtime"] / 1000, rec["etag"], rec["size"], owner=own,
                               checksum_algorithm=alg))
    return out


def _page(ctx: Ctx, start_after: str, limit: int):
    q = ctx.query
    return ctx.engine.list_objects(ctx.bucket, q.get("prefix", ""), q.get("delimiter", ""),
                                   start_after, limit)


async def list_objects_v1(ctx: Ctx):
    await ctx.node.fresh()
    require_bucket(ctx)
    q = ctx.query
    limit, enc = max_keys(q), encoding_type(q)
    marker = q.get("marker", "")
    page = _page(ctx, marker, limit)
    delimiter = q.get("delimiter") or None
    return xml(list_objects_v1_result(
        bucket=ctx.bucket, prefix=q.get("prefix", ""), marker=marker, max_keys=limit,
        is_truncated=page.is_truncated, contents=entries(ctx, page, True),
        common_prefixes=page.common_prefixes, delimiter=delimiter,
        next_marker=page.next_marker if page.is_truncated and delimiter else None,
        encoding_type=enc))


def encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def decode_token(token: str) -> str:
    try:
        # validate: a damaged token must not silently decode to "" (which restarts the listing)
        marker = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
        if not marker:
            raise ValueError("empty continuation token")
        return marker
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise S3Error.of("InvalidArgument", "The continuation token provided is incorrect",
                         ArgumentName="continuation-token", ArgumentValue=token) from None


async def list_objects_v2(ctx: Ctx):
    await ctx.node.fresh()
    require_bucket(ctx)
    q = ctx.query
    limit, enc = max_keys(q), encoding_type(q)
    token = q.get("continuation-token")
    start_after = q.get("start-after", "")
    marker = decode_token(token) if token is not None else start_after
    page = _page(ctx, marker, limit)
    return xml(list_objects_v2_result(
        bucket=ctx.bucket, prefix=q.get("prefix", ""), max_keys=limit,
        is_truncated=page.is_truncated,
        contents=entries(ctx, page, q.get("fetch-owner", "").lower() == "true"),
        common_prefixes=page.common_prefixes, delimiter=q.get("delimiter") or None,
        continuation_token=token,
        next_continuation_token=encode_token(page.next_marker) if page.is_truncated else None,
        start_after=start_after or None, encoding_type=enc, fetch_owner=True))


async def list_object_versions(ctx: Ctx):
    await ctx.node.fresh()
    require_bucket(ctx)
    q = ctx.query
    limit, enc = max_keys(q), encoding_type(q)
    key_marker = q.get("key-marker", "")
    page = _page(ctx, key_marker, limit)
    return xml(list_versions_result(
        bucket=ctx.bucket, prefix=q.get("prefix", ""), key_marker=key_marker,
        version_id_marker=q.get("version-id-marker", ""), max_keys=limit,
        is_truncated=page.is_truncated, versions=entries(ctx, page, True),
        common_prefixes=page.common_prefixes, delimiter=q.get("delimiter") or None,
        next_key_marker=page.next_marker if page.is_truncated else None,
        next_version_id_marker="null" if page.is_truncated else None, encoding_type=enc))


OPERATIONS = {
    "ListObjects": list_objects_v1,
    "ListObjectsV2": list_objects_v2,
    "ListObjectVersions": list_object_versions,
}

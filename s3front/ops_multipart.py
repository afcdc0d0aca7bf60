"""Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts,
ListMultipartUploads. Parts are chunks in the WAL like any object; completing an
upload is one log entry that hands the parts' chunks to the object, copying nothing."""

from __future__ import annotations

import base64
import hashlib
import secrets

from aiohttp import web

from engine import entries as E

from . import conditions, multipart_checksums, object_meta
from .checksums import checksum_headers, new_checksum, normalize_algorithm
from .context import Ctx
from .errors import S3Error
from .ingest import Body, ingest
from .ops_buckets import owner, require_bucket, result_error, xml
from .ops_listing import encoding_type, max_keys
from .ops_objects import check_new_key, now_ms, open_copy_source
from .xml_io import (
    PartEntry,
    UploadEntry,
    complete_multipart_upload_result,
    copy_part_result,
    initiate_multipart_upload_result,
    list_multipart_uploads_result,
    list_parts_result,
    parse_complete_multipart_upload,
)

MAX_PART = 5 << 30


def new_upload_id() -> str:
    """Time-ordered, so that uploads of one key list in initiation order."""
    return f"{now_ms():013x}{secrets.token_hex(12)}"


def _upload(ctx: Ctx) -> tuple[str, dict]:
    upload_id = ctx.query.get("uploadId", "")
    rec = ctx.engine.upload(ctx.bucket, ctx.key, upload_id)
    if rec is None:
        require_bucket(ctx)
        raise S3Error.of("NoSuchUpload", upload_id=upload_id)
    return upload_id, rec


def _part_number(ctx: Ctx) -> int:
    raw = ctx.query.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
        raise S3Error.of("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                         ArgumentName="partNumber", ArgumentValue=raw)
    return int(raw)


async def create_upload(ctx: Ctx):
    check_new_key(ctx)
    require_bucket(ctx)
    meta = object_meta.from_request(ctx.headers)
    alg = ctx.headers.get("x-amz-checksum-algorithm")
    alg = normalize_algorithm(alg) if alg else None
    kind = multipart_checksums.checksum_type(alg, ctx.headers.get("x-amz-checksum-type"))
    if alg:
        meta["checksum_algorithm"] = alg
        meta["checksum_type"] = kind
    upload_id = new_upload_id()
    res = await ctx.node.commit(E.CreateMultipartUpload(ctx.bucket, ctx.key, upload_id, now_ms(), meta))
    if res.error:
        raise result_error(res, bucket=ctx.bucket)
    headers = {"x-amz-checksum-algorithm": alg, "x-amz-checksum-type": kind} if alg else None
    return xml(initiate_multipart_upload_result(ctx.bucket, ctx.key, upload_id)) if not headers else \
        web.Response(body=initiate_multipart_upload_result(ctx.bucket, ctx.key, upload_id),
                     headers={"Content-Type": "application/xml", **headers})


async def upload_part(ctx: Ctx):
    number = _part_number(ctx)
    upload_id, rec = _upload(ctx)
    # a part of an upload created with a checksum algorithm gets that checksum even if
    # the client sent none: the object's checksum is made from the parts'
    ing = await ingest(ctx.node, ctx.request, ctx.auth, MAX_PART,
                       also=rec["meta"].get("checksum_algorithm"))
    res = await ctx.node.commit(E.PutPart(ctx.bucket, ctx.key, upload_id, number, ing.size, ing.etag,
                                          ing.chunks, now_ms(), ing.checksums, txn_id=ing.txn))
    if res.error:
        raise result_error(res, upload_id=upload_id)
    headers = {"ETag": f'"{ing.etag}"'}
    for alg, value in ing.checksums.items():
        headers["x-amz-checksum-" + alg.lower()] = value
    return web.Response(status=200, headers=headers)


async def upload_part_copy(ctx: Ctx):
    """A part made of (a range of) another object: its bytes are read and written as
    new chunks, since a range need not fall on chunk boundaries."""
    number = _part_number(ctx)
    await ctx.node.fresh()
    upload_id, rec = _upload(ctx)
    alg = rec["meta"].get("checksum_algorithm")
    checksum = new_checksum(alg) if alg else None
    reader = open_copy_source(ctx)  # conditions and bytes from one version of the source
    try:
        size = reader.info.size
        start, end = 0, size
        if "x-amz-copy-source-range" in ctx.headers:
            start, end = conditions.parse_copy_range(ctx.headers["x-amz-copy-source-range"], size)
        if end - start > MAX_PART:
            raise S3Error.of("EntityTooLarge")
    except BaseException:
        reader.close()
        raise
    node = ctx.node
    txn = node.begin()
    chunks = []
    md5 = hashlib.md5()

    def copy_range():
        buf = bytearray()
        for piece in reader.read(start, end):
            buf += piece
            while len(buf) >= node.config.chunk_size:
                data = bytes(buf[:node.config.chunk_size])
                del buf[:node.config.chunk_size]
                md5.update(data)
                if checksum is not None:
                    checksum.update(data)
                ref = node.write_chunk(txn, data)
                chunks.append((ref.chunk_id, ref.length))
        if buf:
            md5.update(buf)
            if checksum is not None:
                checksum.update(buf)
            ref = node.write_chunk(txn, bytes(buf))
            chunks.append((ref.chunk_id, ref.length))

    try:
        await node.in_io(copy_range)
    except BaseException:
        await node.abort(txn)
        raise
    finally:
        reader.close()
    etag = md5.hexdigest()
    checksums = {alg: base64.b64encode(checksum.digest()).decode()} if checksum is not None else {}
    res = await node.commit(E.PutPart(ctx.bucket, ctx.key, upload_id, number, end - start, etag,
                                      chunks, now_ms(), checksums, txn_id=txn))
    if res.error:
        raise result_error(res, upload_id=upload_id)
    return xml(copy_part_result(etag, now_ms() / 1000))


async def complete_upload(ctx: Ctx):
    condition = conditions.write_conditions(ctx.headers)
    body = await Body(ctx.request, ctx.auth).read_small(8 << 20)
    parts = parse_complete_multipart_upload(body)
    upload_id = ctx.query.get("uploadId", "")
    checksum = _object_checksum(ctx, upload_id, parts)
    res = await ctx.node.commit(E.CompleteMultipartUpload(
        ctx.bucket, ctx.key, upload_id, [(p.part_number, p.etag) for p in parts], now_ms(),
        ctx.node.config.min_part_size, **condition, checksum=checksum))
    if res.error:
        extra = {"upload_id": upload_id}
        if "part_number" in res.value:
            extra["PartNumber"] = str(res.value["part_number"])
        raise result_error(res, **extra)
    location = f"http://{ctx.request.host}/{ctx.bucket}/{ctx.key}"
    return xml(complete_multipart_upload_result(
        location=location, bucket=ctx.bucket, key=ctx.key, etag=res.value["etag"],
        checksums={checksum["algorithm"]: checksum["value"]} if checksum else None,
        checksum_type=checksum["type"] if checksum else None))


def _object_checksum(ctx: Ctx, upload_id: str, listed: list) -> dict | None:
    """The checksum the completed object will carry, from the stored parts' checksums
    (None for an upload created without an algorithm). A part's checksum given in the
    request must be the stored one (InvalidPart); a whole-object value given in a
    header must be the computed one (BadDigest). Parts that do not exist are left to
    the entry, which answers InvalidPart for them."""
    rec = ctx.engine.upload(ctx.bucket, ctx.key, upload_id)
    if rec is None or not rec["meta"].get("checksum_algorithm"):
        return None
    alg, kind = rec["meta"]["checksum_algorithm"], rec["meta"].get("checksum_type", "COMPOSITE")
    stored, after = {}, 0
    while True:
        page, truncated = ctx.engine.list_parts(upload_id, after, 1000)
        stored.update(page)
        if not truncated or not page:
            break
        after = page[-1][0]
    values = []
    for p in listed:
        part = stored.get(p.part_number)
        if part is None:
            return None  # the entry refuses the request (InvalidPart)
        value = (part.get("checksums") or {}).get(alg)
        if value is None:
            raise S3Error.of("InvalidRequest", f"The upload was created using a {alg.lower()} checksum. "
                             f"Part {p.part_number} was uploaded without one.")
        given = p.checksums.get(alg)
        if given is not None and given != value:
            raise S3Error.of("InvalidPart", "One or more of the specified parts could not be found. "
                             "The part may not have been uploaded, or the specified checksum may not "
                             "match the part's checksum.", upload_id=upload_id, PartNumber=str(p.part_number))
        values.append((value, part["size"]))
    if kind == "FULL_OBJECT":
        value = multipart_checksums.full_object(alg, values)
    else:
        value = multipart_checksums.composite(alg, [v for v, _ in values])
    given = checksum_headers(ctx.headers).get(alg)
    if given is not None and given != value:
        raise S3Error.of("BadDigest", f"The {alg.lower()} you specified for the object did not match "
                         "what we computed from its parts.")
    return {"algorithm": alg, "type": kind, "value": value, "parts": [v for v, _ in values]}


async def abort_upload(ctx: Ctx):
    upload_id = ctx.query.get("uploadId", "")
    res = await ctx.node.commit(E.AbortMultipartUpload(ctx.bucket, ctx.key, upload_id, at_ms=now_ms()))
    if res.error:
        raise result_error(res, upload_id=upload_id, bucket=ctx.bucket)
    return web.Response(status=204)


async def list_parts(ctx: Ctx):
    await ctx.node.fresh()
    upload_id, rec = _upload(ctx)
    marker_raw = ctx.query.get("part-number-marker", "0")
    if not marker_raw.isdigit():
        raise S3Error.of("InvalidArgument", "part-number-marker must be an integer",
                         ArgumentName="part-number-marker", ArgumentValue=marker_raw)
    marker = int(marker_raw)
    limit = max_keys(ctx.query, "max-parts")
    parts, truncated = ctx.engine.list_parts(upload_id, marker, limit) if limit else ([], False)
    entries = [PartEntry(n, p["mtime"] / 1000, p["etag"], p["size"], p.get("checksums") or {})
               for n, p in parts]
    return xml(list_parts_result(
        bucket=ctx.bucket, key=ctx.key, upload_id=upload_id, parts=entries,
        part_number_marker=marker, next_part_number_marker=entries[-1].part_number if entries else None,
        max_parts=limit, is_truncated=truncated, owner=owner(ctx),
        checksum_algorithm=rec["meta"].get("checksum_algorithm")))


async def list_uploads(ctx: Ctx):
    await ctx.node.fresh()
    require_bucket(ctx)
    q = ctx.query
    limit, enc = max_keys(q, "max-uploads"), encoding_type(q)
    key_marker, uid_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
    page = ctx.engine.list_uploads(ctx.bucket, q.get("prefix", ""), q.get("delimiter", ""),
                                   key_marker, uid_marker, limit)
    own = owner(ctx)
    uploads = [UploadEntry(k, uid, rec["initiated_ms"] / 1000, owner=own,
                           checksum_algorithm=rec["meta"].get("checksum_algorithm"))
               for k, uid, rec in page.uploads]
    return xml(list_multipart_uploads_result(
        bucket=ctx.bucket, uploads=uploads, common_prefixes=page.common_prefixes,
        prefix=q.get("prefix", ""), key_marker=key_marker, upload_id_marker=uid_marker,
        next_key_marker=page.next_key_marker if page.is_truncated else None,
        next_upload_id_marker=page.next_upload_id_marker if page.is_truncated else None,
        max_uploads=limit, is_truncated=page.is_truncated,
        delimiter=q.get("delimiter") or None, encoding_type=enc))


OPERATIONS = {
    "CreateMultipartUpload": create_upload,
    "UploadPart": upload_part,
    "UploadPartCopy": upload_part_copy,
    "CompleteMultipartUpload": complete_upload,
    "AbortMultipartUpload": abort_upload,
    "ListParts": list_parts,
    "ListMultipartUploads": list_uploads,
}

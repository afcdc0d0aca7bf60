"""Object operations: PutObject, GetObject, HeadObject, DeleteObject, CopyObject,
DeleteObjects."""

from __future__ import annotations

import asyncio
import collections
import time
from urllib.parse import unquote

from aiohttp import web

from engine import entries as E
from engine.errors import ChunkMissing

from . import conditions, object_meta
from .checksums import MultiHasher
from .context import Ctx
from .errors import S3Error
from .ingest import Body, ingest
from .names import check_bucket_name, check_key
from .ops_buckets import require_bucket, result_error, xml
from .xml_io import DeleteErrorEntry, DeletedEntry, copy_object_result, delete_result, parse_delete

SMALL_GET = 1 << 20  # objects up to this size are read in one go on the event loop


def now_ms() -> int:
    return int(time.time() * 1000)


def check_new_key(ctx: Ctx) -> None:
    """A key about to be written: S3's rules, and the store's own length limit."""
    check_key(ctx.key, ctx.engine.max_key_bytes(ctx.bucket))


async def put_object(ctx: Ctx):
    check_new_key(ctx)
    condition = conditions.write_conditions(ctx.headers)
    require_bucket(ctx)  # fail fast; the log's verdict is still the one that counts
    meta = object_meta.from_request(ctx.headers)
    ing = await ingest(ctx.node, ctx.request, ctx.auth, ctx.node.config.max_object_size)
    meta["checksums"] = ing.checksums
    res = await ctx.node.commit(E.PutObject(ctx.bucket, ctx.key, ing.size, ing.etag, ing.chunks,
                                            now_ms(), meta, txn_id=ing.txn, **condition))
    if res.error:
        raise result_error(res, bucket=ctx.bucket, key=ctx.key)
    headers = {"ETag": f'"{ing.etag}"'}
    for alg, value in ing.checksums.items():
        headers["x-amz-checksum-" + alg.lower()] = value
    return web.Response(status=200, headers=headers)


def _null_version_only(ctx: Ctx) -> None:
    """Versioning is off: an object's only version is "null". A request for another
    version must not be answered with (or act on) the current object."""
    version = ctx.query.get("versionId")
    if version is not None and version != "null":
        raise S3Error.of("NoSuchVersion", key=ctx.key, version_id=version)


def _open(ctx: Ctx):
    reader = ctx.engine.open_object(ctx.bucket, ctx.key)
    if reader is None:
        require_bucket(ctx)
        raise S3Error.of("NoSuchKey", key=ctx.key)
    return reader


def _part_range(info, query, headers) -> tuple[int, int] | None:
    if "partNumber" not in query:
        return None
    try:
        number = int(query["partNumber"])
    except ValueError:
        raise S3Error.of("InvalidArgument", "Part number must be an integer between 1 and 10000",
                         ArgumentName="partNumber", ArgumentValue=query["partNumber"]) from None
    if "Range" in headers:
        raise S3Error.of("InvalidRequest", "Cannot specify both Range header and partNumber query parameter")
    parts = info.parts or [[info.size, len(info.chunks)]]
    if not 1 <= number <= 10000:
        raise S3Error.of("InvalidArgument", "Part number must be an integer between 1 and 10000",
                         ArgumentName="partNumber", ArgumentValue=str(number))
    if number > len(parts):
        raise S3Error.of("InvalidPartNumber", "The requested partnumber is not satisfiable")
    start = sum(p[0] for p in parts[: number - 1])
    return start, start + parts[number - 1][0]


def _read_plan(ctx: Ctx, info):
    """(status, headers, start, end) for a GET or HEAD of this object."""
    headers = object_meta.response_headers(info, ctx.query)
    try:
        conditions.check(ctx.headers, info.etag, info.mtime_ms)
    except conditions.NotModified as nm:
        nm.headers = {"ETag": headers["ETag"], "Last-Modified": headers["Last-Modified"]}
        raise
    span = _part_range(info, ctx.query, ctx.headers)
    if span is None:
        span = conditions.parse_range(ctx.headers.get("Range"), info.size)
    if span is None:
        headers["Content-Length"] = str(info.size)
        if ctx.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
            # only a whole-object read carries the whole object's checksum
            stored = (info.meta or {}).get("checksums", {})
            for alg, value in stored.items():
                headers["x-amz-checksum-" + alg.lower()] = value
            if stored:
                headers["x-amz-checksum-type"] = info.meta.get("checksum_type", "FULL_OBJECT")
        return 200, headers, 0, info.size
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    headers["Content-Length"] = str(end - start)
    return 206, headers, start, end


async def get_object(ctx: Ctx):
    _null_version_only(ctx)
    await ctx.node.fresh()
    reader = _open(ctx)
    try:
        status, headers, start, end = _read_plan(ctx, reader.info)
        if end - start <= SMALL_GET:
            try:
                body = b"".join(reader.read(start, end))
            except ChunkMissing:  # in a group: this replica has not got it yet
                body = b"".join([bytes(await ctx.node.read_chunk_bytes(*span))
                                 for span in reader.spans(start, end)])
            return web.Response(status=status, body=body, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(ctx.request)
        await _stream_chunks(ctx, response, reader.spans(start, end))
        await response.write_eof()
        return response
    finally:
        reader.close()


READ_AHEAD = 2  # chunks read and verified ahead of the one being sent


async def _stream_chunks(ctx: Ctx, response, spans) -> None:
    """Send chunks in order while the next ones are read and hashed on other threads
    (two cores verify two chunks at once). Every buffer held takes a slot of the
    node's chunk-memory budget, shared with uploads, until it has been sent."""
    read, slots = ctx.node.read_chunk_bytes, ctx.node.ingest_slots
    queue: collections.deque = collections.deque()
    todo = iter(spans)

    async def fill():
        while len(queue) < READ_AHEAD + 1:
            span = next(todo, None)
            if span is None:
                return
            await slots.acquire()
            queue.append(asyncio.ensure_future(read(*span)))

    try:
        await fill()
        while queue:
            fut = queue.popleft()
            try:
                data = await fut
                await fill()
                await response.write(data)
            finally:
                slots.release()
    finally:
        for fut in queue:  # an error or a client gone: give back what was read ahead
            fut.cancel()
            slots.release()


async def head_object(ctx: Ctx):
    _null_version_only(ctx)
    await ctx.node.fresh()
    info = ctx.engine.head_object(ctx.bucket, ctx.key)
    if info is None:
        require_bucket(ctx)
        raise S3Error.of("NoSuchKey", key=ctx.key)
    status, headers, _start, _end = _read_plan(ctx, info)
    return web.Response(status=status, headers=headers)


async def delete_object(ctx: Ctx):
    _null_version_only(ctx)
    res = await ctx.node.commit(E.DeleteObject(ctx.bucket, ctx.key, at_ms=now_ms()))
    if res.error:
        raise result_error(res, bucket=ctx.bucket)
    return web.Response(status=204)


def parse_copy_source(value: str) -> tuple[str, str]:
    source, _, query = value.partition("?")
    if query and query not in ("versionId=null",):
        raise S3Error.of("InvalidArgument", "Only the null version can be copied from",
                         ArgumentName="x-amz-copy-source", ArgumentValue=value)
    source = unquote(source).lstrip("/")
    bucket, sep, key = source.partition("/")
    if not sep or not key:
        raise S3Error.of("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                         ArgumentName="x-amz-copy-source", ArgumentValue=value)
    check_bucket_name(bucket)
    check_key(key)
    return bucket, key


def open_copy_source(ctx: Ctx):
    """The copy source opened in one snapshot, its x-amz-copy-source-if-* conditions
    checked on exactly the version whose bytes a reader then gets."""
    src_bucket, src_key = parse_copy_source(ctx.headers["x-amz-copy-source"])
    reader = ctx.engine.open_object(src_bucket, src_key)
    if reader is None:
        if ctx.engine.bucket(src_bucket) is None:
            raise S3Error.of("NoSuchBucket", bucket=src_bucket)
        raise S3Error.of("NoSuchKey", key=src_key)
    try:
        conditions.check(ctx.headers, reader.info.etag, reader.info.mtime_ms,
                         prefix="x-amz-copy-source-")
    except BaseException:
        reader.close()
        raise
    return reader


def copy_source_info(ctx: Ctx):
    """The copy source's metadata (CopyObject copies by reference, conditioned on its
    ETag in the log entry, so it needs no reader)."""
    with open_copy_source(ctx) as reader:
        return reader.info


async def copy_object(ctx: Ctx):
    check_new_key(ctx)
    await ctx.node.fresh()
    directive = ctx.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error.of("InvalidArgument", "Unknown metadata directive.",
                         ArgumentName="x-amz-metadata-directive", ArgumentValue=directive)
    for attempt in range(3):
        src = copy_source_info(ctx)
        require_bucket(ctx)
        if (src.bucket, src.key) == (ctx.bucket, ctx.key) and directive == "COPY":
            raise S3Error.of("InvalidRequest",
                             "This copy request is illegal because it is trying to copy an object to itself "
                             "without changing the object's metadata, storage class, website redirect "
                             "location or encryption attributes.")
        meta = None
        if directive == "REPLACE":
            meta = object_meta.from_request(ctx.headers, src.meta.get("checksums"))
            if src.meta.get("checksum_type"):  # a multipart source's composite checksum
                meta["checksum_type"] = src.meta["checksum_type"]
        res = await ctx.node.commit(E.CopyObject(src.bucket, src.key, ctx.bucket, ctx.key, now_ms(),
                                                 meta, if_etag=src.etag))
        if res.error != "PreconditionFailed":  # the source changed under us: look again
            break
    if res.error:
        raise result_error(res, bucket=ctx.bucket)
    return xml(copy_object_result(res.value["etag"], res.value["mtime_ms"] / 1000))


async def delete_objects(ctx: Ctx):
    body = await Body(ctx.request, ctx.auth).read_small(2 << 20)
    if "Content-MD5" in ctx.headers:
        hasher = MultiHasher()
        hasher.update(body)
        hasher.verify_content_md5(ctx.headers["Content-MD5"])
    request = parse_delete(body)
    require_bucket(ctx)
    keys, errors = [], []
    for obj in request.objects:
        try:
            check_key(obj.key)
            if obj.version_id not in (None, "null"):
                raise S3Error.of("NoSuchVersion", "The specified version does not exist.")
            keys.append(obj.key)
        except S3Error as err:
            errors.append(DeleteErrorEntry(obj.key, err.code, err.message, obj.version_id))
    if keys:
        res = await ctx.node.commit(E.DeleteObjects(ctx.bucket, keys, at_ms=now_ms()))
        if res.error:
            raise result_error(res, bucket=ctx.bucket)
    deleted = [DeletedEntry(k) for k in keys]  # S3 reports absent keys as deleted too
    return xml(delete_result(deleted, errors, quiet=request.quiet))


OPERATIONS = {
    "PutObject": put_object,
    "GetObject": get_object,
    "HeadObject": head_object,
    "DeleteObject": delete_object,
    "CopyObject": copy_object,
    "DeleteObjects": delete_objects,
}

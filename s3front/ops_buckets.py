"""Bucket operations: ListBuckets, CreateBucket, HeadBucket, DeleteBucket,
GetBucketLocation, GetBucketVersioning."""

from __future__ import annotations

import time

from aiohttp import web

from engine import entries as E

from .context import Ctx
from .errors import S3Error
from .ingest import Body
from .xml_io import (
    BucketEntry,
    Owner,
    list_buckets_result,
    location_constraint,
    parse_create_bucket_configuration,
    versioning_configuration,
)

XML = {"Content-Type": "application/xml"}


def owner(ctx: Ctx) -> Owner:
    return Owner(ctx.node.access_key, "tidestore")


def xml(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, headers=XML)


def result_error(result, **extra) -> S3Error:
    return S3Error.of(result.error, **extra)


def require_bucket(ctx: Ctx) -> dict:
    rec = ctx.engine.bucket(ctx.bucket)
    if rec is None:
        raise S3Error.of("NoSuchBucket", bucket=ctx.bucket)
    return rec


async def list_buckets(ctx: Ctx):
    await ctx.node.fresh()
    prefix = ctx.query.get("prefix", "")
    entries = [BucketEntry(name, rec["created_ms"] / 1000, rec.get("region") or None)
               for name, rec in ctx.engine.list_buckets() if name.startswith(prefix)]
    return xml(list_buckets_result(owner(ctx), entries, prefix=prefix or None))


async def create_bucket(ctx: Ctx):
    body = await Body(ctx.request, ctx.auth).read_small(64 << 10)
    region = parse_create_bucket_configuration(body) if body.strip() else None
    if region and region != ctx.node.config.region:
        raise S3Error.of("InvalidLocationConstraint",
                         "The specified location-constraint is not valid for this server.")
    res = await ctx.node.commit(E.CreateBucket(ctx.bucket, int(time.time() * 1000),
                                               region or ctx.node.config.region))
    if res.error:
        raise result_error(res, bucket=ctx.bucket)
    return web.Response(status=200, headers={"Location": "/" + ctx.bucket})


async def head_bucket(ctx: Ctx):
    await ctx.node.fresh()
    rec = require_bucket(ctx)
    return web.Response(status=200, headers={"x-amz-bucket-region": rec.get("region") or ctx.node.config.region})


async def delete_bucket(ctx: Ctx):
    res = await ctx.node.commit(E.DeleteBucket(ctx.bucket, at_ms=int(time.time() * 1000)))
    if res.error:
        raise result_error(res, bucket=ctx.bucket)
    return web.Response(status=204)


async def get_bucket_location(ctx: Ctx):
    await ctx.node.fresh()
    rec = require_bucket(ctx)
    region = rec.get("region") or ctx.node.config.region
    return xml(location_constraint(None if region == "us-east-1" else region))


async def get_bucket_versioning(ctx: Ctx):
    await ctx.node.fresh()
    require_bucket(ctx)
    return xml(versioning_configuration(None))


OPERATIONS = {
    "ListBuckets": list_buckets,
    "CreateBucket": create_bucket,
    "HeadBucket": head_bucket,
    "DeleteBucket": delete_bucket,
    "GetBucketLocation": get_bucket_location,
    "GetBucketVersioning": get_bucket_versioning,
}

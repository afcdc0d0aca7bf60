"""The aiohttp application: one catch-all route, authentication, dispatch to the
operation, and S3 XML errors with a request id for anything that goes wrong.

A failure after a streamed response has started cannot change its status: the
connection is then cut, which every S3 client treats as a failed transfer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets

from aiohttp import web

from engine.errors import ChunkMissing
from raftlog import LogUnavailable
from tiering.errors import ColdChunkUnavailable, ColdLagExceeded

from . import ops_buckets, ops_listing, ops_multipart, ops_objects, sigv2
from .conditions import NotModified
from .context import Ctx
from .errors import S3Error, error_xml
from .metrics import metrics_endpoint
from .routing import resolve, split_target, vhost_bucket
from .sigv4 import split_raw_target, verify_request

log = logging.getLogger("tidestore.s3")

_REQUEST_PREFIX = secrets.token_hex(4).upper()  # this process's; the counter follows
_request_counter = itertools.count(1)


def next_request_id() -> str:
    """16 hex digits (more after 2**32 requests), unique per request: a random
    per-process prefix and a counter (an id correlates logs; it needs no secrecy, and
    os.urandom per request gave up the GIL on the event loop for each one)."""
    return f"{_REQUEST_PREFIX}{next(_request_counter):08X}"


OPERATIONS = {}
for _module in (ops_buckets, ops_objects, ops_listing, ops_multipart):
    OPERATIONS.update(_module.OPERATIONS)


class InFlight:
    """Counts requests being handled, so a shutdown can wait for them to finish."""

    def __init__(self):
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def make_app(node) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app["node"] = node
    app["in_flight"] = InFlight()
    # [\s\S], not ".": a key may hold a newline (%0A), and "." would leave such paths to
    # aiohttp's plain-text 404 instead of S3
    # operator endpoints: "_" cannot start a bucket name, so no S3 path is shadowed
    app.router.add_get("/_tidestore/status", group_status)
    app.router.add_get("/_tidestore/health", health)
    app.router.add_get("/_tidestore/metrics", metrics_endpoint(node))
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)
    return app


async def group_status(request: web.Request) -> web.Response:
    """Every member's role, term, commit and applied LSN, lag and health, as JSON:
    what `tidestore status` shows. Unauthenticated, like a health check: it carries
    no object data or names."""
    members = await request.app["node"].group_status()
    return web.json_response({"members": members})


async def health(request: web.Request) -> web.Response:
    """200 when this node can serve fresh reads (it reaches a quorum), else 503."""
    try:
        await request.app["node"].fresh()
    except LogUnavailable as exc:
        return web.json_response({"healthy": False, "reason": str(exc)}, status=503)
    return web.json_response({"healthy": True})


async def dispatch(request: web.Request) -> web.StreamResponse:
    in_flight = request.app["in_flight"]
    in_flight.enter()
    try:
        return await _dispatch(request)
    finally:
        in_flight.leave()


async def _dispatch(request: web.Request) -> web.StreamResponse:
    node = request.app["node"]
    request_id = next_request_id()
    try:
        domains = node.config.virtual_host_domains
        bucket, key = split_target(request.host, request.raw_path, domains)
        raw_path, raw_query = split_raw_target(request.raw_path)
        if sigv2.is_v2(request.headers, raw_query):
            auth = sigv2.verify_request(request.method, raw_path, raw_query, request.headers,
                                        node.lookup_secret, vhost_bucket(request.host, domains))
        else:
            auth = verify_request(request.method, raw_path, raw_query, request.headers,
                                  node.lookup_secret)
        route = resolve(request.method, bucket, key, request.query, request.headers)
        handler = OPERATIONS.get(route.operation)
        if handler is None:
            raise S3Error.of("NotImplemented", f"{route.operation} is not implemented.")
        response = await handler(Ctx(request, node, route.bucket, route.key, auth, request_id))
    except NotModified as nm:
        response = web.Response(status=304, headers=getattr(nm, "headers", None) or {})
    except S3Error as err:
        response = error_response(err, request_id, request)
    except ColdLagExceeded as exc:
        response = error_response(S3Error.of("SlowDown", f"Please reduce your request rate: {exc}"),
                                  request_id, request)
    except LogUnavailable as exc:
        response = error_response(S3Error.of("ServiceUnavailable", str(exc)), request_id, request)
    except ColdChunkUnavailable as exc:
        log.error("cold read failed: %s", exc)
        response = error_response(S3Error.of("ServiceUnavailable", "The data cannot be read from cold storage right now; retry."),
                                  request_id, request)
    except ChunkMissing:  # a replica still filling in chunks it missed while down
        response = error_response(S3Error.of("ServiceUnavailable", "This replica does not hold the data yet; retry."),
                                  request_id, request)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 - a bug: log it, answer InternalError, never a traceback
        log.exception("request %s %s failed", request.method, request.raw_path)
        response = error_response(S3Error.of("InternalError"), request_id, request)
    response.headers["x-amz-request-id"] = request_id
    response.headers["x-amz-id-2"] = request_id
    response.headers["Server"] = "Tidestore"
    return response


def error_response(err: S3Error, request_id: str, request: web.Request) -> web.Response:
    if err.resource is None:
        err.resource = request.path
    headers = {"Content-Type": "application/xml"}
    headers.update(getattr(err, "headers", None) or {})
    body = None if request.method == "HEAD" else error_xml(err, request_id)
    if request.method == "HEAD":
        headers["x-amz-error-code"] = err.code
    response = web.Response(status=err.status, body=body, headers=headers)
    if request.body_exists and not request.content.is_eof():
        # the body was not read: close rather than parse its bytes as the next request
        response.force_close()
    return response

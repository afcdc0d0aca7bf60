"""Helpers shared by the tests/s3/test_s3_api_*.py files (no tests in here):
fresh names, error-code extraction, and raw HTTP requests, anonymous or signed with
botocore's own SigV4 signer (optionally with a chosen date, secret or body), sent
with http.client so that every header (Host included) is exactly what we say."""

from __future__ import annotations

import datetime as _dt
import http.client
import itertools
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urlsplit

from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

__test__ = False  # nothing to collect here

_ids = itertools.count()
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def fresh_name(tag: str = "b") -> str:
    return f"t{tag}-{os.getpid()}-{next(_ids)}".lower()


def code_of(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


def status_of(exc_info) -> int:
    return exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"]


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def error(self) -> dict:
        """The S3 <Error> document as a dict of its child elements."""
        root = ET.fromstring(self.body)
        assert root.tag == "Error", self.body
        return {child.tag: (child.text or "") for child in root}

    def xml(self) -> ET.Element:
        return ET.fromstring(self.body)


def raw(server, method: str, target: str, body: bytes | None = b"", headers: dict | None = None,
        host: str | None = None) -> RawResponse:
    """Send one request as-is: `target` is the raw (already encoded) path and query."""
    u = urlsplit(server.endpoint)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": host or u.netloc, **(headers or {})}
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k in hdrs):
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, resp.headers, data)
    finally:
        conn.close()


class _FixedDateAuth(S3SigV4Auth):
    """botocore's S3 SigV4 signer, with the request time chosen by the caller."""

    def __init__(self, credentials, when: _dt.datetime | None):
        super().__init__(credentials, "s3", "us-east-1")
        self._when = when

    def add_auth(self, request):
        when = self._when or _dt.datetime.now(_dt.timezone.utc)
        request.context["timestamp"] = when.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical)
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


def signed(server, method: str, target: str, body: bytes = b"", headers: dict | None = None, *,
           host: str | None = None, access_key: str | None = None, secret_key: str | None = None,
           when: _dt.datetime | None = None, send_body: bytes | None = None) -> RawResponse:
    """A request signed by botocore (payload hash included), then sent raw.
    `send_body` replaces the body on the wire after signing (to break the payload hash)."""
    u = urlsplit(server.endpoint)
    netloc = host or u.netloc
    req = AWSRequest(method, f"http://{netloc}{target}", data=body, headers=dict(headers or {}))
    req.headers["Host"] = netloc
    creds = Credentials(access_key or server.access_key, secret_key or server.secret_key)
    _FixedDateAuth(creds, when).add_auth(req)
    out_headers = {k: v for k, v in req.headers.items() if k.lower() != "host"}
    return raw(server, method, target, body=body if send_body is None else send_body,
               headers=out_headers, host=netloc)

"""Helpers for the s3front tests: a real botocore S3 client whose requests are
captured just before they would hit the network (``before-send``), answered
with a canned response so that botocore's own parsers read our XML."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import botocore.session
from botocore.auth import _host_from_url
from botocore.awsrequest import AWSResponse
from botocore.config import Config

AK = "AKIDTIDESTORE0000001"
SK = "tide/Secret+Key=with/odd+chars0123456789"


def lookup(access_key: str) -> str | None:
    return SK if access_key == AK else None


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_kwargs):
        yield self._body


@dataclass
class Captured:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    @property
    def raw_path(self) -> str:
        return urlsplit(self.url).path

    @property
    def raw_query(self) -> str:
        return urlsplit(self.url).query


@dataclass
class Recorder:
    requests: list[Captured] = field(default_factory=list)
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def respond(self, body: bytes = b"", status: int = 200, headers: dict | None = None) -> None:
        self.body, self.status, self.headers = body, status, dict(headers or {})

    @property
    def last(self) -> Captured:
        return self.requests[-1]

    def __call__(self, request, **_kwargs):
        headers = {}
        for name, value in request.headers.items():
            headers[name] = value.decode("utf-8") if isinstance(value, bytes) else value
        if not any(k.lower() == "host" for k in headers):  # botocore's CRT signer sets "host"
            headers["Host"] = _host_from_url(request.url)
        body = request.body
        if body is None:
            data = b""
        elif isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = body.read()
        self.requests.append(Captured(request.method, request.url, headers, data))
        return AWSResponse(request.url, self.status, self.headers, _Raw(self.body))


@functools.lru_cache(maxsize=1)
def _session():
    return botocore.session.get_session()


def make_client(
    endpoint: str = "http://127.0.0.1:9000",
    region: str = "us-east-1",
    access_key: str = AK,
    secret_key: str = SK,
    **config,
):
    session = _session()
    client = session.create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            signature_version="s3v4",
            **config,
        ),
    )
    recorder = Recorder()
    client.meta.events.register("before-send.s3", recorder)
    return client, recorder

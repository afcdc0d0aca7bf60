"""Everything a handler needs about one request."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .sigv4 import AuthResult


@dataclass
class Ctx:
    request: web.Request
    node: object  # tidestore.node.Node (the facade; s3front does not import it)
    bucket: str | None
    key: str | None
    auth: AuthResult
    request_id: str

    @property
    def query(self):
        return self.request.query

    @property
    def headers(self):
        return self.request.headers

    @property
    def engine(self):
        return self.node.engine

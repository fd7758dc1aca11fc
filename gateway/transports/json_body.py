"""The single-JSON response style: one complete GraphQL response in one body, with the
status codes of the GraphQL-over-HTTP spec and HTTP caching for GET.

``application/graphql-response+json`` answers a request error with 4xx; legacy
``application/json`` with 200 (the spec's rule for clients that predate it). A GET carries a
weak ``ETag``; answered entirely from fresh cache entries it is cacheable by the browser
(``private, max-age``), otherwise ``private, no-cache``; a matching ``If-None-Match`` gets 304.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response

from gateway.data.answer_store import weak_etag
from gateway.transports.negotiation import APPLICATION_JSON
from gateway.transports.operation import Answer
from gateway.transports.refusals import Refusal
from gateway.transports.request_head import request_head
from gateway.transports.response_style import VARY


class JsonBodyStyle:
    """Answers with one JSON body of ``media_type`` (a ``ResponseStyle``)."""

    def __init__(self, media_type: str) -> None:
        self.media_type = media_type
        self.legacy = media_type == APPLICATION_JSON

    def refused(self, refusal: Refusal, request: Request | None) -> Response:
        return self._respond(
            refusal.status_for(legacy=self.legacy), refusal.body(), refusal.headers, request
        )

    def answered(self, answer: Answer, request: Request) -> Response:
        status = 400 if answer.rejected and not self.legacy else 200
        return self._respond(
            status, answer.body, {}, request, cacheable_for=answer.fresh_for, etag=answer.etag
        )

    def _respond(
        self,
        status: int,
        body: bytes,
        extra_headers: dict[str, str],
        request: Request | None,
        cacheable_for: float | None = None,
        etag: str | None = None,
    ) -> Response:
        headers = {"Vary": VARY, **extra_headers}
        if request is not None and request.method == "GET":
            # A stored answer brings the ETag computed when it was stored.
            etag = etag or weak_etag(body)
            headers["ETag"] = etag
            headers["Cache-Control"] = cache_control(status, cacheable_for)
            if status == 200 and etag_matches(_if_none_match(request), etag):
                return Response(status_code=304, headers=headers)
        return Response(
            body,
            status_code=status,
            headers=headers,
            media_type=f"{self.media_type}; charset=utf-8",
        )


def _if_none_match(request: Request) -> str | None:
    value = request_head(request.scope).get(b"if-none-match")
    return None if value is None else value.decode("latin-1")


def cache_control(status: int, cacheable_for: float | None) -> str:
    """A GET answer's ``Cache-Control``: cacheable while every entry it used stays fresh."""
    if cacheable_for is not None and cacheable_for >= 1 and status == 200:
        return f"private, max-age={math.floor(cacheable_for)}"
    return "private, no-cache"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weakly, or by ``*``): then 304."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in if_none_match.split(","))

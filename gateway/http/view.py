"""``/graphql``: GraphQL over HTTP as its spec says, in front of the operation runner.

One request: the method is checked (405), a browser asking for HTML gets GraphiQL
(development), a response style is negotiated from ``Accept`` (406 when none fits), the
parameters are read (``graphql_request``), and the ``OperationRunner`` (``operation``) runs
them. The style (``response_style``; ``json_body`` today) writes what comes out, an answer or
a refusal; every refusal has the one body of ``refusals``, never a ``data`` entry.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.federated_trace import HEADER as FEDERATED_TRACE_HEADER
from gateway.api.federated_trace import wants_federated_trace
from gateway.errors import ErrorCode
from gateway.http.graphiql import graphiql_response
from gateway.http.graphql_request import has_graphql_parameters, params_of
from gateway.http.json_body import JsonBodyStyle
from gateway.http.negotiation import (
    APPLICATION_JSON,
    GRAPHQL_RESPONSE_JSON,
    choose_media_type,
    wants_html,
)
from gateway.http.operation import OperationCall, OperationRunner
from gateway.http.refusals import Refusal
from gateway.http.response_style import ResponseStyle

# Request header asking for ``extensions.cache`` (what each upstream ask was served from).
CACHE_REPORT_HEADER = "gateway-cache-report"
_ALLOWED_METHODS = "GET, POST"
# Refusals made before a style is negotiated are plain JSON.
_PLAIN_JSON = JsonBodyStyle(APPLICATION_JSON)


def choose_style(accept: str | None) -> ResponseStyle | None:
    """The style ``Accept`` asks for, or None when we can answer with none of its types."""
    media_type = choose_media_type(accept)
    return JsonBodyStyle(media_type) if media_type is not None else None


class GraphQLView:
    """The ASGI app behind ``/graphql``. Built once by ``create_app``; holds no request
    state."""

    def __init__(self, *, runner: OperationRunner, ide_page: str | None) -> None:
        self.runner = runner
        self.ide_page = ide_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        accept = request.headers.get("accept")
        if request.method not in ("GET", "POST"):
            refusal = Refusal(
                405,
                f"{request.method} is not supported here; use GET or POST.",
                ErrorCode.BAD_USER_INPUT,
                headers={"Allow": _ALLOWED_METHODS},
            )
            return _PLAIN_JSON.refused(refusal, None)
        if (
            request.method == "GET"
            and self.ide_page is not None
            and wants_html(accept)
            and not has_graphql_parameters(request.query_params)
        ):
            return graphiql_response(self.ide_page)
        style = choose_style(accept)
        if style is None:
            refusal = Refusal(
                406,
                f"Cannot answer with any type in Accept: {accept!r}; accept "
                f"{GRAPHQL_RESPONSE_JSON} or {APPLICATION_JSON}.",
            )
            return _PLAIN_JSON.refused(refusal, None)
        try:
            answer = await self.runner.run(await _operation_call(request))
        except Refusal as refusal:
            return style.refused(refusal, request)
        return style.answered(answer, request)


async def _operation_call(request: Request) -> OperationCall:
    headers = request.headers
    return OperationCall(
        connection=request,
        params=await params_of(request),
        authorization=headers.get("authorization"),
        queries_only=request.method == "GET",
        refresh="no-cache" in headers.get("cache-control", "").lower(),
        report_cache=headers.get(CACHE_REPORT_HEADER, "").lower() in ("1", "true", "yes"),
        federated_trace=wants_federated_trace(headers.get(FEDERATED_TRACE_HEADER)),
        shape=request.method,
    )

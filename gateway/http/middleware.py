"""HTTP middleware in front of the GraphQL view: the request log line (with the request id,
metrics and server span), compression, the body size limit, and CSRF prevention. Pure ASGI,
so a refused request costs no parsing at all.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any
from urllib.parse import unquote_plus

import orjson
import structlog
from brotli_asgi import BrotliMiddleware
from opentelemetry.trace import Span, Status, StatusCode
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ErrorCode
from gateway.http.graphql_request import GRAPHQL_PARAMETERS
from gateway.http.negotiation import choose_encoding
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import (
    REQUEST_ID_HEADER,
    UPSTREAM_CALLS_LOGGED,
    RequestFacts,
    client_field,
    collecting,
    request_id_from,
)
from gateway.observability.tracing import Tracing, server_span, trace_id_of

log = structlog.get_logger("gateway.http")

GRAPHQL_ROUTE = "/graphql"
KNOWN_ROUTES = frozenset({GRAPHQL_ROUTE, "/healthz", "/readyz", "/metrics"})
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Refusals made before GraphQL runs are a few hundred bytes; longer bodies are not read.
ERROR_BODY_READ_MAX = 16 * 1024

# Content types a browser may send cross-site without a CORS preflight (Fetch standard).
SIMPLE_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)


async def send_error(
    send: Send,
    status: int,
    message: str,
    code: ErrorCode,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    extensions: dict[str, Any] | None = None,
) -> None:
    """A GraphQL-shaped error body for refusals made before GraphQL runs."""
    error = {"message": message, "extensions": {"code": code.value, **(extensions or {})}}
    body = orjson.dumps({"errors": [error]})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


class RequestLogMiddleware:
    """Per HTTP request: one log line, the HTTP and GraphQL metrics, the ``X-Request-ID``
    response header and, with tracing on, the SERVER span. Never a header's value other than
    the request id and the client's name and version (both bounded), never a body's content.

    The request's id (a valid incoming ``X-Request-ID``, else a new one) and trace id are
    bound in structlog's context for the whole request, so every line it causes carries them.
    GraphQL facts arrive through the request's ``RequestFacts`` (see ``request_facts``); a
    request refused before GraphQL runs (CSRF, 413, 415, bad JSON, an unknown APQ hash) has
    a small JSON error body, from which the error codes are read instead. Probes (``/healthz``,
    ``/readyz``, ``/metrics``) log at debug and have no span.
    """

    def __init__(
        self, app: ASGIApp, metrics: GatewayMetrics, tracing: Tracing | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracing.tracer if tracing is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = _route(scope)
        probe = route in PROBE_ROUTES
        facts = RequestFacts(
            request_id=request_id_from(_header(scope, REQUEST_ID_HEADER.encode())),
            client_name=client_field(_header(scope, b"apollographql-client-name")),
            client_version=client_field(_header(scope, b"apollographql-client-version")),
            tracer=None if probe else self.tracer,
        )
        response = _ResponseWatch(facts, sniff_errors=route == GRAPHQL_ROUTE)
        with ExitStack() as request_scope:
            span: Span | None = None
            if facts.tracer is not None:
                method = scope["method"]
                span = request_scope.enter_context(
                    server_span(
                        facts.tracer,
                        name=f"{method} {route}" if route in KNOWN_ROUTES else method,
                        traceparent=_header(scope, b"traceparent"),
                        attributes={
                            "http.request.method": method,
                            "http.route": route,
                            "url.scheme": scope.get("scheme", "http"),
                            "gateway.request_id": facts.request_id,
                        },
                    )
                )
                facts.trace_id = trace_id_of(span)
            request_scope.enter_context(collecting(facts))
            bound = {"requestId": facts.request_id}
            if facts.trace_id is not None:
                bound["traceId"] = facts.trace_id
            request_scope.enter_context(structlog.contextvars.bound_contextvars(**bound))
            if not probe:
                self.metrics.http_in_flight.inc()
                request_scope.callback(self.metrics.http_in_flight.dec)
            try:
                await self.app(scope, receive, response.send_to(send))
            finally:
                elapsed = time.perf_counter() - started
                response.read_error_codes()
                if span is not None:
                    _end_server_span(span, response.status, facts)
                self._record(scope, route, facts, response.status, elapsed, probe)

    def _record(
        self,
        scope: Scope,
        route: str,
        facts: RequestFacts,
        status: int,
        elapsed: float,
        probe: bool,
    ) -> None:
        self.metrics.http_requests.labels(route=route, status=str(status)).inc()
        self.metrics.http_duration.labels(route=route).observe(elapsed)
        line: dict[str, Any] = {
            "requestId": facts.request_id,
            "method": scope["method"],
            "route": route,
            "status": status,
            "durationMs": round(elapsed * 1000, 1),
        }
        if facts.trace_id is not None:
            line["traceId"] = facts.trace_id
        if route == GRAPHQL_ROUTE:
            line.update(_graphql_fields(facts))
            if facts.attempted:
                self.metrics.observe_operation(
                    operation_name=facts.operation_name,
                    executed=facts.executed,
                    outcome=facts.outcome,
                    client_name=facts.client_name,
                    seconds=elapsed,
                )
        if probe:
            log.debug("http_request", **line)
        else:
            log.info("http_request", **line)


def app_path(scope: Scope) -> str:
    """The path the app routes on: without a ``--root-path`` prefix (uvicorn puts the prefix
    in ``path`` too)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


def _route(scope: Scope) -> str:
    """The path the app routes on, or ``other``."""
    path = app_path(scope)
    return path if path in KNOWN_ROUTES else "other"


def _graphql_fields(facts: RequestFacts) -> dict[str, Any]:
    calls = facts.upstream_calls
    fields: dict[str, Any] = {
        "operationName": facts.operation_name,
        "operationType": facts.operation_type,
        "clientName": facts.client_name,
        "clientVersion": facts.client_version,
        "errorCodes": facts.error_codes,
        "upstreamCalls": len(calls),
        "upstream": [call.as_log() for call in calls[:UPSTREAM_CALLS_LOGGED]],
        "cache": facts.cache,
    }
    if facts.attempted:
        fields["outcome"] = facts.outcome
    return fields


def _end_server_span(span: Span, status: int, facts: RequestFacts) -> None:
    span.set_attribute("http.response.status_code", status)
    if facts.operation_name is not None:
        span.set_attribute("graphql.operation.name", facts.operation_name)
    if facts.client_name is not None:
        span.set_attribute("graphql.client.name", facts.client_name)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


class _ResponseWatch:
    """Watches the response go out: its status; the ``X-Request-ID`` header added; and, for
    a GraphQL request that never executed (refused before GraphQL ran, or by it: an
    ``operationName`` naming no operation), its small JSON body, to read the error codes."""

    def __init__(self, facts: RequestFacts, *, sniff_errors: bool) -> None:
        self.facts = facts
        self.status = 500  # what the caller gets if the app fails before answering
        self.sniff_errors = sniff_errors
        self._body: bytearray | None = None

    def send_to(self, send: Send) -> Send:
        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = self.facts.request_id
                if self.sniff_errors and not self.facts.executed and _plain_json(headers):
                    self._body = bytearray()
            elif message["type"] == "http.response.body" and self._body is not None:
                self._body += message.get("body", b"")
                if len(self._body) > ERROR_BODY_READ_MAX:
                    self._body = None
            await send(message)

        return watched_send

    def read_error_codes(self) -> None:
        body, self._body = self._body, None
        if not body:
            return
        try:
            errors = orjson.loads(body).get("errors")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if not isinstance(errors, list):
            return
        codes = [
            str(error["extensions"]["code"])
            for error in errors
            if isinstance(error, dict)
            and isinstance(error.get("extensions"), dict)
            and "code" in error["extensions"]
        ]
        if codes:
            self.facts.attempted = True
            self.facts.add_error_codes(codes)


def _plain_json(headers: MutableHeaders) -> bool:
    return "json" in headers.get("content-type", "") and "content-encoding" not in headers


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, by declared length or by counting, and
    bodies that do not arrive within ``read_timeout`` seconds with 408."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"The request body is larger than {self.max_bytes} bytes."
        declared = _header(scope, b"content-length")
        if declared is not None and _DIGITS.fullmatch(declared) and int(declared) > self.max_bytes:
            await send_error(send, 413, too_large, ErrorCode.BAD_USER_INPUT)
            return
        # Read the body here (bounded in size and time), so a chunked body can't grow past
        # the limit and a trickling one can't hold the request open.
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await send_error(send, 413, too_large, ErrorCode.BAD_USER_INPUT)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await send_error(
                send,
                408,
                f"The request body did not arrive within {self.read_timeout:g} s.",
                ErrorCode.BAD_USER_INPUT,
                headers=[(b"connection", b"close")],
            )
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class CompressionMiddleware:
    """br or gzip for responses of ``minimum_size`` bytes or more, as ``Accept-Encoding``
    allows (q-values honoured: ``br;q=0`` is a refusal), with ``Vary: Accept-Encoding`` on
    every response so shared caches keep the variants apart. The compressing itself is
    brotli-asgi's; this only negotiates, then hands it exactly the one coding chosen."""

    def __init__(self, app: ASGIApp, minimum_size: int) -> None:
        self.app = app
        self.compressing = _vary_on_encoding(
            BrotliMiddleware(app, quality=4, minimum_size=minimum_size, gzip_fallback=True)
        )
        self.plain = _vary_on_encoding(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = _header(scope, b"accept-encoding")
        coding = choose_encoding(raw.decode("latin-1")) if raw is not None else None
        if coding is None:
            await self.plain(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
        headers.append((b"accept-encoding", coding.encode()))
        await self.compressing({**scope, "headers": headers}, receive, send)


def _vary_on_encoding(app: ASGIApp) -> ASGIApp:
    async def with_vary(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "accept-encoding" not in headers.get("vary", "").lower():
                    headers.add_vary_header("Accept-Encoding")
            await send(message)

        await app(scope, receive, send_with_vary)

    return with_vary


_DIGITS = re.compile(rb"[0-9]+")


def _names_a_graphql_parameter(query_string: bytes) -> bool:
    """Whether a query string names a GraphQL parameter; only the names are decoded (an
    escaped name such as ``%71uery`` counts, as it will for the view)."""
    for part in query_string.split(b"&"):
        name = part.partition(b"=")[0]
        if b"%" in name or b"+" in name:
            if unquote_plus(name.decode("latin-1")) in GRAPHQL_PARAMETERS:
                return True
        elif name.decode("latin-1") in GRAPHQL_PARAMETERS:
            return True
    return False


class CsrfPreventionMiddleware:
    """Apollo Router's CSRF rule: an operation sent with no content type, or a "simple" one
    a browser can send cross-site without a preflight, needs one of ``required_headers``,
    non-empty. Only GET and POST run operations: preflights (``OPTIONS``) and other methods pass
    (to a 405), as does a GET without GraphQL parameters (a browser opening GraphiQL)."""

    def __init__(
        self, app: ASGIApp, path: str = "/graphql", required_headers: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.path = path
        self.required_headers = tuple(name.lower().encode() for name in required_headers)
        names = " or ".join(f"'{name}'" for name in required_headers)
        self.message = (
            "This operation has been blocked as a potential Cross-Site Request Forgery "
            f"(CSRF). Send it with 'Content-Type: application/json', or add a non-empty {names} "
            "header."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or app_path(scope) != self.path or self._safe(scope):
            await self.app(scope, receive, send)
            return
        await send_error(send, 400, self.message, ErrorCode.BAD_USER_INPUT)

    def _safe(self, scope: Scope) -> bool:
        method = scope["method"]
        if method not in ("GET", "POST"):
            return True  # preflights and other methods never run an operation
        if method == "GET" and not _names_a_graphql_parameter(scope.get("query_string", b"")):
            return True
        content_type = _header(scope, b"content-type")
        if content_type is not None:
            essence = content_type.split(b";")[0].strip().lower().decode("latin-1")
            if essence and essence not in SIMPLE_CONTENT_TYPES:
                return True
        return any(_header(scope, name) for name in self.required_headers)

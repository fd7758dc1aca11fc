"""The request log: one line per HTTP request, with the request id, the HTTP and GraphQL
metrics, the ``X-Request-ID`` response header and, with tracing on, the SERVER span. The
outermost middleware, so it sees every answer, refusals included.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from opentelemetry.trace import Span, Status, StatusCode
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import (
    CLIENT_NAME_HEADER,
    CLIENT_VERSION_HEADER,
    REQUEST_ID_HEADER,
    UPSTREAM_CALLS_LOGGED,
    RequestFacts,
    client_field,
    collecting,
    request_id_from,
)
from gateway.observability.tracing import Tracing, server_span, trace_id_of
from gateway.transports.asgi import app_path
from gateway.transports.request_head import RequestHead, request_head
from gateway.transports.routes import (
    EXPORT_OPERATIONS,
    EXPORT_ROUTES,
    KNOWN_ROUTES,
    OPERATION_ROUTES,
    PROBE_ROUTES,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = structlog.get_logger("gateway.http")

# Refusals made before GraphQL runs are a few hundred bytes; longer bodies are not read.
ERROR_BODY_READ_MAX = 16 * 1024
_REQUEST_ID = REQUEST_ID_HEADER.encode()
# The headers the log reads of a request (and nothing else of it does).
LOGGED_HEADERS = frozenset(
    {_REQUEST_ID, CLIENT_NAME_HEADER.encode(), CLIENT_VERSION_HEADER.encode()}
)


def facts_of(head: RequestHead, *, tracer: Tracer | None = None) -> RequestFacts:
    """A new request's facts from its head: its id (the caller's when valid), the client's
    name and version."""
    return RequestFacts(
        request_id=request_id_from(head.get(_REQUEST_ID)),
        client_name=client_field(head.get(CLIENT_NAME_HEADER.encode())),
        client_version=client_field(head.get(CLIENT_VERSION_HEADER.encode())),
        tracer=tracer,
    )


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
        # Each route's and status's series, looked up once: a label lookup costs more than
        # the count it leads to. Bounded: routes are the known ones and ``other``.
        self._series: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = _route(scope)
        probe = route in PROBE_ROUTES
        head = request_head(scope)
        facts = facts_of(head, tracer=None if probe else self.tracer)
        if facts.tracer is None:
            await self._serve(scope, receive, send, route, probe, facts, None, started)
            return
        method = scope["method"]
        with server_span(
            facts.tracer,
            name=f"{method} {route}" if route in KNOWN_ROUTES else method,
            traceparent=head.get(b"traceparent"),
            attributes={
                "http.request.method": method,
                "http.route": route,
                "url.scheme": scope.get("scheme", "http"),
                "gateway.request_id": facts.request_id,
            },
        ) as span:
            facts.trace_id = trace_id_of(span)
            await self._serve(scope, receive, send, route, probe, facts, span, started)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: str,
        probe: bool,
        facts: RequestFacts,
        span: Span | None,
        started: float,
    ) -> None:
        """The request, with its facts current and its ids bound for every log line; then
        its log line, metrics and span status."""
        response = _ResponseWatch(facts, sniff_errors=route in OPERATION_ROUTES)
        bound = {"requestId": facts.request_id}
        if facts.trace_id is not None:
            bound["traceId"] = facts.trace_id
        with collecting(facts):
            tokens = structlog.contextvars.bind_contextvars(**bound)
            in_flight = None if probe else self.metrics.http_in_flight
            if in_flight is not None:
                in_flight.inc()
            try:
                await self.app(scope, receive, response.send_to(send))
            finally:
                elapsed = time.perf_counter() - started
                response.read_error_codes()
                if span is not None:
                    _end_server_span(span, response.status, facts)
                try:
                    self.record(scope["method"], route, facts, response.status, elapsed, probe)
                finally:
                    if in_flight is not None:
                        in_flight.dec()
                    structlog.contextvars.reset_contextvars(**tokens)

    def record(
        self,
        method: str,
        route: str,
        facts: RequestFacts,
        status: int,
        elapsed: float,
        probe: bool = False,
    ) -> None:
        """The request's log line and HTTP and GraphQL metrics (also ``repeat_answers``'s)."""
        series = self._series.get((route, status))
        if series is None:
            series = self._series[route, status] = (
                self.metrics.http_requests.labels(route=route, status=str(status)),
                self.metrics.http_duration.labels(route=route),
            )
        series[0].inc()
        series[1].observe(elapsed)
        line: dict[str, Any] = {
            "requestId": facts.request_id,
            "method": method,
            "route": route,
            "status": status,
            "durationMs": round(elapsed * 1000, 1),
        }
        if facts.trace_id is not None:
            line["traceId"] = facts.trace_id
        if route in OPERATION_ROUTES:
            if facts.attempted and facts.operation_name is None:
                # An export refused before it ran (at capacity) is still its operation.
                facts.operation_name = EXPORT_OPERATIONS.get(route)
            line.update(_graphql_fields(facts))
            if facts.attempted:
                self.metrics.observe_operation(
                    operation_name=facts.operation_name,
                    executed=facts.executed,
                    may_take_label=facts.may_take_label,
                    outcome=facts.outcome,
                    client_name=facts.client_name,
                    seconds=elapsed,
                    named_by_gateway=route in EXPORT_ROUTES,
                )
        if probe:
            log.debug("http_request", **line)
        else:
            log.info("http_request", **line)


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
    if facts.batch:  # a batch's line: each operation's own facts too
        fields["batch"] = facts.batch
    if facts.stream is not None:  # a streamed response's line, written when it ended
        fields["stream"] = facts.stream
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
                # The request id replaces any the app set (as ``MutableHeaders`` would).
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name != _REQUEST_ID
                ]
                headers.append((_REQUEST_ID, self.facts.request_id.encode("latin-1")))
                message["headers"] = headers
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


def _plain_json(headers: list[tuple[bytes, bytes]]) -> bool:
    content_type = next((value for name, value in headers if name == b"content-type"), b"")
    return b"json" in content_type and all(name != b"content-encoding" for name, _ in headers)

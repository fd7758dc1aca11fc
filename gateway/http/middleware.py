"""HTTP middleware in front of the GraphQL view: the request log line, compression, the body
size limit, and CSRF prevention. Pure ASGI, so a refused request costs no parsing at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from urllib.parse import parse_qs

import orjson
import structlog
from brotli_asgi import BrotliMiddleware
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ErrorCode
from gateway.http.graphql_request import GRAPHQL_PARAMETERS
from gateway.http.negotiation import choose_encoding
from gateway.observability.metrics import GatewayMetrics

log = structlog.get_logger("gateway.http")

KNOWN_ROUTES = frozenset({"/graphql", "/healthz", "/readyz", "/metrics"})

# Content types a browser may send cross-site without a CORS preflight (Fetch standard).
SIMPLE_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)


async def send_error(send: Send, status: int, message: str, code: ErrorCode) -> None:
    """A GraphQL-shaped error body for refusals made before GraphQL runs."""
    body = orjson.dumps({"errors": [{"message": message, "extensions": {"code": code.value}}]})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
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
    """One log line and one metric sample per HTTP request; never headers or bodies."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
            elapsed = time.perf_counter() - started
            self.metrics.http_requests.labels(route=route, status=str(status)).inc()
            self.metrics.http_duration.labels(route=route).observe(elapsed)
            log.info(
                "http_request",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 1),
            )


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, by declared length or by counting."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"The request body is larger than {self.max_bytes} bytes."
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(send, 413, too_large, ErrorCode.BAD_USER_INPUT)
            return
        # Read the body here (bounded), so a chunked body can't grow past the limit either.
        chunks: list[bytes] = []
        size = 0
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
        self.compressing = BrotliMiddleware(
            _vary_on_encoding(app), quality=4, minimum_size=minimum_size, gzip_fallback=True
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
                MutableHeaders(scope=message).add_vary_header("Accept-Encoding")
            await send(message)

        await app(scope, receive, send_with_vary)

    return with_vary


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
        if scope["type"] != "http" or scope["path"] != self.path or self._safe(scope):
            await self.app(scope, receive, send)
            return
        await send_error(send, 400, self.message, ErrorCode.BAD_USER_INPUT)

    def _safe(self, scope: Scope) -> bool:
        method = scope["method"]
        if method not in ("GET", "POST"):
            return True  # preflights and other methods never run an operation
        if method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if not GRAPHQL_PARAMETERS.intersection(query):
                return True
        content_type = _header(scope, b"content-type")
        if content_type is not None:
            essence = content_type.split(b";")[0].strip().lower().decode("latin-1")
            if essence and essence not in SIMPLE_CONTENT_TYPES:
                return True
        return any(_header(scope, name) for name in self.required_headers)

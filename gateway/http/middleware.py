"""HTTP middleware in front of the GraphQL view: the request log line, the body size limit,
and CSRF prevention. Pure ASGI, so a refused request costs no parsing at all.
"""

from __future__ import annotations

import time

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ErrorCode
from gateway.observability.metrics import GatewayMetrics

log = structlog.get_logger("gateway.http")

KNOWN_ROUTES = frozenset({"/graphql", "/healthz", "/readyz", "/metrics"})

# Content types a browser may send cross-site without a CORS preflight (Fetch standard).
SIMPLE_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
PREFLIGHT_HEADERS = (b"apollo-require-preflight", b"x-apollo-operation-name")


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


class CsrfPreventionMiddleware:
    """Apollo Router's CSRF rule: an operation sent with no content type, or a "simple" one
    a browser can send cross-site without a preflight, needs a non-empty
    ``Apollo-Require-Preflight`` or ``X-Apollo-Operation-Name`` header. Opening GraphiQL
    (a GET with no ``query``) is not an operation.
    """

    def __init__(self, app: ASGIApp, path: str = "/graphql") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or self._safe(scope):
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            400,
            "This operation has been blocked as a potential Cross-Site Request Forgery (CSRF). "
            "Send it with 'Content-Type: application/json', or add a non-empty "
            "'Apollo-Require-Preflight' header.",
            ErrorCode.BAD_USER_INPUT,
        )

    @staticmethod
    def _safe(scope: Scope) -> bool:
        if scope["method"] == "GET" and b"query=" not in scope.get("query_string", b""):
            return True  # the IDE page, or a request strawberry will refuse on its own
        content_type = _header(scope, b"content-type")
        if content_type is not None:
            essence = content_type.split(b";")[0].strip().lower().decode("latin-1")
            if essence and essence not in SIMPLE_CONTENT_TYPES:
                return True
        return any(_header(scope, name) for name in PREFLIGHT_HEADERS)

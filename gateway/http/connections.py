"""Bounds on what clients can hold: connections, slow request heads, requests in flight.

``InFlightLimit`` answers requests past ``max_in_flight`` with 503, ``Retry-After`` and a
GraphQL-shaped body, before any work is done (probes pass, so an overloaded gateway still
says it is alive). ``guarded_protocol`` extends uvicorn's httptools protocol (uvicorn takes a
protocol class for ``http``) with what uvicorn does not bound: a connection past
``max_connections`` is answered 503 and closed at once instead of holding a descriptor, and a
client that does not finish its request head within ``header_timeout`` (an idle socket, a
slowloris) gets 408 and is closed. Slow bodies are bounded by ``BodySizeLimitMiddleware``;
idle keep-alive connections by uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import ErrorCode
from gateway.http.asgi import app_path, send_refusal
from gateway.http.refusals import Refusal, refusal_body
from gateway.http.routes import PROBE_ROUTES

RETRY_AFTER_SECONDS = 1


class InFlightLimit:
    """At most ``max_in_flight`` requests at once; past it, 503 with ``Retry-After``."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.at_capacity = Refusal(
            503,
            "The gateway is at capacity; retry after the time in Retry-After.",
            ErrorCode.RATE_LIMITED,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            extensions={"retryAfter": RETRY_AFTER_SECONDS},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or app_path(scope) in PROBE_ROUTES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await send_refusal(send, self.at_capacity)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _raw_response(status: str, message: str, code: ErrorCode, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response, written to the socket before any ASGI app sees it."""
    body = refusal_body(message, code)
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n".encode()
        + extra
        + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )


_AT_CAPACITY = _raw_response(
    "503 Service Unavailable",
    "The gateway has as many connections as it takes; retry after the time in Retry-After.",
    ErrorCode.RATE_LIMITED,
    f"retry-after: {RETRY_AFTER_SECONDS}\r\n".encode(),
)
_TOO_SLOW = _raw_response(
    "408 Request Timeout",
    "The request head did not arrive in time.",
    ErrorCode.BAD_USER_INPUT,
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection bound and a request-head deadline.

    A module-level class (uvicorn pickles its config for ``--workers``), set up by
    ``configure_connection_limits`` in each process before it serves."""

    max_connections: int = 1024
    header_timeout: float = 10.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_AT_CAPACITY)
            transport.close()
            return
        self._await_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:
            self._await_head()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._head_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_waiting(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        idle = self.cycle is None or self.cycle.response_complete
        # No request is being served on this connection: it only sat there.
        if idle and not self.transport.is_closing():
            self.transport.write(_TOO_SLOW)
            self.transport.close()


def configure_connection_limits(*, max_connections: int, header_timeout: float) -> None:
    """Set the bounds ``GuardedHttpToolsProtocol`` applies in this process."""
    GuardedHttpToolsProtocol.max_connections = max_connections
    GuardedHttpToolsProtocol.header_timeout = header_timeout


def uvicorn_limits(
    *, max_connections: int, header_timeout: float, keep_alive_timeout: float
) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords that apply these bounds (after configuring them)."""
    configure_connection_limits(max_connections=max_connections, header_timeout=header_timeout)
    return {"http": GuardedHttpToolsProtocol, "timeout_keep_alive": keep_alive_timeout}

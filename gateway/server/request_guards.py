"""Guards that refuse a request before anything reads it as GraphQL: the body's size and
arrival time (413, 408) and cross-site request forgery (CSRF). Pure ASGI, so a refused
request costs no parsing at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http_syntax import decimal_value
from gateway.transports.asgi import app_path, header, send_refusal
from gateway.transports.graphql_request import GRAPHQL_PARAMETERS
from gateway.transports.refusals import Refusal
from gateway.transports.request_head import RequestHead, request_head
from gateway.transports.routes import GRAPHQL_PATH

# HTTP/1.x: a request with neither header has no body at all (RFC 9112, section 6.3).
_HTTP1 = frozenset({"1.0", "1.1"})
_BODY_HEADERS = (b"content-length", b"transfer-encoding")

# Content types a browser may send cross-site without a CORS preflight (Fetch standard).
SIMPLE_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, by declared length or by counting, and
    bodies that do not arrive within ``read_timeout`` seconds with 408."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.too_large = Refusal(413, f"The request body is larger than {max_bytes} bytes.")
        self.too_slow = Refusal(
            408,
            f"The request body did not arrive within {read_timeout:g} s.",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _has_no_body(scope):
            # Nothing to bound or to wait for (a GET, a repeat served from stored bytes): no
            # timer, no replay.
            await self.app(scope, receive, send)
            return
        too_large = self.too_large
        declared = decimal_value(header(scope, b"content-length"))
        if declared is not None and declared > self.max_bytes:
            await send_refusal(send, too_large)
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
                        await send_refusal(send, too_large)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await send_refusal(send, self.too_slow)
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


def _has_no_body(scope: Scope) -> bool:
    """An HTTP/1.x request with neither ``Content-Length`` nor ``Transfer-Encoding``: its
    body is empty by the protocol, so there is nothing to count or time."""
    if scope.get("http_version") not in _HTTP1:
        return False
    return not any(key.lower() in _BODY_HEADERS for key, _ in scope["headers"])


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
        self, app: ASGIApp, path: str = GRAPHQL_PATH, required_headers: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.path = path
        self.required_headers = tuple(name.lower().encode() for name in required_headers)
        names = " or ".join(f"'{name}'" for name in required_headers)
        self.refusal = Refusal(
            400,
            "This operation has been blocked as a potential Cross-Site Request Forgery "
            f"(CSRF). Send it with 'Content-Type: application/json', or add a non-empty {names} "
            "header.",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allows(scope, request_head(scope)):
            await self.app(scope, receive, send)
            return
        await send_refusal(send, self.refusal)

    def allows(self, scope: Scope, head: RequestHead) -> bool:
        """Whether the rule lets the HTTP request ``scope`` (whose head is ``head``) pass."""
        if app_path(scope) != self.path:
            return True
        method = scope["method"]
        if method not in ("GET", "POST"):
            return True  # preflights and other methods never run an operation
        if method == "GET" and not _names_a_graphql_parameter(scope.get("query_string", b"")):
            return True
        content_type = head.get(b"content-type")
        if content_type is not None:
            essence = content_type.split(b";")[0].strip().lower().decode("latin-1")
            if essence and essence not in SIMPLE_CONTENT_TYPES:
                return True
        return any(head.get(name) for name in self.required_headers)

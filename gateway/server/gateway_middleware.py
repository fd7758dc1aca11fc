"""The request guards and response shaping fused into one ASGI layer.

In order, as separate layers did before: the in-flight bound (``InFlightLimit``: 503 past
``GATEWAY_MAX_IN_FLIGHT``), compression (``compression``), CORS (Starlette's
``CORSMiddleware``), the body guard and the CSRF rule (``request_guards``). Most requests
need none of their work: no ``Origin`` (no CORS headers to add), nothing to compress (no
``Accept-Encoding``, or ``identity``), no body (nothing to bound or time), nothing CSRF would
refuse. Those facts come from one look at the request head (``request_head``); such a request
goes straight to the app, and its response gets exactly the headers the layers would have
added (``Vary: Origin, Accept-Encoding``, merged with the app's own). A request with no
``Origin`` and nothing to compress but with a body (a POST) goes through the body guard and
the CSRF rule only, with the same ``Vary``: CORS and compression would have added nothing
else. Every other request goes through the layers themselves, unchanged, so nothing they do
is lost or done twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.server.compression import CompressionMiddleware
from gateway.server.connections import InFlightLimit
from gateway.server.request_guards import BodySizeLimitMiddleware, CsrfPreventionMiddleware
from gateway.transports.negotiation import choose_encoding
from gateway.transports.request_head import RequestHead, request_head
from gateway.transports.routes import GRAPHQL_PATH

# Distinct Accept-Encoding values remembered with their verdict (browsers send a handful).
_ENCODINGS_REMEMBERED = 64


class GatewayMiddleware:
    """In-flight bound, compression, CORS, body guard and CSRF as one layer; requests that
    need none of them skip their work. ``cors`` are ``CORSMiddleware``'s arguments;
    ``csrf_required_headers`` None turns the CSRF rule off."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        compression_min_bytes: int,
        cors: dict[str, Any],
        max_body_bytes: int,
        body_timeout: float,
        csrf_required_headers: Iterable[str] | None,
    ) -> None:
        self.app = app
        guarded: ASGIApp = app
        self.csrf: CsrfPreventionMiddleware | None = None
        if csrf_required_headers is not None:
            self.csrf = CsrfPreventionMiddleware(
                app, path=GRAPHQL_PATH, required_headers=csrf_required_headers
            )
            guarded = self.csrf
        guarded = BodySizeLimitMiddleware(
            guarded, max_bytes=max_body_bytes, read_timeout=body_timeout
        )
        # The body guard and CSRF alone: for a request whose only need is a body (a POST).
        self.body_guarded = guarded
        guarded = CORSMiddleware(guarded, **cors)
        # Every layer, as they always ran: for requests with an Origin, a body, something
        # to compress or to refuse.
        self.layers = CompressionMiddleware(guarded, minimum_size=compression_min_bytes)
        self.limited = InFlightLimit(self._dispatch, max_in_flight=max_in_flight)
        self._encodings: dict[bytes, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # every layer passes WebSockets and lifespan through
            await self.app(scope, receive, send)
            return
        await self.limited(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = request_head(scope)
        if self.needs_no_layer(scope, head):
            await self.app(scope, receive, partial(_send_plain, send))
            return
        if head.get(b"origin") is None and not self._compresses(head):
            # CORS (no Origin) and compression (no coding) would add only the plain Vary; a
            # body to bound and time, or a request CSRF judges, still meets those layers.
            await self.body_guarded(scope, receive, partial(_send_plain, send))
            return
        await self.layers(scope, receive, send)

    def needs_no_layer(self, scope: Scope, head: RequestHead) -> bool:
        """No ``Origin``, nothing to compress, no body and nothing CSRF refuses: only the
        ``Vary`` of ``plain_vary`` is added to the response."""
        return (
            head.get(b"origin") is None
            and not self._compresses(head)
            and head.has_no_body(scope)
            and (self.csrf is None or self.csrf.allows(scope, head))
        )

    def at_capacity(self) -> bool:
        """Whether the in-flight bound turns the next request away (503)."""
        return self.limited.in_flight >= self.limited.max_in_flight

    def _compresses(self, head: RequestHead) -> bool:
        """Whether ``Accept-Encoding`` lets the compression layer pick a coding."""
        raw = head.get(b"accept-encoding")
        if raw is None:
            return False
        verdict = self._encodings.get(raw)
        if verdict is None:
            verdict = choose_encoding(raw.decode("latin-1")) is not None
            if len(self._encodings) < _ENCODINGS_REMEMBERED:
                self._encodings[raw] = verdict
        return verdict


async def _send_plain(send: Send, message: Message) -> None:
    """What CORS (for a request without ``Origin``) and compression (for one it does not
    compress) add to a response, in their order, as their ``MutableHeaders`` edits would:
    every ``Vary`` merged into the first, ``Origin`` appended, then ``Accept-Encoding``
    unless it is named already."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", ()))
        found = [index for index, (name, _) in enumerate(headers) if name == b"vary"]
        entry = (b"vary", plain_vary([headers[index][1] for index in found]))
        if found:
            for index in reversed(found[1:]):
                del headers[index]
            headers[found[0]] = entry
        else:
            headers.append(entry)
        message["headers"] = headers
    await send(message)


def plain_vary(values: list[bytes]) -> bytes:
    """The one ``Vary`` a response with ``Vary`` headers ``values`` goes out with when it
    needed no layer (``_send_plain``)."""
    vary = ", ".join([*(value.decode("latin-1") for value in values), "Origin"])
    if "accept-encoding" not in vary.lower():
        vary += ", Accept-Encoding"
    return vary.encode("latin-1")

"""Response compression: br or gzip as the client's ``Accept-Encoding`` allows, with
``Vary: Accept-Encoding`` on every response."""

from __future__ import annotations

from brotli_asgi import BrotliMiddleware
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.transports.asgi import header
from gateway.transports.negotiation import choose_encoding


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
        raw = header(scope, b"accept-encoding")
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

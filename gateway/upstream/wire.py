"""The wire to a real upstream: an ``httpx`` transport over aiohttp's HTTP client.

``build_upstream`` puts it under the resilient transport when no test or embedding supplies a
wire of its own. The shared ``httpx.AsyncClient`` and everything above it stay as they are;
only the HTTP/1.1 exchange on the socket changes hands. Why: aiohttp parses answers in C
(``aiohttp._http_parser``) and pools connections without anyio's cancel scopes and
httpcore's pool bookkeeping, which took most of the upstream exchange's CPU. Measured side
by side (``benchmarks/upstream_transport.py``), against httpx's own transport: one exchange
of a 50-item page costs about 0.6x the CPU, four at once about 0.5x, and the served gateway
answers uncached 50-item pages at about 1.35x the rate (2,000-item ones at about the same
rate: decoding and projecting the page dominate there).

Why not the ``httpx-aiohttp`` package, which does the same: measured as fast, but its 0.2.0
re-quotes the URL on the way out (``yarl``: ``%2F`` becomes ``/``, ``%40`` ``@``, so the
upstream would no longer get exactly the URL ``UpstreamClient`` built), maps a refused or
reset connection to ``httpx.ConnectTimeout`` (a caller would read ``UPSTREAM_TIMEOUT`` for an
upstream that is down), lets aiohttp's errors for a malformed answer out as non-httpx
exceptions (neither retried nor counted by the breaker), and its default session keeps
cookies across callers.

What this wire keeps of httpx's own transport, each held by ``tests/test_upstream_wire.py``
over a real socket:

- the URL exactly as built (``yarl.URL(..., encoded=True)``) and the headers as given;
- the body handed on undecoded and as it streams in: httpx decodes it, and the resilient
  transport counts the bytes after decompression (``max_body_bytes``); a body left unread is
  not reused, its connection is closed;
- timeouts from the request's ``timeout`` extension (connect, read, pool) as aiohttp's
  ``sock_connect``, ``sock_read`` and ``connect``; the exchange's deadline stays the resilient
  transport's;
- every failure as the ``httpx.TransportError`` httpx itself raises for it (``ConnectError``
  for a refused connection, ``RemoteProtocolError`` for a malformed or cut answer,
  ``ReadTimeout``...), so retries, the breaker and the contract's codes read it the same;
- no cookies: the session's jar is aiohttp's ``DummyCookieJar`` (the client above has its own
  ``NoCookieJar`` too);
- keep-alive: connections pooled up to ``max_connections``, idle ones closed after
  ``keepalive_expiry``;
- the environment's proxy (``factory.environment_proxy``) and httpx's SSL context.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
import yarl

# httpx's own default, which the wire had before.
DEFAULT_KEEPALIVE_EXPIRY = 5.0


def wire_error(failure: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for an aiohttp failure (or a timeout) of ``request``: the class httpx's
    own transport raises for the same event."""
    message = str(failure) or type(failure).__name__
    error: type[httpx.TransportError]
    if isinstance(failure, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        error = httpx.ProxyError
    elif isinstance(failure, aiohttp.ConnectionTimeoutError):
        error = httpx.ConnectTimeout
    elif isinstance(failure, aiohttp.SocketTimeoutError):
        error = httpx.ReadTimeout
    elif isinstance(failure, TimeoutError):
        error = httpx.TimeoutException
    elif isinstance(failure, aiohttp.ClientConnectorError):
        error = httpx.ConnectError
    elif isinstance(
        failure,
        aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError,
    ):
        # The answer was cut or is not HTTP: what h11 reports as a protocol error.
        error = httpx.RemoteProtocolError
    elif isinstance(failure, aiohttp.ClientOSError):
        error = httpx.ReadError
    elif isinstance(failure, aiohttp.InvalidURL):
        error = httpx.UnsupportedProtocol
    else:
        error = httpx.TransportError
    return error(message, request=request)


class WireBody(httpx.AsyncByteStream):
    """An answer's body as aiohttp receives it, still encoded; closing it gives the connection
    back to the pool only when the body was read to its end."""

    def __init__(self, answer: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self.answer = answer
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.answer.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as failure:
            raise wire_error(failure, self.request) from failure

    async def aclose(self) -> None:
        if self.answer.content.at_eof():
            self.answer.release()
        else:  # the rest of the body would still be on the connection
            self.answer.close()


class AiohttpWire(httpx.AsyncBaseTransport):
    """httpx's transport interface over one ``aiohttp.ClientSession``, made on first use
    (inside the running loop, as aiohttp wants) and closed by ``aclose``."""

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        proxy: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limits = limits
        self.proxy = proxy
        self.ssl_context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            expiry = self.limits.keepalive_expiry
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.limits.max_connections or 0,  # 0: aiohttp's "no limit"
                    keepalive_timeout=DEFAULT_KEEPALIVE_EXPIRY if expiry is None else expiry,
                    ssl=self.ssl_context,
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # httpx decodes, so the body bound sees decoded bytes
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        content = await request.aread()
        try:
            answer = await self._open().request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=[
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in request.headers.raw
                ],
                data=content or None,
                allow_redirects=False,
                proxy=self.proxy,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except (aiohttp.ClientError, TimeoutError) as failure:
            raise wire_error(failure, request) from failure
        version = answer.version
        extensions: dict[str, object] = {
            "http_version": f"HTTP/{version.major}.{version.minor}".encode() if version else b""
        }
        if answer.reason:
            extensions["reason_phrase"] = answer.reason.encode("latin-1", "replace")
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=WireBody(answer, request),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

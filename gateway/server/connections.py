"""Bounds on what clients can hold: connections, slow request heads, requests in flight.

``InFlightLimit`` answers requests past ``max_in_flight`` with 503, ``Retry-After`` and a
GraphQL-shaped body, before any work is done (probes pass, so an overloaded gateway still
says it is alive). ``GuardedHttpToolsProtocol`` extends uvicorn's httptools protocol (uvicorn
takes a protocol class for ``http``) with what uvicorn does not bound: a connection past
``max_connections`` (or past ``max_connections_per_client`` from one client address) is
answered 503 and closed at once instead of holding a descriptor; at the total bound the
heaviest client's idle connections (and WebSockets running no operation) are closed first
(silently: see ``shed``); IPv6 clients
count by their /64; and a client that does not finish its
request head within ``header_timeout`` (an idle socket, a slowloris) gets 408 and is
closed. Slow bodies are bounded by ``BodySizeLimitMiddleware``; idle keep-alive connections
by uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import weakref
from typing import Any, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import ErrorCode
from gateway.transports.asgi import app_path, send_refusal
from gateway.transports.refusals import Refusal, refusal_body
from gateway.transports.routes import PROBE_ROUTES
from gateway.transports.websocket import WEBSOCKET_ACTIVITY

RETRY_AFTER_SECONDS = 1
# The scope key under which the WebSocket endpoint leaves its connection (a
# ``WebSocketActivity``), so the connection table can shed an idle WebSocket under pressure.


class WebSocketActivity(Protocol):
    """What the connection table needs of an upgraded connection's endpoint."""

    @property
    def idle(self) -> bool: ...  # no operation running

    def shed(self) -> None: ...  # close it (soon) to make room


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
# httptools takes a request head of any size; h11 and most proxies stop near 64 KiB.
MAX_HEAD_BYTES = 64 * 1024
_HEAD_TOO_LARGE = _raw_response(
    "431 Request Header Fields Too Large",
    f"The request head is larger than {MAX_HEAD_BYTES} bytes.",
    ErrorCode.BAD_USER_INPUT,
)
_TOO_SLOW = _raw_response(
    "408 Request Timeout",
    "The request head did not arrive in time.",
    ErrorCode.BAD_USER_INPUT,
)


_CLIENT_AT_CAPACITY = Refusal(
    503,
    "This client has as many connections as it may hold; retry after the time in Retry-After.",
    ErrorCode.RATE_LIMITED,
    headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
    extensions={"retryAfter": RETRY_AFTER_SECONDS},
)


async def _refuse_forwarded_client(scope: Scope, receive: Receive, send: Send) -> None:
    """The app a request runs instead when its forwarded client is past its connection bound."""
    await send_refusal(send, _CLIENT_AT_CAPACITY)


_LARGE_HEAD = Refusal(
    431,
    f"The request head is larger than {MAX_HEAD_BYTES} bytes.",
    ErrorCode.BAD_USER_INPUT,
    headers={"Connection": "close"},
)


async def _refuse_large_head(scope: Scope, receive: Receive, send: Send) -> None:
    """The app a request runs instead when its head (URL and headers) is over the bound."""
    await send_refusal(send, _LARGE_HEAD)


class ClientConnections:
    """One server's open connections grouped by client address (oldest first), so a bound can
    hold per client and the pressure valve can pick its victim from the heaviest client."""

    def __init__(self) -> None:
        self.by_client: dict[str, dict[asyncio.BaseProtocol, None]] = {}

    def add(self, client: str, connection: asyncio.BaseProtocol) -> int:
        """Count ``connection`` for ``client``; returns how many that client now holds."""
        held = self.by_client.setdefault(client, {})
        held[connection] = None
        return len(held)

    def remove(self, client: str, connection: asyncio.BaseProtocol) -> None:
        held = self.by_client.get(client)
        if held is not None:
            held.pop(connection, None)
            if not held:
                del self.by_client[client]

    def idle_victim(self) -> GuardedHttpToolsProtocol | WebSocketActivity | None:
        """The oldest connection holding nothing (waiting for a request head, or a WebSocket
        running no operation), of the client holding the most connections: what is closed
        first when the server is full."""
        for _, held in sorted(self.by_client.items(), key=lambda item: -len(item[1])):
            for connection in held:
                if isinstance(connection, GuardedHttpToolsProtocol):
                    if connection.awaiting_head:
                        return connection
                    continue
                websocket = idle_websocket(connection)
                if websocket is not None:
                    return websocket
        return None


def idle_websocket(connection: asyncio.BaseProtocol) -> WebSocketActivity | None:
    """The WebSocket endpoint of an upgraded connection, when it runs no operation."""
    scope = getattr(connection, "scope", None)
    activity = scope.get(WEBSOCKET_ACTIVITY) if isinstance(scope, dict) else None
    if activity is None or not activity.idle:
        return None
    return activity  # type: ignore[no-any-return]


def client_key(address: str) -> str:
    """The client an address counts for: an IPv6 address by its /64 (one subscriber or host
    is routinely given a whole /64, and would otherwise hold a share per address it picks);
    anything else (IPv4, an IPv4-mapped IPv6 address, a name) as the address itself."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


# One table per uvicorn server (its ServerState), so servers in one process do not mix.
_TABLES: weakref.WeakKeyDictionary[object, ClientConnections] = weakref.WeakKeyDictionary()


class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` names the client (GATEWAY_FORWARDED_ALLOW_IPS)."""

    def __init__(self, entries: tuple[str, ...] | None) -> None:
        self.everyone = entries is not None and "*" in entries
        self.networks = [
            ipaddress.ip_network(entry, strict=False) for entry in entries or () if entry != "*"
        ]

    def __contains__(self, host: str | None) -> bool:
        if self.everyone:
            return True
        if not host or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def forwarded_client(self, forwarded_for: bytes) -> str | None:
        """The nearest address in ``X-Forwarded-For`` that is not a trusted proxy (what
        uvicorn's proxy middleware puts in the request's scope)."""
        hops = [hop.strip() for hop in forwarded_for.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if hop and hop not in self:
                return hop[:64]
        return hops[0][:64] if hops and hops[0] else None


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with connection bounds and a request-head deadline.

    A module-level class (uvicorn pickles its config for ``--workers``), set up by
    ``configure_connection_limits`` in each process before it serves.

    Bounds, checked as a connection opens: at most ``max_connections_per_client`` from one
    client address; at most ``max_connections`` in all, and at that bound the oldest
    connection still waiting for a request head (a fresh socket, an idle keep-alive, a
    slowloris) of the client holding the most is closed, without a response, to make room
    (``shed``), so idle sockets cannot
    lock out clients that send requests. Only when no connection is waiting is the new one
    refused. A connection from a trusted proxy is counted under the forwarded client of the
    request it carries (known once the head has arrived). A connection upgraded to a WebSocket
    stays counted for its client (and in the total) until it closes; while it runs no
    operation it may be the victim (closed by its endpoint with 1013, try again later).
    """

    max_connections: int = 1024
    max_connections_per_client: int = 64
    header_timeout: float = 10.0
    trusted_proxies: TrustedProxies = TrustedProxies(None)
    _head_deadline: asyncio.TimerHandle | None = None
    _counted_as: str | None = None
    _behind_proxy: bool = False
    _head_complete: bool = False
    _head_bytes = 0  # bytes received since the current request head began

    @property
    def awaiting_head(self) -> bool:
        """No request is being served: the connection holds a socket and nothing else."""
        idle = self.cycle is None or self.cycle.response_complete
        return idle and not self._head_complete and not self.transport.is_closing()

    @property
    def _table(self) -> ClientConnections:
        table = _TABLES.get(self.server_state)
        if table is None:
            table = _TABLES[self.server_state] = ClientConnections()
        return table

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else "unknown"
        self._behind_proxy = peer in self.trusted_proxies
        # A proxy's connections carry many clients: counted as the proxy's until a head names one.
        if not self._count_as(client_key(peer) if not self._behind_proxy else f"proxy {peer}"):
            return
        if len(self.connections) > self.max_connections:
            victim = self._table.idle_victim()
            if victim is None or victim is self:
                self._refuse()
                return
            victim.shed()
        self._await_head()

    def _count_as(self, client: str, *, refuse: bool = True) -> bool:
        """Count this connection for ``client``; False past the per-client bound (and, with
        ``refuse``, answered 503 and closed)."""
        if self._counted_as == client:
            return True
        if self._counted_as is not None:
            self._table.remove(self._counted_as, self)
        self._counted_as = client
        held = self._table.add(client, self)
        if held > self.max_connections_per_client and not client.startswith("proxy "):
            if refuse:
                self._refuse()
            return False
        return True

    def _refuse(self) -> None:
        """The connection just opened is past a bound: told so (503) and closed."""
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.write(_AT_CAPACITY)
            self.transport.close()

    def shed(self) -> None:
        """Closed to make room, without a word. The victim sent nothing we are answering, and
        a request of its client may be crossing the close on the wire: an unsolicited 503
        would be read as that request's answer (and a POST is not retried), while a bare
        close before any response byte is what RFC 9112 §9.6 lets a server do to an idle
        connection and what clients retry on a fresh connection (§9.3.1)."""
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A head still incomplete after all that arrived: bound what it has sent so far.
        if self.awaiting_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._stop_waiting()
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_complete = False
        if self._head_deadline is None:
            self._await_head()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        self._head_complete = True
        self._head_bytes = 0
        head_size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if head_size > MAX_HEAD_BYTES:
            self._answer_with(_refuse_large_head)
            return
        if self._behind_proxy:
            forwarded = next(
                (value for name, value in self.headers if name == b"x-forwarded-for"), None
            )
            client = self.trusted_proxies.forwarded_client(forwarded) if forwarded else None
            if client is not None and not self._count_as(client_key(client), refuse=False):
                self._answer_with(_refuse_forwarded_client)
                return
        super().on_headers_complete()

    def _answer_with(self, refusal: Any) -> None:
        """Answer the request whose head just arrived with ``refusal`` (an ASGI app that
        closes the connection) instead of the gateway, through uvicorn's own cycle."""
        serving, self.app = self.app, refusal
        try:
            super().on_headers_complete()
        finally:
            self.app = serving

    def on_response_complete(self) -> None:
        self._head_complete = False
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # uvicorn hands the transport to its WebSocket protocol and never calls this one's
        # connection_lost: the upgraded connection keeps this one's place in the client table
        # and gives it back when it closes.
        upgraded = self.transport.get_protocol()
        client = self._counted_as
        if client is None:
            return
        self._table.remove(client, self)
        self._table.add(client, upgraded)
        table = self._table
        closed = upgraded.connection_lost

        def release(exc: Exception | None) -> None:
            table.remove(client, upgraded)
            closed(exc)

        upgraded.connection_lost = release  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if self._counted_as is not None:
            self._table.remove(self._counted_as, self)
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._head_deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_waiting(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        # No request is being served on this connection: it only sat there.
        if self.awaiting_head:
            self.transport.write(_TOO_SLOW)
            self.transport.close()


class ScrapeHttpToolsProtocol(GuardedHttpToolsProtocol):
    """The metrics listener's protocol (GATEWAY_METRICS_PORT): the same guards with bounds of
    its own, sized for a few scrapers. Sockets that never send a head are closed after the
    head deadline and, when the listener is full, make room for a new connection, so slow or
    idle sockets cannot make every scrape fail (uvicorn's ``limit_concurrency`` would answer
    every scrape 503 while they are held). Never behind the trusted proxies: scrapers connect
    directly."""

    max_connections = 64
    max_connections_per_client = 16
    header_timeout = 10.0
    trusted_proxies = TrustedProxies(None)


def scrape_limits(*, header_timeout: float, keep_alive_timeout: float = 5.0) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords of the metrics listener (``ScrapeHttpToolsProtocol``)."""
    ScrapeHttpToolsProtocol.header_timeout = header_timeout
    return {"http": ScrapeHttpToolsProtocol, "timeout_keep_alive": keep_alive_timeout}


def configure_connection_limits(
    *,
    max_connections: int,
    header_timeout: float,
    max_connections_per_client: int | None = None,
    trusted_proxies: tuple[str, ...] | None = None,
) -> None:
    """Set the bounds ``GuardedHttpToolsProtocol`` applies in this process."""
    GuardedHttpToolsProtocol.max_connections = max_connections
    GuardedHttpToolsProtocol.max_connections_per_client = (
        max_connections_per_client or max_connections
    )
    GuardedHttpToolsProtocol.header_timeout = header_timeout
    GuardedHttpToolsProtocol.trusted_proxies = TrustedProxies(trusted_proxies)


def uvicorn_limits(
    *,
    max_connections: int,
    header_timeout: float,
    keep_alive_timeout: float,
    max_connections_per_client: int | None = None,
    trusted_proxies: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords that apply these bounds (after configuring them)."""
    configure_connection_limits(
        max_connections=max_connections,
        header_timeout=header_timeout,
        max_connections_per_client=max_connections_per_client,
        trusted_proxies=trusted_proxies,
    )
    return {"http": GuardedHttpToolsProtocol, "timeout_keep_alive": keep_alive_timeout}

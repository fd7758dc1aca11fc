"""Bounds on what clients can hold: connections, slow request heads, requests in flight.

``InFlightLimit`` answers requests past ``max_in_flight`` with 503, ``Retry-After`` and a
GraphQL-shaped body, before any work is done (probes pass, so an overloaded gateway still
says it is alive).

``ConnectionGuard`` bounds what uvicorn does not: a connection past ``max_connections`` (or
past ``max_connections_per_client`` from one client address) is answered 503 and closed at
once instead of holding a descriptor; at the total bound the heaviest client's idle
connections (and WebSockets running no operation) are closed first (silently: see
``GuardedConnection.shed``); IPv6 clients count by their /64; a client that does not finish
its request head within ``header_timeout`` (an idle socket, a slowloris) gets 408 and is
closed, and one whose head passes ``MAX_HEAD_BYTES`` gets 431. Slow bodies are bounded by
``BodySizeLimitMiddleware``; idle keep-alive connections by uvicorn's own
``timeout_keep_alive``; the forwarded client of a trusted proxy's request by uvicorn's own
``ProxyHeadersMiddleware``. At shutdown the guard stops taking requests, tells in-flight
ones to close their connection, and cuts what is left when the drain is over.

How it sits in uvicorn, with nothing of uvicorn's internals: uvicorn takes a protocol class
for ``http`` (``Config(http=...)``) and builds one per connection with its own keyword
arguments. ``GuardedConnection`` is that class. It is an ``asyncio.Protocol`` that builds the
protocol uvicorn itself would use for its default ``http="auto"`` (found by name in
``uvicorn.config.HTTP_PROTOCOLS``, the table behind ``--http``) with those same arguments,
and relays to it through asyncio's protocol and transport interfaces alone; the transport it
hands over relays too, so a WebSocket upgrade (``transport.set_protocol``) stays in view. What
a connection is doing comes from ASGI, not from uvicorn's parser: ``ConnectionGuard.wrap``
puts an ASGI layer around the app that finds each request's connection by its addresses
(``scope["client"]`` and ``scope["server"]``, the socket's own) and marks it busy until the
request ends; the guard watches the bytes of a request head only for its end and its size.
If an upgrade changes how uvicorn builds or hands over its protocols,
``tests/test_connections.py`` fails (``test_the_guard_wraps_uvicorn_s_own_http_protocol``,
and the WebSocket and idle-connection tests).
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
from collections.abc import Callable
from enum import Enum
from functools import cache
from typing import Any, Final, Protocol, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.errors import ErrorCode
from gateway.transports.asgi import app_path, send_refusal
from gateway.transports.refusals import Refusal, refusal_body
from gateway.transports.routes import PROBE_ROUTES
from gateway.transports.websocket import WEBSOCKET_ACTIVITY

RETRY_AFTER_SECONDS = 1
# The scope key under which the WebSocket endpoint leaves its connection (a
# ``WebSocketActivity``), so the connection table can shed an idle WebSocket under pressure.
# The scope key under which the guard leaves a request's connection for its inner layer.
_CONNECTION: Final = "gateway.connection"


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
_HEAD_END: Final = b"\r\n\r\n"

_CLIENT_AT_CAPACITY = Refusal(
    503,
    "This client has as many connections as it may hold; retry after the time in Retry-After.",
    ErrorCode.RATE_LIMITED,
    headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
    extensions={"retryAfter": RETRY_AFTER_SECONDS},
)


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


class ProxyPeers:
    """Which peers are the trusted proxies of ``GATEWAY_FORWARDED_ALLOW_IPS`` (addresses or
    networks, or ``*``), known as a connection opens, before any request names its client:
    their connections carry many clients, so they are counted per forwarded client instead.
    Which client a request is for is uvicorn's ``ProxyHeadersMiddleware``'s answer, given the
    same entries (a test holds the two to the same peers)."""

    def __init__(self, entries: tuple[str, ...] | None) -> None:
        self.entries = entries
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


@cache
def uvicorn_http_protocol() -> Callable[..., asyncio.Protocol]:
    """The HTTP protocol uvicorn serves with by default (``http="auto"``: httptools when it
    is installed, else h11), by the name uvicorn's own table gives it."""
    module, _, name = HTTP_PROTOCOLS["auto"].partition(":")
    found: Callable[..., asyncio.Protocol] = getattr(importlib.import_module(module), name)
    return found


Address = tuple[tuple[str, int] | None, tuple[str, int] | None]  # (client, server)


def _host_port(info: Any) -> tuple[str, int] | None:
    """A socket address as uvicorn puts it in a scope (``client``, ``server``)."""
    if isinstance(info, tuple | list) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


class _State(Enum):
    AWAITING_HEAD = "awaiting head"  # holds a socket and nothing else: idle
    HEAD_RECEIVED = "head received"  # its request is about to start
    BUSY = "busy"  # a request is being served
    UPGRADED = "upgraded"  # a WebSocket


# What a relay hands straight to the socket's transport: everything but changing protocols.
_RELAYED: Final = (
    "get_extra_info",
    "is_closing",
    "close",
    "is_reading",
    "pause_reading",
    "resume_reading",
    "set_write_buffer_limits",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "abort",
)


class _Relay(asyncio.Transport):
    """The transport uvicorn's protocols are given: the socket's own, except that handing
    the connection to another protocol (uvicorn's WebSocket upgrade) tells the guard.

    The socket transport's own bound methods are set on each relay, so a write costs no
    extra call (this sits under every response)."""

    def __init__(self, transport: asyncio.Transport, connection: GuardedConnection) -> None:
        super().__init__()
        self._connection = connection
        self.__dict__.update(
            {name: getattr(transport, name) for name in _RELAYED if hasattr(transport, name)}
        )

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._connection.hand_over(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._connection.serving


class GuardedConnection(asyncio.Protocol):
    """One client connection: uvicorn's protocol for it, behind the guard's bounds.

    ``ConnectionGuard.protocol`` is a subclass of this per guard (``guard`` set), the class
    uvicorn is given for ``http``; uvicorn builds one per connection with its keyword
    arguments, passed on unread to the protocol uvicorn would otherwise have built."""

    guard: ConnectionGuard

    def __init__(self, **uvicorn_arguments: Any) -> None:
        # uvicorn's protocols are stream protocols (``asyncio.Protocol``), WebSockets too.
        self.serving: asyncio.Protocol = uvicorn_http_protocol()(**uvicorn_arguments)
        self.transport: asyncio.Transport | None = None
        self.address: Address = (None, None)
        self.counted_as: str | None = None
        self.behind_proxy = False
        self.refused = False
        self.state = _State.AWAITING_HEAD
        self.task: asyncio.Task[Any] | None = None  # the ASGI call serving it, while one does
        self.websocket: Scope | None = None  # the scope of its WebSocket, once upgraded
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the current head, received so far
        self._tail = b""  # the last bytes of the head so far (its end may straddle chunks)

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without being registered as asyncio's).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = _host_port(transport.get_extra_info("peername"))
        self.address = (peer, _host_port(transport.get_extra_info("sockname")))
        if not self.guard.admit(self, peer[0] if peer else "unknown"):
            self.refused = True
            transport.write(_AT_CAPACITY)
            transport.close()
            return
        self.serving.connection_made(_Relay(transport, self))
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.state is _State.AWAITING_HEAD and not self._watch_head(data):
            return
        self.serving.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.serving.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        self.guard.forget(self)
        if not self.refused:
            self.serving.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.serving.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.serving.resume_writing()

    # --- what the guard knows of it --------------------------------------------------------

    def hand_over(self, protocol: asyncio.BaseProtocol) -> None:
        """uvicorn upgraded the connection: ``protocol`` (its WebSocket) serves it now."""
        self.serving = cast(asyncio.Protocol, protocol)
        self.state = _State.UPGRADED
        self._stop_waiting()

    @property
    def idle(self) -> bool:
        """No request is being served: the connection holds a socket and nothing else."""
        return self.state is _State.AWAITING_HEAD and not self._closing

    @property
    def idle_websocket(self) -> WebSocketActivity | None:
        """Its WebSocket endpoint, when it is one running no operation."""
        activity = self.websocket.get(WEBSOCKET_ACTIVITY) if self.websocket else None
        if activity is None or not activity.idle:
            return None
        return activity  # type: ignore[no-any-return]

    @property
    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def request_started(self, task: asyncio.Task[Any] | None) -> None:
        self._stop_waiting()
        self.task = task
        if self.state is not _State.UPGRADED:
            self.state = _State.BUSY

    def request_ended(self) -> None:
        self.task = None
        if self.state is _State.UPGRADED:
            return
        self.state = _State.AWAITING_HEAD
        self._head_bytes = 0
        self._tail = b""
        if self.guard.stopping:  # shutdown: no further request on this connection
            self.close()
        # Otherwise idle: uvicorn's keep-alive timeout closes it; the head deadline starts
        # with the next request's first byte.

    def shed(self) -> None:
        """Closed to make room, without a word. The victim sent nothing we are answering, and
        a request of its client may be crossing the close on the wire: an unsolicited 503
        would be read as that request's answer (and a POST is not retried), while a bare
        close before any response byte is what RFC 9112 §9.6 lets a server do to an idle
        connection and what clients retry on a fresh connection (§9.3.1)."""
        self.close()

    def close(self) -> None:
        self._stop_waiting()
        if not self._closing:
            assert self.transport is not None
            self.transport.close()

    def cut(self) -> None:
        """The drain is over: closed at once whatever it is doing (what is still buffered
        for a client that does not read is dropped), and its request cancelled."""
        self._stop_waiting()
        if self.transport is not None:
            self.transport.abort()
        if self.task is not None and not self.task.done():
            self.guard.cut_tasks.add(self.task)
            self.task.cancel()

    # --- the request head ------------------------------------------------------------------

    def _watch_head(self, data: bytes) -> bool:
        """Count a head's bytes until its end (the first empty line); False when it is over
        ``MAX_HEAD_BYTES`` (answered 431 and closed)."""
        if self._head_bytes == 0:
            data = data.lstrip(b"\r\n")  # empty lines before a request line are no head
            if not data:
                return True
            if self._deadline is None:  # the head of a request after a kept-alive one
                self._await_head()
        seen = self._tail + data if self._tail else data
        end = seen.find(_HEAD_END)
        if end >= 0:
            size = self._head_bytes - len(self._tail) + end
            self.state = _State.HEAD_RECEIVED
            self._stop_waiting()
        else:
            size = self._head_bytes + len(data)
            self._tail = seen[-(len(_HEAD_END) - 1) :]
        self._head_bytes += len(data)
        if size > MAX_HEAD_BYTES:
            self._answer_and_close(_HEAD_TOO_LARGE)
            return False
        return True

    def _await_head(self) -> None:
        self._stop_waiting()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.guard.header_timeout, self._too_slow)

    def _stop_waiting(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.state is _State.AWAITING_HEAD:  # no request is being served: it only sat there
            self._answer_and_close(_TOO_SLOW)

    def _answer_and_close(self, response: bytes) -> None:
        self._stop_waiting()
        if not self._closing:
            assert self.transport is not None
            self.transport.write(response)
            self.transport.close()


class ConnectionGuard:
    """One listener's connections and their bounds (``serve``: the gateway's port, and the
    metrics port with bounds of its own).

    Bounds, checked as a connection opens: at most ``max_connections_per_client`` from one
    client address; at most ``max_connections`` in all, and at that bound the oldest
    connection still waiting for a request head (a fresh socket, an idle keep-alive, a
    slowloris) of the client holding the most is closed, without a response, to make room,
    so idle sockets cannot lock out clients that send requests. Only when no connection is
    waiting is the new one refused. A connection from a trusted proxy (``trusted_proxies``)
    is counted under the forwarded client of the request it carries (known once the head
    has arrived). A connection upgraded to a WebSocket stays counted for its client (and in
    the total) until it closes; while it runs no operation it may be the victim (closed by
    its endpoint with 1013, try again later).

    Use: ``uvicorn.Config(guard.wrap(app), **guard.uvicorn_options(), ...)``.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout: float,
        keep_alive_timeout: float = 5.0,
        max_connections_per_client: int | None = None,
        trusted_proxies: tuple[str, ...] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client or max_connections
        self.header_timeout = header_timeout
        self.keep_alive_timeout = keep_alive_timeout
        self.proxies = ProxyPeers(trusted_proxies)
        self.by_client: dict[str, dict[GuardedConnection, None]] = {}  # oldest first
        self.by_address: dict[Address, GuardedConnection] = {}
        self.stopping = False
        self.cut_tasks: set[asyncio.Task[Any]] = set()  # cancelled by ``cut``, not by a bug
        # The class uvicorn is given: one per guard, so listeners keep their tables apart.
        self.protocol = cast(
            "type[GuardedConnection]",
            type("GuardedConnection", (GuardedConnection,), {"guard": self}),
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """The ``uvicorn.Config`` keywords that put this guard in front of each connection.
        Forwarded headers are read by the guard's layer (``wrap``), not by uvicorn's."""
        return {
            "http": self.protocol,
            "timeout_keep_alive": self.keep_alive_timeout,
            "proxy_headers": False,
        }

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the guard's ASGI layer (and, with trusted proxies, uvicorn's
        ``ProxyHeadersMiddleware`` inside it)."""
        return GuardedApp(self, app)

    # --- the table -------------------------------------------------------------------------

    @property
    def open(self) -> int:
        return len(self.by_address)

    def held_by(self, client: str) -> int:
        """How many connections ``client`` (a ``client_key``) holds."""
        return len(self.by_client.get(client, ()))

    def admit(self, connection: GuardedConnection, peer: str) -> bool:
        """Count a new connection; False when it is past a bound (to be refused)."""
        if self.stopping:
            return False
        self.by_address[connection.address] = connection
        connection.behind_proxy = peer in self.proxies
        # A proxy's connections carry many clients: counted as the proxy's until a head names one.
        counted = f"proxy {peer}" if connection.behind_proxy else client_key(peer)
        if not self.count_as(connection, counted):
            return False
        if len(self.by_address) > self.max_connections:
            victim = self._idle_victim(connection)
            if victim is None:
                return False
            victim.shed()
        return True

    def count_as(self, connection: GuardedConnection, client: str) -> bool:
        """Count ``connection`` for ``client``; False past the per-client bound (a proxy's
        own count has none)."""
        if connection.counted_as == client:
            return True
        self._uncount(connection)
        connection.counted_as = client
        held = self.by_client.setdefault(client, {})
        held[connection] = None
        return len(held) <= self.max_connections_per_client or client.startswith("proxy ")

    def forget(self, connection: GuardedConnection) -> None:
        if self.by_address.get(connection.address) is connection:
            del self.by_address[connection.address]
        self._uncount(connection)

    def _uncount(self, connection: GuardedConnection) -> None:
        client = connection.counted_as
        held = self.by_client.get(client) if client is not None else None
        if held is not None:
            held.pop(connection, None)
            if not held:
                del self.by_client[client]  # type: ignore[arg-type]
        connection.counted_as = None

    def _idle_victim(
        self, newcomer: GuardedConnection
    ) -> GuardedConnection | WebSocketActivity | None:
        """The oldest connection holding nothing (waiting for a request head, or a WebSocket
        running no operation), of the client holding the most connections: what is closed
        first when the listener is full."""
        for _, held in sorted(self.by_client.items(), key=lambda item: -len(item[1])):
            for connection in held:
                if connection is newcomer:
                    continue
                if connection.idle:
                    return connection
                websocket = connection.idle_websocket
                if websocket is not None:
                    return websocket
        return None

    # --- shutdown --------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """HTTP requests being served."""
        return sum(
            1
            for connection in self.by_address.values()
            if connection.task is not None and connection.state is not _State.UPGRADED
        )

    @property
    def websockets(self) -> int:
        """WebSockets still open."""
        return sum(1 for c in self.by_address.values() if c.state is _State.UPGRADED)

    @property
    def busy(self) -> int:
        """Connections serving a request, or a WebSocket still open."""
        return self.requests + self.websockets

    def stop_accepting(self) -> None:
        """Shutdown begins: new connections are refused, idle ones closed; a request being
        served finishes, and its connection closes after it (``Connection: close``)."""
        self.stopping = True
        for connection in list(self.by_address.values()):
            if connection.idle:
                connection.close()

    def cut(self) -> int:
        """The drain is over: every connection left is closed and its request cancelled;
        how many were."""
        left = list(self.by_address.values())
        for connection in left:
            connection.cut()
        return len(left)


class GuardedApp:
    """The guard's ASGI layer: marks each request's connection busy while it is served,
    counts a trusted proxy's connection under the client its request is forwarded for (503
    past that client's bound), and during shutdown asks the client to close."""

    def __init__(self, guard: ConnectionGuard, app: ASGIApp) -> None:
        self.guard = guard
        self.app = app
        self.inner = app  # what a request goes on to: the app, or the proxy headers first
        self.proxied = guard.proxies.entries is not None
        if guard.proxies.entries is not None:
            # uvicorn's own reading of X-Forwarded-For/-Proto, typed with uvicorn's scope types.
            proxied = ProxyHeadersMiddleware(
                self._count_forwarded,  # type: ignore[arg-type]
                trusted_hosts=list(guard.proxies.entries),
            )
            self.inner = cast(ASGIApp, proxied)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = self.guard.by_address.get((scope.get("client"), scope.get("server")))
        if connection is None:  # not one of the guard's sockets (a test's transport)
            await self.inner(scope, receive, send)
            return
        if kind == "websocket":
            connection.websocket = scope
        elif self.guard.stopping:
            send = _asking_to_close(send)
        if self.proxied:
            scope[_CONNECTION] = connection
        connection.request_started(asyncio.current_task())
        try:
            await self.inner(scope, receive, send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task not in self.guard.cut_tasks:
                raise
            # Cut by shutdown, its connection closed already: nothing to report to uvicorn.
            self.guard.cut_tasks.discard(task)
            task.uncancel()
        finally:
            connection.request_ended()

    async def _count_forwarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection: GuardedConnection | None = scope.get(_CONNECTION)
        client = scope.get("client")
        if (
            connection is not None
            and connection.behind_proxy
            and client is not None
            and client != connection.address[0]
            and not self.guard.count_as(connection, client_key(client[0]))
        ):
            if scope["type"] == "http":
                await send_refusal(send, _CLIENT_AT_CAPACITY)
            else:
                await send({"type": "websocket.close", "code": 1013})
            return
        await self.app(scope, receive, send)


def _asking_to_close(send: Send) -> Send:
    """``send`` with ``Connection: close`` on the response: the client opens its next
    request elsewhere (uvicorn closes the connection after this response)."""

    async def asking(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return asking


def scrape_guard(*, header_timeout: float, keep_alive_timeout: float = 5.0) -> ConnectionGuard:
    """The metrics listener's guard (GATEWAY_METRICS_PORT): the same guards with bounds of
    its own, sized for a few scrapers. Sockets that never send a head are closed after the
    head deadline and, when the listener is full, make room for a new connection, so slow
    or idle sockets cannot make every scrape fail (uvicorn's ``limit_concurrency`` would
    answer every scrape 503 while they are held). Never behind the trusted proxies:
    scrapers connect directly."""
    return ConnectionGuard(
        max_connections=64,
        max_connections_per_client=16,
        header_timeout=header_timeout,
        keep_alive_timeout=keep_alive_timeout,
    )


class WorkerConnection(GuardedConnection):
    """The protocol class of ``serve --workers`` (uvicorn pickles its config for each worker
    process, so the class is named by module): each worker sets its guard
    (``guard_this_worker``) before it serves."""


def guard_this_worker(guard: ConnectionGuard) -> None:
    WorkerConnection.guard = guard

"""Bounds on what clients can hold, with a real uvicorn server on a loopback port: requests in
flight (503 with Retry-After), connections (503 and closed), request heads that never arrive
(408 and closed), connections per client address, and oversized heads (431). Time is bounded by the settings under test, never by sleeps in asserts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.server.connections import ConnectionGuard, client_key
from tests.conftest import GatedTransport, eventually, live_settings, running_gateway


async def test_requests_past_the_in_flight_bound_get_503_with_retry_after() -> None:
    gate = GatedTransport(answer=lambda request: httpx.Response(200, json={"count": {"total": 1}}))
    async with running_gateway(live_settings(max_in_flight=2, cache_ttl=0), gate) as client:
        headers = {"Authorization": "Bearer t"}
        held = [
            asyncio.create_task(
                client.post(
                    "/graphql",
                    json={"query": f'{{ numberCounts(filter: {{extension: "{i}"}}) {{ total }} }}'},
                    headers=headers,
                )
            )
            for i in range(2)
        ]
        await eventually(lambda: gate.held == 2, "two requests are being served")
        refused = await client.post(
            "/graphql", json={"query": "{ numberCounts { total } }"}, headers=headers
        )
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["errors"][0]
        assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 1}
        assert (await client.get("/healthz")).status_code == 200, "probes pass"
        gate.release()
        answers = await asyncio.gather(*held)
        assert [answer.status_code for answer in answers] == [200, 200]
        after = await client.post(
            "/graphql", json={"query": "{ numberCounts { total } }"}, headers=headers
        )
        assert after.status_code == 200, "the finished requests gave their places back"


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


HOLD = asyncio.Event()  # requests to /hold wait for it: connections that are busy


async def _hold(request: Request) -> PlainTextResponse:
    await HOLD.wait()
    return PlainTextResponse("held")


@asynccontextmanager
async def served(app: ASGIApp, guard: ConnectionGuard, **options: Any) -> AsyncIterator[int]:
    """``app`` behind ``guard`` on a real uvicorn server on a loopback port; its port."""
    config = uvicorn.Config(
        guard.wrap(app),
        host="127.0.0.1",
        port=0,
        log_level="error",
        lifespan=options.pop("lifespan", "off"),
        **guard.uvicorn_options(),
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, "the server is listening")
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def guarded_server(**limits: float) -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/", _hello), Route("/hold", _hold)])
    guard = ConnectionGuard(
        max_connections=int(limits.get("max_connections", 100)),
        max_connections_per_client=int(limits.get("max_connections_per_client", 100)),
        header_timeout=limits.get("header_timeout", 10.0),
        keep_alive_timeout=limits.get("keep_alive_timeout", 5.0),
        trusted_proxies=("127.0.0.1",) if limits.get("behind_proxy") else None,
    )
    async with served(app, guard) as port:
        yield port


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(10):
        return await reader.read()  # until the server closes the connection


async def test_a_connection_that_sends_no_request_head_is_closed_with_408() -> None:
    async with guarded_server(header_timeout=0.3) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        trickle_reader, trickle_writer = await asyncio.open_connection("127.0.0.1", port)
        trickle_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answers = await asyncio.gather(*(_read_all(reader) for reader, _ in idle))
        trickled = await _read_all(trickle_reader)
        for _, writer in [*idle, (trickle_reader, trickle_writer)]:
            writer.close()
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
        assert trickled.startswith(b"HTTP/1.1 408")
        async with httpx.AsyncClient() as client:
            ok = await client.get(f"http://127.0.0.1:{port}/")
        assert ok.text == "hello", "a prompt client is served as usual"


async def test_connections_past_the_bound_are_refused_at_once_when_none_is_idle() -> None:
    HOLD.clear()
    async with guarded_server(max_connections=5, header_timeout=30) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for _, held_writer in held:
            held_writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            await held_writer.drain()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await _read_all(reader)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 1" in refused.lower()
        assert b"RATE_LIMITED" in refused
        HOLD.set()
        for held_reader, held_writer in held:
            async with asyncio.timeout(10):
                assert (await held_reader.readuntil(b"held")).startswith(b"HTTP/1.1 200")
            held_writer.close()


async def test_at_the_bound_the_heaviest_client_s_idle_connection_makes_room() -> None:
    async with guarded_server(max_connections=6, header_timeout=30) as port:
        # 127.0.0.2 holds four idle sockets, 127.0.0.4 two: the server is full.
        heavy = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))]
        heavy += [
            await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            for _ in range(3)
        ]
        light = [
            await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.4", 0))
            for _ in range(2)
        ]
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        ) as client:
            ok = await client.get(f"http://127.0.0.1:{port}/")
        assert ok.text == "hello"
        shed = await _read_all(heavy[0][0])
        # Closed without a word: a 503 written unasked would be read as the answer to a
        # request crossing the close, which its client would then not retry.
        assert shed == b"", "the heaviest client's oldest idle socket, closed silently"
        for reader, writer in [*heavy[1:], *light]:
            assert not reader.at_eof(), "the others stay open"
            writer.close()
        heavy[0][1].close()


async def test_a_keep_alive_victim_is_closed_without_an_answer() -> None:
    async with guarded_server(max_connections=2, header_timeout=30) as port:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        other = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        ) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hello"
        # The kept-alive connection was the oldest idle one: closed, nothing written after
        # the answer it had already read.
        assert await _read_all(reader) == b""
        writer.close()
        other[1].close()


def test_ipv6_clients_count_by_their_64_prefix() -> None:
    assert client_key("2001:db8:0:0:1::7") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::7") != client_key("2001:db8::7")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("not-an-address") == "not-an-address"


async def test_forwarded_ipv6_clients_of_one_64_share_a_bound() -> None:
    async with guarded_server(
        max_connections_per_client=2, header_timeout=30, behind_proxy=True
    ) as port:

        async def ask(forwarded_for: str) -> tuple[bytes, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = f"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded_for}\r\n\r\n"
            writer.write(head.encode())
            async with asyncio.timeout(10):
                answer = await reader.readuntil(b"\r\n\r\n")
            return answer, writer

        answers = [await ask(f"2001:db8::{n}") for n in (1, 2, 3)]
        assert [head[:12] for head, _ in answers] == [b"HTTP/1.1 200"] * 2 + [b"HTTP/1.1 503"]
        elsewhere, writer = await ask("2001:db8:0:1::1")
        assert elsewhere.startswith(b"HTTP/1.1 200"), "another /64 is another client"
        for _, held in [*answers, (elsewhere, writer)]:
            held.close()


async def test_connections_past_the_per_client_bound_are_refused() -> None:
    async with guarded_server(max_connections_per_client=2, header_timeout=30) as port:
        held = [
            await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            for _ in range(2)
        ]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 503")
        writer.close()
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        ) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hello"
        for _, held_writer in held:
            held_writer.close()


async def test_a_request_head_over_64_kib_gets_431() -> None:
    async with guarded_server() as port:
        whole = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(whole)  # all at once: the head is complete, and too large
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 431")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(whole[:-4])  # never finished: cut off once past the bound
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 431")
        writer.close()


async def test_a_head_is_known_by_its_end_however_it_arrives() -> None:
    """The guard reads a head only for its end: one whose empty line straddles two writes is
    served; empty lines before a request line start no head, so a slowloris that sends
    them first still meets the deadline."""
    async with guarded_server(header_timeout=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r")
        await writer.drain()
        await asyncio.sleep(0)  # two chunks, as far as the loop lets us
        writer.write(b"\n")
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\r\n\r\nGET / HTTP/1.1\r\nX-Slow: ")
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 408")
        writer.close()


async def test_a_body_that_never_arrives_gets_408() -> None:
    from gateway.server.app import create_app

    app = create_app(live_settings(body_timeout=0.3))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, "the gateway is listening")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query":'
        )
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 408")
    finally:
        server.should_exit = True
        await task


async def test_websocket_connections_keep_their_client_s_place_until_they_close() -> None:
    import websockets
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def echo(socket: WebSocket) -> None:
        await socket.accept()
        async for message in socket.iter_text():
            await socket.send_text(message)

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    guard = ConnectionGuard(
        max_connections=10, header_timeout=5, keep_alive_timeout=5, max_connections_per_client=2
    )
    async with served(app, guard) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        first = await websockets.connect(url)
        second = await websockets.connect(url)
        await first.send("ping")
        assert await first.recv() == "ping"
        assert guard.held_by("127.0.0.1") == 2, "upgraded, both still counted"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url)
        assert refused.value.response.status_code == 503, "past the per-client bound"
        await first.close()
        await eventually(
            lambda: guard.held_by("127.0.0.1") == 1, "a closed WebSocket gives its place back"
        )
        third = await websockets.connect(url)
        await third.close()
        await second.close()
        await eventually(lambda: guard.open == 0, "every closed connection is forgotten")


async def test_at_the_bound_an_idle_websocket_makes_room_for_a_request() -> None:
    """The red team's lock-out: acked, tokenless, idle WebSockets filled every connection
    slot. A WebSocket running no operation is shed (1013, try again later) like an idle
    HTTP connection."""
    import websockets

    from gateway.server.app import create_app
    from tests.conftest import RecordingTransport

    app = create_app(live_settings(), upstream_transport=RecordingTransport())
    guard = ConnectionGuard(max_connections=6, header_timeout=30, keep_alive_timeout=5.0)
    held = []
    async with served(app, guard, lifespan="on") as port:
        try:
            for n in range(6):  # three idle sockets from each of two addresses: full
                held.append(
                    await websockets.connect(
                        f"ws://127.0.0.1:{port}/graphql",
                        subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
                        local_addr=(f"127.0.0.{2 + n % 2}", 0),
                    )
                )
                await held[-1].send('{"type": "connection_init"}')
                assert "connection_ack" in str(await held[-1].recv())
            async with httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(local_address="127.0.0.4")
            ) as client:
                answer = await client.get(f"http://127.0.0.1:{port}/healthz")
            assert answer.status_code == 200
            async with asyncio.timeout(10):
                await held[0].wait_closed()
            assert held[0].close_code == 1013, "the oldest idle socket of a heaviest client"
            assert all(ws.close_code is None for ws in held[1:]), "the others stay open"
        finally:
            for ws in held:
                await ws.close()


async def test_the_guard_wraps_uvicorn_s_own_http_protocol() -> None:
    """The one thing the guard takes from uvicorn besides its public options: the protocol
    class its ``http="auto"`` names (``uvicorn.config.HTTP_PROTOCOLS``), built with the
    keyword arguments uvicorn gives an ``http=`` class and driven through asyncio's
    interfaces. If an upgrade changes which class that is or how it is built, this fails."""
    from gateway.server.connections import uvicorn_http_protocol

    config = uvicorn.Config(_hello, lifespan="off", log_config=None)
    config.load()
    assert config.http_protocol_class is uvicorn_http_protocol(), "uvicorn's own choice"
    guard = ConnectionGuard(max_connections=10, header_timeout=10)
    app = Starlette(routes=[Route("/", _hello)])
    async with served(app, guard) as port, httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hello"
        [connection] = guard.by_address.values()
        assert type(connection.serving) is uvicorn_http_protocol()
        assert connection.idle, "its request is over: it holds a socket and nothing else"


@pytest.mark.parametrize(
    "peer", ["127.0.0.1", "127.0.0.9", "10.1.2.3", "10.2.0.1", "::1", "2001:db8::1", "unix"]
)
@pytest.mark.parametrize("entries", [("127.0.0.1",), ("10.1.0.0/16", "::1"), ("*",)])
async def test_proxy_peers_are_the_peers_uvicorn_takes_forwarded_headers_from(
    peer: str, entries: tuple[str, ...]
) -> None:
    """The guard must know a proxy as its connection opens (its connections are counted per
    forwarded client, not against the proxy); which client a request is for is uvicorn's
    ``ProxyHeadersMiddleware``'s answer. Both read the same setting the same way."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from gateway.server.connections import ProxyPeers

    seen: list[Any] = []

    async def record(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"])

    middleware = ProxyHeadersMiddleware(record, trusted_hosts=list(entries))
    scope = {
        "type": "http",
        "client": (peer, 1234),
        "headers": [(b"x-forwarded-for", b"192.0.2.7")],
    }
    await middleware(scope, None, None)  # type: ignore[arg-type]
    assert (peer in ProxyPeers(entries)) == (seen[0] == ("192.0.2.7", 0))

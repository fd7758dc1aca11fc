"""Bounds on what clients can hold, with a real uvicorn server on a loopback port: requests in
flight (503 with Retry-After), connections (503 and closed), request heads that never arrive
(408 and closed). Time is bounded by the settings under test, never by sleeps in asserts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.http.connections import uvicorn_limits
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


@asynccontextmanager
async def guarded_server(**limits: float) -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/", _hello)])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="error",
        lifespan="off",
        **uvicorn_limits(
            max_connections=int(limits.get("max_connections", 100)),
            header_timeout=limits.get("header_timeout", 10.0),
            keep_alive_timeout=limits.get("keep_alive_timeout", 5.0),
        ),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, "the server is listening")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        await task


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


async def test_connections_past_the_bound_are_refused_at_once() -> None:
    async with guarded_server(max_connections=5, header_timeout=30) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await _read_all(reader)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 1" in refused.lower()
        assert b"RATE_LIMITED" in refused
        for _, held_writer in held:
            held_writer.close()


async def test_a_body_that_never_arrives_gets_408() -> None:
    from gateway.app import create_app

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

"""The network wire (``gateway.upstream.wire``, aiohttp under httpx's transport interface) over
a real socket: exactly the URL built, no cookie between callers, keep-alive, bounded reads
after decompression, and every failure as the httpx error (so the contract code, the retries
and the breaker) httpx's own transport gives. The upstream is a scripted asyncio server, so
each test controls the bytes and counts connections and requests."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import SYSTEM_CLOCK
from gateway.domain.query import Fetch, NumbersQuery, PageWindow
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.observability.tracing import Tracing
from gateway.settings import load_settings
from gateway.upstream.factory import Upstream, build_upstream, network_transport
from gateway.upstream.wire import AiohttpWire, wire_error
from tests.conftest import live_settings

PAGE = orjson.dumps({"phoneNumbers": [{"phoneNumber": "+14085550100"}]})
ASK = Fetch(NumbersQuery(None, ()), PageWindow(0, 10), False)


def answer(body: bytes = PAGE, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers]
    if not any(h.lower().startswith("content-length") for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes  # written as it is
    close: bool = False  # then the connection is closed


@dataclass(slots=True)
class ScriptedUpstream:
    """Answers each request head with ``script(head, index)``; counts connections."""

    script: Callable[[bytes, int], Reply]
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    # Open server-side connections, closed when the test ends: Python 3.11's server.close()
    # leaves them open, and one collected after its loop closed warns in a later test.
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                reply = self.script(head, len(self.heads) - 1)
                try:
                    writer.write(reply.data)
                    await writer.drain()
                except ConnectionError:  # the client hung up on a body it would not read
                    return
                if reply.close:
                    return
        finally:
            await self.hang_up(writer)

    async def hang_up(self, writer: asyncio.StreamWriter) -> None:
        self.writers.discard(writer)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def close_all(self) -> None:
        for writer in list(self.writers):
            await self.hang_up(writer)

    def header(self, index: int, name: str) -> str | None:
        for line in self.heads[index].decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None


@asynccontextmanager
async def upstream_over(
    script: Callable[[bytes, int], Reply], host: str = "127.0.0.1", **overrides: object
) -> AsyncIterator[tuple[ScriptedUpstream, Upstream]]:
    """The scripted server on a loopback port, and the upstream as the app builds it for the
    network (no transport given: the wire is ``factory.network_transport``'s), asking it by
    ``host``."""
    scripted = ScriptedUpstream(script)
    server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    base = f"http://{host}:{port}/v1"
    built = build_upstream(
        load_settings(upstream_url=base, **overrides),
        base_url=base,
        transport=None,
        metrics=None,
        clock=SYSTEM_CLOCK,
        tracing=Tracing(),
    )
    try:
        async with built.http:
            yield scripted, built
    finally:
        await scripted.close_all()
        server.close()
        await server.wait_closed()


def always(reply: Reply) -> Callable[[bytes, int], Reply]:
    return lambda head, index: reply


async def test_the_network_wire_is_aiohttps() -> None:
    settings = live_settings()
    assert isinstance(network_transport(settings, str(settings.upstream_url)), AiohttpWire)
    async with upstream_over(always(Reply(answer()))) as (_, built):
        page = await built.client.fetch(ASK, "Bearer t", caller="c")
    assert [item["phoneNumber"] for item in page.items] == ["+14085550100"]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ownerName", "phoneNumber", "a b"]),
            st.text(alphabet=st.sampled_from(" +&=%#?/;,:@[]~'\"é漢"), max_size=8),
        ),
        max_size=3,
    )
)
def test_the_upstream_gets_exactly_the_url_the_client_built(params: list[tuple[str, str]]) -> None:
    """aiohttp's URL type would re-quote it (``%2F`` to ``/``, ``%40`` to ``@``): the wire
    sends it as encoded."""
    fetch = Fetch(NumbersQuery(None, tuple(params)), PageWindow(0, 10), False)

    async def run() -> tuple[bytes, bytes]:
        async with upstream_over(always(Reply(answer()))) as (scripted, built):
            await built.client.fetch(fetch, "Bearer t", caller="c")
            built_url = built.client.upstream_url(fetch)
        return scripted.heads[0].split(b" ")[1], built_url.raw_path

    sent, built_path = asyncio.run(run())
    assert sent == built_path


async def test_no_cookie_one_callers_answer_sets_travels_with_another_callers_request() -> None:
    """Asked by name: aiohttp's default jar would keep a cookie from a named host (never
    from an IP address), and send it with every later request."""
    set_cookie = Reply(answer(PAGE, "Set-Cookie: session=a; Path=/; Max-Age=3600"))
    async with upstream_over(always(set_cookie), host="localhost") as (scripted, built):
        for token in ("caller-a", "caller-b", "caller-a"):
            await built.client.fetch(ASK, f"Bearer {token}", caller=token)
    assert [scripted.header(i, "cookie") for i in range(3)] == [None] * 3
    assert [scripted.header(i, "authorization") for i in range(3)] == [
        "Bearer caller-a",
        "Bearer caller-b",
        "Bearer caller-a",
    ]


async def test_requests_one_after_another_share_one_kept_alive_connection() -> None:
    async with upstream_over(always(Reply(answer()))) as (scripted, built):
        for _ in range(5):
            await built.client.fetch(ASK, "Bearer t", caller="c")
    assert len(scripted.heads) == 5
    assert scripted.connections == 1


async def test_a_compressed_body_is_bounded_after_decompression() -> None:
    """A small gzip body that expands past the bound: refused as the upstream's failure and
    not asked again; the next ask is answered."""
    bomb = gzip.compress(b'{"phoneNumbers": [' + b" " * 2_000_000 + b"]}")
    replies = [Reply(answer(bomb, "Content-Encoding: gzip")), Reply(answer())]
    script = lambda head, index: replies[min(index, 1)]  # noqa: E731
    async with upstream_over(script, max_upstream_bytes=1_000_000) as (scripted, built):
        with pytest.raises(UpstreamUnavailable, match="larger than 1000000 bytes"):
            await built.client.fetch(ASK, "Bearer t", caller="c")
        page = await built.client.fetch(ASK, "Bearer t", caller="c")
    assert len(page.items) == 1
    assert len(scripted.heads) == 2, "an unreadable answer is not asked again"


async def test_a_body_left_unread_is_not_reused_its_connection_is_closed() -> None:
    """A 3 MB body over the bound is refused without being read; the rest of it is still on
    the connection, so the next ask goes over a new one (and gets its own answer)."""
    large = b'{"phoneNumbers": [' + b" " * 3_000_000 + b"]}"
    replies = [Reply(answer(large)), Reply(answer())]
    script = lambda head, index: replies[min(index, 1)]  # noqa: E731
    async with upstream_over(script, max_upstream_bytes=1_000_000) as (scripted, built):
        with pytest.raises(UpstreamUnavailable, match="larger than 1000000 bytes"):
            await built.client.fetch(ASK, "Bearer t", caller="c")
        page = await built.client.fetch(ASK, "Bearer t", caller="c")
    assert len(page.items) == 1
    assert scripted.connections == 2


async def test_a_cut_answer_is_retried_and_then_the_upstreams_failure() -> None:
    cut = Reply(answer(PAGE)[:-10], close=True)
    async with upstream_over(always(cut)) as (scripted, built):
        with pytest.raises(UpstreamUnavailable, match="RemoteProtocolError"):
            await built.client.fetch(ASK, "Bearer t", caller="c")
    assert len(scripted.heads) == 3, "each attempt asked again (3 attempts)"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n{}", close=True),
        Reply(b"NOT HTTP AT ALL\r\n\r\n", close=True),
        Reply(b"", close=True),  # closed without a word
    ],
    ids=["bad-content-length", "not-http", "closed"],
)
async def test_a_malformed_answer_is_an_httpx_error_the_client_maps(reply: Reply) -> None:
    """aiohttp's parser errors never escape as aiohttp's own: the exchange ends as
    UPSTREAM_UNAVAILABLE, after the resilient transport's 3 attempts, as over httpx's own
    transport. aiohttp itself sends a GET once more when the connection closed before an
    answer (the stale keep-alive race; it has no switch for it), so a server that hangs up
    at once sees two requests an attempt."""
    async with upstream_over(always(reply)) as (scripted, built):
        with pytest.raises(UpstreamUnavailable):
            await built.client.fetch(ASK, "Bearer t", caller="c")
    assert len(scripted.heads) == (6 if reply.data == b"" else 3)


async def test_a_refused_connection_is_unavailable_not_a_timeout() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    base = f"http://127.0.0.1:{port}/v1"
    built = build_upstream(
        load_settings(upstream_url=base),
        base_url=base,
        transport=None,
        metrics=None,
        clock=SYSTEM_CLOCK,
        tracing=Tracing(),
    )
    async with built.http:
        with pytest.raises(UpstreamError) as refused:
            await built.client.fetch(ASK, "Bearer t", caller="c")
    assert type(refused.value) is UpstreamUnavailable
    assert "ConnectError" in str(refused.value)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError("timeout"), httpx.TimeoutException),
        (TimeoutError(), httpx.TimeoutException),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("cut"), httpx.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
        (aiohttp.InvalidURL("x"), httpx.UnsupportedProtocol),
        (aiohttp.ClientError("other"), httpx.TransportError),
    ],
)
def test_aiohttp_failures_are_the_httpx_errors_httpx_raises_for_them(
    failure: BaseException, expected: type[httpx.TransportError]
) -> None:
    request = httpx.Request("GET", "http://webex.test/v1/telephony/config/numbers")
    mapped = wire_error(failure, request)
    assert type(mapped) is expected
    assert mapped.request is request


async def test_a_read_timeout_past_the_deadline_is_upstream_timeout() -> None:
    """The wire passes the client's read timeout to aiohttp; whichever fires, the exchange
    ends as UPSTREAM_TIMEOUT, not a hang."""
    silent = ScriptedUpstream(always(Reply(b"")))

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.connections += 1
        silent.writers.add(writer)
        await reader.read()  # until the client gives up and closes
        await silent.hang_up(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    built = build_upstream(
        load_settings(upstream_url=base, upstream_timeout=0.3),
        base_url=base,
        transport=None,
        metrics=None,
        clock=SYSTEM_CLOCK,
        tracing=Tracing(),
    )
    try:
        async with built.http:
            with pytest.raises(UpstreamTimeout):
                await built.client.fetch(ASK, "Bearer t", caller="c")
    finally:
        await silent.close_all()
        server.close()
        await server.wait_closed()
    assert silent.connections >= 1

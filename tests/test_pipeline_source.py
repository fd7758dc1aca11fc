"""``NumbersSource.for_caller``: a request's caller is identified once, whether the HTTP layer
already did it (and passes the ``Caller``) or the source does it from the header."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from gateway.data.caller import Caller
from gateway.data.page_cache import PageCache
from gateway.data.source import CallerNumbers, NumbersSource
from gateway.errors import Unauthenticated
from gateway.upstream.client import UpstreamClient
from tests.conftest import UPSTREAM_BASE, RecordingTransport

EMPTY_PAGE = orjson.dumps({"phoneNumbers": []})


class CountedSource:
    """A source over a recording upstream, counting how often a header is identified."""

    def __init__(self, http: httpx.AsyncClient, transport: RecordingTransport) -> None:
        self.transport = transport
        self.source = NumbersSource(
            UpstreamClient(http, base_url=UPSTREAM_BASE),
            PageCache(ttl=0),
            max_page_size=100,
        )
        self.identified = 0
        identify = self.source.callers.identify

        def counting(header: str | None) -> Caller:
            self.identified += 1
            return identify(header)

        self.source.callers.identify = counting  # type: ignore[method-assign]


@pytest.fixture
async def counted() -> AsyncIterator[CountedSource]:
    transport = RecordingTransport(handler=lambda _: httpx.Response(200, content=EMPTY_PAGE))
    async with httpx.AsyncClient(transport=transport) as http:
        yield CountedSource(http, transport)


async def first_page(numbers: CallerNumbers) -> None:
    await numbers.phone_numbers(None, None, None, None)


async def test_a_caller_identified_by_the_request_is_not_identified_again(
    counted: CountedSource,
) -> None:
    callers = counted.source.callers
    caller = callers.known("bearer   tok")
    assert caller is not None
    assert counted.identified == 1
    numbers = counted.source.for_caller("bearer   tok", caller=caller)
    await first_page(numbers)
    assert counted.identified == 1, "the caller's HMAC was computed twice"
    assert numbers.caller is caller
    assert counted.transport.requests[0].headers["authorization"] == "Bearer tok"


async def test_without_a_caller_the_source_identifies_the_header(counted: CountedSource) -> None:
    numbers = counted.source.for_caller("Bearer tok")
    await first_page(numbers)
    assert counted.identified == 1
    assert numbers.caller == counted.source.callers.known("Bearer tok")
    assert counted.transport.requests[0].headers["authorization"] == "Bearer tok"


async def test_a_header_naming_nobody_fails_the_field_before_any_upstream_call(
    counted: CountedSource,
) -> None:
    numbers = counted.source.for_caller("Basic dXNlcg==", caller=None)
    with pytest.raises(Unauthenticated):
        await first_page(numbers)
    assert counted.transport.calls == 0

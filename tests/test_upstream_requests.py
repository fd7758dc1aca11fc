"""What the upstream client puts on the wire: the exact URL of every kind of ``Fetch`` (built
once, never re-parsed from parameters), and no cookie kept by the one client all callers
share."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.clock import SYSTEM_CLOCK
from gateway.domain.query import Fetch, NumbersQuery, PageWindow
from gateway.observability.tracing import Tracing
from gateway.upstream.client import UpstreamClient
from gateway.upstream.factory import build_upstream, environment_proxy
from tests.conftest import (
    UPSTREAM_BASE,
    RecordingTransport,
    examples,
    graphql,
    live_settings,
    running_gateway,
)

EMPTY_PAGE = orjson.dumps({"phoneNumbers": []})
# Characters a caller's filter may carry that URL encoding treats specially. No lone
# surrogates: a GraphQL document cannot carry one (its parse refuses the escape).
AWKWARD = st.text(
    alphabet=st.sampled_from(" +&=%#?/;,:@[]~.-_'\"é漢😀\t")
    | st.characters(exclude_categories=["Cs"]),
    max_size=12,
)
PARAM_NAMES = st.sampled_from(["phoneNumber", "ownerName", "extension", "order", "a b", "x+y"])
fetches = st.builds(
    Fetch,
    query=st.builds(
        NumbersQuery,
        org_id=st.none() | AWKWARD,
        params=st.lists(st.tuples(PARAM_NAMES, AWKWARD), max_size=5).map(tuple),
    ),
    window=st.none() | st.builds(PageWindow, st.integers(0, 10_000), st.integers(1, 2_000)),
    details=st.booleans(),
)


def answering(*responses: httpx.Response) -> RecordingTransport:
    """A recording upstream answering with ``responses`` in turn (the last one from then on)."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        response = queue.pop(0) if len(queue) > 1 else queue[0]
        return httpx.Response(response.status_code, headers=response.headers, content=EMPTY_PAGE)

    return RecordingTransport(handler=handler)


def page(**headers: str) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "application/json", **headers})


@settings(max_examples=examples(100), deadline=None)
@given(fetch=fetches)
@example(
    fetch=Fetch(
        NumbersQuery("org one", (("phoneNumber", "+1 408 & co"), ("ownerName", "Zoë 李"))),
        PageWindow(40, 20),
        True,
    )
)
@example(  # a repeated name: httpx groups its values where the name first appears
    fetch=Fetch(
        NumbersQuery(None, (("phoneNumber", "1"), ("order", "x"), ("phoneNumber", "2"))),
        None,
        True,
    )
)
def test_every_fetch_is_sent_with_exactly_the_url_httpx_builds_from_its_parameters(
    fetch: Fetch,
) -> None:
    async def run() -> list[httpx.Request]:
        transport = answering(page())
        async with httpx.AsyncClient(transport=transport) as http:
            client = UpstreamClient(http, base_url=UPSTREAM_BASE)
            await client.fetch(fetch, "Bearer t", caller="c")
            await client.fetch(fetch, "Bearer t", caller="c")  # the kept URL this time
            # What the client sent before: httpx merging the parameters into the URL.
            await http.get(client.numbers_url, params=tuple(fetch.upstream_params()))
        return transport.requests

    first, kept, reference = asyncio.run(run())
    for request in (first, kept):
        assert request.url.raw_path == reference.url.raw_path
        assert str(request.url) == str(reference.url)


async def test_after_an_unsafe_next_link_the_rest_is_asked_with_the_url_httpx_would_build() -> None:
    unsafe = '<https://elsewhere.example/v1/telephony/config/numbers?start=2&max=3>; rel="next"'
    transport = RecordingTransport(
        handler=lambda request: httpx.Response(
            200,
            headers={"link": unsafe} if len(transport.requests) == 1 else {},
            content=orjson.dumps({"phoneNumbers": [{"phoneNumber": "+1 408 555 0100"}] * 2}),
        )
    )
    query = NumbersQuery(None, (("ownerName", "a+b c&d"),))
    async with httpx.AsyncClient(transport=transport) as http:
        client = UpstreamClient(http, base_url=UPSTREAM_BASE)
        await client.fetch(Fetch(query, PageWindow(0, 5), False), "Bearer t", caller="c")
        rest = Fetch(query, PageWindow(2, 3), False)
        expected = client.numbers_url.copy_merge_params(tuple(rest.upstream_params()))
    assert transport.calls == 2
    assert transport.requests[1].url.raw_path == expected.raw_path
    assert transport.requests[1].url.host == "webex.test"


async def test_a_cookie_set_in_one_callers_answer_never_travels_with_anothers_request() -> None:
    transport = answering(page(**{"set-cookie": "session=a; Path=/"}), page())
    upstream = build_upstream(
        live_settings(),
        base_url=UPSTREAM_BASE,
        transport=transport,
        metrics=None,
        clock=SYSTEM_CLOCK,
        tracing=Tracing(),
    )
    async with upstream.http as http:
        client = upstream.client
        ask = Fetch(NumbersQuery(None, ()), PageWindow(0, 10), False)
        await client.fetch(ask, "Bearer caller-a", caller="a")
        await client.fetch(ask, "Bearer caller-b", caller="b")
        assert not http.cookies, "the shared client kept a cookie"
    answer_a, request_b = transport.requests
    assert answer_a.headers["authorization"] == "Bearer caller-a"
    assert request_b.headers["authorization"] == "Bearer caller-b"
    assert "cookie" not in request_b.headers


async def test_through_the_gateway_no_callers_cookie_reaches_another_caller() -> None:
    transport = answering(page(**{"set-cookie": "session=a; Path=/; Max-Age=3600"}), page())
    async with running_gateway(live_settings(cache_ttl=0), transport) as gateway:
        for token in ("caller-a", "caller-b", "caller-a"):
            body: dict[str, Any] = await graphql(
                gateway,
                "{ phoneNumbers { nodes { phoneNumber } } }",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert body["data"]["phoneNumbers"]["nodes"] == []
    assert transport.calls == 3
    assert [request.headers.get("cookie") for request in transport.requests] == [None] * 3


def test_the_network_transport_takes_the_environments_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shared client has a transport of its own (the resilient one), so httpx no longer
    reads the proxy variables for it: the network transport under it does, for the upstream's
    one origin."""
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    webex = httpx.URL("https://webexapis.com/v1")
    assert environment_proxy(webex) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://egress.internal:3128")
    assert environment_proxy(webex) == "http://egress.internal:3128"
    assert environment_proxy(httpx.URL("http://webex.test/v1")) is None, "not for http"
    monkeypatch.setenv("ALL_PROXY", "http://any.internal:3128")
    assert environment_proxy(httpx.URL("http://webex.test/v1")) == "http://any.internal:3128"
    monkeypatch.setenv("NO_PROXY", "webexapis.com")
    assert environment_proxy(webex) is None, "NO_PROXY exempts the host"

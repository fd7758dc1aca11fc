"""The repeat fast path (``http.repeat_answers``) answers exactly as the view does.

A property test sends the same random sequences of requests (GET and POST, with and without
a token, every ``Accept`` the view negotiates, ``If-None-Match``, ``Cache-Control: no-cache``,
the cache report, CORS, compression, CSRF headers, expiry between requests) to a gateway with
the fast path and to one without it, and compares every response's status, headers and
body, every log line's fields, the metrics and the upstream calls. Other tests prove the
path is taken (the runner never sees a repeat) and that it is per caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.server.app import create_app
from gateway.simulator import build_demo_world, create_simulator_app
from gateway.transports.operation import OperationRunner
from tests.conftest import GATEWAY_BASE, FakeClock, RecordingTransport, examples, live_settings

WORLD = build_demo_world(size=200, seed=7)
TTL = 60
FIFTY = (
    "query Few { phoneNumbers(page: {first: 5}) { nodes { phoneNumber state "
    "location { id name } owner { id type } } totalCount } }"
)
PAGE = "query Page($n: Int!) { phoneNumbers(page: {first: $n}) { nodes { phoneNumber } } }"
OPERATIONS = [
    (FIFTY, None),
    (PAGE, {"n": 2}),
    (PAGE, {"n": 3}),
    ("{ __typename }", None),
    ("{ nope }", None),  # fails validation: never stored
    ("mutation { nope }", None),  # a mutation by GET: 405
]


@asynccontextmanager
async def gateway(
    clock: FakeClock, *, fast: bool, **overrides: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """A client of a gateway over the simulator (``overrides``: more settings), and its app
    and upstream recorder."""
    recorder = RecordingTransport(httpx.ASGITransport(app=create_simulator_app(WORLD)))
    app = create_app(
        live_settings(cache_ttl=TTL, allowed_origins="https://app.example", **overrides),
        upstream_transport=recorder,
        clock=clock,
        repeat_answers=fast,
    )
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url=GATEWAY_BASE
        ) as client,
    ):
        yield client, (app, recorder)


def sometimes(*values: str, absent: int = 3) -> st.SearchStrategy[str | None]:
    """One of ``values``, or (``absent`` times as likely as each) no header at all."""
    return st.sampled_from([None] * absent + list(values))


# Mostly requests the fast path answers (a valid token, the CSRF header, a JSON Accept),
# each header departing from that often enough to try every way out of it.
requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "GET", "GET", "POST"]),
        "operation": st.sampled_from([0, 0, 1, 2, 3, 4, 5]),
        "authorization": st.sampled_from(
            ["Bearer demo-admin"] * 4
            + ["bearer   demo-admin", "Bearer demo-location-admin", "Basic x", None]
        ),
        "apollo-require-preflight": st.sampled_from(["1", "1", "1", None]),
        "accept": sometimes(
            "application/json",
            "application/graphql-response+json",
            "*/*",
            "text/html",
            "multipart/mixed",
            "application/json;q=0.5, multipart/mixed;q=0.1",
            "image/png",
            absent=7,
        ),
        "if-none-match": sometimes("*", 'W/"elsewhere"', "previous", "previous"),
        "cache-control": sometimes("no-cache", "max-age=0", absent=6),
        "gateway-cache-report": sometimes("true", absent=6),
        "origin": sometimes("https://app.example", "https://evil.example", absent=6),
        # httpx sends "gzip, deflate" when none is given.
        "accept-encoding": st.sampled_from(["identity"] * 4 + ["gzip", "br;q=0", None]),
        "apollographql-client-name": sometimes("web", "ios"),
        "x-request-id": sometimes("req-1", "req-2"),
        "traceparent": sometimes("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    }
).map(lambda request: {name: value for name, value in request.items() if value is not None})


async def send(client: httpx.AsyncClient, request: dict[str, Any], etag: str | None) -> Any:
    query, variables = OPERATIONS[request["operation"]]
    headers = {
        name: (etag or "") if value == "previous" else value
        for name, value in request.items()
        if name not in ("method", "operation")
    }
    if request["method"] == "GET":
        params = {"query": query} | ({"variables": json.dumps(variables)} if variables else {})
        return await client.get("/graphql", params=params, headers=headers)
    headers["content-type"] = "application/json"
    body = json.dumps({"query": query, "variables": variables})
    return await client.post("/graphql", content=body, headers=headers)


def counted(rendered: bytes) -> list[str]:
    """The samples two gateways doing the same work must agree on: all but time's."""
    return [
        line
        for line in rendered.decode().splitlines()
        if not line.startswith(("#", "process_", "python_"))
        and not any(part in line for part in ("_bucket{", "_sum", "_created"))
    ]


def comparable(response: httpx.Response, request: dict[str, Any]) -> dict[str, Any]:
    keep_id = "x-request-id" in request
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if keep_id or name != "x-request-id"
    ]
    return {"status": response.status_code, "headers": headers, "body": response.content}


def untimed(name: str, value: Any) -> Any:
    if name == "upstream":
        return [call["status"] for call in value]
    if name == "stream":
        return {key: part for key, part in value.items() if key != "streamMs"}
    return repr(value) if isinstance(value, BaseException) else value


def logged(lines: list[MutableMapping[str, Any]], request: dict[str, Any]) -> list[dict[str, Any]]:
    """Every field of every line but times (and ids the simulator or the gateway drew)."""
    keep_id = "x-request-id" in request
    return [
        {
            name: untimed(name, value)
            for name, value in line.items()
            if name != "durationMs" and (keep_id or name != "requestId")
        }
        for line in lines
    ]


async def compare(steps: list[tuple[dict[str, Any], int]]) -> None:
    clock = FakeClock()
    async with (
        gateway(clock, fast=True) as (fast, (fast_app, fast_upstream)),
        gateway(clock, fast=False) as (slow, (slow_app, slow_upstream)),
    ):
        etags: dict[str, str | None] = {"fast": None, "slow": None}
        for request, elapse in steps:
            clock.now += elapse
            with capture_logs() as fast_logs:
                ours = await send(fast, request, etags["fast"])
            with capture_logs() as slow_logs:
                theirs = await send(slow, request, etags["slow"])
            etags = {"fast": ours.headers.get("etag"), "slow": theirs.headers.get("etag")}
            assert comparable(ours, request) == comparable(theirs, request), request
            assert logged(fast_logs, request) == logged(slow_logs, request), (
                request,
                fast_logs,
                slow_logs,
            )
            assert counted(fast_app.state.metrics.render()) == counted(
                slow_app.state.metrics.render()
            )
            # The same upstream calls, with the same credentials.
            assert [r.headers.get("authorization") for r in fast_upstream.requests] == [
                r.headers.get("authorization") for r in slow_upstream.requests
            ]


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    distinct=st.lists(requests, min_size=1, max_size=3),
    order=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from([0, 0, 0, 1, TTL + 1])), max_size=8
    ),
)
def test_the_fast_path_answers_as_the_view_does(
    distinct: list[dict[str, Any]], order: list[tuple[int, int]]
) -> None:
    # Each request at least twice in a row (a repeat), then in a random order with time passing.
    steps = [(request, 0) for request in distinct for _ in range(2)]
    steps += [(distinct[index % len(distinct)], elapse) for index, elapse in order]
    asyncio.run(compare(steps))


@contextmanager
def runs_counted() -> Iterator[list[int]]:
    """How many times the operation runner is asked to run an operation."""
    calls = [0]
    original = OperationRunner.run

    async def run(self: OperationRunner, call: Any) -> Any:
        calls[0] += 1
        return await original(self, call)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OperationRunner, "run", run)
        yield calls


ADMIN = {
    "authorization": "Bearer demo-admin",
    "apollo-require-preflight": "1",
    "accept-encoding": "identity",
}


async def test_a_repeat_never_reaches_the_view_and_comes_back_the_same() -> None:
    with runs_counted() as runs:
        async with gateway(FakeClock(), fast=True) as (client, (_, upstream)):
            first = await client.get("/graphql", params={"query": FIFTY}, headers=ADMIN)
            repeats = [
                await client.get("/graphql", params={"query": FIFTY}, headers=ADMIN)
                for _ in range(3)
            ]
            unchanged = await client.get(
                "/graphql",
                params={"query": FIFTY},
                headers={**ADMIN, "if-none-match": first.headers["etag"]},
            )
            metrics = (await client.get("/metrics")).text
    assert runs[0] == 1, "only the first request ran it (and left its plan)"
    assert upstream.calls == 1
    assert {r.content for r in repeats} == {first.content}
    assert all(r.headers["etag"] == first.headers["etag"] for r in repeats)
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert "gateway_responses_reused_total 4.0" in metrics


async def test_an_expired_answer_goes_the_normal_way_again() -> None:
    clock = FakeClock()
    with runs_counted() as runs:
        async with gateway(clock, fast=True) as (client, (_, upstream)):
            for _ in range(3):
                await client.get("/graphql", params={"query": FIFTY}, headers=ADMIN)
            clock.now += TTL + 1
            await client.get("/graphql", params={"query": FIFTY}, headers=ADMIN)
    assert runs[0] == 2  # the first, and the first after its answer expired
    assert upstream.calls == 2


async def test_another_token_never_gets_a_callers_stored_answer() -> None:
    """demo-location-admin sees one location's numbers; demo-admin sees all. After demo-admin's
    answer is stored and planned, the other token asking the very same GET gets its own."""
    query = {"query": FIFTY}
    other = {**ADMIN, "authorization": "Bearer demo-location-admin"}
    async with gateway(FakeClock(), fast=True) as (client, (_, upstream)):
        for _ in range(3):
            admins = await client.get("/graphql", params=query, headers=ADMIN)
        calls = upstream.calls
        others = [await client.get("/graphql", params=query, headers=other) for _ in range(3)]
        assert upstream.requests[calls].headers["authorization"] == "Bearer demo-location-admin"
    async with gateway(FakeClock(), fast=False) as (client, _):
        expected = await client.get("/graphql", params=query, headers=other)
    assert admins.json() != expected.json()
    assert {r.content for r in others} == {expected.content}

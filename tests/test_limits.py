"""Hardening, round two: operation cost, suggestions in production, fairness between callers
and the breaker, upstream body bounds and faults, and cache bounds that hold."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest

from tests.conftest import (
    RecordingTransport,
    eventually,
    graphql,
    live_settings,
    metric,
    running_gateway,
)

EVERY_FIELD = """
nodes { phoneNumber extension routingPrefix esn state phoneNumberType mainNumber
        includedTelephonyTypes mobileNetwork routingProfile tollFreeNumber isServiceNumber
        isReservedNumber location { id name } owner { id type firstName lastName } }
"""


def aliased_pages(count: int, first: int) -> str:
    fields = "\n".join(
        f"p{i}: phoneNumbers(page: {{first: {first}}}) {{ {EVERY_FIELD} }}" for i in range(count)
    )
    return f"{{ {fields} }}"


# --- operation cost -----------------------------------------------------------------------


async def test_ten_pages_of_2000_are_refused_before_any_upstream_call(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    body = await graphql(gateway, aliased_pages(10, 2000), status=400)
    error = body["errors"][0]
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}
    assert "estimated cost is 20500" in error["message"]
    assert "limit of 10000" in error["message"]
    assert recorder.calls == 0


async def test_ordinary_frontend_operations_pass_and_report_their_cost(
    gateway: httpx.AsyncClient,
) -> None:
    document = """
    query Dashboard($after: String) {
      first: phoneNumbers(page: {first: 100}) { nodes { phoneNumber } pageInfo { endCursor } }
      second: phoneNumbers(page: {first: 100, after: $after}) { nodes { phoneNumber } }
      mobile: phoneNumbers(filter: {includedTelephonyTypes: [MOBILE_NUMBER]}) { totalCount }
      numberCounts { total assigned }
    }
    """
    body = await graphql(gateway, document)
    assert "errors" not in body, body
    assert body["extensions"]["cost"] == {"estimated": 3 * 150 + 50, "limit": 10_000}
    single = await graphql(gateway, aliased_pages(1, 2000))
    assert single["extensions"]["cost"]["estimated"] == 2050


async def test_cost_reads_first_from_variables_and_multiplies_nested_lists(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    nested = """
    query ($page: PageInput) {
      phoneNumbers(page: $page) {
        nodes { owner { person { phoneNumbers(page: {first: 10}) { totalCount } } } }
      }
    }
    """
    small = await graphql(gateway, nested, {"page": {"first": 5}})
    assert small["extensions"]["cost"]["estimated"] == 55 + 5 * 60
    huge = await graphql(gateway, nested, {"page": {"first": 2000}}, status=400)
    assert "estimated cost is" in huge["errors"][0]["message"]
    calls = recorder.calls
    fan_out = """{ phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 2000})
      { nodes { owner { person { phoneNumbers { totalCount } } } } } }"""
    refused = await graphql(gateway, fan_out, status=400)
    assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert recorder.calls == calls, "the person fan-out is refused before any call"


async def test_cost_multiplies_entity_representations(
    recorder: RecordingTransport,
) -> None:
    document = """query ($r: [_Any!]!) { _entities(representations: $r) {
        ... on Location { phoneNumbers(page: {first: 1000}) { totalCount } } } }"""
    representations = [{"__typename": "Location", "id": f"L{i}"} for i in range(20)]
    async with running_gateway(live_settings(), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        body = await graphql(client, document, {"r": representations}, status=400)
    assert "estimated cost is 21000" in body["errors"][0]["message"]
    assert recorder.calls == 0


async def test_max_cost_is_a_setting_and_production_does_not_report_it(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(max_cost=200), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        refused = await graphql(client, aliased_pages(2, 100), status=400)
        assert "limit of 200" in refused["errors"][0]["message"]
    async with running_gateway(live_settings(env="production"), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        del client.headers["Gateway-Cache-Report"]
        body = await graphql(client, aliased_pages(1, 10))
        assert "extensions" not in body
        metrics = (await client.get("/metrics")).text
        assert "gateway_operation_cost_count 1.0" in metrics


# --- production hides the schema ------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "variables"),
    [
        ("{ numberCount { total } }", None),
        ("{ phoneNumbers(filtr: {}) { totalCount } }", None),
        ('{ phoneNumbers(filter: {ownerNam: "x"}) { totalCount } }', None),
        ("{ phoneNumbers(filter: {ownerType: PEOPL}) { totalCount } }", None),
        ("{ ...F } fragment F on Quer { numberCounts { total } }", None),
        ("query ($f: PhoneNumberFiltr) { phoneNumbers(filter: $f) { totalCount } }", None),
        (
            "query ($f: PhoneNumberFilter) { phoneNumbers(filter: $f) { totalCount } }",
            {"f": {"ownerType": "PEOPL"}},
        ),
        (
            "query ($f: PhoneNumberFilter) { phoneNumbers(filter: $f) { totalCount } }",
            {"f": {"ownerNam": "x"}},
        ),
        ("{ phoneNumbers { nodes { phoneNumbr } } }", None),
    ],
)
async def test_production_suggests_nothing(
    recorder: RecordingTransport, document: str, variables: dict[str, Any] | None
) -> None:
    async with running_gateway(live_settings(env="production"), recorder) as client:
        production = await graphql(client, document, variables, status=400)
    assert production["errors"], production
    for error in production["errors"]:
        assert "Did you mean" not in error["message"], error
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
    async with running_gateway(live_settings(), recorder) as client:
        development = await graphql(client, document, variables, status=400)
    assert any("Did you mean" in e["message"] for e in development["errors"]), (
        "the case must be one that suggests something in development"
    )


# --- fairness: one tenant's flood cannot open the breaker for everyone ----------------------


class ShiftableClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test moves forward: every timer due by then (the upstream
    deadline is an ``asyncio.timeout``) fires in one turn of the loop, without waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = 0.0

    def time(self) -> float:
        return super().time() + self.shift


class TenantGate(httpx.AsyncBaseTransport):
    """Holds the upstream requests of one token until the test lets through those held so
    far; every other caller's requests pass straight to ``inner``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, held_token: str) -> None:
        self.inner = inner
        self.held_authorization = f"Bearer {held_token}"
        self.arrived = 0  # requests of the held token that reached the upstream
        self.others = 0  # requests of every other caller
        self.held: list[asyncio.Event] = []

    def release_held(self) -> None:
        for gate in self.held:
            gate.set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != self.held_authorization:
            self.others += 1
            return await self.inner.handle_async_request(request)
        self.arrived += 1
        gate = asyncio.Event()
        self.held.append(gate)
        try:
            await gate.wait()
        finally:
            self.held.remove(gate)
        return await self.inner.handle_async_request(request)


def test_a_flood_from_one_tenant_neither_starves_others_nor_opens_the_breaker(
    simulator_app: Any,
) -> None:
    """One tenant sends 40 distinct queries at once against 16 upstream slots, 8 per caller.
    It gets its share on the wire and the rest queue behind it; another tenant is served
    meanwhile. When the deadline passes, the 8 the upstream was sitting on are its failures,
    but the 24 still queueing for the tenant's share are not: with 9 failures to open, the
    breaker stays closed (counting the queued ones would make 32)."""
    deadline = 60.0  # never reached in real time: the test moves the loop's clock past it
    settings = live_settings(
        upstream_timeout=deadline,
        upstream_concurrency=16,
        upstream_concurrency_per_caller=8,
        cache_ttl=0,
        breaker_failures=9,
    )

    async def scenario(loop: ShiftableClockLoop) -> None:
        gate = TenantGate(httpx.ASGITransport(app=simulator_app), held_token="demo-admin")
        async with running_gateway(settings, gate) as client:

            async def ask(token: str, extension: int) -> dict[str, Any]:
                document = f'{{ numberCounts(filter: {{extension: "{extension}"}}) {{ total }} }}'
                return await graphql(client, document, headers={"Authorization": f"Bearer {token}"})

            async def queued() -> float:
                return await metric(client, "gateway_upstream_waiting")

            flood = [asyncio.create_task(ask("demo-admin", i)) for i in range(40)]
            await eventually(lambda: len(gate.held) == 8, "the tenant's share is on the wire")
            await eventually(lambda: _equals(queued(), 32), "the rest of the flood queues")
            other = await ask("demo-readonly", 9999)
            assert other["data"]["numberCounts"] is not None, "another tenant is served"

            gate.release_held()  # the upstream answers the first 8; the next 8 take the slots
            await eventually(
                lambda: gate.arrived == 16 and len(gate.held) == 8, "the next 8 are on the wire"
            )
            await eventually(lambda: _equals(queued(), 24), "24 still queue")

            loop.shift += deadline  # the deadline passes for everything still fetching
            answers = await asyncio.gather(*flood)
            codes = [a["errors"][0]["extensions"]["code"] for a in answers if "errors" in a]
            assert codes == ["UPSTREAM_TIMEOUT"] * 32, codes
            assert gate.arrived == 16, "the queued ones never reached the upstream"

            others = gate.others
            after = await ask("demo-readonly", 9998)
            assert after["data"]["numberCounts"] is not None, "the breaker stayed closed"
            assert gate.others == others + 1, "and the answer came from the upstream"

    with asyncio.Runner(loop_factory=ShiftableClockLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, ShiftableClockLoop)
        runner.run(scenario(loop))


async def _equals(value: Awaitable[float], expected: float) -> bool:
    return await value == expected


async def test_a_slot_never_goes_to_a_caller_past_its_share() -> None:
    import asyncio

    from gateway.upstream.slots import FairSlots

    slots = FairSlots(capacity=4, per_caller=2)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(caller: str) -> None:
        async with slots.slot(caller):
            order.append(caller)
            await release.wait()

    tasks = [asyncio.create_task(hold("a")) for _ in range(6)]
    tasks += [asyncio.create_task(hold("b")) for _ in range(2)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert sorted(order) == ["a", "a", "b", "b"], "each caller holds its share, no more"
    assert slots.waiting == 4
    release.set()
    await asyncio.gather(*tasks)
    assert order.count("a") == 6
    assert slots.in_use == 0


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    import asyncio

    from gateway.upstream.slots import FairSlots

    slots = FairSlots(capacity=1, per_caller=1)
    release = asyncio.Event()

    async def hold(caller: str) -> None:
        async with slots.slot(caller):
            await release.wait()

    first = asyncio.create_task(hold("a"))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold("b"))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    third = asyncio.create_task(hold("c"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, third)
    assert waiter.cancelled()
    assert slots.in_use == 0
    assert slots.waiting == 0


# --- upstream bodies and faults ---------------------------------------------------------------


def _page(items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"phoneNumbers": items, **extra}


async def test_an_upstream_body_over_the_limit_fails_the_field() -> None:
    import gzip

    import orjson

    item = {"phoneNumber": "+1" + "9" * 10, "location": {"id": "L", "name": "x" * 200}}
    big = orjson.dumps(_page([item] * 5000))

    def plain(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=big, headers={"Content-Type": "application/json"})

    def bomb(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=gzip.compress(big),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    for handler in (plain, bomb):
        recorder = RecordingTransport(handler=handler)
        settings = live_settings(max_upstream_bytes=100_000)
        async with running_gateway(settings, recorder) as client:
            body = await graphql(
                client,
                "{ phoneNumbers { nodes { phoneNumber } } }",
                headers={"Authorization": "Bearer t"},
            )
        error = body["errors"][0]
        assert error["extensions"]["code"] == "UPSTREAM_UNAVAILABLE", error
        assert "larger than 100000 bytes" in error["message"]
        assert body["data"]["phoneNumbers"] is None


async def test_a_next_link_that_does_not_advance_is_a_fault_not_copies() -> None:
    calls = 0

    def stuck(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            200,
            json=_page([{"extension": str(calls), "location": {"id": "L"}}]),
            headers={"Link": f'<{request.url}>; rel="next"'},
        )

    recorder = RecordingTransport(handler=stuck)
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(
            client,
            "{ phoneNumbers(page: {first: 50}) { nodes { extension } } }",
            headers={"Authorization": "Bearer t"},
        )
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert "does not advance" in body["errors"][0]["message"]
    assert recorder.calls == 1, "the link pointed back at the page just read"


@pytest.mark.parametrize(
    ("upstream", "fragment"),
    [
        (_page([], count={"total": 2**31}), "outside 0..2147483647"),
        ({"phoneNumbers": {"not": "a list"}}, "not a list"),
        ({"phoneNumbers": "nope"}, "not a list"),
    ],
)
async def test_upstream_faults_are_errors_not_wrong_data(
    upstream: dict[str, Any], fragment: str
) -> None:
    recorder = RecordingTransport(handler=lambda request: httpx.Response(200, json=upstream))
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(
            client,
            "{ phoneNumbers { totalCount nodes { extension } } }",
            headers={"Authorization": "Bearer t"},
        )
    error = body["errors"][0]
    assert error["extensions"]["code"] == "UPSTREAM_UNAVAILABLE", error
    assert fragment in error["message"]
    assert "INTERNAL_SERVER_ERROR" not in str(body)


@pytest.mark.parametrize(
    ("tracking_id", "shown"),
    [("ROUTER_5f0c-1", "ROUTER_5f0c-1"), ("X" * 5000, None), ("bad id\nwith newline", None)],
)
async def test_tracking_ids_are_echoed_only_when_they_look_like_one(
    tracking_id: str, shown: str | None
) -> None:
    def forbidden(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"message": "no", "trackingId": tracking_id})

    async with running_gateway(live_settings(), RecordingTransport(handler=forbidden)) as client:
        body = await graphql(
            client, "{ numberCounts { total } }", headers={"Authorization": "Bearer t"}
        )
    extensions = body["errors"][0]["extensions"]
    assert extensions["code"] == "FORBIDDEN"
    assert extensions.get("trackingId") == shown


# --- cache bounds that hold -----------------------------------------------------------------

_FILL_THE_CACHE = """
import asyncio, gc, sys
from gateway.numbers.query import UpstreamPage
from gateway.pipeline.page_cache import PageCache
from gateway.simulator import build_demo_world

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0

async def main(max_bytes, entries):
    template = [e.payload for e in build_demo_world(size=2000, seed=7).demo_org.entries]
    cache = PageCache(ttl=600, max_bytes=max_bytes, max_entries=100_000)

    async def fill(start, count):
        for i in range(start, start + count):
            items = [dict(item, extension=f"{i}-{j}") for j, item in enumerate(template)]
            page = UpstreamPage(items=items, count={"total": 2000}, has_more=False)
            async def fetch(page=page):
                return page
            await cache.get_or_fetch(f"k{i}", fetch, owner=f"caller-{i % 8}")

    await fill(0, 5)
    gc.collect()
    before = rss()
    await fill(5, entries)
    gc.collect()
    print(rss() - before, cache.local.size_bytes, len(cache.local))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


@pytest.mark.e2e
@pytest.mark.timeout(330)
def test_a_full_cache_stays_within_its_byte_bound() -> None:
    """Fill a 32 MiB cache with about 110 MiB of distinct 2,000-item pages (in a fresh
    process, so nothing else moves the needle) and measure what the process grew by."""
    import subprocess
    import sys

    bound = 32 * 2**20
    result = subprocess.run(
        [sys.executable, "-c", _FILL_THE_CACHE, str(bound), "120"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    growth, held, entries = (int(value) for value in result.stdout.split())
    assert held <= bound
    assert entries < 120, "the cache evicted: the bound was reached"
    fixed_overhead = 16 * 2**20
    assert growth <= bound + fixed_overhead, f"RSS grew {growth / 2**20:.1f} MiB"


async def test_a_fragment_bomb_is_refused_quickly_before_validation(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    """Fragments spread twice at each of 40 levels would expand to 2**40 fields: every walk
    of the document (the limiters', the cost estimate's) would run for hours."""
    import time

    levels = 40
    fragments = "\n".join(
        f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)
    )
    document = (
        f"{{ ...F0 }}\n{fragments}\nfragment F{levels} on Query {{ numberCounts {{ total }} }}"
    )
    started = time.monotonic()
    body = await graphql(gateway, document, status=400)
    assert time.monotonic() - started < 10, "refused without expanding the fragments"
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "expands to more than" in body["errors"][0]["message"]
    assert recorder.calls == 0

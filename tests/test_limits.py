"""Hardening, round two: operation cost, suggestions in production, fairness between callers
and the breaker, upstream body bounds and faults, and cache bounds that hold."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from graphql import parse
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.arguments import numbers_query, page_window
from gateway.domain.records import PageRequest
from gateway.errors import BadUserInput
from gateway.execution.cost import CALL_COST
from gateway.execution.document_limits import PARSED_BYTES_PER_CHARACTER, limit_rules
from gateway.execution.prepare import (
    PREPARED_CACHE_BYTES,
    REFUSED_ENTRY_OVERHEAD,
    OperationRefused,
    PreparedOperations,
)
from gateway.schema.build import build_schema, graphql_schema
from gateway.server.app import create_app
from gateway.simulator import create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import (
    GATEWAY_BASE,
    RecordingTransport,
    estimated_cost,
    eventually,
    examples,
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
    # Two pages of 100 items and two calls that answer no item (totalCount, numberCounts).
    assert body["extensions"]["cost"] == {"estimated": 2 * 150 + 2 * 50, "limit": 10_000}
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
    assert small["extensions"]["cost"]["estimated"] == 55 + 5 * CALL_COST
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
        ... on Location { phoneNumbers(page: {first: 1000}) { nodes { phoneNumber } } } } }"""
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
    app = create_app(live_settings(env="production"), upstream_transport=recorder)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url=GATEWAY_BASE
        ) as client,
    ):
        client.headers["Authorization"] = "Bearer demo-admin"
        body = await graphql(client, aliased_pages(1, 10))
        assert "extensions" not in body
    # Production serves /metrics only on its own listener; the registry is the same.
    assert b"gateway_operation_cost_count 1.0" in app.state.metrics.render()


# --- production hides the schema ------------------------------------------------------------


INVALID = "GRAPHQL_VALIDATION_FAILED"
COERCION = "BAD_USER_INPUT"  # variables that do not coerce (Apollo's code too)


@pytest.mark.parametrize(
    ("document", "variables", "code"),
    [
        ("{ numberCount { total } }", None, INVALID),
        ("{ phoneNumbers(filtr: {}) { totalCount } }", None, INVALID),
        ('{ phoneNumbers(filter: {ownerNam: "x"}) { totalCount } }', None, INVALID),
        ("{ phoneNumbers(filter: {ownerType: PEOPL}) { totalCount } }", None, INVALID),
        ("{ ...F } fragment F on Quer { numberCounts { total } }", None, INVALID),
        (
            "query ($f: PhoneNumberFiltr) { phoneNumbers(filter: $f) { totalCount } }",
            None,
            INVALID,
        ),
        (
            "query ($f: PhoneNumberFilter) { phoneNumbers(filter: $f) { totalCount } }",
            {"f": {"ownerType": "PEOPL"}},
            COERCION,
        ),
        (
            "query ($f: PhoneNumberFilter) { phoneNumbers(filter: $f) { totalCount } }",
            {"f": {"ownerNam": "x"}},
            COERCION,
        ),
        ("{ phoneNumbers { nodes { phoneNumbr } } }", None, INVALID),
    ],
)
async def test_production_suggests_nothing(
    recorder: RecordingTransport,
    document: str,
    variables: dict[str, Any] | None,
    code: str,
) -> None:
    async with running_gateway(live_settings(env="production"), recorder) as client:
        production = await graphql(client, document, variables, status=400)
    assert production["errors"], production
    for error in production["errors"]:
        assert "Did you mean" not in error["message"], error
        assert error["extensions"]["code"] == code
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
from gateway.domain.query import UpstreamPage
from gateway.data.page_cache import PageCache
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


# --- cost: declared variable defaults (issue 18.1) ------------------------------------------

FAN_OUT = """nodes { owner { person { phoneNumbers(page: {first: 1}) { totalCount } } } }"""
DEFAULTED_OPERATIONS = [
    f"""query ($f: Int = 2000) {{ phoneNumbers(page: {{first: $f}},
        filter: {{ownerType: PEOPLE}}) {{ {FAN_OUT} }} }}""",
    f"""query ($p: PageInput = {{first: 2000}}) {{ phoneNumbers(page: $p,
        filter: {{ownerType: PEOPLE}}) {{ {FAN_OUT} }} }}""",
    f"""query ($x: PhoneNumberFilter = {{ownerType: PEOPLE}}, $p: PageInput = {{first: 2000}})
        {{ phoneNumbers(filter: $x, page: $p) {{ {FAN_OUT} }} }}""",
]


@pytest.mark.parametrize("document", DEFAULTED_OPERATIONS)
async def test_variable_defaults_count_in_the_cost_before_any_upstream_call(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, document: str
) -> None:
    """Estimated at 5,250 once (first read as the default 100), they made 314 calls."""
    body = await graphql(gateway, document, status=400)
    error = body["errors"][0]
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}
    assert f"estimated cost is {2050 + 2000 * CALL_COST}" in error["message"]
    assert recorder.calls == 0


def _literal(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_literal(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value)


@st.composite
def defaulted_operations(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """An operation whose pages take ``first`` from variables with declared defaults (an
    Int, a PageInput, nested pages), and the defaults as a request would send them."""
    declared: list[str] = []
    defaults: dict[str, Any] = {}
    firsts = st.one_of(st.none(), st.integers(min_value=1, max_value=3000))

    def page_argument(slot: str) -> str:
        form = draw(st.sampled_from(["int", "page", "literal", "none"]))
        first = draw(firsts)
        if form == "int":
            declared.append(f"${slot}: Int = {_literal(first)}")
            defaults[slot] = first
            return f"page: {{first: ${slot}}}"
        if form == "page":
            value = {} if first is None else {"first": first}
            declared.append(f"${slot}: PageInput = {_literal(value)}")
            defaults[slot] = value
            return f"page: ${slot}"
        if form == "literal" and first is not None:
            return f"page: {{first: {first}}}"
        return ""

    fields = []
    for root in range(draw(st.integers(min_value=1, max_value=3))):
        inner = "totalCount"
        if draw(st.booleans()):
            nested = page_argument(f"n{root}")
            arguments = f"({nested})" if nested else ""
            inner = f"nodes {{ owner {{ person {{ phoneNumbers{arguments} {{ totalCount }} }} }} }}"
        if draw(st.booleans()):
            declared.append(f"$x{root}: PhoneNumberFilter = {{ownerType: PEOPLE}}")
            defaults[f"x{root}"] = {"ownerType": "PEOPLE"}
        page = page_argument(f"p{root}")
        arguments = f"({page})" if page else ""
        fields.append(f"r{root}: phoneNumbers{arguments} {{ {inner} }}")
    variables = f"({', '.join(declared)})" if declared else ""
    return f"query {variables} {{ {' '.join(fields)} }}", defaults


@settings(max_examples=examples(300), deadline=None, database=None)
@given(operation=defaulted_operations(), sent=st.data())
def test_a_default_never_costs_less_than_the_same_value_sent(
    operation: tuple[str, dict[str, Any]], sent: st.DataObject
) -> None:
    document, defaults = operation
    parsed = parse(document)
    # Some defaults sent explicitly, the rest left to the declaration.
    explicit = {
        name: value for name, value in defaults.items() if sent.draw(st.booleans(), label=name)
    }
    limits = {"max_page_size": 2000, "max_entities": 1000}
    with_defaults = estimated_cost(parsed, None, explicit, **limits)
    all_sent = estimated_cost(parsed, None, defaults, **limits)
    assert with_defaults is not None
    assert all_sent is not None
    assert with_defaults >= all_sent, document


# --- cost: a page's items count only when its items are selected (issue 19.1) --------------

ITEM_PIECES = ["nodes { phoneNumber }", "edges { cursor }", "edges { node { phoneNumber } }"]
CALL_PIECES = ["totalCount", "pageInfo { hasNextPage endCursor }", "__typename"]


@dataclass(frozen=True)
class ConnectionSelection:
    """One ``phoneNumbers`` page (at the root or under ``_entities``) whose selection mixes
    item lists and call-only fields, each bare, in an inline fragment or a named fragment."""

    selection: list[str]
    fragments: list[str]
    first: int | None
    entities: int
    holds_items: bool

    def document(self, *more: str) -> str:
        """The operation; its representations (a router's way) are ``variables()``."""
        arguments = "" if self.first is None else f"(page: {{first: {self.first}}})"
        page = f"phoneNumbers{arguments} {{ {' '.join([*self.selection, *more])} }}"
        if not self.entities:
            return f"{{ {page} }} {' '.join(self.fragments)}"
        entities = f"_entities(representations: $r) {{ ... on Person {{ {page} }} }}"
        return f"query($r: [_Any!]!) {{ {entities} }} {' '.join(self.fragments)}"

    def variables(self) -> dict[str, Any] | None:
        if not self.entities:
            return None
        return {"r": [{"__typename": "Person", "id": "p"}] * self.entities}


@st.composite
def connection_selections(draw: st.DrawFn) -> ConnectionSelection:
    pieces = draw(
        st.lists(st.sampled_from(ITEM_PIECES + CALL_PIECES), min_size=1, max_size=4, unique=True)
    )
    fragments: list[str] = []
    selection: list[str] = []
    for index, piece in enumerate(pieces):
        wrapping = draw(st.sampled_from(["bare", "typed", "untyped", "named"]))
        if wrapping == "typed":
            selection.append(f"... on PhoneNumberConnection {{ {piece} }}")
        elif wrapping == "untyped":
            selection.append(f"... {{ {piece} }}")
        elif wrapping == "named":
            selection.append(f"...F{index}")
            fragments.append(f"fragment F{index} on PhoneNumberConnection {{ {piece} }}")
        else:
            selection.append(piece)
    return ConnectionSelection(
        selection=selection,
        fragments=fragments,
        first=draw(st.one_of(st.none(), st.integers(min_value=1, max_value=2000))),
        entities=draw(st.integers(min_value=0, max_value=1000)),
        holds_items=any(piece in ITEM_PIECES for piece in pieces),
    )


@settings(max_examples=examples(300), deadline=None, database=None)
@given(page=connection_selections())
def test_a_page_counts_its_items_exactly_when_its_selection_reaches_them(
    page: ConnectionSelection,
) -> None:
    limits = {"max_page_size": 2000, "max_entities": 1000}
    cost = estimated_cost(parse(page.document()), None, page.variables(), **limits)
    first = 100 if page.first is None else page.first
    per_page = CALL_COST + first if page.holds_items else CALL_COST
    assert cost == max(1, page.entities) * per_page, page.document()
    # The same page with an item list added counts every item: nothing undercounts.
    with_items = estimated_cost(
        parse(page.document("nodes { phoneNumber }")), None, page.variables(), **limits
    )
    assert with_items == max(1, page.entities) * (CALL_COST + first), page.document()


def test_items_count_through_fragments_and_call_only_fields_do_not() -> None:
    limits = {"max_page_size": 2000, "max_entities": 1000}

    def cost(document: str) -> int | None:
        return estimated_cost(parse(document), None, None, **limits)

    assert cost("{ phoneNumbers(page: {first: 2000}) { totalCount } }") == CALL_COST
    assert cost("{ phoneNumbers(page: {first: 2000}) { pageInfo { hasNextPage } } }") == 50
    assert cost("{ phoneNumbers(page: {first: 2000}) { nodes { phoneNumber } } }") == 2050
    assert cost("{ phoneNumbers(page: {first: 2000}) { edges { cursor } totalCount } }") == 2050
    spread = """{ phoneNumbers(page: {first: 2000}) { totalCount ...Items } }
        fragment Items on PhoneNumberConnection { ... { edges { cursor } } }"""
    assert cost(spread) == 2050
    # The page's own sub-selections never count as item lists: only nodes/edges do.
    assert cost("{ phoneNumbers { pageInfo { endCursor } totalCount __typename } }") == 50
    # Representations written in the document count as the router's variables do.
    two = ", ".join(['{__typename: "Person", id: "p"}'] * 2)
    assert (
        cost(f"""{{ _entities(representations: [{two}]) {{ ... on Person {{
        phoneNumbers(page: {{first: 7}}) {{ nodes {{ phoneNumber }} }} }} }} }}""")
        == 2 * 57
    )


async def test_a_routers_150_person_totals_plan_fits_the_default_cost(
    world: SimulatorWorld,
) -> None:
    """Issue 19: the plan ``people { phoneNumbers { totalCount } }`` of 150 people (and the
    101 of ``people(first: 101)``) runs at the default GATEWAY_MAX_COST; asking for the
    same people's numbers themselves still counts every item and is refused before a call."""
    owners = (entry.owner_id for entry in world.demo_org.entries if entry.owner_type == "PEOPLE")
    keys = list(dict.fromkeys(owner for owner in owners if owner))[:150]
    assert len(keys) == 150
    totals = """query ($r: [_Any!]!) { _entities(representations: $r) {
        ... on Person { phoneNumbers { totalCount pageInfo { hasNextPage } } } } }"""
    recorder = RecordingTransport(httpx.ASGITransport(app=create_simulator_app(world)))
    async with running_gateway(live_settings(cache_ttl=0), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        for count in (150, 101):
            representations = [{"__typename": "Person", "id": key} for key in keys[:count]]
            calls = recorder.calls
            body = await graphql(client, totals, {"r": representations})
            assert "errors" not in body, body
            assert body["extensions"]["cost"] == {"estimated": count * CALL_COST, "limit": 10_000}
            answers = body["data"]["_entities"]
            assert [answer["phoneNumbers"]["totalCount"] for answer in answers] == [
                sum(entry.owner_id == key for entry in world.demo_org.entries)
                for key in keys[:count]
            ]
            # What it made the gateway do is within the estimate: calls, and no item answered.
            assert (recorder.calls - calls) * CALL_COST <= count * CALL_COST
        numbers = totals.replace("pageInfo { hasNextPage }", "nodes { phoneNumber }")
        representations = [{"__typename": "Person", "id": key} for key in keys]
        calls = recorder.calls
        refused = await graphql(client, numbers, {"r": representations}, status=400)
        assert f"estimated cost is {150 * (CALL_COST + 100)}" in refused["errors"][0]["message"]
        assert recorder.calls == calls


# --- cost: streamed lists (issue 20.2; @stream is not enabled in the schema yet) -------------

STREAM_LIMITS = {"max_page_size": 2000, "max_entities": 1000, "max_stream_items": 100_000}


def cost_of(document: str, variables: dict[str, Any] | None = None) -> int | None:
    return estimated_cost(parse(document), None, variables, **STREAM_LIMITS)


def test_a_streamed_list_costs_the_upstream_pages_it_walks_not_its_items() -> None:
    # 100,000 items walked 2,000 at a time: 50 calls.
    streamed = "{ phoneNumbers(page: {first: 100000}) { nodes @stream { phoneNumber } } }"
    assert cost_of(streamed) == 50 * CALL_COST
    edges = "{ phoneNumbers(page: {first: 100000}) { edges @stream { cursor } } }"
    assert cost_of(edges) == 50 * CALL_COST
    assert cost_of(streamed.replace("100000", "2001")) == 2 * CALL_COST
    assert cost_of(streamed.replace("100000", "7")) == CALL_COST
    # Through fragments, with the ceiling read as the stream's.
    fragment = """{ ...F } fragment F on Query { phoneNumbers(page: {first: 500000})
        { ... on PhoneNumberConnection { nodes @stream(initialCount: 10) { phoneNumber } } } }"""
    # The initial payload's 10 items are held: they count.
    assert cost_of(fragment) == 50 * CALL_COST + 10


def test_each_streamed_list_of_a_connection_is_priced_as_its_own_walk() -> None:
    """``nodes @stream`` and ``edges @stream`` on one connection each walk the upstream past
    the shared first chunk: 1 + 2 x 49 calls for 100,000 items, not 50."""
    both = """{ phoneNumbers(page: {first: 100000})
        { nodes @stream { phoneNumber } edges @stream { cursor } } }"""
    assert cost_of(both) == (1 + 2 * 49) * CALL_COST
    aliased = """{ phoneNumbers(page: {first: 100000})
        { a: nodes @stream { phoneNumber } b: nodes @stream { extension } } }"""
    assert cost_of(aliased) == (1 + 2 * 49) * CALL_COST
    # The same list selected twice is merged by execution: one walk.
    merged = """{ phoneNumbers(page: {first: 100000}) { nodes @stream { phoneNumber }
        ... on PhoneNumberConnection { nodes @stream { phoneNumber } } } }"""
    assert cost_of(merged) == 50 * CALL_COST
    # A window the first chunk holds whole walks nothing further.
    assert cost_of(both.replace("100000", "7")) == CALL_COST


def test_an_unstreamed_list_counts_every_item_up_to_the_page_ceiling() -> None:
    assert cost_of("{ phoneNumbers(page: {first: 100000}) { nodes { phoneNumber } } }") == 2050
    # One unstreamed item list holds the whole page: the page is costed as unstreamed.
    mixed = """{ phoneNumbers(page: {first: 100000})
        { nodes @stream { phoneNumber } edges { cursor } } }"""
    assert cost_of(mixed) == 2050
    off = "{ phoneNumbers(page: {first: 100000}) { nodes @stream(if: false) { phoneNumber } } }"
    assert cost_of(off) == 2050
    by_default = """query ($s: Boolean = false) { phoneNumbers(page: {first: 100000})
        { nodes @stream(if: $s) { phoneNumber } } }"""
    assert cost_of(by_default) == 2050
    assert cost_of(by_default, {"s": True}) == 2500
    assert cost_of("{ phoneNumbers(page: {first: 10}) { edges { cursor } } }") == 60


def test_fields_under_streamed_items_still_count_once_per_item() -> None:
    document = """{ phoneNumbers(page: {first: 100000}) { nodes @stream {
        owner { person { phoneNumbers(page: {first: 1}) { totalCount } } } } } }"""
    assert cost_of(document) == 2500 + 100_000 * CALL_COST
    leaves = """{ phoneNumbers(page: {first: 100000}) { nodes @stream { owner { id } } } }"""
    assert cost_of(leaves) == 2500


def test_page_first_may_reach_the_stream_ceiling_only_when_streamed() -> None:
    query = numbers_query(None, None, None)
    limits = {"max_stream_items": 100_000}
    assert page_window(query, PageRequest(first=100_000), 2000, streamed=True, **limits).size == (
        100_000
    )
    with pytest.raises(BadUserInput, match=r"between 1 and 2000.*under @stream"):
        page_window(query, PageRequest(first=2001), 2000, **limits)
    with pytest.raises(BadUserInput, match="between 1 and 100000"):
        page_window(query, PageRequest(first=100_001), 2000, streamed=True, **limits)
    with pytest.raises(BadUserInput, match=r"between 1 and 2000, got 2001\.$"):
        page_window(query, PageRequest(first=2001), 2000)


def _prepared_operations() -> PreparedOperations:
    """The app's prepared-operation cache, as ``create_app`` builds it with the defaults."""
    settings = live_settings()
    return PreparedOperations(
        graphql_schema(build_schema()),
        max_tokens=settings.max_tokens,
        rules=limit_rules(
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_aliases,
            max_root_fields=settings.max_root_fields,
        ),
    )


def _prepare(operations: PreparedOperations, query: str) -> None:
    with contextlib.suppress(OperationRefused):
        operations.prepare(query, None)


def _tree_bytes(query: str) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        document = parse(query)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del document
    return held


@pytest.mark.parametrize(
    "query",
    [
        "{ " + " ".join("a" for _ in range(2000)) + " }",
        "{ " + "a{b{c{d{e{f}}}}} " * 300 + "}",
        "{a" * 100 + "}" * 100,
        "{ " + " ".join(f"a{n}:__typename" for n in range(660)) + " }",
        "query(" + " ".join(f"$v{n}:Int=1" for n in range(300)) + ") { a(x: [1, 2, 3]) }",
    ],
)
def test_the_parse_cache_never_underestimates_a_parsed_tree(query: str) -> None:
    assert _tree_bytes(query) <= len(query) * PARSED_BYTES_PER_CHARACTER


def test_thousands_of_distinct_large_documents_keep_the_prepared_cache_in_bound() -> None:
    operations = _prepared_operations()
    # Ten aliased root fields: within every limit, so each is prepared and kept with its tree.
    shape = "{ " + " ".join(f"a{n}: numberCounts {{ total }}" for n in range(10)) + " }"
    real = _tree_bytes(shape)
    for n in range(2_000):
        _prepare(operations, f"query Q{n} {shape}")
    assert operations.held_bytes <= PREPARED_CACHE_BYTES
    # What the entries really hold, not the accounting alone, is within the bound.
    assert 0 < len(operations) * real <= PREPARED_CACHE_BYTES


def test_documents_refused_are_not_kept_with_their_trees() -> None:
    operations = _prepared_operations()
    aliased = "{ " + " ".join(f"a{n}: __typename" for n in range(660)) + " }"
    for n in range(50):  # refused by a validation limit (the alias limit): its errors alone
        _prepare(operations, f"query Q{n} {aliased}")
    assert len(operations) == 50
    assert operations.held_bytes <= 50 * (len(aliased) + 20 + REFUSED_ENTRY_OVERHEAD)
    cycle = "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"
    before = operations.held_bytes
    _prepare(operations, cycle)  # refused by the document limits: likewise
    assert operations.held_bytes - before == len(cycle) + REFUSED_ENTRY_OVERHEAD
    # A repeat of a refused document is refused again from the cache, not parsed again.
    parses = operations.parses
    _prepare(operations, cycle)
    assert operations.parses == parses

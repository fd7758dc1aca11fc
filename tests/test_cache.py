"""The cache across requests, proven by counting upstream calls (never by timing)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from structlog.testing import capture_logs

from gateway.data.local_tier import ENTRY_OVERHEAD, LocalTier
from gateway.data.page_cache import CachedPage, PageCache, cache_key
from gateway.domain.arguments import numbers_query
from gateway.domain.query import Fetch, PageWindow, UpstreamPage
from gateway.simulator import FaultPlan, FaultRule, create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import (
    FakeClock,
    GatedTransport,
    RecordingTransport,
    RedisServer,
    eventually,
    graphql,
    live_settings,
    metric,
    running_gateway,
)

COUNTS = "{ numberCounts { total } }"
PAGE = "{ phoneNumbers(page: {first: 3}) { nodes { extension } totalCount } }"


async def ask(
    client: httpx.AsyncClient, query: str, token: str = "demo-admin", **headers: str
) -> dict[str, Any]:
    return await graphql(client, query, headers={"Authorization": f"Bearer {token}", **headers})


async def test_a_repeat_is_served_from_the_cache(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        first = await ask(client, PAGE)
        second = await ask(client, PAGE)
    assert first["data"] == second["data"]
    assert recorder.calls == 1
    assert first["extensions"]["cache"]["calls"] == [
        {"status": "miss", "tier": "upstream", "ageSeconds": 0.0}
    ]
    assert second["extensions"]["cache"]["hits"] == 1
    assert second["extensions"]["cache"]["calls"][0]["tier"] == "local"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "{ numberCounts(filter: {ownerType: PEOPLE}) { total } }",
            "{ numberCounts(filter: {ownerType: PLACE}) { total } }",
        ),
        (
            "{ phoneNumbers(page: {first: 3}) { totalCount } }",
            "{ phoneNumbers(page: {first: 4}) { totalCount } }",
        ),
        (
            "{ phoneNumbers(page: {first: 3}) { totalCount } }",
            "{ phoneNumbers(order: {by: DN}, page: {first: 3}) { totalCount } }",
        ),
    ],
)
async def test_different_queries_never_share_an_entry(
    recorder: RecordingTransport, a: str, b: str
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        first, second = await ask(client, a), await ask(client, b)
    assert "errors" not in first
    assert "errors" not in second
    assert recorder.calls == 2


async def test_different_tokens_of_one_org_never_share_an_entry(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        admin = await ask(client, COUNTS, "demo-admin")
        location_admin = await ask(client, COUNTS, "demo-location-admin")
        readonly = await ask(client, COUNTS, "demo-readonly")
    assert recorder.calls == 3
    assert location_admin["data"]["numberCounts"]["total"] < admin["data"]["numberCounts"]["total"]
    assert readonly["extensions"]["cache"]["hits"] == 0


async def test_own_org_and_an_explicit_org_are_different_entries(
    recorder: RecordingTransport, world: SimulatorWorld
) -> None:
    own = world.demo_org.id
    async with running_gateway(live_settings(), recorder) as client:
        await ask(client, COUNTS)
        await ask(client, f'{{ numberCounts(orgId: "{own}") {{ total }} }}')
    assert recorder.calls == 2


async def test_a_hit_never_skips_the_upstreams_authorization(
    recorder: RecordingTransport, world: SimulatorWorld
) -> None:
    customer = list(world.orgs)[1]
    query = f'{{ numberCounts(orgId: "{customer}") {{ total }} }}'
    async with running_gateway(live_settings(), recorder) as client:
        partner = await ask(client, query, "demo-partner")
        admin = await ask(client, query, "demo-admin")
    assert partner["data"]["numberCounts"]["total"] > 0
    assert admin["data"]["numberCounts"] is None
    assert admin["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert recorder.calls == 2


async def test_errors_are_not_cached(world: SimulatorWorld) -> None:
    failing_once = create_simulator_app(world, faults=FaultPlan([FaultRule(status=500, count=1)]))
    recorder = RecordingTransport(httpx.ASGITransport(app=failing_once))
    async with running_gateway(live_settings(), recorder) as client:
        failed = await ask(client, COUNTS)
        served = await ask(client, COUNTS)
        again = await ask(client, COUNTS)
    assert failed["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert served["data"]["numberCounts"]["total"] == 1000
    assert again["extensions"]["cache"]["hits"] == 1
    assert recorder.calls == 2


async def test_entries_expire_after_the_ttl(recorder: RecordingTransport) -> None:
    clock = FakeClock()
    async with running_gateway(live_settings(cache_ttl=30), recorder, clock=clock) as client:
        await ask(client, COUNTS)
        clock.now += 29
        aged = await ask(client, COUNTS)
        assert recorder.calls == 1
        assert aged["extensions"]["cache"]["calls"][0]["ageSeconds"] == 29
        clock.now += 1
        await ask(client, COUNTS)
        assert recorder.calls == 2


async def test_ttl_zero_disables_caching(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(cache_ttl=0), recorder) as client:
        await ask(client, COUNTS)
        second = await ask(client, COUNTS)
    assert recorder.calls == 2
    assert second["extensions"]["cache"]["calls"][0]["status"] == "bypass"


async def test_no_cache_skips_the_read_and_refreshes(world: SimulatorWorld) -> None:
    simulator = create_simulator_app(world)
    recorder = RecordingTransport(httpx.ASGITransport(app=simulator))
    async with running_gateway(live_settings(), recorder) as client:
        await ask(client, COUNTS)
        refreshed = await ask(client, COUNTS, **{"Cache-Control": "no-cache"})
        assert recorder.calls == 2
        assert refreshed["extensions"]["cache"]["calls"][0]["status"] == "refresh"
        after = await ask(client, COUNTS)
        assert after["extensions"]["cache"]["hits"] == 1
        assert recorder.calls == 2


async def test_concurrent_identical_cold_requests_make_one_call(world: SimulatorWorld) -> None:
    # The one upstream call is held until all the others have joined it: no timing involved.
    gate = GatedTransport(httpx.ASGITransport(app=create_simulator_app(world)))
    async with running_gateway(live_settings(), gate) as client:
        asks = [asyncio.create_task(ask(client, PAGE)) for _ in range(100)]
        await eventually(
            lambda: _coalesced(client, 99), "99 requests joined the first one's upstream call"
        )
        assert gate.calls == 1
        gate.release()
        answers = await asyncio.gather(*asks)
    assert gate.calls == 1
    assert all(answer["data"] == answers[0]["data"] for answer in answers)
    assert answers[0]["data"]["phoneNumbers"]["nodes"]


async def _coalesced(client: httpx.AsyncClient, expected: int) -> bool:
    return await metric(client, "gateway_single_flight_coalesced_total") >= expected


async def test_single_flight_survives_a_cancelled_waiter_and_shares_failures() -> None:
    cache = PageCache(ttl=60)
    release = asyncio.Event()
    calls = 0

    async def fetch() -> UpstreamPage:
        nonlocal calls
        calls += 1
        await release.wait()
        return UpstreamPage(items=[{"extension": "1"}], count=None, has_more=False)

    first = asyncio.create_task(cache.get_or_fetch("k", fetch))
    second = asyncio.create_task(cache.get_or_fetch("k", fetch))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    page, _ = await second
    assert page.items == [{"extension": "1"}]
    assert first.cancelled()
    assert calls == 1
    assert (await cache.get_or_fetch("k", fetch))[1].status == "hit"

    async def failing() -> UpstreamPage:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise RuntimeError("upstream broke")

    results = await asyncio.gather(
        *(cache.get_or_fetch("bad", failing) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, RuntimeError) for result in results)
    assert calls == 2
    with pytest.raises(RuntimeError):
        await cache.get_or_fetch("bad", failing)
    assert calls == 3, "a failed call was not cached"


def test_keys_hide_the_token_and_differ_by_every_input() -> None:
    query = numbers_query(None, None, None)
    fetch = Fetch(query, PageWindow(0, 10), details=False)
    key = cache_key(b"secret", "Bearer tok-123", fetch)
    assert "tok-123" not in key
    assert key != cache_key(b"secret", "Bearer tok-124", fetch)
    assert key != cache_key(b"other", "Bearer tok-123", fetch)
    assert key != cache_key(b"secret", "Bearer tok-123", Fetch(query, PageWindow(0, 11), False))
    assert key != cache_key(
        b"secret",
        "Bearer tok-123",
        Fetch(numbers_query("org", None, None), PageWindow(0, 10), False),
    )
    assert key == cache_key(b"secret", "Bearer tok-123", Fetch(query, PageWindow(0, 10), False))


def test_local_tier_is_bounded_by_entries_and_bytes() -> None:
    clock = FakeClock()
    page = UpstreamPage(items=[{"extension": "1"}], count=None, has_more=False)
    raw = CachedPage.encode(page, clock.wall())
    size = len(raw) + ENTRY_OVERHEAD
    by_entries = LocalTier(ttl=60, max_entries=3, max_bytes=10**6, clock=clock.monotonic)
    for i in range(5):
        by_entries.set(f"k{i}", raw, clock.now, "owner")
    assert len(by_entries) == 3
    assert by_entries.get_raw("k0") is None, "least recently used went first"
    by_bytes = LocalTier(ttl=60, max_entries=100, max_bytes=2 * size + 1, clock=clock.monotonic)
    for i in range(5):
        by_bytes.set(f"k{i}", raw, clock.now, "owner")
    assert len(by_bytes) == 2
    assert by_bytes.size_bytes == 2 * size
    by_bytes.set("huge", raw * 100, clock.now, "owner")
    assert by_bytes.get_raw("huge") is None
    hit = CachedPage.from_local(by_bytes.get_raw("k4"))
    assert hit is not None
    assert hit.page == page


def test_one_caller_cannot_evict_the_others() -> None:
    clock = FakeClock()
    raw = CachedPage.encode(UpstreamPage(items=[], count=None, has_more=False), clock.wall())
    size = len(raw) + ENTRY_OVERHEAD
    tier = LocalTier(
        ttl=60, max_entries=1000, max_bytes=20 * size, clock=clock.monotonic, owner_share=0.25
    )
    tier.set("quiet-1", raw, clock.now, "quiet")
    tier.set("quiet-2", raw, clock.now, "quiet")
    for i in range(100):
        tier.set(f"greedy-{i}", raw, clock.now, "greedy")
    assert tier.get_raw("quiet-1") is not None
    assert tier.get_raw("quiet-2") is not None
    greedy = [i for i in range(100) if tier.get_raw(f"greedy-{i}") is not None]
    assert greedy == list(range(95, 100)), "the greedy caller keeps only its newest share"
    assert tier.size_bytes == 7 * size


def test_entries_expire_on_the_monotonic_clock() -> None:
    clock = FakeClock()
    raw = CachedPage.encode(UpstreamPage(items=[], count=None, has_more=False), clock.wall())
    tier = LocalTier(ttl=30, max_entries=10, max_bytes=10**6, clock=clock.monotonic)
    tier.set("k", raw, clock.now, "o")
    clock.jump_wall(+3600)
    assert tier.get_raw("k") is not None
    clock.now += 30
    assert tier.get_raw("k") is None
    assert tier.size_bytes == 0


# --- the shared Redis tier --------------------------------------------------------------


@pytest.mark.redis
async def test_two_replicas_share_one_redis(
    redis_server: RedisServer, recorder: RecordingTransport
) -> None:
    shared = {"redis_url": redis_server.url, "cache_key_secret": "replicas-agree"}
    async with (
        running_gateway(live_settings(**shared), recorder) as one,
        running_gateway(live_settings(**shared), recorder) as two,
    ):
        first = await ask(one, PAGE)
        second = await ask(two, PAGE)
    assert recorder.calls == 1
    assert second["data"] == first["data"]
    assert second["extensions"]["cache"]["calls"][0]["tier"] == "redis"
    client = redis.asyncio.Redis.from_url(redis_server.url)
    keys = [key async for key in client.scan_iter()]
    await client.aclose()
    assert keys
    assert not any(b"demo-admin" in key for key in keys)


@pytest.mark.redis
async def test_redis_stopped_mid_test_is_served_from_upstream(
    redis_server: RedisServer, recorder: RecordingTransport
) -> None:
    settings_ = live_settings(redis_url=redis_server.url, cache_key_secret="s")
    with capture_logs() as logs:
        async with running_gateway(settings_, recorder) as client:
            warm = await ask(client, COUNTS)
            redis_server.stop()
            other = await ask(client, "{ numberCounts(filter: {ownerType: PEOPLE}) { total } }")
            again = await ask(client, "{ numberCounts(filter: {ownerType: PLACE}) { total } }")
            metrics = (await client.get("/metrics")).text
    outage_lines = [entry for entry in logs if entry["event"] == "redis_unavailable"]
    assert len(outage_lines) == 1, "logged once per outage, not once per failure"
    assert all("errors" not in answer for answer in (warm, other, again))
    assert other["data"]["numberCounts"]["total"] > 0
    assert recorder.calls == 3
    failures = [
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_cache_backend_failures_total ")
    ]
    assert failures
    assert float(failures[0].split()[1]) >= 2


# --- property: the cache never changes what a caller sees -------------------------------

TOKENS = ["demo-admin", "demo-readonly", "demo-location-admin", "demo-partner", "demo-no-scope"]
FILTERS = [
    "",
    "filter: {ownerType: PEOPLE}",
    "filter: {numberType: EXTENSION}",
    "filter: {state: INACTIVE}",
]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(TOKENS),
            st.sampled_from([0, 1]),
            st.sampled_from(FILTERS),
            st.sampled_from(["phoneNumbers", "numberCounts"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_cached_answers_equal_uncached_ones(
    simulator_app: Starlette, world: SimulatorWorld, steps: list[tuple[str, int, str, str, bool]]
) -> None:
    orgs = list(world.orgs)

    def document(org_index: int, flt: str, field: str) -> str:
        args = ", ".join(filter(None, [f'orgId: "{orgs[org_index]}"', flt]))
        selection = (
            "{ totalCount nodes { extension phoneNumber } }"
            if field == "phoneNumbers"
            else "{ total assigned }"
        )
        return f"{{ {field}({args}) {selection} }}"

    async def run() -> None:
        transport = httpx.ASGITransport(app=simulator_app)
        async with (
            running_gateway(live_settings(), transport) as cached,
            running_gateway(live_settings(cache_ttl=0), transport) as uncached,
        ):
            for token, org_index, flt, field, no_cache in steps:
                query = document(org_index, flt, field)
                extra = {"Cache-Control": "no-cache"} if no_cache else {}
                got = await ask(cached, query, token, **extra)
                want = await ask(uncached, query, token)
                assert got["data"] == want["data"]
                assert [e["extensions"]["code"] for e in got.get("errors", [])] == [
                    e["extensions"]["code"] for e in want.get("errors", [])
                ]

    asyncio.run(run())

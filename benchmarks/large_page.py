"""Target (a) of issue 11: what a 2,000-item page with every field costs from a fixed upstream
body to the response bytes, against the Python floor, measured side by side in one run.

    (i)   the floor: ``orjson.loads`` + ``orjson.dumps`` of the upstream body
    (ii)  the gateway with the projection fast path
    (ii+) the same with strawberry's ``ParserCache`` and ``ValidationCache`` (issue 11, item 3)
    (iii) the gateway without the fast path (graphql-core completing every field)
    (iv)  the whole app over ASGI (view, middleware), as ``build_schema`` is wired right now

(ii) to (iii) run the real pipeline in process: ``UpstreamClient`` over an
``httpx.MockTransport`` that returns the same bytes every time, the loader, ``PageResult``,
``schema.execute`` and ``orjson.dumps`` of the result; caching is off so every round does the
work. They call the schema directly, so both paths are measured in one run whatever the app is
wired with. (i), (ii) and (ii+) are interleaved round by round, so a busy machine slows them
alike; (iii) is interleaved with (ii) in a second group, for the speed-up.
Run by hand: ``.venv/bin/python benchmarks/large_page.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import structlog
from asgi_lifespan import LifespanManager
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gateway.clock import SYSTEM_CLOCK
from gateway.data.page_cache import PageCache
from gateway.data.source import NumbersSource
from gateway.execution.projecting_executor import (
    ProjectingExecutionContext,
    projecting_execution_context,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracing
from gateway.schema.build import build_schema
from gateway.schema.context import RequestContext
from gateway.server.app import build_execution, create_app
from gateway.server.cli import settle_heap
from gateway.settings import Settings, load_settings
from gateway.simulator import build_demo_world
from gateway.upstream.factory import build_upstream

UPSTREAM = "http://webex.test/v1"
PAGE = 2000
# Every field of PhoneNumber the upstream's item carries (not ``owner.person``, which joins
# another subgraph): what the peer benchmark asks every server for, too.
FIELDS = (
    "phoneNumber extension routingPrefix esn state phoneNumberType mainNumber "
    "includedTelephonyTypes mobileNetwork routingProfile tollFreeNumber isServiceNumber "
    "isReservedNumber elinEnabled location { id name } "
    "owner { id type firstName lastName displayName elinExpiryTime }"
)
QUERY = f"{{ phoneNumbers(page: {{first: {PAGE}}}) {{ nodes {{ {FIELDS} }} }} }}"
TARGET = 3.0

Run = Callable[[], Awaitable[object]]


def upstream_body() -> bytes:
    """A 2,000-item page of the simulator's data, as the upstream sends it."""
    world = build_demo_world(size=5000, seed=7)
    return orjson.dumps({"phoneNumbers": [e.payload for e in world.demo_org.entries[:PAGE]]})


def fixed_transport(body: bytes) -> httpx.MockTransport:
    headers = {"content-type": "application/json"}
    return httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers=headers))


def schema(execution_context_class: type[Any], *, plan_caches: bool = False) -> Any:
    """The production schema (``build_schema()``) run by ``execution_context_class``, however
    ``build_schema`` is wired; ``plan_caches`` puts strawberry's parser and validation caches
    in front (what issue 11 item 3 adds)."""
    gateway_schema = build_schema()
    gateway_schema.execution_context_class = execution_context_class
    if plan_caches:
        gateway_schema.extensions = (ParserCache, ValidationCache, *gateway_schema.extensions)
    return gateway_schema


async def interleaved(runs: dict[str, Run], rounds: int) -> dict[str, float]:
    """Median ms of each run; every round runs each once (after a warm-up of each)."""
    for run in runs.values():
        for _ in range(3):
            await run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            gc.collect()
            started = time.perf_counter()
            await run()
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in timings.items()}


async def main(rounds: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    body = upstream_body()
    transport = fixed_transport(body)
    fast_class = projecting_execution_context()
    schemas = {
        "fast": schema(fast_class),
        "fast+caches": schema(fast_class, plan_caches=True),
        "normal": schema(StrawberryGraphQLCoreExecutionContext),
    }

    # The upstream as the app builds it: the resilient transport over the fixed bytes.
    built = build_upstream(
        load_settings(upstream_url=UPSTREAM, upstream_timeout=30),
        base_url=UPSTREAM,
        transport=transport,
        metrics=None,
        clock=SYSTEM_CLOCK,
        tracing=Tracing(),
    )
    async with built.http:
        source = NumbersSource(
            built.client, PageCache(ttl=0), max_page_size=PAGE, default_authorization="Bearer b"
        )

        async def response_bytes(gateway_schema: Any) -> bytes:
            context = RequestContext(source.for_caller(None))
            result = await gateway_schema.execute(QUERY, context_value=context)
            response: dict[str, Any] = {"data": result.data}
            if result.errors:
                response["errors"] = [error.formatted for error in result.errors]
            return orjson.dumps(response)

        def through(gateway_schema: Any) -> Run:
            async def run() -> None:
                await response_bytes(gateway_schema)

            return run

        async def floor() -> None:
            orjson.dumps(orjson.loads(body))

        answers = {name: await response_bytes(s) for name, s in schemas.items()}
        settle_heap()  # as `numbers-gateway serve` does once the app is built
        assert len(set(answers.values())) == 1, "the paths disagree"
        assert b'"errors"' not in answers["fast"]

        # The target's ratio from one interleaved group; normal completion (which churns
        # through ~100,000 objects a round and slows whatever runs next) in a second group.
        medians = await interleaved(
            {
                "floor": floor,
                "fast": through(schemas["fast"]),
                "fast+caches": through(schemas["fast+caches"]),
            },
            rounds,
        )
        versus = await interleaved(
            {
                "floor": floor,
                "fast": through(schemas["fast"]),
                "normal": through(schemas["normal"]),
            },
            max(5, rounds // 3),
        )
        stats = fast_class.projectors.stats
        assert stats.projected > 0, stats
        assert stats.fallbacks == stats.failures == 0, stats

    app, app_fast = await whole_app(transport, floor, max(5, rounds // 3))

    floor_ms = medians["floor"]

    def line(label: str, ms: float, note: str = "", floor: float = floor_ms) -> None:
        print(f"{label:<52}{ms:>9.2f}{ms / floor:>9.1f}×{note}")

    def verdict(ms: float) -> str:
        ratio = ms / floor_ms
        met = "met" if ratio <= TARGET else f"missed by {ratio / TARGET:.2f}×"
        return f"   target (a) ≤ {TARGET:.0f}×: {met}"

    print(
        f"2,000 items, every field; upstream body {len(body) / 1024:.0f} KB; "
        f"medians of {rounds} interleaved rounds"
    )
    print(f"{'':<52}{'ms':>9}{'floor':>10}")
    line("(i)   orjson.loads + orjson.dumps (the floor)", floor_ms)
    line("(ii)  gateway, projection fast path", medians["fast"], verdict(medians["fast"]))
    line("(ii+) the same, with ParserCache + ValidationCache", medians["fast+caches"])
    # (iii) and (iv) were measured in their own groups, each beside the floor again.
    line("(iii) gateway, normal completion", versus["normal"], floor=versus["floor"])
    wiring = "fast path wired" if app_fast else "fast path not wired"
    line(f"(iv)  whole app over ASGI ({wiring})", app["app"], floor=app["floor"])
    print(f"(ii)/(i) = {medians['fast'] / floor_ms:.2f}   target ≤ {TARGET:.0f}")
    speedup = versus["normal"] / versus["fast"]
    print(f"(iii)/(ii) = {speedup:.1f}   the fast path's speed-up (measured side by side)")


async def whole_app(
    transport: httpx.AsyncBaseTransport, floor: Run, rounds: int
) -> tuple[dict[str, float], bool]:
    """The same page through ``create_app``: HTTP view, middleware and all."""
    settings: Settings = load_settings(upstream_url=UPSTREAM, cache_ttl=0)
    _, engine = build_execution(settings, GatewayMetrics())
    wired = issubclass(engine.executor_class, ProjectingExecutionContext)
    app = create_app(settings, upstream_transport=transport)
    headers = {"Authorization": "Bearer b", "Content-Type": "application/json"}
    payload = orjson.dumps({"query": QUERY})
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway.test"
        ) as client,
    ):

        async def run() -> None:
            response = await client.post("/graphql", content=payload, headers=headers)
            assert response.status_code == 200, response.text[:300]

        return await interleaved({"floor": floor, "app": run}, rounds), wired


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    asyncio.run(main(parser.parse_args().rounds))

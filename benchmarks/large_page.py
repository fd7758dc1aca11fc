"""Issue 31's in-process target: what a 2,000-item page with every field costs from a fixed
upstream body to the response bytes, against the floor, measured side by side in one run.

    (i)   the floor: ``orjson.loads`` + ``orjson.dumps`` of the upstream body
    (ii)  the gateway as the transports run it: the body's shape checked in one msgspec pass,
          the selection's Structs decoding only the selected fields and encoding the list in
          C (``execution.struct_projection``), the response encoded by orjson around it
    (ii') the same pipeline with the list as dicts (the Python projector: what a body the C
          path cannot read takes)
    (iii) the gateway without any fast path (graphql-core completing every field)
    (iv)  the whole app over ASGI (view, runner, middleware)

(ii) to (iii) run the production pipeline in process: ``build_execution``'s prepared
operations (warm) and engine, ``UpstreamClient`` over an ``httpx.MockTransport`` that returns
the same bytes every time, caching off so every round does the work, and ``orjson.dumps`` of
the payload, as ``OperationRunner`` does. (i), (ii) and (ii') are interleaved round by round,
so a busy machine slows them alike; (iii) is interleaved with (ii) in a second group, for the
speed-up. Run by hand: ``.venv/bin/python benchmarks/large_page.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson
import structlog
from asgi_lifespan import LifespanManager

from gateway.clock import SYSTEM_CLOCK
from gateway.data.page_cache import PageCache
from gateway.data.source import NumbersSource
from gateway.execution.projecting_executor import (
    ConnectionNotingExecutionContext,
    ProjectingExecutionContext,
    projecting_execution_context,
)
from gateway.execution.run import RunOptions
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracing
from gateway.schema.context import RequestContext
from gateway.server.app import build_execution, create_app
from gateway.server.cli import settle_heap
from gateway.settings import Settings, load_settings
from gateway.simulator import build_demo_world
from gateway.transports.operation import result_payload
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
TARGET = 1.0  # issue 31: no more than the orjson round trip of the body

Run = Callable[[], Awaitable[object]]


def upstream_body() -> bytes:
    """A 2,000-item page of the simulator's data, as the upstream sends it."""
    world = build_demo_world(size=5000, seed=7)
    return orjson.dumps({"phoneNumbers": [e.payload for e in world.demo_org.entries[:PAGE]]})


def fixed_transport(body: bytes) -> httpx.MockTransport:
    headers = {"content-type": "application/json"}
    return httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers=headers))


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
    settings = load_settings(upstream_url=UPSTREAM, upstream_timeout=30, cache_ttl=0)
    fast_class = projecting_execution_context()
    pipelines = {
        "fast": build_execution(settings, GatewayMetrics(), executor_class=fast_class),
        "normal": build_execution(
            settings, GatewayMetrics(), executor_class=ConnectionNotingExecutionContext
        ),
    }
    # The upstream as the app builds it: the resilient transport over the fixed bytes.
    built = build_upstream(
        settings,
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

        async def response_bytes(pipeline: str, *, encoded_lists: bool = True) -> bytes:
            operations, engine = pipelines[pipeline]
            admission = engine.admit(operations.prepare(QUERY, None), None, RunOptions())
            context = RequestContext(source.for_caller(None), encoded_lists=encoded_lists)
            result = await engine.execute(admission, context)
            context.numbers.release()
            return orjson.dumps(result_payload(result))

        def through(pipeline: str, *, encoded_lists: bool = True) -> Run:
            async def run() -> None:
                await response_bytes(pipeline, encoded_lists=encoded_lists)

            return run

        async def floor() -> None:
            orjson.dumps(orjson.loads(body))

        answers = {
            await response_bytes("fast"),
            await response_bytes("fast", encoded_lists=False),
            await response_bytes("normal"),
        }
        settle_heap()  # as `numbers-gateway serve` does once the app is built
        assert len(answers) == 1, "the paths disagree"
        assert b'"errors"' not in next(iter(answers))

        # The target's ratio from one interleaved group; normal completion (which churns
        # through ~100,000 objects a round and slows whatever runs next) in a second group.
        # The target's pair alone: the slower paths churn through dicts and slow what runs
        # next, so each is measured in a group of its own, beside the floor again.
        medians = await interleaved({"floor": floor, "fast": through("fast")}, rounds)
        dicts = await interleaved(
            {"floor": floor, "dicts": through("fast", encoded_lists=False)},
            max(5, rounds // 2),
        )
        versus = await interleaved(
            {"floor": floor, "fast": through("fast"), "normal": through("normal")},
            max(5, rounds // 3),
        )
        stats = fast_class.projectors.stats
        assert stats.encoded > 0, stats
        assert stats.fallbacks == stats.failures == 0, stats

    app, app_fast = await whole_app(transport, floor, max(5, rounds // 3))

    floor_ms = medians["floor"]

    def line(label: str, ms: float, note: str = "", floor: float = floor_ms) -> None:
        print(f"{label:<56}{ms:>9.2f}{ms / floor:>9.2f}×{note}")

    def verdict(ms: float) -> str:
        ratio = ms / floor_ms
        met = "met" if ratio <= TARGET else f"missed by {ratio / TARGET:.2f}×"
        return f"   target ≤ {TARGET:.1f}×: {met}"

    print(
        f"2,000 items, every field; upstream body {len(body) / 1024:.0f} KB; "
        f"medians of {rounds} interleaved rounds"
    )
    print(f"{'':<56}{'ms':>9}{'floor':>10}")
    line("(i)   orjson.loads + orjson.dumps (the floor)", floor_ms)
    line("(ii)  gateway, the C path", medians["fast"], verdict(medians["fast"]))
    line("(ii') gateway, the Python projector (dicts)", dicts["dicts"], floor=dicts["floor"])
    # (ii'), (iii) and (iv) were measured in their own groups, each beside the floor again.
    line("(iii) gateway, normal completion", versus["normal"], floor=versus["floor"])
    wiring = "fast path wired" if app_fast else "fast path not wired"
    line(f"(iv)  whole app over ASGI ({wiring})", app["app"], floor=app["floor"])
    print(f"(ii)/(i) = {medians['fast'] / floor_ms:.2f}   target ≤ {TARGET:.1f}")
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
    # Uncompressed, as phases.py and the peer benchmark ask (compression is its own cost).
    headers = {
        "Authorization": "Bearer b",
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",
    }
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

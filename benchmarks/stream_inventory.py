"""A whole inventory in one request: 100,000 simulator entries streamed with ``@stream``,
beside the same entries fetched by cursor walking (pages of ``GATEWAY_MAX_PAGE_SIZE``).

In process, through the production pipeline (``build_execution``'s prepared operations and
the engine's ``frames``, as the HTTP transports drive it), over the embedded simulator behind an ``httpx.ASGITransport`` (its default page cap: 2,000 entries per
upstream page). Each payload is serialised with orjson, as a transport would write it, and
dropped. Prints items/s for both and the peak RSS growth over idle (sampled from
``/proc/self/statm`` at every payload; idle is the process with the simulator's data built and
one warm-up query run). The simulator runs in this process, so its own per-page work counts
too: the figure is an upper bound for the gateway. Target: under 96 MiB.
Run by hand: ``.venv/bin/python benchmarks/stream_inventory.py [entries] [--json]``
(``--json``: the figures as one JSON line at the end, which ``peer_gateway.py`` reads).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from contextlib import aclosing

import httpx
import orjson
from graphql import SubsequentIncrementalExecutionResult

from gateway.clock import SYSTEM_CLOCK
from gateway.data.page_cache import PageCache
from gateway.data.source import NumbersSource
from gateway.execution.prepare import PreparedOperations
from gateway.execution.run import OperationEngine, RunOptions
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracing
from gateway.schema.context import RequestContext
from gateway.server.app import build_execution
from gateway.settings import load_settings
from gateway.simulator import build_demo_world, create_simulator_app
from gateway.upstream.factory import build_upstream

BASE = "http://upstream.test/v1"
MAX_PAGE_SIZE = 2000
MiB = 1024 * 1024
SELECTION = (
    "cursor node { phoneNumber extension routingPrefix esn state phoneNumberType mainNumber "
    "includedTelephonyTypes tollFreeNumber isServiceNumber isReservedNumber elinEnabled "
    "location { id name } owner { id type firstName lastName displayName } }"
)
STREAMED = (
    "query ($n: Int!) { phoneNumbers(page: {first: $n}) { totalCount edges @stream { %s } } }"
)
PAGED = (
    "query ($after: String) { phoneNumbers(page: {first: %d, after: $after}) { "
    "pageInfo { hasNextPage endCursor } edges { %s } } }"
)


Pipeline = tuple[PreparedOperations, OperationEngine]


class PeakRss:
    """The highest resident set size seen by ``sample``, from ``/proc/self/statm``."""

    page = os.sysconf("SC_PAGE_SIZE")

    def __init__(self) -> None:
        self.peak = 0

    def sample(self) -> int:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * self.page
        self.peak = max(self.peak, rss)
        return rss


async def streamed(pipeline: Pipeline, source: NumbersSource, entries: int, rss: PeakRss) -> int:
    operations, engine = pipeline
    prepared = operations.prepare(STREAMED % SELECTION, None)
    admission = engine.admit(prepared, {"n": entries}, RunOptions(held=False))
    context = RequestContext(source.for_caller(None), incremental_delivery=True, encoded_lists=True)
    items = 0
    async with aclosing(engine.frames(admission, context)) as frames:
        async for frame in frames:
            payload = frame.formatted
            if isinstance(frame, SubsequentIncrementalExecutionResult):
                incremental = payload.get("incremental", ())
                items += sum(len(entry.get("items", ())) for entry in incremental)
            else:
                assert not payload.get("errors"), payload["errors"]
                items += len(payload["data"]["phoneNumbers"]["edges"])
            orjson.dumps(payload)
            rss.sample()
    context.numbers.release()
    return items


async def paged(pipeline: Pipeline, source: NumbersSource, entries: int, rss: PeakRss) -> int:
    operations, engine = pipeline
    prepared = operations.prepare(PAGED % (MAX_PAGE_SIZE, SELECTION), None)
    items, after = 0, None
    while items < entries:
        admission = engine.admit(prepared, {"after": after}, RunOptions())
        context = RequestContext(source.for_caller(None), encoded_lists=True)
        result = await engine.execute(admission, context)
        context.numbers.release()
        assert not result.errors, result.errors
        connection = result.data["phoneNumbers"]
        # The edges may be a list or their JSON encoded in C (an orjson.Fragment, which has
        # no length): counted in the answer's bytes, where each edge of SELECTION opens with
        # its cursor and no node holds that key.
        items += orjson.dumps(result.data).count(b'{"cursor":')
        rss.sample()
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    return items


async def measure(entries: int) -> dict[str, dict[str, float]]:
    """Items/s and peak RSS growth over idle (MiB) of each way, printed as it goes."""
    world = build_demo_world(size=entries, seed=7)
    transport = httpx.ASGITransport(app=create_simulator_app(world))
    # The upstream as the app builds it: the resilient transport over the simulator.
    # A stream of the whole inventory is priced by its upstream pages: allowed here.
    settings = load_settings(
        upstream_url=BASE,
        upstream_timeout=120,
        max_stream_items=max(entries, 100_000),
        max_cost=10_000_000,
    )
    upstream = build_upstream(
        settings,
        base_url=BASE,
        transport=transport,
        metrics=None,
        clock=SYSTEM_CLOCK,
        tracing=Tracing(),
    )
    figures: dict[str, dict[str, float]] = {}
    async with upstream.http:
        source = NumbersSource(
            upstream.client,
            PageCache(ttl=0),
            max_page_size=MAX_PAGE_SIZE,
            max_stream_items=max(entries, 100_000),
            default_authorization="Bearer demo-admin",
        )
        pipeline = build_execution(settings, GatewayMetrics())
        warm = PeakRss()
        await paged(pipeline, source, MAX_PAGE_SIZE, warm)  # compile, connect, touch the code
        for label, key, run in (
            ("streamed (@stream)", "streamed", streamed),
            ("cursor walk", "paged", paged),
        ):
            gc.collect()
            rss = PeakRss()
            idle = rss.sample()
            started = time.perf_counter()
            items = await run(pipeline, source, entries, rss)
            elapsed = time.perf_counter() - started
            growth = (rss.peak - idle) / MiB
            figures[key] = {"items": items, "items_per_second": items / elapsed, "rss_mib": growth}
            print(
                f"{label:20} {items:>7} items  {items / elapsed:>9,.0f} items/s  "
                f"peak RSS growth over idle {growth:6.1f} MiB (idle {idle / MiB:.0f} MiB)",
                flush=True,
            )
        stats = pipeline[1].executor_class.projectors.stats
        print(
            f"projection: {stats.streamed} lists streamed, {stats.chunks} chunks projected, "
            f"{stats.encoded_items} items encoded in C"
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("entries", type=int, nargs="?", default=100_000)
    parser.add_argument("--json", action="store_true", help="end with the figures as JSON")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.entries))
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

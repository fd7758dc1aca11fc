"""A whole inventory in one request: 100,000 simulator entries streamed with ``@stream``,
beside the same entries fetched by cursor walking (pages of ``GATEWAY_MAX_PAGE_SIZE``).

In process, through the schema (``schema.stream``, as the HTTP transports drive it), over the
embedded simulator behind an ``httpx.ASGITransport`` (its default page cap: 2,000 entries per
upstream page). Each payload is serialised with orjson, as a transport would write it, and
dropped. Prints items/s for both and the peak RSS growth over idle (sampled from
``/proc/self/statm`` at every payload; idle is the process with the simulator's data built and
one warm-up query run). The simulator runs in this process, so its own per-page work counts
too: the figure is an upper bound for the gateway. Target: under 96 MiB.
Run by hand: ``.venv/bin/python benchmarks/stream_inventory.py [entries]``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from graphql import SubsequentIncrementalExecutionResult

from gateway.clock import SYSTEM_CLOCK
from gateway.data.page_cache import PageCache
from gateway.data.source import CallerNumbers, NumbersSource
from gateway.execution.contract_errors import contract_payload
from gateway.observability.tracing import Tracing
from gateway.schema.build import build_schema
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


@dataclass(slots=True)
class Context:
    numbers: CallerNumbers


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


async def streamed(schema: Any, source: NumbersSource, entries: int, rss: PeakRss) -> int:
    stream = await schema.stream(
        STREAMED % SELECTION,
        variable_values={"n": entries},
        context_value=Context(source.for_caller(None)),
    )
    items = 0
    async for frame in stream:
        if isinstance(frame, SubsequentIncrementalExecutionResult):
            payload = contract_payload(frame).formatted
            items += sum(len(entry.get("items", ())) for entry in payload.get("incremental", ()))
        else:
            payload = {"data": frame.data, "hasNext": True}
            items += len(frame.data["phoneNumbers"]["edges"])
        orjson.dumps(payload)
        rss.sample()
    return items


async def paged(schema: Any, source: NumbersSource, entries: int, rss: PeakRss) -> int:
    items, after = 0, None
    while items < entries:
        result = await schema.execute(
            PAGED % (MAX_PAGE_SIZE, SELECTION),
            variable_values={"after": after},
            context_value=Context(source.for_caller(None)),
        )
        assert not result.errors, result.errors
        connection = result.data["phoneNumbers"]
        orjson.dumps(result.data)
        items += len(connection["edges"])
        rss.sample()
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    return items


async def main(entries: int) -> None:
    world = build_demo_world(size=entries, seed=7)
    transport = httpx.ASGITransport(app=create_simulator_app(world))
    # The upstream as the app builds it: the resilient transport over the simulator.
    upstream = build_upstream(
        load_settings(upstream_url=BASE, upstream_timeout=120),
        base_url=BASE,
        transport=transport,
        metrics=None,
        clock=SYSTEM_CLOCK,
        tracing=Tracing(),
    )
    async with upstream.http:
        source = NumbersSource(
            upstream.client,
            PageCache(ttl=0),
            max_page_size=MAX_PAGE_SIZE,
            max_stream_items=max(entries, 100_000),
            default_authorization="Bearer demo-admin",
        )
        schema = build_schema()
        warm = PeakRss()
        await paged(schema, source, MAX_PAGE_SIZE, warm)  # compile, connect, touch the code
        for label, run in (("streamed (@stream)", streamed), ("cursor walk", paged)):
            gc.collect()
            rss = PeakRss()
            idle = rss.sample()
            started = time.perf_counter()
            items = await run(schema, source, entries, rss)
            elapsed = time.perf_counter() - started
            print(
                f"{label:20} {items:>7} items  {items / elapsed:>9,.0f} items/s  "
                f"peak RSS growth over idle {(rss.peak - idle) / MiB:6.1f} MiB "
                f"(idle {idle / MiB:.0f} MiB)"
            )
        stats = schema.execution_context_class.projectors.stats
        print(f"projection: {stats.streamed} lists streamed, {stats.chunks} chunks projected")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))

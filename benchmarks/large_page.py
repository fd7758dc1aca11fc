"""What a 2,000-item page costs through the gateway, against the same page straight from the
simulator (run by hand). Prints the medians side by side and their ratio: the baseline for the
projection fast path that a later issue adds. Caching is off so every round does the work.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
from asgi_lifespan import LifespanManager

from gateway.app import create_app
from gateway.settings import load_settings
from gateway.simulator import build_demo_world, create_simulator_app

FIELDS = (
    "phoneNumber extension routingPrefix esn state phoneNumberType mainNumber "
    "includedTelephonyTypes mobileNetwork routingProfile tollFreeNumber isServiceNumber "
    "isReservedNumber location { id name } owner { id type firstName lastName }"
)
QUERY = f"{{ phoneNumbers(page: {{first: 2000}}) {{ nodes {{ {FIELDS} }} }} }}"
ROUNDS = 15


async def median_ms(call: Callable[[], Awaitable[None]]) -> float:
    timings = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await call()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


async def main() -> None:
    simulator = create_simulator_app(build_demo_world(size=5000, seed=7))
    transport = httpx.ASGITransport(app=simulator)
    settings = load_settings(upstream_url="http://sim/v1", cache_ttl=0)
    app = create_app(settings, upstream_transport=transport)
    headers = {"Authorization": "Bearer demo-admin"}
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://g"
        ) as gw,
        httpx.AsyncClient(transport=transport, base_url="http://sim/v1", headers=headers) as sim,
    ):

        async def through_gateway() -> None:
            response = await gw.post("/graphql", json={"query": QUERY}, headers=headers)
            assert len(response.json()["data"]["phoneNumbers"]["nodes"]) == 2000

        async def straight_from_upstream() -> None:
            response = await sim.get("/telephony/config/numbers", params={"max": 2000})
            assert len(response.json()["phoneNumbers"]) == 2000

        upstream = await median_ms(straight_from_upstream)
        gateway = await median_ms(through_gateway)
    print(f"{'2,000 items, all fields':<32}{'median ms':>12}")
    print(f"{'simulator alone (REST)':<32}{upstream:>12.1f}")
    print(f"{'through the gateway (GraphQL)':<32}{gateway:>12.1f}")
    print(f"{'ratio':<32}{gateway / upstream:>12.1f}")


if __name__ == "__main__":
    asyncio.run(main())

"""How fast the simulator answers at 100,000 entries (run by hand: `make bench`).

Prints, side by side in one run, the time of a filtered page at the default size and at
100,000 entries, and their ratio. Not a test: machines are noisy.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx

from gateway.simulator import build_demo_world, create_simulator_app

QUERIES = {
    "first page, no filter": {"max": "100"},
    "filtered page": {"ownerType": "PEOPLE", "state": "ACTIVE", "max": "100"},
    "filtered, ordered, deep": {"ownerName": "lov", "order": "lastName-desc", "start": "200"},
    "counts (details=true)": {"details": "true", "max": "1"},
}


async def measure(size: int, rounds: int = 20) -> dict[str, float]:
    started = time.perf_counter()
    app = create_simulator_app(build_demo_world(size=size, seed=7))
    build = time.perf_counter() - started
    results = {"build world (s)": build}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sim/v1",
        headers={"Authorization": "Bearer demo-admin"},
    ) as client:
        for name, params in QUERIES.items():
            timings = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                response = await client.get("/telephony/config/numbers", params=params)
                timings.append(time.perf_counter() - t0)
                assert response.status_code == 200
            results[f"{name} (ms, median)"] = statistics.median(timings) * 1000
    return results


async def main() -> None:
    small, large = await measure(1000), await measure(100_000)
    print(f"{'measure':<40}{'1,000':>12}{'100,000':>12}{'ratio':>10}")
    for key in small:
        print(f"{key:<40}{small[key]:>12.2f}{large[key]:>12.2f}{large[key] / small[key]:>10.1f}")


if __name__ == "__main__":
    asyncio.run(main())

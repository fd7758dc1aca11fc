"""Soak: load on a real gateway while the simulator injects faults (run by hand).

Starts `numbers-gateway simulator` with 10 % 429 (Retry-After: 1), 5 % 503 and 200 ms latency,
and `numbers-gateway serve` against it, both on free loopback ports; then runs a bounded load
(concurrency x duration, capped in requests) and prints requests per second, p50/p95/p99,
the gateway's 5xx count, errors by contract code, and upstream calls per request.

    .venv/bin/python benchmarks/soak.py [--seconds 20] [--concurrency 20] [--cache-ttl 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter

import httpx

FAULTS = ["status=429,retry-after=1,fraction=0.1", "status=503,fraction=0.05", "latency=0.2"]
TOKENS = ["demo-admin", "demo-readonly", "demo-location-admin"]
QUERIES = [
    "{ phoneNumbers(page: {first: 50}) { nodes { phoneNumber extension } totalCount } }",
    "{ numberCounts { total assigned unAssigned } }",
    "{ phoneNumbers(filter: {ownerType: PEOPLE}, order: {by: LAST_NAME}) { nodes { owner { lastName } } } }",
    "{ phoneNumbers(filter: {numberType: NUMBER, state: ACTIVE}, page: {first: 200, offset: 100}) { pageInfo { hasNextPage } } }",
    "{ numberCounts(filter: {includedTelephonyTypes: [MOBILE_NUMBER]}) { total } }",
]
MAX_REQUESTS = 200_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.server.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


async def load(url: str, seconds: float, concurrency: int) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds
    rng = random.Random(1)

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at and len(latencies) < MAX_REQUESTS:
            query = rng.choice(QUERIES)
            headers = {"Authorization": f"Bearer {rng.choice(TOKENS)}"}
            started = time.perf_counter()
            try:
                response = await client.post("/graphql", json={"query": query}, headers=headers)
            except httpx.HTTPError as exc:
                outcomes[f"transport:{type(exc).__name__}"] += 1
                continue
            latencies.append(time.perf_counter() - started)
            outcomes[f"http:{response.status_code}"] += 1
            for error in response.json().get("errors", []):
                outcomes[f"code:{error['extensions']['code']}"] += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--cache-ttl", type=float, default=0, help="GATEWAY_CACHE_TTL for the run")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    simulator_port, gateway_port = free_port(), free_port()
    fault_flags = [flag for spec in FAULTS for flag in ("--fault", spec)]
    simulator = start(["simulator", "--port", str(simulator_port), *fault_flags], env)
    simulator_url = f"http://127.0.0.1:{simulator_port}"
    gateway_env = {
        **env,
        "GATEWAY_UPSTREAM_URL": f"{simulator_url}/v1",
        "GATEWAY_CACHE_TTL": str(args.cache_ttl),
        "GATEWAY_LOG_LEVEL": "warning",
    }
    gateway = start(["serve", "--port", str(gateway_port)], gateway_env)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    try:
        wait_healthy(simulator_url)
        wait_healthy(gateway_url)
        before = httpx.get(f"{simulator_url}/_simulator/stats").json()["requests"]
        started = time.perf_counter()
        latencies, outcomes = asyncio.run(load(gateway_url, args.seconds, args.concurrency))
        elapsed = time.perf_counter() - started
        upstream = httpx.get(f"{simulator_url}/_simulator/stats").json()["requests"] - before
    finally:
        for process in (gateway, simulator):
            process.terminate()
            process.wait(timeout=10)

    requests = len(latencies)
    quantiles = statistics.quantiles(latencies, n=100) if requests > 1 else [0.0] * 99
    gateway_5xx = sum(n for key, n in outcomes.items() if key.startswith("http:5"))
    print(f"faults: {', '.join(FAULTS)}; cache TTL {args.cache_ttl:g} s")
    print(f"requests          {requests} in {elapsed:.1f} s, concurrency {args.concurrency}")
    print(f"requests/second   {requests / elapsed:.1f}")
    print(
        f"latency p50/p95/p99  {quantiles[49] * 1000:.0f} / {quantiles[94] * 1000:.0f} / "
        f"{quantiles[98] * 1000:.0f} ms"
    )
    print(f"gateway 5xx       {gateway_5xx}")
    print(f"upstream calls per request  {upstream / max(requests, 1):.2f}")
    print("outcomes          " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))


if __name__ == "__main__":
    main()

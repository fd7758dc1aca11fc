"""Replicas share the cache through Redis: two real gateway processes, one real redis-server and
the standalone simulator; the simulator's own request count proves the second replica did
not ask it."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from tests.processes import gateway_process, simulator_process

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

QUERY = "query Firsts { phoneNumbers(page: {first: 3}) { nodes { phoneNumber } totalCount } }"
HEADERS = {"Authorization": "Bearer demo-admin", "Gateway-Cache-Report": "true"}


def ask(url: str) -> dict[str, Any]:
    response = httpx.post(url, json={"query": QUERY}, headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    return body


def upstream_requests(simulator_url: str) -> int:
    stats = httpx.get(simulator_url.removesuffix("/v1") + "/_simulator/stats", timeout=5)
    count: int = stats.json()["requests"]
    return count


def test_the_second_replica_is_served_from_the_shared_tier(redis_server: Any) -> None:
    with simulator_process() as simulator:
        upstream = simulator.url
        shared = {
            "GATEWAY_UPSTREAM_URL": upstream,
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_CACHE_KEY_SECRET": secrets.token_hex(32),
        }
        with (
            gateway_process(env=shared) as first_process,
            gateway_process(env=shared) as second_process,
        ):
            replica_one, replica_two = first_process.url, second_process.url
            assert replica_one != replica_two
            before = upstream_requests(upstream)
            first = ask(replica_one)
            assert upstream_requests(upstream) == before + 1
            [call] = first["extensions"]["cache"]["calls"]
            assert (call["status"], call["tier"]) == ("miss", "upstream")

            second = ask(replica_two)
            assert upstream_requests(upstream) == before + 1  # the simulator was not asked
            [call] = second["extensions"]["cache"]["calls"]
            assert (call["status"], call["tier"]) == ("hit", "redis")
            assert second["data"] == first["data"]

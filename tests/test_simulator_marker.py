"""Replicas on their own embedded simulators next to one Redis say so (issue 27: two such
replicas split a change feed without a word), against a real ``redis-server``."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway.data.guarded_redis import GuardedRedis
from gateway.data.simulator_marker import MARKER_KEY, SimulatorMarker
from tests.conftest import live_settings, running_gateway

pytestmark = pytest.mark.redis

SECRET = b"replicas-share-this-secret-of-32-bytes!"


@asynccontextmanager
async def markers(url: str, count: int) -> AsyncIterator[list[SimulatorMarker]]:
    made = [SimulatorMarker(GuardedRedis(Redis.from_url(url), secret=SECRET)) for _ in range(count)]
    try:
        yield made
    finally:
        for marker in made:
            await marker.close()
            await marker.redis.close()


def warnings(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == "another_embedded_simulator"]


async def test_two_embedded_simulators_on_one_redis_each_warn_once(redis_server: Any) -> None:
    async with markers(redis_server.url, 2) as (first, second):
        with capture_logs() as logs:
            for _ in range(4):  # each checks in turn, as their intervals interleave
                await first.check()
                await second.check()
        assert first.warned
        assert second.warned
        (line, _other) = warnings(logs)
        assert "numbers-gateway simulator" in line["advice"]
        assert "GATEWAY_UPSTREAM_URL" in line["advice"]


async def test_a_restarted_replica_does_not_mistake_its_previous_marker_for_a_neighbour(
    redis_server: Any,
) -> None:
    async with markers(redis_server.url, 2) as (previous_run, this_run):
        await previous_run.check()  # the marker the replica left when it stopped
        with capture_logs() as logs:
            for _ in range(3):
                await this_run.check()
        assert not this_run.warned
        assert warnings(logs) == []


async def test_a_marker_written_without_the_secret_is_no_simulator(redis_server: Any) -> None:
    async with markers(redis_server.url, 1) as (marker,):
        redis = Redis.from_url(redis_server.url)
        try:
            with capture_logs() as logs:
                for forged in (b"another-simulator", b"another-simulator"):
                    await redis.set(MARKER_KEY, forged)
                    await marker.check()
        finally:
            await redis.aclose()
        assert not marker.warned
        assert warnings(logs) == []


async def test_an_embedded_gateway_with_redis_writes_its_marker_and_one_without_does_not(
    redis_server: Any,
) -> None:
    secret = SECRET.decode()
    redis = Redis.from_url(redis_server.url)
    try:
        live = live_settings(redis_url=redis_server.url, cache_key_secret=secret)
        async with running_gateway(live):
            assert await redis.exists(MARKER_KEY) == 0  # a real upstream: no simulator here
        from gateway.settings import load_settings

        embedded = load_settings(redis_url=redis_server.url, cache_key_secret=secret)
        async with running_gateway(embedded):
            assert await redis.exists(MARKER_KEY) == 1
    finally:
        await redis.aclose()

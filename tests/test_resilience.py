"""Upstream resilience: retries, Retry-After, the deadline, bounded concurrency, the circuit
breaker and stale-if-error. Time is faked (clock and sleep are seams); calls are counted."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.circuit_breaker import BreakerState, CircuitBreaker
from gateway.simulator import FaultPlan, FaultRule, create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from gateway.upstream import parse_retry_after
from tests.conftest import RecordingTransport, graphql, live_settings, running_gateway

COUNTS = "{ numberCounts { total } }"
OK_BODY = {"phoneNumbers": [], "count": {"total": 7}}


class Script:
    """Answers from a list of (status, headers) steps; the last step repeats."""

    def __init__(self, *steps: tuple[int, dict[str, str]]) -> None:
        self.steps = list(steps)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        status, headers = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if status == 200:
            return httpx.Response(200, json=OK_BODY, headers=headers)
        return httpx.Response(
            status, json={"message": "busy", "trackingId": "ROUTER_x"}, headers=headers
        )


class Sleeps:
    """A fake ``asyncio.sleep`` that records how long the gateway chose to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class FakeClock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


async def ask(client: httpx.AsyncClient, query: str = COUNTS, token: str = "t") -> dict[str, Any]:
    return await graphql(client, query, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("status", [429, 423])
async def test_rate_limit_then_success_honours_retry_after(status: int) -> None:
    recorder = RecordingTransport(handler=Script((status, {"Retry-After": "2"}), (200, {})))
    sleeps = Sleeps()
    async with running_gateway(live_settings(), recorder, sleep=sleeps) as client:
        body = await ask(client)
    assert body["data"]["numberCounts"]["total"] == 7
    assert recorder.calls == 2
    assert sleeps.waits == [2.0]


async def test_retry_after_as_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 4, usegmt=True)
    recorder = RecordingTransport(handler=Script((429, {"Retry-After": when}), (200, {})))
    sleeps = Sleeps()
    async with running_gateway(live_settings(), recorder, sleep=sleeps) as client:
        body = await ask(client)
    assert "errors" not in body
    assert len(sleeps.waits) == 1
    assert 2 <= sleeps.waits[0] <= 4


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_a_long_retry_after_fails_fast_with_retry_after() -> None:
    recorder = RecordingTransport(handler=Script((429, {"Retry-After": "3600"})))
    sleeps = Sleeps()
    async with running_gateway(live_settings(), recorder, sleep=sleeps) as client:
        body = await ask(client)
    assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert body["errors"][0]["extensions"]["retryAfter"] == 3600
    assert recorder.calls == 1
    assert sleeps.waits == []


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_gateway_error_once_is_retried(status: int) -> None:
    recorder = RecordingTransport(handler=Script((status, {}), (200, {})))
    sleeps = Sleeps()
    async with running_gateway(live_settings(), recorder, sleep=sleeps) as client:
        body = await ask(client)
    assert body["data"]["numberCounts"]["total"] == 7
    assert recorder.calls == 2
    assert len(sleeps.waits) == 1
    assert 0 <= sleeps.waits[0] <= 0.2, "full jitter within the first backoff step"


async def test_retries_are_bounded() -> None:
    recorder = RecordingTransport(handler=Script((503, {})))
    async with running_gateway(live_settings(), recorder, sleep=Sleeps()) as client:
        body = await ask(client)
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert body["errors"][0]["extensions"]["upstreamStatus"] == 503
    assert recorder.calls == 3


async def test_500_is_not_retried() -> None:
    recorder = RecordingTransport(handler=Script((500, {})))
    async with running_gateway(live_settings(), recorder, sleep=Sleeps()) as client:
        await ask(client)
    assert recorder.calls == 1


class HangingTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")


async def test_a_hung_upstream_meets_the_deadline() -> None:
    transport = HangingTransport()
    async with running_gateway(live_settings(upstream_timeout=0.2), transport) as client:
        body = await ask(client)
    assert body["errors"][0]["extensions"] == {"code": "UPSTREAM_TIMEOUT"}
    assert "0.2 s" in body["errors"][0]["message"]


async def test_a_slow_simulator_meets_the_deadline(world: SimulatorWorld) -> None:
    slow = create_simulator_app(world, faults=FaultPlan([FaultRule(latency=5)]))
    async with running_gateway(
        live_settings(upstream_timeout=0.2), httpx.ASGITransport(app=slow)
    ) as client:
        body = await ask(client, token="demo-admin")
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_TIMEOUT"


async def test_upstream_concurrency_is_bounded() -> None:
    in_flight = peak = 0

    class CountingTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            return httpx.Response(200, json=OK_BODY)

    settings = live_settings(upstream_concurrency=2, cache_ttl=0)
    async with running_gateway(settings, CountingTransport()) as client:
        queries = [
            f'{{ numberCounts(filter: {{extension: "{i}"}}) {{ total }} }}' for i in range(8)
        ]
        answers = await asyncio.gather(*(ask(client, query) for query in queries))
    assert all(answer["data"]["numberCounts"]["total"] == 7 for answer in answers)
    assert peak == 2


# --- the circuit breaker ------------------------------------------------------------------


async def test_breaker_opens_fails_fast_and_closes_after_a_good_probe() -> None:
    script = Script((500, {}))
    recorder = RecordingTransport(handler=script)
    clock = FakeClock()
    settings = live_settings(breaker_failures=2, breaker_cooldown=30, cache_ttl=0)
    async with running_gateway(settings, recorder, clock=clock, sleep=Sleeps()) as client:
        for _ in range(2):
            assert (await ask(client))["errors"][0]["extensions"]["upstreamStatus"] == 500
        assert recorder.calls == 2
        open_answer = await ask(client)
        assert open_answer["errors"][0]["extensions"] == {"code": "UPSTREAM_UNAVAILABLE"}
        assert recorder.calls == 2, "an open breaker makes no upstream call"
        clock.now += 31
        script.steps = [(200, {})]
        assert (await ask(client))["data"]["numberCounts"]["total"] == 7
        assert (await ask(client))["data"]["numberCounts"]["total"] == 7
        assert recorder.calls == 4


async def test_a_failed_probe_reopens_the_breaker() -> None:
    recorder = RecordingTransport(handler=Script((503, {})))
    clock = FakeClock()
    settings = live_settings(breaker_failures=1, breaker_cooldown=10, cache_ttl=0)
    async with running_gateway(settings, recorder, clock=clock, sleep=Sleeps()) as client:
        await ask(client)
        assert recorder.calls == 3
        clock.now += 11
        await ask(client)  # the probe: retried as usual, fails, re-opens
        assert recorder.calls == 6
        await ask(client)
        assert recorder.calls == 6


async def test_caller_errors_never_trip_the_breaker() -> None:
    for status in (400, 401, 403, 404, 429):
        recorder = RecordingTransport(handler=Script((status, {"Retry-After": "999"})))
        settings = live_settings(breaker_failures=2, cache_ttl=0)
        async with running_gateway(settings, recorder, sleep=Sleeps()) as client:
            for _ in range(5):
                await ask(client)
        assert recorder.calls == 5, status


def test_breaker_states() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5, clock=clock)
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow(), "the probe"
    assert not breaker.allow(), "only one probe at a time"
    breaker.release_probe()
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


# --- stale-if-error -----------------------------------------------------------------------


def switchable(world: SimulatorWorld) -> tuple[RecordingTransport, Callable[[int | None], None]]:
    """The simulator, with a switch that makes every request fail with a status."""
    plan = FaultPlan()
    app = create_simulator_app(world, faults=plan)

    def fail_with(status: int | None) -> None:
        plan.replace([FaultRule(status=status)] if status else [])

    return RecordingTransport(httpx.ASGITransport(app=app)), fail_with


async def test_stale_if_error_serves_the_same_keys_last_good_answer(world: SimulatorWorld) -> None:
    recorder, fail_with = switchable(world)
    clock = FakeClock()
    settings = live_settings(cache_ttl=10, stale_if_error=60)
    people = "{ numberCounts(filter: {ownerType: PEOPLE}) { total } }"
    async with running_gateway(settings, recorder, clock=clock, sleep=Sleeps()) as client:
        fresh = await ask(client, people, "demo-admin")
        clock.now += 15  # past the TTL, within stale-if-error
        fail_with(503)
        stale = await ask(client, people, "demo-admin")
        assert stale["data"] == fresh["data"]
        assert stale["extensions"]["stale"] is True
        assert stale["extensions"]["cache"]["calls"][0]["status"] == "stale"

        other_token = await ask(client, people, "demo-readonly")
        assert other_token["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
        other_key = await ask(client, COUNTS, "demo-admin")
        assert other_key["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"

        clock.now += 60  # past the stale window too
        expired = await ask(client, people, "demo-admin")
        assert expired["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"


@pytest.mark.parametrize("status", [401, 403])
async def test_no_stale_answer_after_a_401_or_403(world: SimulatorWorld, status: int) -> None:
    recorder, fail_with = switchable(world)
    clock = FakeClock()
    settings = live_settings(cache_ttl=10, stale_if_error=60)
    async with running_gateway(settings, recorder, clock=clock) as client:
        await ask(client, COUNTS, "demo-admin")
        clock.now += 15
        fail_with(status)
        body = await ask(client, COUNTS, "demo-admin")
    assert body["data"]["numberCounts"] is None
    assert body["errors"][0]["extensions"]["upstreamStatus"] == status
    assert "stale" not in body.get("extensions", {})


async def test_stale_if_error_covers_an_open_breaker_and_timeouts(world: SimulatorWorld) -> None:
    recorder, fail_with = switchable(world)
    clock = FakeClock()
    settings = live_settings(cache_ttl=10, stale_if_error=60, breaker_failures=1)
    async with running_gateway(settings, recorder, clock=clock, sleep=Sleeps()) as client:
        await ask(client, COUNTS, "demo-admin")
        clock.now += 11
        fail_with(504)
        assert (await ask(client, COUNTS, "demo-admin"))["extensions"]["stale"] is True
        calls = recorder.calls
        assert (await ask(client, COUNTS, "demo-admin"))["extensions"]["stale"] is True
        assert recorder.calls == calls, "breaker open: answered stale with no upstream call"

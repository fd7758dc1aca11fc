"""Upstream resilience: retries, Retry-After, the deadline, bounded concurrency, the circuit
breaker and stale-if-error. Time is faked (one clock seam); calls are counted."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from gateway.domain.query import Fetch, NumbersQuery, PageWindow
from gateway.errors import UpstreamTimeout
from gateway.observability.tracing import Tracing
from gateway.simulator import FaultPlan, FaultRule, create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from gateway.upstream.breaker import BreakerState, CircuitBreaker
from gateway.upstream.factory import build_upstream
from gateway.upstream.transport import parse_retry_after
from tests.conftest import (
    UPSTREAM_BASE,
    FakeClock,
    GatedTransport,
    RecordingTransport,
    eventually,
    graphql,
    live_settings,
    metric,
    running_gateway,
)

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


async def ask(client: httpx.AsyncClient, query: str = COUNTS, token: str = "t") -> dict[str, Any]:
    return await graphql(client, query, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("status", [429, 423])
async def test_rate_limit_then_success_honours_retry_after(status: int) -> None:
    recorder = RecordingTransport(handler=Script((status, {"Retry-After": "2"}), (200, {})))
    clock = FakeClock()
    async with running_gateway(live_settings(), recorder, clock=clock) as client:
        body = await ask(client)
    assert body["data"]["numberCounts"]["total"] == 7
    assert recorder.calls == 2
    assert clock.waits == [2.0]


async def test_retry_after_as_an_http_date() -> None:
    clock = FakeClock()
    # An HTTP-date is wall time: the wait is measured against the clock's wall time.
    when = email.utils.formatdate(clock.wall() + 4, usegmt=True)
    recorder = RecordingTransport(handler=Script((429, {"Retry-After": when}), (200, {})))
    async with running_gateway(live_settings(), recorder, clock=clock) as client:
        body = await ask(client)
    assert "errors" not in body
    assert len(clock.waits) == 1
    assert 2 <= clock.waits[0] <= 4


def test_parse_retry_after() -> None:
    assert parse_retry_after("7", now=0) == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None


async def test_a_long_retry_after_fails_fast_with_retry_after() -> None:
    recorder = RecordingTransport(handler=Script((429, {"Retry-After": "3600"})))
    clock = FakeClock()
    async with running_gateway(live_settings(), recorder, clock=clock) as client:
        body = await ask(client)
    assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert body["errors"][0]["extensions"]["retryAfter"] == 3600
    assert recorder.calls == 1
    assert clock.waits == []


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_a_gateway_error_once_is_retried(status: int) -> None:
    recorder = RecordingTransport(handler=Script((status, {}), (200, {})))
    clock = FakeClock()
    async with running_gateway(live_settings(), recorder, clock=clock) as client:
        body = await ask(client)
    assert body["data"]["numberCounts"]["total"] == 7
    assert recorder.calls == 2
    assert len(clock.waits) == 1
    assert 0 <= clock.waits[0] <= 0.2, "full jitter within the first backoff step"


async def test_retries_are_bounded() -> None:
    recorder = RecordingTransport(handler=Script((503, {})))
    async with running_gateway(live_settings(), recorder, clock=FakeClock()) as client:
        body = await ask(client)
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert body["errors"][0]["extensions"]["upstreamStatus"] == 503
    assert recorder.calls == 3


async def test_500_is_not_retried() -> None:
    recorder = RecordingTransport(handler=Script((500, {})))
    async with running_gateway(live_settings(), recorder, clock=FakeClock()) as client:
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
    gate = GatedTransport(answer=lambda request: httpx.Response(200, json=OK_BODY))
    settings = live_settings(upstream_concurrency=2, cache_ttl=0)
    async with running_gateway(settings, gate) as client:
        queries = [
            f'{{ numberCounts(filter: {{extension: "{i}"}}) {{ total }} }}' for i in range(8)
        ]
        asks = [asyncio.create_task(ask(client, query)) for query in queries]

        async def two_sent_six_queued() -> bool:
            return (
                await metric(client, "gateway_upstream_in_flight") == 2
                and await metric(client, "gateway_upstream_waiting") == 6
            )

        await eventually(two_sent_six_queued, "two requests are upstream and six wait")
        assert gate.held == 2
        gate.release()
        answers = await asyncio.gather(*asks)
    assert all(answer["data"]["numberCounts"]["total"] == 7 for answer in answers)
    assert gate.peak == 2
    assert gate.calls == 8


class ShiftableClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test moves forward (the upstream deadline is the loop's
    time): every timer due by then fires within a turn or two of the loop, without waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = 0.0

    def time(self) -> float:
        return super().time() + self.shift


def test_one_deadline_spans_every_page_of_a_walk() -> None:
    """Each page takes 6 s of a 10 s deadline: each would fit alone, two do not. A walk is one
    exchange, so the second page is cut off at the deadline and no third is asked for."""
    deadline = 10.0

    class SlowPages(httpx.AsyncBaseTransport):
        def __init__(self, loop: ShiftableClockLoop) -> None:
            self.loop = loop
            self.calls = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.calls += 1
            self.loop.shift += 0.6 * deadline
            for _ in range(3):  # turns of the loop, in which timers due by now fire
                await asyncio.sleep(0)
            start = int(request.url.params.get("start", "0"))
            following = f"{UPSTREAM_BASE}/telephony/config/numbers?start={start + 1}&max=1"
            return httpx.Response(
                200,
                json={"phoneNumbers": [{"extension": str(start), "location": {"id": "L"}}]},
                headers={"Link": f'<{following}>; rel="next"'},
            )

    async def scenario(loop: ShiftableClockLoop) -> None:
        wire = SlowPages(loop)
        upstream = build_upstream(
            live_settings(upstream_timeout=deadline),
            base_url=UPSTREAM_BASE,
            transport=wire,
            metrics=None,
            clock=FakeClock(),
            tracing=Tracing(),
        )
        window = Fetch(NumbersQuery(None, ()), PageWindow(0, 5), details=False)
        async with upstream.http:
            with pytest.raises(UpstreamTimeout, match="within 10 s"):
                await upstream.client.fetch(window, "Bearer t", caller="c")
        assert wire.calls == 2

    with asyncio.Runner(loop_factory=ShiftableClockLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, ShiftableClockLoop)
        runner.run(scenario(loop))


async def test_an_encoding_that_does_not_decode_is_the_upstreams_failure() -> None:
    """A body that says gzip and is not: the field fails with the upstream's status and
    tracking id (not an internal error), it is not retried, and the breaker counts it."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(  # a stream: httpx would decode ``content=`` right here
            200,
            stream=httpx.ByteStream(b"not gzip at all"),
            headers={"Content-Encoding": "gzip", "TrackingID": "ROUTER_2"},
        )

    recorder = RecordingTransport(handler=answer)
    settings = live_settings(breaker_failures=1, breaker_cooldown=30, cache_ttl=0)
    async with running_gateway(settings, recorder, clock=FakeClock()) as client:
        first = await ask(client)
        assert first["errors"][0]["extensions"] == {
            "code": "UPSTREAM_UNAVAILABLE",
            "upstreamStatus": 200,
            "trackingId": "ROUTER_2",
        }
        assert "did not decode" in first["errors"][0]["message"]
        assert recorder.calls == 1, "an answer that does not decode is not asked for again"
        second = await ask(client)
        assert second["errors"][0]["extensions"] == {"code": "UPSTREAM_UNAVAILABLE"}
        assert recorder.calls == 1, "the breaker recorded the failure and opened"


# --- the circuit breaker ------------------------------------------------------------------


async def test_breaker_opens_fails_fast_and_closes_after_a_good_probe() -> None:
    script = Script((500, {}))
    recorder = RecordingTransport(handler=script)
    clock = FakeClock()
    settings = live_settings(breaker_failures=2, breaker_cooldown=30, cache_ttl=0)
    async with running_gateway(settings, recorder, clock=clock) as client:
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
    async with running_gateway(settings, recorder, clock=clock) as client:
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
        async with running_gateway(settings, recorder, clock=FakeClock()) as client:
            for _ in range(5):
                await ask(client)
        assert recorder.calls == 5, status


@pytest.mark.parametrize("declared", ["²".encode(), "١٢".encode(), b"\xb2", b"12abc"])
async def test_an_unreadable_content_length_is_the_upstreams_failure(declared: bytes) -> None:
    """'²' and '١٢' pass str.isdigit(); int() refuses the first and reads the second as 12.
    Neither is a length: the field fails as the upstream's fault and the breaker counts it."""

    def answer(request: httpx.Request) -> httpx.Response:
        body = b'{"phoneNumbers": [], "count": {"total": 7}}'
        return httpx.Response(
            200, content=body, headers=[(b"Content-Length", declared), (b"TrackingID", b"ROUTER_1")]
        )

    recorder = RecordingTransport(handler=answer)
    settings = live_settings(breaker_failures=1, breaker_cooldown=30, cache_ttl=0)
    async with running_gateway(settings, recorder, clock=FakeClock()) as client:
        first = await ask(client)
        assert first["data"] == {"numberCounts": None}
        assert first["errors"][0]["extensions"] == {
            "code": "UPSTREAM_UNAVAILABLE",
            "upstreamStatus": 200,
            "trackingId": "ROUTER_1",
        }
        assert recorder.calls == 1, "a malformed answer is not retried"
        second = await ask(client)
        assert second["errors"][0]["extensions"] == {"code": "UPSTREAM_UNAVAILABLE"}
        assert recorder.calls == 1, "the breaker recorded the failure and opened"


def test_breaker_states() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5, clock=clock.monotonic)
    for _ in range(2):
        admitted = breaker.admit()
        assert admitted is not None
        breaker.record_failure(admitted)
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit() is None
    clock.now += 5
    probe = breaker.admit()
    assert probe is not None
    assert probe.probe, "the probe"
    assert breaker.admit() is None, "only one probe at a time"
    breaker.release(probe)
    probe = breaker.admit()
    assert probe is not None
    breaker.record_success(probe)
    assert breaker.state is BreakerState.CLOSED


def test_an_exchange_admitted_before_the_trip_cannot_close_or_reopen_the_circuit() -> None:
    """Issue 27: a late success of an exchange admitted while the circuit was closed set it
    CLOSED again, so a half-dead upstream (some answers fail fast, some succeed slowly) made
    the breaker flap. Only outcomes of the current epoch count."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=clock.monotonic)
    slow = breaker.admit()
    failing = breaker.admit()
    late_failure = breaker.admit()
    assert slow is not None
    assert failing is not None
    assert late_failure is not None
    breaker.record_failure(failing)
    assert breaker.state is BreakerState.OPEN
    breaker.record_success(slow)
    assert breaker.state is BreakerState.OPEN, "a success from before the trip keeps it open"
    assert breaker.admit() is None
    clock.now += 5
    probe = breaker.admit()
    assert probe is not None
    assert probe.probe
    breaker.record_success(slow)
    breaker.record_failure(late_failure)
    breaker.release(late_failure)
    assert breaker.state is BreakerState.HALF_OPEN, "the probe alone decides"
    assert breaker.admit() is None, "and its place is still taken"
    breaker.record_success(probe)
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(late_failure)
    assert breaker.state is BreakerState.CLOSED, "a stale failure cannot re-open it"
    assert breaker.consecutive_failures == 0


class HeldUntilReleased(httpx.AsyncBaseTransport):
    """Answers a request for ``held_extension`` with 200 only once released; every other
    request at once with 500."""

    def __init__(self, held_extension: str) -> None:
        self.held_extension = held_extension
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if request.url.params.get("extension") != self.held_extension:
            return httpx.Response(500, json={"message": "broken"})
        self.arrived.set()
        await self.release.wait()
        return httpx.Response(200, json=OK_BODY)


async def test_a_late_success_from_before_the_trip_leaves_the_breaker_open() -> None:
    transport = HeldUntilReleased(held_extension="1")
    settings = live_settings(breaker_failures=1, breaker_cooldown=30, cache_ttl=0)
    async with running_gateway(settings, transport, clock=FakeClock()) as client:
        slow = asyncio.create_task(
            ask(client, '{ numberCounts(filter: {extension: "1"}) { total } }')
        )
        await transport.arrived.wait()
        failed = await ask(client, '{ numberCounts(filter: {extension: "2"}) { total } }')
        assert failed["errors"][0]["extensions"]["upstreamStatus"] == 500
        transport.release.set()
        late = await slow
        assert late["data"]["numberCounts"]["total"] == 7, "the late answer is served"
        calls = transport.calls
        after = await ask(client, '{ numberCounts(filter: {extension: "3"}) { total } }')
        assert after["errors"][0]["extensions"] == {"code": "UPSTREAM_UNAVAILABLE"}
        assert transport.calls == calls, "the breaker stayed open: no upstream call"
        assert (
            'gateway_upstream_breaker_state{state="open"} 1.0'
            in (await client.get("/metrics")).text
        )


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
    async with running_gateway(settings, recorder, clock=clock) as client:
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
    async with running_gateway(settings, recorder, clock=clock) as client:
        await ask(client, COUNTS, "demo-admin")
        clock.now += 11
        fail_with(504)
        assert (await ask(client, COUNTS, "demo-admin"))["extensions"]["stale"] is True
        calls = recorder.calls
        assert (await ask(client, COUNTS, "demo-admin"))["extensions"]["stale"] is True
        assert recorder.calls == calls, "breaker open: answered stale with no upstream call"


async def test_a_hung_upstream_past_the_deadline_is_answered_stale(world: SimulatorWorld) -> None:
    """A real timeout (the upstream never answers, the deadline passes), not a 504."""
    hang = asyncio.Event()

    class HangsOnDemand(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.ASGITransport(app=create_simulator_app(world))
            self.calls = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.calls += 1
            if hang.is_set():
                await asyncio.Event().wait()  # never answers
            return await self.inner.handle_async_request(request)

    transport = HangsOnDemand()
    clock = FakeClock()
    settings = live_settings(cache_ttl=10, stale_if_error=60, upstream_timeout=0.3)
    async with running_gateway(settings, transport, clock=clock) as client:
        fresh = await ask(client, COUNTS, "demo-admin")
        clock.now += 11
        hang.set()
        stale = await ask(client, COUNTS, "demo-admin")
        assert stale["data"] == fresh["data"]
        assert stale["extensions"]["stale"] is True
        assert transport.calls == 2, "the second answer did ask the upstream, which hung"
        other = await ask(client, "{ numberCounts(filter: {available: true}) { total } }")
        assert other["errors"][0]["extensions"]["code"] == "UPSTREAM_TIMEOUT"


# --- one clock: monotonic for durations, wall time only for dates -------------------------


async def test_wall_clock_jumps_neither_close_nor_hold_the_breaker() -> None:
    script = Script((500, {}))
    recorder = RecordingTransport(handler=script)
    clock = FakeClock()
    settings = live_settings(breaker_failures=2, breaker_cooldown=30, cache_ttl=0)
    async with running_gateway(settings, recorder, clock=clock) as client:
        for _ in range(2):
            await ask(client)
        assert recorder.calls == 2
        script.steps = [(200, {})]
        clock.jump_wall(+3600)  # NTP steps the wall clock an hour ahead
        assert (await ask(client))["errors"][0]["extensions"] == {"code": "UPSTREAM_UNAVAILABLE"}
        assert recorder.calls == 2, "a wall-clock jump must not end the cool-down"
        clock.jump_wall(-7200)  # and back, past where it was
        clock.now += 31  # the cool-down passes on the monotonic clock
        assert (await ask(client))["data"]["numberCounts"]["total"] == 7
        assert recorder.calls == 3, "a wall clock running backwards must not hold it open"


async def test_wall_clock_jumps_do_not_expire_cached_entries(recorder: RecordingTransport) -> None:
    clock = FakeClock()
    async with running_gateway(live_settings(cache_ttl=30), recorder, clock=clock) as client:
        await ask(client, COUNTS, "demo-admin")
        clock.jump_wall(+3600)
        hit = await ask(client, COUNTS, "demo-admin")
        assert hit["extensions"]["cache"]["hits"] == 1
        clock.now += 31
        await ask(client, COUNTS, "demo-admin")
    assert recorder.calls == 2


@pytest.mark.parametrize("extra", [b"", b" "])
async def test_a_body_handed_over_whole_is_kept_as_it_came(extra: bytes) -> None:
    """A wire that holds the body in memory hands it over as one chunk of its declared length:
    the bounded read keeps that chunk itself (no megabyte copied). More than was declared is
    gathered as any body is, every byte kept."""
    body = b'{"phoneNumbers": [], "count": {"total": 7}}'
    length = str(len(body)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body
        yield extra

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=[(b"Content-Length", length)], content=chunks())

    upstream = build_upstream(
        live_settings(cache_ttl=0),
        base_url="http://upstream.test/v1",
        transport=httpx.MockTransport(answer),
        metrics=None,
        clock=FakeClock(),
        tracing=Tracing(),
    )
    async with upstream.http:
        response = await upstream.http.get("http://upstream.test/v1/telephony/config/numbers")
        content = response.read()
    assert content == body + extra
    if not extra:
        assert content is body

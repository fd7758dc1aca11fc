"""The change feed (``Subscription.phoneNumberChanges``), in process through the engine's frames:
kinds, sharing, scope, limits and errors, with upstream calls counted and time driven by a
stepped clock (a poll happens only when the test lets the feed's sleep end)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from gateway.changes.codec import MalformedMessage, decode_message, open_lease
from gateway.changes.coordination import Role, channel_of, lease_key
from gateway.changes.feed import FeedEnded
from gateway.changes.registry import ChangeFeeds, feed_name
from gateway.data.guarded_redis import seal
from gateway.observability.request_facts import client_field
from gateway.schema.context import RequestContext
from gateway.server.app import create_app
from gateway.settings import Settings
from gateway.simulator import build_demo_world, create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import InProcess, RecordingTransport, RedisServer, eventually, live_settings

SECRET = "a-shared-secret-of-at-least-32-bytes!!"  # replicas sharing a Redis share it
WATCH = """subscription Watch($orgId: ID, $filter: PhoneNumberFilter) {
  phoneNumberChanges(orgId: $orgId, filter: $filter) {
    kind observedAt
    number { phoneNumber extension state owner { id } location { id } }
    previous { phoneNumber extension state owner { id } }
  }
}"""


class SteppedClock:
    """A clock whose ``sleep`` returns only when the test calls ``step``: each step is one
    poll interval for every feed that is waiting."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.wall_now = 1_800_000_000.0
        self._sleepers: list[asyncio.Future[None]] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    async def sleep(self, seconds: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._sleepers.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._sleepers:
                self._sleepers.remove(waiter)

    @property
    def sleeping(self) -> int:
        return len(self._sleepers)

    def step(self, seconds: float = 1.0) -> None:
        self.now += seconds
        self.wall_now += seconds
        for waiter in list(self._sleepers):
            if not waiter.done():
                waiter.set_result(None)
        self._sleepers.clear()


@dataclass
class Harness:
    """A live-mode gateway over a private simulator world, and the means to subscribe."""

    world: SimulatorWorld
    simulator: httpx.AsyncClient
    recorder: RecordingTransport
    clock: SteppedClock
    state: dict[str, Any]
    settings: Settings

    @property
    def feeds(self) -> ChangeFeeds:
        feeds: ChangeFeeds = self.state["changes"]
        return feeds

    def context(self, token: str | None = "demo-admin", **headers: str) -> RequestContext:
        sent = {name.lower(): value for name, value in headers.items()}
        authorization = f"Bearer {token}" if token is not None else None
        return RequestContext(
            numbers=self.state["numbers"].for_caller(authorization),
            changes=self.feeds,
            client_name=client_field(sent.get("apollographql-client-name")),
        )

    @property
    def schema(self) -> InProcess:
        return InProcess(self.settings)

    async def subscribe(
        self, token: str | None = "demo-admin", variables: dict[str, Any] | None = None
    ) -> Any:
        return await self.schema.subscribe(
            WATCH, variable_values=variables, context_value=self.context(token)
        )

    async def change(self, **change: Any) -> dict[str, Any]:
        response = await self.simulator.post("/_simulator/changes", json=change)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def poll(self, feeds: int = 1) -> None:
        """Let every sleeping feed poll once, and wait until it sleeps again."""
        await eventually(lambda: self.clock.sleeping >= feeds, "the feeds wait for their poll")
        self.clock.step()
        await eventually(lambda: self.clock.sleeping >= feeds, "the feeds polled")


@asynccontextmanager
async def harness(**overrides: Any) -> AsyncIterator[Harness]:
    world = build_demo_world(size=200, seed=11)
    simulator_app = create_simulator_app(world)
    recorder = RecordingTransport(httpx.ASGITransport(app=simulator_app))
    clock = SteppedClock()
    settings = live_settings(changes_poll_interval=1, **overrides)
    app = create_app(settings, upstream_transport=recorder, clock=clock)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=simulator_app), base_url="http://webex.test"
        ) as simulator,
    ):
        yield Harness(world, simulator, recorder, clock, manager._state, settings)


async def next_event(stream: Any) -> dict[str, Any]:
    result = await asyncio.wait_for(anext(stream), 30)
    assert not result.errors, result.errors
    event: dict[str, Any] = result.data["phoneNumberChanges"]
    return event


async def next_error(stream: Any) -> dict[str, Any]:
    result = await asyncio.wait_for(anext(stream), 30)
    assert result.errors, result.data
    formatted: dict[str, Any] = result.errors[0].formatted
    return formatted


async def test_each_kind_arrives_once_after_a_change_made_through_the_simulator() -> None:
    async with harness() as h:
        stream = await h.subscribe()
        synced = await next_event(stream)
        assert synced["kind"] == "SYNCED"
        assert synced["number"] is None
        assert synced["previous"] is None
        free = next(
            e
            for e in h.world.demo_org.entries
            if e.phone_number and e.owner_id is None and not e.payload.get("mainNumber")
        )
        number = free.phone_number

        await h.change(action="assign", phoneNumber=number)
        await h.poll()
        assigned = await next_event(stream)
        assert assigned["kind"] == "ASSIGNED"
        assert assigned["number"]["phoneNumber"] == number
        assert assigned["previous"]["owner"] is None
        first_owner = assigned["number"]["owner"]["id"]

        await h.change(action="assign", phoneNumber=number)
        await h.poll()
        reassigned = await next_event(stream)
        assert reassigned["kind"] == "REASSIGNED"
        assert reassigned["previous"]["owner"]["id"] == first_owner
        assert reassigned["number"]["owner"]["id"] != first_owner

        await h.change(action="state", phoneNumber=number, state="INACTIVE")
        await h.poll()
        updated = await next_event(stream)
        assert updated["kind"] == "UPDATED"
        assert (updated["previous"]["state"], updated["number"]["state"]) == ("ACTIVE", "INACTIVE")

        await h.change(action="unassign", phoneNumber=number)
        await h.poll()
        assert (await next_event(stream))["kind"] == "UNASSIGNED"

        await h.change(action="remove", phoneNumber=number)
        await h.poll()
        removed = await next_event(stream)
        assert removed["kind"] == "REMOVED"
        assert removed["number"] is None
        assert removed["previous"]["phoneNumber"] == number

        await h.change(action="add", phoneNumber="+19995550123")
        await h.poll()
        added = await next_event(stream)
        assert added["kind"] == "ADDED"
        assert added["previous"] is None
        assert added["number"]["phoneNumber"] == "+19995550123"

        # Once each: many more polls of unchanged data send nothing more.
        for _ in range(5):
            await h.poll()
        await stream.aclose()
        assert not h.feeds.feeds


async def test_no_spurious_events_across_many_polls_and_each_poll_refreshes_the_cache() -> None:
    async with harness() as h:
        stream = await h.subscribe()
        assert (await next_event(stream))["kind"] == "SYNCED"
        before = h.recorder.calls
        for _ in range(10):
            await h.poll()
        # Every poll reached the upstream (the cache was refreshed, never read) ...
        assert h.recorder.calls - before == 10
        # ... and the next thing the stream says is the one real change, not noise.
        entry = next(
            e for e in h.world.demo_org.entries if e.owner_id is not None and e.phone_number
        )
        await h.change(action="unassign", phoneNumber=entry.phone_number)
        await h.poll()
        event = await next_event(stream)
        assert (event["kind"], event["previous"]["phoneNumber"]) == (
            "UNASSIGNED",
            entry.phone_number,
        )
        await stream.aclose()


async def test_five_subscribers_of_one_key_cost_what_one_does_and_the_last_to_leave_stops_polls() -> (
    None
):
    async with harness() as h:
        streams = [await h.subscribe() for _ in range(5)]
        for stream in streams:
            assert (await next_event(stream))["kind"] == "SYNCED"
        assert len(h.feeds.feeds) == 1
        assert h.recorder.calls == 1  # one baseline poll for all five
        for _ in range(3):
            await h.poll()
        assert h.recorder.calls == 4
        for stream in streams[:4]:
            await stream.aclose()
        await h.poll()
        assert h.recorder.calls == 5  # one left: still polling
        await streams[4].aclose()
        await eventually(lambda: not h.feeds.feeds, "the feed stopped")
        h.clock.step()
        h.clock.step()
        await asyncio.sleep(0)
        assert h.recorder.calls == 5
        assert h.clock.sleeping == 0


async def test_a_location_admins_feed_never_shows_another_locations_change_and_tokens_never_share() -> (
    None
):
    async with harness() as h:
        admin = await h.subscribe("demo-admin")
        local = await h.subscribe("demo-location-admin")
        assert (await next_event(admin))["kind"] == "SYNCED"
        assert (await next_event(local))["kind"] == "SYNCED"
        assert len(h.feeds.feeds) == 2  # one poller per token, never shared
        own_location = h.world.demo_org.location_ids[0]
        other = next(
            e
            for e in h.world.demo_org.entries
            if e.location_id != own_location and e.phone_number and e.owner_id is None
        )
        mine = next(
            e
            for e in h.world.demo_org.entries
            if e.location_id == own_location
            and e.phone_number
            and e.owner_id is None
            and not e.payload.get("mainNumber")
        )
        await h.change(action="assign", phoneNumber=other.phone_number)
        await h.poll(feeds=2)
        await h.change(action="assign", phoneNumber=mine.phone_number)
        await h.poll(feeds=2)
        seen_by_admin = [(await next_event(admin))["number"]["phoneNumber"] for _ in range(2)]
        assert seen_by_admin == [other.phone_number, mine.phone_number]
        event = await next_event(local)  # its first event is its own location's change
        assert event["number"]["phoneNumber"] == mine.phone_number
        assert event["number"]["location"]["id"] == own_location
        await admin.aclose()
        await local.aclose()


async def test_bad_filter_is_bad_user_input_with_no_upstream_call() -> None:
    async with harness() as h:
        stream = await h.subscribe(variables={"filter": {"available": True, "ownerType": "PEOPLE"}})
        error = await next_error(stream)
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert h.recorder.calls == 0
        assert not h.feeds.feeds


async def test_a_filter_matching_too_many_entries_is_refused_asking_for_a_narrower_one() -> None:
    async with harness(changes_max_items=50) as h:
        stream = await h.subscribe()
        error = await next_error(stream)
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert "narrower filter" in error["message"]
        assert h.recorder.calls == 1  # the first page's count was enough to know
        await eventually(lambda: not h.feeds.feeds, "the feed ended")


@pytest.mark.parametrize(
    ("token", "code"), [("not-a-demo-token", "UNAUTHENTICATED"), ("demo-no-scope", "FORBIDDEN")]
)
async def test_a_rejected_token_ends_the_subscription_with_its_code(token: str, code: str) -> None:
    async with harness() as h:
        stream = await h.subscribe(token)
        error = await next_error(stream)
        assert error["extensions"]["code"] == code
        assert "not-a-demo-token" not in str(error)


async def test_no_token_with_a_live_upstream_is_unauthenticated_before_any_call() -> None:
    async with harness() as h:
        stream = await h.subscribe(None)
        assert (await next_error(stream))["extensions"]["code"] == "UNAUTHENTICATED"
        assert h.recorder.calls == 0


async def test_subscriptions_past_the_limits_are_rate_limited() -> None:
    async with harness(max_subscriptions_per_caller=2, max_subscriptions=3) as h:
        first = await h.subscribe("demo-admin")
        second = await h.subscribe("demo-admin", {"filter": {"state": "ACTIVE"}})
        assert (await next_event(first))["kind"] == "SYNCED"
        assert (await next_event(second))["kind"] == "SYNCED"
        third = await h.subscribe("demo-admin", {"filter": {"state": "INACTIVE"}})
        error = await next_error(third)
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] >= 1
        other = await h.subscribe("demo-readonly")
        assert (await next_event(other))["kind"] == "SYNCED"
        fourth = await h.subscribe("demo-partner")
        assert (await next_error(fourth))["extensions"]["code"] == "RATE_LIMITED"
        for stream in (first, second, other):
            await stream.aclose()


async def test_a_rate_limit_backs_the_poller_off_without_ending_the_feed() -> None:
    async with harness() as h:
        stream = await h.subscribe()
        assert (await next_event(stream))["kind"] == "SYNCED"
        await h.simulator.post(
            "/_simulator/faults", json={"rules": [{"status": 429, "retryAfter": "30", "count": 1}]}
        )
        waits: list[float] = []
        original = h.clock.sleep

        async def recording_sleep(seconds: float) -> None:
            waits.append(seconds)
            await original(seconds)

        h.clock.sleep = recording_sleep  # type: ignore[method-assign]
        await h.poll()
        # Past the upstream exchange's deadline, so the client did not retry: the feed waited.
        assert waits == [30]  # Retry-After honoured, the subscription still open
        await h.poll()
        assert waits == [30, 1.0]  # then back to the interval
        entry = next(
            e for e in h.world.demo_org.entries if e.owner_id is not None and e.phone_number
        )
        await h.change(action="unassign", phoneNumber=entry.phone_number)
        await h.poll()
        assert (await next_event(stream))["kind"] == "UNASSIGNED"
        await stream.aclose()


async def test_shutdown_ends_every_subscription_cleanly() -> None:
    async with harness() as h:
        stream = await h.subscribe()
        assert (await next_event(stream))["kind"] == "SYNCED"
        await h.feeds.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 30)
        assert not h.feeds.feeds


async def test_each_subscription_logs_one_line_when_it_ends_without_the_token() -> None:
    from structlog.testing import capture_logs

    async with harness() as h:
        with capture_logs() as logs:
            schema = h.schema
            context = h.context("demo-admin", **{"apollographql-client-name": "admin-console"})
            stream = await schema.subscribe(WATCH, context_value=context)
            assert (await next_event(stream))["kind"] == "SYNCED"
            await stream.aclose()
        ended = [line for line in logs if line["event"] == "subscription_ended"]
        assert len(ended) == 1
        assert ended[0]["client_name"] == "admin-console"
        assert ended[0]["events"] == 1
        assert "demo-admin" not in str(ended)


@pytest.mark.redis
async def test_two_replicas_share_one_poller_through_redis_and_the_other_takes_over(
    redis_server: Any,
) -> None:
    world = build_demo_world(size=200, seed=13)
    simulator_app = create_simulator_app(world)
    recorder = RecordingTransport(httpx.ASGITransport(app=simulator_app))
    clock = SteppedClock()
    settings = live_settings(
        changes_poll_interval=1,
        redis_url=redis_server.url,
        cache_key_secret=SECRET,
    )
    first_app = create_app(settings, upstream_transport=recorder, clock=clock)
    second_app = create_app(settings, upstream_transport=recorder, clock=clock)
    async with (
        LifespanManager(second_app) as second,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=simulator_app), base_url="http://webex.test"
        ) as simulator,
    ):
        first = LifespanManager(first_app)
        await first.__aenter__()
        one = Harness(world, simulator, recorder, clock, first._state, settings)
        two = Harness(world, simulator, recorder, clock, second._state, settings)
        on_one = await one.subscribe()
        assert (await next_event(on_one))["kind"] == "SYNCED"
        on_two = await two.subscribe()
        assert (await next_event(on_two))["kind"] == "SYNCED"
        assert recorder.calls == 1  # the baseline, taken by one replica for both

        for _ in range(3):
            await one.poll(feeds=2)
        assert recorder.calls == 4  # one poller's worth: one call per interval, not two

        entry = next(e for e in world.demo_org.entries if e.owner_id is not None and e.phone_number)
        await one.change(action="unassign", phoneNumber=entry.phone_number)
        await one.poll(feeds=2)
        for stream in (on_one, on_two):
            event = await next_event(stream)
            assert (event["kind"], event["previous"]["phoneNumber"]) == (
                "UNASSIGNED",
                entry.phone_number,
            )

        # The replica that polls goes away; the other takes the feed over from the snapshot
        # in Redis: no spurious changes, and the next real one arrives once.
        await on_one.aclose()
        await first.__aexit__(None, None, None)
        calls = recorder.calls
        for _ in range(3):
            await two.poll(feeds=1)
        assert recorder.calls - calls == 3
        await two.change(action="assign", phoneNumber=entry.phone_number)
        await two.poll(feeds=1)
        event = await next_event(on_two)
        assert (event["kind"], event["number"]["phoneNumber"]) == ("ASSIGNED", entry.phone_number)
        await on_two.aclose()


async def test_an_upstream_failing_with_5xx_backs_the_poller_off_and_events_resume() -> None:
    async with harness(breaker_failures=1000) as h:
        stream = await h.subscribe()
        assert (await next_event(stream))["kind"] == "SYNCED"
        # A 500, which the upstream transport does not retry: one attempt per poll, so the
        # simulator's request count is the poll count.
        await h.simulator.post("/_simulator/faults", json={"rules": [{"status": 500, "count": 4}]})
        waits = record_feed_waits(h.clock)
        requests_before = await simulator_requests(h)
        for _ in range(4):
            await h.poll()
        assert waits == [1.0, 2.0, 4.0, 8.0]  # doubling, the subscription still open
        assert await simulator_requests(h) - requests_before == 4  # one poll per backoff
        entry = next(
            e for e in h.world.demo_org.entries if e.owner_id is not None and e.phone_number
        )
        await h.change(action="unassign", phoneNumber=entry.phone_number)
        await h.poll()
        assert waits[-1] == 1.0  # the upstream answers again: back to the interval
        event = await next_event(stream)
        assert (event["kind"], event["previous"]["phoneNumber"]) == (
            "UNASSIGNED",
            entry.phone_number,
        )
        metrics = h.feeds.metrics
        assert metrics is not None
        text = metrics.render().decode()
        assert 'gateway_change_feed_polls_total{outcome="upstream_error"} 4.0' in text
        assert 'gateway_change_feed_polls_total{outcome="ok"} 2.0' in text
        assert 'gateway_change_feed_events_total{kind="UNASSIGNED"} 1.0' in text
        assert 'gateway_change_feeds{role="polling"} 1.0' in text
        assert "gateway_subscriptions_open 1.0" in text
        await stream.aclose()
        assert "gateway_subscriptions_open 0.0" in metrics.render().decode()


def record_feed_waits(clock: SteppedClock) -> list[float]:
    waits: list[float] = []
    original = clock.sleep

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        await original(seconds)

    clock.sleep = recording_sleep  # type: ignore[method-assign]
    return waits


async def simulator_requests(h: Harness) -> int:
    count: int = (await h.simulator.get("/_simulator/stats")).json()["requests"]
    return count


class RestartableRedis(RedisServer):
    """A redis-server the test can stop and start again on the same port (empty, as a
    restarted cache without persistence is)."""

    def restart(self) -> None:
        import shutil
        import subprocess

        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_up()


@asynccontextmanager
async def two_replicas(redis_url: str) -> AsyncIterator[tuple[Harness, Harness, Any]]:
    """Two gateways sharing a simulator, a clock and a Redis; the first is yielded as its
    LifespanManager too, so a test can stop it."""
    world = build_demo_world(size=200, seed=13)
    simulator_app = create_simulator_app(world)
    recorder = RecordingTransport(httpx.ASGITransport(app=simulator_app))
    clock = SteppedClock()
    settings = live_settings(
        changes_poll_interval=1,
        redis_url=redis_url,
        cache_key_secret=SECRET,
    )
    first = LifespanManager(create_app(settings, upstream_transport=recorder, clock=clock))
    async with (
        LifespanManager(create_app(settings, upstream_transport=recorder, clock=clock)) as second,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=simulator_app), base_url="http://webex.test"
        ) as simulator,
    ):
        await first.__aenter__()
        try:
            one = Harness(world, simulator, recorder, clock, first._state, settings)
            two = Harness(world, simulator, recorder, clock, second._state, settings)
            yield one, two, first
        finally:
            with contextlib.suppress(Exception):
                await first.__aexit__(None, None, None)


async def lease_gone(redis: Redis, name: str) -> bool:
    return await redis.exists(lease_key(name)) == 0


def an_owned_number(world: SimulatorWorld, skip: int = 0) -> str:
    owned = [e.phone_number for e in world.demo_org.entries if e.owner_id and e.phone_number]
    number = owned[skip]
    assert number is not None
    return number


@pytest.mark.redis
async def test_a_dead_polling_replicas_lease_expires_and_the_other_takes_over_without_spurious_changes(
    redis_server: Any,
) -> None:
    async with two_replicas(redis_server.url) as (one, two, first):
        for h in (one, two):
            h.feeds.lease = 1.0  # a short lease: the dead replica's expires soon
        on_one = await one.subscribe()
        assert (await next_event(on_one))["kind"] == "SYNCED"
        on_two = await two.subscribe()
        assert (await next_event(on_two))["kind"] == "SYNCED"
        (name,) = one.feeds.feeds
        assert one.feeds.feeds[name].role is Role.POLL_SHARED
        assert two.feeds.feeds[name].role is Role.RELAY

        # The polling replica dies: its tasks end and its connections close, but it never
        # runs the release script, so its lease stays in Redis until it expires.
        async def dead(name: str, instance: str) -> None:
            return None

        one.feeds.coordination.release = dead  # type: ignore[method-assign]
        await first.__aexit__(None, None, None)
        redis = Redis.from_url(redis_server.url)
        try:
            assert await redis.exists(lease_key(name)) == 1
            calls = one.recorder.calls
            await two.poll(feeds=1)
            assert one.recorder.calls == calls  # still leased to the dead replica: no poll
            await eventually(lambda: lease_gone(redis, name), "the dead replica's lease expired")
        finally:
            await redis.aclose()
        # The first poll after the expiry takes the feed over (within two intervals of the
        # last renewal), from the snapshot in Redis: no spurious change.
        await two.poll(feeds=1)
        assert one.recorder.calls == calls + 1
        assert two.feeds.feeds[name].role is Role.POLL_SHARED
        number = an_owned_number(two.world)
        await two.change(action="unassign", phoneNumber=number)
        await two.poll(feeds=1)
        event = await next_event(on_two)  # the next event is the real change, nothing before it
        assert (event["kind"], event["previous"]["phoneNumber"]) == ("UNASSIGNED", number)
        await on_two.aclose()


@pytest.mark.redis
async def test_a_gracefully_stopped_polling_replica_hands_its_feed_over_at_the_others_next_interval(
    redis_server: Any,
) -> None:
    async with two_replicas(redis_server.url) as (one, two, first):
        for h in (one, two):
            h.feeds.lease = 60.0  # a lease left behind would outlive the test: no expiry helps
        on_one = await one.subscribe()
        assert (await next_event(on_one))["kind"] == "SYNCED"
        on_two = await two.subscribe()
        assert (await next_event(on_two))["kind"] == "SYNCED"
        (name,) = one.feeds.feeds
        polling = one.feeds.feeds[name]
        assert polling.role is Role.POLL_SHARED
        assert two.feeds.feeds[name].role is Role.RELAY

        # The race of a graceful stop, made certain: the feed's release (a Redis round trip)
        # is still under way when shutdown stops the feed a second time.
        coordination = one.feeds.coordination
        original_release = coordination.release
        let_go = asyncio.Event()

        async def held_release(name: str, instance: str) -> None:
            await let_go.wait()
            await original_release(name, instance)

        coordination.release = held_release  # type: ignore[method-assign]
        stops = 0
        original_stop = polling.stop

        def counted_stop() -> None:
            nonlocal stops
            stops += 1
            original_stop()

        polling.stop = counted_stop  # type: ignore[method-assign]
        await on_one.aclose()  # the last subscriber on the polling replica leaves ...
        shutdown = asyncio.create_task(first.__aexit__(None, None, None))  # ... and it stops
        await eventually(lambda: stops >= 2, "shutdown stopped the stopping feed again")
        let_go.set()
        await shutdown
        redis = Redis.from_url(redis_server.url)
        try:
            assert await lease_gone(redis, name)  # let go of, not left to expire
        finally:
            await redis.aclose()

        # The other replica polls at its next interval, from the snapshot in Redis.
        calls = two.recorder.calls
        await two.poll(feeds=1)
        assert two.recorder.calls - calls == 1
        assert two.feeds.feeds[name].role is Role.POLL_SHARED
        number = an_owned_number(two.world)
        await two.change(action="unassign", phoneNumber=number)
        await two.poll(feeds=1)
        event = await next_event(on_two)  # the real change, no spurious one before it
        assert (event["kind"], event["previous"]["phoneNumber"]) == ("UNASSIGNED", number)
        await on_two.aclose()


@pytest.mark.redis
async def test_with_redis_down_each_replica_polls_its_own_feeds_then_returns_to_the_lease() -> None:
    redis = RestartableRedis()
    try:
        async with two_replicas(redis.url) as (one, two, _first):
            on_one = await one.subscribe()
            assert (await next_event(on_one))["kind"] == "SYNCED"
            on_two = await two.subscribe()
            assert (await next_event(on_two))["kind"] == "SYNCED"
            (name,) = one.feeds.feeds
            feeds = (one.feeds.feeds[name], two.feeds.feeds[name])

            async def changed_once(number: str, kind: str) -> None:
                for stream in (on_one, on_two):  # the next event: nothing replayed before it
                    event = await next_event(stream)
                    entry = event["number"] or event["previous"]
                    assert (event["kind"], entry["phoneNumber"]) == (kind, number)

            first_number, second_number, third_number = (
                an_owned_number(one.world, skip) for skip in range(3)
            )
            await one.change(action="unassign", phoneNumber=first_number)
            await one.poll(feeds=2)
            await changed_once(first_number, "UNASSIGNED")

            # Redis goes away: neither feed goes silent; each replica polls on its own.
            redis.stop()
            calls = one.recorder.calls
            await one.poll(feeds=2)
            assert one.recorder.calls - calls == 2
            assert {feed.role for feed in feeds} == {Role.POLL_LOCAL}
            metrics = one.feeds.metrics
            assert metrics is not None
            assert 'gateway_change_feeds{role="local"} 1.0' in metrics.render().decode()
            await one.change(action="assign", phoneNumber=first_number)
            await one.poll(feeds=2)
            await changed_once(first_number, "ASSIGNED")

            # Redis comes back, empty. A change made meanwhile reaches each subscriber once,
            # whichever replica takes the lease, and the feed is shared again.
            redis.restart()
            await eventually(
                lambda: (
                    one.feeds.coordination.relay_connected
                    and two.feeds.coordination.relay_connected
                ),
                "both relays reconnected",
            )
            await one.change(action="unassign", phoneNumber=second_number)
            calls = one.recorder.calls
            await one.poll(feeds=2)
            await changed_once(second_number, "UNASSIGNED")
            assert one.recorder.calls - calls == 1
            assert {feed.role for feed in feeds} == {Role.POLL_SHARED, Role.RELAY}

            await one.change(action="unassign", phoneNumber=third_number)
            await one.poll(feeds=2)
            await changed_once(third_number, "UNASSIGNED")
            assert one.recorder.calls - calls == 2  # one poller's worth again
            for _ in range(3):
                await one.poll(feeds=2)
            unread = [s for feed in feeds for s in feed.subscribers if s._pending]
            assert unread == []  # unchanged data, shared again: nothing spurious
            await on_one.aclose()
            await on_two.aclose()
    finally:
        redis.stop()


# --- review of issue 21: consistency, a poisoned relay, lease holders, log hygiene ----------


class MutateBeforeSecondPage(httpx.AsyncBaseTransport):
    """Passes requests on; once armed, runs ``mutate`` (a change to the world) before the
    next request for a page past the first, so the change lands between two page fetches of
    one poll."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.mutate: Any = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.mutate is not None and request.url.params.get("start"):
            mutate, self.mutate = self.mutate, None
            await mutate()
        return await self.inner.handle_async_request(request)


def pending_events(h: Harness) -> list[Any]:
    return [s._pending for feed in h.feeds.feeds.values() for s in feed.subscribers if s._pending]


async def test_an_entry_removed_between_two_page_fetches_throws_the_poll_away_not_a_false_pair() -> (
    None
):
    # 40 a page: a poll of the feed's 20,000 entries may take 500 calls, which the cost
    # estimate prices (25,050), above the default limit.
    async with harness(max_page_size=40, max_cost=100_000) as h:
        gate = MutateBeforeSecondPage(h.recorder.inner)  # type: ignore[arg-type]
        h.recorder.inner = gate
        stream = await h.subscribe()
        assert (await next_event(stream))["kind"] == "SYNCED"
        assert h.recorder.calls > 1  # the baseline took several pages
        # An entry on the first page goes while the poll is between its first two pages:
        # every later offset shifts by one, so a walk by offset alone skips an entry.
        removed = next(e.phone_number for e in h.world.demo_org.entries[:20] if e.phone_number)
        assert removed is not None
        gate.mutate = lambda: h.change(action="remove", phoneNumber=removed)
        calls = h.recorder.calls
        await h.poll()
        assert gate.mutate is None  # the change happened mid-poll
        assert h.recorder.calls - calls == 2  # thrown away at the second page
        assert pending_events(h) == []  # no diff of a walk that is not one state
        await h.poll()
        event = await next_event(stream)
        assert (event["kind"], event["previous"]["phoneNumber"]) == ("REMOVED", removed)
        for _ in range(3):
            await h.poll()
        assert pending_events(h) == []  # no false REMOVED/ADDED pair of a skipped entry
        metrics = h.feeds.metrics
        assert metrics is not None
        assert 'gateway_change_feed_polls_total{outcome="inconsistent"} 1.0' in (
            metrics.render().decode()
        )
        await stream.aclose()


def raw_message(**fields: Any) -> bytes:
    message = {
        "at": 1.0,
        "synced": False,
        "changes": [],
        "end": None,
        "base": None,
        "id": None,
        "origin": "another-replica",
        "epoch": "another-replica:lease",
        "seq": 1,
    }
    message.update(fields)
    return orjson.dumps(message)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        raw_message(at="soon"),
        raw_message(changes=[{"kind": "ADDED", "after": 5, "before": None}]),
        raw_message(changes=[{"kind": "REMOVED", "after": None, "before": None}]),
        raw_message(changes=[{"kind": "EXPLODED", "after": {}, "before": {}}]),
        raw_message(changes=["a change"]),
        raw_message(end={"extensions": {"code": "FORBIDDEN"}}),
        raw_message(end="over"),
        raw_message(base=7),
        raw_message(origin=None),
        raw_message(epoch=None),
        raw_message(seq="2"),
        raw_message(seq=True),
    ],
)
def test_a_message_that_is_not_whole_is_rejected_at_decode(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(raw)


def test_an_end_with_a_code_this_replica_does_not_know_is_internal_server_error() -> None:
    end = {"message": "A newer replica's error.", "extensions": {"code": "SOMETHING_NEW"}}
    decoded = decode_message(raw_message(end=end))
    assert decoded.end is not None
    assert decoded.end["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    error = FeedEnded("A newer replica's error.", {"code": "SOMETHING_NEW"})
    assert error.code.value == error.extensions["code"] == "INTERNAL_SERVER_ERROR"


def test_the_feed_name_is_an_hmac_under_the_secret() -> None:
    from gateway.domain.arguments import numbers_query
    from gateway.schema.types import PhoneNumberFilter

    query = numbers_query(None, None, None)
    one, other = feed_name(b"a" * 32, "caller", query), feed_name(b"b" * 32, "caller", query)
    assert one != other
    assert feed_name(b"a" * 32, "caller", query) == one
    # Every part of the feed's identity is in its name: the caller, the org, the filter.
    assert feed_name(b"a" * 32, "another caller", query) != one
    assert feed_name(b"a" * 32, "caller", numbers_query("org-2", None, None)) != one
    filtered = numbers_query(None, PhoneNumberFilter(available=True), None)
    assert feed_name(b"a" * 32, "caller", filtered) != one


def sealed(name: str, payload: bytes) -> bytes:
    """A message as a replica holding the secret would publish it on ``name``'s channel."""
    return seal(channel_of(name), payload, SECRET.encode())


async def current_epoch(redis: Redis, name: str) -> str:
    """The epoch of the lease held on ``name`` (what its holder's messages carry)."""
    epoch = open_lease(lease_key(name), await redis.get(lease_key(name)), SECRET.encode())
    assert epoch is not None
    return epoch


@pytest.mark.redis
async def test_malformed_relayed_messages_never_stop_the_relay(redis_server: Any) -> None:
    from structlog.testing import capture_logs

    async with two_replicas(redis_server.url) as (one, two, _first):
        on_one = await one.subscribe()
        assert (await next_event(on_one))["kind"] == "SYNCED"
        on_two = await two.subscribe()
        assert (await next_event(on_two))["kind"] == "SYNCED"
        other_feed = await two.subscribe(variables={"filter": {"state": "ACTIVE"}})
        assert (await next_event(other_feed))["kind"] == "SYNCED"
        watched = next(n for n, f in two.feeds.feeds.items() if f.role is Role.RELAY)
        ended = next(n for n in two.feeds.feeds if n != watched)
        relay = two.feeds.feeds[watched]
        publisher = Redis.from_url(redis_server.url)
        try:
            with capture_logs() as logs:
                epoch = await current_epoch(publisher, watched)
                for raw in (
                    b"\xff garbage",
                    b"\xff garbage",
                    # Sealed (a replica of a newer format), from the lease held, following
                    # what the relay knows: a feed that took it would apply it.
                    sealed(
                        watched,
                        raw_message(
                            base=relay.seen_id,
                            id="next",
                            epoch=epoch,
                            seq=10_000,
                            changes=[{"kind": "ADDED", "after": 5, "before": None}],
                        ),
                    ),
                ):
                    await publisher.publish(channel_of(watched), raw)
                # A newer replica's end, mid rolling deploy: its feed ends with a contract
                # code; the relay lives on.
                end = {"message": "Gone.", "extensions": {"code": "SOMETHING_NEW"}}
                ending = raw_message(end=end, epoch=await current_epoch(publisher, ended))
                await publisher.publish(channel_of(ended), sealed(ended, ending))
                error = await next_error(other_feed)
                assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        finally:
            await publisher.aclose()
        rejected = [line for line in logs if line["event"] == "change_feed_message_rejected"]
        # Each replica with the feed hears the channel: once per kind on each, not once per
        # message (the other feed's channel is heard by the one replica that has it).
        assert len(rejected) == 4
        assert len({line["reason"] for line in rejected}) == 2
        number = an_owned_number(one.world)
        await one.change(action="unassign", phoneNumber=number)
        await one.poll(feeds=2)
        for stream in (on_one, on_two):  # the next event: the real change, nothing before it
            event = await next_event(stream)
            assert (event["kind"], event["previous"]["phoneNumber"]) == ("UNASSIGNED", number)
        assert two.feeds.coordination.relay_connected
        await on_one.aclose()
        await on_two.aclose()


@pytest.mark.redis
async def test_a_stopping_feed_never_releases_the_lease_of_its_successor_on_the_same_replica(
    redis_server: Any,
) -> None:
    async with harness(redis_url=redis_server.url, cache_key_secret=SECRET) as h:
        coordination = h.feeds.coordination
        original_release = coordination.release
        let_go = asyncio.Event()
        released = asyncio.Event()

        async def held_release(name: str, instance: str) -> None:
            await let_go.wait()
            await original_release(name, instance)
            released.set()

        coordination.release = held_release  # type: ignore[method-assign]
        first = await h.subscribe()
        assert (await next_event(first))["kind"] == "SYNCED"
        (name,) = h.feeds.feeds
        redis = Redis.from_url(redis_server.url)
        try:
            # The last subscriber leaves: the feed stops, its release held up (a slow Redis)
            # long enough for its lease to expire ...
            await first.aclose()
            await redis.delete(lease_key(name))
            # ... and a new subscriber arrives at once: a new feed of the same name takes
            # the free lease.
            second = await h.subscribe()
            assert (await next_event(second))["kind"] == "SYNCED"
            successor = h.feeds.feeds[name]
            assert successor.role is Role.POLL_SHARED
            let_go.set()
            await released.wait()  # the stopped feed let go of its lease, not of this one
            assert await redis.exists(lease_key(name)) == 1
            calls = h.recorder.calls
            await h.poll()
            assert h.recorder.calls - calls == 1
            assert successor.role is Role.POLL_SHARED
        finally:
            await redis.aclose()
        await second.aclose()


async def test_the_subscription_log_line_filters_the_client_name_as_the_request_log_does() -> None:
    from structlog.testing import capture_logs

    async with harness() as h:
        with capture_logs() as logs:
            schema = h.schema
            sent = "admin\x01console " + "x" * 100
            context = h.context("demo-admin", **{"apollographql-client-name": sent})
            stream = await schema.subscribe(WATCH, context_value=context)
            assert (await next_event(stream))["kind"] == "SYNCED"
            await stream.aclose()
        (ended,) = [line for line in logs if line["event"] == "subscription_ended"]
        assert ended["client_name"] == ("adminconsole " + "x" * 100)[:64]

"""Change-feed coordination across replicas, as issue 27 found it wanting, against a real
``redis-server``: a poll longer than its lease, a replica that lost its lease, Redis write
access without the secret (forged, moved and replayed messages, a written lease key), and a
shutdown that must not wait on a stuck poll or a stalled Redis.

Time is the stepped clock's (a poll happens when the test steps it), except where Redis's own
clock is the point: a lease expires by Redis's clock, so the slow-poll test lets real time
pass for it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from gateway.changes.codec import FeedMessage, SharedSnapshot, open_lease, open_message
from gateway.changes.coordination import (
    RedisCoordination,
    Role,
    channel_of,
    lease_key,
    snapshot_key,
)
from gateway.domain.changes import EntryChange, PhoneNumberChangeKind
from tests.conftest import eventually
from tests.test_change_feed import (
    SECRET,
    Harness,
    an_owned_number,
    current_epoch,
    harness,
    lease_gone,
    next_error,
    next_event,
    pending_events,
    two_replicas,
)

pytestmark = pytest.mark.redis

BOUND = 15.0  # seconds: only a backstop against a hang, never a measured time


class HeldRequests(httpx.AsyncBaseTransport):
    """Passes requests on; while armed, holds each one until ``release`` (a slow upstream).
    With ``deaf``, a held request ignores its cancellation, as a library that swallows one
    would."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, deaf: bool = False) -> None:
        self.inner = inner
        self.deaf = deaf
        self.armed = False
        self.held = 0
        self.cancellations_ignored = 0
        self._gate = asyncio.Event()

    def arm(self) -> None:
        self.armed = True
        self._gate = asyncio.Event()

    def release(self) -> None:
        self.armed = False
        self._gate.set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed:
            self.held += 1
            while True:
                try:
                    await self._gate.wait()
                    break
                except asyncio.CancelledError:
                    if not self.deaf:
                        raise
                    self.cancellations_ignored += 1
        return await self.inner.handle_async_request(request)


def hold_upstream(h: Harness, *, deaf: bool = False) -> HeldRequests:
    held = HeldRequests(h.recorder.inner, deaf=deaf)  # type: ignore[arg-type]
    h.recorder.inner = held
    return held


async def step(h: Harness, feeds: int) -> None:
    """Let ``feeds`` sleeping feeds poll once (without waiting for them to finish)."""
    await eventually(lambda: h.clock.sleeping >= feeds, "the feeds wait for their poll")
    h.clock.step()


def roles(*replicas: Harness) -> dict[Role | None, Harness]:
    (name,) = replicas[0].feeds.feeds
    return {h.feeds.feeds[name].role: h for h in replicas}


# --- the lease: a heartbeat while a poll runs, and fenced writes ---------------------------


async def test_a_poll_that_outlasts_its_lease_still_delivers_on_every_replica_once(
    redis_server: Any,
) -> None:
    lease = 0.5
    async with two_replicas(redis_server.url) as (one, two, _first):
        for h in (one, two):
            h.feeds.lease = lease
        on_one = await one.subscribe()
        assert (await next_event(on_one))["kind"] == "SYNCED"
        on_two = await two.subscribe()
        assert (await next_event(on_two))["kind"] == "SYNCED"
        (name,) = one.feeds.feeds
        holder = roles(one, two)[Role.POLL_SHARED]
        number = an_owned_number(one.world)
        await one.change(action="unassign", phoneNumber=number)
        slow = hold_upstream(one)  # the replicas share one upstream transport
        slow.arm()
        await step(one, feeds=2)
        await eventually(lambda: slow.held == 1, "the holder's poll is under way")
        # The poll takes three leases' time, by Redis's clock (which expires the lease); the
        # holder's heartbeat keeps the lease all along.
        await asyncio.sleep(3 * lease)
        redis = Redis.from_url(redis_server.url)
        try:
            assert not await lease_gone(redis, name)
        finally:
            await redis.aclose()
        slow.release()
        await eventually(lambda: one.clock.sleeping >= 2, "the slow poll ended")
        # Committed: the holder told its own subscribers at once, the other replica relays.
        assert pending_events(holder), "the slow poll's commit was refused"
        for stream in (on_one, on_two):
            event = await next_event(stream)
            assert (event["kind"], event["previous"]["phoneNumber"]) == ("UNASSIGNED", number)
        for _ in range(2):  # once: nothing more follows
            await one.poll(feeds=2)
        assert pending_events(one) == pending_events(two) == []
        assert roles(one, two)[Role.POLL_SHARED] is holder
        await on_one.aclose()
        await on_two.aclose()


@asynccontextmanager
async def coordinations(url: str, count: int) -> AsyncIterator[list[RedisCoordination]]:
    made = [
        RedisCoordination(Redis.from_url(url), poll_interval=1.0, secret=SECRET.encode())
        for _ in range(count)
    ]
    try:
        yield made
    finally:
        for coordination in made:
            await coordination.close()


async def test_a_replica_that_lost_its_lease_can_neither_commit_nor_end_nor_hand_over(
    redis_server: Any,
) -> None:
    name = "f" * 32
    heard: list[FeedMessage | None] = []
    async with coordinations(redis_server.url, 5) as (ender, committer, releaser, holder, relay):
        await relay.start(lambda _name, message: heard.append(message))
        redis = Redis.from_url(redis_server.url)
        try:
            # Each of three replicas held the lease and lost it (it lapsed while the replica
            # could not reach Redis); none has noticed yet. Then another takes the feed over
            # and commits its baseline.
            for lost in (ender, committer, releaser):
                assert await lost.hold(name, "lost", 5.0) is Role.POLL_SHARED
                await redis.delete(lease_key(name))
            assert await holder.hold(name, "holder", 5.0) is Role.POLL_SHARED
            assert await relay.hold(name, "relay", 5.0) is Role.RELAY
            baseline = FeedMessage(1.0, synced=True, snapshot_id="new")
            assert await holder.commit(name, "holder", SharedSnapshot("new", {}), baseline)
            await eventually(lambda: len(heard) == 1, "the relay heard the baseline")
            token = await redis.get(lease_key(name))

            end = {"message": "Gone.", "extensions": {"code": "FORBIDDEN"}}
            assert not await ender.end(name, "lost", FeedMessage(2.0, end=end))
            entry = {"phoneNumber": "+19995550199"}
            added = EntryChange(PhoneNumberChangeKind.ADDED, entry, None)
            stale = FeedMessage(3.0, changes=[added], base="new", snapshot_id="old")
            assert not await committer.commit(name, "lost", SharedSnapshot("old", {}), stale)
            await releaser.release(name, "lost")

            # The new holder's snapshot and lease stand, and the relay heard nothing from the
            # lost replicas before the holder's next message.
            shared = await holder.load(name)
            assert shared is not None
            assert shared.snapshot_id == "new"
            assert await redis.get(lease_key(name)) == token
            assert await redis.pttl(lease_key(name)) > 0
            later = FeedMessage(4.0, changes=[added], base="new", snapshot_id="next")
            assert await holder.commit(name, "holder", SharedSnapshot("next", {}), later)
            await eventually(lambda: len(heard) == 2, "the relay heard the next message")
            assert [m.snapshot_id if m else None for m in heard] == ["new", "next"]
            # The holder itself can end the feed: snapshot deleted, lease let go of.
            assert await holder.end(name, "holder", FeedMessage(5.0, end=end))
            assert await redis.exists(snapshot_key(name), lease_key(name)) == 0
        finally:
            await redis.aclose()


# --- Redis write access without the secret ------------------------------------------------


def forged(**fields: Any) -> bytes:
    """A message as someone without the secret would publish it: the old format, plain."""
    message = {
        "at": 1.0,
        "synced": False,
        "changes": [],
        "end": None,
        "base": None,
        "id": "forged",
        "origin": "attacker",
        "epoch": "attacker:lease",
        "seq": 10**9,
    }
    message.update(fields)
    return orjson.dumps(message)


@asynccontextmanager
async def listening(url: str, name: str) -> AsyncIterator[Any]:
    """A pub/sub connection subscribed to ``name``'s channel (the subscription confirmed)."""
    client = Redis.from_url(url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel_of(name))
        confirmed = await pubsub.get_message(timeout=BOUND)
        assert confirmed is not None
        assert confirmed["type"] == "subscribe"
        yield pubsub
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def next_published(pubsub: Any) -> bytes:
    message = await pubsub.get_message(timeout=BOUND)
    assert message is not None
    assert message["type"] == "message", message
    data: bytes = message["data"]
    return data


async def publish(url: str, name: str, *messages: bytes) -> None:
    redis = Redis.from_url(url)
    try:
        for message in messages:
            await redis.publish(channel_of(name), message)
    finally:
        await redis.aclose()


async def a_real_change_is_the_next_event(one: Harness, streams: list[Any], skip: int = 0) -> None:
    """Make a change, poll, and check it is every stream's next event (nothing before it)."""
    number = an_owned_number(one.world, skip)
    calls = one.recorder.calls
    await one.change(action="unassign", phoneNumber=number)
    await one.poll(feeds=2)
    assert one.recorder.calls > calls, "nobody polled the feed"
    for stream in streams:
        event = await next_event(stream)
        assert (event["kind"], event["previous"]["phoneNumber"]) == ("UNASSIGNED", number)


async def test_forged_changes_and_a_forged_end_reach_no_subscriber(redis_server: Any) -> None:
    from gateway.data.guarded_redis import seal

    async with two_replicas(redis_server.url) as (one, two, _first):
        streams = [await one.subscribe(), await two.subscribe()]
        for stream in streams:
            assert (await next_event(stream))["kind"] == "SYNCED"
        (name,) = one.feeds.feeds
        seen_id = one.feeds.feeds[name].seen_id
        entry = {"phoneNumber": "+19995550100", "location": {"id": "evil"}, "state": "ACTIVE"}
        flood = [{"kind": "ADDED", "after": entry, "before": None}] * 5000
        # Following what every replica knows, under the lease held (its epoch is no secret:
        # anyone who reads Redis sees it), so a replica that took it would apply it.
        redis = Redis.from_url(redis_server.url)
        try:
            epoch = await current_epoch(redis, name)
        finally:
            await redis.aclose()
        plain = forged(base=seen_id, changes=flood, epoch=epoch)
        wrong_secret = seal(channel_of(name), plain, b"a guessed secret")
        phishing = {
            "message": "Your Webex session expired: sign in at https://evil.example/login",
            "extensions": {"code": "UNAUTHENTICATED"},
        }
        await publish(
            redis_server.url, name, plain, wrong_secret, forged(end=phishing, epoch=epoch)
        )
        await a_real_change_is_the_next_event(one, streams)
        await one.poll(feeds=2)
        assert pending_events(one) == pending_events(two) == []
        for stream in streams:
            await stream.aclose()


async def test_another_feeds_message_never_reaches_a_location_admins_feed(
    redis_server: Any,
) -> None:
    async with two_replicas(redis_server.url) as (one, two, _first):
        admins = [await one.subscribe("demo-admin"), await two.subscribe("demo-admin")]
        for stream in admins:
            assert (await next_event(stream))["kind"] == "SYNCED"
        (admin_feed,) = one.feeds.feeds
        local = [
            await one.subscribe("demo-location-admin"),
            await two.subscribe("demo-location-admin"),
        ]
        for stream in local:
            assert (await next_event(stream))["kind"] == "SYNCED"
        (local_feed,) = set(one.feeds.feeds) - {admin_feed}
        own_location = one.world.demo_org.location_ids[0]
        elsewhere = next(
            e.phone_number
            for e in one.world.demo_org.entries
            if e.location_id != own_location and e.phone_number and e.owner_id
        )
        mine = next(
            e.phone_number
            for e in one.world.demo_org.entries
            if e.location_id == own_location and e.phone_number and e.owner_id
        )

        # Another location's change, as published on the admin's channel.
        async with listening(redis_server.url, admin_feed) as pubsub:
            await one.change(action="unassign", phoneNumber=elsewhere)
            await one.poll(feeds=4)
            captured = await next_published(pubsub)
        for stream in admins:
            assert (await next_event(stream))["previous"]["phoneNumber"] == elsewhere

        # Published on the location admin's channel as it is, and rewritten to follow what the
        # location admin's feed knows, under its lease (so a replica that took it would apply
        # it).
        admin_message = open_message(channel_of(admin_feed), captured, SECRET.encode())
        assert admin_message.base is not None
        local_base = one.feeds.feeds[local_feed].seen_id
        assert local_base is not None
        redis = Redis.from_url(redis_server.url)
        try:
            local_epoch = await current_epoch(redis, local_feed)
        finally:
            await redis.aclose()
        rewritten = captured.replace(admin_message.base.encode(), local_base.encode()).replace(
            admin_message.epoch.encode(), local_epoch.encode()
        )
        await publish(redis_server.url, local_feed, captured, rewritten)

        # The location admin's next event is their own location's change, not the other's.
        await one.change(action="unassign", phoneNumber=mine)
        await one.poll(feeds=4)
        for stream in local:
            event = await next_event(stream)
            assert (event["kind"], event["previous"]["phoneNumber"]) == ("UNASSIGNED", mine)
        for stream in admins:
            assert (await next_event(stream))["previous"]["phoneNumber"] == mine
        for stream in [*admins, *local]:
            await stream.aclose()


async def test_a_replayed_end_ends_no_later_feed(redis_server: Any) -> None:
    async with two_replicas(redis_server.url) as (one, two, _first):
        streams = [await one.subscribe(), await two.subscribe()]
        for stream in streams:
            assert (await next_event(stream))["kind"] == "SYNCED"
        (name,) = one.feeds.feeds
        async with listening(redis_server.url, name) as pubsub:
            # A genuine end: the upstream refuses the token once.
            await one.simulator.post(
                "/_simulator/faults", json={"rules": [{"status": 403, "count": 1}]}
            )
            await step(one, feeds=2)  # the feed ends: nobody sleeps after this poll
            for stream in streams:
                assert (await next_error(stream))["extensions"]["code"] == "FORBIDDEN"
            ending = await next_published(pubsub)
        assert open_message(channel_of(name), ending, SECRET.encode()).end is not None

        # The token works again; new subscriptions start the feed anew on both replicas.
        streams = [await one.subscribe(), await two.subscribe()]
        for stream in streams:
            assert (await next_event(stream))["kind"] == "SYNCED"
        await publish(redis_server.url, name, ending, ending)  # the old end, again
        await a_real_change_is_the_next_event(one, streams)
        for stream in streams:
            await stream.aclose()


@pytest.mark.parametrize("written", ["garbage", "a holder's token without expiry"])
async def test_a_value_written_to_the_lease_key_does_not_silence_the_feed(
    redis_server: Any, written: str
) -> None:
    from structlog.testing import capture_logs

    async with two_replicas(redis_server.url) as (one, two, first):
        on_one = await one.subscribe()
        assert (await next_event(on_one))["kind"] == "SYNCED"
        on_two = await two.subscribe()
        assert (await next_event(on_two))["kind"] == "SYNCED"
        (name,) = one.feeds.feeds
        redis = Redis.from_url(redis_server.url)
        try:
            if written == "garbage":
                await redis.set(lease_key(name), b"held by nobody, for ever")
                streams = [on_one, on_two]
                watching = one
            else:
                # The first replica (the holder) stops and lets go; its token is written
                # back with no expiry, as if its holder lived on.
                assert roles(one, two)[Role.POLL_SHARED] is one
                token = await redis.get(lease_key(name))
                assert isinstance(token, bytes)
                assert open_lease(lease_key(name), token, SECRET.encode()) is not None
                await on_one.aclose()
                await first.__aexit__(None, None, None)
                await redis.set(lease_key(name), token)
                streams, watching = [on_two], two
            with capture_logs() as logs:
                number = an_owned_number(one.world)
                calls = one.recorder.calls
                await one.change(action="unassign", phoneNumber=number)
                await watching.poll(feeds=len(streams))
                assert one.recorder.calls > calls, "nobody polled the feed"
            for stream in streams:
                event = await next_event(stream)
                assert (event["kind"], event["previous"]["phoneNumber"]) == ("UNASSIGNED", number)
            # Logged once by each replica that found it (both may, polling at one instant).
            rejected = [line["event"] for line in logs if "lease" in line["event"]]
            assert set(rejected) == {"change_feed_lease_rejected"}
            assert len(rejected) <= len(streams)
            taken = open_lease(lease_key(name), await redis.get(lease_key(name)), SECRET.encode())
            assert taken is not None
            assert await redis.pttl(lease_key(name)) > 0
        finally:
            await redis.aclose()
        for stream in streams:
            await stream.aclose()


# --- shutdown: bounded, whatever the poll or Redis does -------------------------------------


async def test_close_lets_go_of_the_lease_with_a_poll_in_flight(redis_server: Any) -> None:
    async with harness(redis_url=redis_server.url, cache_key_secret=SECRET) as h:
        stream = await h.subscribe()
        assert (await next_event(stream))["kind"] == "SYNCED"
        (name,) = h.feeds.feeds
        held = hold_upstream(h)
        held.arm()
        await step(h, feeds=1)
        await eventually(lambda: held.held == 1, "a poll is under way")
        await asyncio.wait_for(h.feeds.close(), BOUND)
        redis = Redis.from_url(redis_server.url)
        try:
            assert await lease_gone(redis, name)  # handed over, not left to expire
        finally:
            await redis.aclose()
        held.release()


@pytest.mark.parametrize("deaf_step", ["hold", "poll", "sleep"])
async def test_close_returns_when_a_step_ignores_its_cancellation_and_the_feed_stops_after_it(
    redis_server: Any, deaf_step: str
) -> None:
    async with harness(redis_url=redis_server.url, cache_key_secret=SECRET) as h:
        stream = await h.subscribe()
        assert (await next_event(stream))["kind"] == "SYNCED"
        (name,) = h.feeds.feeds
        feed = h.feeds.feeds[name]
        # One step of the feed's loop swallows its cancellation, as a library does whose own
        # timeout fires at the same instant; then it comes back at last.
        gate, entered = asyncio.Event(), asyncio.Event()
        ignored = 0

        async def deaf() -> None:
            nonlocal ignored
            entered.set()
            while not gate.is_set():
                try:
                    await gate.wait()
                except asyncio.CancelledError:
                    ignored += 1

        async def deaf_hold(name: str, instance: str, ttl: float) -> Role:
            await deaf()
            return Role.POLL_SHARED

        async def deaf_poll() -> list[Any]:
            await deaf()
            return []

        async def deaf_sleep(seconds: float) -> None:
            await deaf()

        if deaf_step == "hold":
            h.feeds.coordination.hold = deaf_hold  # type: ignore[method-assign]
        elif deaf_step == "poll":
            feed._poll = deaf_poll
        else:
            h.clock.sleep = deaf_sleep  # type: ignore[method-assign]
        await step(h, feeds=1)  # the next interval: hold, poll, sleep
        try:
            await asyncio.wait_for(entered.wait(), BOUND)
            h.feeds.close_timeout = 0.2
            await asyncio.wait_for(h.feeds.close(), BOUND)
            assert ignored >= 1
            calls = h.recorder.calls
        finally:
            gate.set()
        # The step returns at last, and the stopped feed stops there: no poll after it.
        assert feed.task is not None
        await asyncio.wait([feed.task], timeout=BOUND)
        assert feed.task.done()
        assert h.recorder.calls == calls


async def test_close_returns_with_redis_stalled(redis_server: Any) -> None:
    async with harness(redis_url=redis_server.url, cache_key_secret=SECRET) as h:
        stream = await h.subscribe()
        assert (await next_event(stream))["kind"] == "SYNCED"
        other = await h.subscribe(variables={"filter": {"state": "ACTIVE"}})
        assert (await next_event(other))["kind"] == "SYNCED"
        # Redis stops answering (its process is paused: connections stay open, no replies).
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            await step(h, feeds=2)  # polls begin: their lease renewals hang
            await asyncio.wait_for(h.feeds.close(), BOUND)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert not h.feeds.feeds

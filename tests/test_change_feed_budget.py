"""What change feeds hold in memory (issue 27: one caller's ten feeds over a 20,000-entry org
pinned 0.8 GB): each feed's snapshot is charged to its caller, bounded per caller and in total,
refused with an error that says which bound and what to do, and let go of when it closes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from typing import Any

import pytest

from gateway.changes.budget import SnapshotBudget, entry_bytes, snapshot_bytes
from gateway.changes.coordination import Role
from gateway.changes.feed import ChangeFeed
from tests.test_change_feed import (
    Harness,
    an_owned_number,
    harness,
    next_error,
    next_event,
    two_replicas,
)

BOUND = 15.0  # seconds: only a backstop against a hang


def feed_of(h: Harness, **match: Any) -> ChangeFeed:
    (feed,) = [
        f for f in h.feeds.feeds.values() if all(getattr(f, k) == v for k, v in match.items())
    ]
    return feed


async def test_a_caller_at_its_bound_is_refused_a_new_feed_at_once_and_may_join_a_running_one() -> (
    None
):
    async with harness() as h:
        first = await h.subscribe()
        assert (await next_event(first))["kind"] == "SYNCED"
        (feed,) = h.feeds.feeds.values()
        held = h.feeds.held_bytes
        assert held == snapshot_bytes(feed.seen or {}) > 0
        assert h.feeds.budget.held_by(feed.caller) == held
        h.feeds.budget.per_caller = held  # the caller holds all it may

        calls = h.recorder.calls
        refused = await h.subscribe(variables={"filter": {"state": "ACTIVE"}})
        error = await next_error(refused)
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] >= 1
        assert "GATEWAY_CHANGES_MAX_BYTES_PER_CALLER" in error["message"]
        assert "end one of its subscriptions" in error["message"]
        assert h.recorder.calls == calls  # refused before any upstream call

        joined = await h.subscribe()  # the running feed: its entries are held already
        assert (await next_event(joined))["kind"] == "SYNCED"
        other_caller = await h.subscribe("demo-readonly")  # a bound of its own
        assert (await next_event(other_caller))["kind"] == "SYNCED"
        assert len(h.feeds.feeds) == 2
        for stream in (first, joined, other_caller):
            await stream.aclose()


async def test_a_feed_that_does_not_fit_beside_its_callers_others_ends_rate_limited() -> None:
    async with harness() as h:
        first = await h.subscribe()
        assert (await next_event(first))["kind"] == "SYNCED"
        (feed,) = h.feeds.feeds.values()
        held = h.feeds.held_bytes
        h.feeds.budget.per_caller = held + 1024  # room for a tiny feed, not for this one
        second = await h.subscribe(variables={"filter": {"state": "ACTIVE"}})
        error = await next_error(second)  # known once its first poll brought its entries
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert "end another subscription" in error["message"]
        assert h.feeds.budget.held_by(feed.caller) == held  # the refused feed's is dropped
        await asyncio.wait_for(first.aclose(), BOUND)


async def test_a_feed_whose_entries_alone_exceed_the_bound_asks_for_a_narrower_filter() -> None:
    async with harness(changes_max_bytes_per_caller=1024) as h:
        stream = await h.subscribe()
        error = await next_error(stream)
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert "narrower filter" in error["message"]
        assert "GATEWAY_CHANGES_MAX_BYTES_PER_CALLER" in error["message"]
        assert h.feeds.held_bytes == 0


async def test_the_process_bound_refuses_every_callers_new_feeds() -> None:
    async with harness() as h:
        first = await h.subscribe()
        assert (await next_event(first))["kind"] == "SYNCED"
        held = h.feeds.held_bytes
        h.feeds.budget.total = held
        at_once = await h.subscribe("demo-readonly")
        error = await next_error(at_once)
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert "GATEWAY_CHANGES_MAX_BYTES" in error["message"]
        h.feeds.budget.total = held + 1024
        after_its_poll = await h.subscribe("demo-readonly")
        error = await next_error(after_its_poll)
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert "try again later" in error["message"]
        assert h.feeds.held_bytes == held
        await first.aclose()


async def test_the_accounting_returns_to_zero_and_closed_feeds_are_freed() -> None:
    async with harness() as h:
        streams = [
            await h.subscribe("demo-admin"),
            await h.subscribe("demo-admin"),
            await h.subscribe("demo-admin", {"filter": {"state": "ACTIVE"}}),
            await h.subscribe("demo-readonly"),
        ]
        for stream in streams:
            assert (await next_event(stream))["kind"] == "SYNCED"
        feeds = [weakref.ref(feed) for feed in h.feeds.feeds.values()]
        assert len(feeds) == 3
        assert h.feeds.held_bytes == sum(
            snapshot_bytes(feed.seen or {}) for feed in h.feeds.feeds.values()
        )
        number = an_owned_number(h.world)
        await h.change(action="unassign", phoneNumber=number)
        await h.poll(feeds=3)
        for stream in streams:
            assert (await next_event(stream))["kind"] == "UNASSIGNED"
        for stream in streams:
            await stream.aclose()
        await eventually_free(feeds)  # nothing keeps a closed feed, or its snapshot, alive
        assert h.feeds.held_bytes == 0


@pytest.mark.redis
async def test_a_relay_counts_its_snapshot_as_the_poller_does_and_both_let_go(
    redis_server: Any,
) -> None:
    async with two_replicas(redis_server.url) as (one, two, _first):
        on_one = await one.subscribe()
        assert (await next_event(on_one))["kind"] == "SYNCED"
        on_two = await two.subscribe()
        assert (await next_event(on_two))["kind"] == "SYNCED"
        relay = feed_of(two, role=Role.RELAY)
        for skip, action in ((0, "unassign"), (1, "remove")):
            await one.change(action=action, phoneNumber=an_owned_number(one.world, skip))
            await one.poll(feeds=2)
            for stream in (on_one, on_two):
                await next_event(stream)
            # The relay counted each change by its entries alone; the sum is the whole count.
            assert relay.seen is not None
            assert two.feeds.held_bytes == snapshot_bytes(relay.seen) == one.feeds.held_bytes
        feeds = [weakref.ref(relay), weakref.ref(feed_of(one, role=Role.POLL_SHARED))]
        del relay
        await on_one.aclose()
        await on_two.aclose()
        await eventually_free(feeds)
        assert one.feeds.held_bytes == two.feeds.held_bytes == 0


async def eventually_free(feeds: list[weakref.ref[ChangeFeed]]) -> None:
    """Once every feed's loop has ended, nothing holds the feeds any more."""
    tasks: set[asyncio.Task[None]] = set()
    for ref in feeds:
        feed = ref()
        if feed is not None and feed.task is not None:
            tasks.add(feed.task)
        del feed
    if tasks:
        await asyncio.wait(tasks, timeout=BOUND)
    tasks.clear()
    gc.collect()
    assert [ref() for ref in feeds] == [None] * len(feeds)


@pytest.mark.redis
async def test_a_resync_that_returns_after_its_feed_stopped_charges_nothing(
    redis_server: Any,
) -> None:
    async with two_replicas(redis_server.url) as (one, two, _first):
        on_one = await one.subscribe()
        assert (await next_event(on_one))["kind"] == "SYNCED"
        on_two = await two.subscribe()
        assert (await next_event(on_two))["kind"] == "SYNCED"
        relay = feed_of(two, role=Role.RELAY)
        # The relay catches up from the shared snapshot, whose load swallows the cancellation
        # of the feed's stop (as a library may) and returns only after it.
        coordination = two.feeds.coordination
        original_load = coordination.load
        gate, entered, returned = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def deaf_load(name: str) -> Any:
            entered.set()
            while not gate.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await gate.wait()
            try:
                return await original_load(name)
            finally:
                returned.set()  # the resync goes on at once: it catches up in this step

        coordination.load = deaf_load  # type: ignore[method-assign]
        relay.receive(None)  # a message it could not apply: catch up
        await asyncio.wait_for(entered.wait(), BOUND)
        await on_two.aclose()  # its last subscriber leaves: the feed stops
        assert two.feeds.held_bytes == 0
        gate.set()
        await asyncio.wait_for(returned.wait(), BOUND)
        assert two.feeds.held_bytes == 0
        await on_one.aclose()


def test_the_budget_charges_in_place_and_says_which_bound_refused() -> None:
    budget = SnapshotBudget(per_caller=100, total=150, retry_after=30)
    assert budget.charge("feed-1", "alice", 60) is None
    assert budget.charge("feed-1", "alice", 90) is None  # replaces, not adds
    assert (budget.held, budget.held_by("alice")) == (90, 90)
    too_big = budget.charge("feed-2", "alice", 101)
    assert too_big is not None
    assert too_big.code.value == "BAD_USER_INPUT"
    beside = budget.charge("feed-2", "alice", 20)
    assert beside is not None
    assert beside.code.value == "RATE_LIMITED"
    assert budget.charge("feed-3", "bob", 50) is None
    over_total = budget.charge("feed-4", "carol", 20)
    assert over_total is not None
    assert "GATEWAY_CHANGES_MAX_BYTES)" in over_total.message
    for feed in ("feed-1", "feed-2", "feed-3", "feed-4"):
        budget.release(feed)
    assert (budget.held, budget.held_by("alice"), budget.held_by("bob")) == (0, 0, 0)


def test_an_entrys_share_is_what_it_adds_to_its_snapshot() -> None:
    base = {"number:+1": {"phoneNumber": "+1", "state": "ACTIVE"}}
    entry = {"phoneNumber": "+2", "owner": {"id": "é-unicode"}}
    grown = {**base, "number:+2": entry}
    assert snapshot_bytes(grown) - snapshot_bytes(base) == entry_bytes("number:+2", entry)

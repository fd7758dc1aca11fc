"""The change feeds of one process: ``ChangeFeeds.watch`` is what every transport's
``phoneNumberChanges`` subscription runs.

A feed is named by the caller's identity (the HMAC ``Callers`` derives, never the token), the
org and the normalised filter: every subscription with the same three shares one poller, and
one token's poller is never another's. The filter is validated before anything else (the
query's rules, no upstream call); then the limits, per caller and per process, refuse a new
subscription with ``RATE_LIMITED``: the number of subscriptions, and the bytes the caller's
feeds (or all feeds) already hold (``budget``; joining a feed that runs costs nothing more).
The last subscriber to leave stops its feed. ``close`` (the app's shutdown) ends every
subscription cleanly and stops every feed, letting go of their leases, within a bound even
when a poll is under way or Redis stopped answering; each subscription logs one line when it
ends.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import orjson
import structlog
from redis.asyncio import Redis

from gateway.changes.budget import SnapshotBudget
from gateway.changes.codec import FeedMessage
from gateway.changes.coordination import (
    CLOSE_TIMEOUT,
    FeedCoordination,
    LocalCoordination,
    RedisCoordination,
    Role,
    settle,
)
from gateway.changes.feed import ChangeFeed, Subscriber
from gateway.changes.polling import poll_entries
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.data.page_cache import OWN_ORG
from gateway.data.source import CallerNumbers
from gateway.domain.changes import Entry
from gateway.domain.query import FanOutQuery, NumbersQuery
from gateway.domain.records import NumberFilter, PhoneNumberChange
from gateway.errors import GatewayError, RateLimited
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings

log = structlog.get_logger("gateway.changes")

LEASE_POLLS = 1.5  # a feed's lease lasts this many poll intervals unless renewed


def feed_name(secret: bytes, caller: str, query: NumbersQuery | FanOutQuery) -> str:
    """The feed's name in this process and in Redis: an HMAC under the cache-key secret, like
    every other key, so neither the token nor the org and filter can be recovered or tested
    for from a key name. Replicas sharing a Redis share the secret, so they agree on it. A
    fanned-out filter's name is its parts' (the same values in any order: one feed)."""
    params = query.params if isinstance(query, NumbersQuery) else [p.params for p in query.parts]
    material = orjson.dumps(["feed", caller, query.org_id or OWN_ORG, params])
    return hmac.new(secret, material, hashlib.sha256).hexdigest()[:32]


class ChangeFeeds:
    """Every change feed and subscription of this process. One per app (lifespan state)."""

    def __init__(
        self,
        coordination: FeedCoordination,
        *,
        poll_interval: float,
        max_items: int,
        page_size: int,
        max_per_caller: int,
        max_subscriptions: int,
        max_bytes_per_caller: int,
        max_bytes: int,
        lease: float | None = None,
        secret: bytes | None = None,
        clock: Clock = SYSTEM_CLOCK,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.coordination = coordination
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.max_items = max_items
        self.page_size = page_size
        self.max_per_caller = max_per_caller
        self.max_subscriptions = max_subscriptions
        self.lease = lease if lease is not None else poll_interval * LEASE_POLLS
        # Without a configured secret there is no Redis (settings require one with it), so
        # names live in this process only and a random secret serves.
        self._secret = secret or secrets.token_bytes(32)
        self.clock = clock
        self.budget = SnapshotBudget(
            per_caller=max_bytes_per_caller, total=max_bytes, retry_after=poll_interval
        )
        self.feeds: dict[str, ChangeFeed] = {}
        self._by_caller: Counter[str] = Counter()
        self._subscribers: set[Subscriber] = set()
        # Feeds whose poller is still letting go (of its lease): shutdown waits for them.
        self._stopping: set[ChangeFeed] = set()
        self._closed = False
        self.close_timeout = CLOSE_TIMEOUT  # how long shutdown waits for feeds to let go
        if metrics is not None:
            metrics.watch_changes(self)

    @property
    def open_subscriptions(self) -> int:
        return len(self._subscribers)

    def feeds_by_role(self) -> dict[str, int]:
        """Feeds by what this replica does for them now (a feed still starting has no role:
        it counts as polling, which is what it is about to find out)."""
        roles = Counter((feed.role or Role.POLL_SHARED).value for feed in self.feeds.values())
        # Without Redis, polling alone is the normal case: report it as polling.
        if isinstance(self.coordination, LocalCoordination):
            return {Role.POLL_SHARED.value: sum(roles.values())}
        return dict(roles)

    async def start(self) -> None:
        await self.coordination.start(self._deliver)

    def _deliver(self, name: str, message: FeedMessage | None) -> None:
        feed = self.feeds.get(name)
        if feed is not None:
            feed.receive(message)

    @property
    def closed(self) -> bool:
        """Shutdown has begun: a subscription that ends now was ended by the server."""
        return self._closed

    @property
    def held_bytes(self) -> int:
        """The bytes every feed's snapshot holds (as the budget counts them)."""
        return self.budget.held

    async def close(self) -> None:
        """Shutdown: every subscription completes, every poller stops (a poll under way is
        cancelled) and lets go of its lease, so another replica takes its feeds over at its
        next interval. Every wait is bounded: a feed still letting go after ``close_timeout``
        (Redis stalled, a poll that ignores its cancellation) is cut short, and its lease
        expires on its own."""
        self._closed = True
        for subscriber in list(self._subscribers):
            subscriber.end()
        feeds = [*self.feeds.values(), *self._stopping]
        for feed in feeds:
            feed.stop()
        tasks = [task for feed in feeds if (task := feed.task) is not None]
        await settle(tasks, self.close_timeout)
        await self.coordination.close()

    async def watch(
        self,
        numbers: CallerNumbers,
        org_id: str | None,
        flt: NumberFilter | None,
        *,
        client_name: str | None = None,
    ) -> AsyncGenerator[PhoneNumberChange, None]:
        """The subscription: ``SYNCED`` once the baseline is taken, then each change."""
        query = numbers.query(org_id, flt, None)  # BAD_USER_INPUT before anything else
        caller = numbers.caller.identity  # UNAUTHENTICATED before any upstream call
        self._admit(caller)
        subscriber = Subscriber()
        feed = self._feed_for(caller, query, numbers, org_id, flt)  # may refuse: no room
        self._subscribers.add(subscriber)
        self._by_caller[caller] += 1
        started = self.clock.monotonic()
        events = 0
        outcome = "complete"
        try:
            await feed.join(subscriber)
            async for observed_at, changes in subscriber.batches():
                at = datetime.fromtimestamp(observed_at, UTC)
                for change in changes:
                    events += 1
                    if self.metrics is not None:
                        self.metrics.change_feed_events.labels(kind=change.kind.value).inc()
                    yield change.observed(at)
        except GatewayError as error:
            outcome = error.code.value
            raise
        except BaseException:
            outcome = "cancelled"  # the client went away (or the server is stopping it)
            raise
        finally:
            self._subscribers.discard(subscriber)
            self._by_caller[caller] -= 1
            if self._by_caller[caller] <= 0:
                del self._by_caller[caller]
            feed.leave(subscriber)
            log.info(
                "subscription_ended",
                field="phoneNumberChanges",
                feed=feed.name[:12],
                outcome=outcome,
                events=events,
                duration_s=round(self.clock.monotonic() - started, 3),
                client_name=client_name,
            )

    def _admit(self, caller: str) -> None:
        retry = self.poll_interval
        if self._closed:
            raise RateLimited("The gateway is shutting down; subscribe again.", retry_after=1)
        if self._by_caller[caller] >= self.max_per_caller:
            raise RateLimited(
                f"This caller has {self.max_per_caller} open subscriptions, the most allowed "
                "(GATEWAY_MAX_SUBSCRIPTIONS_PER_CALLER); end one before starting another.",
                retry_after=retry,
            )
        if len(self._subscribers) >= self.max_subscriptions:
            raise RateLimited(
                f"The gateway serves {self.max_subscriptions} subscriptions, the most it allows "
                "(GATEWAY_MAX_SUBSCRIPTIONS); try again later.",
                retry_after=retry,
            )

    def _feed_for(
        self,
        caller: str,
        query: NumbersQuery | FanOutQuery,
        numbers: CallerNumbers,
        org_id: str | None,
        flt: NumberFilter | None,
    ) -> ChangeFeed:
        name = feed_name(self._secret, caller, query)
        feed = self.feeds.get(name)
        if feed is not None and not feed.ended:
            return feed  # its entries are held already: joining costs nothing more
        self.budget.admit(caller)

        async def poll() -> list[Entry]:
            # A fresh view each poll: its loader and cache record belong to that poll alone.
            return await poll_entries(
                numbers.refreshing(),
                org_id,
                flt,
                page_size=self.page_size,
                max_items=self.max_items,
            )

        feed = ChangeFeed(
            name,
            poll,
            self.coordination,
            interval=self.poll_interval,
            lease=self.lease,
            clock=self.clock,
            on_stopped=self._forget,
            caller=caller,
            budget=self.budget,
            metrics=self.metrics,
        )
        self.feeds[name] = feed
        feed.start()
        return feed

    def _forget(self, feed: ChangeFeed) -> None:
        if self.feeds.get(feed.name) is feed:
            del self.feeds[feed.name]
        if feed.running:
            self._stopping.add(feed)
            feed.when_stopped(lambda: self._stopping.discard(feed))


def build_change_feeds(
    settings: Settings, *, clock: Clock = SYSTEM_CLOCK, metrics: GatewayMetrics | None = None
) -> ChangeFeeds:
    """The app's feeds: shared through Redis when ``GATEWAY_REDIS_URL`` is set, else local.
    Redis gets its own client here: snapshots are larger and slower than cache entries, and
    the relay holds a connection open for pub/sub."""
    configured = settings.cache_key_secret
    secret = configured.get_secret_value().encode() if configured is not None else None
    coordination: FeedCoordination
    if settings.redis_url is not None:
        if secret is None:  # settings refuse this combination; replicas must seal alike
            raise ValueError("GATEWAY_REDIS_URL needs GATEWAY_CACHE_KEY_SECRET")
        client = Redis.from_url(str(settings.redis_url), socket_connect_timeout=1.0)
        coordination = RedisCoordination(
            client, poll_interval=settings.changes_poll_interval, secret=secret
        )
    else:
        coordination = LocalCoordination()
    return ChangeFeeds(
        coordination,
        poll_interval=settings.changes_poll_interval,
        max_items=settings.changes_max_items,
        page_size=settings.max_page_size,
        max_per_caller=settings.max_subscriptions_per_caller,
        max_subscriptions=settings.max_subscriptions,
        max_bytes_per_caller=settings.changes_max_bytes_per_caller,
        max_bytes=settings.changes_max_bytes,
        secret=secret,
        clock=clock,
        metrics=metrics,
    )

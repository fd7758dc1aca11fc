"""The response cache across requests: per-caller keys, a TTL, single flight, and an optional
shared Redis tier for replicas.

A key is an HMAC-SHA256, under a server secret, of the caller's Authorization value, the org
(or "own org"), and the exact upstream query; so two tokens never share an entry, even in one
org (a location admin sees fewer numbers than a full admin), and no key reveals a token. Only
complete 200 answers are stored (the upstream client raises on anything else, and a partial
page walk never returns). Concurrent misses of one key share one upstream call; a waiter that
goes away does not cancel it for the others. With Redis, entries live there too, behind the
local cache; a Redis that is down or slow is skipped (logged once per outage, counted).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.numbers.query import Fetch, UpstreamPage
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import SpanContext, annotate, span_context, traced

log = structlog.get_logger("gateway.cache")

KEY_PREFIX = "numbers-gateway:v1:"
OWN_ORG = "\x00own-org"
REDIS_OPERATION_TIMEOUT = 0.25  # a slow shared tier must not slow the gateway down

CacheStatus = Literal["hit", "miss", "refresh", "bypass", "stale"]
CacheTier = Literal["local", "redis", "upstream"]


def cache_key(secret: bytes, authorization: str, fetch: Fetch) -> str:
    """The entry's name: nothing in it can be turned back into the token or the query."""
    material = orjson.dumps([authorization, fetch.query.org_id or OWN_ORG, fetch.upstream_params()])
    return KEY_PREFIX + hmac.new(secret, material, hashlib.sha256).hexdigest()


# What one local entry costs beyond its bytes (the key, the slot, dictionary room), so that
# many small entries cannot hide from the byte bound.
ENTRY_OVERHEAD = 512


@dataclass(frozen=True, slots=True)
class CachedPage:
    page: UpstreamPage
    stored_at: float  # this process's monotonic time when the upstream answered

    @staticmethod
    def encode(page: UpstreamPage, stored_at_wall: float) -> bytes:
        """The entry as both tiers store it. Replicas share no monotonic clock, so the entry
        carries the wall time it was stored at; a reader from Redis turns that into an age."""
        return orjson.dumps(
            {
                "items": page.items,
                "count": page.count,
                "has_more": page.has_more,
                "stored_at": stored_at_wall,
            }
        )

    @staticmethod
    def decode_page(raw: bytes) -> tuple[UpstreamPage, float]:
        """The page, and the wall time it was stored at."""
        data = orjson.loads(raw)
        page = UpstreamPage(items=data["items"], count=data["count"], has_more=data["has_more"])
        return page, float(data["stored_at"])

    @classmethod
    def decode(cls, raw: bytes, clock: Clock) -> CachedPage:
        page, stored_at_wall = cls.decode_page(raw)
        age = max(0.0, clock.wall() - stored_at_wall)
        return cls(page=page, stored_at=clock.monotonic() - age)


@dataclass(frozen=True, slots=True)
class _Slot:
    raw: bytes  # the encoded entry: what the byte bound counts is what memory holds
    stored_at: float  # monotonic
    owner: str  # a hash of the caller's credentials, never the token


class LocalTier:
    """The in-process tier: LRU, expiring after ``ttl``, bounded by entries and by bytes,
    with each owner (caller) held to ``owner_share`` of the bytes.

    Entries are kept encoded and decoded on a hit, so the byte bound is what the process
    really holds (decoded pages take several times their JSON size). The owner share keeps
    one token from filling the cache and evicting every other tenant: past its share, a
    caller's own oldest entries go first.
    """

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float],
        owner_share: float = 1.0,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_owner_bytes = max(1, int(max_bytes * owner_share))
        self.clock = clock
        self.size_bytes = 0
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._by_owner: dict[str, OrderedDict[str, None]] = {}
        self._owner_bytes: Counter[str] = Counter()

    def get_raw(self, key: str) -> tuple[bytes, float] | None:
        """The stored bytes and when they were stored, unless expired."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        if self.clock() - slot.stored_at >= self.ttl:
            self._remove(key)
            return None
        self._slots.move_to_end(key)
        self._by_owner[slot.owner].move_to_end(key)
        return slot.raw, slot.stored_at

    def get(self, key: str) -> CachedPage | None:
        found = self.get_raw(key)
        if found is None:
            return None
        page, _ = CachedPage.decode_page(found[0])
        return CachedPage(page=page, stored_at=found[1])

    def set(self, key: str, raw: bytes, stored_at: float, owner: str) -> None:
        size = len(raw) + ENTRY_OVERHEAD
        self._remove(key)
        if size > self.max_owner_bytes:
            return  # larger than a caller's whole share: serve it, don't keep it
        mine = self._by_owner.get(owner)
        while mine and self._owner_bytes[owner] + size > self.max_owner_bytes:
            self._remove(next(iter(mine)))
        while self._slots and (
            self.size_bytes + size > self.max_bytes or len(self._slots) >= self.max_entries
        ):
            self._remove(next(iter(self._slots)))
        self._slots[key] = _Slot(raw, stored_at, owner)
        self._by_owner.setdefault(owner, OrderedDict())[key] = None
        self._owner_bytes[owner] += size
        self.size_bytes += size

    def _remove(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        size = len(slot.raw) + ENTRY_OVERHEAD
        self.size_bytes -= size
        self._owner_bytes[slot.owner] -= size
        owned = self._by_owner[slot.owner]
        del owned[key]
        if not owned:
            del self._by_owner[slot.owner]
            del self._owner_bytes[slot.owner]

    def __len__(self) -> int:
        return len(self._slots)


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """What happened to one upstream ask, for the response's ``extensions.cache``."""

    status: CacheStatus
    tier: CacheTier
    age: float = 0.0


class GuardedRedis:
    """Redis where every failure is a miss: the shared tier speeds the gateway up and never
    breaks it. Each operation is bounded by ``REDIS_OPERATION_TIMEOUT``; an outage is logged
    once (and its end once), and each failure is counted. Shared by the response cache and
    the persisted-query store; the app's lifespan closes it."""

    def __init__(self, client: Redis, metrics: GatewayMetrics | None = None) -> None:
        self.client = client
        self.metrics = metrics
        self.down = False

    async def get(self, key: str) -> bytes | None:
        raw = await self._guard(self.client.get(key))
        return raw if isinstance(raw, bytes) else None

    async def set(self, key: str, value: bytes, *, ttl_ms: int) -> None:
        await self._guard(self.client.set(key, value, px=ttl_ms))

    async def _guard(self, operation: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(REDIS_OPERATION_TIMEOUT):
                result = await operation
        except (RedisError, OSError, TimeoutError) as exc:
            if self.metrics is not None:
                self.metrics.cache_failures.inc()
            if not self.down:
                self.down = True
                log.warning("redis_unavailable", error=type(exc).__name__)
            return None
        if self.down:
            self.down = False
            log.info("redis_recovered")
        return result

    async def close(self) -> None:
        await self.client.aclose()


class RedisTier:
    """The shared tier of the response cache: entries other replicas stored."""

    def __init__(self, redis: GuardedRedis, ttl: float, clock: Clock) -> None:
        self.redis = redis
        self.clock = clock
        self.ttl_ms = max(1, int(ttl * 1000))

    async def get(self, key: str) -> tuple[CachedPage, bytes] | None:
        raw = await self.redis.get(key)
        if raw is None:
            return None
        try:
            return CachedPage.decode(raw, self.clock), raw
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # an entry we cannot read is a miss, not an error

    async def set(self, key: str, encoded: bytes) -> None:
        await self.redis.set(key, encoded, ttl_ms=self.ttl_ms)


class ResponseCache:
    """Looks up, single-flights and stores upstream answers under per-caller keys."""

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        owner_share: float = 1.0,
        secret: bytes | None = None,
        redis: GuardedRedis | None = None,
        metrics: GatewayMetrics | None = None,
        stale_if_error: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ttl = ttl
        self.stale_if_error = stale_if_error if ttl > 0 else 0.0
        # Entries are kept past their TTL for as long as they may still answer on errors.
        kept_for = ttl + self.stale_if_error
        self.secret = secret or secrets.token_bytes(32)
        self.clock = clock
        self.metrics = metrics
        self.local = (
            LocalTier(kept_for, max_entries, max_bytes, clock.monotonic, owner_share)
            if ttl > 0
            else None
        )
        self.shared = RedisTier(redis, kept_for, clock) if redis is not None and ttl > 0 else None
        self._in_flight: dict[str, asyncio.Task[CachedPage]] = {}
        self._flight_spans: dict[str, SpanContext | None] = {}  # for waiters to link to

    @property
    def enabled(self) -> bool:
        return self.local is not None

    async def get_or_fetch(
        self,
        key: str,
        fetch: Callable[[], Awaitable[UpstreamPage]],
        *,
        owner: str = "",
        refresh: bool = False,
    ) -> tuple[UpstreamPage, CacheEvent]:
        """The page under ``key``: from a tier when fresh, else from ``fetch`` (one call for
        concurrent misses). ``owner`` names the caller for its share of the local tier."""
        if self.local is not None and not refresh:
            with traced("cache.lookup") as span:
                found = await self._find(key, owner, max_age=self.ttl)
                tier = found[1].tier if found else "none"
                annotate(span, {"cache.result": "hit" if found else "miss", "cache.tier": tier})
            if found is not None:
                self._count(found[1].tier, "hit")
                return found
        try:
            entry = await self._single_flight(key, fetch, owner)
        except (UpstreamUnavailable, UpstreamTimeout):
            # Stale-if-error: the upstream itself failed (never a 401/403, which are the
            # caller's answer), so this caller's own last good answer may stand in for it.
            stale = None
            if self.stale_if_error > 0:
                stale = await self._find(key, owner, max_age=self.ttl + self.stale_if_error)
            if stale is None:
                raise
            self._count(stale[1].tier, "stale")
            return stale[0], CacheEvent(status="stale", tier=stale[1].tier, age=stale[1].age)
        status: CacheStatus = "bypass" if not self.enabled else "refresh" if refresh else "miss"
        self._count("upstream", status)
        return entry.page, CacheEvent(status=status, tier="upstream")

    async def _find(
        self, key: str, owner: str, *, max_age: float
    ) -> tuple[UpstreamPage, CacheEvent] | None:
        """This key's entry if it is younger than ``max_age``, from the nearest tier."""
        if self.local is None:
            return None
        now = self.clock.monotonic()
        entry = self.local.get(key)
        tier: CacheTier = "local"
        if entry is None and self.shared is not None:
            shared = await self.shared.get(key)
            tier = "redis"
            if shared is not None:
                entry, raw = shared
                self.local.set(key, raw, entry.stored_at, owner)
        if entry is None or now - entry.stored_at >= max_age:
            return None
        return entry.page, CacheEvent(status="hit", tier=tier, age=max(0.0, now - entry.stored_at))

    async def _single_flight(
        self, key: str, fetch: Callable[[], Awaitable[UpstreamPage]], owner: str
    ) -> CachedPage:
        task = self._in_flight.get(key)
        leader = self._flight_spans.get(key) if task is not None else None
        role = "leader" if task is None else "waiter"
        with traced("cache.single_flight", {"cache.single_flight.role": role}, link=leader) as span:
            if task is None:
                # Started inside the span: the fetch's upstream spans are its children.
                task = asyncio.get_running_loop().create_task(
                    self._fetch_and_store(key, fetch, owner)
                )
                self._in_flight[key] = task
                self._flight_spans[key] = span_context(span)
                task.add_done_callback(lambda done: self._forget(key, done))
            elif self.metrics is not None:
                self.metrics.single_flight_coalesced.inc()
            # shield: a waiter that is cancelled stops waiting; the call goes on for the others.
            return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[CachedPage]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
            self._flight_spans.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so a failure nobody awaited is not logged as lost

    async def _fetch_and_store(
        self, key: str, fetch: Callable[[], Awaitable[UpstreamPage]], owner: str
    ) -> CachedPage:
        page = await fetch()
        entry = CachedPage(page=page, stored_at=self.clock.monotonic())
        if self.local is None:
            return entry
        encoded = CachedPage.encode(page, self.clock.wall())
        self.local.set(key, encoded, entry.stored_at, owner)
        if self.shared is not None:
            await self.shared.set(key, encoded)
        return entry

    def _count(self, tier: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_lookups.labels(tier=tier, result=result).inc()

"""The page cache: upstream pages kept across requests under per-caller keys, with a TTL,
single flight, stale-if-error and an optional shared Redis tier for replicas.

A key is an HMAC-SHA256, under a server secret, of the caller's identity (``Callers``: the same
for every spelling of one credential), the org
(or "own org"), and the exact upstream query; so two tokens never share an entry, even in one
org (a location admin sees fewer numbers than a full admin), and no key reveals a token. Only
complete 200 answers are stored (the upstream client raises on anything else, and a partial
page walk never returns). Concurrent misses of one key share one upstream call; a waiter that
goes away does not cancel it for the others. Entries live in a ``LocalTier`` and, with Redis,
in a ``GuardedRedis`` behind it (a Redis that is down or slow is a miss).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
import orjson

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.data.guarded_redis import GuardedRedis
from gateway.data.local_tier import LocalTier
from gateway.domain.query import Fetch, UpstreamPage
from gateway.domain.upstream_items import (
    DECODE_FAILURES,
    Buffer,
    UpstreamBody,
    UpstreamItems,
)
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import SpanContext, annotate, span_context, traced

KEY_PREFIX = "numbers-gateway:v3:"
OWN_ORG = "\x00own-org"

CacheStatus = Literal["hit", "miss", "refresh", "bypass", "stale"]
CacheTier = Literal["local", "redis", "upstream"]


def cache_key(secret: bytes, caller: str, fetch: Fetch) -> str:
    """The entry's name: nothing in it can be turned back into the token or the query.
    ``caller`` is the caller's identity (``Caller.identity``)."""
    material = orjson.dumps([caller, fetch.query.org_id or OWN_ORG, fetch.upstream_params()])
    return KEY_PREFIX + hmac.new(secret, material, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedPage:
    """One page cache entry, as this process holds it."""

    page: UpstreamPage
    stored_at: float  # this process's monotonic time when the upstream answered

    @staticmethod
    def encode(page: UpstreamPage, stored_at_wall: float) -> bytes:
        """The entry as both tiers store it: a header, then the page's upstream bodies as they
        came (``domain.upstream_items``), so a hit is read as a fresh answer is, by the fast
        path, with nothing decoded to store it or to read it back. Replicas share no
        monotonic clock, so the entry carries the wall time it was stored at; a reader from
        Redis turns that into an age."""
        items = page.items
        if not isinstance(items, UpstreamItems):  # a page made of other data: one body of it
            body = UpstreamBody(msgspec.json.encode({"phoneNumbers": list(items)}))
            items = UpstreamItems.of_body(body, range(len(page.items)))
        bodies = items.bodies
        index = {id(body): at for at, body in enumerate(bodies)}
        header = msgspec.json.encode(
            _EntryHeader(
                count=page.count,
                has_more=page.has_more,
                stored_at=stored_at_wall,
                bodies=[len(body.content) for body in bodies],
                runs=[_EntryRun.of(index[id(body)], at) for body, at in items.runs],
            )
        )
        parts: list[Buffer] = [_ENTRY_MAGIC, len(header).to_bytes(4, "big"), header]
        parts.extend(body.content for body in bodies)
        return b"".join(parts)

    @staticmethod
    def decode_page(raw: bytes) -> tuple[UpstreamPage, float]:
        """The page, and the wall time it was stored at; ``ValueError`` (or a decode error)
        when ``raw`` is not an entry."""
        if not raw.startswith(_ENTRY_MAGIC):
            raise ValueError("not a page cache entry")
        view = memoryview(raw)
        start = len(_ENTRY_MAGIC) + 4
        end = start + int.from_bytes(view[len(_ENTRY_MAGIC) : start], "big")
        header = _HEADER.decode(view[start:end])
        bodies: list[UpstreamBody] = []
        for size in header.bodies:
            bodies.append(UpstreamBody(view[end : end + size]))
            end += size
        if end != len(raw):
            raise ValueError("a page cache entry of another length")
        runs = [(bodies[run.body], run.positions) for run in header.runs]
        count = header.count if isinstance(header.count, dict) else None
        page = UpstreamPage(items=UpstreamItems(runs), count=count, has_more=header.has_more)
        return page, header.stored_at

    @classmethod
    def from_local(cls, found: tuple[bytes, float] | None) -> CachedPage | None:
        """The entry a ``LocalTier`` returned (bytes, monotonic time stored), if any."""
        if found is None:
            return None
        page, _ = cls.decode_page(found[0])
        return cls(page=page, stored_at=found[1])

    @classmethod
    def decode(cls, raw: bytes, clock: Clock) -> CachedPage:
        page, stored_at_wall = cls.decode_page(raw)
        age = max(0.0, clock.wall() - stored_at_wall)
        return cls(page=page, stored_at=clock.monotonic() - age)


_ENTRY_MAGIC: Final = b"numbers-gateway page 3\n"


class _EntryRun(msgspec.Struct, gc=False, omit_defaults=True):
    """A run of an entry's items: positions ``start`` to ``stop`` of one of its bodies, or
    the positions ``at``."""

    body: int
    start: int = 0
    stop: int = 0
    at: list[int] | None = None

    @classmethod
    def of(cls, body: int, positions: Sequence[int]) -> _EntryRun:
        if isinstance(positions, range) and positions.step == 1:
            return cls(body, positions.start, positions.stop)
        return cls(body, at=list(positions))

    @property
    def positions(self) -> Sequence[int]:
        return range(self.start, self.stop) if self.at is None else tuple(self.at)


class _EntryHeader(msgspec.Struct, gc=False):
    count: Any
    has_more: bool
    stored_at: float
    bodies: list[int]  # their sizes, in the order they follow the header
    runs: list[_EntryRun]


_HEADER: Final = msgspec.json.Decoder(_EntryHeader, float_hook=float)


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """What happened to one upstream ask, for the response's ``extensions.cache``."""

    status: CacheStatus
    tier: CacheTier
    age: float = 0.0


class RedisTier:
    """The shared tier of the page cache: entries other replicas stored."""

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
        except (*DECODE_FAILURES, IndexError, ValueError):
            return None  # an entry we cannot read is a miss, not an error

    async def set(self, key: str, encoded: bytes) -> None:
        await self.redis.set(key, encoded, ttl_ms=self.ttl_ms)


class PageCache:
    """Looks up, single-flights and stores upstream pages under per-caller keys."""

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

    async def lookup(self, key: str, *, owner: str = "") -> tuple[UpstreamPage, CacheEvent] | None:
        """The fresh page under ``key`` from the nearest tier, counted as a hit; None when no
        tier holds one (nothing is fetched and nothing counted: the caller goes elsewhere)."""
        found = await self._find(key, owner, max_age=self.ttl)
        if found is not None:
            self._count(found[1].tier, "hit")
        return found

    async def _find(
        self, key: str, owner: str, *, max_age: float
    ) -> tuple[UpstreamPage, CacheEvent] | None:
        """This key's entry if it is younger than ``max_age``, from the nearest tier."""
        if self.local is None:
            return None
        now = self.clock.monotonic()
        entry = CachedPage.from_local(self.local.get_raw(key))
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

"""Redis as the gateway uses it, where every failure is a miss: the shared tier speeds the
gateway up and never breaks it.

One ``GuardedRedis`` per app, shared by the page cache and the persisted-query store and
closed by the app's lifespan. Each operation is bounded by ``REDIS_OPERATION_TIMEOUT``; an
outage is logged once (and its end once), and each failure is counted in
``gateway_cache_backend_failures_total``.

Every value is written as an entry that names itself: a version line, the key it was written
for, and an HMAC-SHA256 of both with the payload under the cache-key secret
(``GATEWAY_CACHE_KEY_SECRET``, which every replica shares; ``ENTRY_VERSION``). Keyed, so
someone who can write to Redis but does not hold the secret cannot forge an entry that opens.
A value read back that is anything else (garbage, truncated, another version, another secret,
or a sound entry copied under another key) is a miss, counted in
``gateway_cache_backend_invalid_entries_total`` and logged once: never an error, never another
key's data. A counter (``count``) holding something other than an integer is the same: a
miss, started afresh, never an outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from gateway.observability.metrics import GatewayMetrics

log = structlog.get_logger("gateway.redis")

REDIS_OPERATION_TIMEOUT = 0.25  # a slow shared tier must not slow the gateway down
# Version 2: the checksum is an HMAC under the shared secret (version 1 was a bare SHA-256,
# which anyone with write access could recompute).
ENTRY_VERSION = b"numbers-gateway-entry/2"


def _checksum(secret: bytes, head: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, head + payload, hashlib.sha256).hexdigest().encode()


def seal(key: str, payload: bytes, secret: bytes = b"") -> bytes:
    """The entry as stored under ``key``: ``version \\n key \\n checksum \\n payload``, the
    checksum an HMAC under ``secret`` (the cache-key secret every replica shares)."""
    head = ENTRY_VERSION + b"\n" + key.encode() + b"\n"
    return head + _checksum(secret, head, payload) + b"\n" + payload


def unseal(key: str, entry: bytes, secret: bytes = b"") -> bytes | None:
    """The payload of an entry ``seal`` wrote for ``key`` under ``secret``; None for anything
    else."""
    head = ENTRY_VERSION + b"\n" + key.encode() + b"\n"
    if not entry.startswith(head):
        return None  # another version, another key's entry, or not ours at all
    checksum, newline, payload = entry[len(head) :].partition(b"\n")
    if not newline or not hmac.compare_digest(checksum, _checksum(secret, head, payload)):
        return None  # truncated, altered, or sealed under another secret
    return payload


class GuardedRedis:
    """Bounded Redis operations; a failure or a timeout answers ``None`` (a miss)."""

    def __init__(
        self, client: Redis, metrics: GatewayMetrics | None = None, *, secret: bytes = b""
    ) -> None:
        self.client = client
        self.secret = secret  # the cache-key secret: entries are sealed under it
        self.metrics = metrics
        self.down = False
        self._reported_invalid = False

    async def get(self, key: str) -> bytes | None:
        """The payload stored under ``key``, if a sound entry written for it is there."""
        raw = await self._guard(self.client.get(key))
        if not isinstance(raw, bytes):
            return None
        payload = unseal(key, raw, self.secret)
        if payload is None:
            self._invalid_entry()
        return payload

    async def set(self, key: str, value: bytes, *, ttl_ms: int) -> None:
        await self._guard(self.client.set(key, seal(key, value, self.secret), px=ttl_ms))

    async def count(self, key: str, *, ttl_ms: int) -> int | None:
        """Add one to the counter ``key`` (created to live ``ttl_ms``) and return it; None
        when Redis could not say. A counter holding something else (it is not sealed: INCR
        needs a bare integer) is a damaged entry, not an outage: counted as one, and started
        afresh at 1."""

        async def increment() -> Any:
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.set(key, 0, nx=True, px=ttl_ms)
                    pipe.incr(key)
                    return (await pipe.execute())[-1]
            except ResponseError:
                # Redis answered, refusing to add one to a value that is no integer.
                self._invalid_entry()
                await self.client.set(key, 1, px=ttl_ms)
                return 1

        counted = await self._guard(increment())
        return counted if isinstance(counted, int) else None

    def _invalid_entry(self) -> None:
        if self.metrics is not None:
            self.metrics.cache_invalid_entries.inc()
        if not self._reported_invalid:
            self._reported_invalid = True  # once: a poisoned Redis must not flood the logs
            log.warning(
                "redis_entry_rejected",
                reason="an entry with a wrong version, checksum or key; served as a miss",
            )

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

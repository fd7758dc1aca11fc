"""Redis as the gateway uses it, where every failure is a miss: the shared tier speeds the
gateway up and never breaks it.

One ``GuardedRedis`` per app, shared by the page cache and the persisted-query store and
closed by the app's lifespan. Each operation is bounded by ``REDIS_OPERATION_TIMEOUT``; an
outage is logged once (and its end once), and each failure is counted in
``gateway_cache_backend_failures_total``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.observability.metrics import GatewayMetrics

log = structlog.get_logger("gateway.redis")

REDIS_OPERATION_TIMEOUT = 0.25  # a slow shared tier must not slow the gateway down


class GuardedRedis:
    """Bounded Redis operations; a failure or a timeout answers ``None`` (a miss)."""

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

"""Whether a replica's embedded simulator is the only one behind its Redis.

Replicas that share a Redis but each serve their own embedded simulator split their change
feeds without a word: one polls its own simulator and publishes, the others relay changes to
data they never served, and the shared cache mixes answers from several data sets. So each
embedded simulator writes a marker with its random id to Redis every ``MARKER_INTERVAL``
seconds (sealed, as every entry: a marker written by anyone without the secret is no
marker), and a replica that finds another simulator's id there at two checks logs one
warning, ``another_embedded_simulator``, saying what to do instead. Two checks, because the
first may find the marker this replica's previous run left behind.
"""

from __future__ import annotations

import asyncio
import secrets

import structlog

from gateway.data.guarded_redis import GuardedRedis

log = structlog.get_logger("gateway.simulator_marker")

MARKER_KEY = "numbers-gateway:simulator:v1"
MARKER_INTERVAL = 10.0  # seconds between checks
MARKER_LIFETIME = 3 * MARKER_INTERVAL  # a marker outlives its writer by this much at most
SEEN_REMEMBERED = 16  # other simulators' ids remembered between checks

ADVICE = (
    "Another replica using this Redis serves its own embedded simulator, so change feeds and "
    "the cache mix two simulators' data. Run one `numbers-gateway simulator` and point every "
    "replica at it with GATEWAY_UPSTREAM_URL (as compose.yaml does), or give each replica "
    "its own Redis."
)


class SimulatorMarker:
    """This replica's embedded simulator's marker in Redis, and the watch for others'."""

    def __init__(self, redis: GuardedRedis, *, interval: float = MARKER_INTERVAL) -> None:
        self.redis = redis
        self.instance = secrets.token_hex(16)  # this simulator's id: random, nothing else
        self.interval = interval
        self.warned = False
        self._seen_once: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """One round: whose marker is there (another simulator's, seen twice: warn, once),
        then ours in its place."""
        found = await self.redis.get(MARKER_KEY)
        other = found.decode("utf-8", "replace") if found is not None else None
        if other is not None and other != self.instance:
            if other in self._seen_once:
                if not self.warned:
                    self.warned = True
                    log.warning("another_embedded_simulator", advice=ADVICE)
            else:
                self._seen_once = [*self._seen_once, other][-SEEN_REMEMBERED:]
        await self.redis.set(MARKER_KEY, self.instance.encode(), ttl_ms=int(MARKER_LIFETIME * 1000))

    async def start(self) -> None:
        """Write the marker now, then check again every interval until ``close``."""
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._keep_checking())

    async def _keep_checking(self) -> None:
        while True:  # still written once warned: the other replica may not have seen it yet
            await asyncio.sleep(self.interval)
            await self.check()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Each check is bounded (GuardedRedis), so this wait is too.
            await asyncio.gather(self._task, return_exceptions=True)

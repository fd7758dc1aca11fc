"""The one clock seam: monotonic time for durations, wall time only where a date is meant.

Durations (the breaker's cool-down, cache freshness, single flight) run on ``monotonic``, which
never jumps with NTP or an operator's ``date``. ``wall`` is for what really is a date: an
HTTP-date ``Retry-After``, and the age of an entry another replica stored in Redis (two
processes share no monotonic clock). Deadlines run on the event loop's clock, which is
monotonic too. Tests hand ``create_app`` one fake that implements all three.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward; for durations."""

    def wall(self) -> float:
        """Seconds since the Unix epoch; for dates only."""

    async def sleep(self, seconds: float) -> None:
        """Wait; retries wait through this, so tests can skip the waiting."""


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()

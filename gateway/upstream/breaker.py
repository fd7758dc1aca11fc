"""A circuit breaker for the upstream: after repeated failed exchanges, fail fast for a
cool-down, then let one probe through; its outcome closes or re-opens the circuit.

Only the upstream's own failures count (5xx, timeouts, connection errors). A 4xx is the
caller's doing, or a rate limit, and proves the upstream is alive: it never trips the breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False

    def allow(self) -> bool:
        """Whether an exchange may go upstream now; in half-open, only the one probe may."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.cooldown:
                return False
            self.state = BreakerState.HALF_OPEN
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def retry_in(self) -> float:
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._probe_in_flight = False

    def release_probe(self) -> None:
        """An exchange ended with no verdict on the upstream's health."""
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._probe_in_flight = False
        self.consecutive_failures += 1
        if (
            self.state is BreakerState.HALF_OPEN
            or self.consecutive_failures >= self.failure_threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = self.clock()

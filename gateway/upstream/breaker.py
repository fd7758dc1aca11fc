"""A circuit breaker for the upstream: after repeated failed exchanges, fail fast for a
cool-down, then let one probe through; its outcome closes or re-opens the circuit.

Only the upstream's own failures count (5xx, timeouts, connection errors). A 4xx is the
caller's doing, or a rate limit, and proves the upstream is alive: it never trips the breaker.

Every exchange is admitted under the breaker's current *epoch*, which changes with each change
of state, and its outcome counts only while that epoch lasts. So an exchange admitted before a
trip that answers late, once the circuit is open (or half open, or closed again by a probe),
says nothing about the upstream now and changes nothing: a half-dead upstream whose slow
answers trickle in after the trip cannot close the circuit behind the breaker's back, and a
stale failure cannot re-open a circuit a probe just closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Admission:
    """One exchange let through: the epoch it was admitted in, and whether it is the probe."""

    epoch: int
    probe: bool


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
        self.epoch = 0
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False

    def admit(self) -> Admission | None:
        """Let an exchange go upstream now, or None: open, or half open with the probe out."""
        if self.state is BreakerState.CLOSED:
            return Admission(self.epoch, probe=False)
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.cooldown:
                return None
            self._enter(BreakerState.HALF_OPEN)
        if self._probe_in_flight:
            return None
        self._probe_in_flight = True
        return Admission(self.epoch, probe=True)

    def retry_in(self) -> float:
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def record_success(self, admission: Admission) -> None:
        """The exchange proved the upstream alive: the probe closes the circuit; in a closed
        circuit the run of failures ends."""
        if not self._current(admission):
            return
        if admission.probe:
            self._enter(BreakerState.CLOSED)
        self.consecutive_failures = 0

    def record_failure(self, admission: Admission) -> None:
        """The exchange failed by the upstream's fault: the probe re-opens the circuit; in a
        closed circuit, the threshold-th failure in a row opens it."""
        if not self._current(admission):
            return
        self.consecutive_failures += 1
        if admission.probe or self.consecutive_failures >= self.failure_threshold:
            self._enter(BreakerState.OPEN)
            self.opened_at = self.clock()

    def release(self, admission: Admission) -> None:
        """The exchange ended with no verdict on the upstream's health (cancelled, or its
        deadline spent before the upstream had it): a probe frees its place for the next."""
        if self._current(admission) and admission.probe:
            self._probe_in_flight = False

    def _current(self, admission: Admission) -> bool:
        return admission.epoch == self.epoch

    def _enter(self, state: BreakerState) -> None:
        # A new epoch: whatever was admitted before this change can no longer move the breaker.
        self.state = state
        self.epoch += 1
        self._probe_in_flight = False
        if state is BreakerState.CLOSED:
            self.consecutive_failures = 0

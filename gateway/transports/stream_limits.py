"""The streamed responses in flight: how many each caller holds, and ending them at shutdown.

An incremental response (``@defer``/``@stream`` over multipart or SSE, every WebSocket
operation but a subscription, and an inventory export: ``transports.export``) holds a
connection, an upstream walk and its pages for as long as the client reads; ``OpenStreams``
bounds them per caller (``GATEWAY_MAX_STREAMS_PER_CALLER``: past it the request is refused
with 429 and ``RATE_LIMITED`` before anything runs) and, at shutdown, tells every open one to
end with a final payload (a CSV export, which has none, is cut off). One per app, in lifespan
state (``streams``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import suppress

from gateway.errors import ErrorCode
from gateway.transports.refusals import Refusal

RETRY_AFTER_SECONDS = 1
# Streams of callers without usable credentials (refused by the operation) share one count.
NO_CALLER = "no-credentials"
# How long shutdown waits for open streams to write their final payloads.
CLOSE_WAIT_SECONDS = 5.0


class OpenStreams:
    """Counts the streams in flight per caller identity; ``closing`` is set at shutdown."""

    def __init__(self, max_per_caller: int) -> None:
        self.max_per_caller = max_per_caller
        self._held: Counter[str] = Counter()
        self.closing = asyncio.Event()  # set once: every stream ends with a final payload
        self._idle = asyncio.Event()  # no stream open
        self._idle.set()

    @property
    def open(self) -> int:
        return sum(self._held.values())

    def acquire(self, caller: str) -> None:
        """One more stream of ``caller``; raises ``Refusal`` (429) past the bound or while the
        gateway shuts down. Each acquire is paired with one ``release``."""
        if self.closing.is_set():
            raise _refusal("The gateway is shutting down; send the request again.")
        if self._held[caller] >= self.max_per_caller:
            raise _refusal(
                f"This caller has {self.max_per_caller} streamed responses in flight, the "
                "most it may; retry once one ends."
            )
        self._held[caller] += 1
        self._idle.clear()

    def release(self, caller: str) -> None:
        self._held[caller] -= 1
        if self._held[caller] <= 0:
            del self._held[caller]
        if not self._held:
            self._idle.set()

    async def close(self) -> None:
        """Tell every open stream to end (each writes its final payload), and wait up to
        ``CLOSE_WAIT_SECONDS`` for them to do so."""
        self.closing.set()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_WAIT_SECONDS)


def _refusal(message: str) -> Refusal:
    return Refusal(
        429,
        message,
        ErrorCode.RATE_LIMITED,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        extensions={"retryAfter": RETRY_AFTER_SECONDS},
    )

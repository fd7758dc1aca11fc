"""How ``serve`` stops: one ordered sequence within ``GATEWAY_SHUTDOWN_TIMEOUT``, logged as
``gateway_stopping`` when it begins and ``gateway_stopped`` with what was drained and what
was cut.

1. **Stop accepting.** The listeners close; idle connections close; a request being served
   finishes, its response says ``Connection: close``, and its connection closes after it.
2. **End what lives long, so that each client resumes** (on another replica, or here once
   restarted): every WebSocket closes with 1012, which graphql-ws clients retry, subscribing
   again (its subscriptions get no ``complete``; its queries an ``error``, their answer being
   cut short); every SSE subscription's response ends with no further event (graphql-sse's
   client retries a stream that ends while it waits for events, and takes ``complete`` as
   the subscription's end); every ``@defer``/``@stream`` response ends with a final payload
   saying so (``OpenStreams.closing``). They get ``STREAMS_END_SECONDS`` to do so.
3. **Let go of the change feeds' leases** (``ChangeFeeds.close``), so another replica takes
   each feed over at its next poll instead of when the lease expires.
4. **Drain**: requests still being served finish, until the drain deadline (the timeout less
   ``CLOSE_RESERVE``), then connections that are only sending their last bytes get
   ``FLUSH_SECONDS``. A second SIGTERM or SIGINT ends the drain at once.
5. **Cut** what is left: its connections are aborted and their requests cancelled.
6. **Close** Redis and the upstream client: the app's lifespan end, run by uvicorn's own
   shutdown, within the reserve.

Every step is bounded by the deadline, so nothing one client or one stuck task does keeps
the process past the timeout. The sequence gets the app's ``OpenStreams`` and
``ChangeFeeds`` from the ASGI lifespan state (``wrap`` keeps the scope's ``state``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.changes.registry import ChangeFeeds
from gateway.server.connections import ConnectionGuard
from gateway.transports.stream_limits import OpenStreams

log = structlog.get_logger("gateway.server.shutdown")

# Of the shutdown timeout, what the steps after the drain may take (the cut, closing Redis
# and the upstream client, the metrics listener, the process's exit), at most half of it.
CLOSE_RESERVE: Final = 3.0
# How long a connection with nothing in flight may take to send what it has left, once the
# requests are over: a client that does not read gets no longer than this.
FLUSH_SECONDS: Final = 1.0
# How long the transports get to end their streams and subscriptions in their own way (a
# final write waits at most 2 s for a client that does not read) before the feeds end what is
# left: a subscription still waiting for its first event, say.
STREAMS_END_SECONDS: Final = 3.0
# The close (Redis, the upstream client) gets at least this, whatever the timeout left.
CLOSE_FLOOR_SECONDS: Final = 0.5
POLL_SECONDS: Final = 0.05  # how often a wait looks again (and at a second signal)


class ShutdownSequence:
    """One serving process's shutdown (see the module docstring). ``run`` is called by the
    server once it has been told to stop; ``interrupt`` by a second signal."""

    def __init__(self, guard: ConnectionGuard, *, timeout: float) -> None:
        self.guard = guard
        self.timeout = timeout
        self.app_state: dict[str, Any] = {}
        self.interrupted_by: str | None = None  # the signal that cut the drain short

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app``, with its lifespan state kept for the sequence."""

        async def keeping_state(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan" and isinstance(scope.get("state"), dict):
                self.app_state = scope["state"]
            await app(scope, receive, send)

        return keeping_state

    def interrupt(self, signum: int) -> None:
        """A second SIGTERM or SIGINT: the drain ends now (safe in a signal handler: it sets a
        field the waits look at)."""
        self.interrupted_by = signal.Signals(signum).name

    async def run(
        self, listeners: Iterable[asyncio.AbstractServer], close: Callable[[], Awaitable[None]]
    ) -> None:
        """The sequence; ``close`` is uvicorn's own shutdown (what is left of the connections,
        then the app's lifespan end)."""
        began = time.monotonic()
        reserve = min(CLOSE_RESERVE, self.timeout / 2)
        drain_until = began + self.timeout - reserve
        streams = self.app_state.get("streams")
        changes = self.app_state.get("changes")
        streams = streams if isinstance(streams, OpenStreams) else None
        changes = changes if isinstance(changes, ChangeFeeds) else None
        guard = self.guard
        requests, websockets = guard.requests, guard.websockets
        subscriptions = changes.open_subscriptions if changes is not None else 0
        open_streams = streams.open if streams is not None else 0
        feeds = len(changes.feeds) if changes is not None else 0
        log.info(
            "gateway_stopping",
            pid=os.getpid(),
            timeoutS=self.timeout,
            connections=guard.open,
            requests=requests,
            websockets=websockets,
            subscriptions=subscriptions,
            streams=open_streams,
            feeds=feeds,
        )
        # 1. Stop accepting.
        for listener in listeners:
            listener.close()
        guard.stop_accepting()
        # 2. End what lives long, each in the way its clients resume after.
        if streams is not None:
            streams.closing.set()
        await self._until(
            lambda: (
                (changes is None or changes.open_subscriptions == 0)
                and (streams is None or streams.open == 0)
            ),
            min(drain_until, time.monotonic() + STREAMS_END_SECONDS),
        )
        # 3. Let go of the leases (of every feed: those whose last subscriber just left are
        # letting go already, and ``close`` waits for them too).
        feeds_left = 0
        if changes is not None and not await self._within(changes.close(), drain_until):
            feeds_left = max(1, len(changes.feeds))  # some feed is still letting go
        # 4. Drain: requests finish; then connections send what they have left.
        await self._until(lambda: guard.busy == 0, drain_until)
        await self._until(
            lambda: guard.open == 0, min(drain_until, time.monotonic() + FLUSH_SECONDS)
        )
        # 5. Cut what is left.
        requests_cut = guard.requests
        websockets_cut = guard.websockets
        connections_cut = guard.cut()
        # 6. Close: uvicorn's shutdown runs the app's lifespan end (Redis, upstream client).
        close_until = max(
            began + self.timeout - reserve / 2, time.monotonic() + CLOSE_FLOOR_SECONDS
        )
        closed = await self._within(close(), close_until, interruptible=False)
        cut = requests_cut or websockets_cut or connections_cut or feeds_left or not closed
        log.info(
            "gateway_stopped",
            pid=os.getpid(),
            durationMs=round((time.monotonic() - began) * 1000, 1),
            drained={
                "requests": max(0, requests - requests_cut),
                "websockets": max(0, websockets - websockets_cut),
                "subscriptions": subscriptions - (changes.open_subscriptions if changes else 0),
                "streams": open_streams - (streams.open if streams else 0),
                "feeds": max(0, feeds - feeds_left),
            },
            cut={
                "requests": requests_cut,
                "websockets": websockets_cut,
                "connections": connections_cut,
                "feeds": feeds_left,
                "resources": not closed,  # the lifespan's end did not finish in time
                # What ended the drain for what was cut: a second signal, or the deadline.
                "by": (self.interrupted_by or "deadline") if cut else None,
            },
        )

    async def _until(self, done: Callable[[], bool], deadline: float) -> None:
        """Wait until ``done()``, the deadline or a second signal."""
        # Polled: what is awaited spans the guard, the feeds and a flag a signal handler sets.
        while not done() and self.interrupted_by is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(POLL_SECONDS)

    async def _within(
        self, step: Awaitable[None], deadline: float, *, interruptible: bool = True
    ) -> bool:
        """Run ``step`` until the deadline (or, if ``interruptible``, a second signal);
        whether it finished. One that did not is cancelled."""
        task = asyncio.ensure_future(step)
        while not task.done():
            if time.monotonic() >= deadline or (interruptible and self.interrupted_by):
                task.cancel()
                await asyncio.wait({task}, timeout=POLL_SECONDS * 4)
                return False
            await asyncio.wait({task}, timeout=POLL_SECONDS)
        if task.cancelled():
            return False
        failure = task.exception()
        if failure is not None:
            log.error("gateway_stop_step_failed", exc_info=failure)
        return failure is None

"""One streamed operation's payloads, read one ahead of the client: ``PayloadStream``.

The operation's frames (``execution.run``: the initial result and each later payload of
``@defer``/``@stream``, or each event of a subscription) are consumed by one task of their
own, so the whole execution runs in one task, and the
transport can wait on the client (a disconnect, a WebSocket ``complete``), on shutdown and
on the next payload at once. The task holds at most one payload the transport has not taken,
and asks the engine for the next frame only once it is taken (backpressure: the engine is
never more than one payload ahead of the socket, whose own writes wait while the client does
not read). ``aclose`` cancels the task, which closes the operation's generator, so the
upstream walk stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, Final

import structlog
from graphql.execution import (
    InitialIncrementalExecutionResult,
    SubsequentIncrementalExecutionResult,
)

from gateway.errors import INTERNAL_ERROR_MESSAGE, ErrorCode
from gateway.transports.incremental_payloads import Payload, PayloadWriter

log = structlog.get_logger("gateway.http")

# Stands for the end of the operation's payloads in the queue.
_END: Final = object()


class PayloadStream:
    """The payloads of one operation, as the client should read them, in order."""

    def __init__(
        self,
        frames: AsyncGenerator[Any, None],
        writer: PayloadWriter,
        plain_payload: Callable[[Any], Payload],
        *,
        subscription: bool,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.writer = writer
        self.subscription = subscription
        self._on_close = on_close  # the operation's resources, given back once it has stopped
        self.payloads = 0  # payloads handed to the transport (for the request's log line)
        self._frames = frames
        self._plain_payload = plain_payload
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self._peeked: Payload | None = None
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for frame in self._frames:
                await self._queue.put(self._payload(frame))
                # The next frame is asked for only once this payload is taken: the engine
                # (and the upstream walk) is one payload ahead of the transport, no more.
                await self._queue.join()
        except Exception:  # a bug below: logged, and the client still gets a last payload
            log.exception("stream_failed")
            await self._queue.put(_failure_payload(self.subscription))
        finally:
            await self._frames.aclose()
        await self._queue.put(_END)

    def _payload(self, frame: Any) -> Payload:
        if isinstance(frame, InitialIncrementalExecutionResult):
            return self.writer.initial(frame)
        if isinstance(frame, SubsequentIncrementalExecutionResult):
            return self.writer.subsequent(frame)
        return self._plain_payload(frame)

    async def peek(self) -> Payload | None:
        """The next payload without taking it (the next ``next`` returns it)."""
        if self._peeked is None:
            item = await self._take()
            if item is _END:
                self._queue.put_nowait(_END)
                return None
            self._peeked = item
        return self._peeked

    async def next(self) -> Payload | None:
        """The next payload, or None once the operation has no more."""
        item: Any
        if self._peeked is not None:
            item, self._peeked = self._peeked, None
        else:
            item = await self._take()
        if item is _END:
            self._queue.put_nowait(_END)  # every later call sees the end too
            return None
        self.payloads += 1
        taken: Payload = item
        return taken

    async def _take(self) -> Any:
        item = await self._queue.get()
        self._queue.task_done()  # lets the pump ask for the next frame
        return item

    async def aclose(self) -> None:
        """Stop the operation (its generator closed: no further upstream calls). Idempotent,
        and complete even when the caller is itself being cancelled: a stream abandoned at
        any point (before its first payload too) never leaves its task behind."""
        if not self._task.done():
            self._task.cancel()
        # Shielded: a second cancellation of the caller must not leave the pump running.
        await asyncio.shield(self._stopped())

    async def _stopped(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({self._task})
        if not self._task.cancelled() and self._task.exception() is not None:
            log.error("stream_pump_failed", exc_info=self._task.exception())
        # A task cancelled before its first step never ran its ``finally``: close the
        # operation's generator here (a no-op when the pump closed it already).
        await self._frames.aclose()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    async def __aenter__(self) -> PayloadStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _failure_payload(subscription: bool) -> Payload:
    """What ends a stream whose engine failed unexpectedly (logged where it failed)."""
    error = {
        "message": INTERNAL_ERROR_MESSAGE,
        "extensions": {"code": ErrorCode.INTERNAL_SERVER_ERROR.value},
    }
    return {"errors": [error]} if subscription else {"hasNext": False, "errors": [error]}

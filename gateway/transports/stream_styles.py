"""Streamed response styles: ``multipart/mixed`` (incremental delivery, and Apollo's
multipart subscription protocol) and ``text/event-stream``, and the ASGI response that writes a
``PayloadStream`` with one of them.

- ``multipart/mixed`` (``boundary="-"``, what Apollo Client, urql and GraphiQL read): one
  ``application/json`` part per payload, always ended by the closing boundary ``-----``; the
  ``Content-Type`` repeats the incremental format asked for (``deferSpec=20220824``,
  ``incrementalSpec=v0.2``; none for a bare ``multipart/mixed``).
- Apollo's multipart subscription protocol (``multipart/mixed;boundary="graphql";
  subscriptionSpec=1.0``, as Apollo Router writes it): each event is a part
  ``{"payload": <the GraphQL result>}``; a heartbeat part ``{}`` every
  ``HEARTBEAT_SECONDS`` while nothing else is sent; an end the transport imposes (shutdown, a
  failure below the operation) is ``{"payload": null, "errors": [...]}``, which Apollo
  Client's ``RetryLink`` retries (it resubscribes) and ``HttpLink`` alone reports as an
  error; then the closing boundary.
- ``text/event-stream``: GraphQL over Server-Sent Events, distinct connections mode: an
  ``event: next`` per payload, then ``event: complete``; a ``: ping`` comment every
  ``SSE_KEEP_ALIVE_SECONDS`` while nothing else is sent (subscriptions wait long).

All are sent uncompressed (``Content-Encoding: identity``, which the compression middleware
leaves alone), so each payload reaches the client when it is written, with
``Cache-Control: no-store`` and ``X-Accel-Buffering: no`` (proxies must not buffer them).

``StreamedResponse`` writes the headers and the first payload, then each payload as it
comes, while watching the client (``http.disconnect``: the operation is closed at once, so
its upstream walk stops) and shutdown (``OpenStreams.closing``, or a subscription that ends
once the change feeds are closed): a final payload says so, then the end, so the client knows
its answer is cut short (Apollo's multipart subscription: its transport-level error, which
Apollo Client's RetryLink resubscribes on); an SSE subscription's body just ends, with
neither, so that graphql-sse's client subscribes again (it takes ``complete`` as the end). A
write waiting on a client that does not read is abandoned, and the final one waits at most
``CLOSE_WRITE_SECONDS``, so shutdown keeps ``GATEWAY_SHUTDOWN_TIMEOUT``. A
failure after the headers ends the stream with a final payload, never a cut-off body; the
request's log line is written when it ends, with the payloads and items sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Final, Protocol

import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway.changes.registry import ChangeFeeds
from gateway.errors import ErrorCode
from gateway.observability.request_facts import current_facts
from gateway.transports.incremental_payloads import Payload
from gateway.transports.negotiation import EVENT_STREAM, MULTIPART_MIXED, IncrementalFormat
from gateway.transports.operation import Answer
from gateway.transports.payload_stream import PayloadStream
from gateway.transports.refusals import Refusal
from gateway.transports.response_style import VARY
from gateway.transports.stream_limits import RETRY_AFTER_SECONDS, OpenStreams

SSE_KEEP_ALIVE_SECONDS: Final = 12.0
# Apollo Router's heartbeat interval for multipart subscriptions.
HEARTBEAT_SECONDS: Final = 5.0
# How long shutdown waits to write a stream's final payload to a client that does not read.
CLOSE_WRITE_SECONDS: Final = 2.0

SHUTDOWN_ERROR: Final = {
    "message": "The gateway is shutting down; the rest of this response was not sent. "
    "Send the request again.",
    "extensions": {"code": ErrorCode.RATE_LIMITED.value, "retryAfter": RETRY_AFTER_SECONDS},
}


class StreamFraming(Protocol):
    """How payloads are framed on the wire."""

    name: str  # for the log line: ``multipart``, ``multipart-subscription`` or ``sse``
    content_type: str
    keep_alive: bytes | None  # sent when nothing else was for a while; None: never
    keep_alive_seconds: float  # how long "a while" is
    # Every payload says ``hasNext`` (one whole result in one part says ``false``).
    says_has_next: bool

    def opening(self) -> bytes: ...
    def payload(self, payload: Payload) -> bytes: ...
    def closing(self) -> bytes: ...


class MultipartFraming:
    """``multipart/mixed; boundary="-"``, as graphql-yoga and strawberry write it, with the
    incremental format's parameter as Apollo Server writes it."""

    name: str = "multipart"
    keep_alive: bytes | None = None
    keep_alive_seconds: float = 0.0
    says_has_next: bool = True

    def __init__(self, spec: IncrementalFormat = IncrementalFormat.PATHS) -> None:
        self.content_type = f'{MULTIPART_MIXED}; boundary="-"' + (
            f"; {spec.value}" if spec.value else ""
        )

    def opening(self) -> bytes:
        return b"---"

    def payload(self, payload: Payload) -> bytes:
        return (
            b"\r\nContent-Type: application/json; charset=utf-8\r\n\r\n"
            + orjson.dumps(payload)
            + b"\r\n---"
        )

    def closing(self) -> bytes:
        return b"--\r\n"


_SUBSCRIPTION_PART: Final = b"\r\ncontent-type: application/json\r\n\r\n"


class MultipartSubscriptionFraming:
    """Apollo's multipart subscription protocol, framed as Apollo Router frames it."""

    name: str = "multipart-subscription"
    content_type: str = f'{MULTIPART_MIXED};boundary="graphql";subscriptionSpec=1.0'
    keep_alive: bytes | None = _SUBSCRIPTION_PART + b"{}\r\n--graphql"
    keep_alive_seconds: float = HEARTBEAT_SECONDS
    says_has_next: bool = False

    def opening(self) -> bytes:
        return b"\r\n--graphql"

    def payload(self, payload: Payload) -> bytes:
        # An event always has ``data``; a payload without it is the transport's own end
        # (shutdown, a failure below the operation): Apollo's transport-level error.
        wrapped = (
            {"payload": payload}
            if "data" in payload
            else {"payload": None, "errors": payload.get("errors", [])}
        )
        return _SUBSCRIPTION_PART + orjson.dumps(wrapped) + b"\r\n--graphql"

    def closing(self) -> bytes:
        return b"--\r\n"


class EventStreamFraming:
    """GraphQL over SSE, distinct connections mode."""

    name: str = "sse"
    content_type: str = f"{EVENT_STREAM}; charset=utf-8"
    keep_alive: bytes | None = b": ping\n\n"
    keep_alive_seconds: float = SSE_KEEP_ALIVE_SECONDS
    says_has_next: bool = False

    def opening(self) -> bytes:
        return b""

    def payload(self, payload: Payload) -> bytes:
        return b"event: next\ndata: " + orjson.dumps(payload) + b"\n\n"

    def closing(self) -> bytes:
        return b"event: complete\ndata: \n\n"


# A subscription refused before its first event, by code: the status its JSON answer gets
# (GraphQL over HTTP lets a request error carry a 4xx that says why) and its legacy
# ``application/json`` status (200, the spec's rule for clients that predate it).
_EARLY_REFUSAL_STATUS: Final = {
    ErrorCode.RATE_LIMITED.value: (429, 429),
    ErrorCode.UNAUTHENTICATED.value: (401, 200),
    ErrorCode.FORBIDDEN.value: (403, 200),
}


def early_refusal(answer: Answer) -> Refusal | None:
    """A stream that ended before its first payload because the caller may not run it now
    (over a limit, credentials refused): the refusal with that status (429 with
    ``Retry-After``, 401, 403). None for any other failure (answered as it is, 400)."""
    body = orjson.loads(answer.body)
    errors = body.get("errors") or [] if isinstance(body, dict) else []
    if body.get("data") is not None or not errors or not isinstance(errors[0], dict):
        return None
    error = errors[0]
    extensions = dict(error.get("extensions") or {})
    code = extensions.pop("code", None)
    statuses = _EARLY_REFUSAL_STATUS.get(str(code))
    if statuses is None:
        return None
    headers = {}
    if code == ErrorCode.RATE_LIMITED.value:
        retry = extensions.setdefault("retryAfter", RETRY_AFTER_SECONDS)
        headers["Retry-After"] = str(max(1, round(float(retry))))
    return Refusal(
        statuses[0],
        str(error.get("message", "")),
        ErrorCode(code),
        headers=headers,
        extensions=extensions,
        legacy_status=statuses[1],
    )


def _last(payload: Payload, framing: StreamFraming, *, incremental: bool) -> Payload:
    """A final payload: for multipart (and incremental SSE) it says ``hasNext: false``."""
    return payload | {"hasNext": False} if incremental or framing.says_has_next else payload


class StreamedResponse:
    """An ASGI response writing ``payloads`` with ``framing`` until they end, the client
    leaves or the gateway shuts down."""

    def __init__(
        self,
        payloads: PayloadStream,
        framing: StreamFraming,
        streams: OpenStreams,
        *,
        release: Callable[[], None],
    ) -> None:
        self.release = release  # gives back the caller's stream slot, once, at the end
        self.payloads = payloads
        self.framing = framing
        self.streams = streams
        self.ended = "complete"  # how it ended, for the log line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        framing = self.framing
        disconnected: asyncio.Future[Any] = asyncio.ensure_future(_disconnect(receive))
        closing: asyncio.Future[Any] = asyncio.ensure_future(self.streams.closing.wait())
        try:
            # Inside the ``try``: a start that raises (or is cancelled) must still close the
            # operation and give back the caller's stream slot.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", framing.content_type.encode()),
                        (b"cache-control", b"no-store"),
                        (b"content-encoding", b"identity"),
                        (b"x-accel-buffering", b"no"),
                        (b"vary", VARY.encode()),
                    ],
                }
            )
            await self._write_all(send, disconnected, closing, _feeds_of(scope))
        except OSError:  # the server could not write: the client has gone
            self.ended = "disconnected"
        finally:
            disconnected.cancel()
            closing.cancel()
            await self.payloads.aclose()
            self.release()
            self._record(time.perf_counter() - started)

    async def _write_all(
        self,
        send: Send,
        disconnected: asyncio.Future[Any],
        closing: asyncio.Future[Any],
        feeds: ChangeFeeds | None,
    ) -> None:
        framing = self.framing
        incremental = False
        await _body(send, framing.opening(), more=True)
        while True:
            upcoming: asyncio.Future[Any] = asyncio.ensure_future(self.payloads.next())
            done, _ = await asyncio.wait(
                {upcoming, disconnected, closing},
                timeout=framing.keep_alive_seconds if framing.keep_alive is not None else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if upcoming not in done:
                upcoming.cancel()
            if disconnected in done:
                self.ended = "disconnected"
                return  # nobody to write to: the operation is closed by the caller
            if upcoming in done:
                payload = upcoming.result()
                if payload is not None:
                    incremental = incremental or "hasNext" in payload
                    if framing.says_has_next and "hasNext" not in payload:
                        payload = payload | {"hasNext": False}  # one whole result in one part
                    written = _body(send, framing.payload(payload), more=True)
                    if await _written_before(closing, written):
                        continue
                elif not (self.payloads.subscription and feeds is not None and feeds.closed):
                    await _body(send, framing.closing(), more=False)
                    return
                # else: a subscription ended by shutdown (the change feeds close first):
                # ended as shutdown ends every stream, so its client knows to resume.
            elif closing not in done:
                if framing.keep_alive is not None:
                    await _body(send, framing.keep_alive, more=True)
                continue
            # Shutdown: a final payload says so, written within CLOSE_WRITE_SECONDS (a
            # client that does not read is left with what it has: shutdown keeps its time).
            # A subscription over SSE gets no final event at all, neither ``complete``
            # (graphql-sse's client takes that as the subscription's end) nor an error: its
            # body just ends, which that client retries, subscribing again elsewhere.
            self.ended = "shutdown"
            last = b""
            if not self._resumes_by_itself():
                final = _last({"errors": [SHUTDOWN_ERROR]}, framing, incremental=incremental)
                last = framing.payload(final) + framing.closing()
            with suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WRITE_SECONDS):
                    await _body(send, last, more=False)
            return

    def _resumes_by_itself(self) -> bool:
        """Whether this stream's client resumes on its own when the body ends at shutdown,
        with nothing said: an SSE subscription (graphql-sse's client)."""
        return self.payloads.subscription and self.framing.name == "sse"

    def _record(self, elapsed: float) -> None:
        facts = current_facts()
        if facts is not None:
            facts.stream = {
                "transport": self.framing.name,
                "payloads": self.payloads.payloads,
                "items": self.payloads.writer.items,
                "ended": self.ended,
                "streamMs": round(elapsed * 1000, 1),
            }


def _feeds_of(scope: Scope) -> ChangeFeeds | None:
    """The app's change feeds (lifespan state, as ``request.state.changes`` reads it)."""
    feeds = (scope.get("state") or {}).get("changes")
    return feeds if isinstance(feeds, ChangeFeeds) else None


async def _disconnect(receive: Receive) -> None:
    """Returns when the client goes away (the request body was read already)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _written_before(closing: asyncio.Future[Any], write: Awaitable[None]) -> bool:
    """Whether ``write`` finished before shutdown began; a write still waiting for a slow
    client when it begins is abandoned (the server writes nothing of it: it waits for the
    socket to drain before writing)."""
    writing = asyncio.ensure_future(write)
    done, _ = await asyncio.wait({writing, closing}, return_when=asyncio.FIRST_COMPLETED)
    if writing in done:
        writing.result()
        return True
    writing.cancel()
    with suppress(asyncio.CancelledError):
        await writing
    return False


async def _body(send: Send, chunk: bytes, *, more: bool) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": more})

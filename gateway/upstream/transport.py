"""The resilient upstream transport: an ``httpx`` transport that makes one request an
exchange the gateway can afford, whatever the upstream does.

It wraps the transport that really talks to the upstream (the network, the embedded
simulator's ``ASGITransport``, a test's recording transport) and, for each request:

- **checks the circuit breaker** first (an open circuit sends nothing: ``CircuitOpen``), and
  records the outcome under the admission's epoch (``breaker``);
- **bounds the exchange by one deadline**, retries and backoffs included. Requests that carry
  the same ``Exchange`` in ``request.extensions`` share it: the deadline starts with the first
  of them (a ``Link`` walk is one exchange). Past it: ``ExchangeDeadlineExceeded``;
- **waits for a fair slot** (``slots``): at most so many requests on the wire, and at most so
  many for one caller, the caller named by the ``Exchange``;
- **retries** connection failures, timeouts and 502/503/504 with full-jitter backoff, and
  423/429 after their ``Retry-After``, each wait only when it fits in the deadline; when it
  does not, or the attempts are spent, the last answer is returned (or the last error raised);
- **reads the body whole, bounded after decompression** (a small gzip body can expand a
  thousandfold): past ``max_body_bytes``, or with a ``Content-Length`` that is not a length,
  or an encoding that does not decode, it is ``UnreadableAnswer``. The answer it returns is
  already read and decoded (its ``Content-Encoding`` removed), so the slot, the deadline and
  the retries cover the whole answer, not only its head.

Only the upstream's own failures count against it in the breaker: an answer with a 5xx (or a
3xx, which the gateway never follows), a timeout or connection error, an unreadable body, or
a deadline that passed while the upstream had the request. A 2xx or 4xx proves it alive. A
deadline that passes while queueing for a local slot or in a backoff is the gateway's
congestion, not the upstream's: no verdict. Neither is a cancellation.

What it raises are ``httpx`` errors (``httpx.TransportError`` subclasses), so it stays a
transport any ``httpx`` client can use; the ``UpstreamClient`` maps them onto the contract.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, cast

import httpx

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http_syntax import decimal_value
from gateway.observability.metrics import GatewayMetrics
from gateway.upstream.breaker import Admission, CircuitBreaker
from gateway.upstream.slots import FairSlots

RETRYABLE_STATUSES = frozenset({502, 503, 504})
RATE_LIMIT_STATUSES = frozenset({423, 429})
DEFAULT_RETRY_AFTER = 5.0  # what wxc_sdk waits when a 429 carries no Retry-After
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # a 2,000-item page is about 1 MB
# The request extension naming the exchange a request belongs to.
EXCHANGE_EXTENSION: Final = "gateway.upstream.exchange"
# The caller of a request that names no exchange: such requests share one caller's slots.
UNNAMED_CALLER: Final = ""
# Response extensions worth passing on from the answer read (the connection's stream is not).
_KEPT_EXTENSIONS = ("http_version", "reason_phrase")


@dataclass(slots=True)
class Exchange:
    """The requests of one exchange: whose they are (``caller``, a keyed identity, never a
    token: it names the caller's fair share of the slots) and, once the first of them starts,
    the deadline they share (event-loop time)."""

    caller: str
    deadline_at: float | None = None

    @property
    def extensions(self) -> dict[str, object]:
        """What a request of this exchange carries (``httpx``'s ``extensions=``)."""
        return {EXCHANGE_EXTENSION: self}


class CircuitOpen(httpx.TransportError):
    """The circuit breaker is open: nothing was sent."""

    def __init__(self, message: str, *, retry_in: float, request: httpx.Request) -> None:
        super().__init__(message, request=request)
        self.retry_in = retry_in


class ExchangeDeadlineExceeded(httpx.TimeoutException):
    """The exchange's deadline passed, retries and waits included."""

    def __init__(self, message: str, *, deadline: float, request: httpx.Request) -> None:
        super().__init__(message, request=request)
        self.deadline = deadline


class UnreadableAnswer(httpx.TransportError):
    """The upstream answered with a body the gateway will not read: larger than the bound,
    a ``Content-Length`` that is not a length, or an encoding that does not decode. Not
    retried (the upstream would send it again); ``status_code`` and ``headers`` are the
    answer's, for the caller's error (its tracking id)."""

    def __init__(
        self, message: str, *, status_code: int, headers: httpx.Headers, request: httpx.Request
    ) -> None:
        super().__init__(message, request=request)
        self.status_code = status_code
        self.headers = headers


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts per upstream request, and full-jitter backoff bounds."""

    max_attempts: int = 3
    backoff_base: float = 0.2
    backoff_cap: float = 2.0

    def backoff(self, attempt: int) -> float:
        # Full jitter (AWS architecture blog): spreads retries of many clients apart.
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (wall time: an HTTP-date is a date), from
    delta-seconds or an HTTP-date; None if unreadable."""
    if value is None:
        return None
    text = value.strip()
    seconds = decimal_value(text)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def rate_limit_wait(headers: httpx.Headers, now: float) -> float:
    """How long a 423/429 asks to wait: its ``Retry-After``, or wxc_sdk's default."""
    wait = parse_retry_after(headers.get("retry-after"), now)
    return DEFAULT_RETRY_AFTER if wait is None else wait


def proves_upstream_alive(status: int) -> bool:
    """An answer the upstream gave as a working service: a 2xx, or a 4xx (the caller's doing,
    or a rate limit)."""
    return 200 <= status < 300 or 400 <= status < 500


class ReadBody(httpx.AsyncByteStream):
    """A body already read, handed on as the one buffer it was read into, or the one chunk
    the transport handed over whole (no copy).

    The chunk is that ``bytearray`` itself, typed as the ``bytes`` httpx's streams promise:
    httpx only measures, joins and decodes chunks, which a ``bytearray`` supports as ``bytes``
    does, and copying a 16 MB body into ``bytes`` to satisfy the annotation would hold it
    twice."""

    def __init__(self, body: bytes | bytearray) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.body:
            yield cast(bytes, self.body)


@dataclass(slots=True)
class _Wire:
    """Whether a request is with the upstream right now: a deadline that passes then is the
    upstream's failure; one that passes in a queue or a backoff is not."""

    busy: bool = False


class ResilientTransport(httpx.AsyncBaseTransport):
    """Retries, breaker, deadline, fair slots and bounded reads around ``inner``."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        deadline: float,
        concurrency: int = 16,
        per_caller: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        metrics: GatewayMetrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.inner = inner
        self.deadline = deadline
        self.max_body_bytes = max_body_bytes
        self.retry = retry or RetryPolicy()
        self.breaker = breaker
        self.metrics = metrics
        self.clock = clock
        self.slots = FairSlots(concurrency, per_caller or concurrency)

    async def __aenter__(self) -> ResilientTransport:
        await self.inner.__aenter__()
        return self

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = request.extensions.get(EXCHANGE_EXTENSION)
        if not isinstance(exchange, Exchange):
            exchange = Exchange(UNNAMED_CALLER)
        admission = self._admit(request)
        if exchange.deadline_at is None:
            exchange.deadline_at = asyncio.get_running_loop().time() + self.deadline
        wire = _Wire()
        try:
            async with asyncio.timeout_at(exchange.deadline_at):
                response = await self._attempts(request, exchange, wire)
        except TimeoutError:
            self._judge(admission, failed=True if wire.busy else None)
            raise ExchangeDeadlineExceeded(
                f"The upstream did not answer within {self.deadline:g} s.",
                deadline=self.deadline,
                request=request,
            ) from None
        except httpx.TransportError:
            self._judge(admission, failed=True)
            raise
        except BaseException:
            # Cancellation (or a bug) proves nothing either way, but must not keep the
            # half-open probe's place taken.
            self._judge(admission, failed=None)
            raise
        self._judge(admission, failed=not proves_upstream_alive(response.status_code))
        return response

    def _admit(self, request: httpx.Request) -> Admission | None:
        if self.breaker is None:
            return None
        admission = self.breaker.admit()
        if admission is None:
            retry_in = self.breaker.retry_in()
            raise CircuitOpen(
                f"The upstream's circuit is open; retry in {retry_in:.0f} s.",
                retry_in=retry_in,
                request=request,
            )
        return admission

    def _judge(self, admission: Admission | None, *, failed: bool | None) -> None:
        """The breaker's verdict: a failure, a success, or (None) no verdict at all."""
        if self.breaker is None or admission is None:
            return
        if failed is None:
            self.breaker.release(admission)
        elif failed:
            self.breaker.record_failure(admission)
        else:
            self.breaker.record_success(admission)

    async def _attempts(
        self, request: httpx.Request, exchange: Exchange, wire: _Wire
    ) -> httpx.Response:
        """Send until an answer is final, the attempts are spent or a wait would not fit."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._send_in_a_slot(request, exchange.caller, wire)
            except UnreadableAnswer:
                raise
            except httpx.TransportError:
                wait = self.retry.backoff(attempt)
                if not self._may_retry(attempt, wait, exchange):
                    raise
            else:
                retry_wait = self._retry_wait(response, attempt)
                if retry_wait is None or not self._may_retry(attempt, retry_wait, exchange):
                    return response
                wait = retry_wait
            await self.clock.sleep(wait)

    def _retry_wait(self, response: httpx.Response, attempt: int) -> float | None:
        """How long to wait before asking again after ``response``; None: it is final."""
        if response.status_code in RATE_LIMIT_STATUSES:
            return rate_limit_wait(response.headers, self.clock.wall())
        if response.status_code in RETRYABLE_STATUSES:
            return self.retry.backoff(attempt)
        return None

    def _may_retry(self, attempt: int, wait: float, exchange: Exchange) -> bool:
        if attempt >= self.retry.max_attempts:
            return False
        deadline_at = exchange.deadline_at
        return deadline_at is None or asyncio.get_running_loop().time() + wait < deadline_at

    async def _send_in_a_slot(
        self, request: httpx.Request, caller: str, wire: _Wire
    ) -> httpx.Response:
        metrics = self.metrics
        if metrics is not None:
            metrics.upstream_waiting.inc()
        waiting = True
        try:
            async with self.slots.slot(caller):
                if metrics is not None:
                    metrics.upstream_waiting.dec()
                    metrics.upstream_in_flight.inc()
                waiting = False
                started = time.perf_counter()
                outcome = "error"
                wire.busy = True
                try:
                    response = await self._send_and_read(request)
                    outcome = str(response.status_code)
                    return response
                finally:
                    wire.busy = False
                    if metrics is not None:
                        metrics.upstream_in_flight.dec()
                        metrics.observe_upstream(outcome, time.perf_counter() - started)
        finally:
            if waiting and metrics is not None:
                metrics.upstream_waiting.dec()

    async def _send_and_read(self, request: httpx.Request) -> httpx.Response:
        """One attempt: the answer from ``inner``, its body read whole (and bounded)."""
        answer = await self.inner.handle_async_request(request)
        try:
            body = await self._read_bounded(answer, request)
        finally:
            await answer.aclose()
        headers = answer.headers.copy()
        # The body handed on is decoded and whole: nothing must decode or frame it again.
        for name in ("content-encoding", "transfer-encoding"):
            if name in headers:
                del headers[name]
        headers["content-length"] = str(len(body))
        return httpx.Response(
            answer.status_code,
            headers=headers,
            stream=ReadBody(body),
            extensions={k: v for k, v in answer.extensions.items() if k in _KEPT_EXTENSIONS},
        )

    async def _read_bounded(
        self, answer: httpx.Response, request: httpx.Request
    ) -> bytes | bytearray:
        """The body, decompressed, refusing more than ``max_body_bytes`` as it streams in.

        Chunks are appended to one growing buffer, never gathered in a list and joined: the
        body exists once in memory (growth reallocates in place for large buffers), so an
        in-flight page costs its size once plus the decoded objects."""
        limit = self.max_body_bytes
        declared = answer.headers.get("content-length")
        length = decimal_value(declared)
        if declared is not None and length is None:
            # The network path never gets here (h11 refuses such a head); a transport that
            # passes one on is answering with something that is not HTTP.
            raise self._unreadable(
                "The upstream's answer declared a Content-Length that is not a length; it "
                "was not read.",
                answer,
                request,
            )
        body = bytearray()
        # A transport that holds the body in memory hands it over as one chunk of the declared
        # length: kept as it is rather than copied (a megabyte, for a 2,000-item page).
        whole: bytes | None = None
        if length is None or length <= limit:
            try:
                async for chunk in answer.aiter_bytes():
                    if len(body) + len(chunk) > limit:
                        break
                    if whole is None and not body and chunk and len(chunk) == length:
                        whole = chunk
                        continue
                    if whole is not None:  # more than it declared: gathered as any body
                        body += whole
                        whole = None
                    body += chunk
                else:
                    return whole if whole is not None else body
            except httpx.DecodingError:
                raise self._unreadable(
                    "The upstream's answer did not decode as its Content-Encoding says; it "
                    "was not read.",
                    answer,
                    request,
                ) from None
        raise self._unreadable(
            f"The upstream's answer is larger than {limit} bytes "
            "(GATEWAY_MAX_UPSTREAM_BYTES); it was not read.",
            answer,
            request,
        )

    @staticmethod
    def _unreadable(
        message: str, answer: httpx.Response, request: httpx.Request
    ) -> UnreadableAnswer:
        return UnreadableAnswer(
            message, status_code=answer.status_code, headers=answer.headers, request=request
        )

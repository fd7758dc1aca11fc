"""The upstream client: one ``Fetch`` in, one completed ``UpstreamPage`` out.

Wraps the app's shared ``httpx.AsyncClient`` (its transport is the seam: the embedded
simulator and the tests plug in there). It forwards the caller's ``Authorization`` and no
other header, walks ``Link: rel="next"`` until the window is full (or, with ``pages``, hands
the walk out one page at a time, each page its own exchange), bounds the whole exchange
(retries included) by one deadline, retries what is worth retrying, and turns every upstream
failure into an ``UpstreamError`` carrying the status and tracking id.

Upstream answers are untrusted: bodies are read as a stream and cut off past
``max_body_bytes`` (counted after decompression), a ``next`` link that does not advance is a
fault, and tracking ids are echoed only when they look like tracking ids. Slots are shared
fairly between callers (``slots``), and only the upstream's own failures count against it in
the circuit breaker: a deadline that passes while waiting for a local slot or a backoff is the
gateway's congestion, not the upstream's.

The shared client serves every caller, so it must keep no state between them: its cookie jar
is a ``NoCookieJar`` (a ``Set-Cookie`` in one caller's answer would otherwise be sent with the
next caller's request). A request's URL is built once per ``Fetch`` (``upstream_url``), never
re-parsed from parameters on the way out.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import urllib.request
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from http.cookiejar import Cookie, CookieJar
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import orjson
import structlog

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.domain.query import Fetch, PageWindow, UpstreamPage
from gateway.errors import (
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    code_for_upstream_status,
)
from gateway.http_syntax import decimal_value
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import tracking_id_of
from gateway.upstream.body import read_numbers_body
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.slots import FairSlots

# The list-phone-numbers endpoint, relative to the API base (``https://webexapis.com/v1``).
NUMBERS_ENDPOINT = "/telephony/config/numbers"
RETRYABLE_STATUSES = frozenset({502, 503, 504})
RATE_LIMIT_STATUSES = frozenset({423, 429})
DEFAULT_RETRY_AFTER = 5.0  # what wxc_sdk waits when a 429 carries no Retry-After
_MESSAGE_LIMIT = 300
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # a 2,000-item page is about 1 MB
# URLs built from a ``Fetch``, kept per client: a repeated ``Fetch`` (the same filter and window,
# asked by another caller, again once its cache entry is gone, or with caching off) reuses its URL.
_KEPT_URLS = 256

log = structlog.get_logger("gateway.upstream")
T = TypeVar("T")


class NoCookieJar(CookieJar):
    """A cookie jar that never keeps a cookie, for the one ``httpx.AsyncClient`` all callers
    share: a ``Set-Cookie`` in caller A's answer must never travel with caller B's request.

    Why a jar and not a flag: httpx 0.28 has no switch to turn cookies off, and the client
    copies any ``httpx.Cookies`` it is given into a plain jar, but it takes a ``CookieJar``
    as it is (``Cookies(jar).jar is jar``) and does all its cookie work through the jar's two
    standard entry points. Both refuse here, so the jar stays empty whatever httpx calls:
    nothing is stored (``extract_cookies`` returns at once, without parsing ``Set-Cookie``
    headers, which also saves that work on every answer) and so nothing is ever sent (an
    empty jar adds no ``Cookie`` header, and httpx does not even merge it into a request).
    """

    def extract_cookies(self, response: Any, request: urllib.request.Request) -> None:
        return None

    def set_cookie(self, cookie: Cookie) -> None:
        return None


def query_string(params: Iterable[tuple[str, str]]) -> str:
    """The query string httpx sends for ``params`` (``URL.copy_merge_params``): repeated
    names grouped where the name first appears, as ``httpx.QueryParams`` keeps them, and
    form-encoded by ``urlencode`` (a space as ``+``, ``+`` and ``&`` escaped)."""
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return urlencode([(name, value) for name, values in grouped.items() for value in values])


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


def _upstream_message(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        description = errors[0].get("description")
        if isinstance(description, str) and description:
            return description[:_MESSAGE_LIMIT]
    message = body.get("message")
    return message[:_MESSAGE_LIMIT] if isinstance(message, str) and message else None


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """One upstream HTTP answer, its body read (and bounded)."""

    status: int
    headers: httpx.Headers
    content: bytes | bytearray
    next_link: str | None

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON (decoded straight from the one
        buffer it was read into: no copy of the bytes is made)."""
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError:
            return None


_STATUS_HINTS = {
    400: "The upstream rejected the query",
    401: "The upstream did not accept the caller's credentials",
    403: "The caller's token may not read these numbers",
    404: "The upstream did not find this resource",
}


def error_for_response(answer: UpstreamAnswer, now: float) -> UpstreamError:
    """The contract error for a non-2xx answer; ``now`` is wall time, for an HTTP-date
    ``Retry-After``."""
    body = answer.json()
    status = answer.status
    tracking_id = tracking_id_of(answer.headers, body)
    detail = _upstream_message(body)
    hint = _STATUS_HINTS.get(status, f"The upstream answered {status}")
    message = f"{hint}: {detail}" if detail else f"{hint}."
    code = code_for_upstream_status(status)
    if status in RATE_LIMIT_STATUSES:
        retry_after = parse_retry_after(answer.headers.get("retry-after"), now)
        return RateLimited(
            f"The upstream is rate limiting this caller ({status}); retry later.",
            retry_after=DEFAULT_RETRY_AFTER if retry_after is None else retry_after,
            upstream_status=status,
            tracking_id=tracking_id,
        )
    kind = UpstreamRejected if 400 <= status < 500 else UpstreamUnavailable
    return kind(message, code=code, upstream_status=status, tracking_id=tracking_id)


@dataclass(slots=True)
class Exchange:
    """One fetch's state: who is asking, its deadline, where it has been, and whether a
    request is on the wire right now (so a deadline that passes can be blamed right)."""

    authorization: str
    caller: str
    scope: asyncio.Timeout
    on_the_wire: bool = False
    visited: set[str] = field(default_factory=set)


class UpstreamClient:
    """Fetches pages of ``GET {base}/telephony/config/numbers`` for one caller at a time."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        deadline: float,
        concurrency: int = 16,
        per_caller: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        retry: RetryPolicy | None = None,
        metrics: GatewayMetrics | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.http = http
        self.base = httpx.URL(base_url.rstrip("/") + "/")
        self.numbers_url = httpx.URL(base_url.rstrip("/") + NUMBERS_ENDPOINT)
        self.deadline = deadline
        self.max_body_bytes = max_body_bytes
        self.retry = retry or RetryPolicy()
        self.metrics = metrics
        self.breaker = breaker
        self.clock = clock
        self.slots = FairSlots(concurrency, per_caller or concurrency)
        self._numbers_prefix = f"{self.numbers_url}?"
        # Per client (its base URL), bounded; a hit skips encoding and parsing the URL.
        self.upstream_url = lru_cache(maxsize=_KEPT_URLS)(self._upstream_url)

    def _upstream_url(self, fetch: Fetch) -> httpx.URL:
        """The URL asking for ``fetch``, byte for byte what httpx would build from
        ``fetch.upstream_params()``: encoded once and parsed once, with no round trip through
        ``QueryParams`` (``parse_qs`` of the empty query, a merge, an encode, a re-parse)."""
        return httpx.URL(self._numbers_prefix + query_string(fetch.upstream_params()))

    async def fetch(self, fetch: Fetch, authorization: str, *, caller: str) -> UpstreamPage:
        """Run one fetch to completion within the deadline, or raise an ``UpstreamError``.
        ``authorization`` is the normalised ``Bearer <token>``; ``caller`` is the caller's
        identity (the pipeline's ``Caller``), its name for the fair slots."""
        return await self._exchange(
            lambda exchange: self._walk(fetch, exchange),
            lambda scope: Exchange(authorization, caller, scope),
        )

    async def pages(
        self, fetch: Fetch, authorization: str, *, caller: str, page_size: int
    ) -> AsyncGenerator[UpstreamPage, None]:
        """The window of ``fetch`` one upstream page at a time, following ``Link: rel="next"``
        as ``fetch`` does, for a walk too long to hold whole (``@stream``). Each page is its
        own exchange: its own deadline, breaker check, fair slot, retries and size bound. The
        next page is requested only when the consumer asks for it, so closing the iterator
        ends the walk. A page's ``has_more``: the walk goes on after it; ``count`` is the
        upstream's (with ``details``) on the first page only.

        Every request asks for at most ``page_size`` items (``GATEWAY_MAX_PAGE_SIZE``), never
        for the whole rest of the window: an upstream that honours a large ``max`` would
        otherwise answer a 100,000-item walk in one body, past ``max_body_bytes`` and the
        stream's memory bound."""
        assert fetch.window is not None  # a walk is of a window
        wanted = fetch.window.size
        first = Fetch(
            fetch.query, PageWindow(fetch.window.start, min(wanted, page_size)), fetch.details
        )
        url = self.upstream_url(first)
        # Shared by the pages' exchanges: a ``next`` link back to any page is a fault.
        visited = {str(url)}
        opened: list[Exchange] = []

        def opening(scope: asyncio.Timeout) -> Exchange:
            opened.append(Exchange(authorization, caller, scope, visited=visited))
            return opened[-1]

        collected = 0
        while True:
            body, next_url = await self._exchange(partial(self._get, url), opening)
            page_items, count = read_numbers_body(body)
            page_items = page_items[: wanted - collected]
            collected += len(page_items)
            more = bool(next_url) and bool(page_items) and collected < wanted
            yield UpstreamPage(items=page_items, count=count, has_more=more)
            if not more or next_url is None:
                return
            url = self._next_request(next_url, fetch, collected, opened[-1], page_size=page_size)

    async def _exchange(
        self,
        run: Callable[[Exchange], Awaitable[T]],
        opening: Callable[[asyncio.Timeout], Exchange],
    ) -> T:
        """``run`` within the deadline and the breaker, its outcome recorded; every failure
        an ``UpstreamError``."""
        if self.breaker is not None and not self.breaker.allow():
            raise UpstreamUnavailable(
                "The upstream is failing; the gateway stopped calling it for a while. "
                f"Try again in {self.breaker.retry_in():.0f} s."
            )
        exchange: Exchange | None = None
        try:
            async with asyncio.timeout(self.deadline) as scope:
                exchange = opening(scope)
                outcome = await run(exchange)
        except TimeoutError:
            # Only a request the upstream was sitting on counts against it; a deadline spent
            # queueing for a local slot (or in a backoff) says nothing about its health.
            self._record(failed=True if exchange and exchange.on_the_wire else None)
            raise UpstreamTimeout(
                f"The upstream did not answer within {self.deadline:g} s."
            ) from None
        except (UpstreamUnavailable, UpstreamTimeout):
            self._record(failed=True)
            raise
        except (UpstreamRejected, RateLimited):
            self._record(failed=False)  # the caller's doing: the upstream is alive
            raise
        except BaseException:
            # Cancellation (or a bug) proves nothing either way, but must not keep the
            # half-open probe slot taken.
            self._record(failed=None)
            raise
        self._record(failed=False)
        return outcome

    def _record(self, *, failed: bool | None) -> None:
        """The breaker's verdict: a failure, a success, or (None) no verdict at all."""
        if self.breaker is None:
            return
        if failed is None:
            self.breaker.release_probe()
        elif failed:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()

    async def _walk(self, fetch: Fetch, exchange: Exchange) -> UpstreamPage:
        wanted = fetch.window.size if fetch.window is not None else 1
        # The first URL with its query, built once: what is sent (httpx would merge the
        # parameters into a new URL again) and how the page is known among those visited.
        url = self.upstream_url(fetch)
        items: list[dict[str, Any]] = []
        count: dict[str, Any] | None = None
        exchange.visited.add(str(url))
        while True:
            body, next_url = await self._get(url, exchange)
            page_items, page_count = read_numbers_body(body)
            count = count if count is not None else page_count
            items.extend(page_items)
            if fetch.window is None or len(items) >= wanted or not page_items or not next_url:
                break
            url = self._next_request(next_url, fetch, len(items), exchange)
        has_more = len(items) > wanted or (bool(next_url) and bool(page_items))
        return UpstreamPage(items=items[:wanted], count=count, has_more=has_more)

    def _next_request(
        self,
        next_url: str,
        fetch: Fetch,
        collected: int,
        exchange: Exchange,
        *,
        page_size: int | None = None,
    ) -> httpx.URL:
        """Follow the upstream's ``next`` link exactly, unless it is unsafe or malformed.

        The caller's token must never leave for another origin, so a link to anywhere but
        the configured upstream's numbers endpoint is not followed; nor is one carrying the
        upstream's past ``max=null`` defect. Then we ask for the rest ourselves. A link that
        leads somewhere already visited would serve the same items again: a fault.
        ``page_size`` (a page-by-page walk): no request asks for more than that many items,
        whatever ``max`` the link carries.
        """
        assert fetch.window is not None  # counts-only fetches never follow links
        try:
            url = httpx.URL(next_url)
            safe = (
                url.scheme == self.base.scheme
                and url.host == self.base.host
                and url.port == self.base.port
                and url.path == self.numbers_url.path
                and url.params.get("max") not in ("null", "")
            )
        except (httpx.InvalidURL, ValueError):
            safe = False
        if safe:
            start = decimal_value(url.params.get("start"))
            behind = start is not None and start < fetch.window.start + collected
            if str(url) in exchange.visited or behind:
                raise UpstreamUnavailable(
                    "The upstream's next link does not advance (it would serve the same "
                    "entries again); the page was not completed.",
                    upstream_status=200,
                )
            exchange.visited.add(str(url))
            link_max = decimal_value(url.params.get("max"))
            if page_size is not None and (link_max is None or link_max > page_size):
                url = url.copy_set_param("max", str(page_size))
            return url
        log.warning("upstream_next_link_ignored", reason="unsafe or malformed next link")
        left = fetch.window.size - collected
        size = left if page_size is None else min(left, page_size)
        remaining = PageWindow(fetch.window.start + collected, size)
        rest = Fetch(query=fetch.query, window=remaining, details=False)
        return self.upstream_url(rest)

    async def _get(self, url: httpx.URL, exchange: Exchange) -> tuple[Any, str | None]:
        """One upstream request with retries; returns the JSON body and the next link."""
        attempt = 0
        while True:
            attempt += 1
            failure: UpstreamError
            try:
                answer = await self._send(url, exchange)
            except httpx.TimeoutException:
                failure = UpstreamTimeout("The upstream did not answer in time.")
                wait = self.retry.backoff(attempt)
            except httpx.TransportError as exc:
                failure = UpstreamUnavailable(
                    f"Could not reach the upstream ({type(exc).__name__})."
                )
                wait = self.retry.backoff(attempt)
            else:
                if answer.status == 200:
                    body = answer.json()
                    if body is None:
                        raise UpstreamUnavailable(
                            "The upstream answered 200 with a body that is not JSON.",
                            upstream_status=200,
                            tracking_id=tracking_id_of(answer.headers),
                        )
                    return body, answer.next_link
                failure = error_for_response(answer, self.clock.wall())
                if isinstance(failure, RateLimited):
                    wait = failure.retry_after
                elif answer.status in RETRYABLE_STATUSES:
                    wait = self.retry.backoff(attempt)
                else:
                    raise failure
            if attempt >= self.retry.max_attempts or not self._fits(wait, exchange.scope):
                raise failure
            await self.clock.sleep(wait)

    @staticmethod
    def _fits(wait: float, scope: asyncio.Timeout) -> bool:
        when = scope.when()
        return when is None or asyncio.get_running_loop().time() + wait < when

    async def _send(self, url: httpx.URL, exchange: Exchange) -> UpstreamAnswer:
        metrics = self.metrics
        if metrics is not None:
            metrics.upstream_waiting.inc()
        waiting = True
        try:
            async with self.slots.slot(exchange.caller):
                if metrics is not None:
                    metrics.upstream_waiting.dec()
                    metrics.upstream_in_flight.inc()
                waiting = False
                started = time.perf_counter()
                outcome = "error"
                exchange.on_the_wire = True
                try:
                    answer = await self._request(url, exchange.authorization)
                    outcome = str(answer.status)
                    return answer
                finally:
                    exchange.on_the_wire = False
                    if metrics is not None:
                        metrics.upstream_in_flight.dec()
                        metrics.observe_upstream(outcome, time.perf_counter() - started)
        finally:
            if waiting and metrics is not None:
                metrics.upstream_waiting.dec()

    async def _request(self, url: httpx.URL, authorization: str) -> UpstreamAnswer:
        # Only the caller's credentials travel upstream; no other caller header does.
        async with self.http.stream(
            "GET", url, headers={"Authorization": authorization}
        ) as response:
            content = await self._read_bounded(response)
            return UpstreamAnswer(
                status=response.status_code,
                headers=response.headers,
                content=content,
                next_link=response.links.get("next", {}).get("url"),
            )

    async def _read_bounded(self, response: httpx.Response) -> bytearray:
        """The body, decompressed, refusing more than ``max_body_bytes`` as it streams in (a
        small gzip body can expand a thousandfold).

        Chunks are appended to one growing buffer, never gathered in a list and joined: the
        body exists once in memory (growth reallocates in place for large buffers), so an
        in-flight page costs its size once plus the decoded objects."""
        limit = self.max_body_bytes
        declared = response.headers.get("content-length")
        length = decimal_value(declared)
        if declared is not None and length is None:
            # The network path never gets here (h11 refuses such a head); a transport that
            # passes one on is answering with something that is not HTTP.
            raise UpstreamUnavailable(
                "The upstream's answer declared a Content-Length that is not a length; it "
                "was not read.",
                upstream_status=response.status_code,
                tracking_id=tracking_id_of(response.headers),
            )
        body = bytearray()
        if length is None or length <= limit:
            async for chunk in response.aiter_bytes():
                if len(body) + len(chunk) > limit:
                    break
                body += chunk
            else:
                return body
        raise UpstreamUnavailable(
            f"The upstream's answer is larger than {limit} bytes "
            "(GATEWAY_MAX_UPSTREAM_BYTES); it was not read.",
            upstream_status=response.status_code,
            tracking_id=tracking_id_of(response.headers),
        )

"""The upstream client: one ``Fetch`` in, one completed ``UpstreamPage`` out.

Wraps the app's shared ``httpx.AsyncClient`` (its transport is the seam: the embedded
simulator and the tests plug in there). It forwards the caller's ``Authorization`` and no
other header, walks ``Link: rel="next"`` until the window is full, bounds the whole exchange
(retries included) by one deadline, retries what is worth retrying, and turns every upstream
failure into an ``UpstreamError`` carrying the status and tracking id.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import structlog

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import (
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    code_for_upstream_status,
)
from gateway.numbers.query import Fetch, PageWindow, UpstreamPage
from gateway.observability.metrics import GatewayMetrics
from gateway.upstream.body import read_numbers_body
from gateway.upstream.breaker import CircuitBreaker

NUMBERS_PATH = "/telephony/config/numbers"
RETRYABLE_STATUSES = frozenset({502, 503, 504})
RATE_LIMIT_STATUSES = frozenset({423, 429})
DEFAULT_RETRY_AFTER = 5.0  # what wxc_sdk waits when a 429 carries no Retry-After
_MESSAGE_LIMIT = 300

log = structlog.get_logger("gateway.upstream")


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
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _tracking_id(response: httpx.Response, body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("trackingId"), str):
        return str(body["trackingId"])
    header = response.headers.get("trackingid")
    return str(header) if header is not None else None


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


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


_STATUS_HINTS = {
    400: "The upstream rejected the query",
    401: "The upstream did not accept the caller's credentials",
    403: "The caller's token may not read these numbers",
    404: "The upstream did not find this resource",
}


def error_for_response(response: httpx.Response, now: float) -> UpstreamError:
    """The contract error for a non-2xx answer; ``now`` is wall time, for an HTTP-date
    ``Retry-After``."""
    body = _json_or_none(response)
    status = response.status_code
    tracking_id = _tracking_id(response, body)
    detail = _upstream_message(body)
    hint = _STATUS_HINTS.get(status, f"The upstream answered {status}")
    message = f"{hint}: {detail}" if detail else f"{hint}."
    code = code_for_upstream_status(status)
    if status in RATE_LIMIT_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        return RateLimited(
            f"The upstream is rate limiting this caller ({status}); retry later.",
            retry_after=DEFAULT_RETRY_AFTER if retry_after is None else retry_after,
            upstream_status=status,
            tracking_id=tracking_id,
        )
    kind = UpstreamRejected if 400 <= status < 500 else UpstreamUnavailable
    return kind(message, code=code, upstream_status=status, tracking_id=tracking_id)


class UpstreamClient:
    """Fetches pages of ``GET {base}/telephony/config/numbers`` for one caller at a time."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        deadline: float,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        metrics: GatewayMetrics | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.http = http
        self.base = httpx.URL(base_url.rstrip("/") + "/")
        self.numbers_url = httpx.URL(base_url.rstrip("/") + NUMBERS_PATH)
        self.deadline = deadline
        self.retry = retry or RetryPolicy()
        self.metrics = metrics
        self.breaker = breaker
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)

    async def fetch(self, fetch: Fetch, authorization: str) -> UpstreamPage:
        """Run one fetch to completion within the deadline, or raise an ``UpstreamError``."""
        if self.breaker is not None and not self.breaker.allow():
            raise UpstreamUnavailable(
                "The upstream is failing; the gateway stopped calling it for a while. "
                f"Try again in {self.breaker.retry_in():.0f} s."
            )
        try:
            async with asyncio.timeout(self.deadline) as scope:
                page = await self._walk(fetch, authorization, scope)
        except TimeoutError:
            self._record(failed=True)
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
            if self.breaker is not None:
                self.breaker.release_probe()
            raise
        self._record(failed=False)
        return page

    def _record(self, *, failed: bool) -> None:
        if self.breaker is None:
            return
        if failed:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()

    async def _walk(self, fetch: Fetch, authorization: str, scope: asyncio.Timeout) -> UpstreamPage:
        wanted = fetch.window.size if fetch.window is not None else 1
        url = self.numbers_url
        params: list[tuple[str, str]] | None = fetch.upstream_params()
        items: list[dict[str, Any]] = []
        count: dict[str, Any] | None = None
        while True:
            body, next_url = await self._get(url, params, authorization, scope)
            page_items, page_count = read_numbers_body(body)
            count = count if count is not None else page_count
            items.extend(page_items)
            if fetch.window is None or len(items) >= wanted or not page_items or not next_url:
                break
            url, params = self._next_request(next_url, fetch, len(items))
        has_more = len(items) > wanted or (bool(next_url) and bool(page_items))
        return UpstreamPage(items=items[:wanted], count=count, has_more=has_more)

    def _next_request(
        self, next_url: str, fetch: Fetch, collected: int
    ) -> tuple[httpx.URL, list[tuple[str, str]] | None]:
        """Follow the upstream's ``next`` link exactly, unless it is unsafe or malformed.

        The caller's token must never leave for another origin, so a link to anywhere but
        the configured upstream's numbers endpoint is not followed; nor is one carrying the
        upstream's past ``max=null`` defect. Then we ask for the rest ourselves.
        """
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
            return url, None
        log.warning("upstream_next_link_ignored", reason="unsafe or malformed next link")
        assert fetch.window is not None  # counts-only fetches never follow links
        remaining = PageWindow(fetch.window.start + collected, fetch.window.size - collected)
        rest = Fetch(query=fetch.query, window=remaining, details=False)
        return self.numbers_url, rest.upstream_params()

    async def _get(
        self,
        url: httpx.URL,
        params: list[tuple[str, str]] | None,
        authorization: str,
        scope: asyncio.Timeout,
    ) -> tuple[Any, str | None]:
        """One upstream request with retries; returns the JSON body and the next link."""
        attempt = 0
        while True:
            attempt += 1
            failure: UpstreamError
            try:
                response = await self._send(url, params, authorization)
            except httpx.TimeoutException:
                failure = UpstreamTimeout("The upstream did not answer in time.")
                wait = self.retry.backoff(attempt)
            except httpx.TransportError as exc:
                failure = UpstreamUnavailable(
                    f"Could not reach the upstream ({type(exc).__name__})."
                )
                wait = self.retry.backoff(attempt)
            else:
                if response.status_code == 200:
                    body = _json_or_none(response)
                    if body is None:
                        raise UpstreamUnavailable(
                            "The upstream answered 200 with a body that is not JSON.",
                            upstream_status=200,
                            tracking_id=response.headers.get("trackingid"),
                        )
                    return body, response.links.get("next", {}).get("url")
                failure = error_for_response(response, self.clock.wall())
                if isinstance(failure, RateLimited):
                    wait = failure.retry_after
                elif response.status_code in RETRYABLE_STATUSES:
                    wait = self.retry.backoff(attempt)
                else:
                    raise failure
            if attempt >= self.retry.max_attempts or not self._fits(wait, scope):
                raise failure
            await self.clock.sleep(wait)

    @staticmethod
    def _fits(wait: float, scope: asyncio.Timeout) -> bool:
        when = scope.when()
        return when is None or asyncio.get_running_loop().time() + wait < when

    async def _send(
        self, url: httpx.URL, params: list[tuple[str, str]] | None, authorization: str
    ) -> httpx.Response:
        metrics = self.metrics
        if metrics is not None:
            metrics.upstream_waiting.inc()
        try:
            await self._slots.acquire()
        finally:
            if metrics is not None:
                metrics.upstream_waiting.dec()
        started = time.perf_counter()
        outcome = "error"
        if metrics is not None:
            metrics.upstream_in_flight.inc()
        try:
            # Only the caller's credentials travel upstream; no other caller header does.
            response = await self.http.get(
                url,
                params=tuple(params) if params is not None else None,
                headers={"Authorization": authorization},
            )
            outcome = str(response.status_code)
            return response
        finally:
            self._slots.release()
            if metrics is not None:
                metrics.upstream_in_flight.dec()
                metrics.observe_upstream(outcome, time.perf_counter() - started)

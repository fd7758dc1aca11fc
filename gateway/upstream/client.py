"""The upstream client: one ``Fetch`` in, one completed ``UpstreamPage`` out.

It asks ``GET {base}/telephony/config/numbers`` through the app's shared ``httpx.AsyncClient``,
whose transport is the ``ResilientTransport`` (``transport``: deadline, breaker, fair slots,
retries, bounded reads) over the network, the embedded simulator or a test's transport. What
is left here is what is about *this* endpoint: the URL of each ``Fetch`` (built once and kept,
never re-parsed from parameters), the caller's ``Authorization`` and no other header, the walk
along ``Link: rel="next"`` until the window is full (or, with ``pages``, one page at a time,
each page its own exchange), and the mapping of every upstream answer and failure onto the
contract's ``UpstreamError`` tree, with the status and tracking id.

Upstream answers are untrusted: a ``next`` link to anywhere but the configured endpoint is not
followed (the caller's token would go with it), one that does not advance is a fault, a 200
whose body is not JSON is a fault, and tracking ids are echoed only when they look like one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import structlog

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.domain.query import Fetch, PageWindow, UpstreamPage
from gateway.domain.upstream_items import UpstreamItems
from gateway.errors import (
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    code_for_upstream_status,
)
from gateway.http_syntax import decimal_value
from gateway.observability.request_facts import tracking_id_of
from gateway.upstream.body import NotJSON, read_numbers_page
from gateway.upstream.transport import (
    RATE_LIMIT_STATUSES,
    CircuitOpen,
    Exchange,
    ExchangeDeadlineExceeded,
    UnreadableAnswer,
    rate_limit_wait,
)

# The list-phone-numbers endpoint, relative to the API base (``https://webexapis.com/v1``).
NUMBERS_ENDPOINT = "/telephony/config/numbers"
_MESSAGE_LIMIT = 300
# URLs built from a ``Fetch``, kept per client: a repeated ``Fetch`` (the same filter and window,
# asked by another caller, again once its cache entry is gone, or with caching off) reuses its URL.
_KEPT_URLS = 256

log = structlog.get_logger("gateway.upstream")


def query_string(params: Iterable[tuple[str, str]]) -> str:
    """The query string httpx sends for ``params`` (``URL.copy_merge_params``): repeated
    names grouped where the name first appears, as ``httpx.QueryParams`` keeps them, and
    form-encoded by ``urlencode`` (a space as ``+``, ``+`` and ``&`` escaped)."""
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    return urlencode([(name, value) for name, values in grouped.items() for value in values])


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
    """One upstream HTTP answer, its body read (and bounded, by the transport)."""

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
        return RateLimited(
            f"The upstream is rate limiting this caller ({status}); retry later.",
            retry_after=rate_limit_wait(answer.headers, now),
            upstream_status=status,
            tracking_id=tracking_id,
        )
    kind = UpstreamRejected if 400 <= status < 500 else UpstreamUnavailable
    return kind(message, code=code, upstream_status=status, tracking_id=tracking_id)


def error_for_failure(failure: httpx.RequestError) -> UpstreamError:
    """The contract error for an exchange that got no answer to map (the transport's own
    refusals included)."""
    if isinstance(failure, CircuitOpen):
        return UpstreamUnavailable(
            "The upstream is failing; the gateway stopped calling it for a while. "
            f"Try again in {failure.retry_in:.0f} s."
        )
    if isinstance(failure, ExchangeDeadlineExceeded):
        return UpstreamTimeout(f"The upstream did not answer within {failure.deadline:g} s.")
    if isinstance(failure, UnreadableAnswer):
        return UpstreamUnavailable(
            str(failure),
            upstream_status=failure.status_code,
            tracking_id=tracking_id_of(failure.headers),
        )
    if isinstance(failure, httpx.TimeoutException):
        return UpstreamTimeout("The upstream did not answer in time.")
    return UpstreamUnavailable(f"Could not reach the upstream ({type(failure).__name__}).")


class UpstreamClient:
    """Fetches pages of ``GET {base}/telephony/config/numbers`` for one caller at a time.

    ``http`` is the shared client; built by ``factory.build_upstream``, its transport is the
    resilient one. (Over a bare client, as some tests use it, requests go out once each,
    with no deadline, breaker, slots or body bound.) ``clock``'s wall time reads an
    HTTP-date ``Retry-After`` into the ``RateLimited`` error's ``retryAfter``."""

    def __init__(
        self, http: httpx.AsyncClient, *, base_url: str, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.http = http
        self.base = httpx.URL(base_url.rstrip("/") + "/")
        self.numbers_url = httpx.URL(base_url.rstrip("/") + NUMBERS_ENDPOINT)
        self.clock = clock
        self._numbers_prefix = f"{self.numbers_url}?"
        # Per client (its base URL), bounded; a hit skips encoding and parsing the URL.
        self.upstream_url = lru_cache(maxsize=_KEPT_URLS)(self._upstream_url)

    def _upstream_url(self, fetch: Fetch) -> httpx.URL:
        """The URL asking for ``fetch``, byte for byte what httpx would build from
        ``fetch.upstream_params()``: encoded once and parsed once, with no round trip through
        ``QueryParams`` (``parse_qs`` of the empty query, a merge, an encode, a re-parse)."""
        return httpx.URL(self._numbers_prefix + query_string(fetch.upstream_params()))

    async def fetch(self, fetch: Fetch, authorization: str, *, caller: str) -> UpstreamPage:
        """Run one fetch to completion as one exchange (one deadline over every page and
        retry), or raise an ``UpstreamError``. ``authorization`` is the normalised
        ``Bearer <token>``; ``caller`` is the caller's identity (the pipeline's ``Caller``),
        its name for the fair slots."""
        exchange = Exchange(caller)
        wanted = fetch.window.size if fetch.window is not None else 1
        # The first URL with its query, built once: what is sent (httpx would merge the
        # parameters into a new URL again) and how the page is known among those visited.
        url = self.upstream_url(fetch)
        parts: list[UpstreamItems] = []
        collected = 0
        count: dict[str, Any] | None = None
        visited = {str(url)}
        while True:
            (page_items, page_count), next_url = await self._get(url, authorization, exchange)
            count = count if count is not None else page_count
            parts.append(page_items)
            collected += len(page_items)
            if fetch.window is None or collected >= wanted or not page_items or not next_url:
                break
            url = self._next_request(next_url, fetch, collected, visited)
        has_more = collected > wanted or (bool(next_url) and bool(page_items))
        items = parts[0] if len(parts) == 1 else UpstreamItems.concat(parts)
        return UpstreamPage(items=items[:wanted], count=count, has_more=has_more)

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
        otherwise answer a 100,000-item walk in one body, past the body bound and the
        stream's memory bound."""
        assert fetch.window is not None  # a walk is of a window
        wanted = fetch.window.size
        first = Fetch(
            fetch.query, PageWindow(fetch.window.start, min(wanted, page_size)), fetch.details
        )
        url = self.upstream_url(first)
        # Shared by the pages' exchanges: a ``next`` link back to any page is a fault.
        visited = {str(url)}
        collected = 0
        while True:
            (page_items, count), next_url = await self._get(url, authorization, Exchange(caller))
            page_items = page_items[: wanted - collected]
            collected += len(page_items)
            more = bool(next_url) and bool(page_items) and collected < wanted
            yield UpstreamPage(items=page_items, count=count, has_more=more)
            if not more or next_url is None:
                return
            url = self._next_request(next_url, fetch, collected, visited, page_size=page_size)

    def _next_request(
        self,
        next_url: str,
        fetch: Fetch,
        collected: int,
        visited: set[str],
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
            if str(url) in visited or behind:
                raise UpstreamUnavailable(
                    "The upstream's next link does not advance (it would serve the same "
                    "entries again); the page was not completed.",
                    upstream_status=200,
                )
            visited.add(str(url))
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

    async def _get(
        self, url: httpx.URL, authorization: str, exchange: Exchange
    ) -> tuple[tuple[UpstreamItems, dict[str, Any] | None], str | None]:
        """One page of the exchange: its items and count (``body.read_numbers_page``) and its
        next link, or an ``UpstreamError``."""
        try:
            answer = await self._request(url, authorization, exchange)
        except httpx.RequestError as failure:
            raise error_for_failure(failure) from None
        if answer.status != 200:
            raise error_for_response(answer, self.clock.wall())
        try:
            page = read_numbers_page(answer.content)
        except NotJSON:
            raise UpstreamUnavailable(
                "The upstream answered 200 with a body that is not JSON.",
                upstream_status=200,
                tracking_id=tracking_id_of(answer.headers),
            ) from None
        return page, answer.next_link

    async def _request(
        self, url: httpx.URL, authorization: str, exchange: Exchange
    ) -> UpstreamAnswer:
        # Only the caller's credentials travel upstream; no other caller header does.
        async with self.http.stream(
            "GET",
            url,
            headers={"Authorization": authorization},
            extensions=exchange.extensions,
        ) as response:
            chunks = [chunk async for chunk in response.aiter_bytes()]
            return UpstreamAnswer(
                status=response.status_code,
                headers=response.headers,
                # The transport hands the body on as the one buffer it read it into: kept as
                # it is, not copied into a joined one.
                content=chunks[0] if len(chunks) == 1 else b"".join(chunks),
                next_link=response.links.get("next", {}).get("url"),
            )

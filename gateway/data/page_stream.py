"""The lazy upstream walk behind a list delivered with ``@stream``.

``open_stream`` answers a streamed ``phoneNumbers`` window (up to ``GATEWAY_MAX_STREAM_ITEMS``)
with a ``StreamedPageResult`` whose head is what the initial payload needs and no more: the
first upstream response of the window's walk (asked with the counts when ``pageInfo`` or
``totalCount`` is selected), so the first rows leave after one upstream page whatever the
upstream caps its pages at, not after a ``GATEWAY_MAX_PAGE_SIZE`` window completed by
following ``next`` links. The rest is walked by ``UpstreamWalk``, one upstream page at a time,
each page fetched only when the consumer asks for the next one (backpressure), and the walk
ends when the consumer closes it.

A window that fits in one page (``GATEWAY_MAX_PAGE_SIZE``) is a page like any other when the
page cache holds it: the whole window is the head, and nothing is asked upstream. Otherwise
nothing is read from the cache: the head is the walk's first page, fresh, so the total the
window's ``pageInfo`` and ``totalCount`` come from is of the walk's moment (a cached first
chunk, up to the TTL old, would answer a total of another moment than the items streamed).

Why the walk is not cached: a walk of 100,000 items stored whole would hold what streaming
exists to avoid holding, and per-page entries keyed by the upstream's own page boundaries
would rarely be asked for again (another window starts elsewhere). Each page of the walk is
one upstream exchange with its own deadline, breaker check, fair slot, retries and size bound
(``UpstreamClient.pages``), under the caller's own credentials.

An inventory export (``transports.export``) walks a whole filtered list the same way, from its
first entry, with ``whole_list``: nothing of it is cached either (a download is one moment of
the list, and would otherwise hold what it streams). It is bounded as a streamed window is
(``GATEWAY_MAX_STREAM_ITEMS``), which also ends a walk an upstream's ``next`` links would never
end.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing

from gateway.data.caller import Caller
from gateway.domain.connection import StreamedPageResult, placed_tail
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, TailWindow, UpstreamPage
from gateway.upstream.client import UpstreamClient

# The page cache's answer to a fetch, when it holds one (``CallerNumbers.cached``).
CachedLookup = Callable[[Fetch], Awaitable[UpstreamPage | None]]


class UpstreamWalk:
    """One caller's uncached walk of a window, page by page (a ``numbers.connection.PageWalk``)."""

    __slots__ = ("_caller", "_on_first_page", "_page_size", "_upstream")

    def __init__(
        self,
        upstream: UpstreamClient,
        caller: Caller,
        *,
        page_size: int,
        on_first_page: Callable[[], None] | None = None,
    ) -> None:
        self._upstream = upstream
        self._caller = caller
        # Each upstream request of the walk asks for at most this many items.
        self._page_size = page_size
        self._on_first_page = on_first_page

    def __call__(self, fetch: Fetch) -> AsyncGenerator[UpstreamPage, None]:
        caller = self._caller
        return self._upstream.pages(
            fetch, caller.authorization, caller=caller.identity, page_size=self._page_size
        )

    async def first_page(self, fetch: Fetch) -> UpstreamPage:
        """The first upstream response of ``fetch``'s walk, alone: one exchange."""
        async with aclosing(self(fetch)) as pages:
            page = await anext(pages)
        if self._on_first_page is not None:
            self._on_first_page()
        return page


async def open_stream(
    query: NumbersQuery,
    window: PageWindow | TailWindow,
    *,
    max_page_size: int,
    details: bool,
    cached: CachedLookup,
    walk: UpstreamWalk,
) -> StreamedPageResult:
    """A streamed window: its head fetched (``details``: with the counts), the rest left to
    ``walk`` until the client asks for it. A ``TailWindow`` (``last`` without ``before``)
    is placed first: its probe's head, with the counts, is the window's head when the list
    ends within the probe; otherwise the placed window's head is a second upstream page."""
    if isinstance(window, TailWindow):
        probe = await _head(query, window.probe, True, max_page_size, cached, walk)
        placed = placed_tail(window, probe)
        if placed.start == window.lower:
            return StreamedPageResult(query, placed, probe, walk)
        window = placed
    head = await _head(query, window, details, max_page_size, cached, walk)
    return StreamedPageResult(query, window, head, walk)


async def _head(
    query: NumbersQuery,
    window: PageWindow,
    details: bool,
    max_page_size: int,
    cached: CachedLookup,
    walk: UpstreamWalk,
) -> UpstreamPage:
    ask = Fetch(query, window, details=details)
    if window.size <= max_page_size:
        page = await cached(ask)
        if page is not None:
            return page
    return await walk.first_page(ask)


def whole_list(
    query: NumbersQuery, walk: UpstreamWalk, *, max_items: int
) -> AsyncGenerator[UpstreamPage, None]:
    """Every entry ``query`` matches, from the first, one upstream page at a time as the
    consumer asks for the next (backpressure), uncached; closing it ends the walk. The first
    page carries the counts (``details``), so that a list longer than ``max_items`` can be
    refused before anything of it is used; the walk asks for at most ``max_items + 1``
    entries, so that one that grows past the bound while it is walked is seen to."""
    return walk(Fetch(query, PageWindow(0, max_items + 1), details=True))

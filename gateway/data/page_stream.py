"""The lazy upstream walk behind a list delivered with ``@stream``.

``open_stream`` answers a streamed ``phoneNumbers`` window (up to ``GATEWAY_MAX_STREAM_ITEMS``)
with a ``StreamedPageResult``: its first chunk (at most ``GATEWAY_MAX_PAGE_SIZE`` items) is
loaded like any page, through the operation's loader, the page cache and single flight, so
it is shared with the operation's other fields and with other requests; the rest is walked
by ``UpstreamWalk``, one upstream page at a time, each page fetched only when the consumer
asks for the next one (backpressure), and the walk ends when the consumer closes it.

Why the rest is not cached: a walk of 100,000 items stored whole would hold what streaming
exists to avoid holding, and per-page entries keyed by the upstream's own page boundaries
would rarely be asked for again (another window starts elsewhere). Each page of the rest is
one upstream exchange with its own deadline, breaker check, fair slot, retries and size
bound (``UpstreamClient.pages``), under the caller's own credentials.

An inventory export (``transports.export``) walks a whole filtered list the same way, from its
first entry, with ``whole_list``: nothing of it is cached either (a download is one moment of
the list, and would otherwise hold what it streams). It is bounded as a streamed window is
(``GATEWAY_MAX_STREAM_ITEMS``), which also ends a walk an upstream's ``next`` links would never
end.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

from gateway.data.caller import Caller
from gateway.domain.connection import StreamedPageResult
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, UpstreamPage
from gateway.upstream.client import UpstreamClient


class UpstreamWalk:
    """One caller's uncached walk of a window, page by page (a ``numbers.connection.PageWalk``)."""

    __slots__ = ("_caller", "_page_size", "_upstream")

    def __init__(self, upstream: UpstreamClient, caller: Caller, *, page_size: int) -> None:
        self._upstream = upstream
        self._caller = caller
        # Each upstream request of the walk asks for at most this many items.
        self._page_size = page_size

    def __call__(self, fetch: Fetch) -> AsyncGenerator[UpstreamPage, None]:
        caller = self._caller
        return self._upstream.pages(
            fetch, caller.authorization, caller=caller.identity, page_size=self._page_size
        )


def first_chunk(window: PageWindow, max_page_size: int) -> PageWindow:
    """The part of a streamed window fetched like a page: what an unstreamed page may hold."""
    return PageWindow(window.start, min(window.size, max_page_size))


async def open_stream(
    query: NumbersQuery,
    window: PageWindow,
    *,
    max_page_size: int,
    details: bool,
    load: Callable[[Fetch], Awaitable[UpstreamPage]],
    load_fresh: Callable[[Fetch], Awaitable[UpstreamPage]],
    walk: UpstreamWalk,
) -> StreamedPageResult:
    """A streamed window: its first chunk loaded (``details``: with the counts), the rest
    left to ``walk`` until the client asks for it.

    A window longer than its first chunk takes that chunk fresh from the upstream
    (``load_fresh``), not from the page cache: the window's ``pageInfo`` and ``totalCount``
    come from the chunk's ``count.total``, and the walk after it is live, so a cached chunk
    (up to the TTL old) would answer a total of another moment than the items streamed. A
    window the chunk holds whole is a page like any other, cached."""
    chunk = first_chunk(window, max_page_size)
    ask = Fetch(query, chunk, details=details)
    first = await (load_fresh(ask) if chunk.size < window.size else load(ask))
    return StreamedPageResult(query, window, first, walk)


def whole_list(
    query: NumbersQuery, walk: UpstreamWalk, *, max_items: int
) -> AsyncGenerator[UpstreamPage, None]:
    """Every entry ``query`` matches, from the first, one upstream page at a time as the
    consumer asks for the next (backpressure), uncached; closing it ends the walk. The first
    page carries the counts (``details``), so that a list longer than ``max_items`` can be
    refused before anything of it is used; the walk asks for at most ``max_items + 1``
    entries, so that one that grows past the bound while it is walked is seen to."""
    return walk(Fetch(query, PageWindow(0, max_items + 1), details=True))

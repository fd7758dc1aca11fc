"""One page of numbers as the connection type reads it: nodes, edges, page info and total,
each built only when selected.

``PageResult`` is a window held whole (at most ``GATEWAY_MAX_PAGE_SIZE`` items).
``StreamedPageResult`` is a window delivered with ``@stream`` (up to
``GATEWAY_MAX_STREAM_ITEMS``): its first chunk is fetched like any page, the rest is walked
upstream page by page while the client takes them (``chunks``), so it is never held whole.
Both answer ``pageInfo`` and ``totalCount`` exactly alike for the same window.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

from gateway.domain.arguments import cursor_at
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, UpstreamPage
from gateway.domain.reader import read_total, to_phone_number
from gateway.domain.records import PageInfo, PhoneNumber, PhoneNumberEdge
from gateway.errors import UpstreamUnavailable

# The rest of a window, one upstream page at a time (``pipeline.page_stream``). A page's
# ``has_more``: another page follows it in this walk.
PageWalk = Callable[[Fetch], AsyncGenerator[UpstreamPage, None]]

_NO_TOTAL = "The upstream did not report count.total for this query."


class PageResult:
    """One page as the connection type reads it; nodes and cursors are built on demand."""

    __slots__ = ("_fingerprint", "_nodes", "page", "window")

    def __init__(self, query: NumbersQuery, window: PageWindow, page: UpstreamPage) -> None:
        self.window = window
        self.page = page
        # Hashed once per page, not once per cursor: a page may carry 2,000 of them.
        self._fingerprint = query.fingerprint
        self._nodes: list[PhoneNumber] | None = None

    @property
    def total(self) -> int | None:
        return read_total(self.page.count)

    def cursor(self, position: int) -> str:
        return cursor_at(self._fingerprint, position)

    def nodes(self) -> list[PhoneNumber]:
        if self._nodes is None:
            self._nodes = [to_phone_number(item) for item in self.page.items]
        return self._nodes

    def edges(self) -> list[PhoneNumberEdge]:
        start = self.window.start
        return [
            PhoneNumberEdge(cursor=self.cursor(start + offset), node=node)
            for offset, node in enumerate(self.nodes())
        ]

    def page_info(self) -> PageInfo:
        return _page_info(self.cursor, self.window.start, len(self.page.items), self._has_next())

    def _has_next(self) -> bool:
        total = self.total
        count = len(self.page.items)
        return self.window.start + count < total if total is not None else self.page.has_more

    def total_count(self) -> int:
        total = self.total
        if total is not None:
            return total
        if not self.page.has_more:
            # The walk reached the end, so the total is known without the upstream's count.
            return self.window.start + len(self.page.items)
        raise UpstreamUnavailable(_NO_TOTAL, upstream_status=200)


def _page_info(cursor: Callable[[int], str], start: int, count: int, has_next: bool) -> PageInfo:
    return PageInfo(
        has_next_page=has_next,
        has_previous_page=start > 0,
        start_cursor=cursor(start) if count else None,
        end_cursor=cursor(start + count - 1) if count else None,
    )


class StreamedPageResult:
    """A window delivered with ``@stream``: ``first`` is its first chunk (at most
    ``GATEWAY_MAX_PAGE_SIZE`` items, with the counts when ``pageInfo`` or ``totalCount`` is
    selected; fetched fresh from the upstream when the walk may go on past it, so its total
    is of the walk's moment); ``walk`` fetches the rest one upstream page at a time.

    ``pageInfo`` must be answered before the walk ends, so it is worked out from
    ``count.total``: the window holds ``min(size, total - start)`` entries, as the held page
    would. Without a total it is known only when the first chunk already ended the walk."""

    __slots__ = ("_fingerprint", "_walk", "first", "query", "window")

    def __init__(
        self, query: NumbersQuery, window: PageWindow, first: UpstreamPage, walk: PageWalk
    ) -> None:
        self.query = query
        self.window = window
        self.first = first
        self._walk = walk
        self._fingerprint = query.fingerprint

    @property
    def total(self) -> int | None:
        return read_total(self.first.count)

    def cursor(self, position: int) -> str:
        return cursor_at(self._fingerprint, position)

    @property
    def _walk_goes_on(self) -> bool:
        return self.first.has_more and len(self.first.items) < self.window.size

    def page_info(self) -> PageInfo:
        start, size = self.window.start, self.window.size
        total = self.total
        if total is not None:
            count = max(0, min(size, total - start))
            return _page_info(self.cursor, start, count, start + count < total)
        if self._walk_goes_on:
            raise UpstreamUnavailable(_NO_TOTAL, upstream_status=200)
        # The first chunk is the whole window: the held page's answer, exactly.
        return PageResult(self.query, self.window, self.first).page_info()

    def total_count(self) -> int:
        total = self.total
        if total is not None:
            return total
        if not self.first.has_more:
            return self.window.start + len(self.first.items)
        raise UpstreamUnavailable(_NO_TOTAL, upstream_status=200)

    def head(self) -> PageResult:
        """The first chunk, already fetched. Its ``page.has_more``: a tail follows."""
        first = self.first
        head = UpstreamPage(first.items, first.count, has_more=self._walk_goes_on)
        return PageResult(self.query, PageWindow(self.window.start, len(first.items)), head)

    async def tail(self) -> AsyncGenerator[PageResult, None]:
        """The rest of the window, one upstream page per chunk, each fetched only when the
        consumer asks for it (closing this ends the walk: no further upstream calls). A
        chunk's ``page.has_more``: another chunk may follow."""
        if not self._walk_goes_on:
            return
        taken = len(self.first.items)
        position = self.window.start + taken
        rest = Fetch(self.query, PageWindow(position, self.window.size - taken), details=False)
        async with aclosing(self._walk(rest)) as pages:
            async for page in pages:
                yield PageResult(self.query, PageWindow(position, len(page.items)), page)
                position += len(page.items)

    async def chunks(self) -> AsyncGenerator[PageResult, None]:
        """The whole window, chunk by chunk: ``head()`` then ``tail()``."""
        yield self.head()
        async with aclosing(self.tail()) as tail:
            async for chunk in tail:
                yield chunk

    async def nodes(self) -> AsyncIterator[PhoneNumber]:
        """The window's numbers, read a chunk at a time (normal execution's path)."""
        async with aclosing(self.chunks()) as chunks:
            async for chunk in chunks:
                for node in chunk.nodes():
                    yield node

    async def edges(self) -> AsyncIterator[PhoneNumberEdge]:
        async with aclosing(self.chunks()) as chunks:
            async for chunk in chunks:
                for edge in chunk.edges():
                    yield edge

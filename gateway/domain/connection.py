"""One page of numbers as the connection type reads it: nodes, edges, page info and total,
each built only when selected.

``PageResult`` is a window held whole (at most ``GATEWAY_MAX_PAGE_SIZE`` items), of one list
or merged from a fan-out's (``fan_out``, which brings its own cursors). ``StreamedWindow`` is
what a window delivered with ``@stream`` answers (a head, then a lazy tail of chunks);
``StreamedPageResult`` is one list's window delivered with ``@stream`` (up to
``GATEWAY_MAX_STREAM_ITEMS``): its head is the first upstream response of its walk (or the
whole window, when the page cache holds it as a page), so the initial payload waits for one
upstream page whatever the upstream's page cap; the rest is walked upstream page by page while
the client takes them (``chunks``), so it is never held whole. Both answer ``pageInfo`` and
``totalCount`` exactly alike for the same window, forward or backward (a window is an offset
range of the list, wherever its cursors put it; ``placed_tail`` places Relay's ``last``
without ``before`` once its probe has told the total).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from functools import partial

from gateway.domain.arguments import cursor_at
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, TailWindow, UpstreamPage
from gateway.domain.reader import read_total, to_phone_number
from gateway.domain.records import PageInfo, PhoneNumber, PhoneNumberEdge
from gateway.errors import UpstreamUnavailable

# The rest of a window, one upstream page at a time (``pipeline.page_stream``). A page's
# ``has_more``: another page follows it in this walk.
PageWalk = Callable[[Fetch], AsyncGenerator[UpstreamPage, None]]

_NO_TOTAL = "The upstream did not report count.total for this query."


def placed_tail(window: TailWindow, probe: UpstreamPage) -> PageWindow:
    """Where a ``TailWindow`` lies, from the answer to its ``probe`` (asked with the counts).
    Without ``count.total`` the tail can be placed only when the list visibly ended within the
    probe (fewer entries than asked and nothing after them)."""
    total = read_total(probe.count)
    if total is None:
        if probe.has_more or len(probe.items) >= window.size:
            raise UpstreamUnavailable(_NO_TOTAL, upstream_status=200)
        total = window.lower + len(probe.items)
    return window.resolve(total)


# The cursor of a list position (``PageResult.cursor``).
Cursors = Callable[[int], str]


class PageResult:
    """One page as the connection type reads it; nodes and cursors are built on demand.

    ``query``'s cursors name list positions (``arguments.cursor_at``); a merged page of a
    fanned-out query (``fan_out``) brings its own ``cursors`` instead (``query`` None), which
    hold a position per value. Either way ``window`` is the page's place in its list."""

    __slots__ = ("_cursors", "_nodes", "page", "window")

    def __init__(
        self,
        query: NumbersQuery | None,
        window: PageWindow,
        page: UpstreamPage,
        *,
        cursors: Cursors | None = None,
    ) -> None:
        self.window = window
        self.page = page
        if cursors is None:
            assert query is not None
            # Hashed once per page, not once per cursor: a page may carry 2,000 of them.
            cursors = partial(cursor_at, query.fingerprint)
        self._cursors = cursors
        self._nodes: list[PhoneNumber] | None = None

    @property
    def total(self) -> int | None:
        return read_total(self.page.count)

    def cursor(self, position: int) -> str:
        return self._cursors(position)

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


class StreamedWindow(ABC):
    """A window delivered with ``@stream``, as the connection type and the projecting
    executor read it: ``head()``, the first chunk, already fetched (what the initial payload
    is built from); ``tail()``, the rest, chunk by chunk as the consumer asks; ``page_info``
    and ``total_count`` answered before the walk ends."""

    __slots__ = ()

    @abstractmethod
    def head(self) -> PageResult:
        """The first chunk, already fetched. Its ``page.has_more``: a tail follows."""

    @abstractmethod
    def tail(self) -> AsyncGenerator[PageResult, None]:
        """The rest of the window, one chunk at a time, each fetched only when the consumer
        asks for it (closing it ends the walk). A chunk's ``page.has_more``: another chunk
        may follow."""

    @abstractmethod
    def page_info(self) -> PageInfo: ...

    @abstractmethod
    def total_count(self) -> int: ...

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


class StreamedPageResult(StreamedWindow):
    """A window delivered with ``@stream``: ``first`` is its head, what the initial payload
    is built from: the first upstream response of the window's walk (one upstream page,
    whatever the upstream caps its pages at; with the counts when ``pageInfo`` or
    ``totalCount`` is selected, so they are of the walk's moment), or the whole window when
    the page cache holds it as a page; ``walk`` fetches the rest one upstream page at a time.

    ``first.has_more`` says whether entries follow the head (``UpstreamClient.pages``: within
    the window); so the walk goes on past the head while it holds less than the window, and
    the list ended within the head when it holds less and nothing follows.

    ``pageInfo`` must be answered before the walk ends, so it is worked out from
    ``count.total``: the window holds ``min(size, total - start)`` entries, as the held page
    would. Without a total it is known only when the list ended within the head."""

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

    def _known_total(self) -> int:
        total = self.total
        if total is not None:
            return total
        if not self.first.has_more and len(self.first.items) < self.window.size:
            return self.window.start + len(self.first.items)  # the list ended in the head
        raise UpstreamUnavailable(_NO_TOTAL, upstream_status=200)

    def page_info(self) -> PageInfo:
        start, size = self.window.start, self.window.size
        total = self._known_total()
        count = max(0, min(size, total - start))
        return _page_info(self.cursor, start, count, start + count < total)

    def total_count(self) -> int:
        return self._known_total()

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

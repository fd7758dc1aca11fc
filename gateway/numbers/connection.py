"""One page of numbers as the connection type reads it: nodes, edges, page info and total,
each built only when selected."""

from __future__ import annotations

from gateway.errors import UpstreamUnavailable
from gateway.numbers.arguments import cursor_at
from gateway.numbers.query import NumbersQuery, PageWindow, UpstreamPage
from gateway.numbers.reader import read_total, to_phone_number
from gateway.numbers.types import PageInfo, PhoneNumber, PhoneNumberEdge


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
        count = len(self.page.items)
        start = self.window.start
        total = self.total
        has_next = start + count < total if total is not None else self.page.has_more
        return PageInfo(
            has_next_page=has_next,
            has_previous_page=start > 0,
            start_cursor=self.cursor(start) if count else None,
            end_cursor=self.cursor(start + count - 1) if count else None,
        )

    def total_count(self) -> int:
        total = self.total
        if total is not None:
            return total
        if not self.page.has_more:
            # The walk reached the end, so the total is known without the upstream's count.
            return self.window.start + len(self.page.items)
        raise UpstreamUnavailable(
            "The upstream did not report count.total for this query.", upstream_status=200
        )

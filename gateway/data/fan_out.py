"""The upstream asks of a fanned-out query (``filter.locationIds``, ``filter.ownerTypes``):
each part (one value's single-valued query) asked for what its share of the window names
(``domain.fan_out.merged_window``), every part at once, and the answers merged.

Each part's ask is exactly the ``Fetch`` its single-valued query makes for that window, made
through the request's loader (so the operation's other fields asking the same thing share the
call) and the page cache under the caller's key (so a later single-valued query hits it), and
sent under the caller's fair slots like any other. A root field's parts are asked with
``own_entry``: never answered by an entity batch's walk of the org-wide list, whose entries are
not the single-valued query's. A part known to have ended at the window's start is not asked,
unless the counts are wanted; a part whose share is empty is asked only for the counts, when
they are wanted. So a page of a fan-out of ``n`` values costs at most ``n`` upstream calls
(``last`` without ``before``: a probe and maybe one more per part, as a single-valued tail).

A streamed window (``@stream``) asks each part's first upstream page at once (or takes the page
cache's whole window of it), merges what they allow, and walks a part's next page only when
the merge needs it (``domain.fan_out.MergedStream``), uncached, as ``page_stream`` walks one
list. An export walks every part's whole list so (``merged_walk``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gateway.data.page_stream import CachedLookup, UpstreamWalk
from gateway.domain.connection import PageResult
from gateway.domain.fan_out import (
    MergedStream,
    MergedTail,
    MergedWindow,
    PartWindow,
    merged_page,
    summed_counts,
)
from gateway.domain.fan_out import merged_walk as merge_walks
from gateway.domain.query import (
    FanOutQuery,
    Fetch,
    NumbersQuery,
    PageWindow,
    UpstreamPage,
)

T = TypeVar("T")

# One ask of the request's loader: (the fetch) -> the upstream's answer.
Load = Callable[[Fetch], Awaitable[UpstreamPage]]


async def every(asks: Sequence[Awaitable[T]]) -> list[T]:
    """Every ask's answer, all asked at once; the first failure is raised once every ask has
    ended (none is left running unobserved)."""
    answers = await asyncio.gather(*asks, return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers  # type: ignore[return-value]  # no exception is left among them


def _counts_only(page: UpstreamPage) -> UpstreamPage:
    """A counts answer (``max=1``) as an empty window's: its one entry is not the window's."""
    return UpstreamPage([], page.count, has_more=page.has_more)


async def held_page(
    query: FanOutQuery, window: MergedWindow | MergedTail, load: Load, *, details: bool
) -> PageResult:
    """A window held whole: each part's share asked at once, then merged."""
    parts = query.parts
    if isinstance(window, MergedTail):
        return await _tail_page(query, window, load)
    if window.empty:
        # Nothing to merge: the counts say whether entries follow (as a single empty page).
        counted = await every([load(Fetch(part, None, details=True)) for part in parts])
        return merged_page(query, window, [_counts_only(page) for page in counted])
    answers = await every(
        [
            _share(part, share, load, details)
            for part, share in zip(parts, window.parts, strict=True)
        ]
    )
    return merged_page(query, window, answers)


async def _share(
    part: NumbersQuery, share: PartWindow, load: Load, details: bool
) -> UpstreamPage | None:
    """A part's answer to its share of a held window (None: not asked)."""
    if share.window.size == 0:
        return _counts_only(await load(Fetch(part, None, details=True))) if details else None
    if share.ended and not details:
        return None  # its list ended where the window starts: nothing to ask it for
    return await load(Fetch(part, share.window, details=details))


async def _tail_page(query: FanOutQuery, tail: MergedTail, load: Load) -> PageResult:
    """The last entries: each part's own tail, as its single-valued ``last`` asks it (a
    probe with the counts, the answer when the part ends within it; else one more page where
    its total puts it), then of their merge the last."""
    probes = await every(
        [
            load(Fetch(part, part_tail.probe, details=True))
            for part, part_tail in zip(query.parts, tail.part_tails(), strict=True)
        ]
    )
    window = tail.resolve(probes)

    async def answer(index: int) -> UpstreamPage:
        probe, placed = probes[index], window.parts[index].window
        if placed.start == tail.lower[index] or placed.size == 0:
            return probe
        page = await load(Fetch(query.parts[index], placed, details=False))
        return UpstreamPage(page.items, probe.count, page.has_more)

    answers = await every([answer(index) for index in range(len(query.parts))])
    return merged_page(query, window, answers)


async def counts(query: FanOutQuery, load: Load) -> dict[str, object] | None:
    """The merged list's counts: each part's, summed."""
    answers = await every([load(Fetch(part, None, details=True)) for part in query.parts])
    return summed_counts([answer.count for answer in answers])


@dataclass(frozen=True, slots=True)
class StreamAsks:
    """How a streamed window reaches a part: the page cache's fresh answer (``cached``), the
    request's loader for counts (``load``), the caller's uncached walk (``walk``)."""

    cached: CachedLookup
    load: Load
    walk: UpstreamWalk
    max_page_size: int


async def open_merged_stream(
    query: FanOutQuery, window: MergedWindow | MergedTail, asks: StreamAsks, *, details: bool
) -> MergedStream:
    """A streamed window: each part's first upstream page asked at once (with the counts when
    ``details``), the rest of each walked when the merge needs it. A ``MergedTail`` is
    placed first, each part by its own probe page (as ``page_stream.open_stream`` places one
    list's), then each part not ending within its probe asks the placed window's head."""
    parts = query.parts
    if isinstance(window, MergedTail):
        tails = window.part_tails()
        probes = await every(
            [_head(part, tail.probe, True, asks) for part, tail in zip(parts, tails, strict=True)]
        )
        placed_window = window.resolve(probes)

        async def placed_head(index: int) -> UpstreamPage:
            placed = placed_window.parts[index].window
            probe = probes[index]
            if placed.start == tails[index].lower or placed.size == 0:
                return probe
            head = await _head(parts[index], placed, False, asks)
            return UpstreamPage(head.items, probe.count, head.has_more)

        heads: list[UpstreamPage | None] = list(
            await every([placed_head(index) for index in range(len(parts))])
        )
        window = placed_window
    else:
        heads = await every(
            [
                _stream_share(part, share, asks, details)
                for part, share in zip(parts, window.parts, strict=True)
            ]
        )
    return MergedStream(query, window, heads, [_part_walk(part, asks.walk) for part in parts])


async def _stream_share(
    part: NumbersQuery, share: PartWindow, asks: StreamAsks, details: bool
) -> UpstreamPage | None:
    if share.window.size == 0:
        if not details:
            return None
        return _counts_only(await asks.load(Fetch(part, None, details=True)))
    if share.ended and not details:
        return None
    return await _head(part, share.window, details, asks)


async def _head(
    part: NumbersQuery, window: PageWindow, details: bool, asks: StreamAsks
) -> UpstreamPage:
    """A part's first chunk: the page cache's whole window when it holds one (a window that
    fits in a page), else the first upstream page of its walk, fresh."""
    ask = Fetch(part, window, details=details)
    if window.size <= asks.max_page_size:
        page = await asks.cached(ask)
        if page is not None:
            return page
    return await asks.walk.first_page(ask)


def _part_walk(
    part: NumbersQuery, walk: UpstreamWalk
) -> Callable[[int, int], AsyncGenerator[UpstreamPage, None]]:
    def rest(position: int, size: int) -> AsyncGenerator[UpstreamPage, None]:
        return walk(Fetch(part, PageWindow(position, size), details=False))

    return rest


def merged_walk(
    query: FanOutQuery, walks: Sequence[AsyncGenerator[UpstreamPage, None]]
) -> AsyncGenerator[UpstreamPage, None]:
    """An export's whole merged list: ``walks``, each part's whole list page by page (in the
    order of ``query.parts``: ``page_stream.whole_list`` of each), merged as the consumer
    asks for the next chunk (``domain.fan_out.merged_walk``)."""
    return merge_walks(query, walks)

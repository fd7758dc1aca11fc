"""One exact connection over several values of a parameter the upstream takes one value of.

``filter.locationIds`` and ``filter.ownerTypes`` make a ``FanOutQuery`` (``arguments.
list_query``): one ``NumbersQuery`` per value, its *parts*, each exactly the single-valued
query, so each part's pages are the single-valued query's calls and cache entries. The values
partition the list (a number has one location, and at most one owner, of one type), so the
fanned-out list is the parts' lists merged, with nothing in two of them, and its counts are
their sums. This module holds the rules that make the merge exact; ``data.fan_out`` asks the
upstream for what they name.

The merge order (``merge_key``)
    Each part's list comes in the upstream's order; the merge must order them the same way,
    so the merged list equals one org-wide call filtered to the values. Without ``order``
    (the upstream's default, "by number, then extension"): entries with a phone number first,
    by the number as text (code point by code point); then extension-only entries; equal
    numbers (none, in practice) and extension-only entries by extension in its natural
    order (an extension of ASCII digits by its numeric value, equal values by their text;
    other extensions after every numeric one, by text; none last); then by location id, as
    text (two locations may both have extension 1001). With ``order``: by its value
    (``LAST_NAME``: the owner's last name lower-cased; ``DN``: the number; ``EXTENSION``: the
    extension in natural order), ascending or descending, entries without the value last in
    both directions, and ties broken by the default order above, ascending. The embedded
    simulator orders exactly so; Webex documents only the first step of each, so against it
    two entries its order leaves tied may come in another order than an org-wide call's,
    never lost or repeated: the merge takes each part's entries in the part's own order, and
    the cursors hold a position per part.

Cursors (``pn2``)
    An entry's cursor holds, for each part, how many of its entries come up to and including
    this one (and whether that part's list has ended there), which part the entry is from,
    and the fan-out's fingerprint (another query's cursor is refused, as ``pn1``'s are). So
    ``after`` continues with each part read from its own position, and ``before`` pages back
    from them: a page of ``n`` entries asks each part for at most ``n`` entries, one request
    per part (a part known to have ended is not asked again, unless the page's counts are
    wanted). A *positional* cursor (the fan-out's fingerprint and a position in the merged
    list only) is what ``pageInfo`` of a streamed window answers when its walk has not merged
    that far yet; it continues as ``page.offset`` does.

Windows (``merged_window``)
    A window is, per part, a ``PageWindow`` of its list (``PartWindow``), and how many of the
    merged entries to skip and to take: forward from a cursor, each part's next ``first``;
    backward from a cursor, each part's ``last`` entries before its position, of which the
    merge takes the last ``last``; ``offset`` (and a positional cursor), each part from its
    start up to ``offset + first``, which is what finding the offset's place costs, so it
    may reach at most the page ceiling (``GATEWAY_MAX_PAGE_SIZE``; a streamed list's
    ``GATEWAY_MAX_STREAM_ITEMS``); ``last`` without ``before`` (``MergedTail``), each part's
    own tail placed by its own probe (``TailWindow``), of which the merge takes the last.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from typing import Any, Final

from gateway.domain.arguments import (
    another_querys_cursor,
    checked_paging,
    cursor_fields,
    is_position,
    not_our_cursor,
    page_ceiling,
    position_window,
)
from gateway.domain.connection import PageResult, StreamedWindow, placed_tail
from gateway.domain.query import FanOutQuery, PageWindow, TailWindow, UpstreamPage
from gateway.domain.reader import TEXT, read_total
from gateway.domain.records import PageInfo, PageRequest
from gateway.domain.upstream_items import PickedItems
from gateway.errors import BadUserInput, UpstreamUnavailable

CURSOR_PREFIX: Final = "pn2"
_POSITIONAL: Final = "at"
_ENDED: Final = "e"
_NO_TOTAL: Final = "The upstream did not report count.total for this query."

Item = dict[str, Any]  # an upstream entry, as the upstream sent it
MergeKey = Callable[[Mapping[str, Any]], tuple[Any, ...]]


# -- the merge order ---------------------------------------------------------------------------


def natural(text: str | None) -> tuple[int, int, str, str]:
    """An extension's place in the upstream's order: ASCII digits by numeric value (compared
    as digit strings, so any length is exact), equal values by their text; other text after
    every numeric one, by text; none last."""
    if text is None:
        return (2, 0, "", "")
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0")
        return (0, len(digits), digits, text)
    return (1, 0, "", text)


def _text(holder: object, key: str) -> str | None:
    value = holder.get(key) if isinstance(holder, Mapping) else None
    return TEXT.read(value)


def default_key(item: Mapping[str, Any]) -> tuple[Any, ...]:
    """The upstream's default order: by number, then extension, then (for what those leave
    tied: extension-only entries of two locations) location id."""
    number = _text(item, "phoneNumber")
    location = _text(item.get("location"), "id") or ""
    return (number is None, number or "", natural(_text(item, "extension")), location)


def _last_name(item: Mapping[str, Any]) -> str | None:
    name = _text(item.get("owner"), "lastName")
    return name.lower() if name is not None else None


def _number(item: Mapping[str, Any]) -> str | None:
    return _text(item, "phoneNumber")


def _extension(item: Mapping[str, Any]) -> tuple[int, int, str, str] | None:
    extension = _text(item, "extension")
    return natural(extension) if extension is not None else None


class _Descending:
    """A value that sorts in reverse (for a descending order's first step)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    __hash__ = None  # type: ignore[assignment]


# The upstream's order values by their ``order`` names, and what stands in for a missing one
# (entries without the value sort after every entry with one, whatever it stands in as).
_ORDER_VALUES: Final[dict[str, tuple[Callable[[Mapping[str, Any]], Any], Any]]] = {
    "lastName": (_last_name, ""),
    "dn": (_number, ""),
    "extension": (_extension, natural(None)),
}


def merge_key(order: str | None) -> MergeKey:
    """The key the merged list is ordered by, for the upstream ``order`` value the parts ask
    with (``lastName-desc``; None: the default order). See the module's description."""
    if order is None:
        return default_key
    name, _, direction = order.partition("-")
    value_of, missing = _ORDER_VALUES[name]
    descending = direction == "desc"

    def key(item: Mapping[str, Any]) -> tuple[Any, ...]:
        value = value_of(item)
        if value is None:
            return (True, _Descending(missing) if descending else missing, default_key(item))
        return (False, _Descending(value) if descending else value, default_key(item))

    return key


# -- cursors -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MergeState:
    """A point in the merged list: how many entries of each part come before it, and which
    parts are known to have no entries after it."""

    positions: tuple[int, ...]
    ended: tuple[bool, ...]

    @classmethod
    def start(cls, parts: int) -> MergeState:
        return cls((0,) * parts, (False,) * parts)

    @property
    def position(self) -> int:
        """The point's position in the merged list."""
        return sum(self.positions)


@dataclass(frozen=True, slots=True)
class MergeCursor:
    """What a ``pn2`` cursor names: an entry's position in the merged list and, unless it
    is positional, the part it came from and the point just after it."""

    position: int
    part: int | None = None
    after: MergeState | None = None

    @property
    def before(self) -> MergeState:
        """The point just before the entry (a ``before`` bound)."""
        assert self.after is not None
        assert self.part is not None
        positions = list(self.after.positions)
        positions[self.part] -= 1
        return MergeState(tuple(positions), (False,) * len(positions))


def merge_cursor(fingerprint: str, part: int, after: MergeState) -> str:
    """The cursor of the entry from ``part`` just before the point ``after``."""
    written = ",".join(
        f"{position}{_ENDED if ended else ''}"
        for position, ended in zip(after.positions, after.ended, strict=True)
    )
    return _encode(f"{CURSOR_PREFIX}:{fingerprint}:{part}:{written}")


def positional_cursor(fingerprint: str, position: int) -> str:
    """A cursor naming only a position of the merged list (continued as an offset)."""
    return _encode(f"{CURSOR_PREFIX}:{fingerprint}:{_POSITIONAL}:{position}")


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_merge_cursor(query: FanOutQuery, cursor: str, name: str) -> MergeCursor:
    """What ``cursor`` names in ``query``'s merged list; refuses a malformed cursor, and one
    issued for another query (a ``pn1`` cursor included)."""
    prefix, fields = cursor_fields(cursor, name)
    if prefix != CURSOR_PREFIX:
        raise another_querys_cursor(name)
    if len(fields) != 3:
        raise not_our_cursor(name)
    fingerprint, part, written = fields
    parts = len(query.parts)
    if part == _POSITIONAL:
        if not is_position(written):
            raise not_our_cursor(name)
        found = MergeCursor(int(written))
    else:
        cells = written.split(",")
        ended = tuple(cell.endswith(_ENDED) for cell in cells)
        digits = [cell.removesuffix(_ENDED) for cell in cells]
        if (
            not is_position(part)
            or len(cells) != parts
            or not all(is_position(cell) for cell in digits)
            or int(part) >= parts
            or int(digits[int(part)]) == 0
        ):
            raise not_our_cursor(name)
        after = MergeState(tuple(int(cell) for cell in digits), ended)
        found = MergeCursor(after.position - 1, int(part), after)
    if fingerprint != query.fingerprint:
        raise another_querys_cursor(name)
    return found


# -- windows -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartWindow:
    """One part's share of a window: a window of its own list (size 0: none of its entries
    can be in the page), and whether its list is known to have ended at the window's start
    (then it is asked only when the page's counts are)."""

    window: PageWindow
    ended: bool = False


@dataclass(frozen=True, slots=True)
class MergedWindow:
    """A window of a merged list: each part's window, then of the merged entries of those,
    ``skip`` before the page and at most ``take`` in it."""

    parts: tuple[PartWindow, ...]
    skip: int
    take: int

    @property
    def start(self) -> int:
        """The merged position of the page's first entry."""
        return sum(part.window.start for part in self.parts) + self.skip

    @property
    def empty(self) -> bool:
        """Nothing to ask any part for but, when wanted, the counts."""
        return self.take == 0 or all(part.window.size == 0 for part in self.parts)


@dataclass(frozen=True, slots=True)
class MergedTail:
    """The last ``size`` entries of a merged list from ``floor`` on (``last`` without
    ``before``): each part's own tail from its ``lower`` position, placed by its own probe
    (``TailWindow``), and of their merge the last ones (``resolve``)."""

    lower: tuple[int, ...]
    size: int
    floor: int

    def part_tails(self) -> list[TailWindow]:
        return [TailWindow(lower, self.size) for lower in self.lower]

    def resolve(self, probes: Sequence[UpstreamPage]) -> MergedWindow:
        """The window, from each part's probe (asked with the counts)."""
        placed = [
            placed_tail(tail, probe) for tail, probe in zip(self.part_tails(), probes, strict=True)
        ]
        total = sum(window.start + window.size for window in placed)
        wanted = min(self.size, max(0, total - self.floor))
        held = sum(window.size for window in placed)
        return MergedWindow(
            tuple(PartWindow(window) for window in placed), skip=held - wanted, take=wanted
        )


def merged_window(
    query: FanOutQuery,
    page: PageRequest | None,
    max_page_size: int,
    *,
    streamed: bool = False,
    max_stream_items: int | None = None,
    held_stream: bool = False,
) -> MergedWindow | MergedTail:
    """The window of ``query``'s merged list that ``page`` asks for (``page_window``'s rules,
    with this module's cursors); raises ``BadUserInput`` before any upstream call."""
    paging = checked_paging(
        page,
        max_page_size,
        streamed=streamed,
        max_stream_items=max_stream_items,
        held_stream=held_stream,
    )
    ceiling = page_ceiling(
        max_page_size=max_page_size, max_stream_items=max_stream_items, streamed=streamed
    )
    parts = len(query.parts)
    if paging.offset is not None:
        size = paging.first or paging.default_size
        return _from_the_start(parts, paging.offset, size, ceiling, "page.offset")
    after_name = paging.after_name
    after = None if paging.after is None else decode_merge_cursor(query, paging.after, after_name)
    before = None if paging.before is None else decode_merge_cursor(query, paging.before, "before")
    if (after is not None and after.after is None) or (before is not None and before.after is None):
        first_position = 0 if after is None else after.position + 1
        end_position = None if before is None else before.position
        placed = position_window(paging, first_position, end_position)
        if isinstance(placed, TailWindow):
            return MergedTail((0,) * parts, placed.size, floor=placed.lower)
        return _from_the_start(parts, placed.start, placed.size, ceiling, "a positional cursor")
    lower = MergeState.start(parts) if after is None or after.after is None else after.after
    if before is None:
        if paging.last is not None:
            return MergedTail(lower.positions, paging.last, floor=lower.position)
        size = paging.first or paging.default_size
        return MergedWindow(
            tuple(
                PartWindow(PageWindow(position, size), ended)
                for position, ended in zip(lower.positions, lower.ended, strict=True)
            ),
            skip=0,
            take=size,
        )
    upper = before.before.positions
    if paging.first is not None:  # forward, but not past ``before``
        return MergedWindow(
            tuple(
                PartWindow(PageWindow(low, max(0, min(paging.first, high - low))), ended)
                for low, high, ended in zip(lower.positions, upper, lower.ended, strict=True)
            ),
            skip=0,
            take=paging.first,
        )
    size = paging.last or paging.default_size
    windows: list[PartWindow] = []
    for low, high, ended in zip(lower.positions, upper, lower.ended, strict=True):
        start = max(low, high - size)
        windows.append(PartWindow(PageWindow(start, max(0, high - start)), ended and start == low))
    held = sum(part.window.size for part in windows)
    return MergedWindow(tuple(windows), skip=max(0, held - size), take=size)


def _from_the_start(parts: int, start: int, size: int, ceiling: int, name: str) -> MergedWindow:
    """The merged entries ``start`` up to ``start + size``: found by merging every part from
    its first entry, so the whole span is bounded by the page ceiling."""
    if start + size > ceiling:
        raise BadUserInput(
            f"{name} over several values (filter.locationIds, filter.ownerTypes) is found by "
            f"reading each value's list from its start: its position plus the page's size may "
            f"be at most {ceiling}, here {start + size}. Continue from an edge's cursor "
            "instead (after, or page.after): it reads each value from its own position."
        )
    return MergedWindow(
        tuple(PartWindow(PageWindow(0, start + size if size else 0)) for _ in range(parts)),
        skip=start,
        take=size,
    )


# -- the merge ---------------------------------------------------------------------------------


class _Part:
    """One part's entries in its list's order, as far as they are fetched: a buffer of the
    current upstream page, and (streamed) the walk of the rest."""

    __slots__ = ("at", "buffer", "count", "end", "fetched", "follows", "more", "start", "window")

    def __init__(
        self,
        window: PartWindow,
        first: UpstreamPage | None,
        *,
        more: bool,
        follows: bool | None,
    ) -> None:
        self.window = window.window
        self.start = window.window.start
        # Entries of a counts-only answer (``max=1``) are not the window's.
        self.buffer: Sequence[Item] = first.items if first and window.window.size else ()
        self.at = 0
        self.fetched = len(self.buffer)
        self.count = first.count if first is not None else None
        self.more = more  # further upstream pages of this window are to be walked
        # Whether entries follow the window (a held answer's has_more); None: not known (a
        # walk's pages say only whether the walk goes on).
        self.follows = follows
        # Where this part's list is known to end (None: not known to end in the window).
        self.end: int | None = self.start if first is None and window.ended else None
        self._note_end()

    @property
    def total(self) -> int | None:
        return read_total(self.count)

    @property
    def blocked(self) -> bool:
        """Its buffer is spent but its walk goes on: the merge waits for its next page."""
        return self.at >= len(self.buffer) and self.more

    def refill(self, page: UpstreamPage) -> None:
        self.buffer = page.items
        self.at = 0
        self.fetched += len(page.items)
        self.more = page.has_more and bool(page.items)
        self._note_end()

    def _note_end(self) -> None:
        if self.end is not None:
            return
        total = self.total
        if total is not None:
            self.end = total
        elif not self.more and (
            self.fetched < self.window.size or (self.fetched and self.follows is False)
        ):
            self.end = self.start + self.fetched  # the list ended within (or with) the window

    def entries_after(self, position: int) -> bool:
        """Whether the part's list has entries after ``position`` (True when unknown)."""
        total = self.total
        if total is not None:
            return position < total
        if self.end is not None:
            return position < self.end
        if self.window.size == 0:
            return True  # not asked for entries, and no total: entries may follow
        return position < self.start + self.fetched or bool(self.follows) or self.more


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Merged entries in a row, from merged position ``start``, with their cursors."""

    start: int
    items: Sequence[Item]  # the parts' upstream bytes still, when theirs were (``PickedItems``)
    cursors: _MergedCursors


class _Merge:
    """The k-way merge of the parts' lists from their windows' starts: ``skip`` entries
    passed over, then up to ``take`` emitted, as far as the fetched entries allow. An entry
    leaves only when every part that may hold a smaller one has its next entry in hand, so
    the merged order never depends on where the upstream's pages end."""

    def __init__(
        self, query: FanOutQuery, window: MergedWindow, parts: list[_Part], key: MergeKey
    ) -> None:
        self.fingerprint = query.fingerprint
        self.key = key
        self.parts = parts
        self.positions = [part.start for part in parts]
        self.skip = window.skip
        self.take = window.take
        self.start = window.start
        self.taken = 0
        # Equal keys break by part, then by position: one order, whatever arrives when.
        self._heap: list[tuple[tuple[Any, ...], int, int]] = []
        for index in range(len(parts)):
            self._push(index)

    def _push(self, index: int) -> None:
        part = self.parts[index]
        if part.at < len(part.buffer):
            entry = (self.key(part.buffer[part.at]), index, self.positions[index])
            heapq.heappush(self._heap, entry)

    def refill(self, index: int, page: UpstreamPage | None) -> None:
        """A blocked part's next upstream page (None: its walk ended)."""
        self.parts[index].refill(page or UpstreamPage([], None, has_more=False))
        self._push(index)

    @property
    def blocked(self) -> list[int]:
        return [index for index, part in enumerate(self.parts) if part.blocked]

    @property
    def done(self) -> bool:
        return self.take == 0 or (not self._heap and not self.blocked)

    def run(self) -> _Chunk:
        """The next chunk: merged entries until the window is full, the parts are spent, or
        a part must fetch its next upstream page before the merge may go on."""
        start = self.start + self.taken
        state = tuple(self.positions)
        items = PickedItems()
        origins: list[int] = []
        while self.take > 0 and self._heap and not self.blocked:
            _, index, _ = heapq.heappop(self._heap)
            part = self.parts[index]
            at = part.at
            part.at += 1
            self.positions[index] += 1
            self._push(index)
            if self.skip:
                self.skip -= 1
                state = tuple(self.positions)
                continue
            items.add(part.buffer, at)
            origins.append(index)
            self.take -= 1
        self.taken += len(origins)
        merged = items.items()
        return _Chunk(start, merged, _MergedCursors(self.fingerprint, start, state, origins, self))

    def entries_after(self) -> bool:
        """Whether any part has entries after the point the merge has reached."""
        return any(
            part.entries_after(position)
            for part, position in zip(self.parts, self.positions, strict=True)
        )


class _MergedCursors:
    """The cursors of one chunk's entries, from the point before its first entry and the
    part each entry came from; made when first asked for (and kept). A position outside the
    chunk (``pageInfo`` of a streamed window, before the merge reached it) is positional."""

    __slots__ = ("_made", "_merge", "_origins", "_start", "_state")

    def __init__(
        self,
        fingerprint: str,
        start: int,
        state: tuple[int, ...],
        origins: list[int],
        merge: _Merge,
    ) -> None:
        self._start = start
        self._state = state
        self._origins = origins
        self._merge = merge
        self._made: list[str] | None = None

    def __call__(self, position: int) -> str:
        if self._made is None:
            self._made = self._make()
        index = position - self._start
        if 0 <= index < len(self._made):
            return self._made[index]
        return positional_cursor(self._merge.fingerprint, position)

    def _make(self) -> list[str]:
        # A part's end is known by the time an entry after it is merged, so each cursor says
        # the same whenever it is made.
        parts = self._merge.parts
        fingerprint = self._merge.fingerprint
        positions = list(self._state)
        made: list[str] = []
        for origin in self._origins:
            positions[origin] += 1
            ended = tuple(
                part.end is not None and position == part.end
                for part, position in zip(parts, positions, strict=True)
            )
            made.append(merge_cursor(fingerprint, origin, MergeState(tuple(positions), ended)))
        return made


def summed_counts(counts: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The counts of the merged list: each count the sum of the parts' (the values partition
    the list); a count some part did not send (or sent as something else than a count) is
    left out, so it reads as null rather than as a wrong number."""
    if not counts or any(count is None for count in counts):
        return None
    present = [count for count in counts if count is not None]
    summed: dict[str, Any] = {}
    for name in present[0]:
        values = [count.get(name) for count in present]
        if all(isinstance(value, int) and not isinstance(value, bool) for value in values):
            summed[name] = sum(values)
    return summed


def merged_page(
    query: FanOutQuery,
    window: MergedWindow,
    answers: Sequence[UpstreamPage | None],
    *,
    key: MergeKey | None = None,
) -> PageResult:
    """The page of a held (whole) window from each part's answer to its window (None: the
    part was not asked; for a part whose window is empty, its counts-only answer, whose
    entries are not the window's)."""
    parts = [
        _Part(part, answer, more=False, follows=None if answer is None else answer.has_more)
        for part, answer in zip(window.parts, answers, strict=True)
    ]
    merge = _Merge(query, window, parts, key or merge_key(query.order))
    chunk = merge.run()
    counts = summed_counts([answer.count if answer is not None else None for answer in answers])
    page = UpstreamPage(chunk.items, counts, has_more=merge.entries_after())
    return PageResult(None, PageWindow(chunk.start, len(chunk.items)), page, cursors=chunk.cursors)


async def _refill(merge: _Merge, walks: Mapping[int, AsyncIterator[UpstreamPage]]) -> None:
    """Every blocked part's next upstream page, asked at once; the first failure raised once
    every ask has ended (so no walk is closed while its page is still being fetched)."""
    blocked = merge.blocked
    pages = await asyncio.gather(
        *(anext(walks[index], None) for index in blocked), return_exceptions=True
    )
    for page in pages:
        if isinstance(page, BaseException):
            raise page
    for index, page in zip(blocked, pages, strict=True):
        assert not isinstance(page, BaseException)
        merge.refill(index, page)


def _chunk_page(chunk: _Chunk, has_more: bool) -> PageResult:
    page = UpstreamPage(chunk.items, None, has_more=has_more)
    return PageResult(None, PageWindow(chunk.start, len(chunk.items)), page, cursors=chunk.cursors)


# -- streamed windows --------------------------------------------------------------------------

# A part's walk of its window from a position, for so many entries, one upstream page at a time.
PartWalk = Callable[[int, int], AsyncGenerator[UpstreamPage, None]]


class MergedStream(StreamedWindow):
    """A merged window delivered with ``@stream``, merged page by page: its head is what the
    parts' first upstream pages (fetched together, or the page cache's whole windows) let
    the merge emit; whenever a part's page is spent and its walk goes on, its next page is
    fetched and the merge goes on (``tail``), so at most one upstream page per part is held.

    ``pageInfo`` and ``totalCount`` come from the parts' totals (their first pages carry the
    counts when selected), as ``StreamedPageResult``'s do; a cursor ``pageInfo`` names
    before the merge reaches it is positional."""

    __slots__ = ("_head", "_heads", "_key", "_merge", "_walks", "query", "window")

    def __init__(
        self,
        query: FanOutQuery,
        window: MergedWindow,
        heads: Sequence[UpstreamPage | None],
        walks: Sequence[PartWalk | None],
        *,
        key: MergeKey | None = None,
    ) -> None:
        self.query = query
        self.window = window
        self._heads = heads
        self._walks = walks
        self._key = key or merge_key(query.order)
        self._merge = self._started()
        head = self._merge.run()
        self._head = _chunk_page(head, not self._merge.done)

    def _started(self) -> _Merge:
        """A merge of the parts' heads, not yet run."""
        parts: list[_Part] = []
        for part, head in zip(self.window.parts, self._heads, strict=True):
            size = part.window.size
            goes_on = head is not None and size > 0 and head.has_more and len(head.items) < size
            parts.append(_Part(part, head, more=goes_on, follows=None))
        return _Merge(self.query, self.window, parts, self._key)

    def head(self) -> PageResult:
        return self._head

    async def tail(self) -> AsyncGenerator[PageResult, None]:
        # Each list of the field (``nodes`` and ``edges`` both streamed) takes the rest on its
        # own: its own merge, past the head again, and its own walks.
        merge = self._started()
        merge.run()
        if merge.done:
            return
        async with AsyncExitStack() as stack:
            walks: dict[int, AsyncIterator[UpstreamPage]] = {}
            while not merge.done:
                for index in merge.blocked:
                    if index not in walks:
                        part = merge.parts[index]
                        open_walk = self._walks[index]
                        assert open_walk is not None  # a part whose walk goes on has one
                        rest = open_walk(part.start + part.fetched, part.window.size - part.fetched)
                        walks[index] = await stack.enter_async_context(aclosing(rest))
                await _refill(merge, walks)
                chunk = merge.run()
                if chunk.items or merge.done:
                    yield _chunk_page(chunk, not merge.done)

    def _totals(self) -> list[int]:
        totals: list[int] = []
        for part in self._merge.parts:
            total = part.total if part.total is not None else part.end
            if total is None:
                raise UpstreamUnavailable(_NO_TOTAL, upstream_status=200)
            totals.append(total)
        return totals

    def page_info(self) -> PageInfo:
        totals = self._totals()
        window = self.window
        available = sum(
            max(0, min(part.window.size, total - part.window.start))
            for part, total in zip(window.parts, totals, strict=True)
        )
        count = max(0, min(window.take, available - window.skip))
        start = window.start
        head = self._head
        return PageInfo(
            has_next_page=start + count < sum(totals),
            has_previous_page=start > 0,
            start_cursor=head.cursor(start) if count else None,
            end_cursor=head.cursor(start + count - 1) if count else None,
        )

    def total_count(self) -> int:
        return sum(self._totals())


async def merged_walk(
    query: FanOutQuery,
    walks: Sequence[AsyncGenerator[UpstreamPage, None]],
    *,
    key: MergeKey | None = None,
) -> AsyncGenerator[UpstreamPage, None]:
    """A whole merged list (an export's) from each part's whole walk (``walks``, in the
    order of ``query.parts``), merged page by page: one ``UpstreamPage`` per merged chunk
    (``has_more``: another may follow), at most one upstream page per part held. Closing it
    closes every part's walk."""
    whole = PartWindow(PageWindow(0, _WHOLE))
    parts = [_Part(whole, None, more=True, follows=None) for _ in walks]
    window = MergedWindow(tuple(whole for _ in walks), skip=0, take=_WHOLE)
    merge = _Merge(query, window, parts, key or merge_key(query.order))
    async with AsyncExitStack() as stack:
        iterators = [await stack.enter_async_context(aclosing(walk)) for walk in walks]
        while not merge.done:
            await _refill(merge, dict(enumerate(iterators)))
            chunk = merge.run()
            if chunk.items:
                yield UpstreamPage(chunk.items, None, has_more=not merge.done)


_WHOLE: Final = 1 << 62  # a window with no end of its own: the list's end ends it

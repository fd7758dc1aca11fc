"""Entity batches: many per-entity page calls answered by one walk of the list they partition.

A router sends every representation of a plan in one ``_entities`` request, so 150 ``Person``
entities asking ``phoneNumbers { totalCount }`` are 150 upstream calls that differ only in
``ownerId`` (``Location`` entities: only in ``locationId``). The same numbers come from one
walk of the list those calls partition (the same filter without the key; for owners
restricted to ``ownerType: PEOPLE`` unless the filter names an owner type), split by the key.

When the walk is used (``answer_calls`` decides per group of calls)
    - the calls share every parameter but the key, ask for no ``order`` (the upstream's default
      order, by number then extension, is total within one owner or location; an explicit
      order's ties are broken in an undocumented way, which a partition could not reproduce),
      and none of them carries ``numberCounts`` (counts are the upstream's arithmetic over
      fields we do not all see; those calls stay as they are, and cost nothing extra there);
    - for owners, the filter names an owner type or has no ``available`` (``ownerType`` and
      ``available: true`` are a conflict upstream);
    - at least two calls are in the group, and the list is no longer than the calls' windows
      add up to (``item_budget``): the walk then makes no more upstream requests than the
      calls may on their own, whatever the upstream's page cap. Its pages hold
      ``min(WALK_PAGE_SIZE, budget)`` entries; the first (``details=true``) tells the length,
      and the rest is fetched only when it takes fewer calls than the group would
      (``pages - 1 < calls``). Otherwise every call goes upstream on its own, concurrently
      under the fair slots, as before;
    - the walk is one moment of the list: a walk of several pages any of which came from
      the page cache is fetched anew (refresh), and one in which an entry repeats is dropped.

Why the answers are the per-entity answers
    The walk is made with the caller's own token, so the upstream scopes it as it scopes each
    per-entity call (a location admin walks only their locations). A call whose key appears
    in the walk gets exactly the walk's entries with that key, in walk order: the upstream's
    subset in the upstream's order; its ``count.total`` is that subset's length and it has
    more entries exactly when its window ends before the subset does. A key that does not
    appear (unknown, invisible to this caller, spelt as a UUID rather than the id the upstream
    reports, or a person id that is some other owner type) is not guessed at: its call goes
    upstream on its own. A walk whose pages disagree on ``count.total`` or do not add up to it
    (the data changed under it), or that fails, is dropped and every call goes on its own.
    The connection built from the answer binds its cursors to the per-entity query, as ever.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.data.page_cache import CacheEvent
from gateway.domain.arguments import FILTER_PARAMETERS
from gateway.domain.changes import entry_identity
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, UpstreamPage
from gateway.domain.reader import read_total

# A page through the cache: (the ask, refresh) -> the page and what the cache did for it.
FetchPage = Callable[[Fetch, bool], Awaitable[tuple[UpstreamPage, CacheEvent]]]
Outcome = UpstreamPage | BaseException


@dataclass(frozen=True, slots=True)
class Answered:
    """A call's outcome and the cache events of every fetch it was built from."""

    outcome: Outcome
    events: tuple[CacheEvent, ...]


# Entries per walk call: the upstream's default and usual cap for one response, so a walk
# of n entries costs ceil(n / WALK_PAGE_SIZE) calls.
WALK_PAGE_SIZE: Final = 2000
_PARAMETER_RANK: Final = {parameter: rank for rank, (_, parameter) in enumerate(FILTER_PARAMETERS)}


@dataclass(frozen=True, slots=True)
class Walk:
    """One list whose entries, split by ``key_parameter``, answer a group of calls."""

    query: NumbersQuery
    key_parameter: str  # "ownerId" or "locationId"

    def key_of(self, item: Mapping[str, Any]) -> str | None:
        """The item's value of the key: its owner's id or its location's id."""
        holder = item.get("owner" if self.key_parameter == "ownerId" else "location")
        key = holder.get("id") if isinstance(holder, Mapping) else None
        return key if isinstance(key, str) else None


def walk_for(call: Fetch) -> tuple[Walk, str] | None:
    """The walk that can answer ``call`` exactly, and the call's key; None when none can."""
    params = call.query.params
    names = [name for name, _ in params]
    if call.window is None or "order" in names:
        return None
    for key_parameter in ("ownerId", "locationId"):
        keys = [value for name, value in params if name == key_parameter]
        if len(keys) != 1:
            continue
        rest = [param for param in params if param[0] != key_parameter]
        if key_parameter == "ownerId" and "ownerType" not in names:
            if "available" in names:
                return None
            rest.append(("ownerType", "PEOPLE"))
            # In the order numbers_query sends parameters, so the walk shares cache entries
            # with a root field asking for the same list.
            rest.sort(key=lambda param: _PARAMETER_RANK.get(param[0], len(_PARAMETER_RANK)))
        return Walk(NumbersQuery(call.query.org_id, tuple(rest)), key_parameter), keys[0]
    return None


def window_of(entries: Sequence[dict[str, Any]], window: PageWindow, details: bool) -> UpstreamPage:
    """What the upstream answers a per-entity call whose whole matched list is ``entries``."""
    end = window.start + window.size
    return UpstreamPage(
        items=list(entries[window.start : end]),
        count={"total": len(entries)} if details else None,
        has_more=end < len(entries),
    )


async def answer_calls(
    calls: Sequence[Fetch], fetch_page: FetchPage, *, counted: Collection[Fetch] = ()
) -> dict[Fetch, Answered]:
    """Every call's outcome and the cache events of the fetches that made it, with groups of
    keyed calls answered by walks where that is exact and cheaper. ``counted``: calls that
    also answer a ``numberCounts``; they keep their own upstream call."""
    groups: dict[Walk, dict[Fetch, str]] = {}
    alone: list[Fetch] = []
    for call in calls:
        found = None if call in counted else walk_for(call)
        if found is None:
            alone.append(call)
        else:
            groups.setdefault(found[0], {})[call] = found[1]
    for walk, members in list(groups.items()):
        if len(members) < 2:  # one call is cheaper than any walk
            alone.extend(members)
            del groups[walk]
    answered: dict[Fetch, Answered] = {}
    await asyncio.gather(
        _each_alone(alone, fetch_page, answered),
        *(_by_walk(walk, members, fetch_page, answered) for walk, members in groups.items()),
    )
    return answered


async def _each_alone(
    calls: Sequence[Fetch], fetch_page: FetchPage, answered: dict[Fetch, Answered]
) -> None:
    outcomes = await asyncio.gather(
        *(fetch_page(call, False) for call in calls), return_exceptions=True
    )
    for call, outcome in zip(calls, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            answered[call] = Answered(outcome, ())
        else:
            answered[call] = Answered(outcome[0], (outcome[1],))


async def _by_walk(
    walk: Walk,
    members: Mapping[Fetch, str],
    fetch_page: FetchPage,
    answered: dict[Fetch, Answered],
) -> None:
    """Answer a group from its walk where the walk holds the key; the rest on their own."""
    walked = await _walk(walk, members, fetch_page)
    unseen: list[Fetch] = []
    for call, key in members.items():
        entries = walked.partition.get(key) if walked is not None else None
        if walked is None or entries is None or call.window is None:
            unseen.append(call)
        else:
            answered[call] = Answered(window_of(entries, call.window, call.details), walked.events)
    await _each_alone(unseen, fetch_page, answered)


@dataclass(frozen=True, slots=True)
class _Walked:
    partition: dict[str, list[dict[str, Any]]]  # the walk's entries by key, in walk order
    events: tuple[CacheEvent, ...]  # what the cache did for its pages


def item_budget(members: Iterable[Fetch]) -> int:
    """The most entries a walk serving ``members`` may hold: as many as their own calls
    could bring (the sum of their windows). So a walk never makes more upstream requests
    than those calls may, whatever the upstream's page cap ``c``: ``ceil(total / c) <=
    sum(ceil(size / c))``; and a few narrow windows cannot pull in a whole large list."""
    return sum(call.window.size for call in members if call.window is not None)


async def _walk(walk: Walk, members: Mapping[Fetch, str], fetch_page: FetchPage) -> _Walked | None:
    """The walk's entries by key, all from one generation of the list; None when walking
    would not pay, failed, or did not hold together."""
    budget = item_budget(members)
    page_size = max(1, min(WALK_PAGE_SIZE, budget))
    first_page = Fetch(walk.query, PageWindow(0, page_size), details=True)
    try:
        first, first_event = await fetch_page(first_page, False)
    except Exception:
        return None  # each call on its own says what is wrong with it
    total = read_total(first.count)
    if total is None or total > budget:
        return None
    pages = max(1, math.ceil(total / page_size))
    if pages - 1 >= len(members):
        return None
    walked = await _pages(walk, page_size, pages, fetch_page, first, first_event, refresh=False)
    if walked is not None and pages > 1 and any(_cached(event) for event in walked.events):
        # Pages of the cache each have their own age: page 1 of a minute ago and a fresh
        # page 2 may be two different lists whose totals agree (an owner's number moved
        # across the page boundary). A multi-page walk is one generation: fetched anew.
        walked = await _pages(walk, page_size, pages, fetch_page, None, None, refresh=True)
    return walked


async def _pages(
    walk: Walk,
    page_size: int,
    pages: int,
    fetch_page: FetchPage,
    first: UpstreamPage | None,
    first_event: CacheEvent | None,
    *,
    refresh: bool,
) -> _Walked | None:
    """The ``pages`` of the walk (reusing ``first`` when given), partitioned; None when one
    failed or they do not make one list."""
    wanted = [
        Fetch(walk.query, PageWindow(index * page_size, page_size), details=True)
        for index in range(0 if first is None else 1, pages)
    ]
    outcomes = await asyncio.gather(
        *(fetch_page(page, refresh) for page in wanted), return_exceptions=True
    )
    walked: list[tuple[UpstreamPage, CacheEvent]] = []
    if first is not None and first_event is not None:
        walked.append((first, first_event))
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome  # cancellation is not a failed walk
            return None
        walked.append(outcome)
    items = [item for page, _ in walked for item in page.items]
    totals = {read_total(page.count) for page, _ in walked}
    if len(totals) != 1 or len(items) not in totals or _repeats(items):
        return None  # the list changed under the walk: no exact partition from it
    partition: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        key = walk.key_of(item)
        if key is not None:
            partition.setdefault(key, []).append(item)
    return _Walked(partition, tuple(event for _, event in walked))


def _cached(event: CacheEvent) -> bool:
    """Whether a page was answered from a cache entry made earlier (not fetched now)."""
    return event.status in ("hit", "stale")


def _repeats(items: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an entry appears twice: pages that overlap (entries shifted between them).
    Entries are named as the change feed names them (``entry_identity``), which reads only
    text: a malformed value (an object where a number belongs) is data, never a key."""
    seen: set[str] = set()
    for item in items:
        identity = entry_identity(item)
        if identity in seen:
            return True
        seen.add(identity)
    return False

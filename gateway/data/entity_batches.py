"""Entity batches: many per-entity page calls answered by one walk of the list they partition.

A router sends every representation of a plan in one ``_entities`` request, so 150 ``Person``
entities asking ``phoneNumbers { totalCount }`` are 150 upstream calls that differ only in
``ownerId`` (``Location`` entities: only in ``locationId``). The same numbers come from one
walk of the list those calls partition (the same filter without the key; for owners
restricted to ``ownerType: PEOPLE`` unless the filter names an owner type), split by the key.

Which calls a walk may answer (``walk_for``; the rest go upstream on their own, concurrently
under the fair slots)
    - the calls share every parameter but the key, ask for no ``order`` (the upstream's default
      order, by number then extension, is total within one owner or location; an explicit
      order's ties are broken in an undocumented way, which a partition could not reproduce),
      and none of them carries ``numberCounts`` (counts are the upstream's arithmetic over
      fields we do not all see; those calls stay as they are, and cost nothing extra there);
    - for owners, the filter names an owner type or has no ``available`` (``ownerType`` and
      ``available: true`` are a conflict upstream);
    - the list is no longer than the calls' windows add up to (``item_budget``): so its pages
      never hold more entries than the calls may, and a few narrow windows cannot pull in a
      whole large list. Its pages hold ``min(WALK_PAGE_SIZE, budget)`` entries each.

What a walk answers
    A call whose key appears in the walk gets exactly the walk's entries with that key, in
    walk order. A call whose key is a Webex id of the kind the walk is keyed by (``PEOPLE`` for
    owners, ``LOCATION`` for locations: ``domain.webex_ids``, any region) and whose UUID no
    entry of the complete walk holds, under any spelling, is answered empty, with no call of
    its own. That is not reading an id for authorization: the walk was made with the caller's
    own token and holds every entry the per-entity call could return (the per-entity call is
    the walk's filter plus the key, and a person's numbers are ``PEOPLE``-owned), so an id it
    does not hold has none this caller may see. Every other call goes upstream on its own: a
    key in another form (a bare UUID, a broadsoftId, a padded or re-encoded id) or of another
    kind, a UUID the walk holds spelt differently, or a walk with an owner or location id it
    cannot read (upstream data is untrusted; such a walk proves no absence). Nothing is
    guessed at.

When a walk is made: never more calls than the group would make alone
    A group of ``n`` calls costs at least ``n`` upstream calls alone. A walk of ``pages`` pages
    costs ``pages`` plus, at worst, one call for each member whose key is in another form
    (``unproven``); it is planned only when that is no more than ``n`` and ``pages < n`` (it
    can save a call). A walk of a list whose length is known (``ListLengths``: what earlier
    walks of the same list for the same caller found, kept for ``WALK_LENGTHS_TTL`` seconds)
    is planned from that length, so it spends no probe that cannot pay off: a list longer
    than the budget, or than the group can pay for, is not walked at all, and otherwise the
    first page is the walk's own. A list never walked before costs a first page to learn its
    length; that probe is wasted when the list turns out too long, so it is spent only for a
    group of at least ``COLD_PROBE_MEMBERS`` calls that a one-page walk would still save a call
    on (a wasted probe adds at most one call in ``COLD_PROBE_MEMBERS``, once per list and
    caller while its length is remembered). Two ``Location`` entities asking ``first: 3``
    cost their own two calls; 150 people with a default page cost one walk. After the first
    page the rest is fetched only when it takes no more calls than the members would
    (``pages - 1 + unproven <= n``). Counts are in pages of ``WALK_PAGE_SIZE``, the upstream's
    usual cap; the budget keeps every walk within the members' own requests under a smaller
    cap too. Calls the page cache answers cost nothing, alone or walked.

Why the answers are the per-entity answers
    The walk is made with the caller's own token, so the upstream scopes it as it scopes each
    per-entity call (a location admin walks only their locations). A member's entries are the
    upstream's subset of the walk in the upstream's order; its ``count.total`` is that subset's
    length and it has more entries exactly when its window ends before the subset does. The
    walk is one moment of the list: a walk of several pages any of which came from the page
    cache is fetched anew (refresh); one whose pages disagree on ``count.total`` or do not add
    up to it (the data changed under it), in which an entry repeats, or that fails, is dropped
    and every call goes on its own. The connection built from an answer binds its cursors to
    the per-entity query, as ever. (A live upstream that refuses a location admin's call for
    another location, rather than answering it empty as the simulator does, would answer that
    location's call alone with an error where the walk answers it empty.)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from uuid import UUID

from cachetools import TTLCache

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.data.page_cache import CacheEvent, cache_key
from gateway.domain.arguments import FILTER_PARAMETERS
from gateway.domain.changes import entry_identity
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, UpstreamPage
from gateway.domain.reader import read_total
from gateway.domain.upstream_items import PickedItems, join
from gateway.domain.webex_ids import read_webex_id

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
# The smallest group a walk of a list of unknown length is probed for.
COLD_PROBE_MEMBERS: Final = 10
# How long, and for how many lists, the lengths walks found plan the next walks. A length only
# plans (a stale one costs at most the call a probe would have): answers always come from the
# walk's own pages.
WALK_LENGTHS_TTL: Final = 600.0
WALK_LENGTHS_MAX: Final = 4096
_PARAMETER_RANK: Final = {parameter: rank for rank, (_, parameter) in enumerate(FILTER_PARAMETERS)}
# The Webex id kind of the things each key names.
_KEY_KINDS: Final = {"ownerId": "PEOPLE", "locationId": "LOCATION"}


class ListLengths(Protocol):
    """What walks of one caller have found of their lists' lengths."""

    def known(self, query: NumbersQuery) -> int | None:
        """The length a walk of ``query`` last found; None when none is remembered."""

    def learn(self, query: NumbersQuery, total: int) -> None:
        """Remember that ``query``'s list has ``total`` entries."""


class NoLengths:
    """No memory: every list is walked as if never seen."""

    def known(self, query: NumbersQuery) -> int | None:
        return None

    def learn(self, query: NumbersQuery, total: int) -> None:
        return None


class WalkLengths:
    """The lengths of walked lists, per caller: one per app, bounded in entries and age.
    Keys are the page cache's HMAC names (the caller's identity and the list's query under
    the cache secret), so none reveals a token or a filter."""

    def __init__(
        self,
        secret: bytes,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_entries: int = WALK_LENGTHS_MAX,
        ttl: float = WALK_LENGTHS_TTL,
    ) -> None:
        self._secret = secret
        self._lengths: TTLCache[str, int] = TTLCache(max_entries, ttl, timer=clock.monotonic)

    def for_caller(self, identity: str) -> CallerLengths:
        """The lengths ``identity``'s walks found (``Caller.identity``)."""
        return CallerLengths(self, identity)

    def known(self, identity: str, query: NumbersQuery) -> int | None:
        return self._lengths.get(self._key(identity, query))

    def learn(self, identity: str, query: NumbersQuery, total: int) -> None:
        self._lengths[self._key(identity, query)] = total

    def _key(self, identity: str, query: NumbersQuery) -> str:
        return cache_key(self._secret, identity, Fetch(query, None, details=True))


@dataclass(frozen=True, slots=True)
class CallerLengths:
    """``WalkLengths`` for one caller."""

    lengths: WalkLengths
    identity: str

    def known(self, query: NumbersQuery) -> int | None:
        return self.lengths.known(self.identity, query)

    def learn(self, query: NumbersQuery, total: int) -> None:
        self.lengths.learn(self.identity, query, total)


@dataclass(frozen=True, slots=True)
class Walk:
    """One list whose entries, split by ``key_parameter``, answer a group of calls."""

    query: NumbersQuery
    key_parameter: str  # "ownerId" or "locationId"

    def holder_of(self, item: Mapping[str, Any]) -> object:
        """The item's owner or location object, as the upstream sent it (None: none)."""
        return item.get("owner" if self.key_parameter == "ownerId" else "location")

    def key_of(self, item: Mapping[str, Any]) -> str | None:
        """The item's value of the key: its owner's id or its location's id."""
        holder = self.holder_of(item)
        key = holder.get("id") if isinstance(holder, Mapping) else None
        return key if isinstance(key, str) else None

    def proven_uuid(self, key: str) -> UUID | None:
        """The UUID ``key`` names when it is a Webex id of the kind this walk is keyed by,
        whose absence from the complete walk proves the key has no entries; else None."""
        found = read_webex_id(key)
        if found is None or found.kind != _KEY_KINDS[self.key_parameter]:
            return None
        return found.uuid


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
        items=entries[window.start : end],
        count={"total": len(entries)} if details else None,
        has_more=end < len(entries),
    )


async def answer_calls(
    calls: Sequence[Fetch],
    fetch_page: FetchPage,
    *,
    counted: Collection[Fetch] = (),
    lengths: ListLengths | None = None,
) -> dict[Fetch, Answered]:
    """Every call's outcome and the cache events of the fetches that made it, with groups of
    keyed calls answered by walks where that is exact and costs fewer calls. ``counted``:
    calls that also answer a ``numberCounts``; they keep their own upstream call.
    ``lengths``: what the caller's earlier walks found of their lists' lengths."""
    known = lengths if lengths is not None else NoLengths()
    groups: dict[Walk, dict[Fetch, str]] = {}
    alone: list[Fetch] = []
    for call in calls:
        found = None if call in counted else walk_for(call)
        if found is None:
            alone.append(call)
        else:
            groups.setdefault(found[0], {})[call] = found[1]
    planned: list[_Group] = []
    for walk, members in groups.items():
        group = _Group(walk, members)
        if group.worth_walking(known.known(walk.query)):
            planned.append(group)
        else:
            alone.extend(members)
    answered: dict[Fetch, Answered] = {}
    await asyncio.gather(
        _each_alone(alone, fetch_page, answered),
        *(_by_walk(group, fetch_page, known, answered) for group in planned),
    )
    return answered


def item_budget(members: Iterable[Fetch]) -> int:
    """The most entries a walk serving ``members`` may hold: as many as their own calls
    could bring (the sum of their windows). So a walk never makes more upstream requests
    than those calls may, whatever the upstream's page cap ``c``: ``ceil(total / c) <=
    sum(ceil(size / c))``; and a few narrow windows cannot pull in a whole large list."""
    return sum(call.window.size for call in members if call.window is not None)


def walk_pays(pages: int, unproven: int, members: int) -> bool:
    """Whether ``pages`` more walk calls, plus one for each of the ``unproven`` members the
    walk may not hold, cost no more than the ``members`` calls alone, and may cost fewer."""
    return pages + unproven <= members and pages < members


@dataclass(frozen=True, slots=True)
class _Group:
    """Calls one walk may answer, and what its plan needs to know of them."""

    walk: Walk
    members: Mapping[Fetch, str]  # call -> its key

    @property
    def budget(self) -> int:
        return item_budget(self.members)

    @property
    def page_size(self) -> int:
        return max(1, min(WALK_PAGE_SIZE, self.budget))

    @property
    def unproven(self) -> int:
        """Members whose key's absence from the walk would prove nothing: each may cost a
        call of its own however the walk goes."""
        return sum(self.walk.proven_uuid(key) is None for key in self.members.values())

    def pages(self, total: int) -> int:
        return max(1, math.ceil(total / self.page_size))

    def worth_walking(self, known_total: int | None) -> bool:
        """Whether to make the walk's first page: from the list's remembered length when
        there is one, else only for a group large enough to risk a probe."""
        members = len(self.members)
        if members < 2:
            return False  # one call is cheaper than any walk
        if known_total is not None:
            if known_total > self.budget:
                return False
            return walk_pays(self.pages(known_total), self.unproven, members)
        return members >= COLD_PROBE_MEMBERS and walk_pays(1, self.unproven, members)


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
    group: _Group, fetch_page: FetchPage, lengths: ListLengths, answered: dict[Fetch, Answered]
) -> None:
    """Answer a group from its walk where the walk holds the key or proves its absence; the
    rest on their own."""
    walked = await _walk(group, fetch_page, lengths)
    unseen: list[Fetch] = []
    for call, key in group.members.items():
        entries = walked.entries_of(group.walk, key) if walked is not None else None
        if walked is None or entries is None or call.window is None:
            unseen.append(call)
        else:
            answered[call] = Answered(window_of(entries, call.window, call.details), walked.events)
    await _each_alone(unseen, fetch_page, answered)


@dataclass(frozen=True, slots=True)
class _Walked:
    partition: dict[str, Sequence[dict[str, Any]]]  # the walk's entries by key, in walk order
    uuids: frozenset[UUID] | None  # the UUIDs its keys name; None: a key it cannot read
    events: tuple[CacheEvent, ...]  # what the cache did for its pages

    def entries_of(self, walk: Walk, key: str) -> Sequence[dict[str, Any]] | None:
        """The key's entries: those the walk holds, none when the walk proves it has none,
        None when the walk cannot tell (its call goes upstream on its own)."""
        entries = self.partition.get(key)
        if entries is not None:
            return entries
        named = walk.proven_uuid(key)
        if named is None or self.uuids is None or named in self.uuids:
            return None
        return []


async def _walk(group: _Group, fetch_page: FetchPage, lengths: ListLengths) -> _Walked | None:
    """The walk's entries by key, all from one generation of the list; None when the rest
    of it would not pay, it failed, or did not hold together."""
    walk, page_size = group.walk, group.page_size
    first_page = Fetch(walk.query, PageWindow(0, page_size), details=True)
    try:
        first, first_event = await fetch_page(first_page, False)
    except Exception:
        return None  # each call on its own says what is wrong with it
    total = read_total(first.count)
    if total is None:
        return None
    lengths.learn(walk.query, total)
    pages = group.pages(total)
    if total > group.budget or not walk_pays(pages - 1, group.unproven, len(group.members)):
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
    items = join([page.items for page, _ in walked])
    totals = {read_total(page.count) for page, _ in walked}
    if len(totals) != 1 or len(items) not in totals or _repeats(items):
        return None  # the list changed under the walk: no exact partition from it
    # Each key's entries picked from the walked pages: still their upstream bytes, so the
    # projection reads an entity's share as it reads any page (each body decoded once).
    shares: dict[str, PickedItems] = {}
    readable = True
    for index, item in enumerate(items):
        key = walk.key_of(item)
        if key is not None:
            shares.setdefault(key, PickedItems()).add(items, index)
        elif walk.holder_of(item) is not None:
            readable = False  # an owner or location whose id is no text: it could be anyone
    partition = {key: share.items() for key, share in shares.items()}
    named = [read_webex_id(key) for key in partition]
    uuids = None
    if readable and all(found is not None for found in named):
        uuids = frozenset(found.uuid for found in named if found is not None)
    return _Walked(partition, uuids, tuple(event for _, event in walked))


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

"""Per-request batching: the fields of one operation that need the same upstream query share
one upstream call.

Each field asks for a ``Fetch`` (a window of items and/or counts for one ``NumbersQuery``).
The loader collects the asks of one tick, merges those with the same query and window into
one call, and folds counts-only asks into a page call of the same query (asking it with
``details=true``), so ``phoneNumbers { totalCount }`` plus ``numberCounts`` with the same filter
is a single upstream request. Page calls that differ only in an owner's or a location's id
(a router's batch of ``Person`` or ``Location`` entities) may then be answered by one walk of
the list they partition (``entity_batches``); an ask made with ``own_entry`` (a root field's
fan-out part: ``data.fan_out``) is never answered so, but by its own call and page cache entry,
the one its single-valued query uses. Built per request by ``NumbersSource``; never shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from strawberry.dataloader import DataLoader

from gateway.data.entity_batches import Answered, FetchPage, ListLengths, answer_calls
from gateway.data.page_cache import CacheEvent
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, UpstreamPage


def plan_calls(asks: Sequence[Fetch]) -> dict[Fetch, Fetch]:
    """Map every ask to the call that will answer it; fewer distinct calls than asks.

    Asks for the same query and window share a call, with ``details`` if any of them wants
    it. A counts-only ask rides on a page call of the same filter set (counts do not depend
    on order), which then asks with ``details=true``; with no such page call it becomes a
    ``max=1`` counts call.
    """
    windows: dict[tuple[NumbersQuery, PageWindow], bool] = {}
    for ask in asks:
        if ask.window is not None:
            key = (ask.query, ask.window)
            windows[key] = windows.get(key, False) or ask.details
    carrier: dict[NumbersQuery, tuple[NumbersQuery, PageWindow]] = {}
    for query, window in windows:
        carrier.setdefault(query.unordered, (query, window))
    for ask in asks:
        if ask.window is None and ask.query.unordered in carrier:
            windows[carrier[ask.query.unordered]] = True
    plan: dict[Fetch, Fetch] = {}
    for ask in asks:
        if ask.window is not None:
            plan[ask] = Fetch(ask.query, ask.window, windows[(ask.query, ask.window)])
        elif ask.query.unordered in carrier:
            query, window = carrier[ask.query.unordered]
            plan[ask] = Fetch(query, window, details=True)
        else:
            plan[ask] = Fetch(ask.query.unordered, None, details=True)
    return plan


class NumbersLoader:
    """The upstream as one request's operations see it: ``load`` a ``Fetch`` through a
    ``LoaderView``, get its ``UpstreamPage``. Every view of one loader shares its batching,
    so equal asks of several operations (a batch) make one call; each view keeps its own
    record of what the cache did."""

    def __init__(self, fetch_page: FetchPage, lengths: ListLengths | None = None) -> None:
        self._fetch_page = fetch_page
        self._lengths = lengths  # what the caller's earlier walks found (entity_batches)
        self._loader: DataLoader[Fetch, Answered] = DataLoader(load_fn=self._load_batch)
        # Asks that must be answered by their own call, not by an entity batch's walk.
        self._own_entries: set[Fetch] = set()

    def view(self) -> LoaderView:
        """A new view: loads through this loader, cache events of its own."""
        return LoaderView(self)

    def load(self, ask: Fetch, *, own_entry: bool = False) -> Awaitable[Answered]:
        """``own_entry``: answer ``ask`` by its own upstream call and page cache entry, never
        by an entity batch's walk (whose entries are another list's)."""
        if own_entry:
            self._own_entries.add(ask)
        return self._loader.load(ask)

    def clear(self) -> None:
        """Forget the answers loaded so far (the request's operations are done with them).
        Kept, a 2,000-item page would live as long as graphql-core's executor, which refers
        to itself (through its resolve-info helpers) and to the request's context, so only a
        collection frees it: that made every large page cyclic garbage for the collector to
        walk (issue 22). Cleared, the page goes when the answer is written."""
        self._loader.clear_all()
        self._own_entries.clear()
        batch = self._loader.batch
        if batch is not None and batch.dispatched:  # the last batch holds its futures too
            self._loader.batch = None

    async def _load_batch(self, asks: Sequence[Fetch]) -> list[Answered | BaseException]:
        plan = plan_calls(asks)
        calls = list(dict.fromkeys(plan.values()))
        # A call that also answers a counts-only ask needs the upstream's whole count object.
        counted = {plan[ask] for ask in asks if ask.window is None}
        own = {plan[ask] for ask in asks if ask in self._own_entries}
        # A call alone is never walked: each own-entry call is answered as one.
        parts = await asyncio.gather(
            answer_calls(
                [c for c in calls if c not in own],
                self._fetch_page,
                counted=counted,
                lengths=self._lengths,
            ),
            *(
                answer_calls([call], self._fetch_page, counted=counted, lengths=self._lengths)
                for call in own
            ),
        )
        answered = {call: found for part in parts for call, found in part.items()}
        results: list[Answered | BaseException] = []
        for ask in asks:
            found = answered[plan[ask]]
            if isinstance(found.outcome, BaseException):
                if not isinstance(found.outcome, Exception):
                    raise found.outcome  # cancellation and the like are not per-key failures
                results.append(found.outcome)
            else:
                results.append(found)
        return results


class LoaderView:
    """One operation's loads: the shared loader's answers, and ``events``, what the cache
    did for each fetch this operation's answers were built from (each fetch once, however
    many of the operation's fields it answered)."""

    def __init__(self, loader: NumbersLoader) -> None:
        self.loader = loader
        self.events: list[CacheEvent] = []
        self._recorded: set[int] = set()  # ids of the events in ``events``, which keeps them

    async def load(self, ask: Fetch, *, own_entry: bool = False) -> UpstreamPage:
        answered = await self.loader.load(ask, own_entry=own_entry)
        for event in answered.events:
            if id(event) not in self._recorded:
                self._recorded.add(id(event))
                self.events.append(event)
        assert not isinstance(answered.outcome, BaseException)  # raised by the loader
        return answered.outcome

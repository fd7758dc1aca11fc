"""Per-request batching: the fields of one operation that need the same upstream query share
one upstream call.

Each field asks for a ``Fetch`` (a window of items and/or counts for one ``NumbersQuery``).
The loader collects the asks of one tick, merges those with the same query and window into
one call, and folds counts-only asks into a page call of the same query (asking it with
``details=true``), so ``phoneNumbers { totalCount }`` plus ``numberCounts`` with the same filter
is a single upstream request. Built per request by ``NumbersSource``; never shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from strawberry.dataloader import DataLoader

from gateway.numbers.query import Fetch, NumbersQuery, PageWindow, UpstreamPage

FetchPage = Callable[[Fetch], Awaitable[UpstreamPage]]


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
    """The operation's view of the upstream: ``load`` a ``Fetch``, get its ``UpstreamPage``."""

    def __init__(self, fetch_page: FetchPage) -> None:
        self._fetch_page = fetch_page
        self._loader: DataLoader[Fetch, UpstreamPage] = DataLoader(load_fn=self._load_batch)

    def load(self, ask: Fetch) -> Awaitable[UpstreamPage]:
        return self._loader.load(ask)

    async def _load_batch(self, asks: Sequence[Fetch]) -> list[UpstreamPage | BaseException]:
        plan = plan_calls(asks)
        calls = list(dict.fromkeys(plan.values()))
        outcomes = await asyncio.gather(
            *(self._fetch_page(call) for call in calls), return_exceptions=True
        )
        answered = dict(zip(calls, outcomes, strict=True))
        results: list[UpstreamPage | BaseException] = []
        for ask in asks:
            outcome = answered[plan[ask]]
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation and the like are not per-key failures
            results.append(outcome)
        return results

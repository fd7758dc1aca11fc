"""The home of the request pipeline: every consumer of phone numbers goes through here.

``NumbersSource`` is built once in the lifespan from the page cache and the upstream client.
``for_caller`` gives one request its own ``CallerNumbers``: the caller (``Callers`` normalises
the credential and names the caller; a bad one fails each field before any upstream call),
whether it asked for ``no-cache``, the record of what the cache did,
and a fresh loader that merges the asks of one operation. Root fields, federation entity
fields and persisted-query replays all read numbers through it; the HTTP view only says who
is calling. A window under ``@stream`` is opened by ``page_stream`` instead: its head the
first upstream page of its walk (or the page cache's whole window), the rest walked as the
client takes it.

Windows are offset ranges of the list (``domain.arguments.page_window``), forward or backward
alike; an empty one asks only for the counts, and Relay's ``last`` without ``before`` takes
its probe's page with the counts, which is the answer when the list ends within it and
places the one further page to ask for otherwise. A filter with several values of
``locationIds`` or ``ownerTypes`` is a fan-out: one such query per value, merged into one
exact connection (``data.fan_out``, ``domain.fan_out``), bounded by
``GATEWAY_MAX_FILTER_VALUES``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable
from functools import partial
from typing import Literal, overload

from gateway.data import fan_out
from gateway.data.caller import Caller, Callers
from gateway.data.entity_batches import WalkLengths
from gateway.data.loaders import NumbersLoader
from gateway.data.page_cache import CacheEvent, PageCache, cache_key
from gateway.data.page_stream import UpstreamWalk, open_stream, whole_list
from gateway.domain.arguments import (
    DEFAULT_MAX_FILTER_VALUES,
    list_query,
    page_ceiling,
    page_window,
)
from gateway.domain.connection import PageResult, StreamedWindow, placed_tail
from gateway.domain.fan_out import merged_window
from gateway.domain.query import (
    EntityKey,
    FanOutQuery,
    Fetch,
    NumbersQuery,
    PageWindow,
    TailWindow,
    UpstreamPage,
)
from gateway.domain.reader import read_total, to_number_counts
from gateway.domain.records import NumberCounts, NumberFilter, NumberOrder, PageRequest
from gateway.errors import Unauthenticated
from gateway.upstream.client import UpstreamClient

_FRESH = frozenset({"hit", "miss", "refresh"})
# Cache statuses of a page this caller got: from the upstream, or stored from its answer.
_ANSWERED = frozenset({"hit", "miss", "bypass", "refresh", "stale"})


class NumbersSource:
    """The page cache in front of the upstream, per caller. One per app."""

    def __init__(
        self,
        upstream: UpstreamClient,
        cache: PageCache,
        *,
        max_page_size: int,
        max_stream_items: int | None = None,
        max_filter_values: int = DEFAULT_MAX_FILTER_VALUES,
        default_authorization: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.cache = cache
        self.max_page_size = max_page_size
        # The ceiling of a window under @stream (None: GATEWAY_MAX_PAGE_SIZE, as unstreamed).
        self.max_stream_items = max_stream_items
        # Values of one fan-out list (or combinations of both): GATEWAY_MAX_FILTER_VALUES.
        self.max_filter_values = max_filter_values
        # Under the cache's secret, so a caller's identity and its cache keys agree.
        self.callers = Callers(cache.secret, default_authorization)
        # What walks of entity batches found of their lists' lengths, to plan the next ones.
        self.walk_lengths = WalkLengths(cache.secret, clock=cache.clock)

    @property
    def max_list_items(self) -> int:
        """The most entries one walked list may hold: a window under ``@stream``, an export's
        whole list (``GATEWAY_MAX_STREAM_ITEMS``; ``arguments.page_ceiling``)."""
        return page_ceiling(
            max_page_size=self.max_page_size,
            max_stream_items=self.max_stream_items,
            streamed=True,
        )

    def for_caller(
        self,
        authorization: str | None,
        *,
        refresh: bool = False,
        caller: Caller | None = None,
    ) -> CallerNumbers:
        """One request's view. ``authorization`` is the header exactly as sent; ``caller``,
        when the request already identified it (``callers.known(authorization)``), so its
        HMAC is not computed twice. None: identified here, and a header that names nobody
        makes each field that reads numbers fail with the reason."""
        if caller is not None:
            return CallerNumbers(self, caller, refresh)
        try:
            identified: Caller | Unauthenticated = self.callers.identify(authorization)
        except Unauthenticated as refused:
            identified = refused  # each field that reads numbers fails with it, nothing else
        return CallerNumbers(self, identified, refresh)


class CallerNumbers:
    """One request's numbers: credentials, ``no-cache``, cache events and the loader."""

    def __init__(
        self,
        source: NumbersSource,
        caller: Caller | Unauthenticated,
        refresh: bool,
        loader: NumbersLoader | None = None,
    ) -> None:
        self._source = source
        self._caller = caller
        self.refresh = refresh
        # The loader fetches through a function of the source, caller and refresh, not a
        # method of this object: it would make the two a reference cycle.
        fetch_page = partial(_fetch_through_cache, source, caller, refresh)
        lengths = (
            None
            if isinstance(caller, Unauthenticated)
            else source.walk_lengths.for_caller(caller.identity)
        )
        self._loader = (loader or NumbersLoader(fetch_page, lengths)).view()
        self.cache_events: list[CacheEvent] = self._loader.events

    @property
    def caller(self) -> Caller:
        """Who is calling; raises ``Unauthenticated`` (before any upstream call) when the
        request named nobody who could call the upstream."""
        if isinstance(self._caller, Unauthenticated):
            raise Unauthenticated(self._caller.message)
        return self._caller

    def refreshing(self) -> CallerNumbers:
        """A new view for the same caller that never reads a cached answer and refreshes the
        cache, as ``Cache-Control: no-cache`` does (each poll of a change feed takes one)."""
        return CallerNumbers(self._source, self._caller, refresh=True)

    def sharing(self) -> CallerNumbers:
        """Another operation of the same request (a batch): the same caller and loader, so
        equal asks across the operations make one upstream call, but cache events of its
        own, so each operation's ``fresh_for`` and ``extensions.cache`` are its own."""
        return CallerNumbers(self._source, self._caller, self.refresh, self._loader.loader)

    @property
    def caller_accepted(self) -> bool:
        """Whether the upstream accepted this caller's credential during this operation: a
        page was answered for it, by the upstream (miss, bypass, refresh) or from an entry
        stored under this caller's own key from such an answer (hit, stale). What APQ
        registration requires (``transports.documents``)."""
        return any(event.status in _ANSWERED for event in self.cache_events)

    @property
    def max_filter_values(self) -> int:
        """``GATEWAY_MAX_FILTER_VALUES``: values of one fan-out list (or combinations)."""
        return self._source.max_filter_values

    @property
    def ttl(self) -> float:
        """How long the cache keeps an answer fresh (0: caching is off)."""
        return self._source.cache.ttl

    def fresh_for(self) -> float | None:
        """Seconds an answer built from this request's upstream asks stays fresh: as long as
        the shortest-lived cache entry it used. None when caching is off, when nothing was
        asked, or when an ask was answered stale."""
        events = self.cache_events
        if self.ttl <= 0 or not events or any(e.status not in _FRESH for e in events):
            return None
        return self.ttl - max(event.age for event in events)

    def load(self, ask: Fetch, *, own_entry: bool = False) -> Awaitable[UpstreamPage]:
        """The upstream's answer to ``ask``, merged with the operation's other asks.
        ``own_entry``: by its own call and cache entry, never an entity batch's walk."""
        return self._loader.load(ask, own_entry=own_entry)

    def query(
        self,
        org_id: str | None,
        flt: NumberFilter | None,
        order: NumberOrder | None,
        *,
        entity_key: EntityKey | None = None,
    ) -> NumbersQuery | FanOutQuery:
        """The arguments validated and normalised (``arguments.list_query``, bounded by
        ``GATEWAY_MAX_FILTER_VALUES``): ``BadUserInput`` before any upstream call."""
        return list_query(
            org_id,
            flt,
            order,
            entity_key=entity_key,
            max_filter_values=self._source.max_filter_values,
        )

    def whole_list(
        self, org_id: str | None, flt: NumberFilter | None, order: NumberOrder | None
    ) -> AsyncGenerator[UpstreamPage, None]:
        """Every entry the filter matches, in ``order``, one upstream page at a time as the
        consumer asks for the next, each page its own uncached exchange under the caller's
        fair slots, the first with the counts; at most ``NumbersSource.max_list_items`` entries
        and one more (``page_stream.whole_list``); a fan-out's parts merged page by page
        (``fan_out.merged_walk``: the counts summed on its first page). The arguments are
        checked and the caller named here, before any upstream call (``BadUserInput``,
        ``Unauthenticated``)."""
        source = self._source
        query = self.query(org_id, flt, order)
        walk = UpstreamWalk(source.upstream, self.caller, page_size=source.max_page_size)
        limit = source.max_list_items
        if isinstance(query, FanOutQuery):
            parts = [whole_list(part, walk, max_items=limit) for part in query.parts]
            return fan_out.merged_walk(query, parts)
        return whole_list(query, walk, max_items=limit)

    @overload
    async def phone_numbers(
        self,
        org_id: str | None,
        flt: NumberFilter | None,
        order: NumberOrder | None,
        page: PageRequest | None,
        *,
        entity_key: EntityKey | None = None,
        total: bool = False,
        streamed: Literal[False] = False,
        held_stream: bool = False,
    ) -> PageResult: ...

    @overload
    async def phone_numbers(
        self,
        org_id: str | None,
        flt: NumberFilter | None,
        order: NumberOrder | None,
        page: PageRequest | None,
        *,
        entity_key: EntityKey | None = None,
        total: bool = False,
        streamed: bool = False,
        held_stream: bool = False,
    ) -> PageResult | StreamedWindow: ...

    async def phone_numbers(
        self,
        org_id: str | None,
        flt: NumberFilter | None,
        order: NumberOrder | None,
        page: PageRequest | None,
        *,
        entity_key: EntityKey | None = None,
        total: bool = False,
        streamed: bool = False,
        held_stream: bool = False,
    ) -> PageResult | StreamedWindow:
        """One page of numbers; arguments are validated before any upstream call. ``total``
        asks for the counts too (``details=true``). ``streamed``: the items are delivered
        with ``@stream``, so the window may reach ``GATEWAY_MAX_STREAM_ITEMS`` and is walked
        while the client takes it (``data.page_stream``). ``held_stream``: the items
        carry ``@stream`` but the response is one JSON body, so the window stays within
        ``GATEWAY_MAX_PAGE_SIZE`` (its refusal says how to stream instead). A fanned-out
        filter's page is its parts' merged (``data.fan_out``)."""
        source = self._source
        query = self.query(org_id, flt, order, entity_key=entity_key)
        if isinstance(query, FanOutQuery):
            return await self._fanned_out(
                query,
                page,
                total=total,
                streamed=streamed,
                held_stream=held_stream,
                own_entries=entity_key is None,
            )
        window = page_window(
            query,
            page,
            source.max_page_size,
            streamed=streamed,
            max_stream_items=source.max_stream_items,
            held_stream=held_stream,
        )
        if isinstance(window, PageWindow) and window.size == 0:
            return await self._empty_page(query, window)
        if streamed:
            walk = UpstreamWalk(
                source.upstream,
                self.caller,
                page_size=source.max_page_size,
                on_first_page=self._note_walked,
            )
            return await open_stream(
                query,
                window,
                max_page_size=source.max_page_size,
                details=total,
                cached=self._cached,
                walk=walk,
            )
        if isinstance(window, TailWindow):
            return await self._tail_page(query, window)
        return PageResult(query, window, await self.load(Fetch(query, window, details=total)))

    async def _fanned_out(
        self,
        query: FanOutQuery,
        page: PageRequest | None,
        *,
        total: bool,
        streamed: bool,
        held_stream: bool,
        own_entries: bool,
    ) -> PageResult | StreamedWindow:
        """A fan-out's page: its parts' shares of the window, merged. ``own_entries`` (a root
        field's): each part by its own call and cache entry, the single-valued query's."""
        source = self._source
        window = merged_window(
            query,
            page,
            source.max_page_size,
            streamed=streamed,
            max_stream_items=source.max_stream_items,
            held_stream=held_stream,
        )
        load = partial(self.load, own_entry=own_entries)
        if streamed:
            walk = UpstreamWalk(
                source.upstream,
                self.caller,
                page_size=source.max_page_size,
                on_first_page=self._note_walked,
            )
            asks = fan_out.StreamAsks(self._cached, load, walk, source.max_page_size)
            return await fan_out.open_merged_stream(query, window, asks, details=total)
        return await fan_out.held_page(query, window, load, details=total)

    async def _empty_page(self, query: NumbersQuery, window: PageWindow) -> PageResult:
        """A window with no entries in it (``before`` at or before ``after``, or at the
        list's start): only the counts are asked, which tell whether entries follow it."""
        counted = await self.load(Fetch(query, None, details=True))
        total = read_total(counted.count)
        # Without a total, entries may follow: hasNextPage says so, totalCount cannot guess.
        follows = True if total is None else window.start < total
        return PageResult(query, window, UpstreamPage([], counted.count, has_more=follows))

    async def _tail_page(self, query: NumbersQuery, window: TailWindow) -> PageResult:
        """The last entries of the list: the probe, a page from ``window.lower`` with the
        counts (the same call as the forward first page, so they share a cache entry), is the
        answer when the list ends within it; otherwise one more page, where the total puts
        it, whose answer takes the probe's counts."""
        probe = await self.load(Fetch(query, window.probe, details=True))
        placed = placed_tail(window, probe)
        if placed.start == window.lower:
            return PageResult(query, placed, probe)
        page = await self.load(Fetch(query, placed, details=False))
        return PageResult(query, placed, UpstreamPage(page.items, probe.count, page.has_more))

    async def number_counts(
        self,
        org_id: str | None,
        flt: NumberFilter | None,
        *,
        entity_key: EntityKey | None = None,
    ) -> NumberCounts:
        """The counts over every entry the filter matches (a fan-out's: its parts' summed)."""
        query = self.query(org_id, flt, None, entity_key=entity_key)
        if isinstance(query, FanOutQuery):
            load = partial(self.load, own_entry=entity_key is None)
            return to_number_counts(await fan_out.counts(query, load))
        answer = await self.load(Fetch(query, None, details=True))
        return to_number_counts(answer.count)

    async def _cached(self, ask: Fetch) -> UpstreamPage | None:
        """The page cache's fresh answer to ``ask`` under this caller's key, if it holds
        one; nothing is asked upstream (a streamed window's head, ``open_stream``)."""
        if self.refresh or isinstance(self._caller, Unauthenticated):
            return None
        cache = self._source.cache
        found = await cache.lookup(
            cache_key(cache.secret, self._caller.identity, ask), owner=self._caller.identity
        )
        if found is None:
            return None
        page, event = found
        self.cache_events.append(event)
        return page

    def _note_walked(self) -> None:
        # A walked page is answered by the upstream for this caller, past the cache.
        self.cache_events.append(CacheEvent(status="bypass", tier="upstream"))

    def release(self) -> None:
        """The request is done reading numbers: its loader forgets the pages it loaded, so
        they are freed with the answer rather than by a garbage collection (``NumbersLoader.
        clear``). Every operation sharing the loader must be done (a batch releases once)."""
        self._loader.loader.clear()


async def _fetch_through_cache(
    source: NumbersSource,
    caller: Caller | Unauthenticated,
    view_refresh: bool,
    fetch: Fetch,
    refresh: bool,
) -> tuple[UpstreamPage, CacheEvent]:
    """One upstream ask of a request's loader, through the page cache under the caller's key."""
    if isinstance(caller, Unauthenticated):
        raise Unauthenticated(caller.message)
    cache = source.cache
    upstream = source.upstream
    page, event = await cache.get_or_fetch(
        cache_key(cache.secret, caller.identity, fetch),
        lambda: upstream.fetch(fetch, caller.authorization, caller=caller.identity),
        owner=caller.identity,
        refresh=view_refresh or refresh,
    )
    return page, event

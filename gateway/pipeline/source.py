"""The home of the request pipeline: every consumer of phone numbers goes through here.

``NumbersSource`` is built once in the lifespan from the page cache and the upstream client.
``for_caller`` gives one request its own ``CallerNumbers``: the caller's credentials (checked
before any upstream call), whether it asked for ``no-cache``, the record of what the cache did,
and a fresh loader that merges the asks of one operation. Root fields, federation entity
fields and persisted-query replays all read numbers through it; the HTTP view only says who
is calling.
"""

from __future__ import annotations

from collections.abc import Awaitable

from gateway.errors import Unauthenticated
from gateway.numbers.arguments import numbers_query, page_window
from gateway.numbers.connection import PageResult
from gateway.numbers.query import EntityKey, Fetch, UpstreamPage
from gateway.numbers.reader import to_number_counts
from gateway.numbers.types import NumberCounts, PageInput, PhoneNumberFilter, PhoneNumberOrder
from gateway.pipeline.loaders import NumbersLoader
from gateway.pipeline.page_cache import CacheEvent, PageCache, cache_key
from gateway.upstream.client import UpstreamClient
from gateway.upstream.slots import caller_of

_FRESH = frozenset({"hit", "miss", "refresh"})
NO_CREDENTIALS = "Send the caller's Webex token as 'Authorization: Bearer <token>'."
UNUSABLE_CREDENTIALS = (
    "The Authorization header must be printable ASCII ('Bearer <token>'); this one cannot "
    "be sent upstream."
)


def usable_authorization(value: str | None) -> str | None:
    """The header as it will be forwarded, or None for no credentials (a blank header)."""
    if value is None or not value.strip():
        return None
    return value


class NumbersSource:
    """The page cache in front of the upstream, per caller. One per app."""

    def __init__(
        self,
        upstream: UpstreamClient,
        cache: PageCache,
        *,
        max_page_size: int,
        default_authorization: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.cache = cache
        self.max_page_size = max_page_size
        # The embedded simulator's demo token stands in for a caller who sent none.
        self.default_authorization = default_authorization

    def for_caller(self, authorization: str | None, *, refresh: bool = False) -> CallerNumbers:
        """One request's view. ``authorization`` is the header exactly as sent."""
        return CallerNumbers(
            self, usable_authorization(authorization) or self.default_authorization, refresh
        )


class CallerNumbers:
    """One request's numbers: credentials, ``no-cache``, cache events and the loader."""

    def __init__(self, source: NumbersSource, authorization: str | None, refresh: bool) -> None:
        self._source = source
        self._authorization = authorization
        self.refresh = refresh
        self.cache_events: list[CacheEvent] = []
        self._loader = NumbersLoader(self._fetch)

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

    def load(self, ask: Fetch) -> Awaitable[UpstreamPage]:
        """The upstream's answer to ``ask``, merged with the operation's other asks."""
        return self._loader.load(ask)

    async def phone_numbers(
        self,
        org_id: str | None,
        flt: PhoneNumberFilter | None,
        order: PhoneNumberOrder | None,
        page: PageInput | None,
        *,
        entity_key: EntityKey | None = None,
        total: bool = False,
    ) -> PageResult:
        """One page of numbers; arguments are validated before any upstream call. ``total``
        asks for the counts too (``details=true``)."""
        query = numbers_query(org_id, flt, order, entity_key=entity_key)
        window = page_window(query, page, self._source.max_page_size)
        return PageResult(query, window, await self.load(Fetch(query, window, details=total)))

    async def number_counts(
        self,
        org_id: str | None,
        flt: PhoneNumberFilter | None,
        *,
        entity_key: EntityKey | None = None,
    ) -> NumberCounts:
        query = numbers_query(org_id, flt, None, entity_key=entity_key)
        answer = await self.load(Fetch(query, None, details=True))
        return to_number_counts(answer.count)

    async def _fetch(self, fetch: Fetch) -> UpstreamPage:
        authorization = self._authorization
        if authorization is None:
            raise Unauthenticated(NO_CREDENTIALS)
        if not (authorization.isascii() and authorization.isprintable()):
            raise Unauthenticated(UNUSABLE_CREDENTIALS)
        cache = self._source.cache
        upstream = self._source.upstream
        page, event = await cache.get_or_fetch(
            cache_key(cache.secret, authorization, fetch),
            lambda: upstream.fetch(fetch, authorization),
            owner=caller_of(authorization),
            refresh=self.refresh,
        )
        self.cache_events.append(event)
        return page

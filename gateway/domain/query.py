"""The query vocabulary every layer speaks: what to ask the upstream, and what it answered.

``NumbersQuery`` is one filter set (the unit of batching, caching and cursor binding);
``FanOutQuery`` several of them, one per value of a fanned-out filter (``filter.locationIds``,
``filter.ownerTypes``), whose lists merged are its list (``domain.fan_out``); ``PageWindow``
a slice of a list (``TailWindow``: a slice at the list's end, placed once the total is
known); ``Fetch`` what one field needs (a window, counts, or both); ``UpstreamPage`` the
upstream's answer to one ``Fetch`` with its page walk completed. The lowest layer: it imports
nothing from the rest of the gateway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

# What one upstream call weighs against the items a page holds (1 each), in every cost
# estimate: the gateway's own (``execution.cost``) and the one it publishes to routers
# (``schema.cost_directives``).
CALL_COST: Final = 50


@dataclass(frozen=True, slots=True)
class NumbersQuery:
    """One filter set: the org and the upstream parameters, without paging.

    Two operations asking the same thing produce equal queries, whatever order their
    arguments came in; so this is what loaders batch on and caches and cursors key on.
    """

    org_id: str | None
    params: tuple[tuple[str, str], ...]

    @property
    def unordered(self) -> NumbersQuery:
        """The same filter set without its order: counts do not depend on order."""
        return NumbersQuery(self.org_id, tuple(p for p in self.params if p[0] != "order"))

    @property
    def fingerprint(self) -> str:
        """A short stable digest, for binding cursors to the query that issued them."""
        canonical = repr((self.org_id, self.params)).encode()
        return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class FanOutQuery:
    """A filter over several values of a parameter the upstream takes one value of: ``parts``
    holds one ``NumbersQuery`` per value (per combination of values, when both ``locationIds``
    and ``ownerTypes`` are given), each exactly the query the single-valued filter makes, in
    a canonical order (the values sorted), so the same values in any order are one query,
    and each part's pages are the single-valued query's cache entries. The values partition
    the list (a number has one location and at most one owner), so its list is the parts'
    lists merged (``domain.fan_out``), and its counts their sums."""

    parts: tuple[NumbersQuery, ...]

    def __post_init__(self) -> None:
        if len(self.parts) < 2:
            raise ValueError("a fan-out has at least two parts; one is its NumbersQuery")

    @property
    def org_id(self) -> str | None:
        return self.parts[0].org_id

    @property
    def order(self) -> str | None:
        """The upstream's ``order`` value the parts ask with (``lastName-desc``), if any: the
        merge follows it (``fan_out.merge_key``)."""
        return next((value for name, value in self.parts[0].params if name == "order"), None)

    @property
    def unordered(self) -> FanOutQuery:
        """The same parts without their order: counts do not depend on order."""
        return FanOutQuery(tuple(part.unordered for part in self.parts))

    @property
    def fingerprint(self) -> str:
        """A short stable digest of every part, for binding cursors to the fan-out that issued
        them (never equal to a single query's: the material differs in shape)."""
        canonical = repr(("fan-out", self.org_id, [part.params for part in self.parts]))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PageWindow:
    """Entries ``start`` up to ``start + size`` (exclusive) of the list, in its order; a size
    of 0 is an empty window (nothing to ask the upstream for but, when needed, the counts)."""

    start: int
    size: int


@dataclass(frozen=True, slots=True)
class TailWindow:
    """The last ``size`` entries of the list from ``lower`` on (Relay's ``last`` without
    ``before``): where it starts is known only from the list's total, so it is asked for in
    two steps. ``probe`` is the first: the window from ``lower`` as if it were the whole
    tail, asked with the counts; when the list ends within it (``total - lower <= size``) it
    is the answer, otherwise ``resolve(total)`` names the window to ask for next."""

    lower: int
    size: int

    @property
    def probe(self) -> PageWindow:
        return PageWindow(self.lower, self.size)

    def resolve(self, total: int) -> PageWindow:
        start = max(self.lower, total - self.size)
        return PageWindow(start, max(0, total - start))


@dataclass(frozen=True, slots=True)
class Fetch:
    """What one field needs from the upstream: a window of items, counts, or both."""

    query: NumbersQuery
    window: PageWindow | None  # None: counts only
    details: bool

    def upstream_params(self) -> list[tuple[str, str]]:
        """The exact query string, in a stable order."""
        params: list[tuple[str, str]] = []
        if self.query.org_id is not None:
            params.append(("orgId", self.query.org_id))
        params.extend(self.query.params)
        if self.window is None:
            params.append(("max", "1"))
        else:
            if self.window.start:
                params.append(("start", str(self.window.start)))
            params.append(("max", str(self.window.size)))
        if self.details:
            params.append(("details", "true"))
        return params


@dataclass(frozen=True, slots=True)
class UpstreamPage:
    """What the upstream answered for one ``Fetch``, its page walk already completed. Its
    items are ``domain.upstream_items.UpstreamItems`` (the bodies' bytes) when they came from
    the upstream or the page cache, and dicts when a page is made of other data."""

    items: Sequence[dict[str, Any]]
    count: dict[str, Any] | None
    has_more: bool


@dataclass(frozen=True, slots=True)
class EntityKey:
    """The filter field an entity's key sets: ``Location.phoneNumbers`` sets ``locationId``
    to the location's id, ``Person.phoneNumbers`` sets ``ownerId`` to the person's."""

    attribute: str  # a PhoneNumberFilter attribute
    value: str
    entity: str  # for messages: "Location", "Person"

"""One poll of a change feed: every entry its filter matches, walked page by page through the
caller's numbers, so a poll passes the same credentials check, breaker, fair slots and single
flight as queries do. A poll never reads a cached answer; it refreshes the cache, as a query
with ``Cache-Control: no-cache`` does, and it never takes a stale answer (stale-if-error): a
poll the upstream failed is a failed poll, backed off like one, not the last poll again.

The upstream pages by offset and offers no consistent read across pages: an entry added or
removed before the page boundary between two page fetches shifts every later offset, so one
entry would be skipped (a false REMOVED now, ADDED next poll) or read twice. So a poll checks
itself: every page asks for the total (``details=true``, no extra call), each page after the
first starts one entry early and must begin with the entry the previous page ended with (that
entry moves exactly when the boundary shifted), and the whole walk must hold as many distinct
entries as every page's total says. A walk that fails any check is ``InconsistentPoll``: the
feed throws it away (no diff, no commit) and polls again next interval.

A filter over several values (``locationIds``, ``ownerTypes``) is polled one value at a time,
each value's list walked and checked as above, and the poll is their union, bounded as one by
``GATEWAY_CHANGES_MAX_ITEMS``; the values partition the list, so an entry found under two of
them moved between their walks: the poll is inconsistent too.
"""

from __future__ import annotations

from gateway.data.source import CallerNumbers
from gateway.domain.arguments import part_filters
from gateway.domain.changes import Entry, entry_identity
from gateway.domain.records import NumberFilter, PageRequest
from gateway.errors import BadUserInput, UpstreamUnavailable


class InconsistentPoll(Exception):
    """The entries changed while the poll walked their pages: its result is not one state."""


def too_many_entries(matched: int | None, max_items: int) -> BadUserInput:
    found = f"matches {matched} entries" if matched is not None else "matches too many entries"
    return BadUserInput(
        f"This filter {found}; a change feed watches at most {max_items} "
        "(GATEWAY_CHANGES_MAX_ITEMS). Subscribe with a narrower filter, for example one "
        "location (filter.locationId) or one owner type."
    )


async def poll_entries(
    numbers: CallerNumbers,
    org_id: str | None,
    flt: NumberFilter | None,
    *,
    page_size: int,
    max_items: int,
) -> list[Entry]:
    """Every entry the filter matches now, in the upstream's order (a fanned-out filter's:
    each value's in turn). ``numbers`` must be a refreshing view
    (``CallerNumbers.refreshing``). Raises ``BadUserInput`` past ``max_items`` (the first
    page's total tells, so a huge filter costs one call) and ``InconsistentPoll`` when the
    entries moved under the walk."""
    entries: list[Entry] = []
    for part in part_filters(flt, max_filter_values=numbers.max_filter_values):
        entries.extend(
            await _poll_list(
                numbers, org_id, part, page_size=page_size, max_items=max_items, found=len(entries)
            )
        )
    if len({entry_identity(entry) for entry in entries}) != len(entries):
        raise InconsistentPoll("an entry was read under two values of the filter")
    return entries


async def _poll_list(
    numbers: CallerNumbers,
    org_id: str | None,
    flt: NumberFilter | None,
    *,
    page_size: int,
    max_items: int,
    found: int,
) -> list[Entry]:
    """One single-valued filter's entries, ``found`` already counted against ``max_items``."""
    entries: list[Entry] = []
    totals: set[int] = set()
    # One entry of overlap per page (a page of one entry could not advance with it).
    overlap = 1 if page_size > 1 else 0
    while True:
        start = max(0, len(entries) - overlap)
        result = await numbers.phone_numbers(
            org_id, flt, None, PageRequest(first=page_size, offset=start), total=True
        )
        if any(event.status == "stale" for event in numbers.cache_events):
            raise UpstreamUnavailable(
                "The upstream failed this poll (the cache's stale answer is no poll)."
            )
        if result.total is not None:
            if found + result.total > max_items:
                raise too_many_entries(found + result.total, max_items)
            totals.add(result.total)
        items = list(result.page.items)
        if start < len(entries):
            if not items or entry_identity(items[0]) != entry_identity(entries[-1]):
                raise InconsistentPoll("the page boundary moved between two page fetches")
            items = items[1:]
        entries.extend(items)
        if found + len(entries) > max_items:
            raise too_many_entries(
                None if result.total is None else found + result.total, max_items
            )
        if not items or not result.page.has_more:
            break
    _check_whole(entries, totals)
    return entries


def _check_whole(entries: list[Entry], totals: set[int]) -> None:
    if len(totals) > 1:
        raise InconsistentPoll("the pages reported different totals")
    if totals and len(entries) != next(iter(totals)):
        raise InconsistentPoll("the walk found another number of entries than its total")
    if len({entry_identity(entry) for entry in entries}) != len(entries):
        raise InconsistentPoll("an entry was read twice")

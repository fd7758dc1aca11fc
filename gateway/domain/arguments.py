"""GraphQL arguments to upstream queries: validation, normalisation, page windows, cursors.

``list_query`` validates a filter and order and normalises them into a ``NumbersQuery``, or,
for a filter giving several values of a fanned-out field (``locationIds``, ``ownerTypes``),
a ``FanOutQuery`` of one such query per value (``numbers_query``: the single-valued case
alone);
``page_request`` takes a field's paging in either spelling (the ``page`` input, or Relay's
``first``/``after``/``last``/``before`` arguments, never both); ``page_window`` turns it into
an offset window of the list, from the cursors' positions (a streamed list may ask for more:
``page_ceiling``), or, for ``last`` without ``before``, a ``TailWindow`` placed once the total
is known; ``check_url_text`` is the one rule for every string that becomes part of an upstream
URL (ids, filter strings, orgId, cursors). Every rule here runs before any upstream call and
fails with ``BadUserInput``.

A cursor names one position of one query's list (``cursor_at``/``decode_cursor``): versioned
by its prefix, so a cursor of another shape (a position per value of a fanned-out filter,
``fan_out``'s) is told apart from this one, and refused as another query's.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import itertools
import math
from dataclasses import dataclass
from enum import Enum

from gateway.domain.enums import (
    NumberType,
    OwnerType,
    PhoneNumberSortField,
    SortDirection,
    TelephonyType,
)
from gateway.domain.query import EntityKey, FanOutQuery, NumbersQuery, PageWindow, TailWindow
from gateway.domain.records import NumberFilter, NumberOrder, PageRequest
from gateway.errors import BadUserInput

DEFAULT_PAGE_SIZE = 100
OWNER_NAME_MAX_LENGTH = 255
# UTF-8 bytes of one string sent in an upstream URL. Webex ids are about 100 characters and
# ownerName at most 255 (of at most 4 bytes); percent-encoded, the longest query stays far
# below what URL parsers (httpx: 64 KiB a component) and servers accept.
URL_TEXT_MAX_BYTES = 1024
_CURSOR_PREFIX = "pn1"
# Every cursor kind this gateway issues, by prefix: a fanned-out query's (``fan_out``) holds a
# position per value. One kind given to a query of the other is another query's cursor.
CURSOR_PREFIXES = frozenset({_CURSOR_PREFIX, "pn2"})
# GATEWAY_MAX_FILTER_VALUES' default: values of one fan-out list (or combinations of both).
DEFAULT_MAX_FILTER_VALUES = 50

# Filter fields in the order they are sent: (python attribute, upstream parameter).
FILTER_PARAMETERS: tuple[tuple[str, str], ...] = (
    ("location_id", "locationId"),
    ("phone_number", "phoneNumber"),
    ("available", "available"),
    ("owner_name", "ownerName"),
    ("owner_id", "ownerId"),
    ("owner_type", "ownerType"),
    ("extension", "extension"),
    ("number_type", "numberType"),
    ("phone_number_type", "phoneNumberType"),
    ("state", "state"),
    ("toll_free_numbers", "tollFreeNumbers"),
    ("restricted_non_geo_numbers", "restrictedNonGeoNumbers"),
    ("included_telephony_types", "includedTelephonyTypes"),
    ("service_number", "serviceNumber"),
    ("reserved_number", "reservedNumber"),
    ("assigned", "assigned"),
    ("elin_enabled", "elinEnabled"),
)
_PARAMETER_OF = dict(FILTER_PARAMETERS)
_SORT_KEYS = {
    PhoneNumberSortField.LAST_NAME: "lastName",
    PhoneNumberSortField.DN: "dn",
    PhoneNumberSortField.EXTENSION: "extension",
}
_ALL_TELEPHONY_TYPES = frozenset({TelephonyType.PSTN_NUMBER, TelephonyType.MOBILE_NUMBER})
_NOT_OUR_CURSOR = (
    "{name} is not a cursor this gateway issued; use pageInfo.endCursor (or startCursor) or "
    "an edge's cursor from a previous page."
)
_RELAY_ARGUMENTS = ("first", "after", "last", "before")


def _wire(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def check_url_text(name: str, value: str) -> None:
    """Refuse a string too long to be part of an upstream URL (``BadUserInput``, before any
    call): ids, filter strings, ``orgId``, entity keys, cursors. ``name`` is the argument as
    the caller wrote it (``filter.ownerId``, ``Person.id``)."""
    # Code points first: a longer string cannot fit, and is not encoded to find out.
    if len(value) > URL_TEXT_MAX_BYTES or len(value.encode("utf-8", "surrogatepass")) > (
        URL_TEXT_MAX_BYTES
    ):
        raise BadUserInput(
            f"{name} is too long: at most {URL_TEXT_MAX_BYTES} bytes (UTF-8) are accepted, "
            "far more than any id or value the upstream knows."
        )


def _check_text(name: str, value: str) -> None:
    check_url_text(name, value)
    if not value.strip():
        raise BadUserInput(f"{name} must not be empty; omit it instead.")
    # Control characters and lone surrogates cannot travel in a URL or a cache key.
    if not value.isprintable():
        raise BadUserInput(f"{name} contains characters that are not printable text.")


def _check_filter(flt: NumberFilter) -> None:
    if flt.available is True and flt.owner_type is not None:
        raise BadUserInput(
            "filter.available: true cannot be combined with filter.ownerType; "
            "available numbers have no owner. Remove one of them."
        )
    if flt.number_type is NumberType.EXTENSION and (
        flt.available is not None or flt.state is not None
    ):
        raise BadUserInput(
            "filter.numberType: EXTENSION cannot be combined with filter.available or "
            "filter.state; extension-only entries have neither."
        )
    if flt.assigned is not None and flt.number_type is NumberType.EXTENSION:
        raise BadUserInput(
            "filter.assigned cannot be combined with filter.numberType: EXTENSION; "
            "only numbers are assigned or unassigned. Remove one of them."
        )
    for other in ("available", "assigned"):
        if flt.reserved_number is not None and getattr(flt, other) is not None:
            raise BadUserInput(
                f"filter.reservedNumber cannot be combined with filter.{other}. Remove one of them."
            )
    if flt.owner_name is not None and len(flt.owner_name) > OWNER_NAME_MAX_LENGTH:
        raise BadUserInput(
            f"filter.ownerName is {len(flt.owner_name)} characters long; "
            f"the most is {OWNER_NAME_MAX_LENGTH}."
        )
    for attribute, parameter in FILTER_PARAMETERS:
        value = getattr(flt, attribute)
        if isinstance(value, str):
            _check_text(f"filter.{parameter}", value)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, Enum) and v.value == "UNKNOWN" for v in values):
            raise BadUserInput(
                f"filter.{parameter}: UNKNOWN only describes upstream values this gateway "
                "does not know; it cannot be used to filter."
            )
    if flt.included_telephony_types is not None and not flt.included_telephony_types:
        raise BadUserInput(
            "filter.includedTelephonyTypes must not be empty; omit it to include both "
            "PSTN_NUMBER and MOBILE_NUMBER."
        )


def _filter_params(flt: NumberFilter) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for attribute, parameter in FILTER_PARAMETERS:
        value = getattr(flt, attribute)
        if value is None:
            continue
        if isinstance(value, list):
            kinds = frozenset(value)
            if kinds == _ALL_TELEPHONY_TYPES:
                continue  # both is the upstream's default; sending nothing is the same query
            params.extend((parameter, _wire(kind)) for kind in sorted(kinds, key=_wire))
            continue
        params.append((parameter, _wire(value)))
    return params


def _keyed(flt: NumberFilter | None, key: EntityKey) -> NumberFilter:
    """The filter with the entity's key set; a different value in the filter is a mistake."""
    flt = flt or NumberFilter()
    given = getattr(flt, key.attribute)
    if given is not None and given != key.value:
        parameter = _PARAMETER_OF[key.attribute]
        raise BadUserInput(
            f"filter.{parameter} is already set by this {key.entity}'s id; a different value "
            f"would match nothing. Remove filter.{parameter}."
        )
    keyed = dataclasses.replace(flt)
    setattr(keyed, key.attribute, key.value)
    return keyed


@dataclass(frozen=True, slots=True)
class _FanOutField:
    """A list field of the filter and the single-valued field it fans out."""

    attribute: str  # the list's attribute: ``location_ids``
    single: str  # the single-valued attribute: ``location_id``
    name: str  # the list as the caller writes it: ``filter.locationIds``
    single_name: str  # ``filter.locationId``


_FAN_OUT_FIELDS = (
    _FanOutField("location_ids", "location_id", "filter.locationIds", "filter.locationId"),
    _FanOutField("owner_types", "owner_type", "filter.ownerTypes", "filter.ownerType"),
)


def _fan_out_values(
    flt: NumberFilter, max_values: int
) -> tuple[NumberFilter, list[tuple[_FanOutField, list[str | OwnerType]]]]:
    """The filter without its lists (a list of one value moved to its single-valued field, so
    it is that query exactly), and each list of several values, checked as its single-valued
    field is and sorted: an empty list, a repeated value, both spellings, or more than
    ``max_values`` values (or combinations) are mistakes."""
    if flt.available is True and flt.owner_types is not None:
        raise BadUserInput(
            "filter.available: true cannot be combined with filter.ownerTypes; available "
            "numbers have no owner. Remove one of them."
        )
    single = dataclasses.replace(flt, location_ids=None, owner_types=None)
    fanned: list[tuple[_FanOutField, list[str | OwnerType]]] = []
    for field in _FAN_OUT_FIELDS:
        values: list[str | OwnerType] | None = getattr(flt, field.attribute)
        if values is None:
            continue
        if getattr(flt, field.single) is not None:
            raise BadUserInput(
                f"{field.name} cannot be combined with {field.single_name}: give one value as "
                f"{field.single_name} or several as {field.name}."
            )
        if not values:
            raise BadUserInput(f"{field.name} must not be empty; omit it, or give one value.")
        if len(values) > max_values:
            raise BadUserInput(
                f"{field.name} has {len(values)} values; at most {max_values} are accepted "
                "(GATEWAY_MAX_FILTER_VALUES): each value is one upstream query per page."
            )
        first_seen: dict[str | OwnerType, int] = {}
        for index, value in enumerate(values):
            if isinstance(value, str) and not isinstance(value, Enum):
                _check_text(field.name, value)
            elif value.value == "UNKNOWN":
                raise BadUserInput(
                    f"{field.name}: UNKNOWN only describes upstream values this gateway does "
                    "not know; it cannot be used to filter."
                )
            if value in first_seen:
                raise BadUserInput(
                    f"{field.name}[{index}] repeats {field.name}[{first_seen[value]}]; give "
                    "each value once."
                )
            first_seen[value] = index
        if len(values) == 1:
            setattr(single, field.single, values[0])
        else:
            fanned.append((field, sorted(values, key=_wire)))
    combinations = math.prod(len(values) for _, values in fanned)
    if len(fanned) > 1 and combinations > max_values:
        raise BadUserInput(
            f"filter.locationIds and filter.ownerTypes together ask for {combinations} "
            f"combinations, one upstream query each per page; at most {max_values} are "
            "accepted (GATEWAY_MAX_FILTER_VALUES)."
        )
    return single, fanned


def _single_query(
    org_id: str | None, flt: NumberFilter | None, order: NumberOrder | None
) -> NumbersQuery:
    params: list[tuple[str, str]] = []
    if flt is not None:
        _check_filter(flt)
        params.extend(_filter_params(flt))
    if order is not None:
        suffix = "desc" if order.direction is SortDirection.DESC else "asc"
        params.append(("order", f"{_SORT_KEYS[order.by]}-{suffix}"))
    return NumbersQuery(org_id=org_id, params=tuple(params))


def list_query(
    org_id: str | None,
    flt: NumberFilter | None,
    order: NumberOrder | None,
    *,
    entity_key: EntityKey | None = None,
    max_filter_values: int = DEFAULT_MAX_FILTER_VALUES,
) -> NumbersQuery | FanOutQuery:
    """Validate and normalise; raises ``BadUserInput`` before any upstream call.

    A filter with several values in ``locationIds`` or ``ownerTypes`` is a ``FanOutQuery``:
    one query per value (per combination, with both), each what the single-valued filter
    makes and checked as it is; a list of one value is the single-valued query itself (the
    same cursors and cache entries). A query with an entity's key equals the root field's
    query with the same filter, so an entity field and a root field asking the same thing
    share one upstream call and one page cache entry. ``Location.phoneNumbers`` sets
    ``locationId``: a ``locationIds`` there is accepted only as that one location.
    """
    if org_id is not None:
        _check_text("orgId", org_id)
    if entity_key is not None:
        _check_text(f"{entity_key.entity}.id", entity_key.value)
    fanned: list[tuple[_FanOutField, list[str | OwnerType]]] = []
    if flt is not None:
        flt, fanned = _fan_out_values(flt, max_filter_values)
    if entity_key is not None:
        for field, _ in fanned:
            if field.single == entity_key.attribute:
                raise BadUserInput(
                    f"{field.name} names other values than this {entity_key.entity}'s own id, "
                    f"which {field.single_name} already is here; ask the root phoneNumbers "
                    f"with {field.name} instead."
                )
        flt = _keyed(flt, entity_key)
    if not fanned:
        return _single_query(org_id, flt, order)
    parts = _combinations(flt or NumberFilter(), fanned)
    return FanOutQuery(tuple(_single_query(org_id, part, order) for part in parts))


def _combinations(
    base: NumberFilter, fanned: list[tuple[_FanOutField, list[str | OwnerType]]]
) -> list[NumberFilter]:
    """The single-valued filter of each combination of the lists' values, in the order of
    ``FanOutQuery.parts`` (the first list's values outermost, each list sorted)."""
    parts: list[NumberFilter] = []
    for combination in itertools.product(*(values for _, values in fanned)):
        part = dataclasses.replace(base)
        for (field, _), value in zip(fanned, combination, strict=True):
            setattr(part, field.single, value)
        parts.append(part)
    return parts


def part_filters(
    flt: NumberFilter | None, *, max_filter_values: int = DEFAULT_MAX_FILTER_VALUES
) -> list[NumberFilter | None]:
    """The single-valued filters a filter fans out to, in the order of its ``FanOutQuery``'s
    parts (one, the filter itself with any list of one value moved to its single-valued
    field, when it does not fan out): what walks each value's list on its own (a change
    feed's poll). Checked as ``list_query`` checks them (``BadUserInput``)."""
    if flt is None:
        return [None]
    single, fanned = _fan_out_values(flt, max_filter_values)
    if not fanned:
        return [single]
    return list(_combinations(single, fanned))


def numbers_query(
    org_id: str | None,
    flt: NumberFilter | None,
    order: NumberOrder | None,
    *,
    entity_key: EntityKey | None = None,
) -> NumbersQuery:
    """``list_query`` where only one query can serve (a list of one value is that query);
    several values of a fanned-out field are refused here (``BadUserInput``)."""
    query = list_query(org_id, flt, order, entity_key=entity_key)
    if isinstance(query, FanOutQuery):
        raise BadUserInput(
            "filter.locationIds and filter.ownerTypes take one value here; give it as "
            "filter.locationId or filter.ownerType."
        )
    return query


def cursor_at(fingerprint: str, position: int) -> str:
    """The opaque cursor of ``position`` in the query with this fingerprint."""
    raw = f"{_CURSOR_PREFIX}:{fingerprint}:{position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_fields(cursor: str, name: str) -> tuple[str, list[str]]:
    """A cursor's kind (its prefix, one of ``CURSOR_PREFIXES``) and the rest of its fields;
    rejects what this gateway did not issue."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        prefix, *fields = (
            base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split(":")
        )
    except (ValueError, UnicodeError, binascii.Error):
        raise not_our_cursor(name) from None
    if prefix not in CURSOR_PREFIXES:
        raise not_our_cursor(name)
    return prefix, fields


def decode_cursor(query: NumbersQuery, cursor: str, name: str = "page.after") -> int:
    """The position a cursor points at; rejects malformed cursors and other queries' cursors.
    ``name`` is the argument as the caller wrote it, for the message."""
    prefix, fields = cursor_fields(cursor, name)
    if prefix != _CURSOR_PREFIX:
        raise another_querys_cursor(name)
    if len(fields) != 2 or not is_position(fields[1]):
        raise not_our_cursor(name)
    if fields[0] != query.fingerprint:
        raise another_querys_cursor(name)
    return int(fields[1])


def is_position(text: str) -> bool:
    """Whether ``text`` is a list position as cursors write one: ASCII digits, not too many
    to be one (a cursor is bounded by ``check_url_text`` anyway)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def not_our_cursor(name: str) -> BadUserInput:
    return BadUserInput(_NOT_OUR_CURSOR.format(name=name))


def another_querys_cursor(name: str) -> BadUserInput:
    """The refusal of a cursor this gateway issued for another query (of either kind)."""
    return BadUserInput(
        f"{name} was issued for a different orgId, filter or order; a cursor only "
        f"continues the query that produced it. Start again without {name}."
    )


def page_ceiling(*, max_page_size: int, max_stream_items: int | None, streamed: bool) -> int:
    """The largest ``first`` (or ``last``) a list may ask for: ``GATEWAY_MAX_PAGE_SIZE``, or
    for a streamed list (its items sent as the upstream pages arrive, never held whole)
    ``GATEWAY_MAX_STREAM_ITEMS``. The cost estimate reads ``first`` against the same one."""
    if streamed and max_stream_items is not None:
        return max(max_page_size, max_stream_items)
    return max_page_size


def page_request(
    page: PageRequest | None,
    *,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
) -> PageRequest | None:
    """A field's paging from its ``page`` input or its Relay arguments (null is absent, as
    Relay sends the other direction's arguments when it pages); both at once is a mistake."""
    relay = {"first": first, "after": after, "last": last, "before": before}
    given = [name for name in _RELAY_ARGUMENTS if relay[name] is not None]
    if not given:
        return page
    if page is not None:
        raise BadUserInput(
            f"page cannot be combined with {', '.join(given)}: use Relay's first/after/last/"
            "before arguments or the page input, not both."
        )
    return PageRequest(first=first, after=after, last=last, before=before, relay=True)


@dataclass(frozen=True, slots=True)
class Paging:
    """A field's paging, checked (sizes within the ceiling, no refused mix) but not yet
    placed in a list: the cursors are still text, for the query's own kind to read."""

    first: int | None
    last: int | None
    offset: int | None
    after: str | None
    before: str | None
    default_size: int  # the page's size when neither ``first`` nor ``last`` says
    prefix: str  # "page." when spelled with the ``page`` input, "" with Relay's arguments

    @property
    def after_name(self) -> str:
        return f"{self.prefix}after"


def checked_paging(
    page: PageRequest | None,
    max_page_size: int,
    *,
    streamed: bool = False,
    max_stream_items: int | None = None,
    held_stream: bool = False,
) -> Paging:
    """The paging's own rules, before any cursor is read: ``first`` and ``last`` not both,
    each within ``page_ceiling``, ``after`` not with ``offset``, ``offset`` not negative."""
    page = page or PageRequest()
    ceiling = page_ceiling(
        max_page_size=max_page_size, max_stream_items=max_stream_items, streamed=streamed
    )
    prefix = "" if page.relay else "page."
    if page.first is not None and page.last is not None:
        raise BadUserInput(
            "first and last cannot be combined: page forward with first/after or backward "
            "with last/before."
        )
    for name, count in (("first", page.first), ("last", page.last)):
        if count is not None:
            _check_size(f"{prefix}{name}", count, ceiling, max_stream_items, streamed, held_stream)
    if page.after is not None and page.offset is not None:
        raise BadUserInput("page.after and page.offset cannot be combined; use one of them.")
    if page.offset is not None and page.offset < 0:
        raise BadUserInput(f"page.offset must be zero or more, got {page.offset}.")
    for name, cursor in ((f"{prefix}after", page.after), ("before", page.before)):
        if cursor is not None:
            check_url_text(name, cursor)
    return Paging(
        first=page.first,
        last=page.last,
        offset=page.offset,
        after=page.after,
        before=page.before,
        default_size=min(DEFAULT_PAGE_SIZE, max_page_size),
        prefix=prefix,
    )


def page_window(
    query: NumbersQuery,
    page: PageRequest | None,
    max_page_size: int,
    *,
    streamed: bool = False,
    max_stream_items: int | None = None,
    held_stream: bool = False,
) -> PageWindow | TailWindow:
    """Validate the paging and turn it into a window of the list: entries from a position
    (``offset``, or the one after ``after``'s cursor) on, forward; the ``last`` entries before
    ``before``'s cursor (and after ``after``'s), backward, which is as exact as forward, an
    offset window from the cursor's position; or, for ``last`` without ``before``, a
    ``TailWindow``. ``streamed``: the list is delivered with ``@stream``, so ``first`` or
    ``last`` may reach ``max_stream_items`` (see ``page_ceiling``). ``held_stream``: it
    carries ``@stream`` but is answered in one JSON body (held whole), so the unstreamed
    ceiling applies."""
    paging = checked_paging(
        page,
        max_page_size,
        streamed=streamed,
        max_stream_items=max_stream_items,
        held_stream=held_stream,
    )
    if paging.offset is not None:
        return PageWindow(paging.offset, paging.first or paging.default_size)
    after, before = paging.after, paging.before
    lower = 0 if after is None else decode_cursor(query, after, paging.after_name) + 1
    upper = None if before is None else decode_cursor(query, before, "before")
    return position_window(paging, lower, upper)


def position_window(paging: Paging, lower: int, upper: int | None) -> PageWindow | TailWindow:
    """The window of ``paging`` between list positions ``lower`` (the first entry it may
    hold) and ``upper`` (the first it may not; None: the list's end)."""
    if upper is None and paging.last is None:
        return PageWindow(start=lower, size=paging.first or paging.default_size)
    if upper is None:
        assert paging.last is not None
        return TailWindow(lower=lower, size=paging.last)
    if paging.first is not None:  # forward, but not past ``before``
        return PageWindow(start=lower, size=max(0, min(paging.first, upper - lower)))
    start = max(lower, upper - (paging.last or paging.default_size))
    return PageWindow(start=start, size=max(0, upper - start))


def _check_size(
    name: str,
    size: int,
    ceiling: int,
    max_stream_items: int | None,
    streamed: bool,
    held_stream: bool,
) -> None:
    if 1 <= size <= ceiling:
        return
    hint = ""
    if not streamed and max_stream_items is not None and 1 <= size <= max_stream_items:
        hint = f" A list under @stream may ask for up to {max_stream_items}."
        if held_stream:
            hint = (
                f" A list under @stream may ask for up to {max_stream_items} only when "
                "the response streams: accept multipart/mixed or text/event-stream."
            )
    raise BadUserInput(f"{name} must be between 1 and {ceiling}, got {size}.{hint}")

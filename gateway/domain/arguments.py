"""GraphQL arguments to upstream queries: validation, normalisation, page windows, cursors.

``numbers_query`` validates a filter and order and normalises them into a ``NumbersQuery``;
``page_request`` takes a field's paging in either spelling (the ``page`` input, or Relay's
``first``/``after``/``last``/``before`` arguments, never both); ``page_window`` turns it into
an offset window of the list, from the cursors' positions (a streamed list may ask for more:
``page_ceiling``), or, for ``last`` without ``before``, a ``TailWindow`` placed once the total
is known; ``check_url_text`` is the one rule for every string that becomes part of an upstream
URL (ids, filter strings, orgId, cursors). Every rule here runs before any upstream call and
fails with ``BadUserInput``.

A cursor names one position of one query's list (``cursor_at``/``decode_cursor``): versioned
by its prefix, so a cursor of another shape (a position per value of a fanned-out filter) can
be told apart from this one.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from enum import Enum

from gateway.domain.enums import NumberType, PhoneNumberSortField, SortDirection, TelephonyType
from gateway.domain.query import EntityKey, NumbersQuery, PageWindow, TailWindow
from gateway.domain.records import NumberFilter, NumberOrder, PageRequest
from gateway.errors import BadUserInput

DEFAULT_PAGE_SIZE = 100
OWNER_NAME_MAX_LENGTH = 255
# UTF-8 bytes of one string sent in an upstream URL. Webex ids are about 100 characters and
# ownerName at most 255 (of at most 4 bytes); percent-encoded, the longest query stays far
# below what URL parsers (httpx: 64 KiB a component) and servers accept.
URL_TEXT_MAX_BYTES = 1024
_CURSOR_PREFIX = "pn1"

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


def numbers_query(
    org_id: str | None,
    flt: NumberFilter | None,
    order: NumberOrder | None,
    *,
    entity_key: EntityKey | None = None,
) -> NumbersQuery:
    """Validate and normalise; raises ``BadUserInput`` before any upstream call.

    A query with an entity's key equals the root field's query with the same filter, so an
    entity field and a root field asking the same thing share one upstream call and one page
    cache entry.
    """
    if org_id is not None:
        _check_text("orgId", org_id)
    if entity_key is not None:
        _check_text(f"{entity_key.entity}.id", entity_key.value)
        flt = _keyed(flt, entity_key)
    params: list[tuple[str, str]] = []
    if flt is not None:
        _check_filter(flt)
        params.extend(_filter_params(flt))
    if order is not None:
        suffix = "desc" if order.direction is SortDirection.DESC else "asc"
        params.append(("order", f"{_SORT_KEYS[order.by]}-{suffix}"))
    return NumbersQuery(org_id=org_id, params=tuple(params))


def cursor_at(fingerprint: str, position: int) -> str:
    """The opaque cursor of ``position`` in the query with this fingerprint."""
    raw = f"{_CURSOR_PREFIX}:{fingerprint}:{position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(query: NumbersQuery, cursor: str, name: str = "page.after") -> int:
    """The position a cursor points at; rejects malformed cursors and other queries' cursors.
    ``name`` is the argument as the caller wrote it, for the message."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        prefix, fingerprint, position = (
            base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split(":")
        )
        index = int(position)
    except (ValueError, UnicodeError, binascii.Error):
        raise BadUserInput(_NOT_OUR_CURSOR.format(name=name)) from None
    if prefix != _CURSOR_PREFIX or index < 0 or not position.isdigit():
        raise BadUserInput(_NOT_OUR_CURSOR.format(name=name))
    if fingerprint != query.fingerprint:
        raise BadUserInput(
            f"{name} was issued for a different orgId, filter or order; a cursor only "
            f"continues the query that produced it. Start again without {name}."
        )
    return index


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
    page = page or PageRequest()
    ceiling = page_ceiling(
        max_page_size=max_page_size, max_stream_items=max_stream_items, streamed=streamed
    )
    prefix = "" if page.relay else "page."
    default = min(DEFAULT_PAGE_SIZE, max_page_size)
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
    if page.offset is not None:
        if page.offset < 0:
            raise BadUserInput(f"page.offset must be zero or more, got {page.offset}.")
        return PageWindow(start=page.offset, size=default if page.first is None else page.first)
    lower = 0 if page.after is None else _position(query, page.after, f"{prefix}after") + 1
    upper = None if page.before is None else _position(query, page.before, "before")
    if upper is None and page.last is None:
        return PageWindow(start=lower, size=default if page.first is None else page.first)
    if upper is None:
        assert page.last is not None
        return TailWindow(lower=lower, size=page.last)
    if page.first is not None:  # forward, but not past ``before``
        return PageWindow(start=lower, size=max(0, min(page.first, upper - lower)))
    start = max(lower, upper - (default if page.last is None else page.last))
    return PageWindow(start=start, size=max(0, upper - start))


def _position(query: NumbersQuery, cursor: str, name: str) -> int:
    check_url_text(name, cursor)
    return decode_cursor(query, cursor, name)


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

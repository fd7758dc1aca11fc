"""GraphQL arguments to upstream queries, and upstream JSON to GraphQL values. Pure: no I/O.

Inbound, ``numbers_query`` validates a filter and order and normalises them into a hashable
``NumbersQuery`` (the unit of batching, caching and cursor binding); ``page_window`` turns
``first``/``after``/``offset`` into a start position and size. Outbound, the tolerant reader
turns whatever the upstream sent into schema values: unknown enum values become ``UNKNOWN``,
unknown keys are ignored, missing keys are null, ``""`` phone numbers are null.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import strawberry

from gateway.errors import BadUserInput, UpstreamUnavailable
from gateway.graphql_types import (
    Location,
    NumberCounts,
    NumberOwner,
    NumberState,
    NumberType,
    OwnerType,
    PageInfo,
    PageInput,
    PhoneNumber,
    PhoneNumberEdge,
    PhoneNumberFilter,
    PhoneNumberOrder,
    PhoneNumberSortField,
    PhoneNumberType,
    SortDirection,
    TelephonyType,
)

DEFAULT_PAGE_SIZE = 100
OWNER_NAME_MAX_LENGTH = 255
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
)
_SORT_KEYS = {
    PhoneNumberSortField.LAST_NAME: "lastName",
    PhoneNumberSortField.DN: "dn",
    PhoneNumberSortField.EXTENSION: "extension",
}
_ALL_TELEPHONY_TYPES = frozenset({TelephonyType.PSTN_NUMBER, TelephonyType.MOBILE_NUMBER})


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
class PageWindow:
    start: int
    size: int


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
    """What the upstream answered for one ``Fetch``, its page walk already completed."""

    items: list[dict[str, Any]]
    count: dict[str, Any] | None
    has_more: bool


# --- inbound -----------------------------------------------------------------------------


def _wire(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _check_filter(flt: PhoneNumberFilter) -> None:
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
    if flt.reserved_number is not None and flt.available is not None:
        raise BadUserInput(
            "filter.reservedNumber cannot be combined with filter.available. Remove one of them."
        )
    if flt.owner_name is not None and len(flt.owner_name) > OWNER_NAME_MAX_LENGTH:
        raise BadUserInput(
            f"filter.ownerName is {len(flt.owner_name)} characters long; "
            f"the most is {OWNER_NAME_MAX_LENGTH}."
        )
    for attribute, parameter in FILTER_PARAMETERS:
        value = getattr(flt, attribute)
        if isinstance(value, str) and not value.strip():
            raise BadUserInput(f"filter.{parameter} must not be empty; omit it instead.")
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


def _filter_params(flt: PhoneNumberFilter) -> list[tuple[str, str]]:
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


def numbers_query(
    org_id: str | None, flt: PhoneNumberFilter | None, order: PhoneNumberOrder | None
) -> NumbersQuery:
    """Validate and normalise; raises ``BadUserInput`` before any upstream call."""
    if org_id is not None and not org_id.strip():
        raise BadUserInput("orgId must not be empty; omit it to use your own organization.")
    params: list[tuple[str, str]] = []
    if flt is not None:
        _check_filter(flt)
        params.extend(_filter_params(flt))
    if order is not None:
        suffix = "desc" if order.direction is SortDirection.DESC else "asc"
        params.append(("order", f"{_SORT_KEYS[order.by]}-{suffix}"))
    return NumbersQuery(org_id=org_id, params=tuple(params))


def encode_cursor(query: NumbersQuery, position: int) -> str:
    return _cursor(query.fingerprint, position)


def _cursor(fingerprint: str, position: int) -> str:
    raw = f"{_CURSOR_PREFIX}:{fingerprint}:{position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(query: NumbersQuery, cursor: str) -> int:
    """The position a cursor points at; rejects malformed cursors and other queries' cursors."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        prefix, fingerprint, position = (
            base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split(":")
        )
        index = int(position)
    except (ValueError, UnicodeError, binascii.Error):
        raise BadUserInput(
            "page.after is not a cursor this gateway issued; use pageInfo.endCursor or an "
            "edge's cursor from a previous page."
        ) from None
    if prefix != _CURSOR_PREFIX or index < 0 or not position.isdigit():
        raise BadUserInput(
            "page.after is not a cursor this gateway issued; use pageInfo.endCursor or an "
            "edge's cursor from a previous page."
        )
    if fingerprint != query.fingerprint:
        raise BadUserInput(
            "page.after was issued for a different orgId, filter or order; a cursor only "
            "continues the query that produced it. Start again without page.after."
        )
    return index


def page_window(query: NumbersQuery, page: PageInput | None, max_page_size: int) -> PageWindow:
    """Validate ``first``/``after``/``offset`` and turn them into a start and a size."""
    page = page or PageInput()
    size = min(DEFAULT_PAGE_SIZE, max_page_size) if page.first is None else page.first
    if not 1 <= size <= max_page_size:
        raise BadUserInput(f"page.first must be between 1 and {max_page_size}, got {size}.")
    if page.after is not None and page.offset is not None:
        raise BadUserInput("page.after and page.offset cannot be combined; use one of them.")
    if page.offset is not None:
        if page.offset < 0:
            raise BadUserInput(f"page.offset must be zero or more, got {page.offset}.")
        return PageWindow(start=page.offset, size=size)
    if page.after is not None:
        return PageWindow(start=decode_cursor(query, page.after) + 1, size=size)
    return PageWindow(start=0, size=size)


# --- outbound: the tolerant reader ---------------------------------------------------------


def read_numbers_body(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Items and the optional ``count`` of one upstream page body.

    A missing or null ``phoneNumbers`` is an empty page; entries that are not objects are
    dropped; a body that is not an object at all is the upstream's fault.
    """
    if not isinstance(body, dict):
        raise UpstreamUnavailable(
            f"The upstream answered with a JSON {type(body).__name__}, not an object.",
            upstream_status=200,
        )
    items = body.get("phoneNumbers")
    if not isinstance(items, list):
        items = []
    count = body.get("count")
    return [item for item in items if isinstance(item, dict)], (
        count if isinstance(count, dict) else None
    )


_E = TypeVar("_E", bound=Enum)


def _enum_or_unknown(enum: type[_E], value: object) -> _E | None:
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        return enum("UNKNOWN")


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _owner(value: object) -> NumberOwner | None:
    if not isinstance(value, dict) or _text(value.get("id")) is None:
        return None
    return NumberOwner(
        id=strawberry.ID(str(value["id"])),
        type=_enum_or_unknown(OwnerType, value.get("type")) or OwnerType.UNKNOWN,
        first_name=_text(value.get("firstName")),
        last_name=_text(value.get("lastName")),
    )


def _location(value: object) -> Location:
    if not isinstance(value, dict):
        value = {}
    # The upstream always sends a location; if it ever does not, an empty id says so
    # without failing the whole page.
    return Location(id=strawberry.ID(_text(value.get("id")) or ""), name=_text(value.get("name")))


def to_phone_number(item: Mapping[str, Any]) -> PhoneNumber:
    return PhoneNumber(
        phone_number=_text(item.get("phoneNumber")),
        extension=_text(item.get("extension")),
        routing_prefix=_text(item.get("routingPrefix")),
        esn=_text(item.get("esn")),
        state=_enum_or_unknown(NumberState, item.get("state")),
        phone_number_type=_enum_or_unknown(PhoneNumberType, item.get("phoneNumberType")),
        main_number=_flag(item.get("mainNumber")) or False,
        included_telephony_types=_enum_or_unknown(
            TelephonyType, item.get("includedTelephonyTypes")
        ),
        mobile_network=_text(item.get("mobileNetwork")),
        routing_profile=_text(item.get("routingProfile")),
        toll_free_number=_flag(item.get("tollFreeNumber")) or False,
        is_service_number=_flag(item.get("isServiceNumber")) or False,
        is_reserved_number=_flag(item.get("isReservedNumber")),
        location=_location(item.get("location")),
        owner=_owner(item.get("owner")),
    )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def to_number_counts(count: Mapping[str, Any] | None) -> NumberCounts:
    count = count or {}
    return NumberCounts(
        assigned=_count(count.get("assigned")),
        un_assigned=_count(count.get("unAssigned")),
        in_active=_count(count.get("inActive")),
        extension_only=_count(count.get("extensionOnly")),
        toll_free_numbers=_count(count.get("tollFreeNumbers")),
        total=_count(count.get("total")),
        mobile_number=_count(count.get("mobileNumber")),
        service_number=_count(count.get("serviceNumber")),
        reserved_number=_count(count.get("reservedNumber")),
        available=_count(count.get("available")),
    )


class PageResult:
    """One page as the connection type reads it; nodes and cursors are built on demand."""

    __slots__ = ("_fingerprint", "_nodes", "page", "total", "window")

    def __init__(self, query: NumbersQuery, window: PageWindow, page: UpstreamPage) -> None:
        self.window = window
        self.page = page
        self.total = _count((page.count or {}).get("total"))
        # Hashed once per page, not once per cursor: a page may carry 2,000 of them.
        self._fingerprint = query.fingerprint
        self._nodes: list[PhoneNumber] | None = None

    def nodes(self) -> list[PhoneNumber]:
        if self._nodes is None:
            self._nodes = [to_phone_number(item) for item in self.page.items]
        return self._nodes

    def edges(self) -> list[PhoneNumberEdge]:
        start = self.window.start
        return [
            PhoneNumberEdge(cursor=_cursor(self._fingerprint, start + offset), node=node)
            for offset, node in enumerate(self.nodes())
        ]

    def page_info(self) -> PageInfo:
        count = len(self.page.items)
        start = self.window.start
        total = self.total
        has_next = start + count < total if total is not None else self.page.has_more
        return PageInfo(
            has_next_page=has_next,
            has_previous_page=start > 0,
            start_cursor=_cursor(self._fingerprint, start) if count else None,
            end_cursor=_cursor(self._fingerprint, start + count - 1) if count else None,
        )

    def total_count(self) -> int:
        if self.total is not None:
            return self.total
        if not self.page.has_more:
            # The walk reached the end, so the total is known without the upstream's count.
            return self.window.start + len(self.page.items)
        raise UpstreamUnavailable(
            "The upstream did not report count.total for this query.", upstream_status=200
        )

"""The schema's input types and argument annotations, and how they become the domain's asks.

Strawberry coerces a request's arguments into these input objects; ``to_filter``, ``to_order``
and ``to_page`` turn them into ``domain.records`` (their enum members into the domain's), the
only form the layers below the schema read. Every ``phoneNumbers`` field takes the same
arguments through the annotations here: ``page`` (the contract's input) and, beside it,
Relay's connection arguments (``first``/``after``/``last``/``before``), so that Apollo
Client's ``relayStylePagination()`` and Relay's ``@connection`` page it unchanged.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, TypeVar

import strawberry

from gateway.domain import enums as domain_enums
from gateway.domain import records
from gateway.domain.arguments import page_request
from gateway.schema.cost_directives import tail_probe_directives
from gateway.schema.enums import (
    NumberState,
    NumberType,
    OwnerType,
    PhoneNumberSortField,
    PhoneNumberType,
    SortDirection,
    TelephonyType,
)

E = TypeVar("E", bound=Enum)


@strawberry.input(
    description="Narrows the list. Every field is optional; unset fields do not filter. "
    "Each maps to the upstream query parameter of the same name."
)
class PhoneNumberFilter:
    location_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only numbers of this location."
    )
    location_ids: list[strawberry.ID] | None = strawberry.field(
        default=None,
        description="Only numbers of these locations: one upstream query per location, "
        "merged into one exact list in the order of one query over them all (counts summed). "
        "At most the gateway's GATEWAY_MAX_FILTER_VALUES (50 unless configured); not empty, "
        "no value twice; cannot be combined with `locationId`.",
    )
    owner_types: list[OwnerType] | None = strawberry.field(
        default=None,
        description="Only numbers whose owner is of one of these types: one upstream query "
        "per type, merged as `locationIds` are. At most GATEWAY_MAX_FILTER_VALUES (with "
        "`locationIds` too: that many combinations); not empty, no value twice; cannot be "
        "combined with `ownerType`, nor with `available: true`.",
    )
    phone_number: str | None = strawberry.field(
        default=None, description="Search for this phone number."
    )
    available: bool | None = strawberry.field(
        default=None,
        description="Only available (unassigned) numbers. `true` cannot be combined with "
        "`ownerType`; cannot be combined with `reservedNumber` or `numberType: EXTENSION`.",
    )
    owner_name: str | None = strawberry.field(
        default=None, description="Only numbers whose owner has this name (at most 255 characters)."
    )
    owner_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="Only entries assigned to the person, workspace or feature with this id "
        "(UUID or broadsoftId).",
    )
    owner_type: OwnerType | None = strawberry.field(
        default=None, description="Only numbers whose owner is of this type."
    )
    extension: str | None = strawberry.field(
        default=None, description="Only entries with exactly this extension."
    )
    number_type: NumberType | None = strawberry.field(
        default=None, description="Only numbers, or only extension-only entries."
    )
    phone_number_type: PhoneNumberType | None = strawberry.field(
        default=None,
        description="Only numbers of this type; excludes extension-only entries.",
    )
    state: NumberState | None = strawberry.field(
        default=None,
        description="Only numbers in this state; excludes extension-only entries. "
        "Cannot be combined with `numberType: EXTENSION`.",
    )
    toll_free_numbers: bool | None = strawberry.field(
        default=None, description="Only toll-free numbers."
    )
    restricted_non_geo_numbers: bool | None = strawberry.field(
        default=None, description="Only restricted non-geographical numbers."
    )
    included_telephony_types: list[TelephonyType] | None = strawberry.field(
        default=None,
        description="Only numbers of these telephony types; unset means both PSTN and mobile. "
        "Must not be empty.",
    )
    service_number: bool | None = strawberry.field(
        default=None, description="Only service (high-concurrency) numbers."
    )
    reserved_number: bool | None = strawberry.field(
        default=None,
        description="`true`: only reserved numbers; `false`: only non-reserved numbers. "
        "Cannot be combined with `available` or `assigned`.",
    )
    assigned: bool | None = strawberry.field(
        default=None,
        description="`true`: only numbers assigned to an owner; `false`: only numbers without "
        "one. Cannot be combined with `numberType: EXTENSION` or `reservedNumber`.",
    )
    elin_enabled: bool | None = strawberry.field(
        default=None,
        description="`true`: only numbers used as an Emergency Location Identification Number "
        "(ELIN, the callback number of an emergency call); `false`: only numbers that are not.",
    )


@strawberry.input(description="The order of the list; without it, by number then extension.")
class PhoneNumberOrder:
    by: PhoneNumberSortField = strawberry.field(description="What to sort by.")
    direction: SortDirection = strawberry.field(
        default=SortDirection.ASC, description="Ascending (default) or descending."
    )


@strawberry.input(
    description="Which slice of the list to return. Use `after` (cursor paging) or `offset`, "
    "not both."
)
class PageInput:
    first: int | None = strawberry.field(
        default=None,
        description="How many entries to return: 1 up to the gateway's maximum page size "
        "(2000 unless configured); default 100.",
    )
    after: str | None = strawberry.field(
        default=None,
        description="Return entries after this opaque cursor (from `pageInfo.endCursor` or an "
        "edge). A cursor is only valid with the same org, filter and order.",
    )
    offset: int | None = strawberry.field(
        default=None,
        description="Zero-based position to start at. Cannot be combined with `after`.",
    )


FilterArgument = Annotated[
    PhoneNumberFilter | None,
    strawberry.argument(description="Narrows the list; unset fields do not filter."),
]
OrderArgument = Annotated[
    PhoneNumberOrder | None,
    strawberry.argument(description="Sort order; default: by number, then extension."),
]
PageArgument = Annotated[
    PageInput | None,
    strawberry.argument(
        description="Which slice: `first` with `after` or `offset`. Cannot be combined with "
        "the Relay arguments `first`, `after`, `last` and `before`."
    ),
]
FirstArgument = Annotated[
    int | None,
    strawberry.argument(
        description="Relay: return the first this many entries (after `after`, if given): 1 "
        "up to the gateway's maximum page size (2000 unless configured); default 100. "
        "Cannot be combined with `last` or `page`."
    ),
]
AfterArgument = Annotated[
    str | None,
    strawberry.argument(
        description="Relay: return entries after this opaque cursor (`pageInfo.endCursor` or "
        "an edge's cursor). A cursor is only valid with the same org, filter and order. "
        "Cannot be combined with `page`."
    ),
]
LastArgument = Annotated[
    int | None,
    strawberry.argument(
        description="Relay: return the last this many entries (before `before`, if given; "
        "else the last of the whole list): 1 up to the gateway's maximum page size. Cannot "
        "be combined with `first` or `page`.",
        directives=tail_probe_directives(),
    ),
]
BeforeArgument = Annotated[
    str | None,
    strawberry.argument(
        description="Relay: return entries before this opaque cursor (`pageInfo.startCursor` "
        "or an edge's cursor): the `last` entries before it (100 when `last` is not given), "
        "or with `first`, the first entries up to it. Cannot be combined with `page`."
    ),
]


def _required(member: Enum, domain: type[E]) -> E:
    """The domain's member for a GraphQL enum's (whose value it is: ``schema.enums``)."""
    return domain(member.value)


def _member(member: Enum | None, domain: type[E]) -> E | None:
    return None if member is None else _required(member, domain)


def to_filter(flt: PhoneNumberFilter | None) -> records.NumberFilter | None:
    """The filter as the domain reads it (enum members the domain's own)."""
    if flt is None:
        return None
    return records.NumberFilter(
        location_id=flt.location_id,
        location_ids=None if flt.location_ids is None else list(flt.location_ids),
        owner_types=(
            None
            if flt.owner_types is None
            else [_required(kind, domain_enums.OwnerType) for kind in flt.owner_types]
        ),
        phone_number=flt.phone_number,
        available=flt.available,
        owner_name=flt.owner_name,
        owner_id=flt.owner_id,
        owner_type=_member(flt.owner_type, domain_enums.OwnerType),
        extension=flt.extension,
        number_type=_member(flt.number_type, domain_enums.NumberType),
        phone_number_type=_member(flt.phone_number_type, domain_enums.PhoneNumberType),
        state=_member(flt.state, domain_enums.NumberState),
        toll_free_numbers=flt.toll_free_numbers,
        restricted_non_geo_numbers=flt.restricted_non_geo_numbers,
        included_telephony_types=(
            None
            if flt.included_telephony_types is None
            else [
                _required(kind, domain_enums.TelephonyType) for kind in flt.included_telephony_types
            ]
        ),
        service_number=flt.service_number,
        reserved_number=flt.reserved_number,
        assigned=flt.assigned,
        elin_enabled=flt.elin_enabled,
    )


def to_order(order: PhoneNumberOrder | None) -> records.NumberOrder | None:
    if order is None:
        return None
    return records.NumberOrder(
        _required(order.by, domain_enums.PhoneNumberSortField),
        _required(order.direction, domain_enums.SortDirection),
    )


def to_page(
    page: PageInput | None,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
) -> records.PageRequest | None:
    """The field's paging from ``page`` or Relay's arguments (``BadUserInput`` for both)."""
    asked = (
        None
        if page is None
        else records.PageRequest(first=page.first, after=page.after, offset=page.offset)
    )
    return page_request(asked, first=first, after=after, last=last, before=before)

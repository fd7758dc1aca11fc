"""The numbers domain's values: what a caller asks for (a filter, an order, a page) and what the
upstream's answers read as (phone numbers, their locations and owners, page info, counts,
changes).

Plain slotted dataclasses with the attribute names of the GraphQL fields they answer, so the
schema's object types (``schema.types``) resolve their fields straight from them and the
schema layer never copies an item. The schema's inputs turn into the ask records here
(``schema.inputs``); everything below the schema speaks only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.domain.enums import (
    NumberState,
    NumberType,
    OwnerType,
    PhoneNumberChangeKind,
    PhoneNumberSortField,
    PhoneNumberType,
    SortDirection,
    TelephonyType,
)


@dataclass(slots=True, kw_only=True)
class NumberFilter:
    """What narrows the list; each field is the upstream query parameter of the same name
    (``arguments.FILTER_PARAMETERS``), unset fields do not filter. ``location_ids`` and
    ``owner_types`` are the fan-out spellings of ``location_id`` and ``owner_type``: several
    values of a parameter the upstream takes one of, answered by one query per value and
    their lists merged (``domain.fan_out``)."""

    location_id: str | None = None
    location_ids: list[str] | None = None
    owner_types: list[OwnerType] | None = None
    phone_number: str | None = None
    available: bool | None = None
    owner_name: str | None = None
    owner_id: str | None = None
    owner_type: OwnerType | None = None
    extension: str | None = None
    number_type: NumberType | None = None
    phone_number_type: PhoneNumberType | None = None
    state: NumberState | None = None
    toll_free_numbers: bool | None = None
    restricted_non_geo_numbers: bool | None = None
    included_telephony_types: list[TelephonyType] | None = None
    service_number: bool | None = None
    reserved_number: bool | None = None
    assigned: bool | None = None
    elin_enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class NumberOrder:
    by: PhoneNumberSortField
    direction: SortDirection = SortDirection.ASC


@dataclass(frozen=True, slots=True, kw_only=True)
class PageRequest:
    """Which slice of the list, in one of two spellings (``arguments.page_request`` refuses a
    mix): the ``page`` input's ``first`` with ``after`` or ``offset``, or Relay's connection
    arguments on the field itself (``relay``), ``first``/``after`` forward and
    ``last``/``before`` backward."""

    first: int | None = None
    after: str | None = None
    offset: int | None = None
    last: int | None = None
    before: str | None = None
    relay: bool = False  # spelled as the field's own arguments: messages name them so


@dataclass(slots=True, kw_only=True)
class Location:
    id: str
    name: str | None = None


@dataclass(slots=True, kw_only=True)
class NumberOwner:
    id: str
    type: OwnerType
    first_name: str | None = None
    last_name: str | None = None
    display_name: str | None = None
    elin_expiry_time: datetime | None = None


@dataclass(slots=True, kw_only=True)
class PhoneNumber:
    phone_number: str | None
    extension: str | None
    routing_prefix: str | None
    esn: str | None
    state: NumberState | None
    phone_number_type: PhoneNumberType | None
    main_number: bool
    included_telephony_types: TelephonyType | None
    mobile_network: str | None
    routing_profile: str | None
    toll_free_number: bool
    is_service_number: bool
    is_reserved_number: bool | None
    elin_enabled: bool | None
    location: Location
    owner: NumberOwner | None


@dataclass(slots=True, kw_only=True)
class PhoneNumberEdge:
    cursor: str
    node: PhoneNumber


@dataclass(frozen=True, slots=True, kw_only=True)
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@dataclass(slots=True, kw_only=True)
class NumberCounts:
    assigned: int | None = None
    un_assigned: int | None = None
    in_active: int | None = None
    extension_only: int | None = None
    toll_free_numbers: int | None = None
    total: int | None = None
    mobile_number: int | None = None
    service_number: int | None = None
    reserved_number: int | None = None
    available: int | None = None
    elin: int | None = None


@dataclass(slots=True, kw_only=True)
class PhoneNumberChange:
    """One change to the entries a filter matches, seen by polling."""

    kind: PhoneNumberChangeKind
    number: PhoneNumber | None  # after the change; None for SYNCED and REMOVED
    previous: PhoneNumber | None  # before the change; None for SYNCED and ADDED
    observed_at: datetime

"""The schema's GraphQL enums: the domain's enums (``domain.enums``) as GraphQL describes them.

Each GraphQL member's value *is* the domain member (``strawberry.enum_value(domain.X.Y, ...)``),
so a domain member from the reader serializes as it is, and an input's member turns into the
domain's with ``.value`` (``schema.inputs``). ``same_members`` holds each GraphQL enum to its
domain enum member for member, at import: the domain's list of members is the one list.
"""

from __future__ import annotations

from enum import Enum

import strawberry

from gateway.domain import enums as domain

_NOT_A_FILTER = "Never valid as a filter value."


@strawberry.enum(description="Whether a phone number is in service.")
class NumberState(Enum):
    ACTIVE = strawberry.enum_value(
        domain.NumberState.ACTIVE, description="The number is active and routable."
    )
    INACTIVE = strawberry.enum_value(
        domain.NumberState.INACTIVE, description="The number is provisioned but not yet active."
    )
    UNKNOWN = strawberry.enum_value(
        domain.NumberState.UNKNOWN,
        description=f"The upstream sent a state this gateway does not know yet. {_NOT_A_FILTER}",
    )


@strawberry.enum(description="How a phone number is used at its location.")
class PhoneNumberType(Enum):
    PRIMARY = strawberry.enum_value(
        domain.PhoneNumberType.PRIMARY, description="The owner's primary number."
    )
    ALTERNATE = strawberry.enum_value(
        domain.PhoneNumberType.ALTERNATE, description="An alternate number of the owner."
    )
    FAX = strawberry.enum_value(domain.PhoneNumberType.FAX, description="A fax number.")
    DNIS = strawberry.enum_value(
        domain.PhoneNumberType.DNIS, description="A dialed-number identification service number."
    )
    UNKNOWN = strawberry.enum_value(
        domain.PhoneNumberType.UNKNOWN,
        description=f"The upstream sent a type this gateway does not know yet. {_NOT_A_FILTER}",
    )


@strawberry.enum(description="Whether an entry has a phone number or is an extension only.")
class NumberType(Enum):
    NUMBER = strawberry.enum_value(
        domain.NumberType.NUMBER, description="Entries that have a phone number."
    )
    EXTENSION = strawberry.enum_value(
        domain.NumberType.EXTENSION,
        description="Extension-only entries. Cannot be combined with `available` or `state`.",
    )


@strawberry.enum(description="The telephony network a number belongs to.")
class TelephonyType(Enum):
    PSTN_NUMBER = strawberry.enum_value(
        domain.TelephonyType.PSTN_NUMBER, description="A public switched telephone network number."
    )
    MOBILE_NUMBER = strawberry.enum_value(
        domain.TelephonyType.MOBILE_NUMBER, description="A mobile number."
    )
    UNKNOWN = strawberry.enum_value(
        domain.TelephonyType.UNKNOWN,
        description=f"The upstream sent a type this gateway does not know yet. {_NOT_A_FILTER}",
    )


@strawberry.enum(description="What kind of entity a number or extension is assigned to.")
class OwnerType(Enum):
    PEOPLE = strawberry.enum_value(domain.OwnerType.PEOPLE, description="A person.")
    PLACE = strawberry.enum_value(domain.OwnerType.PLACE, description="A workspace.")
    VIRTUAL_LINE = strawberry.enum_value(
        domain.OwnerType.VIRTUAL_LINE, description="A virtual line."
    )
    AUTO_ATTENDANT = strawberry.enum_value(
        domain.OwnerType.AUTO_ATTENDANT, description="An auto attendant."
    )
    CALL_QUEUE = strawberry.enum_value(domain.OwnerType.CALL_QUEUE, description="A call queue.")
    GROUP_PAGING = strawberry.enum_value(
        domain.OwnerType.GROUP_PAGING, description="A paging group (older upstream spelling)."
    )
    PAGING_GROUP = strawberry.enum_value(
        domain.OwnerType.PAGING_GROUP, description="A paging group."
    )
    HUNT_GROUP = strawberry.enum_value(domain.OwnerType.HUNT_GROUP, description="A hunt group.")
    VOICE_MESSAGING = strawberry.enum_value(
        domain.OwnerType.VOICE_MESSAGING, description="Voice messaging."
    )
    OFFICE_ANYWHERE = strawberry.enum_value(
        domain.OwnerType.OFFICE_ANYWHERE, description="Office Anywhere (single number reach)."
    )
    BROADWORKS_ANYWHERE = strawberry.enum_value(
        domain.OwnerType.BROADWORKS_ANYWHERE,
        description="BroadWorks Anywhere (single number reach).",
    )
    CONTACT_CENTER_LINK = strawberry.enum_value(
        domain.OwnerType.CONTACT_CENTER_LINK, description="A Contact Center link."
    )
    CONTACT_CENTER_ADAPTER = strawberry.enum_value(
        domain.OwnerType.CONTACT_CENTER_ADAPTER, description="A Contact Center adapter."
    )
    ROUTE_LIST = strawberry.enum_value(domain.OwnerType.ROUTE_LIST, description="A route list.")
    VOICEMAIL_GROUP = strawberry.enum_value(
        domain.OwnerType.VOICEMAIL_GROUP, description="A voicemail group."
    )
    COLLABORATE_BRIDGE = strawberry.enum_value(
        domain.OwnerType.COLLABORATE_BRIDGE, description="A collaborate bridge."
    )
    AI_RECEPTIONIST = strawberry.enum_value(
        domain.OwnerType.AI_RECEPTIONIST, description="An AI receptionist."
    )
    UNKNOWN = strawberry.enum_value(
        domain.OwnerType.UNKNOWN,
        description="The upstream sent an owner type this gateway does not know yet. "
        + _NOT_A_FILTER,
    )


@strawberry.enum(description="What to sort phone numbers by.")
class PhoneNumberSortField(Enum):
    LAST_NAME = strawberry.enum_value(
        domain.PhoneNumberSortField.LAST_NAME, description="The owner's last name."
    )
    DN = strawberry.enum_value(
        domain.PhoneNumberSortField.DN, description="The directory number (the phone number)."
    )
    EXTENSION = strawberry.enum_value(
        domain.PhoneNumberSortField.EXTENSION, description="The extension."
    )


@strawberry.enum(description="Sort direction.")
class SortDirection(Enum):
    ASC = strawberry.enum_value(domain.SortDirection.ASC, description="Ascending.")
    DESC = strawberry.enum_value(domain.SortDirection.DESC, description="Descending.")


@strawberry.enum(description="What happened to an entry between two polls of the upstream.")
class PhoneNumberChangeKind(Enum):
    SYNCED = strawberry.enum_value(
        domain.PhoneNumberChangeKind.SYNCED,
        description="The feed's first event: the baseline is taken, and every later event is "
        "a change against it. `number` and `previous` are null.",
    )
    ADDED = strawberry.enum_value(
        domain.PhoneNumberChangeKind.ADDED,
        description="An entry now matches the filter that did not before.",
    )
    REMOVED = strawberry.enum_value(
        domain.PhoneNumberChangeKind.REMOVED,
        description="An entry no longer matches the filter (deleted, or changed so that the "
        "filter leaves it out).",
    )
    ASSIGNED = strawberry.enum_value(
        domain.PhoneNumberChangeKind.ASSIGNED,
        description="An entry without an owner now has one.",
    )
    UNASSIGNED = strawberry.enum_value(
        domain.PhoneNumberChangeKind.UNASSIGNED, description="An entry lost its owner."
    )
    REASSIGNED = strawberry.enum_value(
        domain.PhoneNumberChangeKind.REASSIGNED,
        description="An entry moved from one owner to another.",
    )
    UPDATED = strawberry.enum_value(
        domain.PhoneNumberChangeKind.UPDATED,
        description="Something else about the entry changed: its state, main number, type, "
        "its owner's name and the like.",
    )


def same_members(graphql: type[Enum], members: type[Enum]) -> None:
    """Fail at import unless GraphQL enum ``graphql`` has exactly the members of ``members``,
    each valued by its domain member."""
    if [(m.name, m.value) for m in graphql] != [(m.name, m) for m in members]:
        raise TypeError(f"schema enum {graphql.__name__} differs from domain.{members.__name__}")


for _graphql, _domain in (
    (NumberState, domain.NumberState),
    (PhoneNumberType, domain.PhoneNumberType),
    (NumberType, domain.NumberType),
    (TelephonyType, domain.TelephonyType),
    (OwnerType, domain.OwnerType),
    (PhoneNumberSortField, domain.PhoneNumberSortField),
    (SortDirection, domain.SortDirection),
    (PhoneNumberChangeKind, domain.PhoneNumberChangeKind),
):
    same_members(_graphql, _domain)

"""The closed sets of values the numbers domain speaks: states, types, owner kinds, sort keys.

Each member's value is the upstream's wire spelling (and the GraphQL enum value's name), so
reading an upstream value is ``NumberState(value)``, and a value this gateway does not know yet
is ``UNKNOWN`` (``reader.EnumOrUnknown``). They are ``StrEnum``s: a member is its own text, so
the schema's GraphQL enums (``schema.enums``, which add the descriptions) serialize them as they
are, and cache keys and cursors spell them the same way.
"""

from __future__ import annotations

from enum import StrEnum


class NumberState(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    UNKNOWN = "UNKNOWN"


class PhoneNumberType(StrEnum):
    PRIMARY = "PRIMARY"
    ALTERNATE = "ALTERNATE"
    FAX = "FAX"
    DNIS = "DNIS"
    UNKNOWN = "UNKNOWN"


class NumberType(StrEnum):
    NUMBER = "NUMBER"
    EXTENSION = "EXTENSION"


class TelephonyType(StrEnum):
    PSTN_NUMBER = "PSTN_NUMBER"
    MOBILE_NUMBER = "MOBILE_NUMBER"
    UNKNOWN = "UNKNOWN"


class OwnerType(StrEnum):
    PEOPLE = "PEOPLE"
    PLACE = "PLACE"
    VIRTUAL_LINE = "VIRTUAL_LINE"
    AUTO_ATTENDANT = "AUTO_ATTENDANT"
    CALL_QUEUE = "CALL_QUEUE"
    GROUP_PAGING = "GROUP_PAGING"
    PAGING_GROUP = "PAGING_GROUP"
    HUNT_GROUP = "HUNT_GROUP"
    VOICE_MESSAGING = "VOICE_MESSAGING"
    OFFICE_ANYWHERE = "OFFICE_ANYWHERE"
    BROADWORKS_ANYWHERE = "BROADWORKS_ANYWHERE"
    CONTACT_CENTER_LINK = "CONTACT_CENTER_LINK"
    CONTACT_CENTER_ADAPTER = "CONTACT_CENTER_ADAPTER"
    ROUTE_LIST = "ROUTE_LIST"
    VOICEMAIL_GROUP = "VOICEMAIL_GROUP"
    COLLABORATE_BRIDGE = "COLLABORATE_BRIDGE"
    AI_RECEPTIONIST = "AI_RECEPTIONIST"
    UNKNOWN = "UNKNOWN"


class PhoneNumberSortField(StrEnum):
    LAST_NAME = "LAST_NAME"
    DN = "DN"
    EXTENSION = "EXTENSION"


class SortDirection(StrEnum):
    ASC = "ASC"
    DESC = "DESC"


class PhoneNumberChangeKind(StrEnum):
    SYNCED = "SYNCED"
    ADDED = "ADDED"
    REMOVED = "REMOVED"
    ASSIGNED = "ASSIGNED"
    UNASSIGNED = "UNASSIGNED"
    REASSIGNED = "REASSIGNED"
    UPDATED = "UPDATED"

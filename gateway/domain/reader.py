"""The tolerant reader: upstream JSON to schema values, expressed as data.

Each output type has a table naming, for every field, its upstream key and its reading rule:
``Text`` (strings, numbers as text, ``""`` as null), ``Flag`` (booleans, ``"true"``/``"false"``),
``EnumOrUnknown`` (values this gateway does not know become ``UNKNOWN``), ``Count`` (a
non-negative GraphQL ``Int``), ``Instant`` (an ISO 8601 time, read in UTC), and ``Nested`` (an
object read by its own table). Unknown keys are
ignored and missing keys read as null. ``to_phone_number`` is driven by the table; the projection
fast path compiles the same table, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from gateway.domain.enums import NumberState, OwnerType, PhoneNumberType, TelephonyType
from gateway.domain.records import Location, NumberCounts, NumberOwner, PhoneNumber
from gateway.errors import UpstreamUnavailable

GRAPHQL_INT_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Text:
    """A string; numbers are read as their text. ``""`` and anything else read as
    ``default`` (null, or ``""`` for an id the schema declares non-null)."""

    default: str | None = None

    def read(self, value: object) -> str | None:
        if isinstance(value, str):
            return value or self.default
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return self.default


@dataclass(frozen=True, slots=True)
class Flag:
    """A boolean; ``"true"``/``"false"`` strings too. ``default`` stands in for anything else
    (``False`` for the flags the schema declares non-null)."""

    default: bool | None = None

    def read(self, value: object) -> bool | None:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return self.default


@dataclass(frozen=True, slots=True)
class EnumOrUnknown:
    """A value of ``enum``; one this gateway does not know is ``UNKNOWN``. ``default`` stands
    in for a missing value (``UNKNOWN`` where the schema declares the field non-null)."""

    enum: type[Enum]
    default: Enum | None = None

    def read(self, value: object) -> Enum | None:
        if value is None:
            return self.default
        try:
            return self.enum(value)
        except (ValueError, TypeError):
            return self.enum("UNKNOWN")


@dataclass(frozen=True, slots=True)
class Count:
    """A count: a non-negative GraphQL ``Int``. A count the schema cannot carry is the
    upstream's fault, reported as such rather than served as a wrong number."""

    def read(self, value: object) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if not 0 <= value <= GRAPHQL_INT_MAX:
            raise UpstreamUnavailable(
                f"The upstream sent a count of {value}, outside 0..{GRAPHQL_INT_MAX}.",
                upstream_status=200,
            )
        return value


@dataclass(frozen=True, slots=True)
class Instant:
    """A point in time sent as ISO 8601 text (``2025-05-01T12:00:00.000Z``), read as a UTC
    ``datetime``; a time without an offset is taken as UTC (the upstream documents UTC).
    Anything that does not read as one (another type, a malformed text, a time that cannot
    be put in UTC) is null: one odd timestamp must not fail a page."""

    def read(self, value: object) -> datetime | None:
        if not isinstance(value, str):
            return None
        try:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                return moment.replace(tzinfo=UTC)
            return moment.astimezone(UTC)
        except (ValueError, OverflowError):
            return None


@dataclass(frozen=True, slots=True)
class Nested:
    """An object read by ``table``. When the upstream sends no object (or one without the
    table's ``identified_by`` key), the field is null, or with ``always`` an empty object:
    the upstream always sends a location, and if it ever does not, an empty id says so
    without failing the whole page."""

    table: ObjectTable
    always: bool = False

    def read(self, value: object) -> Any:
        if not isinstance(value, Mapping):
            return self.table.read({}) if self.always else None
        if self.table.identified_by is not None:
            identifier = TEXT.read(value.get(self.table.identified_by))
            if identifier is None:
                return self.table.read({}) if self.always else None
        return self.table.read(value)


Reading = Text | Flag | EnumOrUnknown | Count | Instant | Nested


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One schema field: its Python attribute, its upstream key, and how it is read."""

    attribute: str
    key: str
    reading: Reading


@dataclass(frozen=True, slots=True)
class ObjectTable:
    """How to read one output type from an upstream object."""

    type: type[Any]
    fields: tuple[FieldRule, ...]
    identified_by: str | None = None  # the object exists only with a text value here

    def read(self, value: Mapping[str, Any]) -> Any:
        return self.type(
            **{rule.attribute: rule.reading.read(value.get(rule.key)) for rule in self.fields}
        )


TEXT = Text()
FLAG = Flag()
FLAG_OR_FALSE = Flag(default=False)
COUNT = Count()
INSTANT = Instant()

LOCATION = ObjectTable(
    Location,
    (
        FieldRule("id", "id", Text(default="")),
        FieldRule("name", "name", TEXT),
    ),
)
OWNER = ObjectTable(
    NumberOwner,
    (
        FieldRule("id", "id", TEXT),
        FieldRule("type", "type", EnumOrUnknown(OwnerType, default=OwnerType.UNKNOWN)),
        FieldRule("first_name", "firstName", TEXT),
        FieldRule("last_name", "lastName", TEXT),
        FieldRule("display_name", "displayName", TEXT),
        FieldRule("elin_expiry_time", "elinExpiryTime", INSTANT),
    ),
    identified_by="id",
)
PHONE_NUMBER = ObjectTable(
    PhoneNumber,
    (
        FieldRule("phone_number", "phoneNumber", TEXT),
        FieldRule("extension", "extension", TEXT),
        FieldRule("routing_prefix", "routingPrefix", TEXT),
        FieldRule("esn", "esn", TEXT),
        FieldRule("state", "state", EnumOrUnknown(NumberState)),
        FieldRule("phone_number_type", "phoneNumberType", EnumOrUnknown(PhoneNumberType)),
        FieldRule("main_number", "mainNumber", FLAG_OR_FALSE),
        FieldRule(
            "included_telephony_types", "includedTelephonyTypes", EnumOrUnknown(TelephonyType)
        ),
        FieldRule("mobile_network", "mobileNetwork", TEXT),
        FieldRule("routing_profile", "routingProfile", TEXT),
        FieldRule("toll_free_number", "tollFreeNumber", FLAG_OR_FALSE),
        FieldRule("is_service_number", "isServiceNumber", FLAG_OR_FALSE),
        FieldRule("is_reserved_number", "isReservedNumber", FLAG),
        FieldRule("elin_enabled", "elinEnabled", FLAG),
        FieldRule("location", "location", Nested(LOCATION, always=True)),
        FieldRule("owner", "owner", Nested(OWNER)),
    ),
)
NUMBER_COUNTS = ObjectTable(
    NumberCounts,
    tuple(
        FieldRule(attribute, key, COUNT)
        for attribute, key in (
            ("assigned", "assigned"),
            ("un_assigned", "unAssigned"),
            ("in_active", "inActive"),
            ("extension_only", "extensionOnly"),
            ("toll_free_numbers", "tollFreeNumbers"),
            ("total", "total"),
            ("mobile_number", "mobileNumber"),
            ("service_number", "serviceNumber"),
            ("reserved_number", "reservedNumber"),
            ("available", "available"),
            ("elin", "elin"),
        )
    ),
)


def to_phone_number(item: Mapping[str, Any]) -> PhoneNumber:
    phone_number: PhoneNumber = PHONE_NUMBER.read(item)
    return phone_number


def to_number_counts(count: Mapping[str, Any] | None) -> NumberCounts:
    counts: NumberCounts = NUMBER_COUNTS.read(count or {})
    return counts


def read_total(count: Mapping[str, Any] | None) -> int | None:
    """``count.total`` of a ``details=true`` answer, when the upstream sent one."""
    return COUNT.read((count or {}).get("total"))

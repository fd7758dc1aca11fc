"""How the simulator answers a query: parameter parsing, the upstream's conflicts, filtering,
ordering and the ``details=true`` counts. Pure functions over a ``SimulatorWorld``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cachetools import LRUCache

from gateway.simulator.dataset import OWNER_TYPES, NumberEntry, SimulatedOrg

DEFAULT_MAX = 2000
OWNER_NAME_MAX_LENGTH = 255

NUMBER_TYPES = frozenset({"NUMBER", "EXTENSION"})
PHONE_NUMBER_TYPES = frozenset({"PRIMARY", "ALTERNATE", "FAX", "DNIS"})
STATES = frozenset({"ACTIVE", "INACTIVE"})
TELEPHONY_TYPES = frozenset({"PSTN_NUMBER", "MOBILE_NUMBER"})
ORDER_KEYS = ("lastName", "dn", "extension")
_PAGING = frozenset({"start", "max", "details"})  # parameters that choose no entries

# Webex puts a numeric code beside each description; these are the simulator's own.
ERROR_CODE_INVALID_VALUE = 25008
ERROR_CODE_CONFLICT = 25009

EntryFilter = Callable[[NumberEntry], bool]
MatchKey = tuple[Any, ...]
_T = TypeVar("_T")


class WebexBadRequest(Exception):
    """A 400 the upstream would send, with the description it would carry."""

    def __init__(self, description: str, error_code: int = ERROR_CODE_INVALID_VALUE) -> None:
        super().__init__(description)
        self.description = description
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class NumbersSearch:
    org_id: str | None
    start: int
    max: int
    details: bool
    order_key: str | None
    descending: bool
    filters: tuple[EntryFilter, ...]
    # What the filters were built from (every parameter but paging and counts): equal keys,
    # equal filters, so an index may keep what a key matched.
    filter_key: tuple[tuple[str, str], ...]


def _boolean(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise WebexBadRequest(f"Invalid value '{value}' for {name}: expected true or false.")
    return lowered == "true"


def _non_negative_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise WebexBadRequest(f"Invalid value '{value}' for {name}: expected an integer.") from None
    if number < 0:
        raise WebexBadRequest(f"Invalid value '{value}' for {name}: must not be negative.")
    return number


def _enum(name: str, value: str, allowed: frozenset[str] | tuple[str, ...]) -> str:
    if value not in allowed:
        raise WebexBadRequest(
            f"Invalid value '{value}' for {name}. Possible values: {', '.join(sorted(allowed))}."
        )
    return value


def _parse_order(value: str) -> tuple[str, bool]:
    key, _, direction = value.partition("-")
    if key not in ORDER_KEYS or direction not in ("", "asc", "desc"):
        raise WebexBadRequest(
            f"Invalid value '{value}' for order: use lastName, dn or extension, "
            "optionally suffixed -asc or -desc."
        )
    return key, direction == "desc"


def parse_search(params: Sequence[tuple[str, str]]) -> NumbersSearch:
    """Read the query string as the upstream does; raise ``WebexBadRequest`` as it would."""
    single: dict[str, str] = {}
    telephony_types: list[str] = []
    for name, value in params:
        if name == "includedTelephonyType":
            raise WebexBadRequest(
                "Unknown parameter includedTelephonyType: did you mean includedTelephonyTypes?"
            )
        if name == "includedTelephonyTypes":
            telephony_types.extend(part for part in value.split(",") if part)
        else:
            single[name] = value

    filters: list[EntryFilter] = []
    available = _maybe(single, "available", _boolean)
    owner_type = single.get("ownerType")
    number_type = single.get("numberType")
    state = single.get("state")
    reserved = _maybe(single, "reservedNumber", _boolean)
    assigned = _maybe(single, "assigned", _boolean)
    elin = _maybe(single, "elinEnabled", _boolean)

    if available is True and owner_type is not None:
        raise WebexBadRequest(
            "available cannot be used along with ownerType when set to true.", ERROR_CODE_CONFLICT
        )
    if number_type == "EXTENSION" and (available is not None or state is not None):
        raise WebexBadRequest(
            "numberType EXTENSION cannot be used along with available or state.",
            ERROR_CODE_CONFLICT,
        )
    if number_type == "EXTENSION" and assigned is not None:
        raise WebexBadRequest(
            "numberType EXTENSION cannot be used along with assigned.", ERROR_CODE_CONFLICT
        )
    if reserved is not None and available is not None:
        raise WebexBadRequest(
            "reservedNumber cannot be used along with available.", ERROR_CODE_CONFLICT
        )
    if reserved is not None and assigned is not None:
        raise WebexBadRequest(
            "reservedNumber cannot be used along with assigned.", ERROR_CODE_CONFLICT
        )

    if (location_id := single.get("locationId")) is not None:
        filters.append(lambda entry: entry.location_id == location_id)
    if (phone_number := single.get("phoneNumber")) is not None:
        wanted = phone_number.strip()
        filters.append(
            lambda entry: entry.phone_number is not None and wanted in entry.phone_number
        )
    if available is not None:
        filters.append(lambda entry: entry.available is available)
    if (owner_name := single.get("ownerName")) is not None:
        if len(owner_name) > OWNER_NAME_MAX_LENGTH:
            raise WebexBadRequest(
                f"ownerName is {len(owner_name)} characters long; "
                f"the maximum is {OWNER_NAME_MAX_LENGTH}."
            )
        needle = owner_name.lower()
        filters.append(lambda entry: needle in entry.owner_name)
    if (owner_id := single.get("ownerId")) is not None:
        filters.append(lambda entry: entry.owner_id == owner_id)
    if owner_type is not None:
        _enum("ownerType", owner_type, OWNER_TYPES)
        filters.append(lambda entry: entry.owner_type == owner_type)
    if (extension := single.get("extension")) is not None:
        filters.append(lambda entry: entry.extension == extension)
    if number_type is not None:
        _enum("numberType", number_type, NUMBER_TYPES)
        wants_numbers = number_type == "NUMBER"
        filters.append(lambda entry: (entry.phone_number is not None) is wants_numbers)
    if (phone_number_type := single.get("phoneNumberType")) is not None:
        _enum("phoneNumberType", phone_number_type, PHONE_NUMBER_TYPES)
        filters.append(lambda entry: entry.phone_number_type == phone_number_type)
    if state is not None:
        _enum("state", state, STATES)
        filters.append(lambda entry: entry.phone_number is not None and entry.state == state)
    if _maybe(single, "tollFreeNumbers", _boolean):
        filters.append(lambda entry: entry.toll_free)
    if _maybe(single, "restrictedNonGeoNumbers", _boolean):
        filters.append(lambda entry: entry.restricted_non_geo)
    if _maybe(single, "serviceNumber", _boolean):
        filters.append(lambda entry: entry.service)
    if reserved is not None:
        filters.append(lambda entry: entry.phone_number is not None and entry.reserved is reserved)
    # Like reservedNumber, both filter numbers only: an extension is neither assigned (as a
    # number) nor an ELIN.
    if assigned is not None:
        filters.append(
            lambda entry: (
                entry.phone_number is not None and (entry.owner_id is not None) is assigned
            )
        )
    if elin is not None:
        filters.append(lambda entry: entry.phone_number is not None and entry.elin is elin)
    if telephony_types:
        kinds = frozenset(
            _enum("includedTelephonyTypes", t, TELEPHONY_TYPES) for t in telephony_types
        )
        if kinds != TELEPHONY_TYPES:
            filters.append(lambda entry: entry.telephony_type in kinds)

    order_key, descending = None, False
    if (order := single.get("order")) is not None:
        order_key, descending = _parse_order(order)
    details = bool(_maybe(single, "details", _boolean))
    start = _maybe(single, "start", _non_negative_int) or 0
    maximum = _maybe(single, "max", _non_negative_int)
    if maximum == 0:
        raise WebexBadRequest("Invalid value '0' for max: must be at least 1.")
    unpaged = sorted((name, value) for name, value in single.items() if name not in _PAGING)
    if telephony_types:
        unpaged.append(("includedTelephonyTypes", ",".join(sorted(set(telephony_types)))))
    return NumbersSearch(
        org_id=single.get("orgId"),
        start=start,
        max=DEFAULT_MAX if maximum is None else maximum,
        details=details,
        order_key=order_key,
        descending=descending,
        filters=tuple(filters),
        filter_key=tuple(unpaged),
    )


def _maybe(single: dict[str, str], name: str, parse: Callable[[str, str], _T]) -> _T | None:
    value = single.get(name)
    return None if value is None else parse(name, value)


def _natural(text: str | None) -> tuple[int, int, str, str]:
    """Extensions of ASCII digits by numeric value (compared as digit strings, so any length
    is exact), equal values by their text; other text after every numeric one, by text;
    none last."""
    if text is None:
        return (2, 0, "", "")
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0")
        return (0, len(digits), digits, text)
    return (1, 0, "", text)


def _default_key(entry: NumberEntry) -> tuple[bool, str, tuple[int, int, str, str], str]:
    # The upstream's default: by number, then extension, ascending; extension-only entries
    # last. What that leaves tied (extension-only entries of two locations with the same
    # extension) goes by location id, so the order is total: the gateway's merge of several
    # locations' or owner types' lists (gateway.domain.fan_out) orders by the same key.
    return (
        entry.phone_number is None,
        entry.phone_number or "",
        _natural(entry.extension),
        entry.location_id,
    )


_ORDER_VALUE: dict[str, Callable[[NumberEntry], Any]] = {
    "lastName": lambda entry: entry.last_name.lower() if entry.last_name else None,
    "dn": lambda entry: entry.phone_number,
    "extension": lambda entry: _natural(entry.extension) if entry.extension else None,
}


class OrgIndex:
    """An org's entries pre-sorted once for every order the upstream offers."""

    def __init__(self, org: SimulatedOrg) -> None:
        self.org = org
        by_default = sorted(org.entries, key=_default_key)
        self.orderings: dict[tuple[str | None, bool], list[NumberEntry]] = {
            (None, False): by_default,
            (None, True): by_default,  # a direction without a key changes nothing
        }
        for key, value_of in _ORDER_VALUE.items():
            present = [entry for entry in by_default if value_of(entry) is not None]
            missing = [entry for entry in by_default if value_of(entry) is None]
            for descending in (False, True):
                # sorted() is stable, so ties keep the default order in both directions;
                # entries lacking the key come last either way.
                ranked = sorted(present, key=value_of, reverse=descending)
                self.orderings[(key, descending)] = ranked + missing
        # Matched lists, bounded by the entries they hold: a few times the org's, so a walk
        # of each order and a handful of filters stay while a stream of distinct filters
        # (every ownerName a user types) pushes the oldest out.
        self._matched: LRUCache[MatchKey, list[NumberEntry]] = LRUCache(
            maxsize=max(4096, 4 * len(org.entries)), getsizeof=lambda matched: len(matched) + 1
        )

    def matching(
        self,
        search: NumbersSearch,
        visible_locations: frozenset[str] | None,
    ) -> list[NumberEntry]:
        """Every matched entry, in the search's order (the caller slices its page).

        A filtered list is scanned once and kept (the index is rebuilt on every change, so
        what it keeps is never stale): a walk's pages, each asking ``start`` further on,
        slice one list instead of scanning the org again (a page near the end of a long
        filtered list scanned nearly all of it)."""
        ordered = self.orderings[(search.order_key, search.descending)]
        if not search.filters and visible_locations is None:
            return ordered
        key = (search.filter_key, search.order_key, search.descending, visible_locations)
        matched = self._matched.get(key)
        if matched is None:
            filters = list(search.filters)
            if visible_locations is not None:
                filters.insert(0, lambda entry: entry.location_id in visible_locations)
            if len(filters) == 1:
                matched = list(filter(filters[0], ordered))
            else:
                matched = [entry for entry in ordered if all(check(entry) for check in filters)]
            self._matched[key] = matched
        return matched


def count_details(entries: Sequence[NumberEntry]) -> dict[str, int]:
    """The ``count`` object over every matched entry, not only the page."""
    assigned = unassigned = inactive = extension_only = toll_free = mobile = 0
    service = reserved = available = elin = 0
    for entry in entries:
        if entry.phone_number is None:
            extension_only += 1
            continue
        if entry.owner_id is None:
            unassigned += 1
        else:
            assigned += 1
        inactive += entry.state == "INACTIVE"
        toll_free += entry.toll_free
        mobile += entry.telephony_type == "MOBILE_NUMBER"
        service += entry.service and entry.telephony_type == "PSTN_NUMBER"
        reserved += entry.reserved
        available += entry.available
        elin += entry.elin
    return {
        "assigned": assigned,
        "unAssigned": unassigned,
        "inActive": inactive,
        "extensionOnly": extension_only,
        "tollFreeNumbers": toll_free,
        "total": len(entries),
        "mobileNumber": mobile,
        "serviceNumber": service,
        "reservedNumber": reserved,
        "available": available,
        "elin": elin,
    }

"""An export's query string read into the domain's asks: ``orgId``, the ``PhoneNumberFilter``
fields by their GraphQL names, and ``order``, each value checked as its GraphQL argument is.

The filter's parameters are derived from the domain's ``NumberFilter`` record, field by field
(its attribute, camel-cased as the schema names it, and its type), so a field added there is a
parameter here with no edit: a text field takes its text, a flag ``true`` or ``false``, an
enum field one of its members' names, and a list field is its parameter repeated, each value
read as one item (``includedTelephonyTypes=PSTN_NUMBER&includedTelephonyTypes=MOBILE_NUMBER``;
issue 29's ``locationIds`` and ``ownerTypes`` the same way). ``order`` is ``LAST_NAME`` or
``LAST_NAME:DESC`` (a ``PhoneNumberSortField``, then optionally ``:`` and a
``SortDirection``). An unknown parameter, a single-valued one given twice, or a value not of
its kind is ``BadUserInput`` here; the rules between fields and on values (conflicts,
lengths, ``UNKNOWN``, an empty text) are the domain's own (``arguments.numbers_query``), which
the data layer runs before any upstream call, exactly as for the GraphQL filter.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from strawberry.utils.str_converters import to_camel_case

from gateway.domain.enums import PhoneNumberSortField, SortDirection
from gateway.domain.records import NumberFilter, NumberOrder
from gateway.errors import BadUserInput

ORG_PARAMETER: Final = "orgId"
ORDER_PARAMETER: Final = "order"
_DIRECTION_SEPARATOR: Final = ":"
# Enum members that only describe upstream values the gateway does not know: not offered as
# values (``numbers_query`` refuses them as a filter, with its reason, if sent anyway).
_UNKNOWN: Final = "UNKNOWN"
_TEXT_SHOWN: Final = 64  # characters of a refused name or value repeated in its message

ValueReader = Callable[[str, str], object]  # (parameter name, its text) -> the value


@dataclass(frozen=True, slots=True)
class FilterParameter:
    """One ``NumberFilter`` field as a query parameter."""

    name: str  # the GraphQL name: ``includedTelephonyTypes``
    attribute: str  # the record's attribute: ``included_telephony_types``
    read: ValueReader  # one value's text to the record's value (one item, for a list)
    repeated: bool  # a list field: every occurrence is one item


@dataclass(frozen=True, slots=True)
class ExportAsk:
    """What an export asks for: the org (None: the caller's own), the filter and the order."""

    org_id: str | None
    filter: NumberFilter | None
    order: NumberOrder | None


def _text(name: str, text: str) -> str:
    return text


def _flag(name: str, text: str) -> bool:
    if text not in ("true", "false"):
        raise BadUserInput(f"{name} must be true or false, got {text[:_TEXT_SHOWN]!r}.")
    return text == "true"


def _member_reader(enum: type[Enum]) -> ValueReader:
    offered = ", ".join(member.name for member in enum if member.name != _UNKNOWN)

    def member(name: str, text: str) -> Enum:
        found = enum.__members__.get(text)
        if found is None:
            raise BadUserInput(
                f"{name}: {text[:_TEXT_SHOWN]!r} is not a value of {enum.__name__}; use one "
                f"of {offered}."
            )
        return found

    return member


def _reader_of(kind: object) -> ValueReader:
    if kind is str:
        return _text
    if kind is bool:
        return _flag
    if isinstance(kind, type) and issubclass(kind, Enum):
        return _member_reader(kind)
    raise TypeError(f"NumberFilter has a field of a kind no export parameter reads: {kind!r}")


def filter_parameter(attribute: str, annotation: object) -> FilterParameter:
    """The parameter of one ``NumberFilter`` field, typed ``X | None`` or ``list[X] | None``."""
    kinds = [
        kind
        for kind in (
            typing.get_args(annotation)
            if isinstance(annotation, types.UnionType)
            else (annotation,)
        )
        if kind is not type(None)
    ]
    if len(kinds) != 1:
        raise TypeError(f"NumberFilter.{attribute} is not an optional value: {annotation!r}")
    [kind] = kinds
    repeated = typing.get_origin(kind) is list
    if repeated:
        [kind] = typing.get_args(kind)
    return FilterParameter(to_camel_case(attribute), attribute, _reader_of(kind), repeated)


def filter_parameters() -> tuple[FilterParameter, ...]:
    """Every ``NumberFilter`` field as a parameter, in the record's order."""
    hints = typing.get_type_hints(NumberFilter)
    return tuple(
        filter_parameter(field.name, hints[field.name])
        for field in dataclasses.fields(NumberFilter)
    )


FILTER_PARAMETERS: Final = filter_parameters()
_BY_NAME: Final = {parameter.name: parameter for parameter in FILTER_PARAMETERS}
PARAMETER_NAMES: Final = (ORG_PARAMETER, *_BY_NAME, ORDER_PARAMETER)
_SORT_FIELDS: Final = ", ".join(member.name for member in PhoneNumberSortField)
_DIRECTIONS: Final = ", ".join(member.name for member in SortDirection)


def _order(text: str) -> NumberOrder:
    by, separator, direction = text.partition(_DIRECTION_SEPARATOR)
    field = PhoneNumberSortField.__members__.get(by)
    way = SortDirection.__members__.get(direction) if separator else SortDirection.ASC
    if field is None or way is None:
        raise BadUserInput(
            f"order must be a sort field ({_SORT_FIELDS}), optionally followed by "
            f"{_DIRECTION_SEPARATOR!r} and a direction ({_DIRECTIONS}): LAST_NAME or "
            f"LAST_NAME:DESC; got {text[:_TEXT_SHOWN]!r}."
        )
    return NumberOrder(field, way)


def read_export_parameters(items: Iterable[tuple[str, str]]) -> ExportAsk:
    """The ask of a query string's (name, value) pairs, in order; raises ``BadUserInput``."""
    given: dict[str, list[str]] = {}
    for name, value in items:
        if name not in _BY_NAME and name not in (ORG_PARAMETER, ORDER_PARAMETER):
            raise BadUserInput(
                f"{name[:_TEXT_SHOWN]!r} is not an export parameter. The parameters are "
                f"{ORG_PARAMETER}, the PhoneNumberFilter fields ({', '.join(_BY_NAME)}) and "
                f"{ORDER_PARAMETER}."
            )
        given.setdefault(name, []).append(value)
    fields: dict[str, Any] = {}
    for name, values in given.items():
        parameter = _BY_NAME.get(name)
        if parameter is not None and parameter.repeated:
            fields[parameter.attribute] = [parameter.read(name, value) for value in values]
            continue
        value = _single(name, values)
        if parameter is not None:
            fields[parameter.attribute] = parameter.read(name, value)
    org = given.get(ORG_PARAMETER)
    order = given.get(ORDER_PARAMETER)
    return ExportAsk(
        org_id=None if org is None else _single(ORG_PARAMETER, org),
        filter=NumberFilter(**fields) if fields else None,
        order=None if order is None else _order(_single(ORDER_PARAMETER, order)),
    )


def _single(name: str, values: Sequence[str]) -> str:
    if len(values) > 1:
        raise BadUserInput(
            f"{name} was given {len(values)} times; it takes one value (only list fields "
            "of the filter are repeated)."
        )
    return values[0]

"""An entry of the list as an export writes it: one CSV row under dotted column headers, or one
NDJSON line in the GraphQL shape; and the lines that begin and end each format.

Both are derived from the reader's table (``domain.reader.PHONE_NUMBER``), not from a list of
their own: each upstream item is read by the tolerant reader (``to_phone_number``), so its values
are the ones the GraphQL answer gives (the same rules), and each field is written under its
GraphQL name (the contract names the fields as the upstream does: the rule's key) in the
schema's order. A nested object (``location``, ``owner``) is an object in NDJSON and dotted
columns in CSV (``location.id``, ``owner.firstName``); a missing owner is null, or empty
cells. Values are what GraphQL serialises: enums by name, a ``DateTime`` as strawberry writes
it (``isoformat``), booleans as ``true``/``false``, null as an empty cell. (The owner's
``person`` is the owner's id again, as a federation reference; the location's
``phoneNumbers`` and ``numberCounts`` are connections: none of them is a column.)

CSV per RFC 4180: UTF-8, a header row, CRLF line ends, a field quoted when it holds a comma, a
quote or a line break (Python's ``csv`` writer). Spreadsheet formula injection (OWASP's
advice): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
leading ``'``, so a spreadsheet shows it as text instead of evaluating it; a phone number in
E.164 (``+14155550100``) is kept as it is.

NDJSON: one JSON object per entry and a line, then one trailer line, ``{"__export": {...}}``
(a name no GraphQL field can have, so it is never mistaken for an entry): ``"complete": true``
and the ``rows`` written, or ``"complete": false``, the rows written and the contract
``error`` that ended the walk. CSV has no trailer: an export that does not complete is cut
off (``transports.export``).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final, Protocol

import orjson

from gateway.domain.reader import PHONE_NUMBER, Nested, ObjectTable, to_phone_number

# What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")
TEXT_MARKER: Final = "'"
TRAILER_KEY: Final = "__export"


def _columns(table: ObjectTable, prefix: str = "") -> list[tuple[str, tuple[str, ...]]]:
    """(dotted header, attribute path) of every leaf of ``table``, in the table's order."""
    columns: list[tuple[str, tuple[str, ...]]] = []
    for rule in table.fields:
        if isinstance(rule.reading, Nested):
            for header, path in _columns(rule.reading.table, f"{prefix}{rule.key}."):
                columns.append((header, (rule.attribute, *path)))
        else:
            columns.append((f"{prefix}{rule.key}", (rule.attribute,)))
    return columns


_COLUMN_PATHS: Final = _columns(PHONE_NUMBER)
COLUMNS: Final = tuple(header for header, _ in _COLUMN_PATHS)


def graphql_value(value: object) -> object:
    """A leaf as GraphQL serialises it: an enum by its name, a ``DateTime`` in ISO 8601 (as
    strawberry's scalar writes it), anything else as it is."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _shape(table: ObjectTable, record: object) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for rule in table.fields:
        value = getattr(record, rule.attribute)
        if isinstance(rule.reading, Nested):
            entry[rule.key] = None if value is None else _shape(rule.reading.table, value)
        else:
            entry[rule.key] = graphql_value(value)
    return entry


def graphql_entry(item: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream item as a ``PhoneNumber`` with every field selected, as GraphQL answers it."""
    return _shape(PHONE_NUMBER, to_phone_number(item))


def neutralised(text: str) -> str:
    """``text`` as a spreadsheet must not evaluate it: a leading ``'`` when it starts like a
    formula, unless it is a phone number in E.164."""
    if text.startswith(FORMULA_STARTS) and not E164.fullmatch(text):
        return TEXT_MARKER + text
    return text


def csv_cell(value: object) -> str:
    """One leaf as a CSV cell: null empty, booleans ``true``/``false``, text neutralised."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return neutralised(str(graphql_value(value)))


def csv_row(item: Mapping[str, Any]) -> list[str]:
    """An upstream item as one CSV row, a cell per column of ``COLUMNS``."""
    record = to_phone_number(item)
    row: list[str] = []
    for _, path in _COLUMN_PATHS:
        value: object = record
        for attribute in path:
            value = getattr(value, attribute)
            if value is None:
                break
        row.append(csv_cell(value))
    return row


def trailer(rows: int, error: Mapping[str, Any] | None = None) -> bytes:
    """The NDJSON trailer line: complete with ``rows``, or ended early by ``error`` (its
    ``message`` and ``extensions``, as in a GraphQL error)."""
    status: dict[str, Any] = {"complete": error is None, "rows": rows}
    if error is not None:
        status["error"] = error
    return orjson.dumps({TRAILER_KEY: status}) + b"\n"


class ExportFormat(Protocol):
    """How one format writes an export: what comes first, each page's rows, the end."""

    name: str  # ``csv`` or ``ndjson``: the path's extension and the log's transport
    media_type: str

    def opening(self) -> bytes: ...
    def page(self, items: Iterable[Mapping[str, Any]]) -> bytes: ...
    def complete(self, rows: int) -> bytes: ...

    def ended_early(self, rows: int, error: Mapping[str, Any]) -> bytes | None:
        """The body's last bytes saying the export ended early (a trailer), or None when the
        format cannot say so: the body is then cut off instead, so that no client takes what
        it got for the whole list."""
        ...


@dataclass(slots=True)
class CsvFormat:
    """RFC 4180 CSV: the header row first, then a row per entry; no trailer."""

    name: str = "csv"
    # RFC 4180's media type with its ``header`` parameter (the first row names the columns).
    media_type: str = "text/csv; charset=utf-8; header=present"

    def _lines(self, rows: Iterable[Iterable[str]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(rows)
        return buffer.getvalue().encode("utf-8")

    def opening(self) -> bytes:
        return self._lines([COLUMNS])

    def page(self, items: Iterable[Mapping[str, Any]]) -> bytes:
        return self._lines(csv_row(item) for item in items)

    def complete(self, rows: int) -> bytes:
        return b""

    def ended_early(self, rows: int, error: Mapping[str, Any]) -> None:
        return None  # CSV has no place for a trailer a spreadsheet would not read as a row


@dataclass(slots=True)
class NdjsonFormat:
    """Newline-delimited JSON: an entry a line in the GraphQL shape, then the trailer."""

    name: str = "ndjson"
    media_type: str = "application/x-ndjson"

    def opening(self) -> bytes:
        return b""

    def page(self, items: Iterable[Mapping[str, Any]]) -> bytes:
        return b"".join(orjson.dumps(graphql_entry(item)) + b"\n" for item in items)

    def complete(self, rows: int) -> bytes:
        return trailer(rows)

    def ended_early(self, rows: int, error: Mapping[str, Any]) -> bytes:
        return trailer(rows, error)

"""Pure translation: filters to parameters, validation, cursors, and the tolerant reader."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.domain.arguments import cursor_at, decode_cursor, numbers_query, page_window
from gateway.domain.connection import PageResult
from gateway.domain.enums import (
    NumberState,
    NumberType,
    OwnerType,
    PhoneNumberSortField,
    PhoneNumberType,
    SortDirection,
    TelephonyType,
)
from gateway.domain.query import Fetch, PageWindow, UpstreamPage
from gateway.domain.reader import (
    LOCATION,
    NUMBER_COUNTS,
    OWNER,
    PHONE_NUMBER,
    to_number_counts,
    to_phone_number,
)
from gateway.domain.records import NumberFilter, NumberOrder, PageRequest
from gateway.errors import BadUserInput, UpstreamUnavailable
from gateway.schema import types as schema_types
from gateway.upstream.body import read_numbers_page


def test_unset_filter_fields_send_nothing() -> None:
    assert numbers_query(None, NumberFilter(), None).params == ()
    assert numbers_query(None, None, None).params == ()


def test_equal_filters_make_equal_queries_whatever_the_list_order() -> None:
    a = NumberFilter(
        included_telephony_types=[TelephonyType.MOBILE_NUMBER], owner_type=OwnerType.PEOPLE
    )
    b = NumberFilter(
        owner_type=OwnerType.PEOPLE, included_telephony_types=[TelephonyType.MOBILE_NUMBER]
    )
    assert numbers_query("org", a, None) == numbers_query("org", b, None)
    assert hash(numbers_query("org", a, None)) == hash(numbers_query("org", b, None))


@pytest.mark.parametrize(
    ("by", "direction", "wire"),
    [
        (PhoneNumberSortField.LAST_NAME, SortDirection.ASC, "lastName-asc"),
        (PhoneNumberSortField.LAST_NAME, SortDirection.DESC, "lastName-desc"),
        (PhoneNumberSortField.DN, SortDirection.ASC, "dn-asc"),
        (PhoneNumberSortField.EXTENSION, SortDirection.DESC, "extension-desc"),
    ],
)
def test_order(by: PhoneNumberSortField, direction: SortDirection, wire: str) -> None:
    query = numbers_query(None, None, NumberOrder(by=by, direction=direction))
    assert query.params == (("order", wire),)


def test_fetch_parameters_in_a_stable_order() -> None:
    query = numbers_query("ORG", NumberFilter(available=False, location_id="L"), None)
    fetch = Fetch(query, PageWindow(start=20, size=10), details=True)
    assert fetch.upstream_params() == [
        ("orgId", "ORG"),
        ("locationId", "L"),
        ("available", "false"),
        ("start", "20"),
        ("max", "10"),
        ("details", "true"),
    ]
    assert Fetch(query, None, details=True).upstream_params()[-2:] == [
        ("max", "1"),
        ("details", "true"),
    ]
    assert ("start", "0") not in Fetch(query, PageWindow(0, 5), False).upstream_params()


@pytest.mark.parametrize(
    ("flt", "fragment"),
    [
        (NumberFilter(available=True, owner_type=OwnerType.PEOPLE), "ownerType"),
        (NumberFilter(number_type=NumberType.EXTENSION, available=False), "EXTENSION"),
        (NumberFilter(number_type=NumberType.EXTENSION, state=NumberState.ACTIVE), "state"),
        (NumberFilter(reserved_number=False, available=True), "reservedNumber"),
        (NumberFilter(reserved_number=True, assigned=False), "reservedNumber.*assigned"),
        (NumberFilter(number_type=NumberType.EXTENSION, assigned=True), "assigned.*EXTENSION"),
        (NumberFilter(owner_name="x" * 256), "256"),
        (NumberFilter(owner_type=OwnerType.UNKNOWN), "UNKNOWN"),
        (NumberFilter(state=NumberState.UNKNOWN), "UNKNOWN"),
        (NumberFilter(phone_number_type=PhoneNumberType.UNKNOWN), "UNKNOWN"),
        (NumberFilter(included_telephony_types=[TelephonyType.UNKNOWN]), "UNKNOWN"),
        (NumberFilter(included_telephony_types=[]), "must not be empty"),
        (NumberFilter(owner_name="  "), "must not be empty"),
    ],
)
def test_invalid_filters(flt: NumberFilter, fragment: str) -> None:
    with pytest.raises(BadUserInput, match=fragment):
        numbers_query(None, flt, None)


def test_allowed_neighbours_of_the_conflicts() -> None:
    numbers_query(None, NumberFilter(available=False, owner_type=OwnerType.PEOPLE), None)
    numbers_query(None, NumberFilter(number_type=NumberType.NUMBER, available=True), None)
    numbers_query(None, NumberFilter(owner_name="x" * 255), None)
    numbers_query(None, NumberFilter(number_type=NumberType.NUMBER, assigned=False), None)
    numbers_query(None, NumberFilter(assigned=True, owner_type=OwnerType.PEOPLE), None)
    numbers_query(None, NumberFilter(available=True, assigned=False), None)
    numbers_query(None, NumberFilter(elin_enabled=True, number_type=NumberType.EXTENSION), None)


def test_assigned_and_elin_enabled_are_sent_after_the_older_filters() -> None:
    query = numbers_query(
        None,
        NumberFilter(elin_enabled=False, assigned=True, owner_type=OwnerType.PEOPLE),
        None,
    )
    assert query.params == (
        ("ownerType", "PEOPLE"),
        ("assigned", "true"),
        ("elinEnabled", "false"),
    )


def test_page_window_rules() -> None:
    query = numbers_query(None, None, None)
    assert page_window(query, None, 2000) == PageWindow(0, 100)
    assert page_window(query, PageRequest(first=2000, offset=7), 2000) == PageWindow(7, 2000)
    cursor = cursor_at(query.fingerprint, 41)
    assert page_window(query, PageRequest(first=3, after=cursor), 2000) == PageWindow(42, 3)
    for bad, fragment in [
        (PageRequest(first=0), "between 1 and 50"),
        (PageRequest(first=51), "between 1 and 50"),
        (PageRequest(offset=-1), "zero or more"),
        (PageRequest(offset=1, after=cursor), "cannot be combined"),
        (PageRequest(after="garbage!"), "not a cursor"),
        (PageRequest(after=""), "not a cursor"),
    ]:
        with pytest.raises(BadUserInput, match=fragment):
            page_window(query, bad, 50)


def test_cursor_is_bound_to_org_filter_and_order() -> None:
    base = numbers_query("A", NumberFilter(owner_type=OwnerType.PEOPLE), None)
    cursor = cursor_at(base.fingerprint, 9)
    assert decode_cursor(base, cursor) == 9
    others = [
        numbers_query("B", NumberFilter(owner_type=OwnerType.PEOPLE), None),
        numbers_query("A", NumberFilter(owner_type=OwnerType.PLACE), None),
        numbers_query(
            "A",
            NumberFilter(owner_type=OwnerType.PEOPLE),
            NumberOrder(by=PhoneNumberSortField.DN),
        ),
        numbers_query("A", NumberFilter(owner_type=OwnerType.PEOPLE, assigned=True), None),
        numbers_query("A", NumberFilter(owner_type=OwnerType.PEOPLE, elin_enabled=False), None),
    ]
    for other in others:
        with pytest.raises(BadUserInput, match="different orgId, filter or order"):
            decode_cursor(other, cursor)


def test_reader_tolerates_odd_items() -> None:
    item: dict[str, Any] = {
        "phoneNumber": "",
        "state": "PORTING",
        "phoneNumberType": "VANITY",
        "includedTelephonyTypes": "SATELLITE",
        "owner": {"id": "o1", "type": "HOLOGRAM", "lastName": "Doe"},
        "location": {"id": "L1"},
        "brandNewKey": {"nested": True},
        "mainNumber": "true",
    }
    number = to_phone_number(item)
    assert number.phone_number is None
    assert number.state is NumberState.UNKNOWN
    assert number.phone_number_type is PhoneNumberType.UNKNOWN
    assert number.included_telephony_types is TelephonyType.UNKNOWN
    assert number.owner is not None
    assert number.owner.type is OwnerType.UNKNOWN
    assert number.owner.first_name is None
    assert number.location.name is None
    assert number.main_number is True
    assert number.toll_free_number is False
    assert number.is_reserved_number is None
    bare = to_phone_number({})
    assert bare.owner is None
    assert bare.location.id == ""
    assert to_phone_number({"owner": {"type": "PEOPLE"}}).owner is None
    assert bare.elin_enabled is None
    assert to_phone_number({"elinEnabled": "true"}).elin_enabled is True


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("2026-01-15T09:30:00.000Z", datetime(2026, 1, 15, 9, 30, tzinfo=UTC)),
        ("2026-01-15T10:30:00+01:00", datetime(2026, 1, 15, 9, 30, tzinfo=UTC)),
        ("2026-01-15T09:30:00", datetime(2026, 1, 15, 9, 30, tzinfo=UTC)),  # documented UTC
        ("tomorrow", None),
        ("2026-13-45T99:00:00Z", None),
        ("0001-01-01T00:00:00+01:00", None),  # no UTC time exists for it
        (1768469400, None),
        ("", None),
        (None, None),
    ],
)
def test_owner_display_name_and_elin_expiry_time(sent: object, read: datetime | None) -> None:
    owner = to_phone_number(
        {
            "owner": {
                "id": "aa",
                "type": "AUTO_ATTENDANT",
                "displayName": "Main AA",
                "elinExpiryTime": sent,
            }
        }
    ).owner
    assert owner is not None
    assert (owner.first_name, owner.last_name, owner.display_name) == (None, None, "Main AA")
    assert owner.elin_expiry_time == read
    if read is not None:
        assert owner.elin_expiry_time is not None
        assert owner.elin_expiry_time.tzinfo is UTC


def test_reader_of_page_bodies() -> None:
    def read(content: bytes) -> tuple[list[Any], Any]:
        items, count = read_numbers_page(content)
        return list(items), count

    assert read(b"{}") == ([], None)
    assert read(b'{"phoneNumbers": null, "count": "x"}') == ([], None)
    assert read(b'{"phoneNumbers": [1, {"a": 1}, "s"], "count": {"total": 1}}') == (
        [{"a": 1}],
        {"total": 1},
    )
    with pytest.raises(UpstreamUnavailable, match="a JSON list, not an object"):
        read_numbers_page(b'[{"phoneNumber": "+1"}]')
    with pytest.raises(UpstreamUnavailable, match="phoneNumbers is a JSON str, not a list"):
        read_numbers_page(b'{"phoneNumbers": "x"}')


def test_counts_ignore_non_integers() -> None:
    counts = to_number_counts({"total": 5, "assigned": "3", "available": True, "elin": 4})
    assert counts.total == 5
    assert counts.elin == 4
    assert counts.assigned is None
    assert counts.available is None
    assert to_number_counts(None).total is None


def test_page_info_and_total_from_the_upstream() -> None:
    query = numbers_query(None, None, None)
    items = [{"phoneNumber": f"+1{i}"} for i in range(3)]
    with_count = PageResult(query, PageWindow(5, 3), UpstreamPage(items, {"total": 8}, True))
    info = with_count.page_info()
    assert (info.has_next_page, info.has_previous_page) == (False, True)
    assert decode_cursor(query, info.start_cursor or "") == 5
    assert decode_cursor(query, info.end_cursor or "") == 7
    assert [decode_cursor(query, edge.cursor) for edge in with_count.edges()] == [5, 6, 7]
    assert with_count.total_count() == 8
    walked_to_end = PageResult(query, PageWindow(5, 10), UpstreamPage(items, None, False))
    assert walked_to_end.total_count() == 8
    more = PageResult(query, PageWindow(0, 3), UpstreamPage(items, None, True))
    assert more.page_info().has_next_page is True
    with pytest.raises(UpstreamUnavailable):
        more.total_count()
    empty = PageResult(query, PageWindow(0, 3), UpstreamPage([], None, False)).page_info()
    assert (empty.start_cursor, empty.end_cursor, empty.has_next_page) == (None, None, False)


def test_the_reader_table_names_every_field_of_every_type_it_reads() -> None:
    """The table is the one description of the reader (the projection compiles it too), so a
    field added to the schema without a reading rule fails here."""
    for table in (PHONE_NUMBER, LOCATION, OWNER, NUMBER_COUNTS):
        described = getattr(schema_types, table.type.__name__)  # the record's GraphQL type
        definition = described.__strawberry_definition__
        plain = {field.python_name for field in definition.fields if field.base_resolver is None}
        assert {rule.attribute for rule in table.fields} == plain, table.type.__name__

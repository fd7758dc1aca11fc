"""A page's items kept as the upstream's bytes (``domain.upstream_items``): read by one rule
whatever path a body takes (``upstream.body``), sliced, picked and joined like the lists they
stand for, and stored by the page cache as they came, so a hit is read as a fresh answer is."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.data.page_cache import CachedPage
from gateway.domain.query import UpstreamPage
from gateway.domain.upstream_items import (
    PickedItems,
    UpstreamBody,
    UpstreamItems,
    decode_json,
    join,
)
from gateway.errors import UpstreamUnavailable
from gateway.upstream.body import NotJSON, read_numbers_page
from tests.conftest import FakeClock, examples

# -- one rule for every body ------------------------------------------------------------------

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),  # past 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
ENTRIES = st.lists(
    st.one_of(st.dictionaries(st.text(max_size=3), JSON, max_size=3), JSON), max_size=4
)
BODIES = st.one_of(
    st.fixed_dictionaries({}, optional={"phoneNumbers": ENTRIES | JSON, "count": JSON, "x": JSON}),
    JSON,
)
# Spellings msgspec.json.encode does not write, each one a body's text on its own terms.
ODD_TEXTS = [
    b'{"phoneNumbers":[{"a":1e400}],"count":{"total":3}}',  # a number past a double, skipped
    b'{"phoneNumbers":[{"a":123456789012345678901234567890}]}',
    b'{"phoneNumbers":[{"a":1},{"a":2}],"phoneNumbers":[{"b":3}]}',  # the last one counts
    b'{"phone\\u004eumbers":[{"a":"\\u00e9"}]}',  # an escaped key
    b'{"phoneNumbers":[{"a":"\xff"}]}',  # not UTF-8 where the shape pass skips
    b'{"phoneNumbers":[{"a":"\xed\xa0\x80"}]}',  # a surrogate encoded as UTF-8
    b'{"phoneNumbers":[{"a":"\\ud800"}]}',  # a lone surrogate escape
    b'{"phoneNumbers":[{"a":' + b"[" * 5000 + b"]" * 5000 + b"}]}",  # too deep
    b'{"phoneNumbers":[{"a":1},7,"x",null,{"b":[]}]}',  # entries that are not objects
    b'{"phoneNumbers":{"a":1}}',
    b'{"phoneNumbers":null,"count":5}',
    b"[]",
    b"",
    b"  {}  ",
    b'{"phoneNumbers":[]}garbage',
]


def reference(content: bytes) -> tuple[str, Any]:
    """What a page body reads as, by the rule the module docstring of ``upstream.body`` states:
    the whole body decoded, non-objects dropped, a count only when it is an object."""
    try:
        body = decode_json(content)
    except (msgspec.DecodeError, RecursionError):
        return ("not json", None)
    # Written here again, not taken from the module, so the two readings are independent.
    if not isinstance(body, dict):
        return ("fault", None)
    entries = body.get("phoneNumbers")
    if entries is not None and not isinstance(entries, list):
        return ("fault", None)
    count = body.get("count")
    items = [entry for entry in entries or () if isinstance(entry, dict)]
    return ("page", (items, count if isinstance(count, dict) else None))


def read(content: bytes) -> tuple[str, Any]:
    try:
        items, count = read_numbers_page(content)
    except NotJSON:
        return ("not json", None)
    except UpstreamUnavailable:
        return ("fault", None)
    return ("page", (list(items), count))


@pytest.mark.parametrize("content", ODD_TEXTS)
def test_an_odd_body_reads_as_its_whole_decode_says(content: bytes) -> None:
    assert read(content) == reference(content)


@settings(max_examples=examples(300), deadline=None, database=None)
@given(body=BODIES)
def test_every_body_reads_as_its_whole_decode_says(body: Any) -> None:
    content = msgspec.json.encode(body)
    assert read(content) == reference(content)


def test_the_fast_shape_pass_keeps_the_body_as_bytes() -> None:
    content = orjson.dumps({"phoneNumbers": [{"a": 1}, {"b": 2}], "count": {"total": 2}})
    items, count = read_numbers_page(content)
    assert count == {"total": 2}
    assert len(items) == 2
    ((body, positions),) = items.runs
    assert body.content is content  # not copied
    assert positions == range(2)
    assert items.runs[0][0]._entries is None  # nothing decoded yet
    assert items[1] == {"b": 2}


def test_the_whole_decode_names_only_the_objects() -> None:
    items, _ = read_numbers_page(b'{"phoneNumbers":[1,{"a":1},"x",{"b":2}]}')
    assert items.runs[0][1] == (1, 3)
    assert list(items) == [{"a": 1}, {"b": 2}]


def test_json_reads_numbers_exactly_and_a_number_past_a_double_as_infinity() -> None:
    """Where the gateway's reading differs from orjson's, it is the exact one (orjson reads an
    integer past 64 bits as a float) or the lenient one (orjson refuses the whole body)."""
    assert decode_json(b"123456789012345678901234567890") == 123456789012345678901234567890
    assert orjson.loads(b"123456789012345678901234567890") == 1.2345678901234568e29
    assert decode_json(b"1e400") == float("inf")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"1e400")


# -- slices, picks, joins ---------------------------------------------------------------------


def bodies_of(lists: list[list[dict[str, Any]]]) -> list[UpstreamItems]:
    """Each list as the items of one body (its entries with a non-object among them)."""
    made = []
    for entries in lists:
        content = orjson.dumps({"phoneNumbers": [7, *entries]})
        made.append(UpstreamItems.of_body(UpstreamBody(content), range(1, len(entries) + 1)))
    return made


ITEM_LISTS = st.lists(
    st.lists(st.fixed_dictionaries({"n": st.integers(0, 99)}), max_size=6), min_size=1, max_size=3
)


@settings(max_examples=examples(200), deadline=None, database=None)
@given(lists=ITEM_LISTS, data=st.data())
def test_items_slice_pick_and_join_as_the_lists_they_stand_for(
    lists: list[list[dict[str, Any]]], data: st.DataObject
) -> None:
    parts = bodies_of(lists)
    plain = [item for entries in lists for item in entries]
    joined = join(parts)
    assert isinstance(joined, UpstreamItems)
    assert joined == plain
    assert len(joined) == len(plain)
    start = data.draw(st.integers(-8, 8))
    stop = data.draw(st.integers(-8, 8) | st.none())
    step = data.draw(st.sampled_from([None, 1, 2, -1]))
    sliced = joined[start:stop:step]
    assert isinstance(sliced, UpstreamItems)
    assert list(sliced) == plain[start:stop:step]
    if plain:
        indices = data.draw(st.lists(st.integers(0, len(plain) - 1), max_size=8))
        assert list(joined.pick(indices)) == [plain[index] for index in indices]
        picked = PickedItems()
        for index in indices:
            picked.add(joined, index)
        assert list(picked.items()) == [plain[index] for index in indices]
        assert isinstance(picked.items(), UpstreamItems)
    # A plain list among the sources: dicts, in the same order.
    mixed = PickedItems()
    for index in range(len(plain)):
        mixed.add(joined if index % 2 else plain, index)
    assert mixed.items() == plain
    assert join([*parts, plain[:1]]) == plain + plain[:1]


def test_a_body_is_decoded_once_however_many_pages_read_it() -> None:
    body = UpstreamBody(orjson.dumps({"phoneNumbers": [{"a": 1}, {"a": 2}, {"a": 3}]}))
    whole = UpstreamItems.of_body(body, range(3))
    shares = [whole.pick([0, 2]), whole[1:], whole[:1]]
    assert [list(share) for share in shares] == [
        [{"a": 1}, {"a": 3}],
        [{"a": 2}, {"a": 3}],
        [{"a": 1}],
    ]
    entries = body.entries
    assert all(item is entries[i] for item, i in zip(shares[0], (0, 2), strict=True))


# -- the page cache keeps the bytes -----------------------------------------------------------


def test_a_cache_entry_holds_the_bodies_and_reads_back_the_same_page() -> None:
    first, second = bodies_of([[{"n": 1}, {"n": 2}, {"n": 3}], [{"n": 4}]])
    items = join([first.pick([2, 0]), second, first[1:2]])
    assert isinstance(items, UpstreamItems)
    page = UpstreamPage(items, {"total": 2**70}, has_more=True)
    raw = CachedPage.encode(page, stored_at_wall=1_700_000_000.5)
    assert first.runs[0][0].content in raw
    assert second.runs[0][0].content in raw
    assert raw.count(first.runs[0][0].content) == 1  # a body once, however many runs use it
    back, stored_at = CachedPage.decode_page(raw)
    assert stored_at == 1_700_000_000.5
    assert (back.items, back.count, back.has_more) == (list(items), {"total": 2**70}, True)
    assert isinstance(back.items, UpstreamItems)
    assert len(back.items.bodies) == 2


def test_a_page_made_of_dicts_is_stored_as_one_body_of_them() -> None:
    page = UpstreamPage([{"n": 1}, {"n": 2}], None, has_more=False)
    back, _ = CachedPage.decode_page(CachedPage.encode(page, stored_at_wall=5.0))
    assert back.items == [{"n": 1}, {"n": 2}]
    assert back.count is None
    assert isinstance(back.items, UpstreamItems)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda raw: raw[:-1],  # cut short
        lambda raw: raw + b"x",  # longer than it says
        lambda raw: b"numbers-gateway:v2" + raw[18:],  # another format
        lambda raw: raw[:30] + b"\x00" * 4 + raw[34:],  # a header that is not JSON
        lambda raw: orjson.dumps({"items": [], "count": None, "has_more": False, "stored_at": 1}),
    ],
)
def test_an_entry_that_is_not_one_is_refused(spoil: Any) -> None:
    page = UpstreamPage(bodies_of([[{"n": 1}]])[0], None, has_more=False)
    raw = spoil(CachedPage.encode(page, stored_at_wall=5.0))
    with pytest.raises((ValueError, msgspec.DecodeError, IndexError)):
        CachedPage.decode(raw, FakeClock())

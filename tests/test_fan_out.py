"""Several locations or owner types in one connection (issue 29): ``filter.locationIds`` and
``filter.ownerTypes`` answered by one upstream query per value, merged into one exact list.

Against the simulator behind a recording upstream: three locations and four owner types paged
to the end forward (cursors), by offset and backward, equal to the org-wide list filtered to
the values and to the per-value answers merged, with counts that add up; a property test over
random value sets, orders, page sizes and directions; the upstream calls each page makes
(at most one per value); every refusal before any upstream call; the page cache shared with
single-valued queries; a streamed fan-out equal to the held one; the entities; the cost
estimate; a change feed over two locations. The merge order is the simulator's own (its ties
broken alike: tested against every order it serves).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.data import fan_out
from gateway.data.page_stream import UpstreamWalk
from gateway.domain.arguments import (
    URL_TEXT_MAX_BYTES,
    cursor_at,
    list_query,
    numbers_query,
    part_filters,
)
from gateway.domain.enums import OwnerType, PhoneNumberSortField, SortDirection
from gateway.domain.fan_out import (
    MergeState,
    decode_merge_cursor,
    merge_cursor,
    merge_key,
    natural,
    positional_cursor,
)
from gateway.domain.query import EntityKey, FanOutQuery, Fetch, NumbersQuery, PageWindow
from gateway.domain.records import NumberFilter, NumberOrder
from gateway.errors import BadUserInput
from gateway.execution.cost import CALL_COST
from gateway.settings import Settings
from gateway.simulator.dataset import SimulatorWorld
from gateway.simulator.search import OrgIndex, parse_search
from tests.conftest import (
    RecordingTransport,
    estimated_cost,
    examples,
    graphql,
    live_settings,
    running_gateway,
)
from tests.test_change_feed import harness, next_error, next_event
from tests.test_incremental import Engine, engine_over, formatted, reassemble
from tests.test_relay_paging import _relay_spec

NODE = "phoneNumber extension location { id } owner { id type lastName }"
PAGE = f"""query Page($filter: PhoneNumberFilter, $order: PhoneNumberOrder, $first: Int,
    $after: String, $last: Int, $before: String, $page: PageInput) {{
  phoneNumbers(filter: $filter, order: $order, first: $first, after: $after, last: $last,
      before: $before, page: $page) {{
    totalCount
    pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }}
    edges {{ cursor node {{ {NODE} }} }}
  }}
}}"""
FOUR_TYPES = ["PEOPLE", "PLACE", "AUTO_ATTENDANT", "HUNT_GROUP"]
ORDERS: list[dict[str, str] | None] = [
    None,
    {"by": "LAST_NAME", "direction": "ASC"},
    {"by": "LAST_NAME", "direction": "DESC"},
    {"by": "DN", "direction": "ASC"},
    {"by": "DN", "direction": "DESC"},
    {"by": "EXTENSION", "direction": "ASC"},
    {"by": "EXTENSION", "direction": "DESC"},
]
_SORT = {"LAST_NAME": "lastName", "DN": "dn", "EXTENSION": "extension"}


def upstream_order(order: dict[str, str] | None) -> str | None:
    """The upstream's ``order`` value of a GraphQL ``PhoneNumberOrder``."""
    if order is None:
        return None
    return f"{_SORT[order['by']]}-{order['direction'].lower()}"


@pytest.fixture
def wide(world: SimulatorWorld) -> Engine:
    """An upstream that serves whole windows: upstream calls counted are windows asked."""
    return engine_over(world, page_cap=2000, max_page_size=2000)


@pytest.fixture
def capped(world: SimulatorWorld) -> Engine:
    """The simulator serving 5 entries a page: each window follows next links."""
    return engine_over(world, max_page_size=2000)


def three_locations(world: SimulatorWorld) -> list[str]:
    return list(world.demo_org.location_ids[:3])


async def run(engine: Engine, query: str, variables: dict[str, Any]) -> Any:
    """An operation's result, errors and all (``Engine.execute`` asserts there are none)."""
    return await engine.schema.execute(
        query, variable_values=variables, context_value=engine.context(incremental=False)
    )


async def connection(engine: Engine, **variables: Any) -> dict[str, Any]:
    data = await engine.execute(PAGE, variables)
    found: dict[str, Any] = data["phoneNumbers"]
    return found


async def whole_list(engine: Engine, flt: dict[str, Any] | None, order: Any) -> list[Any]:
    """The list in one request (``first: 2000`` holds the demo org's 1,000 entries)."""
    found = await connection(engine, filter=flt, order=order, first=2000)
    assert found["totalCount"] == len(found["edges"]) < 2000
    return [edge["node"] for edge in found["edges"]]


def client_side(nodes: list[Any], flt: dict[str, Any]) -> list[Any]:
    """The org-wide list filtered to the fan-out's values, by the client."""
    locations = flt.get("locationIds")
    types = flt.get("ownerTypes")
    return [
        node
        for node in nodes
        if (locations is None or node["location"]["id"] in locations)
        and (types is None or (node["owner"] or {}).get("type") in types)
    ]


def values_of(flt: dict[str, Any]) -> int:
    return len(flt.get("locationIds") or [1]) * len(flt.get("ownerTypes") or [1])


async def walk(
    engine: Engine,
    flt: dict[str, Any],
    order: Any,
    size: int,
    mode: str,
    *,
    calls_per_page: list[int] | None = None,
) -> list[Any]:
    """Every entry, paged to the end: ``forward`` by ``after`` cursors, ``backward`` by
    ``last``/``before`` from the end, ``offset`` by ``page.offset``. Each page's upstream
    calls are noted in ``calls_per_page``; every page's counts are the list's."""
    nodes: list[Any] = []
    variables: dict[str, Any] = {"filter": flt, "order": order}
    if mode == "offset":
        variables["page"] = {"first": size, "offset": 0}
    else:
        variables["last" if mode == "backward" else "first"] = size
    total = None
    while True:
        before = engine.upstream.calls
        found = await connection(engine, **variables)
        if calls_per_page is not None:
            calls_per_page.append(engine.upstream.calls - before)
        total = found["totalCount"] if total is None else total
        assert found["totalCount"] == total
        page = [edge["node"] for edge in found["edges"]]
        info = found["pageInfo"]
        if page:
            assert info["startCursor"] == found["edges"][0]["cursor"]
            assert info["endCursor"] == found["edges"][-1]["cursor"]
        if mode == "backward":
            nodes[:0] = page
            assert info["hasNextPage"] is (len(nodes) > len(page))
            if not info["hasPreviousPage"]:
                break
            variables["before"] = info["startCursor"]
        elif mode == "offset":
            nodes.extend(page)
            offset = variables["page"]["offset"] + size
            assert info["hasNextPage"] is (offset < total)
            if offset >= total:
                break
            variables["page"] = {"first": size, "offset": offset}
        else:
            nodes.extend(page)
            assert info["hasPreviousPage"] is (len(nodes) > len(page))
            if not info["hasNextPage"]:
                break
            variables["after"] = info["endCursor"]
    assert len(nodes) == total
    return nodes


# -- the domain's rules ------------------------------------------------------------------------


def test_a_list_of_one_value_is_the_single_valued_query_exactly() -> None:
    single = numbers_query(None, NumberFilter(location_id="L1", owner_type=OwnerType.PLACE), None)
    listed = list_query(
        None, NumberFilter(location_ids=["L1"], owner_types=[OwnerType.PLACE]), None
    )
    assert listed == single
    assert isinstance(listed, NumbersQuery)


def test_the_same_values_in_any_order_are_one_query_of_one_part_per_combination() -> None:
    order = NumberOrder(PhoneNumberSortField.LAST_NAME, SortDirection.DESC)
    one = list_query(
        "org",
        NumberFilter(location_ids=["B", "A"], owner_types=[OwnerType.PLACE, OwnerType.PEOPLE]),
        order,
    )
    other = list_query(
        "org",
        NumberFilter(location_ids=["A", "B"], owner_types=[OwnerType.PEOPLE, OwnerType.PLACE]),
        order,
    )
    assert isinstance(one, FanOutQuery)
    assert one == other
    assert one.fingerprint == other.fingerprint
    # Each part is the single-valued query of its combination, in a canonical order.
    expected = [
        numbers_query("org", NumberFilter(location_id=location, owner_type=kind), order)
        for location in ("A", "B")
        for kind in (OwnerType.PEOPLE, OwnerType.PLACE)
    ]
    assert list(one.parts) == expected
    assert one.order == "lastName-desc"
    assert part_filters(
        NumberFilter(location_ids=["B", "A"], state=None, owner_type=OwnerType.PLACE)
    ) == [
        NumberFilter(location_id="A", owner_type=OwnerType.PLACE),
        NumberFilter(location_id="B", owner_type=OwnerType.PLACE),
    ]


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (NumberFilter(location_ids=[]), "filter.locationIds must not be empty"),
        (NumberFilter(owner_types=[]), "filter.ownerTypes must not be empty"),
        (NumberFilter(location_ids=["A", "B", "A"]), "filter.locationIds[2] repeats"),
        (
            NumberFilter(owner_types=[OwnerType.PEOPLE, OwnerType.PEOPLE]),
            "filter.ownerTypes[1] repeats filter.ownerTypes[0]",
        ),
        (NumberFilter(location_ids=["A"], location_id="A"), "cannot be combined with"),
        (
            NumberFilter(owner_types=[OwnerType.PLACE], owner_type=OwnerType.PLACE),
            "filter.ownerTypes cannot be combined with filter.ownerType",
        ),
        (NumberFilter(owner_types=[OwnerType.UNKNOWN, OwnerType.PEOPLE]), "UNKNOWN only"),
        (
            NumberFilter(owner_types=[OwnerType.PEOPLE], available=True),
            "filter.available: true cannot be combined with filter.ownerTypes",
        ),
        (NumberFilter(location_ids=["A", " "]), "filter.locationIds must not be empty"),
        (NumberFilter(location_ids=["A", "x" * 2000]), "filter.locationIds is too long"),
        (NumberFilter(location_ids=["A", "B\n"]), "not printable"),
        (NumberFilter(location_ids=[str(n) for n in range(51)]), "at most 50"),
        (
            NumberFilter(
                location_ids=[str(n) for n in range(8)],
                owner_types=[
                    OwnerType.PEOPLE,
                    OwnerType.PLACE,
                    OwnerType.CALL_QUEUE,
                    OwnerType.HUNT_GROUP,
                    OwnerType.AUTO_ATTENDANT,
                    OwnerType.VIRTUAL_LINE,
                    OwnerType.ROUTE_LIST,
                ],
            ),
            "56 combinations",
        ),
        # A part is checked as its single-valued filter is.
        (
            NumberFilter(
                location_ids=["A", "B"], number_type=None, reserved_number=True, assigned=True
            ),
            "filter.reservedNumber cannot be combined with filter.assigned",
        ),
    ],
)
def test_bad_lists_are_refused_as_the_single_valued_fields_are(
    flt: NumberFilter, message: str
) -> None:
    with pytest.raises(BadUserInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        list_query(None, flt, None)


def test_location_phone_numbers_take_location_ids_only_as_their_own_id() -> None:
    key = EntityKey("location_id", "L1", "Location")
    own = list_query(None, NumberFilter(location_ids=["L1"]), None, entity_key=key)
    assert own == numbers_query(None, None, None, entity_key=key)
    with pytest.raises(BadUserInput, match=r"filter\.locationId is already set"):
        list_query(None, NumberFilter(location_ids=["L2"]), None, entity_key=key)
    with pytest.raises(BadUserInput, match=r"ask the root phoneNumbers with filter\.locationIds"):
        list_query(None, NumberFilter(location_ids=["L1", "L2"]), None, entity_key=key)
    # Owner types fan out under a location's key; its id is every part's locationId.
    fanned = list_query(
        None,
        NumberFilter(owner_types=[OwnerType.PEOPLE, OwnerType.PLACE]),
        None,
        entity_key=key,
    )
    assert isinstance(fanned, FanOutQuery)
    assert all(("locationId", "L1") in part.params for part in fanned.parts)


def test_natural_order_reads_digits_by_value_whatever_their_length() -> None:
    texts = ["10", "9", "009", "0", "", "1" * 5000, "A1", "B", None, "٣"]
    ranked = sorted(texts, key=natural)
    assert ranked == ["0", "009", "9", "10", "1" * 5000, "", "A1", "B", "٣", None]


def test_the_simulators_every_order_is_the_merge_order(world: SimulatorWorld) -> None:
    """The simulator serves each order sorted by exactly ``merge_key`` (so a merge of several
    values' lists equals its org-wide list), ties included: the demo org has extension-only
    entries of several locations that share an extension, which only the location id
    breaks."""
    index = OrgIndex(world.demo_org)
    extensions = [e.extension for e in world.demo_org.entries if e.phone_number is None]
    assert len(extensions) - len(set(extensions)) > 100  # the tie-break is exercised
    for order in ORDERS:
        wire = upstream_order(order)
        params = [] if wire is None else [("order", wire)]
        served = [entry.payload for entry in index.matching(parse_search(params), None)]
        assert served == sorted(served, key=merge_key(wire)), order


# -- over the simulator ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["forward", "offset", "backward"])
async def test_three_locations_page_to_the_end_as_the_org_wide_list_filtered(
    world: SimulatorWorld, wide: Engine, mode: str
) -> None:
    flt = {"locationIds": three_locations(world)}
    expected = client_side(await whole_list(wide, None, None), flt)
    per_location = [
        await whole_list(wide, {"locationId": location}, None) for location in flt["locationIds"]
    ]
    assert sorted(map(json.dumps, expected)) == sorted(
        json.dumps(node) for nodes in per_location for node in nodes
    )
    calls: list[int] = []
    assert await walk(wide, flt, None, 37, mode, calls_per_page=calls) == expected
    assert len(calls) == -(-len(expected) // 37)
    # One upstream request per location and page (no entity-batch walk, no probe).
    if mode == "backward":
        assert calls[0] <= 6  # each location's tail: its probe, then its placed page
        assert all(count <= 3 for count in calls[1:])
    else:
        assert all(count <= 3 for count in calls)
        assert calls[0] == 3


@pytest.mark.parametrize("mode", ["forward", "offset", "backward"])
async def test_four_owner_types_page_to_the_end_in_every_order_with_counts_that_add_up(
    wide: Engine, mode: str
) -> None:
    flt = {"ownerTypes": FOUR_TYPES}
    for order in (None, {"by": "LAST_NAME", "direction": "DESC"}):
        expected = client_side(await whole_list(wide, None, order), flt)
        assert await walk(wide, flt, order, 50, mode) == expected
    totals = [
        (await connection(wide, filter={"ownerType": kind}, first=1))["totalCount"]
        for kind in FOUR_TYPES
    ]
    assert (await connection(wide, filter=flt, first=1))["totalCount"] == sum(totals)
    fields = "assigned unAssigned inActive extensionOnly total mobileNumber serviceNumber elin"
    counts_query = f"query ($f: PhoneNumberFilter) {{ numberCounts(filter: $f) {{ {fields} }} }}"
    merged = (await wide.execute(counts_query, {"f": flt}))["numberCounts"]
    singles = [
        (await wide.execute(counts_query, {"f": {"ownerType": kind}}))["numberCounts"]
        for kind in FOUR_TYPES
    ]
    assert merged == {name: sum(one[name] for one in singles) for name in fields.split()}
    assert merged["total"] == sum(totals)


async def test_a_walk_over_a_capped_upstream_is_the_same_list(
    world: SimulatorWorld, capped: Engine
) -> None:
    """Each value's page is completed by following the upstream's next links."""
    flt = {"locationIds": three_locations(world), "ownerTypes": ["PEOPLE", "PLACE"]}
    expected = client_side(await whole_list(capped, None, None), flt)
    assert await walk(capped, flt, None, 40, "forward") == expected
    assert await walk(capped, flt, None, 40, "backward") == expected


TYPE_SETS = st.lists(
    st.sampled_from(["PEOPLE", "PLACE", "VIRTUAL_LINE", "AUTO_ATTENDANT", "CALL_QUEUE",
                     "HUNT_GROUP", "ROUTE_LIST"]),
    min_size=2, max_size=5, unique=True,
)  # fmt: skip


@settings(
    max_examples=examples(40),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    locations=st.one_of(
        st.none(), st.lists(st.integers(0, 4), min_size=1, max_size=5, unique=True)
    ),
    types=st.one_of(st.none(), TYPE_SETS),
    order=st.sampled_from(ORDERS),
    # Pages of an item or two walk a list an item at a time: each way once, over a small
    # list (below); drawn pages are larger, so forty examples take seconds, not a minute.
    size=st.integers(8, 150),
    mode=st.sampled_from(["forward", "offset", "backward"]),
)
@example(locations=[1, 2], types=["AUTO_ATTENDANT", "CALL_QUEUE"], order=None, size=1,
         mode="forward")  # fmt: skip
@example(locations=[3, 4], types=["HUNT_GROUP", "PLACE"], order=ORDERS[2], size=1,
         mode="backward")  # fmt: skip
@example(locations=None, types=["CALL_QUEUE", "AUTO_ATTENDANT"], order=ORDERS[1], size=2,
         mode="offset")  # fmt: skip
async def test_any_fan_out_walks_as_the_sorted_union_and_the_org_wide_list_filtered(
    world: SimulatorWorld,
    wide: Engine,
    locations: list[int] | None,
    types: list[str] | None,
    order: dict[str, str] | None,
    size: int,
    mode: str,
) -> None:
    ids = world.demo_org.location_ids
    flt: dict[str, Any] = {}
    if locations is not None:
        flt["locationIds"] = [ids[index] for index in locations]
    if types is not None:
        flt["ownerTypes"] = types
    if values_of(flt) < 2:
        flt["ownerTypes"] = ["PEOPLE", "PLACE"]
    org_wide = client_side(await whole_list(wide, None, order), flt)
    calls: list[int] = []
    walked = await walk(wide, flt, order, size, mode, calls_per_page=calls)
    # The union of the values' own lists, sorted by the documented key ...
    singles: list[Any] = []
    for location in flt.get("locationIds") or [None]:
        for kind in flt.get("ownerTypes") or [None]:
            single = {"locationId": location, "ownerType": kind}
            singles += await whole_list(wide, {k: v for k, v in single.items() if v}, order)
    assert walked == sorted(singles, key=merge_key(upstream_order(order)))
    # ... which is the org-wide list filtered, in every order (the simulator breaks ties so).
    assert walked == org_wide
    parts = values_of(flt)
    assert all(count <= parts for count in calls[1:])
    assert calls[0] <= (2 if mode == "backward" else 1) * parts


async def test_a_value_whose_list_ended_is_not_asked_again_unless_the_counts_are(
    world: SimulatorWorld, wide: Engine
) -> None:
    # London's numbers (+44) all come before Bangalore's (+91): London ends first.
    bangalore, london = world.demo_org.location_ids[2:4]
    flt = {"locationIds": [bangalore, london], "numberType": "NUMBER"}
    query = """query ($filter: PhoneNumberFilter, $after: String) {
      phoneNumbers(filter: $filter, first: 20, after: $after) {
        pageInfo { hasNextPage endCursor } nodes { location { id } } } }"""
    calls: list[int] = []
    after = None
    seen: list[str] = []
    while True:
        before = wide.upstream.calls
        found = (await wide.execute(query, {"filter": flt, "after": after}))["phoneNumbers"]
        calls.append(wide.upstream.calls - before)
        seen += [node["location"]["id"] for node in found["nodes"]]
        if not found["pageInfo"]["hasNextPage"]:
            break
        after = found["pageInfo"]["endCursor"]
    londons = seen.count(london)
    assert seen == [london] * londons + [bangalore] * (len(seen) - londons)
    ended = next(index for index in range(len(calls)) if (index + 1) * 20 > londons)
    # Both asked until London's list ends within a page; then only Bangalore.
    assert calls[: ended + 1] == [2] * (ended + 1)
    assert calls[ended + 1 :] == [1] * (len(calls) - ended - 1)
    assert len(calls) - ended - 1 >= 2
    # With the counts selected, an ended value is asked too (its count is needed).
    before = wide.upstream.calls
    counted = await connection(wide, filter=flt, first=20, after=after)
    assert wide.upstream.calls - before == 2
    assert counted["totalCount"] == len(seen)


async def test_each_page_asks_each_value_for_at_most_the_page_from_its_position(
    world: SimulatorWorld, wide: Engine
) -> None:
    flt = {"locationIds": three_locations(world)}
    first = await connection(wide, filter=flt, first=30)
    asked = [dict(request.url.params) for request in wide.upstream.requests]
    assert sorted(params["locationId"] for params in asked) == sorted(flt["locationIds"])
    assert all(params["max"] == "30" and "start" not in params for params in asked)
    query = list_query(None, NumberFilter(location_ids=flt["locationIds"]), None)
    assert isinstance(query, FanOutQuery)
    state = decode_merge_cursor(query, first["pageInfo"]["endCursor"], "after").after
    assert state is not None
    assert sum(state.positions) == 30
    wide.upstream.requests.clear()
    await connection(wide, filter=flt, first=30, after=first["pageInfo"]["endCursor"])
    starts = {
        request.url.params["locationId"]: int(request.url.params.get("start", 0))
        for request in wide.upstream.requests
    }
    expected = {
        part.params[0][1]: position
        for part, position in zip(query.parts, state.positions, strict=True)
    }
    assert starts == {location: expected[location] for location in starts}
    assert len(starts) == 3


async def test_the_page_cache_is_shared_with_single_valued_queries(world: SimulatorWorld) -> None:
    engine = engine_over(world, page_cap=2000, max_page_size=2000, cache_ttl=60)
    locations = three_locations(world)
    flt = {"locationIds": locations}
    first = await connection(engine, filter=flt, first=30)
    assert engine.upstream.calls == 3
    # Each location's own first page of 30 (with its counts, as the fan-out asked) is a hit.
    for location in locations:
        await connection(engine, filter={"locationId": location}, first=30)
    assert engine.upstream.calls == 3
    # So is each location's page from where the fan-out's cursor left it; and a location
    # the first page took nothing from asks the very page it asked then (a hit).
    query = list_query(None, NumberFilter(location_ids=locations), None)
    assert isinstance(query, FanOutQuery)
    state = decode_merge_cursor(query, first["pageInfo"]["endCursor"], "after").after
    assert state is not None
    moved = sum(1 for position in state.positions if position)
    assert 1 <= moved < 3  # the locations' numbers are blocks (area codes): one came first
    second = await connection(engine, filter=flt, first=30, after=first["pageInfo"]["endCursor"])
    assert engine.upstream.calls == 3 + moved
    for part, position in zip(query.parts, state.positions, strict=True):
        after = cursor_at(part.fingerprint, position - 1) if position else None
        single = await connection(
            engine, filter={"locationId": part.params[0][1]}, first=30, after=after
        )
        assert {edge["node"]["phoneNumber"] for edge in single["edges"]} >= {
            edge["node"]["phoneNumber"]
            for edge in second["edges"]
            if edge["node"]["location"]["id"] == part.params[0][1]
        }
    assert engine.upstream.calls == 3 + moved
    # And the other way round: a location asked alone first is not asked again.
    fresh = engine_over(world, page_cap=2000, max_page_size=2000, cache_ttl=60)
    await connection(fresh, filter={"locationId": locations[1]}, first=25)
    await connection(fresh, filter=flt, first=25)
    assert fresh.upstream.calls == 3


async def test_equal_asks_in_one_operation_share_a_call(
    world: SimulatorWorld, wide: Engine
) -> None:
    locations = three_locations(world)
    query = """query ($many: PhoneNumberFilter, $one: PhoneNumberFilter) {
      many: phoneNumbers(filter: $many, first: 10) { totalCount nodes { phoneNumber } }
      one: phoneNumbers(filter: $one, first: 10) { totalCount nodes { phoneNumber } }
      counts: numberCounts(filter: $many) { total } }"""
    data = await wide.execute(
        query, {"many": {"locationIds": locations}, "one": {"locationId": locations[0]}}
    )
    # The single-valued field is one of the fan-out's calls; the counts ride on the pages.
    assert wide.upstream.calls == 3
    assert data["counts"]["total"] == data["many"]["totalCount"]


# -- refusals ----------------------------------------------------------------------------------


def _refusals(world: SimulatorWorld) -> list[dict[str, Any]]:
    a, b, c = three_locations(world)
    return [
        {"filter": {"locationIds": []}},
        {"filter": {"locationIds": [a, b, a]}},
        {"filter": {"locationIds": [a], "locationId": a}},
        {"filter": {"ownerTypes": ["PEOPLE"], "ownerType": "PEOPLE"}},
        {"filter": {"ownerTypes": ["UNKNOWN", "PEOPLE"]}},
        {"filter": {"ownerTypes": ["PEOPLE", "PLACE"], "available": True}},
        {"filter": {"locationIds": [a, "x" * 2000]}},
        {"filter": {"locationIds": [a, ""]}},
        {"filter": {"locationIds": [f"L{n}" for n in range(51)]}},
        {"filter": {"locationIds": [a, b, c], "ownerTypes": FOUR_TYPES[:2]}, "page": {"offset": 1990, "first": 20}},
        # A cursor of the single-valued query, and of another fan-out.
        {"filter": {"locationIds": [a, b]}, "after": cursor_at(numbers_query(None, None, None).fingerprint, 3)},
        {"filter": {"locationIds": [a, b]}, "after": "not a cursor"},
    ]  # fmt: skip


async def test_every_refusal_is_bad_user_input_before_any_upstream_call(
    world: SimulatorWorld, wide: Engine
) -> None:
    counts = "query ($filter: PhoneNumberFilter) { numberCounts(filter: $filter) { total } }"
    for variables in _refusals(world):
        result = await run(wide, PAGE, variables)
        assert result.errors, variables
        assert {error.extensions["code"] for error in result.errors} == {"BAD_USER_INPUT"}
        assert result.data == {"phoneNumbers": None}
        if "page" not in variables and "after" not in variables:  # the filter's own refusals
            counted = await run(wide, counts, {"filter": variables["filter"]})
            assert counted.errors[0].extensions["code"] == "BAD_USER_INPUT"
    assert wide.upstream.calls == 0


async def test_a_cursor_answers_only_the_query_that_issued_it(
    world: SimulatorWorld, wide: Engine
) -> None:
    a, b, c = three_locations(world)
    page = await connection(wide, filter={"locationIds": [a, b]}, first=5)
    cursor = page["pageInfo"]["endCursor"]
    calls = wide.upstream.calls
    for variables in (
        {"filter": {"locationIds": [a, c]}, "after": cursor},
        {"filter": {"locationIds": [a, b]}, "order": ORDERS[1], "after": cursor},
        {"filter": {"locationId": a}, "after": cursor},
        {"filter": {"locationIds": [a, b]}, "before": cursor[:-2]},
    ):
        result = await run(wide, PAGE, variables)
        assert result.errors[0].extensions["code"] == "BAD_USER_INPUT"
    assert wide.upstream.calls == calls
    # The same values in another order are the same query: the cursor continues it.
    again = await connection(wide, filter={"locationIds": [b, a]}, first=5, after=cursor)
    assert again["pageInfo"]["hasPreviousPage"] is True


async def test_the_bound_is_the_setting(
    world: SimulatorWorld, recorder: RecordingTransport
) -> None:
    locations = three_locations(world)
    async with running_gateway(live_settings(max_filter_values=2), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        query = "query ($f: PhoneNumberFilter) { phoneNumbers(filter: $f) { totalCount } }"
        body = await graphql(client, query, {"f": {"locationIds": locations}})
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert "GATEWAY_MAX_FILTER_VALUES" in body["errors"][0]["message"]
        assert recorder.calls == 0
        body = await graphql(client, query, {"f": {"locationIds": locations[:2]}})
        assert body["data"]["phoneNumbers"]["totalCount"] > 0
        assert recorder.calls == 2


# -- streamed, entities, cost ------------------------------------------------------------------

STREAMED = f"""query ($filter: PhoneNumberFilter, $first: Int) {{
  phoneNumbers(filter: $filter, first: $first) {{
    totalCount pageInfo {{ hasNextPage hasPreviousPage }}
    edges @stream(initialCount: 2) {{ cursor node {{ {NODE} }} }}
  }}
}}"""


async def test_a_streamed_fan_out_is_the_held_one_merged_page_by_page(
    world: SimulatorWorld, capped: Engine
) -> None:
    flt = {"locationIds": three_locations(world), "ownerTypes": ["PEOPLE", "CALL_QUEUE"]}
    held = await connection(capped, filter=flt, first=300)
    held_calls = capped.upstream.calls
    frames = capped.frames(STREAMED, {"filter": flt, "first": 300})
    payloads = []
    async for frame in await frames:
        if not payloads:
            # The initial payload waited for each value's first upstream page only.
            assert capped.upstream.calls - held_calls == 6
        payloads.append(formatted(frame))
    streamed = reassemble(payloads)["phoneNumbers"]
    assert len(payloads) > 3
    assert streamed["edges"] == held["edges"]  # cursors included
    assert streamed["totalCount"] == held["totalCount"]
    assert streamed["pageInfo"]["hasNextPage"] == held["pageInfo"]["hasNextPage"]


async def test_a_streamed_windows_page_info_continues_where_the_held_one_does(
    world: SimulatorWorld, capped: Engine
) -> None:
    flt = {"ownerTypes": ["PEOPLE", "PLACE"]}
    query = """query ($filter: PhoneNumberFilter) { phoneNumbers(filter: $filter, first: 120) {
      pageInfo { hasNextPage endCursor } edges @stream { cursor } } }"""
    payloads = [formatted(frame) async for frame in await capped.frames(query, {"filter": flt})]
    streamed = reassemble(payloads)["phoneNumbers"]
    held = await connection(capped, filter=flt, first=120)
    assert [edge["cursor"] for edge in streamed["edges"]] == [e["cursor"] for e in held["edges"]]
    # Sent before the walk merged that far, endCursor is positional: it continues the same.
    after_streamed = await connection(
        capped, filter=flt, first=50, after=streamed["pageInfo"]["endCursor"]
    )
    after_held = await connection(capped, filter=flt, first=50, after=held["pageInfo"]["endCursor"])
    assert after_streamed["edges"] == after_held["edges"]


ENTITIES = """query ($reps: [_Any!]!, $filter: PhoneNumberFilter) {
  _entities(representations: $reps) {
    ... on Location { phoneNumbers(filter: $filter, first: 500) { totalCount nodes { phoneNumber extension } } }
    ... on Organization { phoneNumbers(filter: $filter, first: 500) { totalCount nodes { phoneNumber extension } } }
  } }"""


async def test_entities_fan_out_and_a_location_takes_only_its_own_id(
    world: SimulatorWorld, wide: Engine
) -> None:
    a, b, _ = three_locations(world)
    own = {"__typename": "Location", "id": a}
    alone = await wide.execute(ENTITIES, {"reps": [own], "filter": None})
    listed = await wide.execute(ENTITIES, {"reps": [own], "filter": {"locationIds": [a]}})
    assert listed == alone
    calls = wide.upstream.calls
    refused = await run(wide, ENTITIES, {"reps": [own], "filter": {"locationIds": [a, b]}})
    assert refused.errors[0].extensions["code"] == "BAD_USER_INPUT"
    assert wide.upstream.calls == calls
    types = {"ownerTypes": ["PEOPLE", "PLACE"]}
    by_type = await wide.execute(ENTITIES, {"reps": [own], "filter": types})
    root = await connection(wide, filter={**types, "locationIds": [a]}, first=500)
    assert by_type["_entities"][0]["phoneNumbers"]["nodes"] == [
        {"phoneNumber": e["node"]["phoneNumber"], "extension": e["node"]["extension"]}
        for e in root["edges"]
    ]
    org = {"__typename": "Organization", "id": world.demo_org.id}
    organization = await wide.execute(ENTITIES, {"reps": [org], "filter": {"locationIds": [a, b]}})
    expected = client_side(await whole_list(wide, None, None), {"locationIds": [a, b]})
    assert organization["_entities"][0]["phoneNumbers"]["totalCount"] == len(expected)


@pytest.mark.parametrize(
    ("arguments", "selection", "cost"),
    [
        ('filter: {locationIds: ["a", "b", "c"]}, first: 100', "nodes { phoneNumber }", 3 * 150),
        ('filter: {locationIds: ["a", "b", "c"], ownerTypes: [PEOPLE, PLACE]}', "nodes { phoneNumber }", 6 * 150),
        ('filter: {locationIds: "a"}', "nodes { phoneNumber }", 150),
        ('filter: {ownerTypes: [PEOPLE, PLACE]}', "totalCount", 2 * CALL_COST),
        ('filter: {ownerTypes: [PEOPLE, PLACE]}, page: {offset: 200, first: 100}', "nodes { phoneNumber }", 2 * (50 + 300)),
        ('filter: {ownerTypes: [PEOPLE, PLACE]}, last: 10', "nodes { phoneNumber }", 2 * (100 + 10)),
        ("filter: $f", "nodes { phoneNumber }", 4 * 150),
        ("filter: {locationIds: $ids}", "nodes { phoneNumber }", 150),
    ],
)  # fmt: skip
def test_the_cost_counts_every_values_calls(arguments: str, selection: str, cost: int) -> None:
    document = (
        "query ($f: PhoneNumberFilter, $ids: [ID!]) "
        f"{{ phoneNumbers({arguments}) {{ {selection} }} }}"
    )
    variables = {"f": {"ownerTypes": FOUR_TYPES}}
    assert estimated_cost(document, variables=variables) == cost


def test_counts_and_feeds_cost_a_call_per_value() -> None:
    counts = '{ numberCounts(filter: {locationIds: ["a", "b", "c"]}) { total } }'
    assert estimated_cost(counts) == 3 * CALL_COST
    feed = "subscription { phoneNumberChanges(filter: {ownerTypes: [PEOPLE, PLACE]}) { kind } }"
    single = "subscription { phoneNumberChanges(filter: {ownerType: PEOPLE}) { kind } }"
    assert estimated_cost(feed) == estimated_cost(single) + CALL_COST  # type: ignore[operator]


async def test_an_http_client_pages_three_locations_to_the_end(
    world: SimulatorWorld, gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    """As a frontend does it: one query, cursors, until hasNextPage is false."""
    flt = {"locationIds": three_locations(world)}
    query = """query ($f: PhoneNumberFilter, $after: String) {
      phoneNumbers(filter: $f, first: 100, after: $after) {
        totalCount pageInfo { hasNextPage endCursor } nodes { phoneNumber location { id } } } }"""
    nodes: list[Any] = []
    after = None
    while True:
        body = await graphql(gateway, query, {"f": flt, "after": after})
        found = body["data"]["phoneNumbers"]
        nodes += found["nodes"]
        if not found["pageInfo"]["hasNextPage"]:
            break
        after = found["pageInfo"]["endCursor"]
    assert len(nodes) == found["totalCount"] == 618
    assert {node["location"]["id"] for node in nodes} == set(flt["locationIds"])
    assert recorder.calls <= 3 * 7


@settings(
    max_examples=examples(100),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    order=st.sampled_from(ORDERS),
    count=st.none() | st.tuples(st.sampled_from(["first", "last"]), st.integers(1, 150)),
    positional=st.tuples(st.booleans(), st.booleans()),
)
async def test_every_window_from_cursors_is_the_relay_specifications_slice(
    wide: Engine,
    data: st.DataObject,
    order: dict[str, str] | None,
    count: tuple[str, int] | None,
    positional: tuple[bool, bool],
) -> None:
    """Any ``after``/``before`` of the merged list's own entries (each a cursor holding a
    position per value, or a positional one) with ``first`` or ``last``: the slice Relay's
    specification defines, of the whole merged list."""
    flt = {"ownerTypes": ["PLACE", "VIRTUAL_LINE", "ROUTE_LIST"]}
    every = (await connection(wide, filter=flt, order=order, first=2000))["edges"]
    n = len(every)
    query = list_query(
        None,
        NumberFilter(owner_types=[OwnerType.PLACE, OwnerType.VIRTUAL_LINE, OwnerType.ROUTE_LIST]),
        None
        if order is None
        else NumberOrder(PhoneNumberSortField(order["by"]), SortDirection(order["direction"])),
    )
    assert isinstance(query, FanOutQuery)

    def cursor_of(index: int, by_position: bool) -> str:
        if by_position:
            return positional_cursor(query.fingerprint, index)
        return str(every[index]["cursor"])

    after = data.draw(st.none() | st.integers(0, n - 1))
    before = data.draw(st.none() | st.integers(0, n - 1))
    first = count[1] if count and count[0] == "first" else None
    last = count[1] if count and count[0] == "last" else None
    found = await connection(
        wide,
        filter=flt,
        order=order,
        first=first,
        last=last,
        after=None if after is None else cursor_of(after, positional[0]),
        before=None if before is None else cursor_of(before, positional[1]),
    )
    expected = _relay_spec(n, after, before, first, last)
    assert [edge["node"] for edge in found["edges"]] == [every[index]["node"] for index in expected]
    # Each entry's cursor holds the same position per value, whichever page served it (what
    # it says of values that ended is what that page knew).
    assert [positions(query, edge["cursor"]) for edge in found["edges"]] == [
        positions(query, every[index]["cursor"]) for index in expected
    ]


def positions(query: FanOutQuery, cursor: str) -> tuple[int, ...]:
    state = decode_merge_cursor(query, cursor, "after").after
    assert state is not None
    return state.positions


async def test_an_exports_whole_merged_walk_is_the_org_wide_list_filtered(
    world: SimulatorWorld, capped: Engine
) -> None:
    """What an export calls (``data.fan_out.merged_walk`` over each part's whole walk): the
    merged list a page at a time, each part's next upstream page asked only when the merge
    needs it, and closing it ends every walk."""
    locations = three_locations(world)
    flt = {"locationIds": locations, "ownerTypes": ["PEOPLE", "PLACE"]}
    order = {"by": "LAST_NAME", "direction": "DESC"}
    expected = client_side(await whole_list(capped, None, order), flt)
    query = list_query(
        None,
        NumberFilter(location_ids=locations, owner_types=[OwnerType.PEOPLE, OwnerType.PLACE]),
        NumberOrder(PhoneNumberSortField.LAST_NAME, SortDirection.DESC),
    )
    assert isinstance(query, FanOutQuery)
    source = capped.source
    walk = UpstreamWalk(source.upstream, source.callers.identify("Bearer demo-admin"), page_size=7)

    def walks() -> list[Any]:
        return [walk(Fetch(part, PageWindow(0, 1 << 62), details=False)) for part in query.parts]

    before = capped.upstream.calls
    items = [item async for page in fan_out.merged_walk(query, walks()) for item in page.items]
    assert [
        (item.get("phoneNumber"), item.get("extension"), item["location"]["id"]) for item in items
    ] == [(node["phoneNumber"], node["extension"], node["location"]["id"]) for node in expected]
    assert capped.upstream.calls - before >= len(query.parts)
    # Closed after its first chunk: no part asks for another page.
    before = capped.upstream.calls
    pages = fan_out.merged_walk(query, walks())
    first = await anext(pages)
    await pages.aclose()
    assert first.items
    assert capped.upstream.calls - before == len(query.parts)


# -- a change feed over two locations ----------------------------------------------------------


async def test_a_feed_over_two_locations_delivers_a_change_in_either_once() -> None:
    async with harness() as h:
        org = h.world.demo_org
        watched, other = list(org.location_ids[:2]), org.location_ids[2]
        flt = {"locationIds": watched}
        stream = await h.subscribe(variables={"filter": flt})
        assert (await next_event(stream))["kind"] == "SYNCED"
        # The same values in another order are the same feed; each poll asks each location.
        twin = await h.subscribe(variables={"filter": {"locationIds": watched[::-1]}})
        assert (await next_event(twin))["kind"] == "SYNCED"
        assert len(h.feeds.feeds) == 1
        assert h.recorder.calls == 2

        def free_number(location: str) -> str:
            entry = next(
                e
                for e in org.entries
                if e.location_id == location
                and e.phone_number
                and e.owner_id is None
                and not e.payload.get("mainNumber")
            )
            assert entry.phone_number is not None
            return entry.phone_number

        second, unwatched, first = (
            free_number(watched[1]),
            free_number(other),
            free_number(watched[0]),
        )
        await h.change(action="assign", phoneNumber=second)
        await h.poll()
        await h.change(action="assign", phoneNumber=unwatched)
        await h.poll()
        await h.change(action="assign", phoneNumber=first)
        await h.poll()
        for _ in range(3):  # unchanged polls say nothing
            await h.poll()
        assert h.recorder.calls == 2 + 6 * 2
        events = [await next_event(stream) for _ in range(2)]
        assert [(e["kind"], e["number"]["phoneNumber"]) for e in events] == [
            ("ASSIGNED", second),
            ("ASSIGNED", first),
        ]
        assert [e["number"]["location"]["id"] for e in events] == [watched[1], watched[0]]
        twin_events = [await next_event(twin) for _ in range(2)]
        assert twin_events == events
        # Nothing else is pending: the next event is the next change, once.
        await h.change(action="unassign", phoneNumber=second)
        await h.poll()
        event = await next_event(stream)
        assert (event["kind"], event["previous"]["phoneNumber"]) == ("UNASSIGNED", second)
        await stream.aclose()
        await twin.aclose()


async def test_a_feeds_bad_list_is_refused_before_any_upstream_call() -> None:
    async with harness() as h:
        stream = await h.subscribe(variables={"filter": {"locationIds": []}})
        error = await next_error(stream)
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert h.recorder.calls == 0
        assert not h.feeds.feeds


def test_a_cursor_of_the_widest_fan_out_fits_in_what_a_cursor_may_be() -> None:
    """``GATEWAY_MAX_FILTER_VALUES`` is at most 64: a cursor of 64 values, each at a position
    of ten million and ended, is still accepted (``check_url_text``) and read back."""
    widest = Settings.model_fields["max_filter_values"].metadata
    assert any(getattr(bound, "le", None) == 64 for bound in widest)
    parts = [f"L{n:02d}" for n in range(64)]
    query = list_query(None, NumberFilter(location_ids=parts), None, max_filter_values=64)
    assert isinstance(query, FanOutQuery)
    state = MergeState((9_999_999,) * 64, (True,) * 64)
    cursor = merge_cursor(query.fingerprint, 63, state)
    assert len(cursor.encode()) <= URL_TEXT_MAX_BYTES
    assert decode_merge_cursor(query, cursor, "after").after == state


async def test_one_values_upstream_failure_fails_the_field_with_its_code(
    world: SimulatorWorld,
) -> None:
    a, b, c = three_locations(world)

    def failing(request: httpx.Request) -> httpx.Response | None:
        if request.url.params.get("locationId") == b:
            return httpx.Response(503, json={"message": "down"}, headers={"TrackingID": "T_1"})
        return None

    engine = engine_over(world, failing, page_cap=2000, max_page_size=2000)
    query = """query ($many: PhoneNumberFilter, $one: PhoneNumberFilter) {
      many: phoneNumbers(filter: $many, first: 10) { totalCount }
      one: phoneNumbers(filter: $one, first: 10) { totalCount } }"""
    result = await run(
        engine, query, {"many": {"locationIds": [a, b, c]}, "one": {"locationId": a}}
    )
    assert result.data["many"] is None
    assert result.data["one"]["totalCount"] > 0
    assert [error.extensions["code"] for error in result.errors] == ["UPSTREAM_UNAVAILABLE"]
    streamed = [
        formatted(frame)
        async for frame in await engine.frames(STREAMED, {"filter": {"locationIds": [a, b]}})
    ]
    assert streamed[0]["data"] == {"phoneNumbers": None}
    assert streamed[0]["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"

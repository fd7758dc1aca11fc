"""Relay's connection arguments (``first``/``after``/``last``/``before``) on every
``phoneNumbers`` field, beside ``page``: the windows they make (checked against the Relay
specification's own algorithm, ``ApplyCursorsToEdges`` then ``first``/``last``), the refusals
before any upstream call, the upstream calls each window costs (``last`` without ``before``
is placed by a probe that carries the counts), forward and backward walks over the
simulator equal to the upstream's order, in the held and the streamed answer alike, and the
cost estimate reading them as it reads ``page.first``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.arguments import cursor_at, numbers_query, page_request, page_window
from gateway.domain.query import PageWindow, TailWindow
from gateway.domain.records import PageRequest
from gateway.errors import BadUserInput
from gateway.execution.cost import CALL_COST
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import estimated_cost, examples
from tests.test_incremental import Engine, engine_over, formatted, reassemble

QUERY = numbers_query(None, None, None)


def cursor(position: int) -> str:
    return cursor_at(QUERY.fingerprint, position)


def relay(**arguments: Any) -> PageRequest | None:
    return page_request(None, **arguments)


def window(page: PageRequest | None, max_page_size: int = 2000) -> PageWindow | TailWindow:
    return page_window(QUERY, page, max_page_size)


# -- the windows -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({}, PageWindow(0, 100)),
        ({"first": 3}, PageWindow(0, 3)),
        ({"first": 3, "after": cursor(41)}, PageWindow(42, 3)),
        ({"after": cursor(41)}, PageWindow(42, 100)),
        ({"last": 3, "before": cursor(10)}, PageWindow(7, 3)),
        ({"last": 30, "before": cursor(10)}, PageWindow(0, 10)),
        # ``before`` alone: the default page of entries before it.
        ({"before": cursor(150)}, PageWindow(50, 100)),
        ({"before": cursor(0)}, PageWindow(0, 0)),
        ({"after": cursor(5), "before": cursor(9)}, PageWindow(6, 3)),
        ({"after": cursor(5), "before": cursor(9), "last": 2}, PageWindow(7, 2)),
        ({"after": cursor(5), "before": cursor(9), "first": 2}, PageWindow(6, 2)),
        ({"first": 10, "before": cursor(4)}, PageWindow(0, 4)),
        ({"after": cursor(9), "before": cursor(5)}, PageWindow(10, 0)),
        # ``last`` without ``before``: the list's end, placed once the total is known.
        ({"last": 5}, TailWindow(0, 5)),
        ({"last": 5, "after": cursor(9)}, TailWindow(10, 5)),
        # Relay sends the other direction's arguments as null: null is absent.
        ({"first": None, "after": None, "last": 4, "before": cursor(8)}, PageWindow(4, 4)),
    ],
)
def test_relay_arguments_make_offset_windows(
    arguments: dict[str, Any], expected: PageWindow | TailWindow
) -> None:
    assert window(relay(**arguments)) == expected


def test_a_tail_window_is_placed_by_the_total() -> None:
    tail = TailWindow(lower=10, size=5)
    assert tail.probe == PageWindow(10, 5)
    assert tail.resolve(100) == PageWindow(95, 5)
    assert tail.resolve(12) == PageWindow(10, 2)
    assert tail.resolve(3) == PageWindow(10, 0)


def _relay_spec(
    n: int, after: int | None, before: int | None, first: int | None, last: int | None
) -> list[int]:
    """The Relay cursor connections specification, section 4.3, over positions 0..n-1:
    ApplyCursorsToEdges (remove up to and including ``after``, from ``before`` on), then
    ``first`` keeps the first entries and ``last`` the last ones. The default page size (100)
    stands in for a count that is not given, backward when ``before`` or ``last`` says so."""
    edges = list(range(n))
    if after is not None:
        edges = [e for e in edges if e > after]
    if before is not None:
        edges = [e for e in edges if e < before]
    if first is None and last is None:
        if before is None:
            first = 100
        else:
            last = 100
    if first is not None:
        edges = edges[:first]
    if last is not None:
        edges = edges[-last:] if last else []
    return edges


@settings(max_examples=examples(500), deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 300),
    count=st.none() | st.tuples(st.sampled_from(["first", "last"]), st.integers(1, 250)),
)
def test_every_window_is_the_relay_specifications_slice(
    data: st.DataObject, n: int, count: tuple[str, int] | None
) -> None:
    """Cursors of the list's own entries (a cursor is a position: once the list changes, a
    position past its end names no entry, and the window it makes is simply shorter)."""
    after = data.draw(st.none() | st.integers(0, n - 1))
    before = data.draw(st.none() | st.integers(0, n - 1))
    first = count[1] if count and count[0] == "first" else None
    last = count[1] if count and count[0] == "last" else None
    made = window(
        relay(
            first=first,
            last=last,
            after=None if after is None else cursor(after),
            before=None if before is None else cursor(before),
        )
    )
    placed = made.resolve(n) if isinstance(made, TailWindow) else made
    served = list(range(placed.start, min(n, placed.start + placed.size)))
    assert served == _relay_spec(n, after, before, first, last)


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"first": 2, "last": 2}, "first and last cannot be combined"),
        ({"first": 0}, "^first must be between 1 and 50"),
        ({"last": 51}, "^last must be between 1 and 50"),
        ({"before": "garbage!"}, "^before is not a cursor"),
        ({"after": ""}, "^after is not a cursor"),
        ({"after": "x" * 2000}, "^after is too long"),
        (
            {"before": cursor_at(numbers_query("other", None, None).fingerprint, 3)},
            "^before was issued for a different orgId, filter or order",
        ),
    ],
)
def test_bad_relay_arguments_are_refused_by_their_own_names(
    arguments: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(BadUserInput, match=fragment):
        window(relay(**arguments), max_page_size=50)


def test_page_and_relay_arguments_cannot_be_mixed() -> None:
    assert page_request(PageRequest(first=3)) == PageRequest(first=3)
    assert page_request(None) is None
    with pytest.raises(BadUserInput, match="page cannot be combined with first, before"):
        page_request(PageRequest(offset=3), first=2, before=cursor(5))


# -- over the simulator ------------------------------------------------------------------------

PEOPLE = "filter: {ownerType: PEOPLE}"
EDGES = "edges { cursor node { phoneNumber extension owner { id } } }"
PAGE_INFO = "pageInfo { hasNextPage hasPreviousPage startCursor endCursor }"


@pytest.fixture
def engine(world: SimulatorWorld) -> Engine:
    # The simulator serves 5 entries a page: every window of more follows next links.
    return engine_over(world, max_page_size=2000)


@pytest.fixture
def wide(world: SimulatorWorld) -> Engine:
    """An upstream that serves whole windows: upstream calls counted are windows asked."""
    return engine_over(world, page_cap=2000, max_page_size=2000)


async def upstream_order(engine: Engine, arguments: str) -> list[dict[str, Any]]:
    data = await engine.execute(
        f"{{ phoneNumbers({arguments} page: {{first: 2000}}) {{ totalCount {EDGES} }} }}"
    )
    connection = data["phoneNumbers"]
    assert len(connection["edges"]) == connection["totalCount"] < 2000
    return connection["edges"]  # type: ignore[no-any-return]


async def relay_walk(
    engine: Engine, arguments: str, size: int, *, backward: bool
) -> list[dict[str, Any]]:
    """Every edge of the list as a Relay client pages it: ``first``/``after`` by
    ``endCursor`` while ``hasNextPage``, or ``last``/``before`` by ``startCursor`` while
    ``hasPreviousPage`` (prepended), from no cursor at all."""
    edges: list[dict[str, Any]] = []
    cursor_argument = ""
    while True:
        count = f"last: {size}" if backward else f"first: {size}"
        data = await engine.execute(
            f"{{ phoneNumbers({arguments} {count}{cursor_argument}) "
            f"{{ totalCount {PAGE_INFO} {EDGES} }} }}"
        )
        connection = data["phoneNumbers"]
        page, info = connection["edges"], connection["pageInfo"]
        assert page, "no page of a walk is empty"
        assert info["startCursor"] == page[0]["cursor"]
        assert info["endCursor"] == page[-1]["cursor"]
        if backward:
            edges[:0] = page
            assert info["hasNextPage"] is (len(edges) > len(page))
            if not info["hasPreviousPage"]:
                return edges
            cursor_argument = f', before: "{info["startCursor"]}"'
        else:
            edges.extend(page)
            assert info["hasPreviousPage"] is (len(edges) > len(page))
            if not info["hasNextPage"]:
                assert len(edges) == connection["totalCount"]
                return edges
            cursor_argument = f', after: "{info["endCursor"]}"'


FILTERS = [PEOPLE, "filter: {numberType: NUMBER} order: {by: LAST_NAME, direction: DESC}", ""]


@settings(
    max_examples=examples(40),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(arguments=st.sampled_from(FILTERS), size=st.integers(7, 160), backward=st.booleans())
async def test_relay_walks_equal_the_upstream_order(
    wide: Engine, arguments: str, size: int, backward: bool
) -> None:
    expected = await upstream_order(wide, arguments)
    assert await relay_walk(wide, arguments, size, backward=backward) == expected


async def test_walks_over_a_capped_upstream_equal_its_order(engine: Engine) -> None:
    """The same walks when every window takes several upstream pages (next links)."""
    expected = await upstream_order(engine, PEOPLE)
    assert len(expected) == 543
    assert await relay_walk(engine, PEOPLE, 40, backward=False) == expected
    assert await relay_walk(engine, PEOPLE, 40, backward=True) == expected


ENTITIES = """query ($reps: [_Any!]!) { _entities(representations: $reps) {
    ... on Location { phoneNumbers(last: 3) { EDGES } }
    ... on Person { phoneNumbers(first: 1) { EDGES } }
    ... on Organization { phoneNumbers(ARGUMENTS) { PAGE_INFO EDGES } } } }"""


async def test_each_entity_field_takes_the_relay_arguments(
    world: SimulatorWorld, engine: Engine
) -> None:
    people = await upstream_order(engine, PEOPLE)
    owner = people[0]["node"]["owner"]["id"]
    org = await engine.execute("{ phoneNumbers(first: 1) { nodes { location { id } } } }")
    location = org["phoneNumbers"]["nodes"][0]["location"]["id"]
    org_id = world.demo_org.id
    by_location = await upstream_order(engine, f'filter: {{locationId: "{location}"}}')
    by_owner = await upstream_order(engine, f'filter: {{ownerId: "{owner}"}}')
    by_org = await upstream_order(engine, f'orgId: "{org_id}"')
    reps = [
        {"__typename": "Location", "id": location},
        {"__typename": "Person", "id": owner},
        {"__typename": "Organization", "id": org_id},
    ]
    document = ENTITIES.replace("EDGES", EDGES).replace("PAGE_INFO", PAGE_INFO)
    data = await engine.execute(
        document.replace("ARGUMENTS", f'last: 3, before: "{by_org[10]["cursor"]}"'),
        {"reps": reps},
    )
    located, personal, organization = data["_entities"]
    assert located["phoneNumbers"]["edges"] == by_location[-3:]
    assert personal["phoneNumbers"]["edges"] == by_owner[:1]
    assert organization["phoneNumbers"]["edges"] == by_org[7:10]
    assert organization["phoneNumbers"]["pageInfo"]["hasPreviousPage"] is True
    # The organization's id is the query's orgId, which a cursor is bound to: the root
    # field's cursor (no orgId) does not continue it.
    result = await engine.schema.execute(
        document.replace("ARGUMENTS", f'last: 3, before: "{people[10]["cursor"]}"'),
        variable_values={"reps": reps[2:]},
        context_value=engine.context(incremental=False),
    )
    [error] = result.errors
    assert error.extensions["code"] == "BAD_USER_INPUT"
    assert error.path == ["_entities", 0, "phoneNumbers"]


async def test_mixing_page_and_relay_arguments_is_refused_before_any_upstream_call(
    engine: Engine,
) -> None:
    result = await engine.schema.execute(
        "{ phoneNumbers(page: {first: 3}, first: 3) { totalCount } }",
        context_value=engine.context(incremental=False),
    )
    [error] = result.errors
    assert error.extensions["code"] == "BAD_USER_INPUT"
    assert "page cannot be combined with first" in error.message
    assert result.data == {"phoneNumbers": None}
    assert engine.upstream.calls == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("first: 2, last: 2", "first and last cannot be combined"),
        ("last: 0", "last must be between 1 and 2000, got 0"),
        ('before: "nope"', "before is not a cursor"),
    ],
)
async def test_bad_relay_arguments_fail_the_field_before_any_upstream_call(
    engine: Engine, arguments: str, message: str
) -> None:
    result = await engine.schema.execute(
        f"{{ phoneNumbers({arguments}) {{ totalCount }} }}",
        context_value=engine.context(incremental=False),
    )
    [error] = result.errors
    assert error.extensions["code"] == "BAD_USER_INPUT"
    assert message in error.message
    assert engine.upstream.calls == 0


async def test_the_last_entries_take_two_calls_or_one_when_the_list_ends_in_the_probe(
    wide: Engine,
) -> None:
    every = await upstream_order(wide, PEOPLE)
    calls = wide.upstream.calls
    query = "{ phoneNumbers(%s last: %d) { totalCount %s %s } }"
    data = await wide.execute(query % (PEOPLE, 10, PAGE_INFO, EDGES))
    connection = data["phoneNumbers"]
    assert connection["edges"] == every[-10:]
    assert connection["totalCount"] == 543
    assert connection["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": True,
        "startCursor": every[-10]["cursor"],
        "endCursor": every[-1]["cursor"],
    }
    probe, placed = (dict(wide.upstream.params(i)) for i in range(calls, calls + 2))
    assert wide.upstream.calls == calls + 2
    # The probe is the forward first page of the same size, with the counts; the page the
    # total placed needs no counts of its own.
    assert (probe.get("start"), probe["max"], probe.get("details")) == (None, "10", "true")
    assert (placed["start"], placed["max"], placed.get("details")) == ("533", "10", None)
    calls = wide.upstream.calls
    data = await wide.execute(query % (PEOPLE, 600, PAGE_INFO, EDGES))
    assert data["phoneNumbers"]["edges"] == every
    assert data["phoneNumbers"]["pageInfo"]["hasPreviousPage"] is False
    assert wide.upstream.calls == calls + 1, "the list ended within the probe: one call"


async def test_a_backward_page_from_a_cursor_is_one_call_without_counts(wide: Engine) -> None:
    every = await upstream_order(wide, PEOPLE)
    calls = wide.upstream.calls
    data = await wide.execute(
        f'{{ phoneNumbers({PEOPLE} last: 4, before: "{every[100]["cursor"]}") '
        f"{{ {PAGE_INFO} {EDGES} }} }}"
    )
    assert data["phoneNumbers"]["edges"] == every[96:100]
    assert data["phoneNumbers"]["pageInfo"]["hasNextPage"] is True
    assert data["phoneNumbers"]["pageInfo"]["hasPreviousPage"] is True
    assert wide.upstream.calls == calls + 1
    asked = dict(wide.upstream.params())
    assert (asked["start"], asked["max"], asked.get("details")) == ("96", "4", None)


async def test_an_empty_window_asks_only_for_the_counts(wide: Engine) -> None:
    every = await upstream_order(wide, PEOPLE)
    calls = wide.upstream.calls
    data = await wide.execute(
        f'{{ phoneNumbers({PEOPLE} before: "{every[0]["cursor"]}") '
        f"{{ totalCount {PAGE_INFO} {EDGES} }} }}"
    )
    assert data["phoneNumbers"] == {
        "totalCount": 543,
        "pageInfo": {
            "hasNextPage": True,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        },
        "edges": [],
    }
    assert wide.upstream.calls == calls + 1
    assert dict(wide.upstream.params())["max"] == "1"


async def test_relay_and_page_cursors_are_one_kind(wide: Engine) -> None:
    """A cursor from either style continues the other: both name a position of one query."""
    every = await upstream_order(wide, PEOPLE)
    middle = every[200]["cursor"]
    forward = await wide.execute(
        f'{{ phoneNumbers({PEOPLE} page: {{first: 3, after: "{middle}"}}) {{ {EDGES} }} }}'
    )
    relayed = await wide.execute(
        f'{{ phoneNumbers({PEOPLE} first: 3, after: "{middle}") {{ {EDGES} }} }}'
    )
    assert forward == relayed
    assert relayed["phoneNumbers"]["edges"] == every[201:204]


async def test_a_cursor_of_another_filter_is_refused_as_before(wide: Engine) -> None:
    every = await upstream_order(wide, PEOPLE)
    result = await wide.schema.execute(
        f'{{ phoneNumbers(last: 3, before: "{every[5]["cursor"]}") {{ totalCount }} }}',
        context_value=wide.context(incremental=False),
    )
    [error] = result.errors
    assert error.extensions["code"] == "BAD_USER_INPUT"
    assert "before was issued for a different orgId, filter or order" in error.message


# -- streamed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        "last: 50",  # placed by a probe, then a walk longer than a page
        "last: 600",  # the list ends within the probe
        "last: 3",
        "first: 30, after: AFTER",
        "last: 30, before: BEFORE",
        "before: BEFORE",
    ],
)
async def test_a_streamed_relay_window_equals_the_held_one(
    world: SimulatorWorld, arguments: str
) -> None:
    engine = engine_over(world, max_page_size=10)  # pages of 5, windows of 10 at most held
    every = await _people(world)
    arguments = arguments.replace("AFTER", f'"{every[7]["cursor"]}"')
    arguments = arguments.replace("BEFORE", f'"{every[400]["cursor"]}"')
    frames = await engine.collect(
        f"{{ phoneNumbers({PEOPLE} {arguments}) {{ totalCount {PAGE_INFO} "
        "edges @stream(initialCount: 2) { cursor node { phoneNumber extension owner { id } } } "
        "} }"
    )
    assert all("errors" not in frame for frame in frames), frames
    streamed = reassemble(frames)["phoneNumbers"]
    edges = streamed["edges"]
    start = every.index(edges[0])
    assert edges == every[start : start + len(edges)]
    expected_size = {
        "last: 50": 50,
        "last: 600": 543,
        "last: 3": 3,
        "first: 30, after: AFTER": 30,
        "last: 30, before: BEFORE": 30,
        "before: BEFORE": 10,  # the default page, within GATEWAY_MAX_PAGE_SIZE
    }
    template = next(key for key in expected_size if _fills(key, arguments, every))
    assert len(edges) == expected_size[template]
    end = start + len(edges)
    assert streamed["totalCount"] == 543
    assert streamed["pageInfo"] == {
        "hasNextPage": end < 543,
        "hasPreviousPage": start > 0,
        "startCursor": edges[0]["cursor"],
        "endCursor": edges[-1]["cursor"],
    }


def _fills(template: str, arguments: str, every: list[dict[str, Any]]) -> bool:
    filled = template.replace("AFTER", f'"{every[7]["cursor"]}"')
    return filled.replace("BEFORE", f'"{every[400]["cursor"]}"') == arguments


async def _people(world: SimulatorWorld) -> list[dict[str, Any]]:
    return await upstream_order(engine_over(world, page_cap=2000, max_page_size=2000), PEOPLE)


async def test_a_streamed_empty_window_is_one_payload_from_the_counts(
    world: SimulatorWorld,
) -> None:
    engine = engine_over(world, max_page_size=10)
    every = await _people(world)
    frames = await engine.collect(
        f'{{ phoneNumbers({PEOPLE} before: "{every[0]["cursor"]}") {{ totalCount {PAGE_INFO} '
        "nodes @stream(initialCount: 2) { phoneNumber } } }"
    )
    [frame] = frames
    assert frame["data"]["phoneNumbers"] == {
        "totalCount": 543,
        "pageInfo": {
            "hasNextPage": True,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        },
        "nodes": [],
    }
    assert engine.upstream.calls == 1


async def test_a_streamed_last_page_sends_its_first_rows_after_two_upstream_pages(
    world: SimulatorWorld,
) -> None:
    """``last`` without ``before``, streamed: the probe's first page (with the counts) and
    the placed window's first page, then the initial payload."""
    engine = engine_over(world, max_page_size=10)
    frames = await engine.frames(
        f"{{ phoneNumbers({PEOPLE} last: 60) {{ totalCount "
        "nodes @stream(initialCount: 1) { phoneNumber } } }"
    )
    initial = formatted(await anext(frames))
    assert engine.upstream.calls == 2
    assert initial["data"]["phoneNumbers"]["totalCount"] == 543
    probe, placed = (dict(engine.upstream.params(i)) for i in range(2))
    assert probe.get("start") is None
    assert probe["details"] == "true"
    assert placed["start"] == str(543 - 60)
    await frames.aclose()  # type: ignore[attr-defined]


# -- cost --------------------------------------------------------------------------------------


def test_the_cost_reads_first_and_last_as_it_reads_page_first() -> None:
    def cost(arguments: str, selection: str = "nodes { phoneNumber }") -> int | None:
        return estimated_cost(f"{{ phoneNumbers({arguments}) {{ {selection} }} }}")

    assert cost("first: 40") == cost("page: {first: 40}") == CALL_COST + 40
    assert cost('last: 40, before: "c"') == CALL_COST + 40
    assert estimated_cost("{ phoneNumbers { nodes { phoneNumber } } }") == CALL_COST + 100
    # Placing the list's last entries costs the probe's call too.
    assert cost("last: 40") == 2 * CALL_COST + 40
    assert cost("last: 40", "totalCount") == 2 * CALL_COST
    variables = estimated_cost(
        "query ($n: Int, $b: String) { phoneNumbers(last: $n, before: $b) "
        "{ nodes { phoneNumber } } }",
        variables={"n": 7, "b": "c"},
    )
    assert variables == CALL_COST + 7
    assert (
        estimated_cost(
            "query ($n: Int) { phoneNumbers(first: $n) { nodes { phoneNumber } } }",
            variables={"n": "many"},
        )
        == CALL_COST + 2000
    ), "unreadable: the most"
    streamed = estimated_cost(
        "{ phoneNumbers(last: 10000) { nodes @stream(initialCount: 5) { phoneNumber } } }",
        max_stream_items=100_000,
    )
    # The probe, the window's five upstream pages of 2,000, and the initial payload's items.
    assert streamed == (1 + 5) * CALL_COST + 5

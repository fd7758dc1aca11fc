"""Entity batches (issue 19): a router's batch of ``Person``/``Location`` representations is
answered by one walk of the list they partition, with exactly the answers one call per entity
gives; the walk's planned call count, the fallbacks, and the ``GATEWAY_MAX_ENTITIES`` bounds."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.data import entity_batches
from gateway.data.entity_batches import answer_calls
from gateway.data.page_cache import CacheEvent
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, UpstreamPage
from gateway.simulator import build_demo_world, create_simulator_app
from gateway.simulator.dataset import SimulatorWorld, webex_id, world_from_items
from tests.conftest import RecordingTransport, examples, graphql, live_settings, running_gateway

PEOPLE_PAGE = """
query ($r: [_Any!]!) { _entities(representations: $r) {
  ... on Person { id phoneNumbers { totalCount nodes { phoneNumber } } } } }
"""


def people(keys: list[str]) -> dict[str, Any]:
    return {"r": [{"__typename": "Person", "id": key} for key in keys]}


def people_ids(world: SimulatorWorld) -> list[str]:
    return list(
        dict.fromkeys(
            entry.owner_id
            for entry in world.demo_org.entries
            if entry.owner_type == "PEOPLE" and entry.owner_id
        )
    )


@asynccontextmanager
async def admin_gateway(
    world: SimulatorWorld, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, RecordingTransport]]:
    recorder = RecordingTransport(httpx.ASGITransport(app=create_simulator_app(world)))
    # The cost estimate counts every representation as its own call (150 x 150 here).
    overrides.setdefault("max_cost", 1_000_000)
    async with running_gateway(live_settings(cache_ttl=0, **overrides), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        yield client, recorder


async def test_150_people_are_one_planned_walk_not_150_calls(world: SimulatorWorld) -> None:
    keys = people_ids(world)[:150]
    people_entries = sum(entry.owner_type == "PEOPLE" for entry in world.demo_org.entries)
    assert len(keys) == 150
    assert people_entries <= 2000
    async with admin_gateway(world) as (client, recorder):
        body = await graphql(client, PEOPLE_PAGE, people(keys))
        assert "errors" not in body, body
        # The plan: the org's PEOPLE numbers fit one 2,000-entry page, so one call in all.
        assert recorder.calls == 1
        assert recorder.params(0) == [("ownerType", "PEOPLE"), ("max", "2000"), ("details", "true")]
        answers = body["data"]["_entities"]
        for key, answer in zip(keys, answers, strict=True):
            expected = [e for e in world.demo_org.entries if e.owner_id == key]
            assert answer["phoneNumbers"]["totalCount"] == len(expected)
            assert [n["phoneNumber"] for n in answer["phoneNumbers"]["nodes"]] == [
                e.phone_number for e in expected
            ]

        # The same fields with an explicit order cannot be partitioned: one call each.
        ordered = PEOPLE_PAGE.replace("phoneNumbers {", "phoneNumbers(order: {by: DN}) {")
        body = await graphql(client, ordered, people(keys[:5]))
        assert "errors" not in body, body
        assert recorder.calls == 1 + 5
        assert all(dict(recorder.params(i))["ownerId"] for i in range(1, 6))


WIDE_PAGE = PEOPLE_PAGE.replace("phoneNumbers {", "phoneNumbers(page: {first: 2000}) {")


async def test_a_walk_of_several_pages_is_planned_from_the_first_pages_total() -> None:
    world = build_demo_world(size=10_000, seed=3)
    keys = people_ids(world)
    people_entries = sum(entry.owner_type == "PEOPLE" for entry in world.demo_org.entries)
    pages = -(-people_entries // 2000)
    assert pages >= 3
    async with admin_gateway(world) as (client, recorder):
        body = await graphql(client, WIDE_PAGE, people(keys[: pages + 1]))
        assert "errors" not in body, body
        assert recorder.calls == pages, "the walk: fewer calls than the entities"
        starts = sorted(int(dict(recorder.params(i)).get("start", "0")) for i in range(pages))
        assert starts == [2000 * index for index in range(pages)]

        # Windows adding up to less than the list: the first page was the probe, then each
        # entity makes its own call.
        body = await graphql(client, WIDE_PAGE, people(keys[: pages - 1]))
        assert "errors" not in body, body
        assert recorder.calls == pages + 1 + (pages - 1)


async def test_a_walk_holds_no_more_entries_than_its_members_windows() -> None:
    """15 root aliases of one entry each (cost 765) may not pull in the org's ~5,000 PEOPLE
    numbers: the walk is bounded by the members' windows (15 entries), so under an upstream
    page cap of 100 the request makes 1 + 15 upstream requests, not 50 for the walk."""
    world = build_demo_world(size=10_000, seed=3)
    keys = people_ids(world)[:15]
    aliases = " ".join(
        f'p{index}: phoneNumbers(filter: {{ownerId: "{key}"}}, page: {{first: 1}}) '
        "{ nodes { phoneNumber } }"
        for index, key in enumerate(keys)
    )
    recorder = RecordingTransport(
        httpx.ASGITransport(app=create_simulator_app(world, page_cap=100))
    )
    settings = live_settings(cache_ttl=0, max_root_fields=15)
    async with running_gateway(settings, recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        body = await graphql(client, f"{{ {aliases} }}")
    assert "errors" not in body, body
    assert recorder.calls == 1 + 15
    assert all(int(dict(recorder.params(i))["max"]) <= 15 for i in range(recorder.calls))
    for index, key in enumerate(keys):
        expected = [e.phone_number for e in world.demo_org.entries if e.owner_id == key][:1]
        nodes = body["data"][f"p{index}"]["nodes"]
        assert [node["phoneNumber"] for node in nodes] == expected


def _owned(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"phoneNumber": number, "owner": {"id": owner}} for number, owner in pairs]


def _members(*owners: str) -> list[Fetch]:
    return [
        Fetch(
            NumbersQuery("org", (("ownerId", owner), ("ownerType", "PEOPLE"))),
            PageWindow(0, 10),
            details=True,
        )
        for owner in owners
    ]


class TwoGenerations:
    """A list as the page cache holds it (page 1 stored before a change) and as it is now;
    the change keeps the total: x1 (a) removed, x5 (c) added."""

    old = _owned(("x1", "a"), ("x2", "b"), ("x3", "b"), ("x4", "c"))
    new = _owned(("x2", "b"), ("x3", "b"), ("x4", "c"), ("x5", "c"))

    def __init__(self) -> None:
        self.asked: list[tuple[Fetch, bool]] = []

    async def fetch_page(self, fetch: Fetch, refresh: bool) -> tuple[UpstreamPage, CacheEvent]:
        self.asked.append((fetch, refresh))
        assert fetch.window is not None
        owner = dict(fetch.query.params).get("ownerId")
        if owner is not None:  # a member on its own: the list as it is now
            items = [item for item in self.new if item["owner"]["id"] == owner]
            return UpstreamPage(items, {"total": len(items)}, False), CacheEvent("miss", "upstream")
        start, end = fetch.window.start, fetch.window.start + fetch.window.size
        if start == 0 and not refresh:  # page 1 from the cache, a minute old
            return (
                UpstreamPage(self.old[start:end], {"total": 4}, True),
                CacheEvent("hit", "local", age=50.0),
            )
        page = UpstreamPage(self.new[start:end], {"total": 4}, end < 4)
        return page, CacheEvent("refresh" if refresh else "miss", "upstream")


async def test_a_walk_joins_no_pages_of_different_moments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entity_batches, "WALK_PAGE_SIZE", 2)
    lists = TwoGenerations()
    members = _members("a", "b", "c")
    answered = await answer_calls(members, lists.fetch_page)
    got = {
        call.query.params[0][1]: [item["phoneNumber"] for item in found.outcome.items]
        for call, found in answered.items()
        if isinstance(found.outcome, UpstreamPage)
    }
    # One generation, as one call per owner answers now: a has none, b x2 x3, c x4 x5.
    assert got == {"a": [], "b": ["x2", "x3"], "c": ["x4", "x5"]}
    assert any(refresh for _, refresh in lists.asked), "the walk was fetched anew"


async def test_a_walk_whose_entries_repeat_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entity_batches, "WALK_PAGE_SIZE", 2)
    shifted = _owned(("x1", "a"), ("x2", "b"), ("x2", "b"), ("x3", "b"))  # x2 on both pages

    async def fetch_page(fetch: Fetch, refresh: bool) -> tuple[UpstreamPage, CacheEvent]:
        assert fetch.window is not None
        owner = dict(fetch.query.params).get("ownerId")
        if owner is not None:
            now = _owned(("x1", "a"), ("x2", "b"), ("x3", "b"))
            items = [item for item in now if item["owner"]["id"] == owner]
            return UpstreamPage(items, {"total": len(items)}, False), CacheEvent("miss", "upstream")
        start, end = fetch.window.start, fetch.window.start + fetch.window.size
        return UpstreamPage(shifted[start:end], {"total": 4}, end < 4), CacheEvent(
            "miss", "upstream"
        )

    answered = await answer_calls(_members("a", "b"), fetch_page)
    b = next(found for call, found in answered.items() if call.query.params[0][1] == "b")
    assert isinstance(b.outcome, UpstreamPage)
    assert [item["phoneNumber"] for item in b.outcome.items] == ["x2", "x3"]


async def test_unknown_ids_and_counts_fields_keep_their_own_calls(world: SimulatorWorld) -> None:
    keys = people_ids(world)[:4]
    async with admin_gateway(world) as (client, recorder):
        body = await graphql(client, PEOPLE_PAGE, people([*keys, "NOBODY-1", "NOBODY-2"]))
        assert "errors" not in body, body
        # One walk; the ids it does not contain are asked for on their own (not guessed at).
        assert recorder.calls == 1 + 2
        assert {dict(recorder.params(i)).get("ownerId") for i in (1, 2)} == {
            "NOBODY-1",
            "NOBODY-2",
        }
        assert [a["phoneNumbers"]["totalCount"] for a in body["data"]["_entities"][4:]] == [0, 0]

        # Locations asking numberCounts too: the page call carries the counts, so no walk.
        calls = recorder.calls
        locations = world.demo_org.location_ids[:3]
        body = await graphql(
            client,
            """query ($r: [_Any!]!) { _entities(representations: $r) { ... on Location {
                 phoneNumbers(page: {first: 2}) { totalCount } numberCounts { total } } } }""",
            {"r": [{"__typename": "Location", "id": key} for key in locations]},
        )
        assert "errors" not in body, body
        assert recorder.calls == calls + 3


async def test_entity_ids_too_long_for_a_url_are_refused_before_any_call(
    world: SimulatorWorld,
) -> None:
    async with admin_gateway(world) as (client, recorder):
        # 100,000 characters; and 513 characters that are 1,026 bytes of UTF-8 (past the
        # 1,024-byte bound every URL-bound string has, though short in characters).
        for key in ("P" * 100_000, "é" * 513):
            body = await graphql(client, PEOPLE_PAGE, people([key]))
            assert body["data"] is None
            assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
            assert "representations[0].id" in body["errors"][0]["message"]
        assert recorder.calls == 0


@pytest.mark.timeout(300)
async def test_a_thousand_representations_are_accepted_and_1001_refused(
    world: SimulatorWorld,
) -> None:
    keys = people_ids(world)
    many = [keys[index % len(keys)] for index in range(1001)]
    query = PEOPLE_PAGE.replace("phoneNumbers {", "phoneNumbers(page: {first: 1}) {")
    async with admin_gateway(world, max_cost=10_000_000) as (client, recorder):
        body = await graphql(client, query, people(many[:1000]))
        assert "errors" not in body, body
        assert len(body["data"]["_entities"]) == 1000
        assert recorder.calls == 1
        refused = await graphql(client, query, people(many))
        assert refused["data"] is None
        assert refused["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
        assert "at most 1000" in refused["errors"][0]["message"]
        assert recorder.calls == 1


# -- the property: a batch answers as one entity at a time does ---------------------------------


def shared_owners_world() -> SimulatorWorld:
    """The demo items with people folded into 30 owners, each with several numbers across
    locations, so page windows inside one owner's list mean something."""
    rng = random.Random(5)
    persons = [
        {
            "id": webex_id("PEOPLE", f"00000000-0000-4000-8000-{index:012d}"),
            "type": "PEOPLE",
            "firstName": f"First{index}",
            "lastName": rng.choice(["Ng", "Smith", "Olsen"]),
        }
        for index in range(30)
    ]
    items = []
    for entry in build_demo_world(size=1000, seed=7).demo_org.entries:
        item = dict(entry.payload)
        if entry.owner_type == "PEOPLE":
            item["owner"] = rng.choice(persons)
        items.append(item)
    return world_from_items(items)


SHARED = shared_owners_world()
PERSON_KEYS = people_ids(SHARED)
OTHER_OWNER_KEYS = list(
    dict.fromkeys(
        e.owner_id for e in SHARED.demo_org.entries if e.owner_type == "PLACE" and e.owner_id
    )
)[:3]
LOCATION_KEYS = list(SHARED.demo_org.location_ids)
FILTERS = [
    "",
    "numberType: NUMBER",
    "numberType: EXTENSION",
    "state: ACTIVE",
    "ownerType: PEOPLE",
    "ownerType: PLACE",
    "available: false",
    "phoneNumberType: PRIMARY",
    "tollFreeNumbers: false",
]
# No order (the walk) half the time; the orders the walk leaves to one call each otherwise.
ORDERS = [None, None, None, "{by: DN}", "{by: LAST_NAME, direction: DESC}", "{by: EXTENSION}"]
NODE = "phoneNumber extension owner { id } location { id }"


@dataclass
class Batch:
    typename: str
    keys: list[str]
    token: str
    filter: str
    order: str | None
    first: int | None
    offset: int | None
    after_at: int | None  # a cursor from the first entity's own list, at this position
    total: bool
    counts: bool

    def field_args(self, after: str | None) -> str:
        page = []
        if self.first is not None:
            page.append(f"first: {self.first}")
        if self.offset is not None:
            page.append(f"offset: {self.offset}")
        if after is not None:
            page.append(f"after: {json.dumps(after)}")
        args = [f"filter: {{{self.filter}}}", f"page: {{{', '.join(page)}}}"]
        if self.order is not None:
            args.append(f"order: {self.order}")
        return ", ".join(args)

    def document(self, after: str | None) -> str:
        total = "totalCount" if self.total else ""
        counts = "numberCounts { total assigned }" if self.counts else ""
        return (
            "query ($r: [_Any!]!) { _entities(representations: $r) { __typename "
            f"... on {self.typename} {{ id phoneNumbers({self.field_args(after)}) {{ {total} "
            f"nodes {{ {NODE} }} edges {{ cursor node {{ phoneNumber }} }} "
            "pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } "
            f"{counts} }} }} }}"
        )

    def variables(self, keys: list[str]) -> dict[str, Any]:
        return {"r": [{"__typename": self.typename, "id": key} for key in keys]}


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    typename = draw(st.sampled_from(["Person", "Location"]))
    if typename == "Person":
        pool = [*PERSON_KEYS, *OTHER_OWNER_KEYS, "NOBODY", "Y2lzY29zcGFyazovL3VzL1BFT1BMRS94"]
    else:
        pool = [*LOCATION_KEYS, "NOWHERE"]
    keys = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=8))
    has_after = draw(st.booleans()) and draw(st.booleans())
    return Batch(
        typename=typename,
        keys=keys,
        token=draw(st.sampled_from(["demo-admin", "demo-location-admin"])),
        filter=draw(st.sampled_from(FILTERS)),
        order=draw(st.sampled_from(ORDERS)),
        first=draw(st.sampled_from([None, 1, 2, 3, 50])),
        offset=None if has_after else draw(st.sampled_from([None, 0, 1, 2, 4, 40])),
        after_at=draw(st.integers(0, 4)) if has_after else None,
        total=draw(st.booleans()),
        counts=typename == "Location" and draw(st.booleans()),
    )


@dataclass
class Pair:
    client: httpx.AsyncClient
    recorder: RecordingTransport
    walked: list[int] = field(default_factory=list)  # calls saved per batch

    async def first_cursor(self, batch: Batch) -> str | None:
        if batch.after_at is None:
            return None
        probe = (
            f"query ($r: [_Any!]!) {{ _entities(representations: $r) {{ ... on {batch.typename}"
            f" {{ phoneNumbers(filter: {{{batch.filter}}}, page: {{first: {batch.after_at + 1}}}"
            + (f", order: {batch.order}" if batch.order else "")
            + ") { pageInfo { endCursor } } } } }"
        )
        body = await self.post(batch, probe, batch.variables(batch.keys[:1]))
        connection = (body.get("data") or {}).get("_entities", [{}])[0].get("phoneNumbers")
        return connection["pageInfo"]["endCursor"] if connection else None

    async def post(self, batch: Batch, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {batch.token}"}
        return await graphql(self.client, query, variables, headers=headers)

    async def compare(self, batch: Batch) -> None:
        document = batch.document(await self.first_cursor(batch))
        before = self.recorder.calls
        together = await self.post(batch, document, batch.variables(batch.keys))
        batched_calls = self.recorder.calls - before
        before = self.recorder.calls
        alone = [await self.post(batch, document, batch.variables([key])) for key in batch.keys]
        self.walked.append(self.recorder.calls - before - batched_calls)
        for index, single in enumerate(alone):
            got = together["data"]["_entities"][index]
            want = single["data"]["_entities"][0]
            assert json.dumps(got) == json.dumps(want), (batch, index)
            assert errors_at(together, index) == errors_at(single, 0), (batch, index)


def errors_at(body: dict[str, Any], index: int) -> list[str]:
    """The errors of one entity, with its index taken out of their paths."""
    found = []
    for error in body.get("errors", []):
        path = error.get("path", [])
        if path[:2] == ["_entities", index]:
            found.append(json.dumps({**error, "path": path[2:]}, sort_keys=True))
    return sorted(found)


@pytest.mark.timeout(600)
def test_a_batch_answers_byte_for_byte_as_one_entity_at_a_time() -> None:
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        recorder = RecordingTransport(httpx.ASGITransport(app=create_simulator_app(SHARED)))
        client = runner.run(
            stack.enter_async_context(
                running_gateway(live_settings(cache_ttl=0, max_cost=1_000_000), recorder)
            )
        )
        pair = Pair(client, recorder)
        try:

            @settings(
                max_examples=examples(60),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(batch=batches())
            def same_answers(batch: Batch) -> None:
                runner.run(pair.compare(batch))

            same_answers()
        finally:
            runner.run(stack.aclose())
    # Not vacuous: some batches were answered by a walk, with fewer calls than one by one.
    assert any(saved > 0 for saved in pair.walked), pair.walked


async def test_a_walk_with_malformed_entries_answers_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the projection property test: an entry whose ``phoneNumber`` is an object
    made the walk's repeat check raise ``TypeError`` (unhashable), and every entity of the
    batch answered INTERNAL_SERVER_ERROR. Upstream data is untrusted: such an entry is data."""
    monkeypatch.setattr(entity_batches, "WALK_PAGE_SIZE", 2)
    listed = [
        {"phoneNumber": {}, "owner": {"id": "a"}},
        {"phoneNumber": ["x"], "extension": {"n": 1}, "owner": {"id": "b"}},
        {"phoneNumber": "x3", "owner": {"id": "b"}},
    ]

    async def fetch_page(fetch: Fetch, refresh: bool) -> tuple[UpstreamPage, CacheEvent]:
        assert fetch.window is not None
        owner = dict(fetch.query.params).get("ownerId")
        if owner is not None:
            items = [item for item in listed if item["owner"]["id"] == owner]
            return UpstreamPage(items, {"total": len(items)}, False), CacheEvent("miss", "upstream")
        start, end = fetch.window.start, fetch.window.start + fetch.window.size
        page = UpstreamPage(listed[start:end], {"total": len(listed)}, end < len(listed))
        return page, CacheEvent("miss", "upstream")

    answered = await answer_calls(_members("a", "b"), fetch_page)
    got = {
        call.query.params[0][1]: found.outcome.items
        for call, found in answered.items()
        if isinstance(found.outcome, UpstreamPage)
    }
    assert got == {"a": listed[:1], "b": listed[1:]}

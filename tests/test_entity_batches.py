"""Entity batches (issues 19 and 29): a router's batch of ``Person``/``Location``
representations is answered by one walk of the list they partition, with exactly the answers
one call per entity gives; Webex ids the complete walk does not hold answered empty with no
call; a walk planned only when it costs no more calls than the members alone (from the list's
remembered length, or a probe for a large group); the fallbacks, and the
``GATEWAY_MAX_ENTITIES`` bounds."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.data import entity_batches
from gateway.data.entity_batches import (
    COLD_PROBE_MEMBERS,
    WalkLengths,
    answer_calls,
    walk_pays,
)
from gateway.data.page_cache import CacheEvent
from gateway.domain.query import Fetch, NumbersQuery, PageWindow, UpstreamPage
from gateway.domain.upstream_items import UpstreamItems
from gateway.domain.webex_ids import WebexId, read_webex_id
from gateway.simulator import build_demo_world, create_simulator_app
from gateway.simulator.dataset import SimulatorWorld, webex_id, world_from_items
from gateway.upstream.body import read_numbers_page
from tests.conftest import (
    FakeClock,
    RecordingTransport,
    examples,
    graphql,
    live_settings,
    running_gateway,
)

PEOPLE_PAGE = """
query ($r: [_Any!]!) { _entities(representations: $r) {
  ... on Person { id phoneNumbers { totalCount nodes { phoneNumber } } } } }
"""
LOCATIONS_PAGE = """
query ($r: [_Any!]!) { _entities(representations: $r) {
  ... on Location { id phoneNumbers(page: {first: 3}) { totalCount nodes { phoneNumber } } } } }
"""


def people(keys: list[str]) -> dict[str, Any]:
    return {"r": [{"__typename": "Person", "id": key} for key in keys]}


def locations(keys: list[str]) -> dict[str, Any]:
    return {"r": [{"__typename": "Location", "id": key} for key in keys]}


def people_ids(world: SimulatorWorld) -> list[str]:
    return list(
        dict.fromkeys(
            entry.owner_id
            for entry in world.demo_org.entries
            if entry.owner_type == "PEOPLE" and entry.owner_id
        )
    )


def spelt(kind: str, named: uuid.UUID | str, region: str = "us") -> str:
    """A Webex id as Webex writes it, in any region: unpadded base64url."""
    text = f"ciscospark://{region}/{kind}/{named}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def respelt(key: str, region: str) -> str:
    """The same thing's id as another region writes it (the same UUID)."""
    found = read_webex_id(key)
    assert found is not None
    return spelt(found.kind, found.uuid, region)


def absent_people(count: int, seed: int = 29) -> list[str]:
    """People of a directory without a calling number: Webex PEOPLE ids the org's numbers
    never name, in the regions Webex's clusters write."""
    rng = random.Random(seed)
    regions = ["us", "urn:TEAM:eu-central-1_k", "urn:TEAM:us-east-2_a"]
    return [
        spelt("PEOPLE", uuid.UUID(int=rng.getrandbits(128), version=4), regions[index % 3])
        for index in range(count)
    ]


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


async def alone_answers(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Each representation's answer asked on its own."""
    answers = []
    for representation in variables["r"]:
        body = await graphql(client, query, {"r": [representation]}, headers=headers or {})
        assert "errors" not in body, body
        answers.append(body["data"]["_entities"][0])
    return answers


# -- Webex ids ---------------------------------------------------------------------------------


def test_webex_ids_are_read_in_their_canonical_form_only() -> None:
    named = uuid.UUID("2217bead-dbc4-46cb-8e81-973e0becd7b0")
    for region in ("us", "urn:TEAM:eu-central-1_k"):
        assert read_webex_id(spelt("PEOPLE", named, region)) == WebexId(region, "PEOPLE", named)
    assert read_webex_id(webex_id("LOCATION", named)) == WebexId("us", "LOCATION", named)
    key = spelt("PEOPLE", named)
    other_forms = [
        key + ("=" * (-len(key) % 4) or "=="),  # padded (or padding where none belongs)
        str(named),  # a bare UUID
        "NOBODY",
        "",
        spelt("PEOPLE", "x"),  # no UUID
        spelt("PEOPLE", str(named).replace("-", "")),  # a UUID without its hyphens
        spelt("PEOPLE", str(named).upper()),  # not as Webex writes it
        spelt("people", named),  # a kind is upper case
        spelt("PEOPLE", f"{named}/extra"),
        base64.urlsafe_b64encode(f"https://us/PEOPLE/{named}".encode()).decode().rstrip("="),
        key[:10] + "+" + key[11:],  # standard base64, not base64url
        "A" * 300,
    ]
    for text in other_forms:
        assert read_webex_id(text) is None, text
    # The same bytes with stray bits in the last character: another spelling, not read.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for char in last:
        variant = key[:-1] + char
        if variant != key and base64.urlsafe_b64decode(variant + "==") == base64.urlsafe_b64decode(
            key + "=="
        ):
            assert read_webex_id(variant) is None, variant


# -- the router's batches ------------------------------------------------------------------------


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


async def test_a_directory_page_of_150_people_111_without_numbers_is_one_call(
    world: SimulatorWorld,
) -> None:
    """Issue 29's router-scale batch: a people service's page of 150 Webex person ids, 111
    of whom have no calling number (the org's numbers never name them). Before, each of the
    111 made its own call (112 in all); the walk holds every PEOPLE number the caller may see,
    so they are answered empty with none, exactly as each asked alone answers."""
    with_numbers = people_ids(world)[:39]
    batch = with_numbers + absent_people(111)
    random.Random(4).shuffle(batch)
    variables = people(batch)
    async with admin_gateway(world) as (client, recorder):
        body = await graphql(client, PEOPLE_PAGE, variables)
        assert "errors" not in body, body
        assert recorder.calls <= 10
        assert recorder.calls == 1
        batched_calls = recorder.calls
        alone = await alone_answers(client, PEOPLE_PAGE, variables)
        assert recorder.calls - batched_calls == 150, "alone: a call each"
    assert body["data"]["_entities"] == alone
    empty = [a for a in alone if a["phoneNumbers"]["totalCount"] == 0]
    assert len(empty) == 111


async def test_two_locations_cost_no_more_calls_than_alone(world: SimulatorWorld) -> None:
    """Two locations asking ``first: 3``: a walk would need the org's whole list to fit six
    entries to pay off, and its probe cost a third call when it did not. A list of unknown
    length is probed only for a group of COLD_PROBE_MEMBERS or more."""
    keys = list(world.demo_org.location_ids[:2])
    async with admin_gateway(world) as (client, recorder):
        body = await graphql(client, LOCATIONS_PAGE, locations(keys))
        assert "errors" not in body, body
        assert recorder.calls == 2
        assert {dict(recorder.params(i))["locationId"] for i in range(2)} == set(keys)
        assert body["data"]["_entities"] == await alone_answers(
            client, LOCATIONS_PAGE, locations(keys)
        )


async def test_a_list_too_long_for_the_budget_is_probed_once_then_remembered(
    world: SimulatorWorld,
) -> None:
    """Twelve locations asking ``first: 3`` (a budget of 36 entries, the org has 1,000): the
    first batch spends a probe that cannot pay off (12 + 1 calls), and remembers the list's
    length; from then on the same batch costs its 12 calls and no probe."""
    keys = [*world.demo_org.location_ids, *(spelt("LOCATION", uuid.uuid4()) for _ in range(7))]
    assert len(keys) == 12 >= COLD_PROBE_MEMBERS
    async with admin_gateway(world) as (client, recorder):
        first = await graphql(client, LOCATIONS_PAGE, locations(keys))
        assert "errors" not in first, first
        assert recorder.calls == 1 + 12
        again = await graphql(client, LOCATIONS_PAGE, locations(keys))
        assert recorder.calls == 13 + 12
        assert again == first
        # Another caller's lists are their own: the location admin's (its one location's
        # numbers) has never been walked, and fits a budget of 12 x 100.
        recorder.requests.clear()
        headers = {"Authorization": "Bearer demo-location-admin"}
        wider = LOCATIONS_PAGE.replace("first: 3", "first: 100")
        mine = await graphql(client, wider, locations(keys), headers=headers)
        assert "errors" not in mine, mine
        assert recorder.calls == 1
        assert "locationId" not in dict(recorder.params(0))
        totals = [entity["phoneNumbers"]["totalCount"] for entity in mine["data"]["_entities"]]
        assert totals.count(0) == 11
        assert mine["data"]["_entities"] == await alone_answers(
            client, wider, locations(keys), headers=headers
        )


WIDE_PAGE = PEOPLE_PAGE.replace("phoneNumbers {", "phoneNumbers(page: {first: 2000}) {")
NARROW_PAGE = PEOPLE_PAGE.replace("phoneNumbers {", "phoneNumbers(page: {first: 300}) {")


async def test_a_walk_of_several_pages_is_planned_from_the_first_pages_total() -> None:
    world = build_demo_world(size=10_000, seed=3)
    keys = people_ids(world)
    people_entries = sum(entry.owner_type == "PEOPLE" for entry in world.demo_org.entries)
    pages = -(-people_entries // 2000)
    assert pages >= 3
    members = COLD_PROBE_MEMBERS
    async with admin_gateway(world) as (client, recorder):
        body = await graphql(client, WIDE_PAGE, people(keys[:members]))
        assert "errors" not in body, body
        assert recorder.calls == pages, "the walk: fewer calls than the entities"
        starts = sorted(int(dict(recorder.params(i)).get("start", "0")) for i in range(pages))
        assert starts == [2000 * index for index in range(pages)]

        # Windows adding up to less than the list (10 x 300 < 5,000): the list's length is
        # remembered, so no probe is spent: each entity makes its own call.
        body = await graphql(client, NARROW_PAGE, people(keys[:members]))
        assert "errors" not in body, body
        assert recorder.calls == pages + members

        # A walk of several pages that would cost as many calls as the entities is not made.
        body = await graphql(client, WIDE_PAGE, people(keys[: pages - 1] + absent_people(1)))
        assert "errors" not in body, body
        assert recorder.calls == pages + members + pages


async def test_a_walk_holds_no_more_entries_than_its_members_windows() -> None:
    """15 root aliases of one entry each (cost 765) may not pull in the org's ~5,000 PEOPLE
    numbers: the walk is bounded by the members' windows (15 entries), so under an upstream
    page cap of 100 the request makes 1 + 15 upstream requests (the probe of a list never
    walked before, then each alias), not 50 for the walk; and once the list's length is
    known, 15."""
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
        again = await graphql(client, f"{{ {aliases} }}")
        assert recorder.calls == 16 + 15
        assert again == body
    for index, key in enumerate(keys):
        expected = [e.phone_number for e in world.demo_org.entries if e.owner_id == key][:1]
        nodes = body["data"][f"p{index}"]["nodes"]
        assert [node["phoneNumber"] for node in nodes] == expected


# -- the walk's rules, with a list of our own ----------------------------------------------------


def owner(index: int) -> str:
    return webex_id("PEOPLE", uuid.UUID(int=index + 1, version=4))


def _owned(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"phoneNumber": number, "owner": {"id": who}} for number, who in pairs]


def _members(*owners: str) -> list[Fetch]:
    return [
        Fetch(
            NumbersQuery("org", (("ownerId", key), ("ownerType", "PEOPLE"))),
            PageWindow(0, 10),
            details=True,
        )
        for key in owners
    ]


WALKED = NumbersQuery("org", (("ownerType", "PEOPLE"),))
A, B, C, D = (owner(index) for index in range(4))


def remembered(total: int, query: NumbersQuery = WALKED) -> Any:
    """A caller's lengths that know ``query``'s list has ``total`` entries."""
    lengths = WalkLengths(b"s" * 32).for_caller("caller")
    lengths.learn(query, total)
    return lengths


class FakeList:
    """The upstream over ``items``, counting what is asked of it."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.asked: list[Fetch] = []

    async def fetch_page(self, fetch: Fetch, refresh: bool) -> tuple[UpstreamPage, CacheEvent]:
        self.asked.append(fetch)
        assert fetch.window is not None
        key = dict(fetch.query.params).get("ownerId")
        items = [i for i in self.items if key is None or i["owner"]["id"] == key]
        start, end = fetch.window.start, fetch.window.start + fetch.window.size
        page = UpstreamPage(items[start:end], {"total": len(items)}, end < len(items))
        return page, CacheEvent("miss", "upstream")


class TwoGenerations:
    """A list as the page cache holds it (page 1 stored before a change) and as it is now;
    the change keeps the total: x1 (A) removed, x5 (C) added."""

    old = _owned(("x1", A), ("x2", B), ("x3", B), ("x4", C))
    new = _owned(("x2", B), ("x3", B), ("x4", C), ("x5", C))

    def __init__(self) -> None:
        self.asked: list[tuple[Fetch, bool]] = []

    async def fetch_page(self, fetch: Fetch, refresh: bool) -> tuple[UpstreamPage, CacheEvent]:
        self.asked.append((fetch, refresh))
        assert fetch.window is not None
        key = dict(fetch.query.params).get("ownerId")
        if key is not None:  # a member on its own: the list as it is now
            items = [item for item in self.new if item["owner"]["id"] == key]
            return UpstreamPage(items, {"total": len(items)}, False), CacheEvent("miss", "upstream")
        start, end = fetch.window.start, fetch.window.start + fetch.window.size
        if start == 0 and not refresh:  # page 1 from the cache, a minute old
            return (
                UpstreamPage(self.old[start:end], {"total": 4}, True),
                CacheEvent("hit", "local", age=50.0),
            )
        page = UpstreamPage(self.new[start:end], {"total": 4}, end < 4)
        return page, CacheEvent("refresh" if refresh else "miss", "upstream")


def items_by_owner(answered: dict[Fetch, Any]) -> dict[str, list[Any]]:
    return {
        call.query.params[0][1]: [item["phoneNumber"] for item in found.outcome.items]
        for call, found in answered.items()
        if isinstance(found.outcome, UpstreamPage)
    }


class BytesList(FakeList):
    """``FakeList`` answering as the upstream client does: its pages the bytes of a body."""

    async def fetch_page(self, fetch: Fetch, refresh: bool) -> tuple[UpstreamPage, CacheEvent]:
        page, event = await super().fetch_page(fetch, refresh)
        items, _ = read_numbers_page(orjson.dumps({"phoneNumbers": list(page.items)}))
        return UpstreamPage(items, page.count, page.has_more), event


async def test_each_members_share_of_a_walk_is_the_walked_bytes() -> None:
    """The walk's body is picked from, not decoded into lists: each member's page is still
    upstream bytes the projection encodes in C (``struct_projection``), all in one body."""
    listed = BytesList(_owned(("x1", A), ("x2", B), ("x3", A), ("x4", C), ("x5", B)))
    answered = await answer_calls(_members(A, B, C, D), listed.fetch_page, lengths=remembered(5))
    assert len(listed.asked) == 1  # the walk, and nothing alone
    assert items_by_owner(answered) == {A: ["x1", "x3"], B: ["x2", "x5"], C: ["x4"], D: []}
    pages = [found.outcome for found in answered.values()]
    shared = [page.items for page in pages if page.items]
    assert all(isinstance(items, UpstreamItems) for items in shared)
    assert len({id(body) for items in shared for body in items.bodies}) == 1


async def test_a_walk_joins_no_pages_of_different_moments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entity_batches, "WALK_PAGE_SIZE", 2)
    lists = TwoGenerations()
    answered = await answer_calls(_members(A, B, C), lists.fetch_page, lengths=remembered(4))
    # One generation, as one call per owner answers now: A has none, B x2 x3, C x4 x5.
    assert items_by_owner(answered) == {A: [], B: ["x2", "x3"], C: ["x4", "x5"]}
    assert any(refresh for _, refresh in lists.asked), "the walk was fetched anew"


async def test_a_walk_whose_entries_repeat_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entity_batches, "WALK_PAGE_SIZE", 2)
    shifted = _owned(("x1", A), ("x2", B), ("x2", B), ("x3", B))  # x2 on both pages
    now = FakeList(_owned(("x1", A), ("x2", B), ("x3", B)))

    async def fetch_page(fetch: Fetch, refresh: bool) -> tuple[UpstreamPage, CacheEvent]:
        assert fetch.window is not None
        if dict(fetch.query.params).get("ownerId") is not None:
            return await now.fetch_page(fetch, refresh)
        start, end = fetch.window.start, fetch.window.start + fetch.window.size
        return UpstreamPage(shifted[start:end], {"total": 4}, end < 4), CacheEvent(
            "miss", "upstream"
        )

    answered = await answer_calls(_members(A, B, C), fetch_page, lengths=remembered(4))
    assert items_by_owner(answered) == {A: ["x1"], B: ["x2", "x3"], C: []}


async def test_absent_ids_are_answered_empty_only_when_the_walk_proves_it() -> None:
    """A Webex PEOPLE id whose UUID the walk does not hold has no entries: no call. Every
    other key the walk does not hold goes upstream on its own: another form, another kind,
    the walk's UUID spelt for another region, and any key when the walk has an owner id it
    cannot read."""
    listed = FakeList(_owned(("x1", A), ("x2", B), ("x3", respelt(D, "urn:TEAM:eu-central-1_k"))))
    keys = {
        "held": A,
        "absent": C,
        "absent elsewhere": respelt(owner(7), "urn:TEAM:us-east-2_a"),
        "held elsewhere": D,
        "bare uuid": str(uuid.UUID(int=9, version=4)),
        "a location": webex_id("LOCATION", uuid.UUID(int=10, version=4)),
        "padded": C + ("=" * (-len(C) % 4) or "=="),
    }
    members = _members(*keys.values())
    answered = await answer_calls(members, listed.fetch_page, lengths=remembered(3))
    alone = {dict(f.query.params).get("ownerId") for f in listed.asked} - {None}
    assert alone == {keys[name] for name in ("held elsewhere", "bare uuid", "a location", "padded")}
    assert len(listed.asked) == 1 + 4
    got = items_by_owner(answered)
    assert got[A] == ["x1"]
    assert got[C] == []
    assert got[keys["absent elsewhere"]] == []

    # An owner whose id is no text: the walk proves nobody absent.
    garbled = FakeList([*listed.items, {"phoneNumber": "x4", "owner": {"id": {"nested": 1}}}])
    members = _members(A, C, owner(8))
    answered = await answer_calls(members, garbled.fetch_page, lengths=remembered(4))
    assert len(garbled.asked) == 1 + 2
    assert items_by_owner(answered) == {A: ["x1"], C: [], owner(8): []}


async def test_a_group_never_costs_more_calls_than_alone_once_its_list_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every group, sized every way against a list whose length is remembered: the calls
    made are never more than the members', and fewer whenever a walk pays."""
    monkeypatch.setattr(entity_batches, "WALK_PAGE_SIZE", 4)
    rng = random.Random(29)
    for _ in range(300):
        owners = [owner(index) for index in range(rng.randrange(1, 8))]
        items = _owned(*((f"x{i}", rng.choice(owners)) for i in range(rng.randrange(0, 30))))
        members = [
            Fetch(
                NumbersQuery("org", (("ownerId", key), ("ownerType", "PEOPLE"))),
                PageWindow(0, rng.randrange(1, 10)),
                details=True,
            )
            for key in dict.fromkeys(
                rng.choice([*owners, owner(99), "raw-" + str(rng.randrange(3))])
                for _ in range(rng.randrange(2, 12))
            )
        ]
        listed = FakeList(items)
        answered = await answer_calls(members, listed.fetch_page, lengths=remembered(len(items)))
        assert len(listed.asked) <= len(members)
        alone = FakeList(items)
        for member in members:
            want = (await alone.fetch_page(member, False))[0]
            got = answered[member].outcome
            assert isinstance(got, UpstreamPage)
            assert (got.items, got.count, got.has_more) == (want.items, want.count, want.has_more)


def test_a_walk_pays_only_when_it_costs_no_more_and_can_cost_less() -> None:
    assert walk_pays(1, 0, 2)
    assert not walk_pays(2, 0, 2)  # as many calls as alone: nothing to gain
    assert walk_pays(1, 1, 2)  # the unproven member may be held: then one call
    assert not walk_pays(1, 2, 2)
    assert walk_pays(0, 3, 3)  # after the first page: the rest costs nothing more


def test_walk_lengths_are_per_caller_and_forgotten_in_time() -> None:
    clock = FakeClock()
    lengths = WalkLengths(b"s" * 32, clock=clock, ttl=60.0)
    mine, theirs = lengths.for_caller("one"), lengths.for_caller("two")
    mine.learn(WALKED, 12)
    assert mine.known(WALKED) == 12
    assert theirs.known(WALKED) is None
    assert mine.known(NumbersQuery(None, WALKED.params)) is None  # another org
    clock.now += 61.0
    assert mine.known(WALKED) is None


async def test_unknown_ids_and_counts_fields_keep_their_own_calls(world: SimulatorWorld) -> None:
    keys = people_ids(world)[:12]
    async with admin_gateway(world) as (client, recorder):
        others = ["NOBODY-1", "NOBODY-2", respelt(keys[0], "urn:TEAM:eu-central-1_k")]
        body = await graphql(client, PEOPLE_PAGE, people([*keys, *others, *absent_people(2)]))
        assert "errors" not in body, body
        # One walk; the ids it cannot prove absent are asked for on their own (not guessed
        # at); the Webex ids it does not hold cost nothing.
        assert recorder.calls == 1 + 3
        assert {dict(recorder.params(i)).get("ownerId") for i in (1, 2, 3)} == set(others)
        totals = [a["phoneNumbers"]["totalCount"] for a in body["data"]["_entities"][12:]]
        assert totals == [0] * 5

        # Locations asking numberCounts too: the page call carries the counts, so no walk.
        calls = recorder.calls
        many = [*world.demo_org.location_ids, *(spelt("LOCATION", uuid.uuid4()) for _ in range(9))]
        body = await graphql(
            client,
            """query ($r: [_Any!]!) { _entities(representations: $r) { ... on Location {
                 phoneNumbers(page: {first: 2}) { totalCount } numberCounts { total } } } }""",
            locations(many),
        )
        assert "errors" not in body, body
        assert recorder.calls == calls + len(many)


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
# Every form an id comes in: the org's ids; Webex ids of the kind it does not hold (any
# region); its ids spelt for another region; ids of another kind; other forms entirely.
PERSON_POOL = [
    *PERSON_KEYS,
    *OTHER_OWNER_KEYS,
    *absent_people(4),
    respelt(PERSON_KEYS[0], "urn:TEAM:eu-central-1_k"),
    LOCATION_KEYS[0],
    PERSON_KEYS[1] + "==",
    str(uuid.UUID(int=5, version=4)),
    "NOBODY",
    "Y2lzY29zcGFyazovL3VzL1BFT1BMRS94",
]
LOCATION_POOL = [
    *LOCATION_KEYS,
    *(spelt("LOCATION", uuid.UUID(int=index, version=4), "us") for index in range(1, 5)),
    spelt("LOCATION", uuid.UUID(int=6, version=4), "urn:TEAM:eu-central-1_k"),
    respelt(LOCATION_KEYS[0], "urn:TEAM:us-east-2_a"),
    PERSON_KEYS[0],
    "NOWHERE",
]
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
    pool = PERSON_POOL if typename == "Person" else LOCATION_POOL
    # Up to 14 representations: past COLD_PROBE_MEMBERS, a list never walked is probed.
    keys = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=14))
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


# A batch a walk answers, whatever the draws: twelve people in all their forms, a page each.
WALKED_BATCH = Batch(
    typename="Person",
    keys=PERSON_POOL[:12] + PERSON_POOL[-7:],
    token="demo-admin",
    filter="",
    order=None,
    first=None,
    offset=None,
    after_at=None,
    total=True,
    counts=False,
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
        alone_calls = self.recorder.calls - before
        self.walked.append(alone_calls - batched_calls)
        if batched_calls > alone_calls:
            # Only a probe of a list never walked before, found too long, costs a call more;
            # its length is remembered, so the same batch again costs no more than alone.
            assert batched_calls == alone_calls + 1, (batch, batched_calls, alone_calls)
            assert len(set(batch.keys)) >= COLD_PROBE_MEMBERS, batch
            before = self.recorder.calls
            again = await self.post(batch, document, batch.variables(batch.keys))
            assert self.recorder.calls - before <= alone_calls, batch
            assert again == together
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
            @example(batch=WALKED_BATCH)
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

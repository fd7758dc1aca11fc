"""The federation 2 subgraph in-process: `_service`, entity references and their fields, the
key pins, `NumberOwner.person`, batching counted at the upstream, limits and bad
representations (each with zero upstream calls), and entity fields failing alone."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.schema.build import export_sdl
from gateway.simulator import create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import RecordingTransport, graphql, live_settings, running_gateway

ENTITIES = """
query ($representations: [_Any!]!) {
  _entities(representations: $representations) {
    __typename
    ... on Location { id phoneNumbers(page: {first: 5}) { nodes { phoneNumber location { id } } totalCount } numberCounts { total } }
    ... on Person { id phoneNumbers { nodes { extension owner { id type } } } }
    ... on Organization { id numberCounts { total } }
  }
}
"""


def location(key: str) -> dict[str, str]:
    return {"__typename": "Location", "id": key}


def person(key: str) -> dict[str, str]:
    return {"__typename": "Person", "id": key}


def organization(key: str) -> dict[str, str]:
    return {"__typename": "Organization", "id": key}


async def entities(client: httpx.AsyncClient, *representations: Any, **kw: Any) -> dict[str, Any]:
    return await graphql(client, ENTITIES, {"representations": list(representations)}, **kw)


def a_person_with_numbers(world: SimulatorWorld) -> str:
    counts: dict[str, int] = {}
    for entry in world.demo_org.entries:
        if entry.owner_type == "PEOPLE" and entry.owner_id:
            counts[entry.owner_id] = counts.get(entry.owner_id, 0) + 1
    return max(counts, key=lambda key: counts[key])


async def test_service_sdl_is_the_committed_subgraph_sdl_in_every_environment(
    recorder: RecordingTransport,
) -> None:
    for env in ("development", "production"):
        async with running_gateway(live_settings(env=env), recorder) as client:
            body = await graphql(client, "{ _service { sdl } }")
            assert body["data"]["_service"]["sdl"].strip() == export_sdl().strip()
            if env == "production":
                denied = await graphql(client, "{ __schema { types { name } } }", status=400)
                assert denied["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    sdl = export_sdl()
    # v2.9: the first federation version that defines the cost directives the SDL carries.
    assert (
        '@link(url: "https://specs.apollo.dev/federation/v2.9", '
        'import: ["@cost", "@key", "@listSize", "@shareable"])'
    ) in sdl
    for entity in ("Location", "Person", "Organization"):
        assert f'type {entity} @key(fields: "id")' in sdl
    assert "name: String @shareable" in sdl
    assert recorder.calls == 0


async def test_location_entity_fields_equal_the_root_fields_and_share_their_calls(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, world: SimulatorWorld
) -> None:
    key = world.demo_org.location_ids[1]
    body = await entities(gateway, location(key))
    assert "errors" not in body, body
    entity = body["data"]["_entities"][0]
    assert entity["__typename"] == "Location"
    assert entity["id"] == key
    nodes = entity["phoneNumbers"]["nodes"]
    assert nodes
    assert {node["location"]["id"] for node in nodes} == {key}
    expected = sum(entry.location_id == key for entry in world.demo_org.entries)
    assert entity["phoneNumbers"]["totalCount"] == expected
    assert entity["numberCounts"]["total"] == expected
    assert recorder.calls == 1, "page, total and counts of one location: one upstream call"
    assert recorder.params() == [
        ("locationId", key),
        ("max", "5"),
        ("details", "true"),
    ]

    root = await graphql(
        gateway,
        "query ($key: ID!) { phoneNumbers(filter: {locationId: $key}, page: {first: 5}) "
        "{ nodes { phoneNumber location { id } } totalCount } }",
        {"key": key},
    )
    assert root["data"]["phoneNumbers"] == entity["phoneNumbers"]
    assert recorder.calls == 1, "the root field with the same filter hits the same cache entry"


async def test_a_repeated_representation_is_fetched_once_and_distinct_ones_each_once(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, world: SimulatorWorld
) -> None:
    keys = world.demo_org.location_ids[:3]
    body = await entities(
        gateway, location(keys[0]), location(keys[1]), location(keys[0]), location(keys[2])
    )
    assert "errors" not in body, body
    answers = body["data"]["_entities"]
    assert answers[0] == answers[2]
    assert [answer["id"] for answer in answers] == [keys[0], keys[1], keys[0], keys[2]]
    assert recorder.calls == 3
    assert sorted(dict(recorder.params(i))["locationId"] for i in range(3)) == sorted(keys)


async def test_person_entity_pins_owner_id(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, world: SimulatorWorld
) -> None:
    key = a_person_with_numbers(world)
    body = await entities(gateway, person(key))
    assert "errors" not in body, body
    nodes = body["data"]["_entities"][0]["phoneNumbers"]["nodes"]
    assert nodes
    assert {node["owner"]["id"] for node in nodes} == {key}
    assert ("ownerId", key) in recorder.params()


async def test_a_filter_may_repeat_the_key_but_not_contradict_it(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, world: SimulatorWorld
) -> None:
    key = world.demo_org.location_ids[0]
    query = """
    query ($representations: [_Any!]!, $other: ID!) {
      _entities(representations: $representations) {
        ... on Location { same: phoneNumbers(filter: {locationId: $other}) { totalCount } }
      }
    }
    """
    same = await graphql(gateway, query, {"representations": [location(key)], "other": key})
    assert "errors" not in same, same
    calls = recorder.calls
    other = await graphql(
        gateway, query, {"representations": [location(key)], "other": "ANOTHER-LOCATION"}
    )
    error = other["errors"][0]
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}
    assert "locationId" in error["message"]
    assert error["path"] == ["_entities", 0, "same"]
    assert recorder.calls == calls

    person_query = """
    query ($representations: [_Any!]!) {
      _entities(representations: $representations) {
        ... on Person { phoneNumbers(filter: {ownerId: "SOMEONE-ELSE"}) { totalCount } }
      }
    }
    """
    body = await graphql(gateway, person_query, {"representations": [person("P1")]})
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert recorder.calls == calls


async def test_organization_entity_is_the_org_id(world: SimulatorWorld) -> None:
    partner_org = next(org for org in world.orgs.values() if org.id != world.demo_org.id)
    recorder = RecordingTransport(httpx.ASGITransport(app=create_simulator_app(world)))
    async with running_gateway(live_settings(), recorder) as client:
        body = await entities(
            client,
            organization(partner_org.id),
            headers={"Authorization": "Bearer demo-partner"},
        )
        assert "errors" not in body, body
        assert body["data"]["_entities"][0]["numberCounts"]["total"] == len(partner_org.entries)
        assert recorder.params() == [("orgId", partner_org.id), ("max", "1"), ("details", "true")]

        # The same entity for a caller without rights on that org: FORBIDDEN on its field
        # alone; the sibling entity still answers.
        mixed = await entities(
            client,
            organization(partner_org.id),
            location(world.demo_org.location_ids[0]),
            headers={"Authorization": "Bearer demo-admin"},
        )
    first, second = mixed["data"]["_entities"]
    assert first["numberCounts"] is None
    assert second["numberCounts"]["total"] > 0
    assert len(mixed["errors"]) == 1
    error = mixed["errors"][0]
    assert error["path"] == ["_entities", 0, "numberCounts"]
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert error["extensions"]["upstreamStatus"] == 403
    assert error["extensions"]["trackingId"].startswith("ROUTER_")


async def test_number_owner_person_is_the_person_entity_for_people_only(
    gateway: httpx.AsyncClient,
) -> None:
    body = await graphql(
        gateway,
        "{ phoneNumbers(filter: {numberType: NUMBER}, page: {first: 200}) "
        "{ nodes { owner { id type person { id __typename } } } } }",
    )
    owners = [node["owner"] for node in body["data"]["phoneNumbers"]["nodes"] if node["owner"]]
    assert {owner["type"] for owner in owners} > {"PEOPLE"}, "the page has other owner types"
    for owner in owners:
        if owner["type"] == "PEOPLE":
            assert owner["person"] == {"id": owner["id"], "__typename": "Person"}
        else:
            assert owner["person"] is None


@pytest.mark.parametrize(
    ("representations", "fragment"),
    [
        ([{"__typename": "Nope", "id": "x"}], "__typename must be one of"),
        ([{"__typename": "Location"}], "no usable id"),
        ([{"__typename": "Location", "id": ""}], "no usable id"),
        ([{"__typename": "Person", "id": ["x"]}], "no usable id"),
        ([{"id": "x"}], "__typename must be one of"),
        (["Location"], "must be an object"),
        ([location("L1"), {"__typename": "Person", "id": None}], "representations[1]"),
    ],
)
async def test_bad_representations_are_bad_user_input_with_no_upstream_call(
    gateway: httpx.AsyncClient,
    recorder: RecordingTransport,
    representations: list[Any],
    fragment: str,
) -> None:
    body = await graphql(gateway, ENTITIES, {"representations": representations})
    assert body["data"] is None
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert fragment in body["errors"][0]["message"]
    assert recorder.calls == 0


async def test_more_representations_than_the_limit_is_bad_user_input_with_no_call(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(max_entities=3), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        allowed = await entities(client, *(location(f"L{i}") for i in range(3)))
        assert allowed["data"]["_entities"] is not None
        calls = recorder.calls
        body = await entities(client, *(location(f"L{i}") for i in range(4)))
    assert body["data"] is None
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert "at most 3" in body["errors"][0]["message"]
    assert recorder.calls == calls


async def test_entity_fields_keep_the_root_fields_validation(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    body = await graphql(
        gateway,
        """query ($r: [_Any!]!) { _entities(representations: $r) {
             ... on Location { phoneNumbers(page: {first: 0}) { totalCount } } } }""",
        {"r": [location("L1")]},
    )
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert "page.first" in body["errors"][0]["message"]
    assert recorder.calls == 0

"""Federation with real composers and a real supergraph, over real processes.

Composition: the committed subgraph SDL (``schema/numbers.graphql``) composes with a small
people/locations subgraph under both ``@apollo/composition`` and
``@theguild/federation-composition``, ``Location.phoneNumbers`` is joined from this subgraph, and a
people subgraph that contradicts ours (``Location.name`` neither shareable nor nullable) fails
under both.

End to end, each on a free loopback port: the Webex simulator, this gateway in live mode against
it, the people subgraph (``tests/js/people-subgraph.mjs``, filled with ids read from the
simulator) and Apollo Gateway (``tests/js/supergraph-gateway.mjs``, forwarding ``Authorization``
as a user would configure it). Through the supergraph: a person's and a location's numbers, the
people service's names on numbers, the caller's token reaching the simulator through both
gateways, and an upstream 403 / a missing token on an entity field failing alone.

Skipped (with the reason printed) only when node/npm are missing; a failed install fails.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import (
    DocumentNode,
    EnumTypeDefinitionNode,
    FieldDefinitionNode,
    ObjectTypeDefinitionNode,
    StringValueNode,
    parse,
    print_ast,
)

from gateway.simulator import build_demo_world
from tests.node_packages import node_server, require_node, run_node_json
from tests.processes import gateway_process, simulator_process

# Node composers, npm installs on first use and five processes: e2e, with room for them.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
NUMBERS_SDL = ROOT / "schema" / "numbers.graphql"
COMPOSERS = ("apollo", "guild")
SIZE, SEED = 1000, 7  # the simulator's data, passed explicitly so the test knows it

# The people/locations service as another team would write it (the same SDL that
# tests/js/people-subgraph.mjs serves).
PEOPLE_SDL = """
extend schema
  @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key", "@shareable"])

type Query {
  me: Person
  people: [Person!]!
  locations: [Location!]!
}

type Person @key(fields: "id") {
  id: ID!
  displayName: String
}

type Location @key(fields: "id") {
  id: ID!
  name: String @shareable
  timeZone: String
}
"""

# Contradicts ours: the people service claims Location.name for itself (not shareable, non-null).
CONTRADICTING_PEOPLE_SDL = PEOPLE_SDL.replace("name: String @shareable", "name: String!")

TIME_ZONES = {
    "Washington": "America/New_York",
    "San Jose": "America/Los_Angeles",
    "Richardson": "America/Chicago",
    "Bangalore": "Asia/Kolkata",
    "London": "Europe/London",
}

ME_QUERY = "{ me { id displayName phoneNumbers { nodes { phoneNumber extension owner { id } } } } }"
LOCATIONS_QUERY = "{ locations { id name timeZone numberCounts { total } } }"
OWNER_PERSON_QUERY = (
    "{ phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 20}) "
    "{ nodes { phoneNumber extension owner { id person { displayName } } } } }"
)
PEOPLE_QUERY = (
    "{ people { id displayName phoneNumbers { nodes { phoneNumber extension location { id } } } } }"
)
ME_NUMBERS_ONLY = "{ me { displayName phoneNumbers { nodes { phoneNumber } } } }"


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("federation-sdl")
    (folder / "people.graphql").write_text(PEOPLE_SDL)
    (folder / "people-contradicting.graphql").write_text(CONTRADICTING_PEOPLE_SDL)
    return folder


def compose(composer: str, people_sdl: Path) -> dict[str, Any]:
    result: dict[str, Any] = run_node_json(
        "compose.mjs", composer, f"numbers={NUMBERS_SDL}", f"people={people_sdl}"
    )
    assert result["composer"] == composer
    return result


def object_type(document: DocumentNode, name: str) -> ObjectTypeDefinitionNode:
    for definition in document.definitions:
        if isinstance(definition, ObjectTypeDefinitionNode) and definition.name.value == name:
            return definition
    raise AssertionError(f"the supergraph has no type {name}")


def field(document: DocumentNode, type_name: str, field_name: str) -> FieldDefinitionNode:
    for candidate in object_type(document, type_name).fields or ():
        if candidate.name.value == field_name:
            return candidate
    raise AssertionError(f"the supergraph has no field {type_name}.{field_name}")


def graph_enum_values(document: DocumentNode) -> dict[str, str]:
    """The supergraph's ``join__Graph`` enum: subgraph name (as composed) -> enum value."""
    graphs: dict[str, str] = {}
    for definition in document.definitions:
        if (
            isinstance(definition, EnumTypeDefinitionNode)
            and definition.name.value == "join__Graph"
        ):
            for value in definition.values or ():
                for directive in value.directives or ():
                    for argument in directive.arguments or ():
                        if argument.name.value == "name" and isinstance(
                            argument.value, StringValueNode
                        ):
                            graphs[argument.value.value] = value.name.value
    return graphs


def join_graphs(node: ObjectTypeDefinitionNode | FieldDefinitionNode, directive: str) -> set[str]:
    """The graphs named by the node's ``@join__type``/``@join__field`` directives."""
    return {
        print_ast(argument.value)
        for applied in node.directives or ()
        if applied.name.value == directive
        for argument in applied.arguments or ()
        if argument.name.value == "graph"
    }


@pytest.mark.parametrize("composer", COMPOSERS)
def test_subgraph_composes_with_a_people_service(composer: str, sdl_dir: Path) -> None:
    result = compose(composer, sdl_dir / "people.graphql")
    assert result["errors"] == [], result["errors"]
    assert result["ok"] is True
    supergraph = parse(result["supergraphSdl"])
    graphs = graph_enum_values(supergraph)
    numbers, people = graphs["numbers"], graphs["people"]

    # Both subgraphs define the entities; each side's own fields are joined from it alone.
    for entity in ("Location", "Person"):
        assert join_graphs(object_type(supergraph, entity), "join__type") == {numbers, people}
    assert join_graphs(field(supergraph, "Location", "phoneNumbers"), "join__field") == {numbers}
    assert join_graphs(field(supergraph, "Location", "numberCounts"), "join__field") == {numbers}
    assert join_graphs(field(supergraph, "Location", "timeZone"), "join__field") == {people}
    # A field every defining subgraph has (shareable) carries no @join__field: either serves it.
    assert join_graphs(field(supergraph, "Location", "name"), "join__field") == set()
    assert join_graphs(field(supergraph, "Person", "phoneNumbers"), "join__field") == {numbers}
    assert join_graphs(field(supergraph, "Person", "displayName"), "join__field") == {people}
    # A number's owner reaches the people service through NumberOwner.person.
    assert print_ast(field(supergraph, "NumberOwner", "person").type) == "Person"
    # Root fields of both subgraphs are in the one Query type.
    roots = {f.name.value for f in object_type(supergraph, "Query").fields or ()}
    assert {"phoneNumbers", "numberCounts", "me", "people", "locations"} <= roots


@pytest.mark.parametrize("composer", COMPOSERS)
def test_a_contradicting_people_service_does_not_compose(composer: str, sdl_dir: Path) -> None:
    result = compose(composer, sdl_dir / "people-contradicting.graphql")
    assert result["ok"] is False
    assert result["supergraphSdl"] is None
    assert result["errors"], result
    assert any("Location.name" in message for message in result["errors"]), result["errors"]
    assert "INVALID_FIELD_SHARING" in result["codes"], result["codes"]


# --------------------------------------------------------------------------------------------
# End to end: simulator -> this gateway (live mode) + people subgraph -> Apollo Gateway
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """The running processes, the simulator's own answers, and the people service's data."""

    supergraph: str
    client: httpx.Client
    items: list[dict[str, Any]]  # every entry, as demo-admin sees it at the simulator
    location_admin_items: list[dict[str, Any]]  # as demo-location-admin sees it there
    first_location: str  # the demo org's first location: the location admin's one
    me: str
    people: dict[str, str]  # person id -> displayName, as the people service knows them
    locations: dict[str, dict[str, str]]  # location id -> {"id", "name", "timeZone"}
    people_requests: Path  # one JSON line per request the people subgraph received

    def query(self, document: str, token: str | None = "demo-admin") -> dict[str, Any]:
        """POST a query to the supergraph as a client does; ``token=None`` sends no header."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response = self.client.post(self.supergraph, json={"query": document}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        body: dict[str, Any] = response.json()
        return body

    def people_request_count(self) -> int:
        return len(self.people_requests.read_text().splitlines())

    def people_requests_since(self, count: int) -> list[dict[str, Any]]:
        lines = self.people_requests.read_text().splitlines()[count:]
        return [json.loads(line) for line in lines]


def simulator_items(client: httpx.Client, simulator: str, token: str) -> list[dict[str, Any]]:
    response = client.get(
        f"{simulator}/v1/telephony/config/numbers",
        params={"max": 2000},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    assert "next" not in response.headers.get("link", ""), "expected everything on one page"
    items: list[dict[str, Any]] = response.json()["phoneNumbers"]
    return items


def owner(item: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = item.get("owner") or {}
    return found


def people_service_data(
    items: list[dict[str, Any]], first_location: str
) -> tuple[str, dict[str, str], dict[str, dict[str, str]]]:
    """``me``, the people and the locations the people service knows, all from real data:
    the first ten PEOPLE owners in the list (so a page of 20 has known and unknown owners), the
    first PEOPLE owner of every location, and ``me``: a person with a phone number and an
    extension outside the first location (the location admin must not see it)."""
    owned = [item for item in items if owner(item).get("type") == "PEOPLE"]
    chosen = owned[:10]
    for location_id in dict.fromkeys(item["location"]["id"] for item in items):
        chosen.append(next(item for item in owned if item["location"]["id"] == location_id))
    me_item = next(
        item
        for item in owned
        if item["location"]["id"] != first_location
        and item.get("phoneNumber")
        and item.get("extension")
    )
    chosen.append(me_item)
    people = {
        owner(item)["id"]: f"{owner(item).get('firstName')} {owner(item).get('lastName')}"
        for item in chosen
    }
    return owner(me_item)["id"], people, service_locations(items)


def service_locations(items: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Every location in ``items``, with the time zone the people service gives it."""
    locations: dict[str, dict[str, str]] = {}
    for index, item in enumerate(items):
        location_id, name = item["location"]["id"], item["location"]["name"]
        locations.setdefault(
            location_id,
            {"id": location_id, "name": name, "timeZone": TIME_ZONES.get(name, f"Etc/GMT-{index}")},
        )
    return locations


def start_simulator(
    stack: contextlib.ExitStack, client: httpx.Client
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The simulator's origin, and every item as the admin and as the location admin see it."""
    simulator = stack.enter_context(
        simulator_process("--size", str(SIZE), "--seed", str(SEED))
    ).origin
    items = simulator_items(client, simulator, "demo-admin")
    location_admin_items = simulator_items(client, simulator, "demo-location-admin")
    return simulator, items, location_admin_items


def start_people_service(
    stack: contextlib.ExitStack,
    folder: Path,
    me: str,
    people: dict[str, str],
    locations: list[dict[str, str]],
) -> tuple[str, Path]:
    """The people subgraph serving ``me``, ``people`` and ``locations``, and its request log."""
    data = folder / "people.json"
    data.write_text(
        json.dumps(
            {
                "me": me,
                "people": [{"id": key, "displayName": name} for key, name in people.items()],
                "locations": locations,
            }
        )
    )
    requests = folder / "people-requests.jsonl"
    requests.touch()
    people_service = stack.enter_context(
        node_server("people-subgraph.mjs", "--data", str(data), "--request-log", str(requests))
    )
    return people_service.url, requests


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_node()  # skip (node missing) or fail (install failed) before starting anything
    folder = tmp_path_factory.mktemp("federation-e2e")
    with contextlib.ExitStack() as stack, httpx.Client(trust_env=False, timeout=60) as client:
        simulator, items, location_admin_items = start_simulator(stack, client)
        first_location = build_demo_world(size=SIZE, seed=SEED).demo_org.location_ids[0]
        assert {item["location"]["id"] for item in location_admin_items} == {first_location}

        gateway = stack.enter_context(
            gateway_process(
                env={"GATEWAY_UPSTREAM_URL": f"{simulator}/v1", "GATEWAY_CACHE_TTL": "0"}
            )
        ).url
        me, people, locations = people_service_data(items, first_location)
        people_url, requests = start_people_service(
            stack, folder, me, people, list(locations.values())
        )
        supergraph = stack.enter_context(
            node_server(
                "supergraph-gateway.mjs",
                "--subgraph",
                f"people={people_url}",
                "--subgraph",
                f"numbers={gateway}",
                timeout=60,
            )
        )
        yield Stack(
            supergraph=supergraph.url,
            client=client,
            items=items,
            location_admin_items=location_admin_items,
            first_location=first_location,
            me=me,
            people=people,
            locations=locations,
            people_requests=requests,
        )


def numbers_of(items: list[dict[str, Any]], owner_id: str) -> list[dict[str, Any]]:
    """What ``phoneNumbers { nodes { phoneNumber extension owner { id } } }`` must return."""
    return [
        {
            "phoneNumber": item.get("phoneNumber"),
            "extension": item.get("extension"),
            "owner": {"id": owner_id},
        }
        for item in items
        if owner(item).get("id") == owner_id
    ]


def test_me_has_the_people_service_name_and_exactly_their_numbers(stack: Stack) -> None:
    body = stack.query(ME_QUERY)
    assert "errors" not in body, body
    me = body["data"]["me"]
    assert me["id"] == stack.me
    assert me["displayName"] == stack.people[stack.me]
    expected = numbers_of(stack.items, stack.me)
    assert expected, "me must own numbers"
    assert me["phoneNumbers"]["nodes"] == expected


def test_locations_have_their_time_zone_and_the_simulator_counts(stack: Stack) -> None:
    body = stack.query(LOCATIONS_QUERY)
    assert "errors" not in body, body
    counts = Counter(item["location"]["id"] for item in stack.items)
    assert len(counts) > 1
    assert body["data"]["locations"] == [
        {**location, "numberCounts": {"total": counts[location["id"]]}}
        for location in stack.locations.values()
    ]


def test_a_numbers_location_is_the_location_entity_again(stack: Stack) -> None:
    """people -> numbers -> people: a location's numbers carry the Location entity, whose
    time zone the people service answers."""
    body = stack.query(
        "{ locations { id phoneNumbers(page: {first: 2}) "
        "{ nodes { location { id name timeZone } } totalCount } } }"
    )
    assert "errors" not in body, body
    counts = Counter(item["location"]["id"] for item in stack.items)
    for location in body["data"]["locations"]:
        connection = location["phoneNumbers"]
        assert connection["totalCount"] == counts[location["id"]]
        assert [node["location"] for node in connection["nodes"]] == [
            stack.locations[location["id"]]
        ] * 2


def test_number_owners_carry_the_people_service_display_name(stack: Stack) -> None:
    body = stack.query(OWNER_PERSON_QUERY)
    assert "errors" not in body, body
    nodes = body["data"]["phoneNumbers"]["nodes"]
    expected = [item for item in stack.items if owner(item).get("type") == "PEOPLE"][:20]
    assert [node["owner"]["id"] for node in nodes] == [owner(item)["id"] for item in expected]
    assert [node["phoneNumber"] for node in nodes] == [item.get("phoneNumber") for item in expected]
    known = [node for node in nodes if node["owner"]["id"] in stack.people]
    unknown = [node for node in nodes if node["owner"]["id"] not in stack.people]
    assert len(known) >= 10
    assert unknown, "the page should also hold owners the people service does not know"
    for node in known:
        assert node["owner"]["person"] == {"displayName": stack.people[node["owner"]["id"]]}
    for node in unknown:
        # The people service resolves an unknown id to null; Apollo Gateway then still answers
        # the Person our subgraph returned, with the people service's fields null.
        assert node["owner"]["person"] == {"displayName": None}, node


def test_the_callers_token_reaches_the_simulator_through_both_gateways(stack: Stack) -> None:
    seen = stack.people_request_count()

    # The location admin sees only the first location, through the supergraph as at the
    # simulator: `me` lives elsewhere, so the location admin sees none of their numbers.
    as_admin = stack.query(ME_QUERY)
    scoped = stack.query(ME_QUERY, token="demo-location-admin")
    assert "errors" not in scoped, scoped
    assert as_admin["data"]["me"]["phoneNumbers"]["nodes"]
    assert scoped["data"]["me"]["displayName"] == stack.people[stack.me]
    assert scoped["data"]["me"]["phoneNumbers"]["nodes"] == numbers_of(
        stack.location_admin_items, stack.me
    )
    assert scoped["data"]["me"]["phoneNumbers"]["nodes"] == []

    # Every known person: exactly the numbers the location admin sees at the simulator, all in
    # the first location; some people have numbers there and some have them elsewhere.
    people = stack.query(PEOPLE_QUERY, token="demo-location-admin")
    assert "errors" not in people, people
    seen_numbers = 0
    for person in people["data"]["people"]:
        nodes = person["phoneNumbers"]["nodes"]
        admin_sees = numbers_of(stack.items, person["id"])
        location_admin_sees = numbers_of(stack.location_admin_items, person["id"])
        assert [(n["phoneNumber"], n["extension"]) for n in nodes] == [
            (n["phoneNumber"], n["extension"]) for n in location_admin_sees
        ]
        assert {n["location"]["id"] for n in nodes} <= {stack.first_location}
        seen_numbers += len(nodes)
        assert len(nodes) <= len(admin_sees)
    assert 0 < seen_numbers < sum(len(numbers_of(stack.items, key)) for key in stack.people)

    # Location counts: the first location's total, zero everywhere else.
    counts = stack.query(LOCATIONS_QUERY, token="demo-location-admin")
    assert "errors" not in counts, counts
    totals = {
        location["id"]: location["numberCounts"]["total"]
        for location in counts["data"]["locations"]
    }
    assert totals.pop(stack.first_location) == len(stack.location_admin_items) > 0
    assert set(totals.values()) == {0}

    # The people subgraph got the same header (the supergraph forwards it to every subgraph).
    forwarded = {request["authorization"] for request in stack.people_requests_since(seen)}
    assert forwarded == {"Bearer demo-admin", "Bearer demo-location-admin"}


def test_no_token_is_unauthenticated_on_the_numbers_fields_only(stack: Stack) -> None:
    seen = stack.people_request_count()
    body = stack.query(ME_NUMBERS_ONLY, token=None)
    assert body["data"] == {"me": {"displayName": stack.people[stack.me], "phoneNumbers": None}}
    assert len(body["errors"]) == 1, body["errors"]
    error = body["errors"][0]
    assert error["path"] == ["me", "phoneNumbers"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert error["extensions"]["serviceName"] == "numbers"  # Apollo Gateway adds it
    assert "upstreamStatus" not in error["extensions"]  # live mode: no upstream call at all
    assert [r["authorization"] for r in stack.people_requests_since(seen)] == [None]


def test_an_upstream_403_on_an_entity_field_fails_alone(stack: Stack) -> None:
    body = stack.query(ME_NUMBERS_ONLY, token="demo-no-scope")
    assert body["data"] == {"me": {"displayName": stack.people[stack.me], "phoneNumbers": None}}
    assert len(body["errors"]) == 1, body["errors"]
    error = body["errors"][0]
    assert error["path"] == ["me", "phoneNumbers"]
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert error["extensions"]["upstreamStatus"] == 403
    assert error["extensions"]["trackingId"].startswith("ROUTER_")
    assert error["extensions"]["serviceName"] == "numbers"
    assert "demo-no-scope" not in json.dumps(body)

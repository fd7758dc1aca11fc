"""This subgraph behind both federation routers a platform team picks: Hive Gateway
(``tests/js/hive-gateway.mjs``) and Apollo Gateway (``tests/js/supergraph-gateway.mjs``).

Each stack, on free loopback ports: the Webex simulator, this gateway in PRODUCTION mode
against it with a trusted-documents manifest and ``GATEWAY_ROUTER_SECRET`` (cost and entity
bounds at their defaults), the people subgraph (150 people, all real PEOPLE owners of the
simulator's org) and the router, which sends the caller's ``Authorization`` and the static
``Gateway-Router-Secret`` to every subgraph. Through each router:

- a plan across both subgraphs carries the caller's token (a location admin sees only their
  location; the people subgraph got each caller's header and the secret);
- a 150-person plan (``people { phoneNumbers { totalCount } }``): one ``_entities`` call with 150
  representations, every total exactly the simulator's;
- trusted documents: the router's generated ``_entities`` operations run; ``_service`` answers
  even without the secret; a client operation the router passes through as a root field of
  ours is refused as not in the list, and ``_entities`` without the secret is refused;
- the error codes clients branch on survive the router: UNAUTHENTICATED, FORBIDDEN,
  BAD_USER_INPUT (on the entity field, siblings intact) and GRAPHQL_VALIDATION_FAILED.

Skipped (with the reason printed) only when node/npm are missing; a failed install fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.simulator import build_demo_world
from tests.node_packages import node_server, require_node, run_node_json
from tests.processes import gateway_process
from tests.test_federation_e2e import (
    NUMBERS_SDL,
    PEOPLE_SDL,
    SEED,
    SIZE,
    numbers_of,
    owner,
    service_locations,
    start_people_service,
    start_simulator,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROUTERS = ("hive", "apollo")
ROUTER_SECRET = "router-secret-for-the-e2e-stack-at-least-32-bytes"
PEOPLE = 150  # the plan's representations: past the former cap of 100
ME_QUERY = "{ me { id displayName phoneNumbers { nodes { phoneNumber extension owner { id } } } } }"
PEOPLE_TOTALS = "{ people { id phoneNumbers { totalCount } } }"
ME_NUMBERS_ONLY = "{ me { displayName phoneNumbers { nodes { phoneNumber } } } }"
# A client operation the router sends on as one of our root fields (no entities involved).
ROOT_FIELD = "{ numberCounts { total } }"
# The only document the manifest lists (what a client of this subgraph alone would send).
LISTED = "query Listed { numberCounts { total } }"


@dataclass(frozen=True)
class RouterStack:
    router: str
    numbers: str  # this gateway's /graphql
    client: httpx.Client
    items: list[dict[str, Any]]  # every entry, as demo-admin sees it at the simulator
    location_admin_items: list[dict[str, Any]]
    me: str
    people: dict[str, str]  # person id -> displayName
    people_requests: Path
    log: Any  # the gateway's ServedProcess: one JSON line per request

    def query(self, document: str, token: str | None = "demo-admin") -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = self.client.post(self.router, json={"query": document}, headers=headers)
        body: dict[str, Any] = response.json()
        return body

    def log_mark(self) -> str:
        """A request straight to this gateway, once its log line is written: the requests it
        logs after this one's line came after it. Returns the request's id."""
        request_id = f"mark-{uuid.uuid4()}"
        self.client.post(
            self.numbers,
            json={"query": "{ _service { sdl } }"},
            headers={"X-Request-ID": request_id},
        )
        deadline = time.monotonic() + 10
        while not any(request_id in line for line in self.log.lines):
            assert time.monotonic() < deadline, "the gateway never logged the mark request"
            time.sleep(0.02)
        return request_id

    def requests_logged_after(self, start: str, end: str) -> list[dict[str, Any]]:
        """The request log lines between the lines of two ``log_mark`` requests."""
        lines = [json.loads(line) for line in self.log.lines if line.startswith("{")]
        requests = [line for line in lines if line.get("event") == "http_request"]
        ids = [line.get("requestId") for line in requests]
        return requests[ids.index(start) + 1 : ids.index(end)]

    def people_requests_since(self, count: int) -> list[dict[str, Any]]:
        lines = self.people_requests.read_text().splitlines()[count:]
        return [json.loads(line) for line in lines]


def people_data(items: list[dict[str, Any]]) -> tuple[str, dict[str, str], list[dict[str, str]]]:
    """``me`` (a person with numbers outside the first location), the first 150 distinct
    PEOPLE owners (``me`` among them) and every location, all from the simulator's data."""
    first_location = build_demo_world(size=SIZE, seed=SEED).demo_org.location_ids[0]
    owners = [item for item in items if owner(item).get("type") == "PEOPLE"]
    me_item = next(
        item
        for item in owners
        if item["location"]["id"] != first_location and item.get("phoneNumber")
    )
    people = {owner(me_item)["id"]: ""}
    for item in owners:
        people.setdefault(owner(item)["id"], "")
        if len(people) == PEOPLE:
            break
    named = {
        item_owner["id"]: f"{item_owner.get('firstName')} {item_owner.get('lastName')}"
        for item_owner in (owner(item) for item in owners)
        if item_owner["id"] in people
    }
    return owner(me_item)["id"], named, list(service_locations(items).values())


@pytest.fixture(scope="module", params=ROUTERS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterStack]:
    require_node()
    router_kind: str = request.param
    folder = tmp_path_factory.mktemp(f"router-{router_kind}")
    manifest = folder / "persisted-documents.json"
    manifest.write_text(json.dumps({hashlib.sha256(LISTED.encode()).hexdigest(): LISTED}))
    with contextlib.ExitStack() as stack, httpx.Client(trust_env=False, timeout=60) as client:
        simulator, items, location_admin_items = start_simulator(stack, client)
        numbers = stack.enter_context(
            gateway_process(
                env={
                    "GATEWAY_UPSTREAM_URL": f"{simulator}/v1",
                    "GATEWAY_ENV": "production",
                    "GATEWAY_TRUSTED_DOCUMENTS": str(manifest),
                    "GATEWAY_ROUTER_SECRET": ROUTER_SECRET,
                    "GATEWAY_CACHE_TTL": "0",
                    "GATEWAY_LOG_LEVEL": "info",
                }
            )
        )
        me, people, locations = people_data(items)
        people_url, requests = start_people_service(stack, folder, me, people, locations)
        secret_header = f"Gateway-Router-Secret={ROUTER_SECRET}"
        if router_kind == "hive":
            (folder / "people.graphql").write_text(PEOPLE_SDL)
            composed = run_node_json(
                "compose.mjs",
                "apollo",
                f"numbers={NUMBERS_SDL}",
                f"people={folder / 'people.graphql'}",
            )
            assert composed["ok"], composed["errors"]
            supergraph = folder / "supergraph.graphql"
            supergraph.write_text(composed["supergraphSdl"])
            args = [
                "hive-gateway.mjs",
                "--supergraph",
                str(supergraph),
                "--subgraph",
                f"numbers={numbers.url}",
                "--subgraph",
                f"people={people_url}",
            ]
        else:
            # IntrospectAndCompose asks both subgraphs for `_service { sdl }` at start-up:
            # through production's trusted documents, that must answer.
            args = [
                "supergraph-gateway.mjs",
                "--subgraph",
                f"people={people_url}",
                "--subgraph",
                f"numbers={numbers.url}",
            ]
        router = stack.enter_context(
            node_server(*args, "--subgraph-header", secret_header, timeout=60)
        )
        yield RouterStack(
            router=router.url,
            numbers=numbers.url,
            client=client,
            items=items,
            location_admin_items=location_admin_items,
            me=me,
            people=people,
            people_requests=requests,
            log=numbers,
        )


def codes_of(body: dict[str, Any]) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in body.get("errors", [])]


def test_a_plan_across_both_subgraphs_carries_the_callers_token(stack: RouterStack) -> None:
    seen = len(stack.people_requests.read_text().splitlines())
    as_admin = stack.query(ME_QUERY)
    assert "errors" not in as_admin, as_admin
    me = as_admin["data"]["me"]
    assert me["id"] == stack.me
    assert me["displayName"] == stack.people[stack.me]
    expected = numbers_of(stack.items, stack.me)
    assert expected, "me must own numbers"
    assert me["phoneNumbers"]["nodes"] == expected

    scoped = stack.query(ME_QUERY, "demo-location-admin")
    assert "errors" not in scoped, scoped
    assert scoped["data"]["me"]["phoneNumbers"]["nodes"] == numbers_of(
        stack.location_admin_items, stack.me
    )
    assert scoped["data"]["me"]["phoneNumbers"]["nodes"] == []

    forwarded = stack.people_requests_since(seen)
    assert {request["authorization"] for request in forwarded} == {
        "Bearer demo-admin",
        "Bearer demo-location-admin",
    }
    assert {request["routerSecret"] for request in forwarded} == {ROUTER_SECRET}


def test_a_150_person_plan_is_one_entities_call_and_every_total_is_right(
    stack: RouterStack,
) -> None:
    mark = stack.log_mark()
    body = stack.query(PEOPLE_TOTALS)
    assert "errors" not in body, json.dumps(body)[:3000]
    people = body["data"]["people"]
    assert len(people) == PEOPLE
    owned = Counter(owner(item).get("id") for item in stack.items)
    assert {person["id"]: person["phoneNumbers"]["totalCount"] for person in people} == {
        key: owned[key] for key in stack.people
    }
    # The router asked this subgraph once, with every representation.
    graphql = stack.requests_logged_after(mark, stack.log_mark())
    assert len(graphql) == 1, json.dumps(graphql)[:3000]
    assert graphql[0]["status"] == 200
    assert graphql[0]["errorCodes"] == []


def test_service_answers_without_the_secret_and_entities_need_it(stack: RouterStack) -> None:
    service = stack.client.post(stack.numbers, json={"query": "{ _service { sdl } }"})
    assert service.status_code == 200
    assert "type PhoneNumber" in service.json()["data"]["_service"]["sdl"]

    entities = {
        "query": "query ($r: [_Any!]!) { _entities(representations: $r) "
        "{ ... on Person { phoneNumbers { totalCount } } } }",
        "variables": {"r": [{"__typename": "Person", "id": stack.me}]},
    }
    headers = {"Authorization": "Bearer demo-admin"}
    without = stack.client.post(stack.numbers, json=entities, headers=headers)
    assert codes_of(without.json()) == ["PERSISTED_QUERY_NOT_IN_LIST"]
    with_secret = stack.client.post(
        stack.numbers, json=entities, headers={**headers, "Gateway-Router-Secret": ROUTER_SECRET}
    )
    assert "errors" not in with_secret.json(), with_secret.text
    total = with_secret.json()["data"]["_entities"][0]["phoneNumbers"]["totalCount"]
    assert total == len(numbers_of(stack.items, stack.me))
    assert ROUTER_SECRET not in "\n".join(stack.log.lines)


def test_a_client_operation_the_router_passes_through_is_refused(stack: RouterStack) -> None:
    body = stack.query(ROOT_FIELD)
    assert not (body.get("data") or {}).get("numberCounts"), body
    assert "PERSISTED_QUERY_NOT_IN_LIST" in json.dumps(body), body


def test_error_codes_survive_the_router(stack: RouterStack) -> None:
    no_token = stack.query(ME_NUMBERS_ONLY, token=None)
    assert no_token["data"]["me"] == {
        "displayName": stack.people[stack.me],
        "phoneNumbers": None,
    }
    assert codes_of(no_token) == ["UNAUTHENTICATED"], no_token

    no_scope = stack.query(ME_NUMBERS_ONLY, token="demo-no-scope")
    assert no_scope["data"]["me"]["phoneNumbers"] is None
    assert codes_of(no_scope) == ["FORBIDDEN"], no_scope
    assert "demo-no-scope" not in json.dumps(no_scope)

    bad_page = stack.query("{ me { displayName phoneNumbers(page: {first: 0}) { totalCount } } }")
    assert bad_page["data"]["me"]["displayName"] == stack.people[stack.me]
    assert bad_page["data"]["me"]["phoneNumbers"] is None
    assert codes_of(bad_page) == ["BAD_USER_INPUT"], bad_page

    # The router validates the client's document itself, with the code this subgraph uses.
    invalid = stack.query("{ me { nope } }")
    assert "GRAPHQL_VALIDATION_FAILED" in codes_of(invalid), invalid

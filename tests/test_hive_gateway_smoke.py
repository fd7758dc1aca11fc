"""Hive Gateway in front of this subgraph: a smoke test of ``tests/js/hive-gateway.mjs``.

The same processes as ``test_federation_e2e`` (the Webex simulator, this gateway in live mode
against it, the people subgraph), composed with ``compose.mjs`` and served by Hive Gateway's
runtime instead of Apollo Gateway, with header propagation (the caller's ``Authorization``) and
a static ``Gateway-Router-Secret`` on every subgraph request. One plan that crosses both
subgraphs answers exactly what the simulator holds for the caller's token, and the token
reaches the simulator (a location admin sees only their location; a token without the scope
gets the simulator's 403 as ``FORBIDDEN``). The fuller router suites of issue 19 build on this.

Skipped (with the reason printed) only when node/npm are missing; a failed install fails.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.simulator import build_demo_world
from tests.node_packages import node_server, require_node, run_node_json
from tests.processes import gateway_process, simulator_process
from tests.test_federation_e2e import (
    NUMBERS_SDL,
    PEOPLE_SDL,
    SEED,
    SIZE,
    numbers_of,
    people_service_data,
    simulator_items,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROUTER_SECRET = "hive-smoke-router-secret"
ME_QUERY = "{ me { id displayName phoneNumbers { nodes { phoneNumber extension owner { id } } } } }"


@dataclass(frozen=True)
class HiveStack:
    router: str
    client: httpx.Client
    items: list[dict[str, Any]]
    location_admin_items: list[dict[str, Any]]
    me: str
    people: dict[str, str]
    people_requests: Path

    def query(self, document: str, token: str) -> dict[str, Any]:
        response = self.client.post(
            self.router,
            json={"query": document},
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def people_requests_since(self, count: int) -> list[dict[str, Any]]:
        lines = self.people_requests.read_text().splitlines()[count:]
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def hive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveStack]:
    require_node()
    folder = tmp_path_factory.mktemp("hive-gateway")
    (folder / "people.graphql").write_text(PEOPLE_SDL)
    composed = run_node_json(
        "compose.mjs", "apollo", f"numbers={NUMBERS_SDL}", f"people={folder / 'people.graphql'}"
    )
    assert composed["ok"], composed["errors"]
    supergraph = folder / "supergraph.graphql"
    supergraph.write_text(composed["supergraphSdl"])

    with contextlib.ExitStack() as stack, httpx.Client(trust_env=False, timeout=60) as client:
        simulator = stack.enter_context(
            simulator_process("--size", str(SIZE), "--seed", str(SEED))
        ).origin
        items = simulator_items(client, simulator, "demo-admin")
        location_admin_items = simulator_items(client, simulator, "demo-location-admin")
        first_location = build_demo_world(size=SIZE, seed=SEED).demo_org.location_ids[0]
        numbers = stack.enter_context(
            gateway_process(
                env={"GATEWAY_UPSTREAM_URL": f"{simulator}/v1", "GATEWAY_CACHE_TTL": "0"}
            )
        ).origin
        me, people, locations = people_service_data(items, first_location)
        data = folder / "people.json"
        data.write_text(
            json.dumps(
                {
                    "me": me,
                    "people": [{"id": key, "displayName": name} for key, name in people.items()],
                    "locations": list(locations.values()),
                }
            )
        )
        requests = folder / "people-requests.jsonl"
        requests.touch()
        people_service = stack.enter_context(
            node_server("people-subgraph.mjs", "--data", str(data), "--request-log", str(requests))
        )
        router = stack.enter_context(
            node_server(
                "hive-gateway.mjs",
                "--supergraph",
                str(supergraph),
                "--subgraph",
                f"numbers={numbers}/graphql",
                "--subgraph",
                f"people={people_service.url}",
                "--subgraph-header",
                f"Gateway-Router-Secret={ROUTER_SECRET}",
                timeout=60,
            )
        )
        yield HiveStack(
            router=router.url,
            client=client,
            items=items,
            location_admin_items=location_admin_items,
            me=me,
            people=people,
            people_requests=requests,
        )


def test_a_plan_across_both_subgraphs_carries_the_callers_token(hive: HiveStack) -> None:
    seen = len(hive.people_requests.read_text().splitlines())

    as_admin = hive.query(ME_QUERY, "demo-admin")
    assert "errors" not in as_admin, as_admin
    me = as_admin["data"]["me"]
    assert me["id"] == hive.me
    assert me["displayName"] == hive.people[hive.me]
    expected = numbers_of(hive.items, hive.me)
    assert expected, "me must own numbers"
    assert me["phoneNumbers"]["nodes"] == expected

    # The location admin's token reached the simulator: it answers only their location, where
    # `me` has no numbers.
    scoped = hive.query(ME_QUERY, "demo-location-admin")
    assert "errors" not in scoped, scoped
    assert scoped["data"]["me"]["phoneNumbers"]["nodes"] == numbers_of(
        hive.location_admin_items, hive.me
    )
    assert scoped["data"]["me"]["phoneNumbers"]["nodes"] == []

    # A token without the scope: the simulator's 403, as FORBIDDEN on the numbers field only.
    refused = hive.query(ME_QUERY, "demo-no-scope")
    assert refused["data"]["me"]["displayName"] == hive.people[hive.me]
    assert refused["data"]["me"]["phoneNumbers"] is None
    codes = [error["extensions"]["code"] for error in refused["errors"]]
    assert codes == ["FORBIDDEN"], refused["errors"]
    assert refused["errors"][0]["path"] == ["me", "phoneNumbers"]
    assert "demo-no-scope" not in json.dumps(refused)

    # Header propagation: the people subgraph got each caller's header and the static secret.
    forwarded = hive.people_requests_since(seen)
    assert {request["authorization"] for request in forwarded} == {
        "Bearer demo-admin",
        "Bearer demo-location-admin",
        "Bearer demo-no-scope",
    }
    assert {request["routerSecret"] for request in forwarded} == {ROUTER_SECRET}

"""Routers price this subgraph from its cost directives (issue 29), end to end.

The committed SDL composes, with a people service, under ``@apollo/composition`` and
``@theguild/federation-composition``, and both supergraphs carry every ``@cost`` and
``@listSize`` of ours. Then, on free loopback ports: the Webex simulator, this gateway in live
mode against it (``GATEWAY_MAX_COST`` at its default) and Hive Gateway
(``tests/js/hive-gateway.mjs --max-cost``) with its demand control at the same limit: a plan
this gateway would refuse is refused by the router before this subgraph is called (its request
log holds no request for it), a plan it would admit is admitted and answered, and the router's
estimate is the one our directives give. Apollo Router is not here (no binary; its demand
control reads the same directives from the same supergraph).

Skipped (with the reason printed) only when node/npm are missing; a failed install fails.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import FieldDefinitionNode, InputValueDefinitionNode, parse, print_ast

from gateway.execution.cost import CALL_COST
from gateway.settings import load_settings
from tests.node_packages import node_server, require_node, run_node_json
from tests.processes import ServedProcess, gateway_process
from tests.test_federation_e2e import (
    COMPOSERS,
    NUMBERS_SDL,
    PEOPLE_SDL,
    field,
    start_simulator,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MAX_COST = load_settings().max_cost  # the gateway's default limit, given to the router too


def pages(count: int, size: int) -> str:
    """``count`` aliased pages of ``size`` numbers each, sized by Relay's ``first``."""
    return " ".join(
        f"p{index}: phoneNumbers(first: {size}) {{ nodes {{ phoneNumber }} }}"
        for index in range(count)
    )


# Five 2,000-entry pages: 5 x (50 + 2000) = 10,250 for this gateway, over its 10,000 (and
# 5 x 2,101 for Hive Gateway).
REFUSED = f"{{ {pages(5, 2000)} }}"
# Four: 8,200 (Hive: 8,404).
ADMITTED = f"{{ {pages(4, 2000)} }}"
# One of each priced field: 50 + 10 (the page), 50 (the counts) for this gateway.
PRICED = "{ phoneNumbers(first: 10) { totalCount nodes { phoneNumber } } numberCounts { total } }"


def directives(node: FieldDefinitionNode | InputValueDefinitionNode) -> dict[str, dict[str, str]]:
    """The node's cost directives: name -> argument -> its value as GraphQL writes it."""
    return {
        directive.name.value: {
            argument.name.value: print_ast(argument.value) for argument in directive.arguments
        }
        for directive in node.directives or ()
        if directive.name.value in ("cost", "listSize")
    }


@pytest.fixture(scope="module")
def supergraphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    require_node()
    folder = tmp_path_factory.mktemp("demand-control-sdl")
    people = folder / "people.graphql"
    people.write_text(PEOPLE_SDL)
    composed = {}
    for composer in COMPOSERS:
        result = run_node_json(
            "compose.mjs", composer, f"numbers={NUMBERS_SDL}", f"people={people}"
        )
        assert result["errors"] == [], result["errors"]
        composed[composer] = result["supergraphSdl"]
    return composed


COST = {"weight": str(CALL_COST)}
LIST_SIZE = {
    "assumedSize": "100",
    "slicingArguments": '["first", "last"]',
    "sizedFields": '["nodes", "edges"]',
    "requireOneSlicingArgument": "false",
}


@pytest.mark.parametrize("composer", COMPOSERS)
def test_both_supergraphs_carry_every_cost_directive(
    composer: str, supergraphs: dict[str, str]
) -> None:
    supergraph = parse(supergraphs[composer])
    for owner in ("Query", "Location", "Person", "Organization"):
        page = field(supergraph, owner, "phoneNumbers")
        assert directives(page) == {"cost": COST, "listSize": LIST_SIZE}
        last = next(argument for argument in page.arguments or () if argument.name.value == "last")
        assert directives(last) == {"cost": COST}
    for owner in ("Query", "Location", "Organization"):
        counts = field(supergraph, owner, "numberCounts")
        assert directives(counts) == {"cost": COST}
    feed = field(supergraph, "Subscription", "phoneNumberChanges")
    assert directives(feed) == {"cost": {"weight": str(11 * CALL_COST)}}
    assert "https://specs.apollo.dev/cost/v0.1" in supergraphs[composer]


@dataclass(frozen=True)
class DemandControlled:
    router: str
    numbers: str
    client: httpx.Client
    log: ServedProcess

    def through_router(self, document: str) -> dict[str, Any]:
        response = self.client.post(
            self.router,
            json={"query": document},
            headers={"Accept": "application/json", "Authorization": "Bearer demo-admin"},
        )
        body: dict[str, Any] = response.json()
        return body

    def straight(self, document: str) -> dict[str, Any]:
        response = self.client.post(
            self.numbers,
            json={"query": document},
            headers={"Accept": "application/json", "Authorization": "Bearer demo-admin"},
        )
        body: dict[str, Any] = response.json()
        return body

    def requests_during(self, document: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The router's answer to ``document`` and the requests this gateway logged for it
        (between two marks sent to it directly)."""
        start = self._mark()
        body = self.through_router(document)
        end = self._mark()
        lines = [json.loads(line) for line in self.log.lines if line.startswith("{")]
        requests = [line for line in lines if line.get("event") == "http_request"]
        ids = [line.get("requestId") for line in requests]
        return body, requests[ids.index(start) + 1 : ids.index(end)]

    def _mark(self) -> str:
        request_id = f"mark-{uuid.uuid4()}"
        self.client.post(
            self.numbers, json={"query": "{ __typename }"}, headers={"X-Request-ID": request_id}
        )
        deadline = time.monotonic() + 10
        while not any(request_id in line for line in self.log.lines):
            assert time.monotonic() < deadline, "the gateway never logged the mark request"
            time.sleep(0.02)
        return request_id


@pytest.fixture(scope="module")
def hive(
    supergraphs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemandControlled]:
    folder = tmp_path_factory.mktemp("demand-control")
    supergraph = folder / "supergraph.graphql"
    supergraph.write_text(supergraphs["apollo"])
    with contextlib.ExitStack() as stack, httpx.Client(trust_env=False, timeout=60) as client:
        simulator, _, _ = start_simulator(stack, client)
        numbers = stack.enter_context(
            gateway_process(
                env={
                    "GATEWAY_UPSTREAM_URL": f"{simulator}/v1",
                    "GATEWAY_CACHE_TTL": "0",
                    "GATEWAY_LOG_LEVEL": "info",
                }
            )
        )
        router = stack.enter_context(
            node_server(
                "hive-gateway.mjs",
                "--supergraph",
                str(supergraph),
                "--subgraph",
                f"numbers={numbers.url}",
                "--max-cost",
                str(MAX_COST),
                timeout=60,
            )
        )
        yield DemandControlled(router.url, numbers.url, client, numbers)


def codes_of(body: dict[str, Any]) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in body.get("errors", [])]


def test_a_plan_this_gateway_would_refuse_is_refused_before_the_subgraph_is_called(
    hive: DemandControlled,
) -> None:
    # This gateway's own estimate refuses it (before any upstream call).
    assert codes_of(hive.straight(REFUSED)) == ["BAD_USER_INPUT"]
    body, requests = hive.requests_during(REFUSED)
    assert set(codes_of(body)) == {"COST_ESTIMATED_TOO_EXPENSIVE"}, body
    assert body["errors"][0]["extensions"]["cost"]["max"] == MAX_COST
    assert body["errors"][0]["extensions"]["cost"]["estimated"] > MAX_COST
    assert requests == [], "the router called the subgraph"


def test_a_plan_this_gateway_would_admit_is_admitted(hive: DemandControlled) -> None:
    straight = hive.straight(ADMITTED)
    assert "errors" not in straight, straight
    body, requests = hive.requests_during(ADMITTED)
    assert "errors" not in body, body
    assert len(requests) == 1
    assert body["data"] == straight["data"]
    assert all(len(body["data"][f"p{index}"]["nodes"]) == 1000 for index in range(4))
    assert body["extensions"]["cost"]["estimated"] <= MAX_COST


def test_the_router_prices_our_fields_from_our_directives(hive: DemandControlled) -> None:
    """Hive's estimate of one page of 10 and one counts call, from our directives: each
    field's @cost (50), 1 per object (its default type weight), the page's numbers multiplied
    by its @listSize (``first: 10`` sizes ``nodes``). Hive Gateway 2.12 also charges the
    ``last`` argument's @cost (the tail probe, 50) on every ``phoneNumbers`` field, asked or
    not, where Apollo Router charges it when ``last`` is given: so here a page is
    50 + 50 + 1 (the connection) + 10 x 1 (the numbers), and the counts 50 + 1: 162. Without
    our directives it would be 3 (1 per object, lists of one). Either way the router's
    estimate is at least this gateway's own (50 + 10 + 50)."""
    body = hive.through_router(PRICED)
    assert "errors" not in body, body
    assert body["extensions"]["cost"]["estimated"] == 162
    assert body["extensions"]["cost"]["estimated"] >= 2 * CALL_COST + 10
    tail = hive.through_router("{ phoneNumbers(last: 10) { nodes { phoneNumber } } }")
    assert "errors" not in tail, tail
    # This gateway: the probe and the page, 2 x 50 + 10.
    assert tail["extensions"]["cost"]["estimated"] == 2 * CALL_COST + 1 + 10


def test_the_directives_are_what_every_router_reads(hive: DemandControlled) -> None:
    """The SDL the router composed is the one this subgraph publishes (``_service``)."""
    sdl = hive.straight("{ _service { sdl } }")["data"]["_service"]["sdl"]
    assert sdl.strip() == Path(NUMBERS_SDL).read_text().strip()
    assert '@link(url: "https://specs.apollo.dev/federation/v2.9"' in sdl

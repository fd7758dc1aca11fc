"""A fan-out paged by the clients' own helpers (issue 29), in Node, against a live gateway:
Apollo Client 3's ``relayStylePagination()`` and Relay's ``@connection`` (compiled against the
committed ``schema/numbers.graphql``, which carries ``ownerTypes``) page four owner types'
merged list to the end forward and backward, with no merge function of ours; each client's
connection, once paging has ended, holds the merged list exactly as the gateway answers it in
one page, in the upstream's order.

One ``numbers-gateway serve`` process over the embedded simulator (development, 1,000
entries), as ``make run`` serves it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.node_packages import run_node_json
from tests.processes import ServedProcess, gateway_process
from tests.test_relay_clients_e2e import SDL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FEATURES = {"ownerTypes": ["PLACE", "AUTO_ATTENDANT", "CALL_QUEUE", "HUNT_GROUP"]}
PAGE_SIZE = 30


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServedProcess]:
    with gateway_process(env={"GATEWAY_ENV": "development"}) as process:
        yield process


@pytest.fixture(scope="module")
def merged(gateway: ServedProcess) -> list[dict[str, Any]]:
    """The merged list in one page, as the gateway answers it."""
    body = httpx.post(
        gateway.url,
        json={
            "query": "query ($filter: PhoneNumberFilter) { phoneNumbers(filter: $filter, "
            "first: 2000) { totalCount edges { node { phoneNumber extension } } } }",
            "variables": {"filter": FEATURES},
        },
        timeout=30,
        trust_env=False,
    ).json()
    connection = body["data"]["phoneNumbers"]
    assert connection["totalCount"] == len(connection["edges"]) == 199  # 65 + 46 + 46 + 42
    return [edge["node"] for edge in connection["edges"]]


@pytest.mark.parametrize("client", ["apollo", "relay"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_client_pages_four_owner_types_to_the_end(
    gateway: ServedProcess, merged: list[dict[str, Any]], client: str, direction: str
) -> None:
    arguments = ["--url", gateway.url, "--page-size", str(PAGE_SIZE), "--direction", direction]
    arguments += ["--filter", json.dumps(FEATURES)]
    if client == "relay":
        arguments += ["--schema", str(SDL)]
    outcome: dict[str, Any] = run_node_json(f"{client}-pagination.mjs", *arguments)
    assert [edge["node"] for edge in outcome["edges"]] == merged
    assert outcome["totalCount"] == len(merged)
    assert outcome["pages"] == -(-len(merged) // PAGE_SIZE)
    assert outcome["pageInfo"]["hasNextPage"] is False
    assert outcome["pageInfo"]["hasPreviousPage"] is False

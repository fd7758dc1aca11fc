"""Relay-style paging with the clients' own standard helpers, in Node, against a live gateway:
Apollo Client 3's ``relayStylePagination()`` field policy and Relay (relay-compiler compiling a
bidirectional ``@connection`` against the committed ``schema/numbers.graphql``, relay-runtime
paging it as ``usePaginationFragment``'s ``loadNext``/``loadPrevious`` do), each forward and
backward, with no merge function of ours: each client's merged connection, once paging has
ended, holds every entry the filter matches in the upstream's order (the issue's symptom was
Apollo keeping only the last page: 23 of 543).

One ``numbers-gateway serve`` process per module over the embedded simulator (development,
its default 1,000 entries; 543 of them people's numbers), as ``make run`` serves it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.node_packages import run_node_json
from tests.processes import ServedProcess, gateway_process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SDL = Path(__file__).resolve().parents[1] / "schema" / "numbers.graphql"
PEOPLE = {"ownerType": "PEOPLE"}
PAGE_SIZE = 40  # 543 = 13 pages of 40 and one of 23


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServedProcess]:
    with gateway_process(env={"GATEWAY_ENV": "development"}) as process:
        yield process


@pytest.fixture(scope="module")
def every_person_number(gateway: ServedProcess) -> list[dict[str, Any]]:
    """The filter's whole list in one page, as the gateway answers it."""
    body = httpx.post(
        gateway.url,
        json={
            "query": "query ($filter: PhoneNumberFilter) { phoneNumbers(filter: $filter, "
            "page: {first: 2000}) { totalCount edges { cursor node { phoneNumber extension } } } }",
            "variables": {"filter": PEOPLE},
        },
        timeout=30,
        trust_env=False,
    ).json()
    connection = body["data"]["phoneNumbers"]
    assert connection["totalCount"] == len(connection["edges"]) == 543
    return connection["edges"]  # type: ignore[no-any-return]


def _paged(gateway: ServedProcess, client: str, direction: str) -> dict[str, Any]:
    arguments = ["--url", gateway.url, "--page-size", str(PAGE_SIZE), "--direction", direction]
    arguments += ["--filter", json.dumps(PEOPLE)]
    if client == "relay":
        arguments += ["--schema", str(SDL)]
    outcome: dict[str, Any] = run_node_json(f"{client}-pagination.mjs", *arguments)
    return outcome


@pytest.mark.parametrize("client", ["apollo", "relay"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_client_pages_to_the_end_and_holds_the_whole_list(
    gateway: ServedProcess,
    every_person_number: list[dict[str, Any]],
    client: str,
    direction: str,
) -> None:
    outcome = _paged(gateway, client, direction)
    assert outcome["edges"] == every_person_number, "the client merged every page, in order"
    assert outcome["totalCount"] == 543
    assert outcome["pages"] == 14
    page_info = outcome["pageInfo"]
    assert page_info["hasNextPage"] is False
    assert page_info["hasPreviousPage"] is False
    assert page_info["startCursor"] == every_person_number[0]["cursor"]
    assert page_info["endCursor"] == every_person_number[-1]["cursor"]
    # Relay's own arguments went out (never `page`); the other direction's as null or absent.
    count, cursor = ("first", "after") if direction == "forward" else ("last", "before")
    if client == "relay":
        count, cursor = ("count", "cursor") if direction == "forward" else ("last", "before")
    requests = outcome["requests"]
    assert len(requests) == 14
    assert all("page" not in variables for variables in requests)
    assert all(variables[count] == PAGE_SIZE for variables in requests)
    assert requests[0].get(cursor) is None
    assert all(variables[cursor] for variables in requests[1:])

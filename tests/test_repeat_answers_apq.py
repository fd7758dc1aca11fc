"""The repeat fast path and persisted queries: a repeat by APQ hash alone is answered from the
answer store only while the gateway still holds the document, as the view would resolve it
(found by review: after the document was evicted the fast path kept answering what the view
answers PERSISTED_QUERY_NOT_FOUND).

Each test sends the same requests to a gateway with the repeat fast path and to one without
it (``create_app(..., repeat_answers=False)``) and expects the same answers.
"""

from __future__ import annotations

import hashlib
import json

import httpx

from tests.conftest import FakeClock
from tests.test_repeat_answers import ADMIN, gateway, runs_counted


def apq(query: str, *, with_document: bool) -> dict[str, str]:
    digest = hashlib.sha256(query.encode()).hexdigest()
    extensions = json.dumps({"persistedQuery": {"version": 1, "sha256Hash": digest}})
    return {"extensions": extensions} | ({"query": query} if with_document else {})


async def apq_then_evicted(client: httpx.AsyncClient) -> httpx.Response:
    """Register a document by APQ GET, ask for it by hash alone (answered and stored, a plan
    left), then register others until it is evicted from the caller's share, and ask again."""
    query = "query Few { phoneNumbers(page: {first: 2}) { nodes { phoneNumber } } }"
    registered = await client.get("/graphql", params=apq(query, with_document=True), headers=ADMIN)
    assert registered.status_code == 200, registered.text
    for _ in range(2):  # by hash: the stored answer, and (fast) the plan for its repeats
        by_hash = await client.get(
            "/graphql", params=apq(query, with_document=False), headers=ADMIN
        )
        assert by_hash.status_code == 200, by_hash.text
        assert "errors" not in by_hash.json(), by_hash.text
    for n in range(8):  # the caller's own flood evicts its oldest document
        other = f"query Other{n} {{ phoneNumbers(page: {{first: {n + 3}}}) {{ totalCount }} }}"
        await client.get("/graphql", params=apq(other, with_document=True), headers=ADMIN)
    return await client.get("/graphql", params=apq(query, with_document=False), headers=ADMIN)


async def test_repeat_of_an_evicted_apq_hash_is_answered_as_the_view_answers_it() -> None:
    """The view resolves the hash first and says PERSISTED_QUERY_NOT_FOUND once the document
    is gone; the fast path serves the stored answer of a document the gateway no longer has."""
    small = {"persisted_queries_max_entries": 4}
    async with gateway(FakeClock(), fast=False, **small) as (client, _):
        normal = await apq_then_evicted(client)
    async with gateway(FakeClock(), fast=True, **small) as (client, _):
        repeat = await apq_then_evicted(client)
    assert "PERSISTED_QUERY_NOT_FOUND" in normal.text, normal.text  # the scenario holds
    assert (repeat.status_code, repeat.content) == (normal.status_code, normal.content)


async def test_a_repeat_by_a_held_hash_still_takes_the_fast_path() -> None:
    """While the document is held, a repeat by hash alone is answered without the runner."""
    query = "query Few { phoneNumbers(page: {first: 2}) { nodes { phoneNumber } } }"
    with runs_counted() as runs:
        async with gateway(FakeClock(), fast=True) as (client, _):
            await client.get("/graphql", params=apq(query, with_document=True), headers=ADMIN)
            by_hash = [
                await client.get("/graphql", params=apq(query, with_document=False), headers=ADMIN)
                for _ in range(4)
            ]
    assert {r.status_code for r in by_hash} == {200}
    assert len({r.content for r in by_hash}) == 1
    # The registration and the first request by hash ran; the three repeats did not.
    assert runs[0] == 2, runs

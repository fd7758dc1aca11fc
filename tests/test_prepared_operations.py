"""One prepared operation through every transport (issue 26): a document is parsed once, under
the token limit, validated once and derived once; a repeat skips all of it and still runs its
own cost check; whole answers are reused by the prepared operation's key and the caller, for
GET and POST alike, with the same status, headers, log line and metrics.

Parses are counted on the app's ``PreparedOperations`` and tokens on graphql-core's lexer, not
timed: the 600 KB document that held the loop for 1.6 s (a bare ``parse`` to find a
subscription) must now cost the token limit's worth of lexing, and no more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from graphql.language import lexer as graphql_lexer
from structlog.testing import capture_logs

from gateway.data.caller import Callers
from gateway.execution.prepare import PreparedOperations
from gateway.server.app import create_app
from gateway.simulator import create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import GATEWAY_BASE, FakeClock, RecordingTransport, live_settings

# A GET needs a header CSRF prevention accepts (as Apollo's clients send).
ADMIN = {"authorization": "Bearer demo-admin", "apollo-require-preflight": "1"}
LOCATION_ADMIN = {"authorization": "Bearer demo-location-admin"}
FIFTY = "query Fifty { phoneNumbers(page: {first: 50}) { nodes { phoneNumber } totalCount } }"
TTL = 60


@asynccontextmanager
async def gateway(
    world: SimulatorWorld, clock: FakeClock | None = None, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, RecordingTransport, PreparedOperations]]:
    recorder = RecordingTransport(httpx.ASGITransport(app=create_simulator_app(world)))
    app = create_app(
        live_settings(cache_ttl=TTL, **overrides),
        upstream_transport=recorder,
        clock=clock or FakeClock(),
    )
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=GATEWAY_BASE) as client:
            operations = manager._state["runner"].operations
            yield client, recorder, operations


def graphql_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line.get("event") == "http_request"]


@contextmanager
def lexed_tokens() -> Iterator[list[int]]:
    """Counts the tokens graphql-core's lexer hands out while the block runs."""
    counted = [0]
    lookahead = graphql_lexer.Lexer.lookahead

    def counting(self: graphql_lexer.Lexer) -> Any:
        counted[0] += 1
        return lookahead(self)

    graphql_lexer.Lexer.lookahead = counting  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        graphql_lexer.Lexer.lookahead = lookahead  # type: ignore[method-assign]


async def test_a_huge_document_naming_a_subscription_costs_only_the_token_limit(
    world: SimulatorWorld,
) -> None:
    """``query A { a a a ... } query subscription { b }`` of 600 KB: refused at the token limit
    (BAD_USER_INPUT), having lexed no more tokens than the limit allows, and parsed once."""
    document = "query A { " + "a " * 300_000 + "} query subscription { b }"
    assert len(document) > 600_000
    async with gateway(world) as (client, recorder, operations):
        with lexed_tokens() as tokens:
            response = await client.post(
                "/graphql",
                json={"query": document},
                headers={**ADMIN, "accept": "application/graphql-response+json"},
            )
        healthy = await client.get("/healthz")
    assert response.status_code == 400, response.text
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "2000 tokens" in error["message"]
    assert tokens[0] <= 2_002, tokens[0]  # the limit, and the token that broke it
    assert operations.parses == 1
    assert recorder.calls == 0
    assert healthy.status_code == 200


async def test_the_same_document_streamed_is_parsed_under_the_limit_too(
    world: SimulatorWorld,
) -> None:
    document = "query A { " + "a " * 300_000 + "} subscription B { phoneNumberChanges { kind } }"
    async with gateway(world) as (client, _, operations):
        with lexed_tokens() as tokens:
            response = await client.post(
                "/graphql",
                json={"query": document, "operationName": "B"},
                headers={**ADMIN, "accept": "text/event-stream"},
            )
    assert response.status_code == 400
    assert "2000 tokens" in response.text
    assert tokens[0] <= 2_002
    assert operations.parses == 1


async def test_a_repeat_is_parsed_once_and_still_priced_with_its_own_variables(
    world: SimulatorWorld,
) -> None:
    query = "query Page($n: Int) { phoneNumbers(page: {first: $n}) { nodes { phoneNumber } } }"
    async with gateway(world, max_cost=1_000) as (client, recorder, operations):
        small = [
            await client.post(
                "/graphql", json={"query": query, "variables": {"n": n}}, headers=ADMIN
            )
            for n in (3, 4, 5)
        ]
        calls = recorder.calls
        large = await client.post(
            "/graphql",
            json={"query": query, "variables": {"n": 2000}},
            headers={**ADMIN, "accept": "application/graphql-response+json"},
        )
    assert [len(r.json()["data"]["phoneNumbers"]["nodes"]) for r in small] == [3, 4, 5]
    assert operations.parses == 1, "a repeat skips parsing and validation"
    assert large.status_code == 400
    assert "estimated cost is 2050" in large.json()["errors"][0]["message"]
    assert recorder.calls == calls  # refused before any upstream call


async def test_a_repeated_post_is_answered_from_the_store(world: SimulatorWorld) -> None:
    """What Apollo Client, urql, Relay and GraphiQL send: the same POST again. The repeat is
    answered with the stored bytes: no upstream call, no parse, and the log line says so."""
    async with gateway(world) as (client, recorder, operations):
        with capture_logs() as logs:
            first = await client.post("/graphql", json={"query": FIFTY}, headers=ADMIN)
            repeats = [
                await client.post("/graphql", json={"query": FIFTY}, headers=ADMIN)
                for _ in range(3)
            ]
            by_get = await client.get("/graphql", params={"query": FIFTY}, headers=ADMIN)
        metrics = (await client.get("/metrics")).text
    assert recorder.calls == 1
    assert operations.parses == 1
    assert {r.content for r in [*repeats, by_get]} == {first.content}
    assert {r.headers["content-type"] for r in repeats} == {first.headers["content-type"]}
    lines = graphql_lines(logs)
    assert lines[0]["cache"] == ["miss:upstream"]
    assert [line["cache"] for line in lines[1:]] == [["reused:answer"]] * 4
    assert {line["operationName"] for line in lines} == {"Fifty"}
    assert {line["outcome"] for line in lines} == {"success"}
    assert "gateway_responses_reused_total 4.0" in metrics
    assert 'gateway_graphql_operations_total{operation="Fifty",outcome="success"} 5.0' in metrics


async def test_a_get_repeat_keeps_its_etag_and_304(world: SimulatorWorld) -> None:
    async with gateway(world) as (client, recorder, _):
        first = await client.get("/graphql", params={"query": FIFTY}, headers=ADMIN)
        repeat = await client.get("/graphql", params={"query": FIFTY}, headers=ADMIN)
        unchanged = await client.get(
            "/graphql",
            params={"query": FIFTY},
            headers={**ADMIN, "if-none-match": first.headers["etag"]},
        )
    assert recorder.calls == 1
    assert repeat.content == first.content
    assert repeat.headers["etag"] == first.headers["etag"]
    assert repeat.headers["cache-control"].startswith("private, max-age=")
    assert unchanged.status_code == 304
    assert unchanged.content == b""


async def test_an_expired_answer_is_executed_again(world: SimulatorWorld) -> None:
    clock = FakeClock()
    async with gateway(world, clock) as (client, recorder, _):
        for _ in range(3):
            await client.post("/graphql", json={"query": FIFTY}, headers=ADMIN)
        clock.now += TTL + 1
        await client.post("/graphql", json={"query": FIFTY}, headers=ADMIN)
    assert recorder.calls == 2  # the first, and the first after its answer expired


async def test_another_token_never_gets_a_callers_stored_answer(world: SimulatorWorld) -> None:
    """demo-location-admin sees one location's numbers; demo-admin sees all. After
    demo-admin's answer is stored, the other token asking the very same POST gets its own."""
    async with gateway(world) as (client, recorder, _):
        for _ in range(2):
            admins = await client.post("/graphql", json={"query": FIFTY}, headers=ADMIN)
        calls = recorder.calls
        others = [
            await client.post("/graphql", json={"query": FIFTY}, headers=LOCATION_ADMIN)
            for _ in range(2)
        ]
        sent = recorder.requests[calls].headers["authorization"]
    assert sent == "Bearer demo-location-admin"
    assert recorder.calls == calls + 1  # its own call, then its own stored answer
    assert others[0].content == others[1].content != admins.content


async def test_no_cache_and_the_cache_report_are_never_answered_from_the_store(
    world: SimulatorWorld,
) -> None:
    async with gateway(world) as (client, recorder, _):
        await client.post("/graphql", json={"query": FIFTY}, headers=ADMIN)
        refreshed = await client.post(
            "/graphql", json={"query": FIFTY}, headers={**ADMIN, "cache-control": "no-cache"}
        )
        reported = await client.post(
            "/graphql", json={"query": FIFTY}, headers={**ADMIN, "gateway-cache-report": "true"}
        )
    assert recorder.calls == 2  # the first, and the no-cache refresh
    assert "errors" not in refreshed.json()
    assert reported.json()["extensions"]["cache"]["hits"] == 1


async def test_the_caller_is_identified_once_per_request(
    world: SimulatorWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    identified = [0]
    identify = Callers.identify

    def counting(self: Callers, header: str | None) -> Any:
        identified[0] += 1
        return identify(self, header)

    monkeypatch.setattr(Callers, "identify", counting)
    async with gateway(world) as (client, _, _):
        await client.post("/graphql", json={"query": FIFTY}, headers=ADMIN)
        executed = identified[0]
        await client.post("/graphql", json={"query": FIFTY}, headers=ADMIN)
        repeated = identified[0] - executed
    assert (executed, repeated) == (1, 1)


def apq(query: str, *, with_document: bool) -> dict[str, str]:
    digest = hashlib.sha256(query.encode()).hexdigest()
    extensions = json.dumps({"persistedQuery": {"version": 1, "sha256Hash": digest}})
    return {"extensions": extensions} | ({"query": query} if with_document else {})


async def test_a_repeat_by_an_evicted_apq_hash_is_not_found(world: SimulatorWorld) -> None:
    """A stored answer never stands in for a document the gateway no longer holds: once the
    caller's own registrations evict it, its hash is PERSISTED_QUERY_NOT_FOUND again."""
    query = "query Few { phoneNumbers(page: {first: 2}) { nodes { phoneNumber } } }"
    async with gateway(world, persisted_queries_max_entries=4) as (client, _, _):
        registered = await client.get(
            "/graphql", params=apq(query, with_document=True), headers=ADMIN
        )
        assert "errors" not in registered.json(), registered.text
        for _ in range(2):
            by_hash = await client.get(
                "/graphql", params=apq(query, with_document=False), headers=ADMIN
            )
            assert by_hash.json() == registered.json()
        for n in range(8):
            other = f"query Other{n} {{ phoneNumbers(page: {{first: {n + 3}}}) {{ totalCount }} }}"
            await client.get("/graphql", params=apq(other, with_document=True), headers=ADMIN)
        evicted = await client.get(
            "/graphql", params=apq(query, with_document=False), headers=ADMIN
        )
    assert evicted.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


@pytest.mark.parametrize("spelling", ["@defer", "@ defer", "@#why\ndefer", "@,defer"])
async def test_a_deferred_fragment_however_spelled_is_merged_into_one_json_result(
    world: SimulatorWorld, spelling: str
) -> None:
    query = f"{{ numberCounts {{ total }} ... {spelling} {{ phoneNumbers {{ totalCount }} }} }}"
    async with gateway(world) as (client, _, _):
        response = await client.post("/graphql", json={"query": query}, headers=ADMIN)
    body = response.json()
    assert "errors" not in body, body
    assert body["data"]["phoneNumbers"]["totalCount"] == body["data"]["numberCounts"]["total"]


@pytest.mark.parametrize("spelling", ["@stream", "@ stream", "@#why\nstream"])
async def test_a_negative_initial_count_however_spelled_is_bad_user_input(
    world: SimulatorWorld, spelling: str
) -> None:
    query = f"{{ phoneNumbers {{ nodes {spelling}(initialCount: -1) {{ phoneNumber }} }} }}"
    async with gateway(world) as (client, recorder, _):
        response = await client.post(
            "/graphql",
            json={"query": query},
            headers={**ADMIN, "accept": "multipart/mixed, application/graphql-response+json"},
        )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert recorder.calls == 0


async def test_a_get_subscription_is_405_whatever_it_accepts(world: SimulatorWorld) -> None:
    subscription = "subscription { phoneNumberChanges { kind } }"
    async with gateway(world) as (client, _, _):
        responses = [
            await client.get(
                "/graphql", params={"query": subscription}, headers={**ADMIN, "accept": a}
            )
            for a in ("text/event-stream", "application/json", "multipart/mixed")
        ]
    assert [r.status_code for r in responses] == [405, 405, 405]
    assert {r.headers["allow"] for r in responses} == {"POST"}
    assert {r.json()["errors"][0]["extensions"]["code"] for r in responses} == {"BAD_USER_INPUT"}

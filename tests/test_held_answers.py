"""Everything held whole is priced as held whole (issue 27, round four's red team): a batch's
elements (one JSON body), a field asked twice under one response key (one page, merged), the
initial payload of an ``@stream`` (its ``initialCount`` items), and a subscription (one poll
of its feed). Each was a way past ``GATEWAY_MAX_COST`` or ``GATEWAY_MAX_PAGE_SIZE``; each is
refused before any upstream call now, or held within its bound.
"""

from __future__ import annotations

from typing import Any

import httpx
from structlog.testing import capture_logs

from gateway.execution.cost import CALL_COST
from tests.conftest import RecordingTransport, estimated_cost, live_settings, running_gateway
from tests.test_transports import multipart_parts

ADMIN = {"authorization": "Bearer demo-admin"}
STREAMED = "multipart/mixed, application/graphql-response+json"
ITEM = "phoneNumber extension state"


async def post(
    client: httpx.AsyncClient, body: Any, accept: str = "application/graphql-response+json"
) -> httpx.Response:
    return await client.post("/graphql", json=body, headers={**ADMIN, "accept": accept})


async def test_a_batch_of_streams_is_priced_as_the_json_body_it_is(
    recorder: RecordingTransport,
) -> None:
    """100 operations of two streamed 2,000-item pages each: answered as one JSON array,
    every list is held, so the batch's budget admits 2 and refuses the rest (it used to
    admit all 100: 410,000 estimated against 10,000, 400,000 items held)."""
    query = (
        "query Q($o: Int) { phoneNumbers(page: {first: 2000, offset: $o}) "
        f"{{ nodes @stream {{ {ITEM} }} }} }}"
    )
    batch = [{"query": query, "variables": {"o": n}} for n in range(100)]
    async with running_gateway(live_settings(batch_max=100), recorder) as client:
        response = await post(client, batch)
    answers = response.json()
    assert response.status_code == 200
    ran = [a for a in answers if "data" in a]
    refused = [a for a in answers if "data" not in a]
    assert len(ran) == 4  # 2,050 each: four fit 10,000
    assert {a["errors"][0]["extensions"]["code"] for a in refused} == {"BAD_USER_INPUT"}
    assert recorder.calls == 4
    assert all(a["data"]["phoneNumbers"]["nodes"] for a in ran)


def test_a_field_asked_twice_is_one_page_held_whole() -> None:
    """``nodes @stream`` and ``edges`` under one response key are one field: its edges hold
    the page whole, so it is priced (and bounded) as unstreamed; and two aliased pairs are
    two such pages."""
    twice = f"""{{ phoneNumbers(page: {{first: 100000}}) {{ nodes @stream(initialCount: 0) {{ {ITEM} }} }}
        phoneNumbers(page: {{first: 100000}}) {{ edges {{ cursor node {{ {ITEM} }} }} }} }}"""
    streamed_only = f"{{ phoneNumbers(page: {{first: 100000}}) {{ nodes @stream {{ {ITEM} }} }} }}"
    limits: dict[str, Any] = {"max_stream_items": 100_000}
    assert estimated_cost(streamed_only, **limits) == 50 * CALL_COST
    # Held: read against the unstreamed ceiling (2,000) and priced as 2,000 held items.
    assert estimated_cost(twice, **limits) == CALL_COST + 2000
    aliased = twice.replace("{ phoneNumbers(", "{ a: phoneNumbers(", 1).replace(
        "phoneNumbers(page: {first: 100000}) { edges",
        "b: phoneNumbers(page: {first: 100000}) { edges",
    )
    # Two keys, two fields: the streamed one a walk, the held one a page.
    assert estimated_cost(aliased, **limits) == 50 * CALL_COST + CALL_COST + 2000


async def test_a_field_asked_twice_with_a_held_list_is_bounded_as_held(
    recorder: RecordingTransport,
) -> None:
    twice = f"""{{ phoneNumbers(page: {{first: 100000}}) {{ nodes @stream(initialCount: 0) {{ {ITEM} }} }}
        phoneNumbers(page: {{first: 100000}}) {{ edges {{ cursor node {{ {ITEM} }} }} }} }}"""
    async with running_gateway(live_settings(max_cost=10_000_000), recorder) as client:
        response = await post(client, {"query": twice}, STREAMED)
    assert recorder.calls == 0
    ((_, first), *_) = multipart_parts(response.content)
    assert first["data"] == {"phoneNumbers": None}
    (error,) = first["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "between 1 and 2000" in error["message"], error


def test_an_initial_payload_is_priced_as_held() -> None:
    """``@stream(initialCount: first)`` holds the whole window in the first payload."""
    limits: dict[str, Any] = {"max_stream_items": 100_000}
    lazy = f"{{ phoneNumbers(page: {{first: 100000}}) {{ nodes @stream {{ {ITEM} }} }} }}"
    eager = lazy.replace("@stream", "@stream(initialCount: 100000)")
    assert estimated_cost(lazy, **limits) == 50 * CALL_COST
    assert estimated_cost(eager, **limits) == 50 * CALL_COST + 100_000


async def test_an_eager_stream_is_refused_before_any_call(recorder: RecordingTransport) -> None:
    eager = f"{{ phoneNumbers(page: {{first: 100000}}) {{ nodes @stream(initialCount: 100000) {{ {ITEM} }} }} }}"
    async with running_gateway(live_settings(), recorder) as client:
        response = await post(client, {"query": eager}, STREAMED)
    assert response.status_code == 400
    assert "estimated cost is 102500" in response.json()["errors"][0]["message"]
    assert recorder.calls == 0


def test_a_subscription_costs_a_poll_of_its_feed() -> None:
    watch = "subscription { phoneNumberChanges { kind number { phoneNumber } } }"
    # The counts call and a walk of up to GATEWAY_CHANGES_MAX_ITEMS (20,000) at 2,000 a page.
    assert estimated_cost(watch) == (1 + 10) * CALL_COST


async def test_a_streamed_refusal_is_logged_with_its_own_code(
    recorder: RecordingTransport,
) -> None:
    """A parse or validation refusal of a streamed request is logged (and counted) with its
    code, never as INTERNAL_SERVER_ERROR, which any client could otherwise trip alerts with."""
    async with running_gateway(live_settings(), recorder) as client:
        with capture_logs() as logs:
            for document in ("{ nope @stream }", "{ phoneNumbers { nodes @stream { nope } } }"):
                await post(client, {"query": document}, "text/event-stream")
    lines = [line for line in logs if line.get("event") == "http_request"]
    assert [line["errorCodes"] for line in lines] == [
        ["GRAPHQL_VALIDATION_FAILED"],
        ["GRAPHQL_VALIDATION_FAILED"],
    ]
    assert [line["status"] for line in lines] == [400, 400]


async def test_null_stream_and_defer_arguments_are_bad_user_input(
    recorder: RecordingTransport,
) -> None:
    documents = [
        (
            "query ($i: Int) { phoneNumbers { nodes @stream(initialCount: $i) { phoneNumber } } }",
            {"i": None},
        ),
        ("query ($d: Boolean) { numberCounts { ... @defer(if: $d) { total } } }", {"d": None}),
        (
            "query ($d: Boolean) { phoneNumbers { nodes @stream(if: $d) { phoneNumber } } }",
            {"d": None},
        ),
    ]
    async with running_gateway(live_settings(), recorder) as client:
        with capture_logs() as logs:
            responses = [
                await post(client, {"query": query, "variables": variables}, STREAMED)
                for query, variables in documents
            ]
    assert [r.status_code for r in responses] == [400, 400, 400]
    assert {r.json()["errors"][0]["extensions"]["code"] for r in responses} == {"BAD_USER_INPUT"}
    assert not [line for line in logs if line.get("event") == "graphql_internal_error"]
    assert recorder.calls == 0


async def test_a_federated_trace_needs_the_router_secret_in_production(
    recorder: RecordingTransport,
) -> None:
    secret = "s" * 32
    settings = live_settings(
        env="production", router_secret=secret, cache_key_secret="k" * 32, cache_ttl=0
    )
    query = "{ numberCounts { total } }"
    trace = {"apollo-federation-include-trace": "ftv1"}
    async with running_gateway(settings, recorder) as client:
        anyone = await client.post("/graphql", json={"query": query}, headers={**ADMIN, **trace})
        router = await client.post(
            "/graphql",
            json={"query": query},
            headers={**ADMIN, **trace, "gateway-router-secret": secret},
        )
    assert "ftv1" not in (anyone.json().get("extensions") or {})
    assert "ftv1" in router.json()["extensions"]

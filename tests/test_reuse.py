"""The response path for repeats: identical operations by the same caller, while every
upstream entry they used is fresh, are answered with the stored bytes; every cache rule
still holds. Proved by counting upstream calls and reused answers."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import FakeClock, RecordingTransport, live_settings, metric, running_gateway

PAGE = "query Page($n: Int) { phoneNumbers(page: {first: $n}) { nodes { phoneNumber } } }"
COUNTS = "{ numberCounts { total } }"
# Two upstream asks: the counts do not ride on a page of another filter.
BOTH = """{ numberCounts { total }
  phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 3}) { nodes { extension } } }"""


async def ask(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str = "demo-admin",
    **headers: str,
) -> httpx.Response:
    return await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {token}", **headers},
    )


async def test_a_repeat_is_answered_with_the_same_bytes_without_executing(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        del client.headers["Gateway-Cache-Report"]
        first = await ask(client, PAGE, {"n": 5})
        second = await ask(client, PAGE, {"n": 5})
        assert second.content == first.content
        assert await metric(client, "gateway_responses_reused_total") == 1
        assert recorder.calls == 1
        other_variables = await ask(client, PAGE, {"n": 6})
        assert other_variables.content != first.content
        assert await metric(client, "gateway_responses_reused_total") == 1


async def test_another_token_never_gets_a_stored_answer(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        del client.headers["Gateway-Cache-Report"]
        admin = await ask(client, COUNTS)
        location_admin = await ask(client, COUNTS, token="demo-location-admin")
        assert admin.json() != location_admin.json()
        assert recorder.calls == 2
        assert await metric(client, "gateway_responses_reused_total") == 0


async def test_no_cache_and_ttl_zero_skip_the_stored_answer(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        del client.headers["Gateway-Cache-Report"]
        await ask(client, COUNTS)
        await ask(client, COUNTS, **{"Cache-Control": "no-cache"})
        assert recorder.calls == 2
        assert await metric(client, "gateway_responses_reused_total") == 0
        await ask(client, COUNTS)
        assert await metric(client, "gateway_responses_reused_total") == 1
    async with running_gateway(live_settings(cache_ttl=0), recorder) as client:
        del client.headers["Gateway-Cache-Report"]
        await ask(client, COUNTS)
        await ask(client, COUNTS)
        assert await metric(client, "gateway_responses_reused_total") == 0


async def test_answers_with_errors_are_never_stored(recorder: RecordingTransport) -> None:
    # One field answers (its upstream ask is a fresh entry), the other fails: a partial answer.
    partial = "{ numberCounts { total } phoneNumbers(page: {first: 0}) { totalCount } }"
    async with running_gateway(live_settings(), recorder) as client:
        del client.headers["Gateway-Cache-Report"]
        for _ in range(2):
            body = (await ask(client, partial)).json()
            assert body["data"]["numberCounts"]["total"] > 0
            assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert await metric(client, "gateway_responses_reused_total") == 0


async def test_a_stored_answer_dies_with_the_oldest_entry_it_used(
    recorder: RecordingTransport,
) -> None:
    clock = FakeClock()
    async with running_gateway(live_settings(cache_ttl=60), recorder, clock=clock) as client:
        del client.headers["Gateway-Cache-Report"]
        await ask(client, COUNTS)  # entry A, stored at t
        clock.now += 50
        await ask(client, BOTH)  # A (50 s old) and B (new): the answer lives 10 s more
        calls = recorder.calls
        clock.now += 5
        await ask(client, BOTH)
        assert await metric(client, "gateway_responses_reused_total") == 1
        assert recorder.calls == calls
        clock.now += 6  # A has expired: so has the answer built on it
        await ask(client, BOTH)
        assert await metric(client, "gateway_responses_reused_total") == 1
        assert recorder.calls == calls + 1, "only A was fetched again; B was still fresh"


async def test_the_cache_report_is_never_served_from_a_stored_answer(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        first = (await ask(client, COUNTS)).json()
        second = (await ask(client, COUNTS)).json()
    assert first["extensions"]["cache"]["calls"][0]["status"] == "miss"
    assert second["extensions"]["cache"]["calls"][0]["status"] == "hit"


async def test_a_reused_answer_is_logged_and_counted_as_its_operation(
    recorder: RecordingTransport,
) -> None:
    from structlog.testing import capture_logs

    async with running_gateway(live_settings(), recorder) as client:
        del client.headers["Gateway-Cache-Report"]
        with capture_logs() as logs:
            for _ in range(2):
                await ask(client, PAGE, {"n": 2})
        metrics = (await client.get("/metrics")).text
    lines = [line for line in logs if line.get("event") == "http_request"]
    assert [line["operationName"] for line in lines] == ["Page", "Page"]
    assert lines[1]["cache"] == ["reused:answer"]
    assert 'gateway_graphql_operations_total{operation="Page",outcome="success"} 2.0' in metrics

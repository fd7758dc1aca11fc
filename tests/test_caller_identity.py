"""The caller is its normalised credential: every spelling of one bearer token is one caller
for the page cache, the fair upstream slots, the stores' shares and answer reuse; the upstream
always gets ``Bearer <token>``; a credential without the Bearer scheme is refused before any
upstream call. Proved by counting upstream calls and with gates."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette

from gateway.data.caller import MAX_CREDENTIAL_LENGTH, Callers, normalised_credential
from gateway.data.local_tier import LocalTier
from gateway.errors import Unauthenticated
from gateway.settings import load_settings
from tests.conftest import (
    FakeClock,
    GatedTransport,
    RecordingTransport,
    eventually,
    live_settings,
    metric,
    running_gateway,
)

SPELLINGS = [
    "Bearer demo-admin",
    "bearer demo-admin",
    "BEARER demo-admin",
    "bEaReR demo-admin",
    "Bearer  demo-admin",
    " Bearer demo-admin ",
    "Bearer\tdemo-admin",
    "  bearer   demo-admin\t",
]
COUNTS = "{ numberCounts { total } }"


def test_every_spelling_of_one_credential_is_one_caller() -> None:
    callers = Callers(b"s" * 32)
    identities = {callers.identify(spelling).identity for spelling in SPELLINGS}
    assert len(identities) == 1
    assert {callers.identify(s).authorization for s in SPELLINGS} == {"Bearer demo-admin"}
    assert callers.identify("Bearer demo-readonly").identity not in identities
    # The identity and the value's repr never show the token.
    caller = callers.identify("Bearer demo-admin")
    assert "demo-admin" not in caller.identity
    assert "demo-admin" not in repr(caller)


@pytest.mark.parametrize("header", ["demo-admin", "Basic ZGVtbzphZG1pbg==", "Token abc", "Bearer"])
def test_a_credential_without_the_bearer_scheme_is_refused(header: str) -> None:
    with pytest.raises(Unauthenticated, match="scheme must be Bearer"):
        normalised_credential(header)


async def test_spellings_share_one_cache_entry_and_the_upstream_gets_bearer(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        for spelling in SPELLINGS:
            response = await client.post(
                "/graphql", json={"query": COUNTS}, headers={"Authorization": spelling}
            )
            assert "errors" not in response.json(), response.text
    assert recorder.calls == 1  # one caller, one cache entry
    assert recorder.requests[0].headers["authorization"] == "Bearer demo-admin"


async def test_spellings_share_one_fair_share_of_upstream_slots(
    simulator_app: Starlette,
) -> None:
    gate = GatedTransport(httpx.ASGITransport(app=simulator_app))
    settings = live_settings(upstream_concurrency_per_caller=1)
    async with running_gateway(settings, gate) as client:
        asks = [
            asyncio.create_task(
                client.post(
                    "/graphql",
                    json={
                        "query": f"{{ phoneNumbers(page: {{first: {n + 1}}}) {{ totalCount }} }}"
                    },
                    headers={"Authorization": spelling},
                )
            )
            for n, spelling in enumerate(SPELLINGS)
        ]
        # Eight spellings are one caller: one in flight, seven queued behind its share.
        await eventually(
            lambda: _waiting(client, 7),
            "seven asks wait for the one caller's slot",
        )
        assert gate.held == 1
        gate.release()
        answers = await asyncio.gather(*asks)
    assert all("errors" not in answer.json() for answer in answers)
    assert gate.peak == 1


async def _waiting(client: httpx.AsyncClient, expected: int) -> bool:
    return await metric(client, "gateway_upstream_waiting") == expected


@pytest.mark.parametrize("embedded", [False, True], ids=["live", "embedded-simulator"])
@pytest.mark.parametrize("header", ["demo-admin", "Basic ZGVtbzphZG1pbg=="])
async def test_no_bearer_scheme_is_unauthenticated_without_an_upstream_call(
    recorder: RecordingTransport, embedded: bool, header: str
) -> None:
    settings = load_settings() if embedded else live_settings()
    async with running_gateway(settings, recorder) as client:
        response = await client.post(
            "/graphql", json={"query": COUNTS}, headers={"Authorization": header}
        )
    errors = response.json()["errors"]
    assert [error["extensions"]["code"] for error in errors] == ["UNAUTHENTICATED"]
    assert "scheme must be Bearer" in errors[0]["message"]
    assert recorder.calls == 0


def test_a_flood_of_tiny_entries_from_one_caller_leaves_another_callers_entries() -> None:
    clock = FakeClock()
    tier = LocalTier(
        ttl=60, max_entries=100, max_bytes=10**9, clock=clock.monotonic, owner_share=0.25
    )
    for n in range(10):
        tier.set(f"victim-{n}", b"x", clock.monotonic(), "victim")
    for n in range(1200):
        tier.set(f"flood-{n}", b"", clock.monotonic(), "flooder")
    assert all(tier.get_raw(f"victim-{n}") is not None for n in range(10))
    assert sum(tier.get_raw(f"flood-{n}") is not None for n in range(1200)) == 25
    assert tier.get_raw("flood-1199") is not None  # the flooder's newest stay


async def test_a_flood_of_tiny_answers_leaves_another_callers_reused_answers(
    recorder: RecordingTransport,
) -> None:
    settings = live_settings(cache_max_entries=40, cache_caller_share=0.25)
    async with running_gateway(settings, recorder) as client:
        del client.headers["Gateway-Cache-Report"]
        victim = {"Authorization": "Bearer demo-readonly"}
        await client.post("/graphql", json={"query": COUNTS}, headers=victim)
        for n in range(60):
            spelling = SPELLINGS[n % len(SPELLINGS)]
            await client.post(
                "/graphql",
                json={"query": f"query Junk{n} {{ numberCounts {{ total }} }}"},
                headers={"Authorization": spelling},
            )
        before = await metric(client, "gateway_responses_reused_total")
        calls = recorder.calls
        again = await client.post("/graphql", json={"query": COUNTS}, headers=victim)
        assert "errors" not in again.json()
        assert await metric(client, "gateway_responses_reused_total") == before + 1
        assert recorder.calls == calls


def test_a_credential_past_the_length_bound_is_refused_before_anything() -> None:
    callers = Callers(b"secret")
    assert callers.identify("Bearer " + "a" * (MAX_CREDENTIAL_LENGTH - 7)).identity
    with pytest.raises(Unauthenticated, match="longer than 8192 characters"):
        callers.identify("Bearer " + "a" * MAX_CREDENTIAL_LENGTH)
    assert callers.known("Bearer " + "a" * 10_000_000) is None


async def test_a_huge_token_over_http_is_unauthenticated_without_an_upstream_call(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        response = await client.post(
            "/graphql",
            json={"query": COUNTS},
            headers={"Authorization": "Bearer " + "a" * 9000},
        )
    errors = response.json()["errors"]
    assert [error["extensions"]["code"] for error in errors] == ["UNAUTHENTICATED"]
    assert "longer than 8192 characters" in errors[0]["message"]
    assert recorder.calls == 0

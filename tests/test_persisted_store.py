"""Automatic persisted queries (APQ) keep only what they should: documents of callers with
credentials, that parsed and validated, up to the size bound, each caller within its share;
and a document is registered whatever path answered the request (a reused answer too)."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
from redis.asyncio import Redis

from gateway.data.guarded_redis import GuardedRedis
from gateway.data.persisted_queries import REDIS_PREFIX, PersistedQueries
from gateway.settings import load_settings
from tests.conftest import RecordingTransport, RedisServer, live_settings, metric, running_gateway

COUNTS = "{ numberCounts { total } }"
ADMIN = {"Authorization": "Bearer demo-admin"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apq(document: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": sha256(document)}}


async def register(
    client: httpx.AsyncClient, document: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        "/graphql", json={"query": document, "extensions": apq(document)}, headers=headers or {}
    )


async def by_hash(
    client: httpx.AsyncClient, document: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        "/graphql", json={"extensions": apq(document)}, headers=headers or ADMIN
    )


def codes(response: httpx.Response) -> list[str]:
    return [error["extensions"]["code"] for error in response.json().get("errors", [])]


async def test_tokenless_megabyte_registrations_store_nothing(
    redis_server: RedisServer, recorder: RecordingTransport
) -> None:
    settings = live_settings(redis_url=redis_server.url, cache_key_secret="s" * 32)
    documents = [f"# {n} {'x' * 1_000_000}\n{COUNTS}" for n in range(20)]
    async with running_gateway(settings, recorder) as client:
        for document in documents:
            answer = await register(client, document)
            assert codes(answer) == ["UNAUTHENTICATED"]
        for document in documents[:3]:
            assert codes(await by_hash(client, document)) == ["PERSISTED_QUERY_NOT_FOUND"]
    redis = Redis.from_url(redis_server.url)
    try:
        assert await redis.dbsize() == 0
    finally:
        await redis.aclose()
    assert recorder.calls == 0


async def test_a_document_over_the_size_bound_runs_but_is_not_registered(
    recorder: RecordingTransport,
) -> None:
    settings = live_settings(persisted_queries_max_document_bytes=1024)
    large = f"# {'x' * 2000}\n{COUNTS}"
    async with running_gateway(settings, recorder) as client:
        ran = await register(client, large, ADMIN)
        assert "errors" not in ran.json()
        assert codes(await by_hash(client, large)) == ["PERSISTED_QUERY_NOT_FOUND"]
        assert "errors" not in (await register(client, COUNTS, ADMIN)).json()
        assert codes(await by_hash(client, COUNTS)) == []


async def test_an_invalid_document_is_not_registered(recorder: RecordingTransport) -> None:
    invalid = "{ numberCounts { nope } }"
    async with running_gateway(live_settings(), recorder) as client:
        refused = await register(client, invalid, ADMIN)
        assert codes(refused)  # a validation error
        assert codes(await by_hash(client, invalid)) == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_without_a_bearer_credential_nothing_is_registered_even_by_the_simulator(
    recorder: RecordingTransport,
) -> None:
    # Against the embedded simulator a missing header is the demo token's caller, so its
    # documents register; a credential without the Bearer scheme is no caller at all.
    async with running_gateway(load_settings(), recorder) as client:
        refused = await register(client, COUNTS, {"Authorization": "Basic ZGVtbzpkZW1v"})
        assert codes(refused) == ["UNAUTHENTICATED"]
        assert codes(await by_hash(client, COUNTS, {})) == ["PERSISTED_QUERY_NOT_FOUND"]
        assert codes(await register(client, COUNTS, {})) == []
        assert codes(await by_hash(client, COUNTS, {})) == []


async def test_a_flood_of_registrations_keeps_another_callers_hash() -> None:
    store = PersistedQueries(max_entries=10_000, max_bytes=16 * 1024 * 1024, owner_share=0.25)
    victim = "query Mine { numberCounts { total } }"
    assert await store.put(sha256(victim), victim, "victim")
    for n in range(12_000):
        flood = f"query Flood{n} {{ __typename }}"
        assert await store.put(sha256(flood), flood, "flooder")
    assert await store.get(sha256(victim)) == victim
    assert len(store) == 2_500 + 1  # the flooder holds its share, no more
    # Registering a hash someone else holds does not make it the flooder's to evict.
    assert await store.put(sha256(victim), victim, "flooder")
    for n in range(12_000, 15_000):
        flood = f"query Flood{n} {{ __typename }}"
        await store.put(sha256(flood), flood, "flooder")
    assert await store.get(sha256(victim)) == victim


async def test_a_flood_over_http_keeps_another_callers_hash(recorder: RecordingTransport) -> None:
    settings = live_settings(persisted_queries_max_entries=40, cache_caller_share=0.25)
    async with running_gateway(settings, recorder) as client:
        readonly = {"Authorization": "Bearer demo-readonly"}
        assert codes(await register(client, COUNTS, readonly)) == []
        for n in range(60):
            # Each asks the upstream (or the caller's own cached page): the caller is real.
            junk = f"query Junk{n} {{ numberCounts {{ total }} }}"
            assert (
                codes(await register(client, junk, {"Authorization": "bearer  demo-admin"})) == []
            )
        assert codes(await by_hash(client, COUNTS, readonly)) == []
        assert codes(await by_hash(client, "query Junk0 { numberCounts { total } }")) == [
            "PERSISTED_QUERY_NOT_FOUND"
        ]
        assert codes(await by_hash(client, "query Junk59 { numberCounts { total } }")) == []


async def test_a_hash_only_follow_up_after_a_reused_answer_works(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        del client.headers["Gateway-Cache-Report"]
        first = await client.post("/graphql", json={"query": COUNTS}, headers=ADMIN)
        assert codes(first) == []
        again = await client.post("/graphql", json={"query": COUNTS}, headers=ADMIN)
        assert again.content == first.content
        assert await metric(client, "gateway_responses_reused_total") == 1
        # Apollo Client's APQ link: the hash alone misses, then the document with the hash
        # (executed, from the caller's cached page: that proves the caller), then the hash
        # alone again, answered from the reuse store.
        assert codes(await by_hash(client, COUNTS)) == ["PERSISTED_QUERY_NOT_FOUND"]
        registered = await register(client, COUNTS, ADMIN)
        assert registered.content == first.content
        follow_up = await by_hash(client, COUNTS)
        assert follow_up.content == first.content
        assert await metric(client, "gateway_responses_reused_total") == 2
    assert recorder.calls == 1


JUNK = [{"Authorization": f"Bearer junk-{n}"} for n in range(5)]


async def test_junk_token_registrations_store_nothing(
    redis_server: RedisServer, recorder: RecordingTransport
) -> None:
    # A credential-shaped header is no caller: neither a document that asks the upstream
    # nothing, nor one whose every field the upstream refused, registers for it.
    settings = live_settings(redis_url=redis_server.url, cache_key_secret="s" * 32)
    typename = "query Junk { __typename }"
    async with running_gateway(settings, recorder) as client:
        for headers in JUNK:
            assert codes(await register(client, typename, headers)) == []
            assert codes(await register(client, COUNTS, headers)) == ["UNAUTHENTICATED"]
        for document in (typename, COUNTS):
            assert codes(await by_hash(client, document)) == ["PERSISTED_QUERY_NOT_FOUND"]
    redis = Redis.from_url(redis_server.url)
    try:
        assert await redis.keys("numbers-gateway:apq*") == []
    finally:
        await redis.aclose()


async def test_a_real_tokens_registration_is_shared_through_redis(
    redis_server: RedisServer, recorder: RecordingTransport
) -> None:
    settings = live_settings(redis_url=redis_server.url, cache_key_secret="s" * 32)
    async with running_gateway(settings, recorder) as client:
        assert codes(await register(client, COUNTS, ADMIN)) == []
    async with running_gateway(settings, recorder) as replica:  # an empty local store
        assert codes(await by_hash(replica, COUNTS)) == []


async def test_redis_takes_a_bounded_number_of_registrations_in_all(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url)
    try:
        store = PersistedQueries(
            max_entries=8, max_bytes=1024 * 1024, owner_share=0.5, redis=GuardedRedis(client)
        )
        for caller in range(10):  # many callers, each within its own share
            for n in range(4):
                document = f"query C{caller}N{n} {{ __typename }}"
                assert await store.put(sha256(document), document, f"caller-{caller}")
        assert len(await client.keys(REDIS_PREFIX + "*")) == 8
    finally:
        await client.aclose()

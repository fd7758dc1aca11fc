"""Redis entries name themselves: a version, the key they were written for and a checksum.
Anything else found in Redis (garbage, a truncated entry, a sound entry copied under another
key) is a miss: counted, logged once, the upstream answers; never an error and never another
key's data. Against a real redis-server."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway.data.guarded_redis import ENTRY_VERSION, GuardedRedis, seal, unseal
from gateway.data.page_cache import KEY_PREFIX
from gateway.observability.metrics import GatewayMetrics
from tests.conftest import RecordingTransport, RedisServer, live_settings, metric, running_gateway

COUNTS = "{ numberCounts { total } }"
SECRET = "replicas-share-this-secret-of-32-bytes!"


def test_an_entry_opens_only_under_its_own_key() -> None:
    secret = SECRET.encode()
    entry = seal("k1", b"payload", secret)
    assert unseal("k1", entry, secret) == b"payload"
    assert unseal("k2", entry, secret) is None
    assert unseal("k1", entry[:-1], secret) is None
    assert unseal("k1", entry.replace(b"payload", b"paylobd"), secret) is None
    assert unseal("k1", b"garbage", secret) is None
    assert unseal("k1", b"", secret) is None


def test_an_entry_forged_without_the_secret_does_not_open() -> None:
    # Someone with Redis write access but not the secret writes a well-formed entry, its
    # checksum worked out as anyone can (or under a guessed secret): it is not ours.
    secret = SECRET.encode()
    head = ENTRY_VERSION + b"\nk1\n"
    forged = head + hashlib.sha256(head + b"evil").hexdigest().encode() + b"\nevil"
    assert unseal("k1", forged, secret) is None
    assert unseal("k1", seal("k1", b"evil", b"guessed"), secret) is None
    assert unseal("k1", seal("k1", b"evil"), secret) is None


async def test_a_counter_holding_no_integer_is_a_miss_not_an_outage(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url)
    metrics = GatewayMetrics()
    registry = metrics.registry
    guarded = GuardedRedis(client, metrics, secret=SECRET.encode())
    try:
        await client.set("counter", b"not a number")
        with capture_logs() as logs:
            assert await guarded.count("counter", ttl_ms=60_000) == 1  # started afresh
            assert await guarded.count("counter", ttl_ms=60_000) == 2
    finally:
        await client.aclose()
    assert not guarded.down
    assert registry.get_sample_value("gateway_cache_backend_failures_total") in (None, 0.0)
    assert registry.get_sample_value("gateway_cache_backend_invalid_entries_total") == 1
    assert [entry["event"] for entry in logs] == ["redis_entry_rejected"]


async def _keys(redis: Redis) -> set[bytes]:
    return set(await redis.keys(KEY_PREFIX + "*"))


async def _counts(token: str, settings: Any, recorder: RecordingTransport) -> dict[str, Any]:
    """One fresh replica (empty local tier) answering ``token``'s counts."""
    async with running_gateway(settings, recorder) as client:
        response = await client.post(
            "/graphql", json={"query": COUNTS}, headers={"Authorization": f"Bearer {token}"}
        )
        body: dict[str, Any] = response.json()
        body["invalid"] = await metric(client, "gateway_cache_backend_invalid_entries_total")
        return body


@pytest.mark.parametrize("damage", ["garbage", "truncated", "old-format"])
async def test_a_damaged_page_entry_is_a_miss_and_the_upstream_answers(
    redis_server: RedisServer, recorder: RecordingTransport, damage: str
) -> None:
    settings = live_settings(redis_url=redis_server.url, cache_key_secret=SECRET)
    redis = Redis.from_url(redis_server.url)
    try:
        first = await _counts("demo-admin", settings, recorder)
        (key,) = await _keys(redis)
        stored = await redis.get(key)
        assert stored is not None
        damaged = {
            "garbage": b"\x00\xff not json at all",
            "truncated": stored[: len(stored) // 2],
            "old-format": stored.split(b"\n", 3)[3],  # the bare payload, as v1 wrote it
        }[damage]
        await redis.set(key, damaged)
        with capture_logs() as logs:
            again = await _counts("demo-admin", settings, recorder)
    finally:
        await redis.aclose()
    assert again["data"] == first["data"]
    assert "errors" not in again
    assert recorder.calls == 2  # the damaged entry was a miss: the upstream answered
    assert again["invalid"] == 1
    assert [entry["event"] for entry in logs].count("redis_entry_rejected") == 1


async def test_an_admins_entry_copied_under_a_location_admins_key_is_never_served(
    redis_server: RedisServer, recorder: RecordingTransport
) -> None:
    settings = live_settings(redis_url=redis_server.url, cache_key_secret=SECRET)
    redis = Redis.from_url(redis_server.url)
    try:
        admin = await _counts("demo-admin", settings, recorder)
        (admin_key,) = await _keys(redis)
        location_admin = await _counts("demo-location-admin", settings, recorder)
        (location_key,) = await _keys(redis) - {admin_key}
        assert admin["data"] != location_admin["data"]
        # Someone with Redis write access copies the admin's entry under the other key.
        await redis.set(location_key, await redis.get(admin_key) or b"")
        again = await _counts("demo-location-admin", settings, recorder)
    finally:
        await redis.aclose()
    assert again["data"] == location_admin["data"]
    assert recorder.calls == 3
    assert again["invalid"] == 1


async def test_a_damaged_persisted_document_is_not_found_never_an_error(
    redis_server: RedisServer, recorder: RecordingTransport
) -> None:
    settings = live_settings(redis_url=redis_server.url, cache_key_secret=SECRET)
    digest = hashlib.sha256(COUNTS.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    auth = {"Authorization": "Bearer demo-admin"}
    redis = Redis.from_url(redis_server.url)
    try:
        async with running_gateway(settings, recorder) as client:
            registered = await client.post(
                "/graphql", json={"query": COUNTS, "extensions": extensions}, headers=auth
            )
            assert "errors" not in registered.json()
        (key,) = await redis.keys("numbers-gateway:apq:v2:*")
        # The entry altered in place (another document under this hash).
        other = await redis.get(key)
        assert other is not None
        await redis.set(key, other.replace(b"total", b"inUse"))
        async with running_gateway(settings, recorder) as client:
            by_hash = await client.post("/graphql", json={"extensions": extensions}, headers=auth)
            invalid = await metric(client, "gateway_cache_backend_invalid_entries_total")
    finally:
        await redis.aclose()
    errors = by_hash.json()["errors"]
    assert [error["extensions"]["code"] for error in errors] == ["PERSISTED_QUERY_NOT_FOUND"]
    assert invalid == 1

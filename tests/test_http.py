"""The HTTP surface: GraphQL over HTTP (media types, status codes, methods), hostile request
bodies, CORS, CSRF, automatic persisted queries, trusted documents, compression, and HTTP
caching of GET queries (ETag, 304). Upstream calls are counted at the transport."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import brotli
import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from gateway.server.app import create_app
from gateway.settings import SettingsError
from tests.conftest import RecordingTransport, graphql, live_settings, running_gateway

GRAPHQL_RESPONSE = "application/graphql-response+json"
COUNTS = "{ numberCounts { total } }"
PAGE = "{ phoneNumbers(page: {first: 50}) { nodes { phoneNumber extension owner { id } } } }"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apq(digest: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


async def post(client: httpx.AsyncClient, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(
        "/graphql", content=content, headers={"Content-Type": "application/json", **headers}
    )


def code_of(response: httpx.Response) -> str:
    code: str = response.json()["errors"][0]["extensions"]["code"]
    return code


# --- GraphQL over HTTP: media types and status codes ---------------------------------------


async def test_media_type_follows_accept(gateway: httpx.AsyncClient) -> None:
    modern = await post(gateway, {"query": COUNTS}, Accept=GRAPHQL_RESPONSE)
    assert modern.status_code == 200
    assert modern.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    legacy = await post(gateway, {"query": COUNTS})
    assert legacy.headers["content-type"].startswith("application/json")
    assert modern.json()["data"] == legacy.json()["data"]


@pytest.mark.parametrize(
    ("document", "code"),
    [
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ numberCounts(", "GRAPHQL_PARSE_FAILED"),
        ("query ($x: Int!) { numberCounts { total } }", "GRAPHQL_VALIDATION_FAILED"),  # unused
    ],
)
async def test_request_errors_are_4xx_for_graphql_response_json_and_200_for_json(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, document: str, code: str
) -> None:
    modern = await post(gateway, {"query": document}, Accept=GRAPHQL_RESPONSE)
    assert modern.status_code == 400
    assert "data" not in modern.json()
    assert code_of(modern) == code
    legacy = await post(gateway, {"query": document}, Accept="application/json")
    assert legacy.status_code == 200
    assert "data" not in legacy.json()
    assert code_of(legacy) == code
    assert recorder.calls == 0


async def test_field_errors_are_200_with_data(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        response = await post(client, {"query": COUNTS}, Accept=GRAPHQL_RESPONSE)
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == {"numberCounts": None}
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("accept", ["text/plain", "application/xml", "application/json;q=0"])
async def test_an_accept_that_cannot_be_served_is_406(
    gateway: httpx.AsyncClient, accept: str
) -> None:
    response = await post(gateway, {"query": COUNTS}, Accept=accept)
    assert response.status_code == 406
    assert code_of(response) == "BAD_USER_INPUT"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_get_a_json_405(gateway: httpx.AsyncClient, method: str) -> None:
    response = await gateway.request(method, "/graphql")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert code_of(response) == "BAD_USER_INPUT"


async def test_a_post_that_is_not_json_is_415(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(
        "/graphql",
        content=b"query=%7B%7D",
        headers={"Content-Type": "text/plain", "Apollo-Require-Preflight": "1"},
    )
    assert response.status_code == 415
    assert code_of(response) == "BAD_USER_INPUT"


# --- hostile and malformed requests --------------------------------------------------------


@pytest.mark.parametrize("where", ["body", "variables", "extensions"])
async def test_deeply_nested_json_is_a_400_not_a_recursion_error(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, where: str
) -> None:
    deep = "[" * 40 + "]" * 40  # past our bound of 32, far below orjson's own
    if where == "body":
        raw = deep.encode()
    else:
        raw = f'{{"query": "{{ numberCounts {{ total }} }}", "{where}": {{"x": {deep}}}}}'.encode()
    response = await post(gateway, raw)
    assert response.status_code == 400
    assert "deeper than" in response.json()["errors"][0]["message"]
    get = await gateway.get(
        "/graphql",
        params={"query": COUNTS, "variables": f'{{"x": {deep}}}'},
        headers={"Apollo-Require-Preflight": "1"},
    )
    assert get.status_code == 400
    assert recorder.calls == 0


async def test_lone_surrogates_are_the_callers_mistake(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    in_name = await post(
        gateway, b'{"query": "{ numberCounts { total } }", "operationName": "\\ud800"}'
    )
    assert in_name.status_code == 400
    assert code_of(in_name) == "BAD_USER_INPUT"
    in_variable = await post(
        gateway,
        b'{"query": "query ($n: String) { numberCounts(filter: {ownerName: $n}) { total } }",'
        b' "variables": {"n": "\\ud800"}}',
    )
    assert in_variable.status_code == 400
    assert code_of(in_variable) == "BAD_USER_INPUT"
    assert recorder.calls == 0


async def test_unprintable_text_in_a_filter_is_bad_user_input(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    body = await graphql(
        gateway,
        "query ($n: String) { numberCounts(filter: {ownerName: $n}) { total } }",
        {"n": "Ada\x00Lovelace"},
    )
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert recorder.calls == 0


async def test_non_ascii_credentials_are_unauthenticated_with_no_upstream_call(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        response = await client.post(
            "/graphql",
            json={"query": COUNTS},
            headers={"Authorization": "Bearer tökén".encode()},
        )
    assert response.status_code == 200
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert recorder.calls == 0


@pytest.mark.parametrize(
    "body",
    [
        {"query": 1},
        {"query": COUNTS, "variables": "x"},
        {"query": COUNTS, "variables": [1]},
        {"query": COUNTS, "operationName": 7},
        {"query": COUNTS, "extensions": "x"},
        {},
        [{"query": COUNTS}],
        "query",
        None,
    ],
)
async def test_wrong_shapes_are_400_with_a_contract_code(
    gateway: httpx.AsyncClient, body: Any
) -> None:
    response = await post(gateway, body)
    assert response.status_code == 400
    assert code_of(response) == "BAD_USER_INPUT"


async def test_an_unknown_operation_name_is_a_request_error(gateway: httpx.AsyncClient) -> None:
    response = await post(
        gateway,
        {"query": "query A { numberCounts { total } }", "operationName": "B"},
        Accept=GRAPHQL_RESPONSE,
    )
    assert response.status_code == 400
    assert "'B'" in response.json()["errors"][0]["message"]


# --- CORS ---------------------------------------------------------------------------------


def preflight(origin: str, headers: str = "authorization,content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": headers,
    }


async def test_cors_preflight_for_an_allowed_origin(recorder: RecordingTransport) -> None:
    settings = live_settings(cors_origins="https://admin.example.com")
    async with running_gateway(settings, recorder) as client:
        allowed = await client.options(
            "/graphql",
            headers=preflight(
                "https://admin.example.com",
                "authorization,content-type,apollo-require-preflight,"
                "apollographql-client-name,apollographql-client-version,x-request-id",
            ),
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://admin.example.com"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert int(allowed.headers["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in allowed.headers

        refused = await client.options("/graphql", headers=preflight("https://evil.example"))
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers

        actual = await post(
            client,
            {"query": COUNTS},
            Origin="https://admin.example.com",
            Authorization="Bearer demo-admin",
        )
        assert actual.headers["access-control-allow-origin"] == "https://admin.example.com"
        other = await post(client, {"query": COUNTS}, Origin="https://evil.example")
        assert "access-control-allow-origin" not in other.headers


async def test_cors_defaults_development_origins_but_none_in_production(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        dev = await client.options("/graphql", headers=preflight("http://localhost:5173"))
        assert dev.headers["access-control-allow-origin"] == "http://localhost:5173"
    async with running_gateway(live_settings(env="production"), recorder) as client:
        prod = await client.options("/graphql", headers=preflight("http://localhost:5173"))
        assert "access-control-allow-origin" not in prod.headers


async def test_cors_star_allows_any_origin_without_credentials(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(cors_origins="*"), recorder) as client:
        response = await client.options("/graphql", headers=preflight("https://any.example"))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://any.example")
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("value", ["https://a.example/path", "ftp://a.example", "a.example"])
def test_cors_origins_must_be_origins(value: str) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_CORS_ORIGINS"):
        live_settings(cors_origins=value)


async def test_cors_allows_tracing_and_no_cache_headers_by_default(
    recorder: RecordingTransport,
) -> None:
    """OpenTelemetry web's trace headers and the documented ``Cache-Control: no-cache``
    bypass pass a preflight from an allowed origin."""
    settings = live_settings(cors_origins="https://admin.example.com")
    async with running_gateway(settings, recorder) as client:
        allowed = await client.options(
            "/graphql",
            headers=preflight(
                "https://admin.example.com",
                "content-type,traceparent,tracestate,baggage,cache-control",
            ),
        )
    assert allowed.status_code == 200, allowed.text
    granted = allowed.headers["access-control-allow-headers"].lower()
    for name in ("traceparent", "tracestate", "baggage", "cache-control", "gateway-cache-report"):
        assert name in granted


async def test_cors_allow_headers_replace_the_default_list(recorder: RecordingTransport) -> None:
    settings = live_settings(
        cors_origins="https://admin.example.com",
        cors_allow_headers="Content-Type, Authorization, X-Tenant",
    )
    async with running_gateway(settings, recorder) as client:
        custom = await client.options(
            "/graphql", headers=preflight("https://admin.example.com", "x-tenant,content-type")
        )
        traced = await client.options(
            "/graphql", headers=preflight("https://admin.example.com", "traceparent")
        )
    assert custom.status_code == 200
    assert traced.status_code == 400  # not configured: the browser may not send it


@pytest.mark.parametrize("value", ["x tenant", "x-tenant,bad:header", "é"])
def test_cors_allow_headers_must_be_header_names(value: str) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_CORS_ALLOW_HEADERS"):
        live_settings(cors_allow_headers=value)


# --- CSRF ---------------------------------------------------------------------------------


async def test_csrf_blocks_simple_requests_but_never_preflights(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    form = await gateway.post(
        "/graphql",
        content=b'{"query": "{ numberCounts { total } }"}',
        headers={"Content-Type": "text/plain"},
    )
    assert form.status_code == 400
    assert "CSRF" in form.json()["errors"][0]["message"]
    get = await gateway.get("/graphql", params={"query": COUNTS})
    assert get.status_code == 400
    options = await gateway.options("/graphql", headers=preflight("http://localhost:3000"))
    assert options.status_code == 200
    assert recorder.calls == 0


async def test_csrf_required_headers_are_configurable_and_it_can_be_off(
    recorder: RecordingTransport,
) -> None:
    custom = live_settings(csrf_required_headers="x-my-app")
    async with running_gateway(custom, recorder) as client:
        blocked = await client.get(
            "/graphql", params={"query": COUNTS}, headers={"Apollo-Require-Preflight": "1"}
        )
        assert blocked.status_code == 400
        assert "'x-my-app'" in blocked.json()["errors"][0]["message"]
        passed = await client.get(
            "/graphql",
            params={"query": COUNTS},
            headers={"X-My-App": "1", "Authorization": "Bearer demo-admin"},
        )
        assert passed.status_code == 200
    async with running_gateway(live_settings(csrf_prevention=False), recorder) as client:
        response = await client.get(
            "/graphql", params={"query": COUNTS}, headers={"Authorization": "Bearer demo-admin"}
        )
        assert response.status_code == 200
        assert response.json()["data"]["numberCounts"]["total"] > 0


# --- automatic persisted queries ------------------------------------------------------------


async def test_apq_unknown_hash_then_register_then_hash_only(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    digest = sha256(COUNTS)
    unknown = await post(gateway, {"extensions": apq(digest)}, Accept=GRAPHQL_RESPONSE)
    assert unknown.status_code == 200, "Apollo's link reads this from a 200"
    assert unknown.json()["errors"][0] == {
        "message": "PersistedQueryNotFound",
        "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
    }
    assert recorder.calls == 0
    registered = await post(gateway, {"query": COUNTS, "extensions": apq(digest)})
    assert registered.json()["data"]["numberCounts"]["total"] > 0
    by_hash = await post(gateway, {"extensions": apq(digest)})
    assert by_hash.json()["data"] == registered.json()["data"]
    by_get = await gateway.get(
        "/graphql",
        params={"extensions": json.dumps(apq(digest))},
        headers={"Apollo-Require-Preflight": "1"},
    )
    assert by_get.status_code == 200
    assert by_get.json()["data"] == registered.json()["data"]
    assert by_get.headers["cache-control"].startswith("private, max-age=")


async def test_apq_hash_that_does_not_match_is_bad_user_input(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    response = await post(gateway, {"query": COUNTS, "extensions": apq(sha256("{ other }"))})
    assert code_of(response) == "BAD_USER_INPUT"
    assert "sha256" in response.json()["errors"][0]["message"]
    still_unknown = await post(gateway, {"extensions": apq(sha256("{ other }"))})
    assert code_of(still_unknown) == "PERSISTED_QUERY_NOT_FOUND"
    assert recorder.calls == 0


async def test_apq_store_is_bounded(recorder: RecordingTransport) -> None:
    settings = live_settings(persisted_queries_max_entries=2)
    documents = [f'{{ numberCounts(filter: {{extension: "{i}"}}) {{ total }} }}' for i in range(3)]
    async with running_gateway(settings, recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"  # only callers register
        for document in documents:
            await post(client, {"query": document, "extensions": apq(sha256(document))})
        oldest = await post(client, {"extensions": apq(sha256(documents[0]))})
        newest = await post(client, {"extensions": apq(sha256(documents[2]))})
    assert code_of(oldest) == "PERSISTED_QUERY_NOT_FOUND"
    assert "errors" not in newest.json() or code_of(newest) != "PERSISTED_QUERY_NOT_FOUND"


async def test_apq_off(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(persisted_queries=False), recorder) as client:
        response = await post(client, {"extensions": apq(sha256(COUNTS))})
    assert code_of(response) == "BAD_USER_INPUT"
    assert "turned off" in response.json()["errors"][0]["message"]


@pytest.mark.redis
async def test_apq_documents_are_shared_through_redis(
    recorder: RecordingTransport, redis_server: Any
) -> None:
    settings = live_settings(redis_url=redis_server.url, cache_key_secret="s" * 32)
    digest = sha256(COUNTS)
    async with running_gateway(settings, recorder) as first:
        await post(
            first, {"query": COUNTS, "extensions": apq(digest)}, Authorization="Bearer demo-admin"
        )
    async with running_gateway(settings, recorder) as second:
        response = await post(
            second, {"extensions": apq(digest)}, Authorization="Bearer demo-admin"
        )
    assert response.json()["data"]["numberCounts"]["total"] > 0


# --- trusted documents --------------------------------------------------------------------


def apollo_manifest(path: Path, *documents: str) -> Path:
    operations = [
        {"id": sha256(document), "name": f"Op{i}", "type": "query", "body": document}
        for i, document in enumerate(documents)
    ]
    path.write_bytes(
        orjson.dumps(
            {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
        )
    )
    return path


def codegen_manifest(path: Path, *documents: str) -> Path:
    path.write_bytes(orjson.dumps({sha256(document): document for document in documents}))
    return path


@pytest.mark.parametrize("write", [apollo_manifest, codegen_manifest])
async def test_trusted_documents_in_production(
    tmp_path: Path, recorder: RecordingTransport, write: Any
) -> None:
    manifest = write(tmp_path / "manifest.json", COUNTS)
    settings = live_settings(env="production", trusted_documents=str(manifest))
    async with running_gateway(settings, recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        other = await post(client, {"query": PAGE}, Accept=GRAPHQL_RESPONSE)
        assert other.status_code == 400
        assert code_of(other) == "PERSISTED_QUERY_NOT_IN_LIST"
        assert recorder.calls == 0
        unknown_id = await post(client, {"documentId": "sha256:" + sha256(PAGE)})
        assert code_of(unknown_id) == "PERSISTED_QUERY_NOT_IN_LIST"
        listed_text = await post(client, {"query": COUNTS})
        by_id = await post(client, {"documentId": "sha256:" + sha256(COUNTS)})
        by_hash = await post(client, {"extensions": apq(sha256(COUNTS))})
    total = listed_text.json()["data"]["numberCounts"]["total"]
    assert total > 0
    assert by_id.json()["data"]["numberCounts"]["total"] == total
    assert by_hash.json()["data"]["numberCounts"]["total"] == total


async def test_trusted_documents_in_development_allow_others_too(
    tmp_path: Path, recorder: RecordingTransport
) -> None:
    manifest = codegen_manifest(tmp_path / "persisted-documents.json", COUNTS)
    async with running_gateway(live_settings(trusted_documents=str(manifest)), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        by_id = await post(client, {"documentId": sha256(COUNTS)})
        other = await post(client, {"query": PAGE})
    assert by_id.json()["data"]["numberCounts"]["total"] > 0
    assert other.json()["data"]["phoneNumbers"]["nodes"]


ROUTER_SECRET = "a-router-secret-of-at-least-32-bytes-for-tests"
SERVICE = "{ _service { sdl } }"
ENTITIES = (
    "query Plan__numbers__1($representations: [_Any!]!) { _entities(representations: "
    "$representations) { ... on Location { numberCounts { total } } } }"
)


async def test_routers_run_federation_operations_outside_the_trusted_documents(
    tmp_path: Path, recorder: RecordingTransport
) -> None:
    """Production with a manifest: ``_service`` answers anyone; ``_entities`` runs with the
    router secret only; a client document through the router is still refused."""
    manifest = apollo_manifest(tmp_path / "manifest.json", COUNTS)
    settings = live_settings(
        env="production", trusted_documents=str(manifest), router_secret=ROUTER_SECRET
    )
    location = {"__typename": "Location", "id": "any-location-id"}
    entities = {"query": ENTITIES, "variables": {"representations": [location]}}
    async with running_gateway(settings, recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        service = await post(client, {"query": SERVICE}, Accept=GRAPHQL_RESPONSE)
        no_secret = await post(client, entities, Accept=GRAPHQL_RESPONSE)
        wrong = await post(
            client, entities, Accept=GRAPHQL_RESPONSE, **{"Gateway-Router-Secret": "nope"}
        )
        assert recorder.calls == 0
        as_router = await post(
            client, entities, Accept=GRAPHQL_RESPONSE, **{"Gateway-Router-Secret": ROUTER_SECRET}
        )
        refused = [
            await post(
                client,
                {"query": document},
                Accept=GRAPHQL_RESPONSE,
                **{"Gateway-Router-Secret": ROUTER_SECRET},
            )
            for document in (
                PAGE,  # a client's own document through the router
                "{ _service { sdl } numberCounts { total } }",  # smuggled beside _service
                "{ __schema { types { name } } }",
                "query A { _service { sdl } } query B { numberCounts { total } }",
            )
        ]
    assert service.status_code == 200
    assert "type PhoneNumber" in service.json()["data"]["_service"]["sdl"]
    for response in (no_secret, wrong, *refused):
        assert response.status_code == 400, response.text
        assert code_of(response) == "PERSISTED_QUERY_NOT_IN_LIST"
    assert as_router.status_code == 200, as_router.text
    assert "errors" not in as_router.json()
    assert as_router.json()["data"]["_entities"][0]["numberCounts"]["total"] == 0
    assert recorder.calls == 1


async def test_the_router_secret_is_never_logged(
    tmp_path: Path, recorder: RecordingTransport
) -> None:
    manifest = apollo_manifest(tmp_path / "manifest.json", COUNTS)
    settings = live_settings(
        env="production", trusted_documents=str(manifest), router_secret=ROUTER_SECRET
    )
    with capture_logs() as logs:
        async with running_gateway(settings, recorder) as client:
            await post(client, {"query": SERVICE}, **{"Gateway-Router-Secret": ROUTER_SECRET})
            await post(client, {"query": PAGE}, **{"Gateway-Router-Secret": ROUTER_SECRET})
    assert logs
    assert ROUTER_SECRET not in json.dumps(logs, default=str)


def test_a_short_router_secret_stops_production_start_up_without_echoing_it() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_ROUTER_SECRET") as raised:
        live_settings(env="production", router_secret="short-secret")
    assert "short-secret" not in str(raised.value)
    assert live_settings(router_secret="short-secret").router_secret is not None  # development


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        b'{"abc": "{ numberCounts { total } }"}',
        b'{"format": "apollo-persisted-query-manifest", "operations": [{"id": 1}]}',
    ],
)
def test_a_bad_manifest_stops_start_up_naming_the_variable(tmp_path: Path, content: bytes) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(content)
    with pytest.raises(SettingsError, match="GATEWAY_TRUSTED_DOCUMENTS"):
        create_app(live_settings(trusted_documents=str(manifest)))


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept_encoding", "coding"),
    [
        ("gzip", "gzip"),
        ("br", "br"),
        ("gzip, br", "br"),
        ("br;q=0, gzip", "gzip"),
        ("identity", None),
        ("", None),
    ],
)
async def test_large_answers_are_compressed_as_accept_encoding_allows(
    gateway: httpx.AsyncClient, accept_encoding: str, coding: str | None
) -> None:
    response = await gateway.post(
        "/graphql", json={"query": PAGE}, headers={"Accept-Encoding": accept_encoding}
    )
    assert response.headers["vary"].lower().count("accept-encoding") == 1
    assert response.headers.get("content-encoding") == coding
    raw = response.content  # httpx decodes br and gzip itself
    assert orjson.loads(raw)["data"]["phoneNumbers"]["nodes"]


async def test_compression_bytes_are_real(gateway: httpx.AsyncClient) -> None:
    request = gateway.build_request(
        "POST", "/graphql", json={"query": PAGE}, headers={"Accept-Encoding": "gzip"}
    )
    response = await gateway.send(request, stream=True)
    compressed = b"".join([chunk async for chunk in response.aiter_raw()])
    await response.aclose()
    assert orjson.loads(gzip.decompress(compressed))["data"]["phoneNumbers"]["nodes"]
    request = gateway.build_request(
        "POST", "/graphql", json={"query": PAGE}, headers={"Accept-Encoding": "br"}
    )
    response = await gateway.send(request, stream=True)
    compressed = b"".join([chunk async for chunk in response.aiter_raw()])
    await response.aclose()
    assert orjson.loads(brotli.decompress(compressed))["data"]["phoneNumbers"]["nodes"]


async def test_small_answers_are_not_compressed(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(
        "/graphql", json={"query": COUNTS}, headers={"Accept-Encoding": "gzip, br"}
    )
    assert "content-encoding" not in response.headers
    assert "accept-encoding" in response.headers["vary"].lower()


# --- HTTP caching of GET queries ------------------------------------------------------------


async def test_get_answers_carry_cache_headers_and_an_etag_that_gives_304(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(cache_ttl=60), recorder) as client:
        headers = {"Apollo-Require-Preflight": "1", "Authorization": "Bearer demo-admin"}
        del client.headers["Gateway-Cache-Report"]  # identical answers, identical bytes
        first = await client.get("/graphql", params={"query": PAGE}, headers=headers)
        second = await client.get("/graphql", params={"query": PAGE}, headers=headers)
        assert first.content == second.content
        assert first.headers["etag"] == second.headers["etag"]
        assert first.headers["cache-control"] == "private, max-age=60"
        assert "authorization" in first.headers["vary"].lower()
        not_modified = await client.get(
            "/graphql",
            params={"query": PAGE},
            headers={**headers, "If-None-Match": first.headers["etag"]},
        )
        assert not_modified.status_code == 304
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == first.headers["etag"]
        other_token = await client.get(
            "/graphql",
            params={"query": PAGE},
            headers={
                **headers,
                "Authorization": "Bearer demo-location-admin",
                "If-None-Match": first.headers["etag"],
            },
        )
        assert other_token.status_code == 200, "another caller's answer is another answer"
        posted = await post(client, {"query": PAGE}, Authorization="Bearer demo-admin")
        assert "etag" not in posted.headers
    assert recorder.calls == 2


async def test_get_answers_are_not_cacheable_with_caching_off_or_errors(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(cache_ttl=0), recorder) as client:
        response = await client.get(
            "/graphql",
            params={"query": COUNTS},
            headers={"Apollo-Require-Preflight": "1", "Authorization": "Bearer demo-admin"},
        )
        assert response.headers["cache-control"] == "private, no-cache"
    async with running_gateway(live_settings(cache_ttl=60), recorder) as client:
        partial = await client.get(
            "/graphql",
            params={
                "query": "{ numberCounts { total } phoneNumbers(page: {first: 0}) { totalCount } }"
            },
            headers={"Apollo-Require-Preflight": "1", "Authorization": "Bearer demo-admin"},
        )
        assert partial.json()["data"]["numberCounts"]["total"] > 0
        assert partial.headers["cache-control"] == "private, no-cache", "errors: not cacheable"


async def test_the_cache_report_is_shown_only_when_asked(gateway: httpx.AsyncClient) -> None:
    asked = await post(gateway, {"query": COUNTS}, **{"Gateway-Cache-Report": "true"})
    assert "cache" in asked.json()["extensions"]
    del gateway.headers["Gateway-Cache-Report"]
    quiet = await post(gateway, {"query": COUNTS})
    assert "cache" not in quiet.json()["extensions"]


async def test_csrf_sees_escaped_parameter_names(gateway: httpx.AsyncClient) -> None:
    """A GET whose parameter name is percent-escaped is still an operation."""
    response = await gateway.get("/graphql?%71uery=%7BnumberCounts%7Btotal%7D%7D")
    assert response.status_code == 400
    assert "CSRF" in response.json()["errors"][0]["message"]


async def test_csrf_and_probes_hold_behind_a_prefix_stripping_proxy() -> None:
    """uvicorn's --root-path puts the prefix in both root_path and path."""
    from asgi_lifespan import LifespanManager

    settings = live_settings(root_path="/numbers", max_in_flight=1)
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app, root_path="/numbers"),
            base_url="http://gateway.test",
        ) as client,
    ):
        blocked = await client.get("/numbers/graphql", params={"query": COUNTS})
        assert blocked.status_code == 400
        assert "CSRF" in blocked.json()["errors"][0]["message"]
        page = await client.get("/numbers/graphql", headers={"Accept": "text/html"})
        assert 'src="/numbers/graphql/assets/' in page.text
        assert (await client.get("/numbers/healthz")).status_code == 200


def test_retry_after_with_digits_that_are_not_ascii() -> None:
    from gateway.upstream.transport import parse_retry_after

    assert parse_retry_after("²", now=0) is None
    assert parse_retry_after("3", now=0) == 3


async def test_apq_never_registers_a_document_that_does_not_validate(
    gateway: httpx.AsyncClient,
) -> None:
    broken = "{ phoneNumbers { nope } }"
    digest = sha256(broken)
    refused = await post(gateway, {"query": broken, "extensions": apq(digest)})
    assert code_of(refused) == "GRAPHQL_VALIDATION_FAILED"
    by_hash = await post(gateway, {"extensions": apq(digest)})
    assert code_of(by_hash) == "PERSISTED_QUERY_NOT_FOUND"


# --- one digit rule, one refusal body --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12", 12),
        (b"12", 12),
        ("0012", 12),
        ("0" * 100 + "7", 7),  # leading zeros are not significant digits
        ("²", None),  # str.isdigit() says yes; int() refuses
        ("١٢", None),  # Arabic-Indic digits: int() reads them, HTTP does not
        (" 12", None),
        ("+12", None),
        ("1_000", None),
        ("", None),
        (None, None),
        ("1" * 5000, None),  # int() would raise (the 4300-digit limit)
    ],
)
def test_decimal_values_are_ascii_digits_only(
    value: str | bytes | None, expected: int | None
) -> None:
    from gateway.http_syntax import decimal_value

    assert decimal_value(value) == expected


async def test_a_declared_length_too_long_to_convert_is_counted_instead() -> None:
    """A Content-Length of thousands of digits once reached int() and answered 500."""
    from gateway.server.request_guards import BodySizeLimitMiddleware

    reached: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run(declared: bytes, body: bytes) -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "headers": [(b"content-length", declared)]}
        await BodySizeLimitMiddleware(app, max_bytes=100)(scope, receive, send)
        status: int = sent[0]["status"]
        return status

    assert await run(b"1" * 5000, b"{}") == 200
    assert reached == [b"{}"]
    assert await run(b"9" * 30, b"{}") == 413  # declared too large: refused unread
    assert await run(b"\xb2", b"x" * 101) == 413  # unreadable: counted, and too large
    assert reached == [b"{}"]


async def test_every_refusal_before_execution_has_the_one_body(
    gateway: httpx.AsyncClient,
) -> None:
    """Guards, the view, the parameter reader and the document policy refuse alike."""
    refusals = [
        await gateway.put("/graphql", content=b"{}"),  # method
        await post(gateway, {"query": COUNTS}, Accept="text/csv"),  # Accept
        await gateway.post("/graphql", content=b"{}", headers={"Content-Type": "text/xml"}),
        await gateway.post("/graphql", content=b"query=1", headers={"Content-Type": "text/plain"}),
        await post(gateway, b"x" * (2 * 1024 * 1024)),  # body size
        await post(gateway, b"{not json"),  # parameters
        await post(gateway, {"extensions": apq("0" * 64)}),  # document policy
        await post(gateway, {"query": "query A { a } query B { b }"}),  # operation choice
    ]
    for response in refusals:
        body = response.json()
        assert list(body) == ["errors"], response.status_code
        [error] = body["errors"]
        assert set(error) == {"message", "extensions"}
        assert isinstance(error["message"], str)
        assert error["message"]
        assert error["extensions"]["code"] in ("BAD_USER_INPUT", "PERSISTED_QUERY_NOT_FOUND")
    assert [r.status_code for r in refusals] == [405, 406, 415, 400, 413, 400, 200, 200]


# --- batching (GATEWAY_BATCH_MAX) -----------------------------------------------------------

TOTALS = "query Totals { numberCounts { total } }"
FIRST_FIVE = (
    "query FirstFive { phoneNumbers(page: {first: 5}) { totalCount nodes { phoneNumber } } }"
)


async def test_a_batch_answers_in_order_with_one_upstream_call_for_equal_filter_sets(
    recorder: RecordingTransport,
) -> None:
    """A page and the counts of the same filter set are one upstream call when they share a
    loader (a batch), two when they do not (two requests)."""
    async with running_gateway(live_settings(batch_max=3, cache_ttl=0), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        with capture_logs() as logs:
            batch = await post(
                client, [{"query": TOTALS}, {"query": FIRST_FIVE}], Accept=GRAPHQL_RESPONSE
            )
        assert recorder.calls == 1
        assert ("details", "true") in recorder.params()
        apart = [await post(client, {"query": TOTALS}), await post(client, {"query": FIRST_FIVE})]
        assert recorder.calls == 3
    assert batch.status_code == 200
    assert batch.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    totals, first_five = batch.json()
    assert totals == apart[0].json()
    assert first_five == apart[1].json()
    assert (
        first_five["data"]["phoneNumbers"]["totalCount"] == totals["data"]["numberCounts"]["total"]
    )
    [line] = [line for line in logs if line["event"] == "http_request"]
    assert [entry["operationName"] for entry in line["batch"]] == ["Totals", "FirstFive"]
    assert [entry["outcome"] for entry in line["batch"]] == ["success", "success"]
    assert line["upstreamCalls"] == 1


async def test_each_operation_of_a_batch_has_its_own_errors_and_limits(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(
        live_settings(batch_max=4, cache_ttl=0, max_page_size=10), recorder
    ) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        with capture_logs() as logs:
            response = await post(
                client,
                [
                    {"query": "{ nope }"},  # does not validate
                    {"query": "{ phoneNumbers(page: {first: 11}) { totalCount } }"},  # a limit
                    {"query": 7},  # not an operation at all
                    {"query": TOTALS},
                ],
            )
    assert response.status_code == 200
    invalid, over_limit, malformed, totals = response.json()
    assert "data" not in invalid
    assert invalid["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert over_limit["data"]["phoneNumbers"] is None
    assert over_limit["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert malformed == {
        "errors": [
            {
                "message": "'query' must be a string or null.",
                "extensions": {"code": "BAD_USER_INPUT"},
            }
        ]
    }
    assert totals["data"]["numberCounts"]["total"] > 0
    assert recorder.calls == 1
    [line] = [line for line in logs if line["event"] == "http_request"]
    assert [entry["outcome"] for entry in line["batch"]] == [
        "rejected",
        "error",
        "rejected",
        "success",
    ]
    assert [entry["upstreamCalls"] for entry in line["batch"]] == [0, 0, 0, 1]


@pytest.mark.parametrize("size", [0, 4])
async def test_a_batch_over_the_bound_or_empty_is_a_request_error(
    recorder: RecordingTransport, size: int
) -> None:
    async with running_gateway(live_settings(batch_max=3), recorder) as client:
        modern = await post(client, [{"query": TOTALS}] * size, Accept=GRAPHQL_RESPONSE)
        legacy = await post(client, [{"query": TOTALS}] * size)
    for response in (modern, legacy):
        assert response.status_code == 400
        assert "data" not in response.json()
        assert code_of(response) == "BAD_USER_INPUT"
    assert "GATEWAY_BATCH_MAX" in modern.text or size == 0
    assert recorder.calls == 0


async def test_a_batch_of_one_and_persisted_queries_per_operation(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(batch_max=2), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        one = await post(client, [{"query": TOTALS}])
        misses = await post(
            client,
            [{"extensions": apq(sha256(TOTALS))}, {"extensions": apq(sha256(FIRST_FIVE))}],
        )
        registered = await post(
            client, [{"query": TOTALS, "extensions": apq(sha256(TOTALS))}, {"query": COUNTS}]
        )
        by_hash = await post(client, [{"extensions": apq(sha256(TOTALS))}])
        # GET stays single: a batch is a POST body only.
        get = await client.get(
            "/graphql", params={"query": TOTALS}, headers={"Apollo-Require-Preflight": "1"}
        )
    [answer] = one.json()
    assert answer["data"]["numberCounts"]["total"] > 0
    assert [entry["errors"][0]["extensions"]["code"] for entry in misses.json()] == [
        "PERSISTED_QUERY_NOT_FOUND"
    ] * 2
    assert registered.json()[0]["data"] == answer["data"]
    assert [entry["data"] for entry in by_hash.json()] == [answer["data"]]
    assert get.json()["data"] == answer["data"]


def _window(first: int) -> str:
    """An operation costing 50 + ``first`` whose upstream call no other ``first`` shares."""
    return f"{{ phoneNumbers(page: {{first: {first}}}) {{ nodes {{ phoneNumber }} }} }}"


async def test_a_batch_s_operations_share_one_cost_budget(recorder: RecordingTransport) -> None:
    """Each operation fits GATEWAY_MAX_COST alone (150 of 300); together the first two fill
    it, and the rest are refused before any operation runs: one POST costs what one
    operation may, not GATEWAY_BATCH_MAX times it."""
    async with running_gateway(
        live_settings(batch_max=5, cache_ttl=0, max_cost=300), recorder
    ) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        response = await post(client, [{"query": _window(first)} for first in range(100, 95, -1)])
    assert response.status_code == 200
    answers = response.json()
    assert [len(answer["data"]["phoneNumbers"]["nodes"]) for answer in answers[:2]] == [100, 99]
    for refused in answers[2:]:
        assert "data" not in refused
        assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert "GATEWAY_MAX_COST" in refused["errors"][0]["message"]
    assert recorder.calls == 2, "operations past the budget make no upstream call"


async def test_each_operation_of_a_batch_reports_only_its_own_cache_events(
    recorder: RecordingTransport,
) -> None:
    people = "{ phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 5}) { totalCount } }"
    async with running_gateway(live_settings(batch_max=2, cache_ttl=60), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        await post(client, {"query": TOTALS})  # cached: the batch's TOTALS is a hit
        response = await post(
            client,
            [{"query": TOTALS}, {"query": people}],
            **{"Gateway-Cache-Report": "true"},
        )
        assert recorder.calls == 2, "the batch made one call: its second operation's"
    totals, page = response.json()
    assert [call["status"] for call in totals["extensions"]["cache"]["calls"]] == ["hit"]
    assert [call["status"] for call in page["extensions"]["cache"]["calls"]] == ["miss"]

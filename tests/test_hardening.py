"""GraphQL and HTTP hardening: limits, body size, batching, CSRF, production mode, masking,
garbage bodies, and tokens kept out of responses and logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from graphql import parse
from structlog.testing import capture_logs

from gateway.execution.prepare import OperationRefused
from gateway.settings import load_settings
from gateway.transports.router_access import SERVICE_ONLY, only_root_fields
from tests.conftest import (
    InProcess,
    RecordingTransport,
    graphql,
    live_settings,
    running_gateway,
)

INTROSPECTION = "{ __schema { queryType { name } } }"
INVALID = "GRAPHQL_VALIDATION_FAILED"  # Apollo's code for a document that does not validate


async def rejected(client: httpx.AsyncClient, query: str, code: str = "BAD_USER_INPUT") -> str:
    body = await graphql(client, query, status=400, headers={"Authorization": "Bearer demo-admin"})
    assert "data" not in body, "a request error has no data entry"
    assert body["errors"][0]["extensions"]["code"] == code
    message: str = body["errors"][0]["message"]
    return message


@pytest.fixture
async def strict(recorder: RecordingTransport) -> AsyncIterator[httpx.AsyncClient]:
    settings = live_settings(max_query_depth=3, max_aliases=3, max_tokens=200, max_root_fields=4)
    async with running_gateway(settings, recorder) as client:
        yield client


async def test_depth_limit(strict: httpx.AsyncClient, recorder: RecordingTransport) -> None:
    message = await rejected(strict, "{ phoneNumbers { edges { node { owner { id } } } } }")
    assert "depth" in message
    assert recorder.calls == 0


async def test_alias_limit_counts_through_fragments(
    strict: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    query = """
      { a: numberCounts { total } ...More }
      fragment More on Query { b: numberCounts { total } c: numberCounts { x: total } d: numberCounts { total } }
    """
    assert "aliases" in await rejected(strict, query)
    assert recorder.calls == 0


async def test_token_limit_stops_duplicated_fields(
    strict: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    query = "{ numberCounts { " + "total " * 300 + "} }"
    assert "token" in (await rejected(strict, query)).lower()
    assert recorder.calls == 0


async def test_root_field_limit_counts_through_fragments(
    strict: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    query = """
      { numberCounts { total } phoneNumbers { totalCount } ...R ... on Query { numberCounts { assigned } } }
      fragment R on Query { phoneNumbers { edges { cursor } } __typename }
    """
    assert "root fields" in await rejected(strict, query)
    assert recorder.calls == 0


async def test_within_the_limits_is_served(
    strict: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    body = await graphql(
        strict,
        "{ a: numberCounts { total } phoneNumbers(page: {first: 1}) { nodes { extension } } }",
        headers={"Authorization": "Bearer demo-admin"},
    )
    assert "errors" not in body
    assert recorder.calls == 1, "counts ride on the page call of the same filter"


async def test_default_limits_are_on(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        aliases = " ".join(f"a{i}: numberCounts {{ total }}" for i in range(16))
        assert "aliases" in await rejected(client, "{ " + aliases + " }")
    assert recorder.calls == 0


async def test_oversized_bodies_get_413_before_parsing(gateway: httpx.AsyncClient) -> None:
    padding = "#" + "x" * (1024 * 1024)
    response = await gateway.post(
        "/graphql", json={"query": padding + "\n{ numberCounts { total } }"}
    )
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 65536  # no Content-Length: counted as it arrives

    chunked = await gateway.post(
        "/graphql", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413


async def test_query_batching_is_off(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    response = await gateway.post("/graphql", json=[{"query": "{ numberCounts { total } }"}] * 2)
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert recorder.calls == 0


# --- CSRF ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_simple_requests_need_a_preflight_header(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    blocked = await gateway.post(
        "/graphql", content=b'{"query": "{ numberCounts { total } }"}', headers=headers
    )
    assert blocked.status_code == 400
    assert "Cross-Site Request Forgery" in blocked.json()["errors"][0]["message"]
    with_preflight = await gateway.post(
        "/graphql",
        content=b'{"query": "{ numberCounts { total } }"}',
        headers={**headers, "Apollo-Require-Preflight": "true"},
    )
    assert "Cross-Site Request Forgery" not in with_preflight.text
    assert recorder.calls == 0


async def test_get_runs_queries_with_a_preflight_header(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    params = {"query": "{ numberCounts { total } }"}
    blocked = await gateway.get("/graphql", params=params)
    assert blocked.status_code == 400
    assert recorder.calls == 0
    allowed = await gateway.get(
        "/graphql", params=params, headers={"Apollo-Require-Preflight": "1"}
    )
    assert allowed.status_code == 200
    assert allowed.json()["data"]["numberCounts"]["total"] == 1000
    json_get = await gateway.get(
        "/graphql", params=params, headers={"Content-Type": "application/json"}
    )
    assert json_get.status_code == 200


async def test_graphiql_is_served_in_development(gateway: httpx.AsyncClient) -> None:
    page = await gateway.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "FirstNumbers" in page.text


# --- production mode ----------------------------------------------------------------------


async def test_production_turns_off_introspection_ide_and_suggestions(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(env="production"), recorder) as client:
        message = await rejected(client, INTROSPECTION, INVALID)
        assert "introspection" in message.lower()
        ide = await client.get("/graphql", headers={"Accept": "text/html"})
        assert ide.status_code == 406, "no GraphiQL in production: HTML cannot be served"
        assert "graphiql" not in ide.text.lower()
        assets = await client.get("/graphql/assets/graphiql-4.1.2/graphiql.min.js")
        assert assets.status_code != 200
        typo = await rejected(client, "{ numberCount { total } }", INVALID)
        assert "Did you mean" not in typo
    async with running_gateway(live_settings(), recorder) as client:
        development = await graphql(client, INTROSPECTION)
        assert development["data"]["__schema"]["queryType"]["name"] == "Query"
        assert "Did you mean" in await rejected(client, "{ numberCount { total } }", INVALID)


# --- masking and secrets ------------------------------------------------------------------


async def test_unexpected_exceptions_are_masked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("database password is hunter2")

    with capture_logs() as logs:
        async with running_gateway(live_settings(), RecordingTransport(handler=handler)) as client:
            body = await graphql(
                client, "{ numberCounts { total } }", headers={"Authorization": "Bearer t"}
            )
    error = body["errors"][0]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert error["message"] == "Internal server error."
    assert "hunter2" not in str(body)
    assert any(entry["event"] == "graphql_internal_error" for entry in logs)


async def test_tokens_appear_in_no_log_line(recorder: RecordingTransport) -> None:
    token = "Bearer tok-visible-only-upstream-123"
    with capture_logs() as logs:
        async with running_gateway(live_settings(), recorder) as client:
            for query in (
                "{ numberCounts { total } }",
                '{ phoneNumbers(orgId: "x") { totalCount } }',
                "{ bad",
            ):
                await client.post(
                    "/graphql", json={"query": query}, headers={"Authorization": token}
                )
    assert logs
    assert "tok-visible-only-upstream-123" not in repr(logs)
    assert recorder.requests[0].headers["Authorization"] == token


# --- garbage in, no 5xx out ---------------------------------------------------------------

GARBAGE: list[tuple[bytes, str]] = [
    (b"", "application/json"),
    (b'{"query": "{ numberCounts { total }', "application/json"),
    (b"\xff\xfe\x00garbage", "application/json"),
    (b'{"query": "\xc3\x28"}', "application/json"),
    (b"5", "application/json"),
    (b'"just a string"', "application/json"),
    (b"null", "application/json"),
    (b"[]", "application/json"),
    (b"[1, 2]", "application/json"),
    (b'{"query": 5}', "application/json"),
    (b'{"query": null}', "application/json"),
    (b'{"query": "{ numberCounts { total } }", "variables": [1]}', "application/json"),
    (b'{"query": "{ numberCounts { total } }", "operationName": 5}', "application/json"),
    (b'{"query": "{ numberCounts { total } }", "extensions": "x"}', "application/json"),
    (
        b'{"query": "query($f: PhoneNumberFilter) { numberCounts(filter: $f) { total } }", "variables": {"f": 5}}',
        "application/json",
    ),
    (
        b'{"query": "query($p: PageInput) { phoneNumbers(page: $p) { totalCount } }", "variables": {"p": {"first": "many"}}}',
        "application/json",
    ),
    (b'{"query": "{ numberCounts { total } }"}', "application/xml"),
    (
        b'{"query": "query A { numberCounts { total } } query B { numberCounts { total } }"}',
        "application/json",
    ),
    (b'{"query": "query A { numberCounts { total } }", "operationName": "B"}', "application/json"),
]


@pytest.mark.parametrize(("body", "content_type"), GARBAGE)
async def test_garbage_bodies_never_get_a_5xx(
    gateway: httpx.AsyncClient, body: bytes, content_type: str
) -> None:
    response = await gateway.post("/graphql", content=body, headers={"Content-Type": content_type})
    assert response.status_code < 500, response.text
    payload: dict[str, Any] = response.json()
    codes = {error["extensions"]["code"] for error in payload["errors"]}
    assert codes == {"BAD_USER_INPUT"}, payload


async def test_embedded_gateway_rejects_garbage_too() -> None:
    async with running_gateway(load_settings()) as client:
        response = await client.post(
            "/graphql", content=b"\x00\x01", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400


async def test_tokenless_operations_cannot_take_the_metric_labels(
    recorder: RecordingTransport,
) -> None:
    """150 tokenless `query JunkN { __typename }` once filled every operation-name slot."""
    async with running_gateway(live_settings(), recorder) as client:
        for n in range(150):
            await graphql(client, f"query Junk{n} {{ __typename }}")
        await graphql(
            client,
            "query Inventory { numberCounts { total } }",
            headers={"Authorization": "Bearer demo-admin"},
        )
        metrics = (await client.get("/metrics")).text
    assert 'operation="Inventory",outcome="success"' in metrics
    assert 'operation="Junk' not in metrics
    assert (
        'gateway_graphql_operations_total{operation="(other)",outcome="success"} 150.0' in metrics
    )


@pytest.mark.parametrize(
    ("document", "code"),
    [
        ("{", "GRAPHQL_PARSE_FAILED"),
        ("query { phoneNumbers(page: {first: }) { totalCount } }", "GRAPHQL_PARSE_FAILED"),
        ("{}", "GRAPHQL_PARSE_FAILED"),
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ ...Missing }", "GRAPHQL_VALIDATION_FAILED"),
        ("fragment A on Query { ...A } { ...A }", "GRAPHQL_VALIDATION_FAILED"),
        ('{ phoneNumbers(page: {first: "x"}) { totalCount } }', "GRAPHQL_VALIDATION_FAILED"),
        ("{ phoneNumbers { nodes { owner { person { id } } } } }", "BAD_USER_INPUT"),  # depth
        ("{ a: numberCounts { total } b: numberCounts { total } }", "BAD_USER_INPUT"),  # aliases
        ("{ " + "numberCounts { total } " * 60 + "}", "BAD_USER_INPUT"),  # tokens
        ("{ numberCounts { total } " + "__typename " * 5 + "}", "BAD_USER_INPUT"),  # root fields
    ],
)
async def test_error_codes_are_apollos(
    recorder: RecordingTransport, document: str, code: str
) -> None:
    """Parse and validation failures take Apollo Server's codes; limits are the caller's
    input (BAD_USER_INPUT); none of them costs an upstream call."""
    settings = live_settings(max_query_depth=2, max_aliases=1, max_tokens=120, max_root_fields=4)
    async with running_gateway(settings, recorder) as client:
        body = await graphql(client, document, status=400)
    assert "data" not in body
    assert [error["extensions"]["code"] for error in body["errors"]][:1] == [code], body
    assert recorder.calls == 0


async def test_variable_coercion_errors_stay_bad_user_input(gateway: httpx.AsyncClient) -> None:
    document = "query ($n: Int!) { phoneNumbers(page: {first: $n}) { totalCount } }"
    for variables in ({"n": "many"}, {}, {"n": 2**40}):
        body = await graphql(gateway, document, variables, status=400)
        assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}, body


@pytest.mark.parametrize(
    ("arguments", "variables"),
    [
        ("orgId: $text", {"text": "O" * 100_000}),
        ("filter: {ownerId: $text}", {"text": "P" * 5000}),
        ("filter: {locationId: $text}", {"text": "é" * 600}),  # 1,200 bytes of UTF-8
        ("filter: {phoneNumber: $text}", {"text": "1" * 2000}),
        ("filter: {extension: $text}", {"text": "9" * 1025}),
        ("page: {after: $text}", {"text": "c" * 100_000}),
    ],
)
async def test_strings_too_long_for_an_upstream_url_are_refused_before_any_call(
    gateway: httpx.AsyncClient,
    recorder: RecordingTransport,
    arguments: str,
    variables: dict[str, Any],
) -> None:
    """A 100,000-character id was an httpx.InvalidURL, answered INTERNAL_SERVER_ERROR."""
    document = f"query ($text: String) {{ phoneNumbers({arguments}) {{ totalCount }} }}"
    if "orgId" in arguments or "Id:" in arguments:
        document = document.replace("$text: String", "$text: ID")
    body = await graphql(gateway, document, variables)
    error = body["errors"][0]
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}, error
    assert "too long" in error["message"]
    assert recorder.calls == 0


async def test_a_cycle_of_doubling_fragments_is_refused_before_any_walk(
    recorder: RecordingTransport,
) -> None:
    # Thirty fragments, each spreading the next twice, the last spreading the first: it
    # selects no field, so the expansion bound passes it, but a walk of every path (the
    # root-field limit's) would visit 2**30 spreads. Refused at parse, as validation would.
    names = [f"F{n}" for n in range(30)]
    fragments = " ".join(
        f"fragment {name} on Query {{ ...{names[(n + 1) % 30]} ...{names[(n + 1) % 30]} }}"
        for n, name in enumerate(names)
    )
    query = "{ ...F0 } " + fragments
    async with running_gateway(live_settings(max_tokens=2000), recorder) as client:
        message = await rejected(client, query, "GRAPHQL_VALIDATION_FAILED")
    assert "within itself" in message
    assert recorder.calls == 0


def test_the_router_check_spreads_fragments_with_the_shared_walk() -> None:
    service = "fragment S on Query { _service { sdl } } { ...S }"
    assert only_root_fields(parse(service), SERVICE_ONLY)
    smuggled = "fragment S on Query { _service { sdl } phoneNumbers { totalCount } } { ...S }"
    assert not only_root_fields(parse(smuggled), SERVICE_ONLY)
    names = [f"F{n}" for n in range(30)]
    doubling = " ".join(
        f"fragment {name} on Query {{ ...{names[n + 1]} ...{names[n + 1]} }}"
        for n, name in enumerate(names[:-1])
    )
    # A document the router check could not walk is never prepared (the document limits
    # refuse its expansion first), so it never reaches the check.
    operations = InProcess(live_settings()).operations
    with pytest.raises(OperationRefused):
        operations.prepare(
            f"{{ ...F0 }} {doubling} fragment F29 on Query {{ _service {{ sdl }} }}", None
        )
    with pytest.raises(OperationRefused):
        operations.prepare("{ _service { sdl } ...Missing }", None)

"""Garbage in, a 4xx (or a 200 with errors) out: random bytes, deep nesting, wrong encodings
and wrong types in POST bodies, GET parameters and headers never get a 5xx, always get a
GraphQL-shaped JSON body, and every error carries a contract code."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ErrorCode
from tests.conftest import live_settings, running_gateway

CONTRACT_CODES = {code.value for code in ErrorCode}
DOCUMENT = "query Q($f: PhoneNumberFilter) { numberCounts(filter: $f) { total } }"

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def deep(depth: int, opener: str, closer: str, leaf: str = "1") -> str:
    return opener * depth + leaf + closer * depth


nested = st.integers(min_value=30, max_value=3000).flatmap(
    lambda depth: st.sampled_from(
        [deep(depth, "[", "]"), deep(depth, '{"a":', "}"), deep(depth, "[", "]", "")]
    )
)
lone_surrogates = st.sampled_from(['"\\ud800"', '"\\udfff x"', '"a\\ud83d"'])

bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "query": st.one_of(st.just(DOCUMENT), json_values),
            "variables": st.one_of(json_values, st.fixed_dictionaries({"f": json_values})),
            "operationName": st.one_of(st.just("Q"), json_values),
            "extensions": json_values,
        },
    ).map(lambda value: json.dumps(value).encode()),
    nested.map(
        lambda text: (
            f'{{"query": "{{ numberCounts {{ total }} }}", "variables": {{"x": {text}}}}}'.encode()
        )
    ),
    nested.map(str.encode),
    lone_surrogates.map(
        lambda text: (
            f'{{"query": "{{ numberCounts {{ total }} }}", "operationName": {text}}}'.encode()
        )
    ),
    st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"]).map(
        lambda encoding: json.dumps(
            {"query": DOCUMENT, "operationName": "Qé"}, ensure_ascii=False
        ).encode(encoding, errors="replace")
    ),
)
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.binary(max_size=40).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),
)
headers = st.dictionaries(
    st.sampled_from(
        [
            "Accept",
            "Authorization",
            "Content-Type",
            "Cache-Control",
            "Accept-Encoding",
            "X-Request-ID",
            "Apollo-Require-Preflight",
            "Origin",
            "If-None-Match",
            "Gateway-Cache-Report",
        ]
    ),
    header_values,
    max_size=6,
)
# Kept under httpx's own limit on a URL's length (the client refuses longer ones).
nested_in_a_url = st.integers(min_value=30, max_value=1000).map(lambda d: deep(d, "[", "]"))
query_strings = st.dictionaries(
    st.sampled_from(["query", "variables", "operationName", "extensions", "documentId", "x"]),
    st.one_of(st.text(max_size=60), nested_in_a_url, json_values.map(json.dumps)),
    max_size=5,
)


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code == 304:
        return
    if response.headers.get("content-type", "").startswith("text/html"):
        return  # GraphiQL, for an Accept that asks for HTML
    body: dict[str, Any] = response.json()
    for error in body.get("errors", []):
        assert error["extensions"]["code"] in CONTRACT_CODES, error
        assert error["extensions"]["code"] != "INTERNAL_SERVER_ERROR", error


def test_garbage_requests_never_get_a_5xx() -> None:
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        client = runner.run(stack.enter_async_context(running_gateway(live_settings())))
        try:

            @settings(
                max_examples=400,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(
                method=st.sampled_from(["POST", "GET"]),
                body=bodies,
                params=query_strings,
                extra=headers,
            )
            def answered(
                method: str, body: bytes, params: dict[str, str], extra: dict[str, Any]
            ) -> None:
                request_headers = {"Content-Type": "application/json", **extra}
                if method == "POST":
                    request = client.build_request(
                        "POST", "/graphql", content=body, headers=request_headers
                    )
                else:
                    request = client.build_request(
                        "GET", "/graphql", params=params, headers=request_headers
                    )
                check(runner.run(client.send(request)))

            answered()
        finally:
            runner.run(stack.aclose())


async def test_an_empty_selection_set_is_a_syntax_error() -> None:
    """graphql-core 3.3 parses `{}`; strawberry's depth limiter then fails on it."""
    async with running_gateway(live_settings()) as client:
        for document in ("{}", "{ phoneNumbers { } }", "query { numberCounts { } }"):
            response = await client.post(
                "/graphql",
                json={"query": document},
                headers={"Accept": "application/graphql-response+json"},
            )
            assert response.status_code == 400, response.text
            error = response.json()["errors"][0]
            assert error["extensions"] == {"code": "BAD_USER_INPUT"}

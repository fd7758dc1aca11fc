"""Garbage in, a 4xx (or a 200 with errors) out: random bytes, deep nesting, wrong encodings
and wrong types in POST bodies, GET parameters and headers never get a 5xx, always get a
GraphQL-shaped JSON body, and every error carries a contract code. Garbage documents too:
fragments unknown, cyclic or deeply nested, and entity keys huge or odd, never reach a
traceback (``INTERNAL_SERVER_ERROR``), and a key too long for a URL costs no upstream call."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.arguments import URL_TEXT_MAX_BYTES
from gateway.errors import ErrorCode
from tests.conftest import RecordingTransport, examples, live_settings, running_gateway

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
                max_examples=examples(400),
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
    """graphql-core 3.3 parses `{}` (graphql-js, and so Apollo, does not); strawberry's depth
    limiter then fails on it."""
    async with running_gateway(live_settings()) as client:
        for document in ("{}", "{ phoneNumbers { } }", "query { numberCounts { } }"):
            response = await client.post(
                "/graphql",
                json={"query": document},
                headers={"Accept": "application/graphql-response+json"},
            )
            assert response.status_code == 400, response.text
            error = response.json()["errors"][0]
            assert error["extensions"] == {"code": "GRAPHQL_PARSE_FAILED"}


# --- garbage documents: fragments and entity keys --------------------------------------------

fragment_names = st.sampled_from(["A", "B", "C", "Missing", "Query", "__x"])
fragment_bodies = st.lists(
    st.one_of(
        fragment_names.map(lambda name: f"...{name}"),
        st.just("numberCounts { total }"),
        st.just("__typename"),
        st.just("phoneNumbers { nodes { ...B } }"),
        st.just("... on Query { ...C }"),
    ),
    min_size=1,
    max_size=4,
).map(" ".join)


def chain(depth: int) -> str:
    """Fragments each spreading the next, ``depth`` deep: deeply nested, all defined."""
    links = "\n".join(f"fragment F{i} on Query {{ ...F{i + 1} }}" for i in range(depth))
    return f"{{ ...F0 }}\n{links}\nfragment F{depth} on Query {{ __typename }}"


fragment_documents = st.one_of(
    # Operations spreading fragments that are unknown, cyclic (A -> B -> A) or on odd types.
    st.tuples(
        fragment_bodies,
        st.dictionaries(
            fragment_names, st.tuples(st.sampled_from(["Query", "Nope"]), fragment_bodies)
        ),
    ).map(
        lambda parts: (
            "{ "
            + parts[0]
            + " }\n"
            + "\n".join(f"fragment {n} on {t} {{ {b} }}" for n, (t, b) in parts[1].items())
        )
    ),
    st.integers(min_value=1, max_value=300).map(chain),
    st.just("{ ...Missing }"),
    st.just("query { phoneNumbers { nodes { ...Missing } } }"),
)

odd_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30),
    st.sampled_from(["", " ", "%00", "../..", "a&b=c", "#frag", "?x=1", "\u0000", "é" * 600]),
    st.integers(min_value=URL_TEXT_MAX_BYTES - 2, max_value=200_000).map(lambda n: "L" * n),
)
entity_keys = st.lists(
    st.fixed_dictionaries(
        {
            "__typename": st.sampled_from(["Location", "Person", "Organization", "Nope", ""]),
            "id": st.one_of(odd_text, json_values),
        }
    ),
    min_size=1,
    max_size=3,
)
ENTITIES = """query ($r: [_Any!]!) { _entities(representations: $r) {
  ... on Location { id phoneNumbers(page: {first: 1}) { totalCount } numberCounts { total } }
  ... on Person { id phoneNumbers(page: {first: 1}) { totalCount } }
  ... on Organization { id numberCounts { total } } } }"""
URL_STRINGS = """query ($org: ID, $f: PhoneNumberFilter, $after: String) {
  phoneNumbers(orgId: $org, filter: $f, page: {first: 1, after: $after}) { totalCount } }"""
url_variables = st.fixed_dictionaries(
    {},
    optional={
        "org": odd_text,
        "after": odd_text,
        "f": st.fixed_dictionaries(
            {},
            optional=dict.fromkeys(
                ("locationId", "phoneNumber", "ownerName", "ownerId", "extension"), odd_text
            ),
        ),
    },
)


def too_long_for_a_url(text: Any) -> bool:
    return isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > (
        URL_TEXT_MAX_BYTES
    )


def test_garbage_documents_and_keys_never_reach_a_traceback(
    recorder: RecordingTransport,
) -> None:
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        client = runner.run(stack.enter_async_context(running_gateway(live_settings(), recorder)))
        client.headers["Authorization"] = "Bearer demo-admin"

        def post(document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
            # json.dumps as the other garbage: infinities go out as the invalid `Infinity`.
            payload = json.dumps({"query": document, "variables": variables}).encode()
            response = runner.run(
                client.post(
                    "/graphql", content=payload, headers={"Content-Type": "application/json"}
                )
            )
            check(response)
            body: dict[str, Any] = response.json()
            return body

        try:

            @settings(
                max_examples=examples(300),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(document=fragment_documents)
            def fragments(document: str) -> None:
                post(document)

            @settings(
                max_examples=examples(300),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(representations=entity_keys)
            def entities(representations: list[dict[str, Any]]) -> None:
                calls = recorder.calls
                body = post(ENTITIES, {"r": representations})
                too_long = [too_long_for_a_url(r["id"]) for r in representations]
                if any(too_long):
                    codes = {e["extensions"]["code"] for e in body.get("errors", [])}
                    assert "BAD_USER_INPUT" in codes, body
                if all(too_long):  # other keys of the batch may be served
                    assert recorder.calls == calls, "a key too long for a URL is never sent"

            @settings(
                max_examples=examples(300),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(variables=url_variables)
            def url_strings(variables: dict[str, Any]) -> None:
                calls = recorder.calls
                body = post(URL_STRINGS, variables)
                sent = [variables.get("org"), variables.get("after")]
                sent += list(variables.get("f", {}).values())
                if any(too_long_for_a_url(text) for text in sent):
                    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
                    assert recorder.calls == calls, "a string too long for a URL is never sent"

            fragments()
            entities()
            url_strings()
        finally:
            runner.run(stack.aclose())


async def test_an_unknown_fragment_is_a_validation_error(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    """It was a KeyError in strawberry's depth limiter, answered INTERNAL_SERVER_ERROR."""
    for document in ("{ ...Missing }", "{ phoneNumbers { nodes { ...X } } }"):
        response = await gateway.post(
            "/graphql",
            json={"query": document},
            headers={"Accept": "application/graphql-response+json"},
        )
        assert response.status_code == 400, response.text
        error = response.json()["errors"][0]
        assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
        assert "Unknown fragment" in error["message"]
    assert recorder.calls == 0

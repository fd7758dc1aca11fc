"""Fuzzing from the schema: generated operations against the gateway and its simulator never
get a 5xx, and every error they get carries a contract code."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import graphql
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, nodes, queries

from gateway.errors import ErrorCode
from gateway.schema.build import build_schema, graphql_schema
from gateway.settings import load_settings
from tests.conftest import examples, running_gateway

CONTRACT_CODES = {code.value for code in ErrorCode}
TOKENS = st.sampled_from(
    [
        None,
        "demo-admin",
        "demo-readonly",
        "demo-location-admin",
        "demo-no-scope",
        "demo-partner",
        "x",
    ]
)


# Federation representations (the `_Any` scalar): well-formed ones of every entity type,
# ones with an unknown type or a bad id, and values that are not objects at all.
REPRESENTATIONS = st.one_of(
    st.builds(
        lambda typename, key: nodes.Object(
            [
                graphql.ObjectFieldNode(
                    name=graphql.NameNode(value="__typename"), value=nodes.String(typename)
                ),
                graphql.ObjectFieldNode(name=graphql.NameNode(value="id"), value=key),
            ]
        ),
        st.sampled_from(["Location", "Person", "Organization", "Nope"]),
        st.one_of(st.text(max_size=12).map(nodes.String), st.integers().map(nodes.Int)),
    ),
    st.text(max_size=5).map(nodes.String),
    st.integers().map(nodes.Int),
)


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    body: dict[str, Any] = response.json()
    for error in body.get("errors", []):
        assert error["extensions"]["code"] in CONTRACT_CODES, error
        if error["extensions"]["code"] == "INTERNAL_SERVER_ERROR":
            raise AssertionError(f"a generated operation hit a bug: {error}")


def run_fuzz(mode: Mode, ci_depth: int) -> None:
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        client = runner.run(stack.enter_async_context(running_gateway(load_settings())))
        try:

            @settings(
                max_examples=examples(ci_depth),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(
                query=queries(
                    graphql_schema(build_schema()),
                    mode=mode,
                    custom_scalars={"_Any": REPRESENTATIONS},
                ),
                token=TOKENS,
            )
            def operation_is_answered(query: str, token: str | None) -> None:
                headers = {"Accept": "application/graphql-response+json"}
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                response = runner.run(
                    client.post("/graphql", json={"query": query}, headers=headers)
                )
                check_answer(response)
                if mode is Mode.NEGATIVE:
                    assert response.status_code == 400, response.text

            operation_is_answered()
        finally:
            runner.run(stack.aclose())


def test_valid_generated_operations() -> None:
    run_fuzz(Mode.POSITIVE, ci_depth=500)


def test_invalid_generated_operations() -> None:
    run_fuzz(Mode.NEGATIVE, ci_depth=150)

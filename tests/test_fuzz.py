"""Fuzzing from the schema: generated operations against the gateway and its simulator never
get a 5xx, and every error they get carries a contract code."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, queries

from gateway.api.schema import export_sdl
from gateway.errors import ErrorCode
from gateway.settings import load_settings
from tests.conftest import running_gateway

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


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    body: dict[str, Any] = response.json()
    for error in body.get("errors", []):
        assert error["extensions"]["code"] in CONTRACT_CODES, error
        if error["extensions"]["code"] == "INTERNAL_SERVER_ERROR":
            raise AssertionError(f"a generated operation hit a bug: {error}")


def run_fuzz(mode: Mode, examples: int) -> None:
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        client = runner.run(stack.enter_async_context(running_gateway(load_settings())))
        try:

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(query=queries(export_sdl(), mode=mode), token=TOKENS)
            def operation_is_answered(query: str, token: str | None) -> None:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
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
    run_fuzz(Mode.POSITIVE, examples=500)


def test_invalid_generated_operations() -> None:
    run_fuzz(Mode.NEGATIVE, examples=150)

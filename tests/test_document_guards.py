"""The negative ``@stream(initialCount:)`` guard (``document_guards.negative_initial_count``)
reads only the operation that will run: its own directives (and the fragments it spreads) and
its own variables' defaults, not another operation's of the same document."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from graphql import parse

from gateway.errors import ErrorCode
from gateway.execution.document_limits import negative_initial_count
from tests.conftest import RecordingTransport

# ``Fine`` comes first: a guard pooling every operation's defaults lets the later ``Negative``
# override ``Fine``'s default of 1 with its -1.
TWO_DEFAULTS = """
query Fine($n: Int = 1) { phoneNumbers(page: {first: 3}) {
  nodes @stream(initialCount: $n) { phoneNumber } } }
query Negative($n: Int = -1) { phoneNumbers(page: {first: 3}) {
  nodes @stream(initialCount: $n) { phoneNumber } } }
"""
# The same with no default in ``Fine``: unset, its initialCount takes the directive's own 0.
ONE_DEFAULT = TWO_DEFAULTS.replace("Fine($n: Int = 1)", "Fine($n: Int)")
# A negative literal in the operation not run, and in a fragment only it spreads.
LITERALS = """
query Fine { phoneNumbers(page: {first: 3}) { nodes @stream(initialCount: 1) { phoneNumber } } }
query Negative { phoneNumbers(page: {first: 3}) { nodes @stream(initialCount: -1) { phoneNumber } } }
"""
FRAGMENTS = """
query Fine { phoneNumbers(page: {first: 3}) { ...Streamed } }
query Negative { phoneNumbers(page: {first: 3}) { ...Streamed ...Negative } }
fragment Streamed on PhoneNumberConnection { nodes @stream(initialCount: 1) { phoneNumber } }
fragment Negative on PhoneNumberConnection {
  edges @stream(initialCount: -2) { cursor } ...Streamed }
"""


def refused(document: str, operation: str | None, variables: dict[str, Any] | None = None) -> bool:
    refusal = negative_initial_count(parse(document), operation, variables)
    if refusal is None:
        return False
    assert refusal.extensions == {"code": ErrorCode.BAD_USER_INPUT.value}
    assert "initialCount" in refusal.message
    return True


@pytest.mark.parametrize("document", [TWO_DEFAULTS, ONE_DEFAULT, LITERALS, FRAGMENTS])
def test_only_the_chosen_operation_counts(document: str) -> None:
    assert not refused(document, "Fine")
    assert refused(document, "Negative")


def test_a_sent_variable_overrides_the_chosen_operations_default() -> None:
    assert refused(TWO_DEFAULTS, "Fine", {"n": -3})
    assert not refused(TWO_DEFAULTS, "Negative", {"n": 2})
    assert not refused(TWO_DEFAULTS, "Negative", {"n": None})  # explicit null: coercion's


def test_no_chosen_operation_is_left_to_execution() -> None:
    # Without a name among two operations, or with an unknown one, nothing runs: the request
    # fails on its own (graphql-core's "Must provide operation name...").
    assert not refused(TWO_DEFAULTS, None)
    assert not refused(TWO_DEFAULTS, "Missing")
    single = "{ phoneNumbers { nodes @stream(initialCount: -1) { phoneNumber } } }"
    assert refused(single, None)


async def post(client: httpx.AsyncClient, operation: str) -> httpx.Response:
    return await client.post(
        "/graphql",
        json={"query": TWO_DEFAULTS, "operationName": operation},
        headers={"Accept": "application/graphql-response+json"},
    )


async def test_the_gateway_runs_the_fine_operation_and_refuses_the_negative_one(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    fine = await post(gateway, "Fine")
    assert fine.status_code == 200, fine.text
    body = fine.json()
    assert "errors" not in body, body
    assert len(body["data"]["phoneNumbers"]["nodes"]) == 3
    assert recorder.calls == 1

    negative = await post(gateway, "Negative")
    assert negative.status_code == 400, negative.text
    (error,) = negative.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert recorder.calls == 1  # refused before any upstream call

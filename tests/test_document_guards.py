"""The ``@stream``/``@defer`` argument guard (``document_limits.stream_argument_refusal``)
reads only the operation that will run: its own directives (and the fragments it spreads) and
its own variables' defaults, not another operation's of the same document."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from graphql import OperationDefinitionNode, parse

from gateway.errors import ErrorCode
from gateway.execution.cost import operation_variables
from gateway.execution.document_limits import stream_argument_refusal
from gateway.execution.fragment_walk import fragment_definitions
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
    parsed = parse(document)
    (chosen,) = [
        d
        for d in parsed.definitions
        if isinstance(d, OperationDefinitionNode)
        and (operation is None or (d.name is not None and d.name.value == operation))
    ]
    refusal = stream_argument_refusal(
        chosen, fragment_definitions(parsed), operation_variables(chosen, variables)
    )
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
    assert refused(TWO_DEFAULTS, "Negative", {"n": None})  # an explicit null: refused too


def test_a_null_initial_count_or_condition_is_refused_before_execution() -> None:
    single = "query ($n: Int) { phoneNumbers { nodes @stream(initialCount: $n) { phoneNumber } } }"
    assert refused(single, None, {"n": None})
    assert not refused(single, None, {})  # not sent: the directive's own default
    deferred = "query ($d: Boolean) { numberCounts { ... @defer(if: $d) { total } } }"
    parsed = parse(deferred)
    (operation,) = parsed.definitions
    assert isinstance(operation, OperationDefinitionNode)
    refusal = stream_argument_refusal(
        operation, fragment_definitions(parsed), operation_variables(operation, {"d": None})
    )
    assert refusal is not None
    assert refusal.extensions == {"code": ErrorCode.BAD_USER_INPUT.value}
    assert "@defer(if:)" in refusal.message


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

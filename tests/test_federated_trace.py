"""Federated tracing: ``apollo-federation-include-trace: ftv1`` gets ``extensions.ftv1``.

The trace is decoded with Apollo's own definitions (``@apollo/usage-reporting-protobuf``'s
``Trace.decode``, in Node, through ``tests/js/decode-ftv1.mjs``): the queried fields are nodes
with their response names, types and parent types, list items are index nodes, the timings are
positive and nested, and a failing field carries its error as the response has it. Without the
header there is no ``ftv1`` and no resolver middleware (the projection fast path stays on).
The encoder is also checked in pure Python (a small wire-format reader), so CI without Node
still covers it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from graphql import GraphQLError, Source

from gateway.data.page_cache import PageCache
from gateway.data.source import NumbersSource
from gateway.execution.federated_trace import (
    ProtoWriter,
    TraceNode,
    encode_trace,
    wants_federated_trace,
)
from gateway.execution.projecting_executor import projecting_execution_context
from gateway.execution.run import RunOptions
from gateway.schema.context import RequestContext
from gateway.upstream.client import UpstreamClient
from tests.conftest import InProcess, RecordingTransport, graphql
from tests.node_packages import run_node_json

TRACE = {"apollo-federation-include-trace": "ftv1"}
QUERY = (
    "{ phoneNumbers(page: {first: 2}) { totalCount nodes { phoneNumber location { id } } } "
    "counts: numberCounts { total } }"
)


# --------------------------------------------------------------------------------------------
# A protobuf wire-format reader, just enough to read back what the encoder wrote
# --------------------------------------------------------------------------------------------


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def read_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, int for a varint / bytes for a length-delimited field), in order."""
    fields: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = read_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, at = read_varint(data, at)
            fields.append((number, value))
        elif wire_type == 2:
            length, at = read_varint(data, at)
            fields.append((number, data[at : at + length]))
            at += length
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
    return fields


def one(fields: list[tuple[int, int | bytes]], number: int) -> Any:
    found = [value for key, value in fields if key == number]
    assert len(found) == 1, (number, fields)
    return found[0]


def many(fields: list[tuple[int, int | bytes]], number: int) -> list[Any]:
    return [value for key, value in fields if key == number]


def test_varints_round_trip() -> None:
    for value in (1, 127, 128, 300, 2**32, 2**63 - 1):
        data = ProtoWriter().uint(1, value).to_bytes()
        assert read_fields(data) == [(1, value)]
    assert ProtoWriter().uint(1, 0).string(2, "").string(3, None).to_bytes() == b""  # proto3
    # A negative int64 is ten bytes of two's complement.
    negative = ProtoWriter().uint(1, -1).to_bytes()
    assert len(negative) == 11
    assert read_fields(negative) == [(1, 2**64 - 1)]
    assert read_fields(ProtoWriter().string(5, "é").to_bytes()) == [(5, "é".encode())]


def test_a_trace_round_trips_through_the_wire_format() -> None:
    root = TraceNode()
    field = root.child("numbers")
    field.type, field.parent_type, field.start_ns, field.end_ns = "[Int!]", "Query", 5, 900
    field.original_field_name = "phoneNumbers"
    item = field.child(0)
    item.child("total").type = "Int"
    error = GraphQLError("No.", extensions={"code": "FORBIDDEN"})
    error.locations = [Source("{ a }").get_location(2)]
    field.errors.append(error)

    start = 1_700_000_000_123_456_789
    trace = read_fields(encode_trace(start, 2_000, root))
    assert read_fields(one(trace, 4)) == [(1, 1_700_000_000), (2, 123_456_789)]  # start_time
    assert read_fields(one(trace, 3)) == [(1, 1_700_000_000), (2, 123_458_789)]  # end_time
    assert one(trace, 11) == 2_000  # duration_ns

    top = read_fields(one(trace, 14))  # root: no id, one child
    [numbers_bytes] = many(top, 12)
    numbers = read_fields(numbers_bytes)
    assert one(numbers, 1) == b"numbers"
    assert one(numbers, 3) == b"[Int!]"
    assert one(numbers, 13) == b"Query"
    assert one(numbers, 14) == b"phoneNumbers"
    assert (one(numbers, 8), one(numbers, 9)) == (5, 900)
    written_error = read_fields(one(numbers, 11))
    assert one(written_error, 1) == b"No."
    assert read_fields(one(written_error, 2)) == [(1, 1), (2, 3)]
    assert json.loads(one(written_error, 4)) == {
        "message": "No.",
        "locations": [{"line": 1, "column": 3}],
        "extensions": {"code": "FORBIDDEN"},
    }
    item_fields = read_fields(one(numbers, 12))
    assert one(item_fields, 2) == 0  # index 0 is written: it is the oneof's choice
    assert read_fields(one(item_fields, 12)) == [(1, b"total"), (3, b"Int")]


def test_the_header_value_is_ftv1_only() -> None:
    assert wants_federated_trace("ftv1")
    assert wants_federated_trace(" FTV1 ")
    assert not wants_federated_trace(None)
    assert not wants_federated_trace("")
    assert not wants_federated_trace("ftv2")


async def test_only_an_operation_that_asked_runs_with_resolver_middleware(
    recorder: RecordingTransport,
) -> None:
    """Without the ask no middleware runs, so the projection fast path keeps the page; with
    it, the trace sees every field (the list is completed field by field)."""
    runner = InProcess(executor_class=projecting_execution_context())
    stats = runner.engine.executor_class.projectors.stats  # type: ignore[attr-defined]
    query = "{ phoneNumbers(page: {first: 3}) { nodes { phoneNumber } } }"
    async with httpx.AsyncClient(transport=recorder) as http:
        source = NumbersSource(
            UpstreamClient(http, base_url="http://webex.test/v1"),
            PageCache(ttl=0),
            max_page_size=2000,
            default_authorization="Bearer demo-admin",
        )
        for asked in (False, True):
            projected = stats.projected
            prepared = runner.operations.prepare(query, None)
            admission = runner.engine.admit(prepared, None, RunOptions(federated_trace=asked))
            result = await runner.engine.execute(admission, RequestContext(source.for_caller(None)))
            assert not result.errors, result.errors
            assert ("ftv1" in (result.extensions or {})) is asked
            assert stats.projected - projected == (0 if asked else 1)


# --------------------------------------------------------------------------------------------
# Through the HTTP view, decoded by Apollo's protobuf definitions in Node
# --------------------------------------------------------------------------------------------


def decode(ftv1: str) -> dict[str, Any]:
    base64.b64decode(ftv1, validate=True)
    decoded: dict[str, Any] = run_node_json("decode-ftv1.mjs", ftv1)
    return decoded


def children(node: dict[str, Any]) -> dict[str | int, dict[str, Any]]:
    return {
        (child["responseName"] if "responseName" in child else child["index"]): child
        for child in node.get("child", [])
    }


def ns(timestamp: dict[str, int]) -> int:
    return timestamp.get("seconds", 0) * 1_000_000_000 + timestamp.get("nanos", 0)


def assert_nested(node: dict[str, Any], parent_start: int, duration: int) -> int:
    """Every field node starts no earlier than its parent field and ends within the trace;
    returns how many field nodes were checked."""
    checked = 0
    for child in node.get("child", []):
        start = parent_start
        if "responseName" in child:
            start, end = child.get("startTime", 0), child.get("endTime", 0)
            assert parent_start <= start <= end <= duration, child
            checked += 1
        checked += assert_nested(child, start, duration)
    return checked


async def test_with_the_header_the_trace_has_every_field_in_order(
    gateway: httpx.AsyncClient,
) -> None:
    body = await graphql(gateway, QUERY, headers=TRACE)
    assert "errors" not in body, body
    trace = decode(body["extensions"]["ftv1"])

    duration = trace["durationNs"]
    assert duration > 0
    assert ns(trace["endTime"]) - ns(trace["startTime"]) == duration

    top = children(trace["root"])
    assert set(top) == {"phoneNumbers", "counts"}
    numbers, counts = top["phoneNumbers"], top["counts"]
    assert (numbers["type"], numbers["parentType"]) == ("PhoneNumberConnection", "Query")
    assert (counts["type"], counts["parentType"], counts["originalFieldName"]) == (
        "NumberCounts",
        "Query",
        "numberCounts",
    )
    assert "originalFieldName" not in numbers
    assert children(counts)["total"]["type"] == "Int"
    connection = children(numbers)
    assert (connection["totalCount"]["type"], connection["totalCount"]["parentType"]) == (
        "Int!",
        "PhoneNumberConnection",
    )
    assert connection["nodes"]["type"] == "[PhoneNumber!]!"
    items = children(connection["nodes"])
    assert sorted(items) == [0, 1]  # list items are index nodes
    expected = body["data"]["phoneNumbers"]["nodes"]
    for index, item in items.items():
        fields = children(item)
        assert set(fields) == {"phoneNumber", "location"}
        assert (fields["phoneNumber"]["type"], fields["phoneNumber"]["parentType"]) == (
            "String",
            "PhoneNumber",
        )
        assert children(fields["location"])["id"]["type"] == "ID!"
        assert expected[int(index)]["location"]["id"]  # the data is really there
    assert numbers["endTime"] > numbers["startTime"]  # the upstream call is inside it
    assert assert_nested(trace["root"], 0, duration) == 5 + 2 * 3  # every field


async def test_a_failing_field_carries_its_error_as_the_response_has_it(
    gateway: httpx.AsyncClient,
) -> None:
    body = await graphql(
        gateway,
        QUERY,
        headers={**TRACE, "Authorization": "Bearer demo-no-scope"},
    )
    assert body["data"] == {"phoneNumbers": None, "counts": None}
    trace = decode(body["extensions"]["ftv1"])
    top = children(trace["root"])
    for name in ("phoneNumbers", "counts"):
        [error] = top[name]["error"]
        [in_response] = [e for e in body["errors"] if e["path"] == [name]]
        assert error["message"] == in_response["message"]
        assert json.loads(error["json"]) == in_response
        assert json.loads(error["json"])["extensions"]["code"] == "FORBIDDEN"
        assert error["location"] == [
            {"line": loc["line"], "column": loc["column"]} for loc in in_response["locations"]
        ]
        assert "child" not in top[name]
    assert "demo-no-scope" not in json.dumps(trace)


async def test_without_the_header_there_is_no_trace(gateway: httpx.AsyncClient) -> None:
    traced = await graphql(gateway, QUERY, headers=TRACE)
    again = await graphql(gateway, QUERY, headers=TRACE)
    assert traced["extensions"]["ftv1"] != again["extensions"]["ftv1"]  # never a stored answer
    del gateway.headers["Gateway-Cache-Report"]  # a plain answer, as routers without GraphOS
    for _ in range(2):  # the second one may come from the response reuse store
        plain = await graphql(gateway, QUERY)
        assert "ftv1" not in plain.get("extensions", {}), plain
        assert plain["data"] == traced["data"]
    for value in ("", "ftv2", "true"):
        other = await graphql(gateway, QUERY, headers={"apollo-federation-include-trace": value})
        assert "ftv1" not in other.get("extensions", {}), value
    # And a traced request after plain ones is not served the stored plain answer.
    assert "ftv1" in (await graphql(gateway, QUERY, headers=TRACE))["extensions"]

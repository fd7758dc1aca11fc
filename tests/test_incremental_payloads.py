"""Incremental payloads in each format, from real graphql-core frames, and their merge.

A small graphql-core schema with async resolvers (some that suspend, some that finish at once,
so that a payload both announces an id and delivers it, as graphql-core does for a fragment
deferred inside a deferred fragment or inside streamed items once its data is ready) is run
with ``experimental_execute_incrementally``; ``PayloadWriter`` writes every frame in each
``IncrementalFormat`` and ``merged_answer`` must give back exactly the plain execution's answer.
The 2022 formats are also read as Apollo Client 3 reads them (only ``data`` entries, merged at
their paths), and ``incrementalSpec=v0.2`` must be graphql-core's own payloads. The ``Accept``
parameters that choose a format and a subscription protocol are in ``negotiation``.
"""

from __future__ import annotations

import asyncio
import copy
import re
from functools import partial
from typing import Any

import pytest
from graphql import (
    GraphQLError,
    build_schema,
    experimental_execute_incrementally,
    graphql,
    parse,
)
from graphql.execution import (
    ExperimentalIncrementalExecutionResults,
    InitialIncrementalExecutionResult,
    SubsequentIncrementalExecutionResult,
)
from graphql.execution.types import (
    CompletedResult,
    IncrementalDeferResult,
    IncrementalStreamResult,
    PendingResult,
)

from gateway.errors import ErrorCode, GatewayError
from gateway.execution.contract_errors import contract_payload
from gateway.transports.incremental_payloads import Payload, PayloadWriter, merged_answer
from gateway.transports.negotiation import (
    EVENT_STREAM,
    MULTIPART_MIXED,
    IncrementalFormat,
    SubscriptionProtocol,
    choose_stream_type,
    incremental_format,
    subscription_protocol,
)

SDL = """
type Query { number: Number  numbers: [Number!]!  slow: [Number!]! }
type Number { phone: String  owner: Owner  tags: [String!]!  broken: String!  bad: [Int!]! }
type Owner { firstName: String  lastName: String }
"""

# Later payloads made contract errors, as the engine makes them (no metrics here).
LATER_PAYLOADS = partial(contract_payload, production=False, metrics=None)


async def _numbers(_: Any, __: Any) -> list[dict[str, Any]]:
    return [{"n": n} for n in range(3)]


async def _slow() -> Any:
    for n in range(3):
        await asyncio.sleep(0)
        yield {"n": n}


async def _suspending(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


def _bad(number: dict[str, Any], _: Any) -> list[int]:
    raise GatewayError("this list is not available", code=ErrorCode.NOT_FOUND)


class UpstreamUnavailable(GatewayError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE


def _schema() -> Any:
    schema = build_schema(SDL)
    query, number, owner = (schema.type_map[name] for name in ("Query", "Number", "Owner"))
    query.fields["number"].resolve = lambda _, __: _suspending({"n": 7})  # type: ignore[attr-defined]
    query.fields["numbers"].resolve = _numbers  # type: ignore[attr-defined]
    query.fields["slow"].resolve = lambda _, __: _slow()  # type: ignore[attr-defined]
    number.fields["phone"].resolve = lambda n, _: _suspending(f"+1-{n['n']}")  # type: ignore[attr-defined]
    number.fields["owner"].resolve = lambda n, _: {"n": n["n"]}  # type: ignore[attr-defined]
    number.fields["tags"].resolve = lambda n, _: [f"t{n['n']}", "x"]  # type: ignore[attr-defined]
    number.fields["broken"].resolve = _broken  # type: ignore[attr-defined]
    number.fields["bad"].resolve = _bad  # type: ignore[attr-defined]
    owner.fields["firstName"].resolve = lambda o, _: _suspending(f"Ada{o['n']}")  # type: ignore[attr-defined]
    owner.fields["lastName"].resolve = _last_name  # type: ignore[attr-defined]
    return schema


def _last_name(owner: dict[str, Any], _: Any) -> str:
    # A plain field, as the gateway's owner fields are: its fragment is ready with its parent.
    return f"Lovelace{owner['n']}"


async def _broken(number: dict[str, Any], _: Any) -> str:
    if number["n"] == 0:
        return "fine"
    raise UpstreamUnavailable("the upstream failed")


SCHEMA = _schema()

# Each document with @defer/@stream; its plain twin (directives removed) is the truth.
NESTED = {
    "defer in defer": "{ number { phone ... @defer { owner { firstName ... @defer { lastName } } } } }",
    "defer in a plain field": "{ number { phone owner { firstName ... @defer { lastName } } } }",
    "labelled defer in defer": '{ number { ... @defer(label: "a") { phone'
    ' ... @defer(label: "b") { owner { lastName } } } } }',
    "defer in streamed items": "{ numbers @stream(initialCount: 1)"
    " { phone owner { firstName ... @defer { lastName } } } }",
    "defer in items streamed from a generator": "{ slow @stream(initialCount: 1)"
    " { phone owner { ... @defer { lastName } } } }",
    "stream in defer": "{ ... @defer { numbers @stream(initialCount: 1)"
    " { phone ... @defer { owner { lastName } } } } }",
    "stream in streamed items": "{ numbers @stream(initialCount: 1)"
    " { phone tags @stream(initialCount: 1) } }",
    "stream in defer in streamed items": "{ numbers @stream { phone"
    " ... @defer { tags @stream(initialCount: 0) owner { lastName } } } }",
}


def plain(document: str) -> str:
    return re.sub(r"@(defer|stream)(\([^)]*\))?", "", document)


def format_error(error: GraphQLError) -> dict[str, Any]:
    return dict(error.formatted)


async def execution(document: str) -> ExperimentalIncrementalExecutionResults:
    outcome: Any = experimental_execute_incrementally(SCHEMA, parse(document))
    if not isinstance(outcome, ExperimentalIncrementalExecutionResults):
        outcome = await outcome
    assert isinstance(outcome, ExperimentalIncrementalExecutionResults), outcome
    return outcome


async def payloads_of(document: str, spec: IncrementalFormat) -> list[Payload]:
    """Every payload the writer makes of the operation's frames, in ``spec``."""
    outcome = await execution(document)
    writer = PayloadWriter(format_error, LATER_PAYLOADS, spec)
    payloads = [copy.deepcopy(writer.initial(outcome.initial_result))]
    async for frame in outcome.subsequent_results:
        payloads.append(copy.deepcopy(writer.subsequent(frame)))
    return payloads


async def truth(document: str) -> dict[str, Any]:
    result = await graphql(SCHEMA, plain(document))
    assert not result.errors, result.errors
    return result.data  # type: ignore[return-value]


def apollo_client_3(payloads: list[Payload]) -> Any:
    """What Apollo Client 3 (3.14's ``mergeIncrementalData``) makes of 2022 payloads: each
    entry's ``data`` nested under its path (an array for a numeric key) and deep-merged, so an
    entry without ``data`` (streamed ``items``) puts ``undefined`` (here None) at its path."""
    merged: Any = copy.deepcopy(payloads[0]["data"])
    for payload in payloads[1:]:
        for entry in payload.get("incremental", ()):
            value: Any = copy.deepcopy(entry.get("data"))
            for key in reversed(entry["path"]):
                value = {key: value}
            merged = _ac3_merge(merged, value)
    return merged


def _ac3_merge(target: Any, source: Any) -> Any:
    if not isinstance(source, dict) or not isinstance(target, (dict, list)):
        return source
    for key, value in source.items():
        if isinstance(target, list) and isinstance(key, int):
            target.extend([None] * (key + 1 - len(target)))
            target[key] = _ac3_merge(target[key], value)
        elif isinstance(target, dict):
            target[key] = _ac3_merge(target.get(key), value)
    return target


@pytest.mark.parametrize("spec", list(IncrementalFormat), ids=lambda spec: spec.name)
@pytest.mark.parametrize("document", NESTED.values(), ids=NESTED.keys())
async def test_every_format_delivers_everything_nested_defers_and_streams_hold(
    document: str, spec: IncrementalFormat
) -> None:
    payloads = await payloads_of(document, spec)
    assert payloads[-1]["hasNext"] is False
    assert all(payload["hasNext"] for payload in payloads[:-1])
    assert merged_answer(copy.deepcopy(payloads)) == {"data": await truth(document)}


async def test_a_frame_announcing_and_delivering_an_id_keeps_the_entry() -> None:
    """The finding of issue 27: graphql-core announces the nested fragment's id and delivers
    it in the same frame; that entry used to be dropped (and the payload said hasNext false)."""
    document = NESTED["defer in defer"]
    outcome = await execution(document)
    frames = [frame.formatted async for frame in outcome.subsequent_results]
    assert any(
        entry["id"] in {pending["id"] for pending in frame.get("pending", ())}
        for frame in frames
        for entry in frame.get("incremental", ())
    ), f"the schema no longer makes the frame this test is about: {frames}"
    payloads = await payloads_of(document, IncrementalFormat.PATHS)
    assert payloads[1:] == [
        {
            "hasNext": False,
            "incremental": [
                {"data": {"owner": {"firstName": "Ada7"}}, "path": ["number"]},
                {"data": {"lastName": "Lovelace7"}, "path": ["number", "owner"]},
            ],
        }
    ]


@pytest.mark.parametrize("document", NESTED.values(), ids=NESTED.keys())
async def test_incremental_spec_v0_2_is_graphql_cores_own_format(document: str) -> None:
    outcome = await execution(document)
    own = [outcome.initial_result.formatted]
    own += [frame.formatted async for frame in outcome.subsequent_results]
    assert await payloads_of(document, IncrementalFormat.V0_2) == own


async def test_streamed_items_carry_the_index_of_their_first_item() -> None:
    paths = await payloads_of(NESTED["stream in streamed items"], IncrementalFormat.PATHS)
    entries = [entry for payload in paths[1:] for entry in payload.get("incremental", ())]
    assert sorted((e["path"], e["items"]) for e in entries) == [
        (["numbers", 0, "tags", 1], ["x"]),
        (["numbers", 1], [{"phone": "+1-1", "tags": ["t1"]}]),
        (["numbers", 1, "tags", 1], ["x"]),
        (["numbers", 2], [{"phone": "+1-2", "tags": ["t2"]}]),
        (["numbers", 2, "tags", 1], ["x"]),
    ]


@pytest.mark.parametrize("document", NESTED.values(), ids=NESTED.keys())
async def test_defer_spec_streams_items_as_data_entries_apollo_client_3_places(
    document: str,
) -> None:
    """Named ``deferSpec=20220824`` (Apollo's format for @defer): each streamed item is a
    ``data`` entry at its index, so a client merging only ``data`` holds every item; the bare
    format's ``items`` entries leave it holes (Apollo Client 3's '__typename' of undefined)."""
    named = await payloads_of(document, IncrementalFormat.DEFER_SPEC)
    assert not [e for p in named for e in p.get("incremental", ()) if "items" in e]
    assert apollo_client_3(named) == await truth(document)
    if "@stream" in document:
        bare = await payloads_of(document, IncrementalFormat.PATHS)
        assert apollo_client_3(bare) != await truth(document)


FAILING = {
    "a stream whose second item fails": "{ numbers @stream(initialCount: 1) { phone broken } }",
    "a fragment that fails": "{ number { phone ... @defer { broken } } }",
    "a list that fails inside a fragment": "{ number { ... @defer { bad } } }",
}


@pytest.mark.parametrize("document", FAILING.values(), ids=FAILING.keys())
async def test_later_errors_have_contract_codes_and_merge_alike_in_every_format(
    document: str,
) -> None:
    """A failure after the first payload cannot null what was sent already (the merged
    answer keeps it, as graphql-core's own format does); every format merges to the same
    answer, each error with its contract code and path."""
    merged = [merged_answer(await payloads_of(document, spec)) for spec in IncrementalFormat]
    assert merged[0] == merged[1] == merged[2]
    assert merged[0]["errors"]
    for error in merged[0]["errors"]:
        assert error["extensions"]["code"] in ("UPSTREAM_UNAVAILABLE", "NOT_FOUND"), error
        assert "path" in error


async def test_a_failed_stream_in_each_format() -> None:
    """A stream that fails as a whole: v0.2's ``completed`` errors; the bare 2022 format's
    ``items: null`` at the next index; named ``deferSpec`` an empty fragment on the list's
    parent (a null item would break a list of non-null items)."""
    document = "{ numbers @stream(initialCount: 1) { phone broken } }"
    ends = {spec: (await payloads_of(document, spec))[-1] for spec in IncrementalFormat}
    v0_2 = ends[IncrementalFormat.V0_2]["completed"]
    assert [entry["id"] for entry in v0_2] == ["0"]
    assert v0_2[0]["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    (failed,) = ends[IncrementalFormat.PATHS]["incremental"]
    assert (failed["items"], failed["path"]) == (None, ["numbers", 1])
    (failed,) = ends[IncrementalFormat.DEFER_SPEC]["incremental"]
    assert (failed["data"], failed["path"]) == ({}, [])
    assert failed["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"


async def test_the_writer_counts_streamed_items_in_every_format() -> None:
    for spec in IncrementalFormat:
        outcome = await execution(NESTED["stream in defer"])
        writer = PayloadWriter(format_error, LATER_PAYLOADS, spec)
        writer.initial(outcome.initial_result)
        async for frame in outcome.subsequent_results:
            writer.subsequent(frame)
        assert writer.items == 2, spec


# --- Accept -----------------------------------------------------------------------------------

ACCEPTS = [
    # (Accept, streamed type, incremental format)
    ("multipart/mixed", MULTIPART_MIXED, IncrementalFormat.PATHS),
    # Apollo Client 3's HttpLink, and Apollo Client 4's Defer20220824Handler:
    ("multipart/mixed;deferSpec=20220824,application/json", MULTIPART_MIXED, "DEFER_SPEC"),
    (
        "multipart/mixed;deferSpec=20220824,application/graphql-response+json,"
        "application/json;q=0.9",
        MULTIPART_MIXED,
        "DEFER_SPEC",
    ),
    # Apollo Client 4's GraphQL17Alpha9Handler, Apollo Server 5's spelling:
    (
        "multipart/mixed;incrementalSpec=v0.2,application/graphql-response+json,"
        "application/json;q=0.9",
        MULTIPART_MIXED,
        "V0_2",
    ),
    ("multipart/mixed; incrementalSpec=v0.2", MULTIPART_MIXED, "V0_2"),
    ('multipart/mixed; incrementalSpec="v0.2"', MULTIPART_MIXED, "V0_2"),
    # urql's:
    (
        "application/graphql-response+json, application/graphql+json, application/json, "
        "text/event-stream, multipart/mixed",
        MULTIPART_MIXED,
        "PATHS",
    ),
    ("text/event-stream", EVENT_STREAM, "PATHS"),
    ("text/event-stream; incrementalSpec=v0.2", EVENT_STREAM, "V0_2"),
    # Among several of one type and quality, the newest; quality first.
    ("multipart/mixed, multipart/mixed;incrementalSpec=v0.2", MULTIPART_MIXED, "V0_2"),
    (
        "multipart/mixed;deferSpec=20220824, multipart/mixed;incrementalSpec=v0.2",
        MULTIPART_MIXED,
        "V0_2",
    ),
    ("multipart/mixed;incrementalSpec=v0.2;q=0.5, multipart/mixed", MULTIPART_MIXED, "PATHS"),
    (
        "multipart/mixed;deferSpec=20220824, text/event-stream;incrementalSpec=v0.2",
        MULTIPART_MIXED,
        "DEFER_SPEC",
    ),
    # A version we do not speak is not acceptable.
    ("multipart/mixed;incrementalSpec=v0.3", None, "PATHS"),
    ("multipart/mixed;deferSpec=20230101, text/event-stream", EVENT_STREAM, "PATHS"),
    ("application/json", None, "PATHS"),
    (None, None, "PATHS"),
]


@pytest.mark.parametrize(("accept", "stream_type", "spec"), ACCEPTS)
def test_accept_chooses_the_streamed_type_and_its_incremental_format(
    accept: str | None, stream_type: str | None, spec: IncrementalFormat | str
) -> None:
    assert choose_stream_type(accept) == stream_type
    expected = spec if isinstance(spec, IncrementalFormat) else IncrementalFormat[spec]
    assert incremental_format(accept) is expected


SUBSCRIPTION_ACCEPTS = [
    # Apollo Client 4's HttpLink for a subscription, and Apollo Client 3's:
    (
        "multipart/mixed;boundary=graphql;subscriptionSpec=1.0,"
        "application/graphql-response+json,application/json;q=0.9",
        SubscriptionProtocol.MULTIPART,
    ),
    ("multipart/mixed;boundary=graphql;subscriptionSpec=1.0,application/json", "MULTIPART"),
    ('multipart/mixed; subscriptionSpec="1.0", application/json', "MULTIPART"),
    ("text/event-stream", "SSE"),
    ("text/event-stream, multipart/mixed", "SSE"),  # urql's
    ("multipart/mixed;subscriptionSpec=1.0, text/event-stream", "SSE"),
    ("multipart/mixed;subscriptionSpec=1.0, text/event-stream;q=0.5", "MULTIPART"),
    ("multipart/mixed", None),
    ("multipart/mixed;subscriptionSpec=2.0", None),
    ("multipart/mixed;subscriptionSpec=1.0;q=0, application/json", None),
    ("application/json", None),
]


@pytest.mark.parametrize(("accept", "protocol"), SUBSCRIPTION_ACCEPTS)
def test_accept_chooses_the_subscription_protocol(
    accept: str, protocol: SubscriptionProtocol | str | None
) -> None:
    expected = SubscriptionProtocol[protocol] if isinstance(protocol, str) else protocol
    assert subscription_protocol(accept) is expected


# --- orders graphql-core does not make, but the format allows --------------------------------


def hand_made_payloads(frames: list[Any]) -> list[Payload]:
    writer = PayloadWriter(format_error, lambda frame: frame, IncrementalFormat.PATHS)
    return [writer.initial(frames[0]), *(writer.subsequent(frame) for frame in frames[1:])]


def test_an_entry_delivering_a_streams_list_may_come_after_the_streams_items() -> None:
    payloads = hand_made_payloads(
        [
            InitialIncrementalExecutionResult(
                data={"a": {}}, pending=[PendingResult("0", ["a"])], has_next=True
            ),
            SubsequentIncrementalExecutionResult(
                pending=[PendingResult("1", ["a", "list"])],
                incremental=[
                    IncrementalStreamResult([3, 4], "1"),
                    IncrementalDeferResult({"list": [1, 2]}, "0"),
                ],
                completed=[CompletedResult("0"), CompletedResult("1")],
            ),
        ]
    )
    assert payloads[1]["incremental"] == [
        {"items": [3, 4], "path": ["a", "list", 2]},
        {"data": {"list": [1, 2]}, "path": ["a"]},
    ]


def test_items_of_a_stream_whose_list_came_with_nothing_count_from_zero() -> None:
    payloads = hand_made_payloads(
        [
            InitialIncrementalExecutionResult(data={}, pending=[], has_next=True),
            SubsequentIncrementalExecutionResult(
                pending=[PendingResult("0", ["list"])],
                incremental=[IncrementalStreamResult([1], "0"), IncrementalStreamResult([2], "0")],
                completed=[CompletedResult("0")],
            ),
        ]
    )
    assert [e["path"] for e in payloads[1]["incremental"]] == [["list", 0], ["list", 1]]

"""``/graphql``'s incremental formats and Apollo's multipart subscriptions, through the app.

- Nested ``@defer`` and ``@defer`` inside ``@stream`` items lose nothing on any transport
  (issue 27): multipart in each format, SSE, and the merged JSON answer all add up to the
  plain answer, and ``hasNext: false`` comes only with the last of it.
- ``Accept`` chooses the format: a bare ``multipart/mixed`` the 2022 format with ``items``,
  ``deferSpec=20220824`` named the 2022 format with each streamed item a ``data`` entry,
  ``incrementalSpec=v0.2`` graphql-core's own ``pending``/``incremental``/``completed``; the
  ``Content-Type`` says which; errors after the first payload carry contract codes in each.
- ``multipart/mixed;subscriptionSpec=1.0`` subscribes as Apollo Router serves it: each event
  ``{"payload": ...}``, heartbeats ``{}``, the subscription bounds of SSE, refusals as JSON
  with their status, and at shutdown ``{"payload": null, "errors": [...]}`` (which Apollo
  Client's RetryLink resubscribes after) then the closing boundary.

Raw ASGI exchanges (``tests.test_transports``) read each payload as it is sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from gateway.transports import stream_styles
from gateway.transports.incremental_payloads import merged_answer
from gateway.transports.stream_limits import OpenStreams
from tests.conftest import RecordingTransport
from tests.test_transports import app_with, exchange, exchanged, multipart_parts, sse_events

NESTED = """{ phoneNumbers(page: {first: 4}, filter: {ownerType: PEOPLE}) { nodes { phoneNumber
  owner { firstName ... @defer { lastName } }
  ... @defer { location { id ... @defer { name } } } } } }"""
IN_STREAMED_ITEMS = """{ phoneNumbers(page: {first: 6}, filter: {ownerType: PEOPLE}) {
  nodes @stream(initialCount: 1) { phoneNumber owner { firstName ... @defer { lastName } } }
  ... @defer { totalCount } } }"""
WATCH = "subscription { phoneNumberChanges { kind observedAt number { phoneNumber } } }"
APOLLO_SUBSCRIPTION_ACCEPT = (
    "multipart/mixed;boundary=graphql;subscriptionSpec=1.0,"
    "application/graphql-response+json,application/json;q=0.9"
)

MULTIPART_ACCEPTS = {
    "multipart/mixed": 'multipart/mixed; boundary="-"',
    "multipart/mixed;deferSpec=20220824,application/json": (
        'multipart/mixed; boundary="-"; deferSpec=20220824'
    ),
    "multipart/mixed;incrementalSpec=v0.2,application/json;q=0.9": (
        'multipart/mixed; boundary="-"; incrementalSpec=v0.2'
    ),
}
SSE_ACCEPTS = ["text/event-stream", "text/event-stream;incrementalSpec=v0.2"]


def payloads_of(raw: Any) -> list[dict[str, Any]]:
    """The payloads of a multipart or SSE response."""
    if raw.headers["content-type"].startswith("text/event-stream"):
        events = sse_events(raw.text)
        assert events[-1][0] == "complete"
        return [orjson.loads(data) for kind, data in events if kind == "next"]
    return [body for _, body in multipart_parts(raw.text)]


def plain(document: str) -> str:
    return document.replace("... @defer", "...").replace(" @stream(initialCount: 1)", "")


@pytest.mark.parametrize("document", [NESTED, IN_STREAMED_ITEMS], ids=["nested", "in-items"])
@pytest.mark.parametrize("accept", [*MULTIPART_ACCEPTS, *SSE_ACCEPTS, "application/json"])
async def test_nested_defers_lose_nothing_on_any_transport(
    recorder: RecordingTransport, document: str, accept: str
) -> None:
    async with app_with(recorder) as (_, manager):
        expected = orjson.loads(
            (await exchanged(manager, plain(document), "application/json")).text
        )
        raw = await exchanged(manager, document, accept)
    assert raw.status == 200, raw.text
    assert "errors" not in expected
    if accept == "application/json":
        answered = orjson.loads(raw.text)
        answered.pop("extensions", None)  # priced as held whole, unlike the plain twin
        expected.pop("extensions", None)
        assert answered == expected
        return
    payloads = payloads_of(raw)
    assert len(payloads) > 1
    assert [p["hasNext"] for p in payloads] == [True] * (len(payloads) - 1) + [False]
    merged = merged_answer(payloads)
    merged.pop("extensions", None)
    expected.pop("extensions", None)
    assert merged == expected
    last_names = [n["owner"]["lastName"] for n in expected["data"]["phoneNumbers"]["nodes"]]
    assert all(last_names), "the deferred field has data to lose"


async def test_each_format_has_its_shape_and_content_type(recorder: RecordingTransport) -> None:
    async with app_with(recorder) as (_, manager):
        answers = {
            accept: await exchanged(manager, IN_STREAMED_ITEMS, accept)
            for accept in MULTIPART_ACCEPTS
        }
    for accept, content_type in MULTIPART_ACCEPTS.items():
        assert answers[accept].headers["content-type"] == content_type
    bare, named, v0_2 = (payloads_of(answers[accept]) for accept in MULTIPART_ACCEPTS)

    def entries(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for p in payloads[1:] for e in p.get("incremental", ())]

    assert all("path" in e for e in entries(bare) + entries(named))
    # The bare 2022 format streams ``items`` from an index; named deferSpec, ``data`` per item.
    items = [e for e in entries(bare) if "items" in e]
    assert [e["path"] for e in items][:1] == [["phoneNumbers", "nodes", 1]]
    assert sum(len(e["items"]) for e in items) == 5
    assert not [e for e in entries(named) if "items" in e]
    per_item = [e["path"] for e in entries(named) if len(e["path"]) == 3]
    assert per_item == [["phoneNumbers", "nodes", i] for i in range(1, 6)]
    # incrementalSpec=v0.2: pending ids with paths, entries naming them, completed.
    assert "pending" in v0_2[0]
    announced = {p["id"]: p["path"] for p in v0_2[0]["pending"]}
    assert ["phoneNumbers", "nodes"] in announced.values()
    assert all("id" in e and "path" not in e for e in entries(v0_2))
    completed = [c["id"] for p in v0_2[1:] for c in p.get("completed", ())]
    everything = set(announced) | {q["id"] for p in v0_2[1:] for q in p.get("pending", ())}
    assert sorted(completed) == sorted(everything)


class FailingFrom(httpx.AsyncBaseTransport):
    """The upstream, failing every request that starts at ``position`` or later (503)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, position: int) -> None:
        self.inner = inner
        self.position = position

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if int(request.url.params.get("start", "0")) >= self.position:
            body = {"message": "Something went wrong", "trackingId": "ROUTER_1234-5678"}
            return httpx.Response(503, content=orjson.dumps(body))
        return await self.inner.handle_async_request(request)


STREAM_WALK = (
    "{ phoneNumbers(page: {first: 60}) { nodes @stream(initialCount: 2) { phoneNumber } } }"
)


@pytest.mark.parametrize("accept", [*MULTIPART_ACCEPTS, *SSE_ACCEPTS])
async def test_an_upstream_failure_mid_stream_is_a_contract_error_in_every_format(
    recorder: RecordingTransport, accept: str
) -> None:
    async with app_with(FailingFrom(recorder, 20), max_page_size=10) as (_, manager):
        raw = await exchanged(manager, STREAM_WALK, accept)
    payloads = payloads_of(raw)
    assert payloads[-1]["hasNext"] is False
    merged = merged_answer(payloads)
    assert len(merged["data"]["phoneNumbers"]["nodes"]) == 20  # every item before the failure
    (error,) = merged["errors"]
    assert error["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert error["extensions"]["upstreamStatus"] == 503
    assert error["extensions"]["trackingId"] == "ROUTER_1234-5678"
    last = payloads[-1]
    if "incrementalSpec=v0.2" in accept:
        assert last["completed"][0]["errors"] == [error]
    else:
        assert last["incremental"][-1]["errors"] == [error]


# --- Apollo's multipart subscription protocol -------------------------------------------------


def subscription_parts(text: bytes) -> list[dict[str, Any]]:
    """The JSON parts of a body framed as Apollo Router frames multipart subscriptions."""
    assert text.startswith(b"\r\n--graphql"), text[:30]
    parts = []
    for raw in text[len(b"\r\n--graphql") :].split(b"\r\n--graphql"):
        if raw in (b"", b"--\r\n"):
            continue
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.strip().lower() == b"content-type: application/json", head
        parts.append(orjson.loads(body))
    return parts


async def test_a_multipart_subscription_wraps_each_event_in_a_payload(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder, changes_poll_interval=1) as (_, manager):
        raw = exchange(manager, WATCH, APOLLO_SUBSCRIPTION_ACCEPT)
        running = asyncio.ensure_future(raw.run())
        await raw.read_until(b"SYNCED")
        raw.disconnected.set()
        await asyncio.wait_for(running, 10)
    assert raw.status == 200
    assert raw.headers["content-type"] == 'multipart/mixed;boundary="graphql";subscriptionSpec=1.0'
    assert raw.headers["cache-control"] == "no-store"
    assert raw.headers["content-encoding"] == "identity"
    (event,) = subscription_parts(raw.text + b"--\r\n")
    assert set(event) == {"payload"}
    assert event["payload"]["data"]["phoneNumberChanges"]["kind"] == "SYNCED"
    assert "hasNext" not in event["payload"]


async def test_a_multipart_subscription_sends_heartbeats_while_nothing_changes(
    recorder: RecordingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_styles.MultipartSubscriptionFraming, "keep_alive_seconds", 0.01)
    async with app_with(recorder, changes_poll_interval=60) as (_, manager):
        raw = exchange(manager, WATCH, 'multipart/mixed; subscriptionSpec="1.0"')
        running = asyncio.ensure_future(raw.run())
        await raw.read_until(b"SYNCED")
        await raw.read_until(b"\r\n\r\n{}\r\n--graphql\r\ncontent-type")  # two heartbeats
        raw.disconnected.set()
        await asyncio.wait_for(running, 10)
    parts = subscription_parts(raw.text + b"--\r\n")
    assert parts[0]["payload"]["data"]["phoneNumberChanges"]["kind"] == "SYNCED"
    assert parts[1:3] == [{}, {}]


@pytest.mark.parametrize("feeds_first", [True, False], ids=["as-serve-does", "streams-alone"])
async def test_shutdown_ends_a_multipart_subscription_with_a_transport_error(
    recorder: RecordingTransport, feeds_first: bool
) -> None:
    """Apollo's transport-level error (``payload: null``): Apollo Client's RetryLink takes it
    as a failure to retry, so the client subscribes again (to another replica); then the
    closing boundary, so a client without RetryLink ends cleanly with that error. ``serve``
    closes the change feeds first (the subscription's events end), then the streams: a
    subscription ended so is not a normal end either."""
    async with app_with(recorder, changes_poll_interval=1) as (_, manager):
        raw = exchange(manager, WATCH, APOLLO_SUBSCRIPTION_ACCEPT)
        running = asyncio.ensure_future(raw.run())
        await raw.read_until(b"SYNCED")
        if feeds_first:
            await manager._state["changes"].close()
            await asyncio.wait_for(running, 10)  # ended before the streams are told
        streams: OpenStreams = manager._state["streams"]
        await streams.close()
        await asyncio.wait_for(running, 10)
    assert raw.text.endswith(b"\r\n--graphql--\r\n")
    final = subscription_parts(raw.text)[-1]
    assert final["payload"] is None
    (error,) = final["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert "shutting down" in error["message"]


async def test_multipart_subscriptions_have_the_subscription_bounds_not_the_stream_bounds(
    recorder: RecordingTransport,
) -> None:
    async with app_with(
        recorder, changes_poll_interval=1, max_subscriptions_per_caller=1, max_streams_per_caller=1
    ) as (_, manager):
        held = exchange(manager, WATCH, APOLLO_SUBSCRIPTION_ACCEPT)
        running = asyncio.ensure_future(held.run())
        await held.read_until(b"SYNCED")
        # It holds no stream slot: a streamed query of the same caller still runs.
        streamed = await exchanged(manager, IN_STREAMED_ITEMS, "multipart/mixed")
        over = await exchanged(manager, WATCH, APOLLO_SUBSCRIPTION_ACCEPT)
        unauthenticated = await exchanged(
            manager, WATCH, APOLLO_SUBSCRIPTION_ACCEPT, authorization="Basic x"
        )
        held.disconnected.set()
        await asyncio.wait_for(running, 10)
    assert streamed.status == 200
    assert over.status == 429
    assert over.headers["retry-after"] == "1"
    assert over.headers["content-type"].startswith("application/graphql-response+json")
    assert orjson.loads(over.text)["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert unauthenticated.status == 401
    body = orjson.loads(unauthenticated.text)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_subscription_naming_a_bare_multipart_is_told_which_protocols_serve_it(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        raw = await exchanged(manager, WATCH, "multipart/mixed")
        other_version = await exchanged(manager, WATCH, "multipart/mixed;subscriptionSpec=2.0")
    for refused in (raw, other_version):
        assert refused.status == 406
        message = orjson.loads(refused.text)["errors"][0]["message"]
        assert "subscriptionSpec" in message
        assert "text/event-stream" in message
    assert recorder.calls == 0

"""The streamed transports of ``/graphql``: multipart and SSE framing, the JSON fallback,
streams per caller, disconnects, shutdown, and graphql-transport-ws.

Streams are driven as raw ASGI (httpx's ASGI transport buffers a whole response), so a test
can read each payload as it is sent, disconnect mid-stream or shut the app down under it.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.websockets import WebSocketDisconnect
from strawberry.types import ExecutionResult
from structlog.testing import capture_logs

import gateway.transports.websocket as websocket_module
from gateway.server.app import create_app
from gateway.transports.incremental_payloads import PayloadWriter, merged_answer
from gateway.transports.payload_stream import PayloadStream
from gateway.transports.stream_limits import OpenStreams
from gateway.transports.stream_styles import MultipartFraming, StreamedResponse
from tests.conftest import RecordingTransport, eventually, live_settings

with warnings.catch_warnings():
    # Starlette asks for ``httpx2`` behind its test client; httpx works the same for it.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

WATCH = "subscription { phoneNumberChanges { kind observedAt number { phoneNumber } } }"
FIRST = "{ phoneNumbers(page: {first: 3}) { nodes { phoneNumber extension } } }"
DEFERRED = """{ phoneNumbers(page: {first: 5}) {
  nodes @stream(initialCount: 1) { phoneNumber extension }
  ... @defer { totalCount } } }"""


class Gate(httpx.AsyncBaseTransport):
    """Holds every upstream request until ``open`` is set; counts them."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.waiting = 0
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.waiting += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1
        return await self.inner.handle_async_request(request)


class LaterPagesHeld(httpx.AsyncBaseTransport):
    """Passes each walk's first upstream page, holds every later one until ``open``."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.waiting = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("start", "0") != "0":
            self.waiting += 1
            try:
                await self.open.wait()
            finally:
                self.waiting -= 1
        return await self.inner.handle_async_request(request)


class RawExchange:
    """One HTTP request run as raw ASGI: the body chunks as they are sent, and a way to
    disconnect."""

    def __init__(self, app: Any, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.app = app
        raw = orjson.dumps(body)
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/graphql",
            "raw_path": b"/graphql",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"gateway.test"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("gateway.test", 80),
            "state": {},
        }
        self._body = raw
        self._sent_body = False
        self.disconnected = asyncio.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.text = b""

    async def receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self.text += chunk
            await self.chunks.put(chunk)
            if not message.get("more_body", False):
                await self.chunks.put(None)

    async def run(self) -> None:
        await self.app(self.scope, self.receive, self.send)

    async def read_until(self, marker: bytes) -> None:
        while marker not in self.text:
            chunk = await self.chunks.get()
            if chunk is None:
                raise AssertionError(f"ended before {marker!r}: {self.text!r}")


@asynccontextmanager
async def app_with(
    transport: httpx.AsyncBaseTransport, **settings: Any
) -> AsyncIterator[tuple[Starlette, LifespanManager]]:
    app = create_app(live_settings(**settings), upstream_transport=transport)
    async with LifespanManager(app) as manager:
        yield app, manager


def exchange(manager: LifespanManager, query: str, accept: str, **extra: str) -> RawExchange:
    return RawExchange(
        manager.app,
        {"query": query},
        {"accept": accept, "authorization": "Bearer demo-admin", **extra},
    )


async def exchanged(manager: LifespanManager, query: str, accept: str, **extra: str) -> RawExchange:
    """An exchange already run to its end."""
    raw = exchange(manager, query, accept, **extra)
    await raw.run()
    return raw


def sse_events(text: bytes) -> list[tuple[str, str]]:
    events = []
    for block in text.decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
            for line in block.splitlines()
            if not line.startswith(":")
        )
        if "event" in fields:
            events.append((fields["event"], fields.get("data", "")))
    return events


def multipart_parts(text: bytes) -> list[tuple[str, dict[str, Any]]]:
    assert text.startswith(b"---"), text[:20]
    assert text.endswith(b"\r\n-----\r\n"), text[-20:]
    parts = []
    for raw in text[len(b"---") : -len(b"--\r\n")].split(b"\r\n---"):
        if not raw:
            continue
        head, _, body = raw.partition(b"\r\n\r\n")
        parts.append((head.decode().strip(), orjson.loads(body)))
    return parts


def incremental_enabled() -> bool:
    from gateway.schema.build import build_schema

    schema = build_schema()
    return schema.config.enable_experimental_incremental_execution


needs_incremental = pytest.mark.skipif(
    not incremental_enabled(), reason="@defer/@stream not enabled in the schema yet"
)


# --- SSE and multipart framing --------------------------------------------------------------


async def test_sse_only_client_gets_a_query_as_next_then_complete(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        raw = await exchanged(manager, FIRST, "text/event-stream")
    assert raw.status == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["cache-control"] == "no-store"
    assert raw.headers["content-encoding"] == "identity"
    events = sse_events(raw.text)
    assert [kind for kind, _ in events] == ["next", "complete"]
    assert len(orjson.loads(events[0][1])["data"]["phoneNumbers"]["nodes"]) == 3


async def test_multipart_only_client_gets_one_part_and_the_closing_boundary(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        raw = await exchanged(manager, FIRST, "multipart/mixed;deferSpec=20220824")
    assert raw.status == 200
    assert raw.headers["content-type"] == 'multipart/mixed; boundary="-"; deferSpec=20220824'
    parts = multipart_parts(raw.text)
    assert [head for head, _ in parts] == ["Content-Type: application/json; charset=utf-8"]
    assert parts[0][1]["hasNext"] is False
    assert len(parts[0][1]["data"]["phoneNumbers"]["nodes"]) == 3


async def test_a_plain_query_from_a_client_accepting_json_too_stays_json(
    gateway: httpx.AsyncClient,
) -> None:
    response = await gateway.post(
        "/graphql",
        json={"query": FIRST},
        headers={"Accept": "application/json, multipart/mixed, text/event-stream"},
    )
    assert response.headers["content-type"].startswith("application/json")


async def test_a_refused_request_is_json_with_its_status_even_when_only_streams_are_accepted(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        raw = await exchanged(manager, "{ phoneNumbers { nope } }", "text/event-stream")
    assert raw.status == 400
    assert raw.headers["content-type"].startswith("application/graphql-response+json")
    body = orjson.loads(raw.text)
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


async def test_nothing_acceptable_is_406(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/graphql", json={"query": FIRST}, headers={"Accept": "text/csv"})
    assert response.status_code == 406
    assert "text/event-stream" in response.json()["errors"][0]["message"]


@needs_incremental
async def test_multipart_defer_and_stream_payloads_merge_into_the_json_answer(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        raw = await exchanged(manager, DEFERRED, "multipart/mixed, application/json")
        plain = await exchanged(manager, DEFERRED, "application/json")
    parts = multipart_parts(raw.text)
    assert len(parts) > 1
    assert parts[-1][1]["hasNext"] is False
    assert all("hasNext" in body for _, body in parts)
    merged, answered = merged_answer(body for _, body in parts), orjson.loads(plain.text)
    # Streamed, the walk's call and the initial payload's one held item count.
    assert merged.pop("extensions") == {"cost": {"estimated": 51, "limit": 10_000}}
    # One JSON body holds the streamed list whole: its items are counted (call + 5 items).
    assert answered.pop("extensions") == {"cost": {"estimated": 55, "limit": 10_000}}
    assert merged == answered
    nodes = answered["data"]["phoneNumbers"]["nodes"]
    assert len(nodes) == 5
    streamed = [e for _, b in parts[1:] for e in b.get("incremental", ()) if "items" in e]
    assert streamed
    assert all(isinstance(e["path"][-1], int) for e in streamed)


# --- streams per caller, disconnects, shutdown -----------------------------------------------


async def test_streams_past_the_callers_bound_are_rate_limited(
    recorder: RecordingTransport,
) -> None:
    gate = Gate(recorder)
    async with app_with(gate, max_streams_per_caller=2) as (_, manager):
        # Different pages: identical asks would share one upstream call (single flight).
        held = [exchange(manager, FIRST.replace("3", str(n)), "text/event-stream") for n in (4, 5)]
        running = [asyncio.ensure_future(raw.run()) for raw in held]
        await eventually(lambda: gate.waiting == 2, "both streams reached the upstream")
        refused = await exchanged(manager, FIRST, "text/event-stream")
        other = exchange(
            manager,
            FIRST.replace("3", "6"),
            "text/event-stream",
            authorization="Bearer demo-readonly",
        )
        other_run = asyncio.ensure_future(other.run())
        await eventually(lambda: gate.waiting == 3, "another caller is not bound by them")
        gate.open.set()
        await asyncio.gather(*running, other_run)
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"
    assert orjson.loads(refused.text)["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert all(raw.status == 200 for raw in held)


async def test_a_client_leaving_a_subscription_ends_it(recorder: RecordingTransport) -> None:
    async with app_with(recorder, changes_poll_interval=1) as (_app, manager):
        raw = exchange(manager, WATCH, "text/event-stream")
        running = asyncio.ensure_future(raw.run())
        await raw.read_until(b"SYNCED")
        feeds = manager._state["changes"]
        assert feeds.open_subscriptions == 1
        raw.disconnected.set()
        await asyncio.wait_for(running, 10)
        await eventually(lambda: feeds.open_subscriptions == 0, "the watch was closed")
    assert raw.text.count(b"event: next") == 1
    assert b"event: complete" not in raw.text  # nobody was left to write to


async def test_shutdown_ends_an_open_stream_with_a_final_payload(
    recorder: RecordingTransport,
) -> None:
    later = LaterPagesHeld(recorder)
    streamed = (
        "{ phoneNumbers(page: {first: 30}) { nodes @stream(initialCount: 1) { phoneNumber } } }"
    )
    async with app_with(later, max_page_size=10) as (_, manager):
        raw = exchange(manager, streamed, "text/event-stream")
        running = asyncio.ensure_future(raw.run())
        await raw.read_until(b"event: next")
        await eventually(lambda: later.waiting == 1, "the stream waits on its next page")
        streams: OpenStreams = manager._state["streams"]
        await streams.close()
        await asyncio.wait_for(running, 10)
        later.open.set()
    events = sse_events(raw.text)
    assert events[-1][0] == "complete"
    final = orjson.loads(events[-2][1])
    assert final["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_shutdown_ends_an_sse_subscription_so_that_its_client_subscribes_again(
    recorder: RecordingTransport,
) -> None:
    """graphql-sse's client takes ``complete`` as the subscription's end, and an error event
    as its failure; a body that just ends while it waits for events it retries. So at
    shutdown the stream of a subscription ends with neither, even when the change feeds
    close (ending the subscription) right after the streams."""
    async with app_with(recorder, changes_poll_interval=1) as (_, manager):
        raw = exchange(manager, WATCH, "text/event-stream")
        running = asyncio.ensure_future(raw.run())
        await raw.read_until(b"SYNCED")
        streams: OpenStreams = manager._state["streams"]
        streams.closing.set()
        await manager._state["changes"].close()
        await asyncio.wait_for(running, 10)
    assert [kind for kind, _ in sse_events(raw.text)] == ["next"]
    assert orjson.loads(sse_events(raw.text)[0][1])["data"]["phoneNumberChanges"]["kind"] == (
        "SYNCED"
    )


# --- graphql-transport-ws --------------------------------------------------------------------


@pytest.fixture
def ws_client(recorder: RecordingTransport) -> Any:
    app = create_app(live_settings(changes_poll_interval=1), upstream_transport=recorder)
    with TestClient(app) as client:
        yield client


def _connect(client: TestClient, **kw: Any) -> Any:
    return client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"], **kw)


def test_ws_query_next_complete_and_ping_pong(ws_client: TestClient) -> None:
    with _connect(ws_client) as ws:
        assert ws.accepted_subprotocol == "graphql-transport-ws"
        ws.send_json({"type": "connection_init", "payload": {"Authorization": "Bearer demo-admin"}})
        assert ws.receive_json() == {"type": "connection_ack"}
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": FIRST}})
        message = ws.receive_json()
        assert message["type"] == "next"
        assert message["id"] == "1"
        assert len(message["payload"]["data"]["phoneNumbers"]["nodes"]) == 3
        assert ws.receive_json() == {"type": "complete", "id": "1"}


def test_ws_subscription_sends_synced(ws_client: TestClient) -> None:
    with _connect(ws_client) as ws:
        ws.send_json({"type": "connection_init", "payload": {"Authorization": "Bearer demo-admin"}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"type": "subscribe", "id": "w", "payload": {"query": WATCH}})
        message = ws.receive_json()
        assert message["type"] == "next", message
        assert message["payload"]["data"]["phoneNumberChanges"]["kind"] == "SYNCED"
        ws.send_json({"type": "complete", "id": "w"})


def test_ws_bad_token_in_connection_init_is_an_error_message(ws_client: TestClient) -> None:
    with _connect(ws_client) as ws:
        ws.send_json({"type": "connection_init", "payload": {"authorization": "Basic abc"}})
        assert ws.receive_json()["type"] == "connection_ack"
        ws.send_json({"type": "subscribe", "id": "w", "payload": {"query": WATCH}})
        message = ws.receive_json()
        assert message["type"] == "error"
        assert message["id"] == "w"
        assert message["payload"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_ws_validation_error_is_an_error_message(ws_client: TestClient) -> None:
    with _connect(ws_client) as ws:
        ws.send_json({"type": "connection_init"})
        ws.receive_json()
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": "{ nope }"}})
        message = ws.receive_json()
        assert message["type"] == "error"
        assert message["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


def _closed_with(ws: Any, skipping: int = 0) -> int:
    """The close code, after at most ``skipping`` other messages."""
    for _ in range(skipping + 1):
        try:
            ws.receive_json()
        except WebSocketDisconnect as closed:
            return closed.code
    pytest.fail("the connection stayed open")


def test_ws_unknown_message_closes_4400(ws_client: TestClient) -> None:
    with _connect(ws_client) as ws:
        ws.send_json({"type": "connection_init"})
        ws.receive_json()
        ws.send_json({"type": "shout"})
        assert _closed_with(ws) == 4400


def test_ws_subscribe_before_ack_closes_4401(ws_client: TestClient) -> None:
    with _connect(ws_client) as ws:
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": FIRST}})
        assert _closed_with(ws) == 4401


def test_ws_duplicate_subscribe_id_closes_4409(ws_client: TestClient) -> None:
    with _connect(ws_client, headers={"authorization": "Bearer demo-admin"}) as ws:
        ws.send_json({"type": "connection_init"})
        ws.receive_json()
        ws.send_json({"type": "subscribe", "id": "w", "payload": {"query": WATCH}})
        ws.send_json({"type": "subscribe", "id": "w", "payload": {"query": WATCH}})
        assert _closed_with(ws, skipping=1) == 4409  # a SYNCED may come first


def test_ws_without_connection_init_closes_4408(
    recorder: RecordingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(live_settings(), upstream_transport=recorder)
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, websocket_module.GraphQLWebSocket):
            endpoint.init_timeout = 0.05
    with TestClient(app) as client, _connect(client) as ws:
        assert _closed_with(ws) == 4408


def test_ws_other_subprotocol_is_refused(ws_client: TestClient) -> None:
    with ws_client.websocket_connect("/graphql", subprotocols=["graphql-ws"]) as ws:
        assert _closed_with(ws) == 4406


def test_ws_foreign_origin_is_refused(ws_client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect),
        _connect(ws_client, headers={"origin": "https://evil.example"}) as ws,
    ):
        ws.receive_json()


def test_ws_allowed_origin_is_accepted(recorder: RecordingTransport) -> None:
    app = create_app(
        live_settings(cors_origins="https://admin.example"), upstream_transport=recorder
    )
    with (
        TestClient(app) as client,
        _connect(client, headers={"origin": "https://admin.example"}) as ws,
    ):
        ws.send_json({"type": "connection_init"})
        assert ws.receive_json() == {"type": "connection_ack"}


async def test_a_streamed_request_naming_no_operation_is_a_request_error(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        raw = RawExchange(
            manager.app,
            {"query": DEFERRED, "operationName": "Elsewhere"},
            {"accept": "text/event-stream", "authorization": "Bearer demo-admin"},
        )
        await raw.run()
    assert raw.status == 400
    assert "names no operation" in orjson.loads(raw.text)["errors"][0]["message"]


async def test_a_subscription_asked_for_as_json_is_a_clear_refusal(
    gateway: httpx.AsyncClient,
) -> None:
    response = await gateway.post(
        "/graphql", json={"query": WATCH}, headers={"Accept": "application/graphql-response+json"}
    )
    assert response.status_code == 406
    assert "text/event-stream" in response.json()["errors"][0]["message"]


# --- @stream priced and bounded by the transport that answers ------------------------------

# The review's repro: four whole-inventory lists under @stream, each allowed while streamed.
HELD_STREAMS = (
    "{ "
    + " ".join(
        f"a{n}: phoneNumbers(page: {{first: 100000}}) {{ nodes @stream {{ phoneNumber }} }}"
        for n in range(4)
    )
    + " }"
)
# Five full pages under @stream: five pages' items when held, five calls when streamed.
PRICED_STREAMS = (
    "{ "
    + " ".join(
        f"a{n}: phoneNumbers(page: {{first: 2000}}) {{ nodes @stream {{ phoneNumber }} }}"
        for n in range(5)
    )
    + " }"
)


@needs_incremental
@pytest.mark.parametrize("accept", ["application/json", "application/graphql-response+json"])
async def test_a_stream_answered_as_one_json_body_keeps_the_unstreamed_ceiling(
    recorder: RecordingTransport, accept: str
) -> None:
    async with app_with(recorder) as (_, manager):
        plain = await exchanged(manager, HELD_STREAMS, accept)
    body = orjson.loads(plain.text)
    assert len(body["errors"]) == 4, body
    for error in body["errors"]:
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert "page.first must be between 1 and 2000" in error["message"]
        assert "multipart/mixed or text/event-stream" in error["message"]
    assert recorder.calls == 0  # refused before any upstream call


@needs_incremental
async def test_a_stream_answered_as_one_json_body_is_priced_by_its_items(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        plain = await exchanged(manager, PRICED_STREAMS, "application/json")
    error = orjson.loads(plain.text)["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "estimated cost is 10250" in error["message"]  # 5 x (50 + 2,000 items)
    assert "accept multipart/mixed or text/event-stream" in error["message"]
    assert recorder.calls == 0


@needs_incremental
@pytest.mark.parametrize("document", [HELD_STREAMS, PRICED_STREAMS], ids=["ceiling", "cost"])
async def test_the_same_streams_run_when_the_response_streams(
    recorder: RecordingTransport, document: str
) -> None:
    async with app_with(recorder) as (_, manager):
        count = await exchanged(manager, "{ phoneNumbers { totalCount } }", "application/json")
        raw = await exchanged(manager, document, "multipart/mixed")
    total = orjson.loads(count.text)["data"]["phoneNumbers"]["totalCount"]
    parts = [body for _, body in multipart_parts(raw.text)]
    assert parts[-1]["hasNext"] is False
    assert not [e for p in parts for e in p.get("errors", ())], parts[0]
    assert not [e for p in parts for i in p.get("incremental", ()) for e in i.get("errors", ())]
    merged = merged_answer(parts)["data"]
    aliases = 4 if document is HELD_STREAMS else 5
    expected = total if document is HELD_STREAMS else min(total, 2000)
    assert [len(merged[f"a{n}"]["nodes"]) for n in range(aliases)] == [expected] * aliases
    assert recorder.calls > 0


# --- round three: what the red team found in the transports ----------------------------------


def _ws_init(ws: Any, authorization: str = "Bearer demo-admin") -> None:
    ws.send_json({"type": "connection_init", "payload": {"Authorization": authorization}})
    assert ws.receive_json() == {"type": "connection_ack"}


def _wait_until(condition: Any, what: str) -> None:
    """The sync tests' ``eventually``: the app runs in the test client's thread."""
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.005)


def test_ws_operations_abandoned_before_their_first_message_leave_nothing_running(
    recorder: RecordingTransport,
) -> None:
    app = create_app(live_settings(changes_poll_interval=1), upstream_transport=recorder)
    watch = 'subscription { phoneNumberChanges(filter: {locationId: "loc-%d"}) { kind } }'
    with TestClient(app) as client:
        feeds = client.app_state["changes"]
        streams: OpenStreams = client.app_state["streams"]
        with _connect(client) as ws:
            _ws_init(ws)
            for n in range(200):  # subscribe, then complete at once: before any message
                ws.send_json({"type": "subscribe", "id": f"c{n}", "payload": {"query": watch % n}})
                ws.send_json({"type": "complete", "id": f"c{n}"})
                query = DEFERRED.replace("5", str(n % 7 + 2))
                ws.send_json({"type": "subscribe", "id": f"q{n}", "payload": {"query": query}})
                ws.send_json({"type": "complete", "id": f"q{n}"})
            ws.send_json({"type": "ping"})
            while ws.receive_json() != {"type": "pong"}:
                pass  # an operation that got a message out before its complete
        for n in range(20):  # subscribe, then leave at once
            with _connect(client) as ws:
                _ws_init(ws)
                ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": watch % n}})
        _wait_until(lambda: feeds.open_subscriptions == 0, "every subscription ended")
        _wait_until(lambda: not feeds.feeds, "every poller stopped")
        _wait_until(lambda: streams.open == 0, "every stream slot was given back")
        calls = recorder.calls
        # Slots are free: the caller can subscribe its full share again.
        with _connect(client) as ws:
            _ws_init(ws)
            for n in range(10):
                ws.send_json({"type": "subscribe", "id": f"z{n}", "payload": {"query": watch % n}})
            answers = [ws.receive_json() for _ in range(10)]
            assert {message["type"] for message in answers} == {"next"}, answers
        _wait_until(lambda: not feeds.feeds, "the new pollers stopped with their socket")
        client.portal.call(asyncio.sleep, 1.5)  # more than a poll interval: no poller polls
        assert recorder.calls - calls <= 10, "only the ten baselines, no leftover poller"


async def test_a_stream_runs_at_most_one_payload_ahead_of_its_reader() -> None:
    produced = 0

    async def frames() -> AsyncIterator[Any]:
        nonlocal produced
        for n in range(10):
            produced += 1
            yield ExecutionResult(data={"n": n}, errors=None)

    payloads = PayloadStream(
        frames(),  # type: ignore[arg-type]
        PayloadWriter(lambda error: {}, lambda payload: payload),  # type: ignore[arg-type,return-value]
        lambda result: {"data": result.data},
        subscription=False,
    )
    for _ in range(50):  # the pump runs as far as it may
        await asyncio.sleep(0)
    assert produced == 1, "unread: one payload made, the next not asked for"
    assert await payloads.next() == {"data": {"n": 0}}
    for _ in range(50):
        await asyncio.sleep(0)
    assert produced == 2
    await payloads.aclose()


class ThreadGate(Gate):
    """A ``Gate`` opened from the test's thread, through the test client's portal."""

    def release(self, client: TestClient) -> None:
        assert client.portal is not None
        client.portal.call(self.open.set)


@pytest.mark.parametrize("bound", ["caller", "connection"])
def test_ws_operations_count_against_the_callers_streams_and_the_connections_bound(
    recorder: RecordingTransport, monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    gate = ThreadGate(recorder)
    if bound == "connection":
        monkeypatch.setattr(websocket_module, "MAX_OPERATIONS_PER_CONNECTION", 2)
    app = create_app(
        live_settings(max_streams_per_caller=2 if bound == "caller" else 50),
        upstream_transport=gate,
    )
    with TestClient(app) as client, _connect(client) as ws:
        _ws_init(ws)
        for n in (4, 5):  # different pages: single flight would share one call
            query = DEFERRED.replace("5", str(n))
            ws.send_json({"type": "subscribe", "id": f"s{n}", "payload": {"query": query}})
        _wait_until(lambda: gate.waiting == 2, "both operations reached the upstream")
        ws.send_json({"type": "subscribe", "id": "over", "payload": {"query": DEFERRED}})
        refused = ws.receive_json()
        assert refused["type"] == "error", refused
        assert refused["id"] == "over"
        assert refused["payload"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert gate.requests == 2, "refused before any upstream call"
        gate.release(client)
        completed: set[str] = set()
        while len(completed) < 2:
            message = ws.receive_json()
            assert message["type"] in ("next", "complete"), message
            if message["type"] == "complete":
                completed.add(message["id"])
        assert completed == {"s4", "s5"}
        if bound == "caller":
            streams: OpenStreams = client.app_state["streams"]
            _wait_until(lambda: streams.open == 0, "the slots were given back")


def test_an_idle_websocket_is_closed(recorder: RecordingTransport) -> None:
    app = create_app(live_settings(), upstream_transport=recorder)
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, websocket_module.GraphQLWebSocket):
            endpoint.idle_timeout = 0.2
    with TestClient(app) as client, _connect(client) as ws:
        _ws_init(ws)
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": FIRST}})
        assert ws.receive_json()["type"] == "next"
        assert ws.receive_json() == {"type": "complete", "id": "1"}
        assert _closed_with(ws) == 1000  # no operation since: closed, however long it takes


def test_ws_a_credential_past_the_bound_never_reaches_the_upstream(
    ws_client: TestClient, recorder: RecordingTransport
) -> None:
    with _connect(ws_client) as ws:
        _ws_init(ws, "Bearer " + "a" * 100_000)
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": FIRST}})
        answered = ws.receive_json()  # a query's field error, as over HTTP
        assert ws.receive_json() == {"type": "complete", "id": "1"}
        ws.send_json({"type": "subscribe", "id": "2", "payload": {"query": WATCH}})
        watched = ws.receive_json()
    assert answered["type"] == "next"
    assert watched["type"] == "error", watched
    for error in (answered["payload"]["errors"][0], watched["payload"][0]):
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        assert "longer than 8192 characters" in error["message"]
    assert recorder.calls == 0


def test_ws_a_message_past_the_body_bound_closes_1009(ws_client: TestClient) -> None:
    """A WebSocket message is bounded as an HTTP body is (GATEWAY_MAX_BODY_BYTES, 1 MiB),
    not by uvicorn's 16 MiB: a 15 MB document never reaches the parser."""
    with _connect(ws_client) as ws:
        _ws_init(ws)
        document = "{ " + "a " * 700_000 + "}"
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": document}})
        assert _closed_with(ws) == 1009


def test_ws_a_subscribe_id_past_the_bound_closes_4400(ws_client: TestClient) -> None:
    with _connect(ws_client) as ws:
        _ws_init(ws)
        ws.send_json({"type": "subscribe", "id": "x" * 129, "payload": {"query": FIRST}})
        assert _closed_with(ws) == 4400


def test_ws_each_operation_gets_a_log_line(ws_client: TestClient) -> None:
    with capture_logs() as logs, _connect(ws_client) as ws:
        _ws_init(ws)
        query = "query Three " + FIRST
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": query}})
        assert ws.receive_json()["type"] == "next"
        assert ws.receive_json()["type"] == "complete"
        ws.send_json({"type": "subscribe", "id": "2", "payload": {"query": "{ nope }"}})
        assert ws.receive_json()["type"] == "error"
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
    lines = [line for line in logs if line["event"] == "websocket_operation"]
    assert len(lines) == 2, logs
    done, failed = sorted(lines, key=lambda line: line["ended"])
    assert done["operationName"] == "Three"
    assert done["operationType"] == "query"
    assert done["payloads"] == 1
    assert done["ended"] == "complete"
    assert failed["ended"] == "error"
    assert failed["errorCodes"] == ["GRAPHQL_VALIDATION_FAILED"]
    assert "demo-admin" not in repr(lines)


@pytest.mark.parametrize("initial", ["-1", "$n"])
async def test_a_negative_initial_count_is_bad_user_input(
    recorder: RecordingTransport, initial: str
) -> None:
    declared = "($n: Int = -1)" if initial == "$n" else ""
    query = (
        f"query{declared} {{ phoneNumbers(page: {{first: 3}}) {{ "
        f"nodes @stream(initialCount: {initial}) {{ phoneNumber }} }} }}"
    )
    with capture_logs() as logs:
        async with app_with(recorder) as (_, manager):
            for accept in ("multipart/mixed", "application/json"):
                raw = await exchanged(manager, query, accept)
                body = orjson.loads(raw.text)
                assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
                assert "initialCount" in body["errors"][0]["message"]
            sent = RawExchange(
                manager.app,
                {"query": query, "variables": {"n": -5} if declared else {}},
                {"accept": "multipart/mixed", "authorization": "Bearer demo-admin"},
            )
            await sent.run()
    assert "BAD_USER_INPUT" in sent.text.decode()
    assert recorder.calls == 0
    assert not [line for line in logs if line.get("log_level") == "error"], logs


async def test_sse_subscription_refusals_carry_their_status(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder, changes_poll_interval=1, max_subscriptions_per_caller=1) as (
        _,
        manager,
    ):
        held = exchange(manager, WATCH, "text/event-stream")
        running = asyncio.ensure_future(held.run())
        await held.read_until(b"SYNCED")
        over = await exchanged(manager, WATCH, "text/event-stream")
        unauthenticated = await exchanged(
            manager, WATCH, "text/event-stream", authorization="Basic x"
        )
        held.disconnected.set()
        await asyncio.wait_for(running, 10)
    assert over.status == 429
    assert over.headers["retry-after"] == "1"
    assert orjson.loads(over.text)["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert unauthenticated.status == 401
    assert orjson.loads(unauthenticated.text)["errors"][0]["extensions"]["code"] == (
        "UNAUTHENTICATED"
    )


@needs_incremental
async def test_accept_qualities_choose_between_json_and_a_stream(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        json_first = await exchanged(
            manager, DEFERRED, "application/json;q=0.9, multipart/mixed;q=0.1"
        )
        stream_first = await exchanged(manager, DEFERRED, "application/json;q=0.1, multipart/mixed")
    assert json_first.headers["content-type"].startswith("application/json")
    assert len(orjson.loads(json_first.text)["data"]["phoneNumbers"]["nodes"]) == 5
    assert stream_first.headers["content-type"].startswith("multipart/mixed")


async def test_a_subscription_accepting_only_multipart_is_told_to_ask_for_sse(
    recorder: RecordingTransport,
) -> None:
    async with app_with(recorder) as (_, manager):
        raw = await exchanged(manager, WATCH, "multipart/mixed")
        both = exchange(manager, WATCH, "multipart/mixed, text/event-stream;q=0.5")
        running = asyncio.ensure_future(both.run())
        await both.read_until(b"SYNCED")
        both.disconnected.set()
        await asyncio.wait_for(running, 10)
    assert raw.status == 406
    assert "text/event-stream" in orjson.loads(raw.text)["errors"][0]["message"]
    assert recorder.calls > 0  # only the SSE one walked the upstream
    assert both.headers["content-type"].startswith("text/event-stream")


class HoldingPages(httpx.AsyncBaseTransport):
    """Holds the upstream requests asking for ``max=5`` (``DEFERRED``'s page) until
    ``open``; every other request (a subscription's polls) passes."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.open = asyncio.Event()
        self.waiting = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("max") == "5":
            self.waiting += 1
            try:
                await self.open.wait()
            finally:
                self.waiting -= 1
        return await self.inner.handle_async_request(request)


def test_ws_shutdown_lets_subscriptions_resubscribe_and_tells_queries_they_were_cut_short(
    recorder: RecordingTransport,
) -> None:
    """A rolling deploy: a subscription is not completed (graphql-ws would take that as its
    end and never subscribe again) and the socket closes with 1012, which graphql-ws retries;
    a query still running gets an ``error`` (its result is cut short), not a ``complete``."""
    holding = HoldingPages(recorder)
    app = create_app(live_settings(changes_poll_interval=1), upstream_transport=holding)
    with TestClient(app) as client, _connect(client) as ws:
        _ws_init(ws)
        ws.send_json({"type": "subscribe", "id": "w", "payload": {"query": WATCH}})
        synced = ws.receive_json()
        assert synced["type"] == "next", synced
        ws.send_json({"type": "subscribe", "id": "q", "payload": {"query": DEFERRED}})
        _wait_until(lambda: holding.waiting == 1, "the query reached the upstream")
        assert client.portal is not None
        # What ``serve`` does at SIGTERM: the change feeds end first, then the streams.
        client.portal.call(client.app_state["changes"].close)
        client.portal.call(client.app_state["streams"].close)
        messages: list[dict[str, Any]] = []
        while True:
            try:
                messages.append(ws.receive_json())
            except WebSocketDisconnect as closed:
                close_code = closed.code
                break
    assert close_code == 1012
    assert [m for m in messages if m["type"] == "complete"] == [], messages
    errors = [m for m in messages if m["type"] == "error"]
    assert [m["id"] for m in errors] == ["q"], messages
    assert errors[0]["payload"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_a_response_start_that_fails_still_closes_the_stream_and_its_slot() -> None:
    """The response's start is inside the cleanup: a send that raises there leaves neither
    the caller's stream slot nor the operation's pump behind."""
    closed = asyncio.Event()

    async def frames() -> AsyncIterator[ExecutionResult]:
        try:
            while True:
                yield ExecutionResult(data={"n": 1}, errors=None)
        finally:
            closed.set()

    payloads = PayloadStream(
        frames(),  # type: ignore[arg-type]
        PayloadWriter(lambda error: {}, lambda payload: payload),  # type: ignore[arg-type,return-value]
        lambda result: {"data": result.data},
        subscription=False,
    )
    released: list[bool] = []
    response = StreamedResponse(
        payloads, MultipartFraming(), OpenStreams(4), release=lambda: released.append(True)
    )

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    async def send(message: Any) -> None:
        raise RuntimeError("the server could not start the response")

    for _ in range(50):  # the pump has started the operation and waits to be read
        await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await response({"type": "http"}, receive, send)
    assert released == [True], "the caller's stream slot was given back"
    assert closed.is_set(), "the operation's generator was closed"

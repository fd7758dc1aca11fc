"""The streamed transports of ``/graphql``: multipart and SSE framing, the JSON fallback,
streams per caller, disconnects, shutdown, and graphql-transport-ws.

Streams are driven as raw ASGI (httpx's ASGI transport buffers a whole response), so a test
can read each payload as it is sent, disconnect mid-stream or shut the app down under it.
"""

from __future__ import annotations

import asyncio
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

import gateway.http.websocket as websocket_module
from gateway.app import create_app
from gateway.http.incremental_payloads import merged_answer
from gateway.http.stream_limits import OpenStreams
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
    from gateway.api.schema import build_schema

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
        raw = exchange(manager, FIRST, "text/event-stream")
        await raw.run()
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
        raw = exchange(manager, FIRST, "multipart/mixed;deferSpec=20220824")
        await raw.run()
    assert raw.status == 200
    assert raw.headers["content-type"] == 'multipart/mixed; boundary="-"'
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
        raw = exchange(manager, "{ phoneNumbers { nope } }", "text/event-stream")
        await raw.run()
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
        raw = exchange(manager, DEFERRED, "multipart/mixed;deferSpec=20220824,application/json")
        await raw.run()
        plain = exchange(manager, DEFERRED, "application/json")
        await plain.run()
    parts = multipart_parts(raw.text)
    assert len(parts) > 1
    assert parts[-1][1]["hasNext"] is False
    assert all("hasNext" in body for _, body in parts)
    merged, answered = merged_answer(body for _, body in parts), orjson.loads(plain.text)
    assert merged.pop("extensions") == {"cost": {"estimated": 50, "limit": 10_000}}
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
        refused = exchange(manager, FIRST, "text/event-stream")
        await refused.run()
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
    async with app_with(recorder, changes_poll_interval=1) as (_, manager):
        raw = exchange(manager, WATCH, "text/event-stream")
        running = asyncio.ensure_future(raw.run())
        await raw.read_until(b"SYNCED")
        streams: OpenStreams = manager._state["streams"]
        await streams.close()
        await asyncio.wait_for(running, 10)
    events = sse_events(raw.text)
    assert events[-1][0] == "complete"
    final = orjson.loads(events[-2][1])
    assert final["errors"][0]["extensions"]["code"] == "RATE_LIMITED"


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
        plain = exchange(manager, HELD_STREAMS, accept)
        await plain.run()
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
        plain = exchange(manager, PRICED_STREAMS, "application/json")
        await plain.run()
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
        count = exchange(manager, "{ phoneNumbers { totalCount } }", "application/json")
        await count.run()
        raw = exchange(manager, document, "multipart/mixed")
        await raw.run()
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

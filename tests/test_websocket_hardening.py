"""graphql-transport-ws as round four's reading and red team found it (issue 27): ids that
outlived their operation, a shed racing a subscribe, cancelled operations logged as successes,
and a client that never reads growing the server's memory without bound.

The never-reading client is a real one over a real socket (uvicorn in a thread, the
``websockets`` library's client told to stop reading): an in-process test client buffers
without bound on its own side, so it cannot show what the server does when writes stall.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import uvicorn
import websockets
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocketDisconnect
from structlog.testing import capture_logs

from gateway.server.app import create_app
from gateway.transports import websocket as ws_module
from tests.conftest import RecordingTransport, live_settings
from tests.test_transports import (
    DEFERRED,
    WATCH,
    HoldingPages,
    TestClient,
    _connect,
    _wait_until,
    _ws_init,
)


@contextmanager
def connections_made() -> Iterator[list[Any]]:
    """Every server-side connection state made while the block runs."""
    made: list[Any] = []
    original = ws_module._Connection.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    ws_module._Connection.__init__ = recording  # type: ignore[method-assign]
    try:
        yield made
    finally:
        ws_module._Connection.__init__ = original  # type: ignore[method-assign]


def test_an_id_reused_after_complete_is_judged_by_its_own_kind_at_shutdown(
    recorder: RecordingTransport,
) -> None:
    """Id ``1`` runs a query, the client completes it, then reuses ``1`` for a subscription.
    At shutdown that subscription must get nothing (so graphql-ws resubscribes), not the
    ``error`` a query cut short gets: the id's old kind went with its old operation."""
    holding = HoldingPages(recorder)
    app = create_app(live_settings(changes_poll_interval=1), upstream_transport=holding)
    with TestClient(app) as client, _connect(client) as ws:
        _ws_init(ws)
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": DEFERRED}})
        _wait_until(lambda: holding.waiting == 1, "the query reached the upstream")
        ws.send_json({"type": "complete", "id": "1"})
        ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": WATCH}})
        synced = ws.receive_json()
        assert synced["type"] == "next", synced
        assert client.portal is not None
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
    assert [m for m in messages if m["type"] in ("error", "complete")] == [], messages


def test_a_shed_that_races_a_subscribe_keeps_the_busy_connection(
    recorder: RecordingTransport,
) -> None:
    """The server asks an idle connection to go; a subscribe arrives first. The connection is
    busy now: it is not the one to shed, and must keep serving (it used to stop its
    operations and drop the socket, 1006)."""
    app = create_app(live_settings(changes_poll_interval=1), upstream_transport=recorder)
    with connections_made() as made, TestClient(app) as client, _connect(client) as ws:
        _ws_init(ws)
        ws.send_json({"type": "subscribe", "id": "w", "payload": {"query": WATCH}})
        assert ws.receive_json()["type"] == "next"
        (connection,) = made
        assert client.portal is not None
        client.portal.call(connection.shed)
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}  # still served
        ws.send_json({"type": "complete", "id": "w"})
        _wait_until(lambda: connection.idle, "the subscription ended")
        client.portal.call(connection.shed)  # idle now: shed, with 1013
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1013


def test_a_completed_operation_is_logged_as_cancelled(recorder: RecordingTransport) -> None:
    app = create_app(live_settings(changes_poll_interval=1), upstream_transport=recorder)
    with capture_logs() as logs, TestClient(app) as client, _connect(client) as ws:
        _ws_init(ws)
        ws.send_json({"type": "subscribe", "id": "w", "payload": {"query": WATCH}})
        assert ws.receive_json()["type"] == "next"
        ws.send_json({"type": "complete", "id": "w"})
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
        _wait_until(
            lambda: any(line["event"] == "websocket_operation" for line in logs),
            "the operation's line",
        )
    (line,) = [line for line in logs if line["event"] == "websocket_operation"]
    assert (line["ended"], line["outcome"]) == ("cancelled", "cancelled")


@contextmanager
def served(app: Any) -> Iterator[str]:
    """The whole app (lifespan and WebSockets) under uvicorn in a thread, on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, ws="websockets-sansio", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


BIG_PAGE = (
    "{ phoneNumbers(page: {first: 1000}) { nodes { phoneNumber extension esn routingPrefix "
    "state phoneNumberType location { id name } owner { id type firstName lastName } } } }"
)


def test_a_client_that_never_reads_is_closed_not_buffered_for(
    recorder: RecordingTransport,
) -> None:
    """The red team's socket: subscribes, never a read. The server runs at most
    ``MAX_OPERATIONS_PER_CONNECTION`` operations, holds at most ``MAX_UNSENT_MESSAGES``
    messages for the client, writes each within the write timeout, and then closes the
    connection (1008) and lets every operation go; nothing grows with the flood."""
    app = create_app(live_settings(changes_poll_interval=1), upstream_transport=recorder)
    (endpoint,) = [route.app for route in app.routes if isinstance(route, WebSocketRoute)]
    endpoint.write_timeout = 1.0  # the default is 30 s; the rule is the same
    with connections_made() as made, served(app) as address:

        async def flood() -> tuple[int | None, int]:
            async with websockets.connect(
                f"ws://{address}/graphql",
                subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                max_queue=1,  # the client library stops reading off the socket
                max_size=None,
                ping_interval=None,
            ) as client:
                init = {
                    "type": "connection_init",
                    "payload": {"Authorization": "Bearer demo-admin"},
                }
                await client.send(orjson.dumps(init).decode())
                sent = 0
                try:
                    for n in range(5_000):
                        message = {
                            "type": "subscribe",
                            "id": str(n),
                            "payload": {"query": BIG_PAGE},
                        }
                        await client.send(orjson.dumps(message).decode())
                        sent += 1
                        await asyncio.sleep(0.001)
                        if made and made[0].close_code != 1000:
                            break
                except websockets.ConnectionClosed:
                    pass
                most = 0
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and made and made[0].close_code == 1000:
                    most = max(most, len(made[0].operations))
                    await asyncio.sleep(0.05)
                return made[0].close_code if made else None, sent

        close_code, sent = asyncio.run(flood())
        (connection,) = made
        _wait_until(lambda: not connection.operations, "every operation let go")
    assert close_code == 1008, (close_code, sent)
    assert connection.outbox.qsize() <= ws_module.MAX_UNSENT_MESSAGES
    assert sent < 5_000, "the connection was closed before the flood ended"


def test_a_subscribe_past_the_connections_bound_is_refused_without_a_task(
    recorder: RecordingTransport,
) -> None:
    holding = HoldingPages(recorder)
    app = create_app(
        live_settings(changes_poll_interval=1, max_streams_per_caller=50),
        upstream_transport=holding,
    )
    with connections_made() as made, TestClient(app) as client, _connect(client) as ws:
        _ws_init(ws)
        bound = ws_module.MAX_OPERATIONS_PER_CONNECTION
        for n in range(bound):
            ws.send_json({"type": "subscribe", "id": f"q{n}", "payload": {"query": DEFERRED}})
        _wait_until(lambda: len(made[0].operations) == bound, "every operation is running")
        ws.send_json({"type": "subscribe", "id": "over", "payload": {"query": DEFERRED}})
        refused = ws.receive_json()
        assert len(made[0].operations) == bound
        assert client.portal is not None
        client.portal.call(holding.open.set)
    assert refused["type"] == "error"
    assert refused["id"] == "over"
    assert refused["payload"][0]["extensions"]["code"] == "RATE_LIMITED"

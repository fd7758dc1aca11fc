"""GraphQL over WebSocket on ``/graphql``: the ``graphql-transport-ws`` protocol (the
``graphql-ws`` library's), for subscriptions, and for queries (``@defer``/``@stream``
included) too.

The handshake: a browser's ``Origin`` must be the gateway's own or one of
``GATEWAY_CORS_ORIGINS`` (browsers apply no CORS to WebSockets; this stops a foreign page
from using a visitor's connection), else the upgrade is refused (403). Only the
``graphql-transport-ws`` subprotocol is spoken: a connection offering no such subprotocol is
closed with 4406.

The protocol, as graphql-ws specifies it: ``connection_init`` within
``CONNECTION_INIT_TIMEOUT`` seconds (else 4408) and only once (else 4429); its payload may
carry ``Authorization`` (``{"Authorization": "Bearer ..."}``, any case of the key), which
takes precedence over the upgrade request's header (browsers cannot set headers on a
WebSocket); then ``connection_ack``. Each ``subscribe`` runs through the same
``OperationRunner`` as HTTP (document policy, limits, the caller's numbers): ``next`` per
payload then ``complete``; a request that fails before its first payload, or a subscription
refused at once (limits, credentials), is one ``error`` message. The client's ``complete``
stops its operation. ``ping`` gets ``pong``; the server pings every
``KEEP_ALIVE_SECONDS``. A subscribe before the ack closes with 4401, a reused id with 4409,
an id longer than ``MAX_OPERATION_ID_LENGTH`` or anything unreadable with 4400.

At shutdown every operation is stopped first. A query (or ``@defer``/``@stream`` result) cut
short gets an ``error`` message (``RATE_LIMITED``, "the gateway is shutting down"), so the
client knows its result is incomplete; a subscription gets nothing (not ``complete``: a
graphql-ws client takes a server's ``complete`` as the normal end and would not subscribe
again), and the socket is closed with 1012 (service restart), which graphql-ws clients retry,
subscribing again to every subscription still open. Each write is bounded by
``CLOSE_WRITE_SECONDS`` so a client that does not read cannot hold shutdown.

Bounds: every operation but a subscription (those have their own,
``GATEWAY_MAX_SUBSCRIPTIONS_PER_CALLER``) holds one of its caller's
``GATEWAY_MAX_STREAMS_PER_CALLER`` stream slots, shared with HTTP's streamed responses; a
connection runs at most ``MAX_OPERATIONS_PER_CONNECTION`` operations at once; past either the
operation gets an ``error`` message (``RATE_LIMITED``). Payloads are read one ahead of the
socket (``PayloadStream``), and a write waits while the client does not read, so an unread
operation holds one payload, not its whole walk. A connection holding no operation for
``IDLE_TIMEOUT_SECONDS`` is closed (1000), and under connection pressure such a connection
may be shed (1013, try again later) like an idle HTTP connection (``connections``).

One log line per operation when it ends (``websocket_operation``) and one per connection
(``websocket_closed``); never a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
import structlog
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.http.websocket_origin import is_same_origin, normalize_origin

from gateway.changes.registry import ChangeFeeds
from gateway.errors import ErrorCode
from gateway.execution.prepare import OperationRefused
from gateway.observability.request_facts import (
    CLIENT_NAME_HEADER,
    RequestFacts,
    client_field,
    collecting,
    new_request_id,
)
from gateway.transports.graphql_request import GraphQLParams, params_from_body
from gateway.transports.operation import (
    Answer,
    OperationCall,
    OperationRunner,
    PreparedCall,
    refusal_payload,
)
from gateway.transports.payload_stream import PayloadStream
from gateway.transports.refusals import Refusal
from gateway.transports.stream_limits import NO_CALLER, RETRY_AFTER_SECONDS, OpenStreams
from gateway.transports.stream_styles import SHUTDOWN_ERROR

log = structlog.get_logger("gateway.http")

SUBPROTOCOL: Final = "graphql-transport-ws"
# Where a connection's protocol state sits in its ASGI scope, for the server's connection
# table (``server.connections``: an idle WebSocket may be shed under pressure).
WEBSOCKET_ACTIVITY: Final = "gateway.websocket"
CONNECTION_INIT_TIMEOUT: Final = 10.0  # seconds (graphql-ws's default)
KEEP_ALIVE_SECONDS: Final = 12.0
# Operations one connection may run at once (each also holds a stream or subscription slot
# of its caller): a client multiplexing more opens another connection.
MAX_OPERATIONS_PER_CONNECTION: Final = 16
MAX_OPERATION_ID_LENGTH: Final = 128  # characters; graphql-ws clients use short ids
# A connection holding no operation this long is closed (1000): an idle socket otherwise holds
# a connection slot (GATEWAY_MAX_CONNECTIONS) for good. graphql-ws clients reconnect lazily.
IDLE_TIMEOUT_SECONDS: Final = 60.0
# How long shutdown waits to write each final message to a client that does not read.
CLOSE_WRITE_SECONDS: Final = 2.0
# How long one message may wait to be written to a client that does not read, and how many
# may wait: past either the connection is closed (1008), never buffered for.
WRITE_TIMEOUT_SECONDS: Final = 30.0
MAX_UNSENT_MESSAGES: Final = 64
# Service Restart: graphql-ws clients retry it (4xxx codes, and most 1xxx, are fatal to them).
SHUTDOWN_CLOSE_CODE: Final = 1012


class _Closing(Exception):
    """Close the connection with this protocol code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """No ``Origin`` (not a browser), the gateway's own, or one ``GATEWAY_CORS_ORIGINS``
    names (``*``: any)."""
    if origin is None:
        return True
    if "*" in allowed or is_same_origin(origin, host):
        return True
    normalized = normalize_origin(origin)
    return normalized is not None and normalized in {normalize_origin(o) for o in allowed}


class GraphQLWebSocket:
    """The ASGI endpoint for WebSocket connections to ``/graphql``. Built once."""

    def __init__(
        self,
        *,
        allowed_origins: tuple[str, ...],
        max_message_bytes: int,
        init_timeout: float = CONNECTION_INIT_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
    ) -> None:
        self.allowed_origins = allowed_origins
        self.max_message_bytes = max_message_bytes  # GATEWAY_MAX_BODY_BYTES, as for HTTP
        self.init_timeout = init_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(WebSocket(scope, receive, send))

    async def serve(self, websocket: WebSocket) -> None:
        headers = websocket.headers
        if not origin_allowed(headers.get("origin"), headers.get("host"), self.allowed_origins):
            log.info("websocket_refused", reason="origin not allowed")
            await websocket.close(code=1008)  # before accept: the upgrade is refused (403)
            return
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        if SUBPROTOCOL not in offered:
            await websocket.accept()
            await websocket.close(4406, "Subprotocol not acceptable")
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)
        connection = _Connection(self, websocket)
        # The server's connection table finds it through the scope (a shedding candidate
        # while it holds no operation).
        websocket.scope[WEBSOCKET_ACTIVITY] = connection
        await connection.serve()


@dataclass(slots=True, eq=False)
class _Operation:
    """One ``subscribe``: its task and, once prepared, what kind of operation it is (a
    subscription is told nothing at shutdown, so its client resubscribes; a query cut short
    is told it was). The id's entry and its kind go together, so an id the client reuses
    after ``complete`` is a new operation with a kind of its own."""

    id: str
    task: asyncio.Task[None] | None = None
    kind: Literal["pending", "query", "subscription"] = "pending"
    run: _OperationRun | None = field(default=None, repr=False)


class _Connection:
    """One WebSocket connection's protocol state.

    Four tasks serve it: the reader (the protocol's messages), the writer (the only one that
    writes to the socket: every message goes through ``outbox``, each write within the write
    timeout), the keep-alive and the idle watch; and it watches shutdown and shedding. A
    client that does not read fills the outbox or stalls a write: the connection is then
    closed (1008), never buffered for. Operations wait for room in the outbox (backpressure
    down to the upstream walk); the reader's own messages (``connection_ack``, ``pong``, an
    operation refused at once) never wait: no room is a client that does not read."""

    def __init__(self, endpoint: GraphQLWebSocket, websocket: WebSocket) -> None:
        self.endpoint = endpoint
        self.websocket = websocket
        self.streams: OpenStreams = websocket.state.streams
        self.authorization: str | None = websocket.headers.get("authorization")
        self.acknowledged = False
        self.operations: dict[str, _Operation] = {}
        self.started = time.perf_counter()
        self.operations_run = 0
        self.close_code = 1000
        self.client_name = client_field(websocket.headers.get(CLIENT_NAME_HEADER))
        self.outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=MAX_UNSENT_MESSAGES)
        self._busy = asyncio.Event()  # set while an operation runs
        self._shed = asyncio.Event()  # set when the server needs this connection's slot

    @property
    def idle(self) -> bool:
        """No operation running: the connection holds a socket and nothing else."""
        return not self.operations

    def shed(self) -> None:
        """Close this idle connection to make room for another (``connections``)."""
        self._shed.set()

    async def serve(self) -> None:
        reading = asyncio.ensure_future(self._read())
        writing = asyncio.ensure_future(self._write())
        pinging = asyncio.ensure_future(self._keep_alive())
        idling = asyncio.ensure_future(self._idle_watch())
        shutdown = asyncio.ensure_future(self.streams.closing.wait())
        shed = asyncio.ensure_future(self._shed.wait())
        tasks = [reading, writing, pinging, idling, shutdown, shed]
        try:
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if done == {shed} and not self.idle:
                    # A subscribe raced the shedding: the connection is busy again, so it is
                    # not the idle one to shed; it keeps serving.
                    self._shed.clear()
                    tasks.remove(shed)
                    shed = asyncio.ensure_future(self._shed.wait())
                    tasks.append(shed)
                    continue
                break
            error = next(
                (
                    t.exception()
                    for t in (reading, writing, pinging, idling)
                    if t in done and not t.cancelled() and t.exception()
                ),
                None,
            )
            if isinstance(error, _Closing):
                await self._close(error.code, error.reason)
            elif isinstance(error, WebSocketDisconnect):
                self.close_code = error.code
            elif isinstance(error, OSError):  # the socket could not be written: it is gone
                self.close_code = 1006
            elif error is not None:
                log.error("websocket_failed", exc_info=error)
                await self._close(1011, "Internal error")
            elif shutdown in done:
                writing.cancel()
                await self._end_for_shutdown()
                await self._close(SHUTDOWN_CLOSE_CODE, "The gateway is restarting; reconnect")
            elif shed in done:
                await self._close(1013, "The gateway needs this idle connection; reconnect")
        finally:
            for task in tasks:
                task.cancel()
            await self._stop_operations()
            for task in tasks:  # every outcome retrieved: no "exception was never retrieved"
                with contextlib.suppress(BaseException):
                    await task
            log.info(
                "websocket_closed",
                closeCode=self.close_code,
                operations=self.operations_run,
                durationMs=round((time.perf_counter() - self.started) * 1000, 1),
                clientName=self.client_name,
            )

    async def _idle_watch(self) -> None:
        """Raises ``_Closing`` once no operation has run for the idle timeout."""
        timeout = self.endpoint.idle_timeout
        while True:
            if not self.operations:
                try:
                    async with asyncio.timeout(timeout):
                        await self._busy.wait()
                except TimeoutError:
                    raise _Closing(1000, f"No operation for {timeout:g} seconds") from None
            await self._until_idle()

    async def _until_idle(self) -> None:
        while self.operations:  # asyncio.wait: being cancelled leaves the operations be
            tasks = [op.task for op in self.operations.values() if op.task is not None]
            if not tasks:
                return
            await asyncio.wait(tasks)

    def _note_activity(self) -> None:
        if self.operations:
            self._busy.set()
        else:
            self._busy.clear()

    async def _read(self) -> None:
        try:
            async with asyncio.timeout(self.endpoint.init_timeout):
                while not self.acknowledged:
                    self._handle(await self._receive())
        except TimeoutError:
            raise _Closing(4408, "Connection initialisation timeout") from None
        while True:
            self._handle(await self._receive())

    async def _receive(self) -> dict[str, Any]:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        raw: str | bytes = text if text is not None else (message.get("bytes") or b"")
        if len(raw) > self.endpoint.max_message_bytes:  # characters are at least a byte
            raise _Closing(1009, f"Message larger than {self.endpoint.max_message_bytes} bytes")
        if isinstance(raw, str) and len(raw.encode("utf-8", "surrogatepass")) > (
            self.endpoint.max_message_bytes
        ):
            raise _Closing(1009, f"Message larger than {self.endpoint.max_message_bytes} bytes")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _Closing(4400, "Invalid message received") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise _Closing(4400, "Invalid message received")
        return data

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "connection_init":
            if self.acknowledged:
                raise _Closing(4429, "Too many initialisation requests")
            self._take_credentials(message.get("payload"))
            self.acknowledged = True
            self._send_now({"type": "connection_ack"})
        elif kind == "ping":
            self._send_now({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "subscribe":
            if not self.acknowledged:
                raise _Closing(4401, "Unauthorized")
            self._subscribe(message)
        elif kind == "complete":
            operation = self.operations.pop(str(message.get("id")), None)
            if operation is not None and operation.task is not None:
                operation.task.cancel()
            self._note_activity()
        else:
            raise _Closing(4400, f"Unknown message type {kind[:32]!r}")

    def _take_credentials(self, payload: Any) -> None:
        if payload is not None and not isinstance(payload, dict):
            raise _Closing(4400, "connection_init payload must be an object")
        for key, value in (payload or {}).items():
            if key.lower() == "authorization" and isinstance(value, str):
                self.authorization = value  # the payload's wins over the upgrade's header

    def _subscribe(self, message: dict[str, Any]) -> None:
        operation_id = message.get("id")
        payload = message.get("payload")
        if not isinstance(operation_id, str) or not operation_id or not isinstance(payload, dict):
            raise _Closing(4400, "Invalid subscribe message")
        if len(operation_id) > MAX_OPERATION_ID_LENGTH:
            raise _Closing(4400, f"Subscribe id longer than {MAX_OPERATION_ID_LENGTH} characters")
        if operation_id in self.operations:
            raise _Closing(4409, f"Subscriber for {operation_id[:64]} already exists")
        if len(self.operations) >= MAX_OPERATIONS_PER_CONNECTION:
            # Refused here, before any task exists for it: a flood of subscribes costs one
            # message each in the outbox, and a client that does not read them is closed.
            refusal = Refusal(
                429,
                f"This connection runs {MAX_OPERATIONS_PER_CONNECTION} operations, the most it "
                "may; complete one first or open another connection.",
                ErrorCode.RATE_LIMITED,
                extensions={"retryAfter": RETRY_AFTER_SECONDS},
            )
            self._send_now({"type": "error", "id": operation_id, "payload": _errors(refusal)})
            return
        self.operations_run += 1
        operation = _Operation(operation_id)
        operation.task = asyncio.ensure_future(self._run(operation, payload))
        self.operations[operation_id] = operation
        operation.task.add_done_callback(lambda _: self._forget(operation))
        self._note_activity()

    def _forget(self, operation: _Operation) -> None:
        if self.operations.get(operation.id) is operation:
            del self.operations[operation.id]
        self._note_activity()

    async def _run(self, operation: _Operation, payload: dict[str, Any]) -> None:
        """One operation, from its ``subscribe`` to its end, with its own log line."""
        facts = RequestFacts(request_id=new_request_id(), client_name=self.client_name)
        run = operation.run = _OperationRun(facts)
        try:
            with collecting(facts), self.websocket.state.runner.traced():
                await self._operate(operation, payload, run)
        except asyncio.CancelledError:
            run.ended = "cancelled"  # the client's ``complete``, its leaving, or shutdown
            raise
        finally:
            facts.operation_name = facts.operation_name or run.operation_name
            log.info(
                "websocket_operation",
                **facts.operation_log() | {"errorCodes": run.error_codes, "outcome": run.outcome},
                ended=run.ended,
                payloads=run.payloads,
                durationMs=round((time.perf_counter() - run.started) * 1000, 1),
                clientName=self.client_name,
            )

    async def _operate(
        self, operation: _Operation, payload: dict[str, Any], run: _OperationRun
    ) -> None:
        runner: OperationRunner = self.websocket.state.runner
        try:
            params = params_from_body(orjson.dumps(payload))
            if not isinstance(params, GraphQLParams):  # pragma: no cover - batch_max is 0
                raise Refusal(400, "One operation per subscribe message.")
            run.operation_name = (params.operation_name or "")[:64] or None
            prepared = await runner.prepare(self._call(params))
            operation.kind = "subscription" if prepared.subscription else "query"
            async with self._operation_slot(prepared):
                admitted = runner.admit_stream(prepared)
                if isinstance(admitted, Answer):
                    await self._refuse(operation.id, orjson.loads(admitted.body)["errors"], run)
                    return
                async with await runner.stream(prepared, admitted) as payloads:
                    await self._relay(operation.id, payloads, run)
        except OperationRefused as refused:
            await self._refuse(operation.id, refusal_payload(refused.errors)["errors"], run)
        except Refusal as refusal:
            await self._refuse(operation.id, _errors(refusal), run)

    async def _refuse(
        self, operation_id: str, errors: list[dict[str, Any]], run: _OperationRun
    ) -> None:
        run.refused(errors)
        await self._send({"type": "error", "id": operation_id, "payload": errors})

    @contextlib.asynccontextmanager
    async def _operation_slot(self, prepared: PreparedCall) -> Any:
        """Unless it is a subscription (those have their own bounds), one of the caller's
        stream slots for the operation's duration (shared with HTTP's streamed responses)."""
        if prepared.subscription:
            yield
            return
        key = prepared.caller.identity if prepared.caller is not None else NO_CALLER
        self.streams.acquire(key)  # raises Refusal (RATE_LIMITED) past the caller's bound
        try:
            yield
        finally:
            self.streams.release(key)

    async def _relay(self, operation_id: str, payloads: PayloadStream, run: _OperationRun) -> None:
        first = True
        while (payload := await payloads.next()) is not None:
            refused = "data" not in payload and "incremental" not in payload
            if first and (refused or (payloads.subscription and payload.get("data") is None)):
                # Failed before its first payload (variables), or a subscription refused at
                # once (limits, credentials, a bad filter): an error, not an event.
                await self._refuse(operation_id, payload.get("errors", []), run)
                return
            first = False
            run.sent(payload)
            await self._send({"type": "next", "id": operation_id, "payload": payload})
        if payloads.subscription and self._server_stopping():
            # Ended by shutdown (the change feeds close first): no ``complete``, so the
            # client subscribes again once it has reconnected (``_end_for_shutdown``).
            return
        await self._send({"type": "complete", "id": operation_id})

    def _call(self, params: GraphQLParams) -> OperationCall:
        return OperationCall(
            params=params, authorization=self.authorization, client_name=self.client_name
        )

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEP_ALIVE_SECONDS)
            self._send_now({"type": "ping"})

    async def _send(self, message: dict[str, Any]) -> None:
        """An operation's message, in order: waits for room in the outbox (backpressure)."""
        await self.outbox.put(orjson.dumps(message).decode())

    def _send_now(self, message: dict[str, Any]) -> None:
        """A message of the reader's or the keep-alive's: never waits; no room in the outbox
        means the client does not read, and the connection is closed."""
        try:
            self.outbox.put_nowait(orjson.dumps(message).decode())
        except asyncio.QueueFull:
            raise _Closing(1008, "Too many unsent messages: the client does not read") from None

    async def _write(self) -> None:
        """The one writer: each message within the write timeout, else the connection is
        closed (a client that does not read holds nothing for long)."""
        timeout = self.endpoint.write_timeout
        while True:
            text = await self.outbox.get()
            try:
                async with asyncio.timeout(timeout):
                    await self._write_now(text)
            except TimeoutError:
                raise _Closing(
                    1008, "A message waited too long: the client does not read"
                ) from None

    async def _write_now(self, text: str) -> None:
        if self.websocket.application_state is WebSocketState.CONNECTED:
            await self.websocket.send_text(text)

    def _server_stopping(self) -> bool:
        changes: ChangeFeeds | None = getattr(self.websocket.state, "changes", None)
        return self.streams.closing.is_set() or (changes is not None and changes.closed)

    async def _end_for_shutdown(self) -> None:
        """Stop every operation, then tell each query cut short that it was (an ``error``);
        subscriptions are told nothing, so that the client resubscribes after reconnecting.
        An operation whose kind is not known yet sent nothing either: it is retried too."""
        running = list(self.operations.values())
        await self._stop_operations()
        cut_short = [
            op.id
            for op in running
            if op.kind == "query" and op.task is not None and op.task.cancelled()
        ]
        with contextlib.suppress(TimeoutError, OSError, RuntimeError):
            async with asyncio.timeout(CLOSE_WRITE_SECONDS):
                for operation_id in cut_short:
                    message = {"type": "error", "id": operation_id, "payload": [SHUTDOWN_ERROR]}
                    await self._write_now(orjson.dumps(message).decode())

    async def _stop_operations(self) -> None:
        tasks = [op.task for op in self.operations.values() if op.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _close(self, code: int, reason: str) -> None:
        self.close_code = code
        if self.websocket.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_WRITE_SECONDS):
                    await self.websocket.close(code, reason)


class _OperationRun:
    """What one WebSocket operation did, for its log line."""

    def __init__(self, facts: RequestFacts) -> None:
        self.facts = facts
        self.started = time.perf_counter()
        self.operation_name: str | None = None
        self.payloads = 0
        self.ended = "complete"
        self.error_codes: list[str] = []  # the codes of the errors sent, in order, once each

    @property
    def outcome(self) -> str:
        """``success``, ``error`` (it ran, with errors), ``rejected`` (it never ran) or
        ``cancelled`` (stopped before its end: the client's ``complete``, its leaving,
        shutdown)."""
        if self.ended == "cancelled":
            return "cancelled"
        if self.ended == "error" and not self.payloads:
            return "rejected"
        return "error" if self.error_codes else "success"

    def sent(self, payload: dict[str, Any]) -> None:
        self.payloads += 1
        errors = list(payload.get("errors") or ())
        for part in payload.get("incremental") or ():
            errors += part.get("errors") or ()
        self._note(errors)

    def refused(self, errors: list[dict[str, Any]]) -> None:
        self.ended = "error"
        self._note(errors)

    def _note(self, errors: list[dict[str, Any]]) -> None:
        for error in errors:
            code = str((error.get("extensions") or {}).get("code"))
            if code not in self.error_codes:
                self.error_codes.append(code)


def _errors(refusal: Refusal) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = orjson.loads(refusal.body())["errors"]
    return errors

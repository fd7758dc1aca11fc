"""``numbers-gateway serve`` under attack, as a real process on loopback: connections shared
fairly between client addresses, garbage of every kind answered promptly and in the contract's
shape, every log line JSON (uvicorn's too), and ``/metrics`` on its own listener."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from tests.processes import ServedProcess, gateway_process

COUNTS = {"query": "{ numberCounts { total } }"}
# Every answer below must come well within this; the documented head/body timeouts are longer.
PROMPT = 3.0


def _address(server: ServedProcess) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


@contextmanager
def _sockets(server: ServedProcess, source: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections to ``server`` from the loopback address ``source``, sending
    nothing."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source, 0))
            sock.connect(_address(server))
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def _exchange(
    server: ServedProcess, raw: bytes, source: str = "127.0.0.1", *, until_close: bool = False
) -> bytes:
    """Send ``raw``, read until the server closes (or, unless ``until_close``, the first
    answer is complete); bounded."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROMPT)
        sock.bind((source, 0))
        sock.connect(_address(server))
        sock.sendall(raw)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
            if not until_close and _complete(received):
                break
        return received


def _read_answer(sock: socket.socket) -> bytes:
    """One whole answer (head and Content-Length body) from ``sock``."""
    received = b""
    while not _complete(received):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def _request_from(source: str, origin: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=PROMPT * 3) as client:
        return client.post(f"{origin}/graphql", json=COUNTS)


@pytest.mark.e2e
def test_one_client_holding_idle_sockets_does_not_lock_out_another() -> None:
    env = {
        "GATEWAY_MAX_CONNECTIONS": "300",
        "GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "200",
        "GATEWAY_HEADER_TIMEOUT": "60",  # the sockets stay idle for the whole test
    }
    # 127.0.0.2 opens 400 sockets (200 are held, the rest refused at once), 127.0.0.4 100:
    # the server is full (200 + 100 = 300), so new clients' connections close the heaviest
    # client's idle ones instead of being refused.
    with (
        gateway_process(env=env) as server,
        _sockets(server, "127.0.0.2", 400) as hog,
        _sockets(server, "127.0.0.4", 100),
    ):
        answers = [_request_from("127.0.0.3", server.origin) for _ in range(50)]
        assert [answer.status_code for answer in answers] == [200] * 50
        assert all(a.json()["data"]["numberCounts"]["total"] == 1000 for a in answers)
        refused = 0
        for sock in hog:
            sock.setblocking(False)
            with suppress(BlockingIOError, ConnectionError):
                refused += sock.recv(4096).startswith(b"HTTP/1.1 503")
        # Past its bound the hog is told 503; sockets closed to make room get no answer.
        assert refused >= 200, "past its bound the hog was refused"
    assert server.process.returncode == 0


@pytest.mark.e2e
def test_connections_past_the_per_client_bound_are_refused_and_others_are_served() -> None:
    env = {"GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "5", "GATEWAY_HEADER_TIMEOUT": "60"}
    with gateway_process(env=env) as server, _sockets(server, "127.0.0.2", 5):
        refused = _exchange(server, b"", source="127.0.0.2")
        assert refused.startswith(b"HTTP/1.1 503")
        body = json.loads(refused.partition(b"\r\n\r\n")[2])
        assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert _request_from("127.0.0.3", server.origin).status_code == 200


@pytest.mark.e2e
def test_a_trusted_proxy_s_connections_count_for_the_forwarded_client() -> None:
    env = {
        "GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "2",
        "GATEWAY_FORWARDED_ALLOW_IPS": "127.0.0.0/8",
        "GATEWAY_HEADER_TIMEOUT": "60",
    }
    body = json.dumps(COUNTS).encode()

    def request(client: bytes) -> bytes:
        return (
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Forwarded-For: "
            + client
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    with gateway_process(env=env) as server:
        held: list[socket.socket] = []
        try:
            # The proxy holds many connections; each counts for the client it forwards.
            answers = []
            for client in (b"203.0.113.7", b"203.0.113.7", b"203.0.113.7", b"203.0.113.8"):
                sock = socket.create_connection(_address(server), timeout=PROMPT)
                held.append(sock)
                sock.sendall(request(client))
                answers.append(_read_answer(sock))
            assert [_shape(answer)[0] for answer in answers] == [200, 200, 503, 200]
            refusal = json.loads(_shape(answers[2])[1])
            assert refusal["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        finally:
            for sock in held:
                sock.close()


def _shape(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    return status, body


GARBAGE: dict[str, bytes] = {
    "not http": b"GARBAGE\r\n\r\n",
    "bad request line": b"GET /graphql HTTP/9.9\r\nHost: x\r\n\r\n",
    "invalid chunked": (
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nnope\r\n0\r\n\r\n"
    ),
    "both lengths": (
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "huge header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    "websocket junk": (
        b"GET /graphql HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: not-base64\r\nSec-WebSocket-Version: 99\r\n\r\n"
    ),
}


def _post(body: bytes, content_type: bytes = b"application/json", version: bytes = b"1.1") -> bytes:
    return (
        b"POST /graphql HTTP/"
        + version
        + b"\r\nHost: x\r\nContent-Type: "
        + content_type
        + b"\r\nApollo-Require-Preflight: 1\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


GRAPHQL_SHAPED: dict[str, bytes] = {
    "deep json": _post(b"[" * 100_000 + b"]" * 100_000),
    "deep object": _post(b'{"query": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}"),
    "latin-1 body": _post('{"query": "{ numberCounts { total } }é"}'.encode("latin-1")),
    "utf-16 body": _post('{"query": "{ numberCounts { total } }"}'.encode("utf-16")),
    "lone surrogate": _post(b'{"query": "\\ud800"}'),
    "wrong media type": _post(b"query=1", b"application/x-www-form-urlencoded"),
    "text/plain": _post(b'{"query": "{ numberCounts { total } }"}', b"text/plain"),
    "wrong method": b"DELETE /graphql HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "http/1.0": _post(b"{", version=b"1.0"),
    "truncated": (
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Apollo-Require-Preflight: 1\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{"
    ),
}


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_garbage_gets_prompt_answers_in_the_contract_s_shape() -> None:
    # The body deadline is the documented bound a truncated body waits for.
    env = {"GATEWAY_BODY_TIMEOUT": "1", "GATEWAY_HEADER_TIMEOUT": "2"}
    with gateway_process(env=env) as server:
        for name, raw in GARBAGE.items():
            started = time.monotonic()
            status, _ = _shape(_exchange(server, raw))
            elapsed = time.monotonic() - started
            assert 400 <= status < 500 or status == 0, (name, status)
            assert elapsed < PROMPT, (name, elapsed)
        for name, raw in GRAPHQL_SHAPED.items():
            started = time.monotonic()
            status, body = _shape(_exchange(server, raw))
            elapsed = time.monotonic() - started
            assert 400 <= status < 500 or status == 200, (name, status, body[:200])
            error = json.loads(body)["errors"][0]
            assert isinstance(error["extensions"]["code"], str), name
            assert elapsed < PROMPT, (name, elapsed)
        # Pipelined requests are answered in order on one connection.
        one = _post(json.dumps(COUNTS).encode()).replace(b"Connection: close\r\n", b"")
        answer = _exchange(server, one + one + _post(json.dumps(COUNTS).encode()), until_close=True)
        assert answer.count(b"HTTP/1.1 200") == 3
        # Still serving, and every line it wrote is JSON (uvicorn's warnings included).
        assert httpx.post(f"{server.origin}/graphql", json=COUNTS).status_code == 200
        server.wait_for(
            lambda: any("Invalid HTTP request" in line for line in server.lines),
            "uvicorn logs the invalid request",
        )
    for line in server.lines:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert "event" in entry, line


@pytest.mark.e2e
def test_metrics_are_served_only_on_the_metrics_port() -> None:
    with gateway_process(env={"GATEWAY_METRICS_PORT": "0"}) as server:
        [listening] = server.events("metrics_listening")
        scraped = httpx.get(listening["url"], timeout=PROMPT)
        assert scraped.status_code == 200
        assert "gateway_http_requests_total" in scraped.text or "# TYPE" in scraped.text
        assert httpx.get(f"{server.origin}/metrics", timeout=PROMPT).status_code == 404
        assert httpx.post(server.url, json=COUNTS, timeout=PROMPT * 3).status_code == 200
        # The same registry: the request just served is counted on the metrics listener.
        assert 'route="/graphql"' in httpx.get(listening["url"], timeout=PROMPT).text
    assert server.process.returncode == 0, "SIGTERM drains both listeners and exits 0"


@pytest.mark.e2e
def test_idle_sockets_on_the_metrics_port_do_not_starve_a_scrape() -> None:
    # 100 sockets that never send a head: past uvicorn's limit_concurrency (64) every scrape
    # was a 503; the guarded protocol closes the heaviest client's idle sockets to make room.
    env = {"GATEWAY_METRICS_PORT": "0", "GATEWAY_HEADER_TIMEOUT": "60"}
    with gateway_process(env=env) as server:
        [listening] = server.events("metrics_listening")
        parts = urlsplit(listening["url"])
        assert parts.hostname is not None
        assert parts.port is not None
        held: list[socket.socket] = []
        try:
            for _ in range(100):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.2", 0))
                sock.connect((parts.hostname, parts.port))
                held.append(sock)
            transport = httpx.HTTPTransport(local_address="127.0.0.3")
            with httpx.Client(transport=transport, timeout=PROMPT) as client:
                scrapes = [client.get(listening["url"]).status_code for _ in range(5)]
            assert scrapes == [200] * 5
        finally:
            for sock in held:
                sock.close()
    assert server.process.returncode == 0


@pytest.mark.e2e
def test_production_without_a_metrics_port_serves_no_metrics_and_says_so() -> None:
    with gateway_process(
        env={"GATEWAY_ENV": "production", "GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9/v1"}
    ) as server:
        assert server.events("metrics_not_served")
        assert httpx.get(f"{server.origin}/metrics", timeout=PROMPT).status_code == 404
        assert httpx.get(f"{server.origin}/healthz", timeout=PROMPT).status_code == 200


@pytest.mark.e2e
def test_a_websocket_message_is_bounded_as_a_body_is_before_it_is_buffered() -> None:
    """``serve`` tells uvicorn the body bound for WebSocket messages too: a message past it is
    refused with 1009 by the protocol layer (never buffered whole up to uvicorn's 16 MiB), and
    one under it is served."""
    with gateway_process(env={"GATEWAY_MAX_BODY_BYTES": "65536"}) as server:
        address = server.origin.replace("http://", "ws://") + "/graphql"

        async def send(size: int) -> tuple[int | None, str, dict[str, object] | None]:
            async with websockets.connect(
                address,
                subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                max_size=None,
            ) as client:
                init = {
                    "type": "connection_init",
                    "payload": {"Authorization": "Bearer demo-admin"},
                }
                await client.send(json.dumps(init))
                assert json.loads(await client.recv())["type"] == "connection_ack"
                query = "{ numberCounts { total } }" + " " * size
                message = {"type": "subscribe", "id": "1", "payload": {"query": query}}
                await client.send(json.dumps(message))
                try:
                    return None, "", json.loads(await client.recv())
                except websockets.ConnectionClosed as closed:
                    received = closed.rcvd
                    return (received.code, received.reason, None) if received else (None, "", None)

        code, reason, answer = asyncio.run(send(200_000))
        assert code == 1009
        # uvicorn's protocol layer names the frame limit; the endpoint's own check (the second
        # line of defence, after the whole message is buffered) would say "Message larger".
        assert "frame exceeds limit of 65536 bytes" in reason
        code, reason, answer = asyncio.run(send(1_000))
        assert code is None
        assert answer is not None
        assert answer["type"] == "next"
    assert server.process.returncode == 0

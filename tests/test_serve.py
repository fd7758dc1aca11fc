"""``numbers-gateway serve`` as a process: it says where it listens once it can answer, takes
its serving options as flags, refuses bad ones in one line, and drains on SIGTERM."""

from __future__ import annotations

import gc
import re
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from gateway.server.cli import YOUNG_COLLECTION_THRESHOLD, main, settle_heap
from tests.processes import gateway_process, simulator_process

COUNTS = "query Counts { numberCounts { total } }"


def metric_value(origin: str, name: str) -> float:
    for line in httpx.get(f"{origin}/metrics", timeout=5).text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.e2e
def test_serve_announces_its_url_once_bound_and_honours_the_serving_flags() -> None:
    with gateway_process(
        "--root-path",
        "/numbers",
        "--forwarded-allow-ips",
        "127.0.0.1",
        "--shutdown-timeout",
        "5",
    ) as server:
        # The announced URL has the real port (asked for 0: it exists only once bound) and
        # the proxy's prefix.
        announced = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/numbers/graphql", server.url)
        assert announced is not None
        assert int(announced[1]) > 0
        # Served on the loop uvicorn chooses (uvloop, installed with uvicorn[standard]), not
        # the asyncio loop ``asyncio.run`` would have made.
        [listening] = server.events("gateway_listening")
        assert listening["event_loop"] == "uvloop"
        # The proxy strips the prefix; the app routes and logs the path it knows.
        response = httpx.post(
            f"{server.origin}/graphql",
            json={"query": COUNTS},
            headers={"X-Forwarded-Proto": "https", "X-Request-ID": "serve-1"},
            timeout=30,
        )
        assert response.status_code == 200
        assert response.json()["data"]["numberCounts"]["total"] == 1000
        [line] = server.wait_for(
            lambda: [e for e in server.events("http_request") if e["requestId"] == "serve-1"],
            "the request is logged",
        )
        assert line["route"] == "/graphql"
        assert line["operationName"] == "Counts"
    assert server.process.returncode == 0


@pytest.mark.e2e
def test_sigterm_lets_an_in_flight_request_finish_then_exits_cleanly() -> None:
    outcome: dict[str, Any] = {}
    with (
        simulator_process("--fault", "latency=1") as upstream,
        gateway_process(env={"GATEWAY_UPSTREAM_URL": upstream.url}) as server,
    ):

        def ask() -> None:
            try:
                outcome["response"] = httpx.post(
                    server.url,
                    json={"query": COUNTS},
                    headers={"Authorization": "Bearer demo-admin"},
                    timeout=30,
                )
            except httpx.HTTPError as exc:  # pragma: no cover - reported below
                outcome["error"] = exc

        caller = threading.Thread(target=ask)
        caller.start()
        server.wait_for(
            lambda: metric_value(server.origin, "gateway_upstream_in_flight") == 1,
            "the request waits on the slow upstream",
        )
        sent_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        caller.join(timeout=30)
        code = server.process.wait(timeout=30)
    assert "error" not in outcome, outcome
    response = outcome["response"]
    assert response.status_code == 200
    assert response.json()["data"] == {"numberCounts": {"total": 1000}}
    assert code == 0
    assert time.monotonic() - sent_at < 15
    [line] = [e for e in server.events("http_request") if e["route"] == "/graphql"]
    assert line["status"] == 200
    assert line["durationMs"] >= 900  # it really was in flight when the signal came


@pytest.mark.parametrize(
    ("flags", "env", "variable"),
    [
        (["--workers", "0"], {}, "GATEWAY_WORKERS"),
        ([], {"GATEWAY_WORKERS": "many"}, "GATEWAY_WORKERS"),
        (["--forwarded-allow-ips", "proxy.local"], {}, "GATEWAY_FORWARDED_ALLOW_IPS"),
        (["--shutdown-timeout", "-1"], {}, "GATEWAY_SHUTDOWN_TIMEOUT"),
        (["--root-path", "numbers/"], {}, "GATEWAY_ROOT_PATH"),
        ([], {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            [],
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_bad_serving_options_stop_start_up_with_one_line(
    flags: list[str],
    env: dict[str, str],
    variable: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--port", "0", *flags]) == 2  # checked before anything starts
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"numbers-gateway: {variable}")


@pytest.mark.e2e
def test_workers_share_the_port_and_stop_on_sigterm() -> None:
    with gateway_process("--workers", "2") as server:
        [listening] = server.events("gateway_listening")
        assert listening["workers"] == 2
        assert listening["event_loop"] == "uvloop"  # installed with uvicorn[standard]
        for _ in range(4):
            response = httpx.post(server.url, json={"query": COUNTS}, timeout=30)
            assert response.status_code == 200
            assert response.json()["data"]["numberCounts"]["total"] == 1000
    assert server.process.returncode == 0


@pytest.mark.e2e
def test_serve_bounds_connections_and_request_heads() -> None:
    """``serve`` applies GATEWAY_MAX_CONNECTIONS and GATEWAY_HEADER_TIMEOUT: idle sockets are
    answered 408 and closed, and at the bound a new connection closes the oldest idle one
    (silently: an unasked 503 could be read as the answer to a request crossing it) to take
    its place."""
    import socket

    env = {"GATEWAY_HEADER_TIMEOUT": "0.5", "GATEWAY_MAX_CONNECTIONS": "3"}
    with gateway_process(env=env) as server:
        host, port = server.origin.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
        try:
            with socket.create_connection((host, int(port)), timeout=10) as extra:
                assert held[0].recv(4096) == b"", "the oldest idle one, closed without a word"
                for connection in [*held[1:], extra]:
                    answer = connection.recv(4096)
                    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
                    assert connection.recv(4096) == b"", "and the connection is closed"
        finally:
            for connection in held:
                connection.close()
        assert httpx.get(f"{server.origin}/healthz", timeout=10).status_code == 200


def test_settling_the_heap_freezes_what_was_built_and_widens_the_young_generation() -> None:
    """``serve`` settles the heap once the app is built: what exists is frozen out of the
    collector's reach, and young collections come every ``YOUNG_COLLECTION_THRESHOLD``
    allocations (the older generations' thresholds kept)."""
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

"""A rolling deploy keeps every subscriber (issue 27): the topology of ``compose.yaml`` as real
processes (``tests/processes.py``): one ``numbers-gateway simulator``, one ``redis-server``,
two ``serve`` replicas sharing both. The clients are the real Node packages
(``tests/js/stream-clients.mjs``, with their own retries): graphql-sse (distinct connections)
and graphql-ws subscribed through replica A, graphql-ws through replica B.

Replica A is restarted as an orchestrator does it (SIGTERM, then a new process on the same
address). Its clients must resume by themselves: graphql-ws reconnects after the 1012 close
and subscribes again; graphql-sse subscribes again after its stream ends without
``complete`` (either library takes a ``complete`` as the end and would exit early, failing the
run). Once both have their new baseline (``SYNCED``) a change is made through the simulator
(``POST /_simulator/changes``), and every client, B's included, receives it.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.node_packages import require_node, start_node
from tests.processes import ServedProcess, gateway_process, simulator_process

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(300)]

TOKEN = "demo-admin"
SECRET = "a-cache-key-secret-both-replicas-share-0123456789"
WATCH = """subscription($filter: PhoneNumberFilter) {
  phoneNumberChanges(filter: $filter) { kind number { phoneNumber } previous { phoneNumber } } }"""
LINE_BOUND = 90.0  # seconds a client may print nothing (its retries back off); a backstop
RETRIES = 8  # each client's reconnection attempts: more than a restart takes


class Client:
    """One Node subscription client; its stdout lines (JSON) read in the background."""

    def __init__(self, name: str, url: str, location: str, stop_at: str) -> None:
        self.name = name
        self.process = start_node(
            "stream-clients.mjs", "--client", name, "--url", url, "--query", WATCH,
            "--variables", json.dumps({"filter": {"locationId": location}}),
            "--token", TOKEN, "--stop-at", stop_at, "--retry-attempts", str(RETRIES),
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def next(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=LINE_BOUND)
        except queue.Empty:
            pytest.fail(f"{self.name} printed nothing for {LINE_BOUND:g}s", pytrace=False)
        if line is None:
            code = self.process.wait(timeout=10)
            assert self.process.stderr is not None
            pytest.fail(
                f"{self.name} exited ({code}) early: {self.process.stderr.read().decode()}",
                pytrace=False,
            )
        return line

    def change(self) -> dict[str, Any]:
        event: dict[str, Any] = self.next()["event"]["phoneNumberChanges"]
        return event

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def graphql(gateway: ServedProcess, query: str) -> dict[str, Any]:
    response = httpx.post(
        gateway.url,
        json={"query": query},
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    return body["data"]


def a_location_and_a_number(gateway: ServedProcess) -> tuple[str, str]:
    nodes = graphql(
        gateway, "{ phoneNumbers(page: {first: 200}) { nodes { phoneNumber location { id } } } }"
    )["phoneNumbers"]["nodes"]
    numbered = next(node for node in nodes if node["phoneNumber"])
    return numbered["location"]["id"], numbered["phoneNumber"]


def test_a_restarted_replica_s_subscribers_resume_and_get_later_changes(
    redis_server: Any,
) -> None:
    require_node()
    with ExitStack() as stack:
        simulator = stack.enter_context(simulator_process())
        env = {
            "GATEWAY_UPSTREAM_URL": simulator.url,
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_CACHE_KEY_SECRET": SECRET,
            "GATEWAY_CHANGES_POLL_INTERVAL": "1",
            "GATEWAY_CACHE_TTL": "0",
        }
        first_a = ExitStack()
        replica_a = first_a.enter_context(gateway_process(env=env))
        replica_b = stack.enter_context(gateway_process(env=env))
        location, number = a_location_and_a_number(replica_b)
        clients = [
            Client("graphql-sse", replica_a.url, location, number),
            Client("graphql-ws", replica_a.url, location, number),
            Client("graphql-ws", replica_b.url, location, number),
        ]
        for client in clients:
            stack.callback(client.stop)
        for client in clients:
            assert client.change()["kind"] == "SYNCED", client.name

        # The deploy: A stops (SIGTERM, its drain), and a new A starts on its address.
        port = urlsplit(replica_a.url).port
        assert port is not None
        replica_a.process.send_signal(signal.SIGTERM)
        assert replica_a.process.wait(timeout=30) == 0, replica_a.tail(30)
        first_a.close()
        [stopped] = replica_a.events("gateway_stopped")
        assert stopped["drained"]["subscriptions"] == 2, stopped
        assert stopped["drained"]["websockets"] == 1, stopped
        stack.enter_context(gateway_process("--port", str(port), env=env))

        # A's clients resume by themselves: a new baseline on the new A.
        for client in clients[:2]:
            assert client.change()["kind"] == "SYNCED", f"{client.name} subscribed again"
        # Then a change reaches every client: A's through the new A, B's as before.
        response = httpx.post(
            f"{simulator.origin}/_simulator/changes",
            json={"action": "state", "phoneNumber": number, "state": "INACTIVE"},
            timeout=30,
        )
        assert response.status_code < 300, response.text
        for client in clients:
            event = client.change()
            assert (event["kind"], event["number"]["phoneNumber"]) == ("UPDATED", number), (
                client.name,
                event,
            )
            assert client.next() == {"done": True}
            assert client.process.wait(timeout=30) == 0, client.name

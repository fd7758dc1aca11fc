"""Incremental delivery and the change feed as frontends see them, against real processes.

A real ``numbers-gateway simulator`` and ``numbers-gateway serve`` (``tests/processes.py``);
the clients are the real Node packages (``tests/js/stream-clients.mjs``, pinned in
``tests/js/package.json``):

- ``@defer`` and ``@stream`` (a fragment deferred inside streamed items too): Apollo Client 3
  (``deferSpec=20220824``: each streamed item arrives as a ``data`` entry, the only kind it
  merges; with its normalized cache too), Apollo Client 4 with each of its handlers
  (``Defer20220824Handler``, ``GraphQL17Alpha9Handler`` asking for ``incrementalSpec=v0.2``),
  and urql (a bare ``multipart/mixed``: ``items`` entries), each answer equal to the plain
  one or to the cursor walk;
- subscriptions: the ``graphql-ws``, ``graphql-sse`` and Apollo Client (``GraphQLWsLink``)
  clients, and Apollo Client 4's and 3's own ``HttpLink`` over Apollo's multipart
  subscription protocol.

A change is made through the simulator (``POST /_simulator/changes``) once the feed's
``SYNCED`` has arrived; the event must arrive exactly once: a second change, made after the
first event arrived, ends the run, and the first change's events are counted.

Graceful shutdown: SIGTERM to ``serve`` ends an open multipart stream (with its final payload)
and an SSE subscription (with no further event, so that graphql-sse's client subscribes
again: it takes ``complete`` as the end) at once, and the process exits 0, well inside
``STOP_BOUND`` (uvicorn alone would wait for them until ``--shutdown-timeout``). An Apollo
Client subscribed over multipart behind a ``RetryLink`` subscribes again after a restart (the
gateway ends it with Apollo's transport-level error, which RetryLink retries).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.node_packages import run_node_json, start_node
from tests.processes import STOP_BOUND, ServedProcess, gateway_process, simulator_process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ENTRIES = 5000  # the simulator's org: three upstream pages of 2,000
TOKEN = "demo-admin"
WATCH = """subscription($filter: PhoneNumberFilter) {
  phoneNumberChanges(filter: $filter) { kind number { phoneNumber } previous { phoneNumber } } }"""
LINE_BOUND = 60.0  # seconds; only a backstop against a hang


@dataclass(frozen=True)
class Stack:
    simulator: ServedProcess
    gateway: ServedProcess

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(
            self.gateway.url,
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
            timeout=60,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        assert "errors" not in body, body
        return body

    def change(self, change: dict[str, Any]) -> None:
        response = httpx.post(f"{self.simulator.origin}/_simulator/changes", json=change)
        assert response.status_code < 300, response.text


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with (
        simulator_process("--size", str(ENTRIES)) as simulator,
        gateway_process(
            env={
                "GATEWAY_UPSTREAM_URL": simulator.url,
                "GATEWAY_CHANGES_POLL_INTERVAL": "1",
            }
        ) as gateway,
    ):
        yield Stack(simulator, gateway)


def cursor_walk(stack: Stack, fields: str, total: int) -> list[dict[str, Any]]:
    """Every node of the org by page.after, 2,000 at a time: what a stream must equal."""
    nodes: list[dict[str, Any]] = []
    after: str | None = None
    while len(nodes) < total:
        page = stack.graphql(
            "query($after: String) { phoneNumbers(page: {first: 2000, after: $after}) {"
            f" nodes {{ {fields} }} pageInfo {{ endCursor hasNextPage }} }} }}",
            {"after": after},
        )["data"]["phoneNumbers"]
        nodes += page["nodes"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    return nodes


def total(stack: Stack) -> int:
    count: int = stack.graphql("{ phoneNumbers { totalCount } }")["data"]["phoneNumbers"][
        "totalCount"
    ]
    return count


def test_apollo_client_receives_deferred_data_over_multipart(stack: Stack) -> None:
    query = """{ phoneNumbers(page: {first: 3}) {
      nodes { phoneNumber extension } ... @defer { totalCount } } }"""
    outcome = run_node_json(
        "stream-clients.mjs", "--client", "apollo-defer", "--url", stack.gateway.url,
        "--query", query,
    )  # fmt: skip
    results = outcome["results"]
    plain = stack.graphql(query.replace("... @defer", "..."))["data"]
    assert results[-1] == {"data": plain, "errors": []}
    # The deferred count came in a later payload: the first result had the nodes alone.
    assert "totalCount" not in results[0]["data"]["phoneNumbers"]
    assert results[0]["data"]["phoneNumbers"]["nodes"] == plain["phoneNumbers"]["nodes"]


def test_urql_receives_deferred_and_streamed_data_equal_to_the_cursor_walk(
    stack: Stack,
) -> None:
    everything = total(stack)
    query = (
        f"{{ phoneNumbers(page: {{first: {everything}}}) {{"
        " nodes @stream(initialCount: 1) { phoneNumber extension location { id } }"
        " ... @defer { totalCount } } }"
    )
    outcome = run_node_json(
        "stream-clients.mjs", "--client", "urql", "--url", stack.gateway.url, "--query", query
    )
    results = outcome["results"]
    assert len(results) > 2  # read as payloads, not one body
    assert results[0]["hasNext"] is True
    assert results[0]["nodes"] < everything
    assert results[-1] == {
        "nodes": everything, "totalCount": everything, "errors": [], "hasNext": False
    }  # fmt: skip
    walked = cursor_walk(stack, "phoneNumber extension location { id }", everything)
    streamed = outcome["data"]["phoneNumbers"]["nodes"]
    assert orjson.dumps(streamed) == orjson.dumps(walked)


def without_typename(value: Any) -> Any:
    """Apollo Client 4's cache adds ``__typename`` to every selection: compared without it."""
    if isinstance(value, dict):
        return {k: without_typename(v) for k, v in value.items() if k != "__typename"}
    if isinstance(value, list):
        return [without_typename(v) for v in value]
    return value


def plain_twin(query: str) -> str:
    return query.replace("... @defer", "...").replace(" @stream(initialCount: 1)", "")


DEFERRED_IN_NODES = """{ phoneNumbers(page: {first: 5}, filter: {ownerType: PEOPLE}) {
  nodes { phoneNumber owner { firstName ... @defer { lastName } } } ... @defer { totalCount } } }"""
STREAM_FIELDS = "phoneNumber extension owner { firstName ... @defer { lastName } }"
APOLLO_4_ACCEPT = "application/graphql-response+json,application/json;q=0.9"
APOLLO_4 = {
    "apollo4-defer20220824": f"multipart/mixed;deferSpec=20220824,{APOLLO_4_ACCEPT}",
    "apollo4-alpha9": f"multipart/mixed;incrementalSpec=v0.2,{APOLLO_4_ACCEPT}",
}


def streamed_everything(stack: Stack) -> tuple[str, dict[str, Any]]:
    """A stream of the whole org, with a fragment deferred inside its items, and the answer
    it must add up to (its nodes by the cursor walk)."""
    everything = total(stack)
    query = (
        f"{{ phoneNumbers(page: {{first: {everything}}}) {{"
        f" nodes @stream(initialCount: 1) {{ {STREAM_FIELDS} }} ... @defer {{ totalCount }} }} }}"
    )
    nodes = cursor_walk(stack, "phoneNumber extension owner { firstName lastName }", everything)
    return query, {"phoneNumbers": {"nodes": nodes, "totalCount": everything}}


@pytest.mark.parametrize("client", APOLLO_4)
def test_apollo_client_4_reads_defer_with_either_handler(stack: Stack, client: str) -> None:
    outcome = run_node_json(
        "stream-clients.mjs", "--client", client, "--url", stack.gateway.url,
        "--query", DEFERRED_IN_NODES,
    )  # fmt: skip
    assert outcome["accept"] == [APOLLO_4[client]]
    results = outcome["results"]
    assert (
        without_typename(results[-1]["data"])
        == stack.graphql(plain_twin(DEFERRED_IN_NODES))["data"]
    )
    assert results[-1]["errors"] == []
    assert "streaming" in [r["dataState"] for r in results]  # read as payloads
    streaming = next(r for r in results if r["dataState"] == "streaming")
    assert "totalCount" not in streaming["data"]["phoneNumbers"]


@pytest.mark.parametrize("client", APOLLO_4)
def test_apollo_client_4_reads_stream_with_either_handler(stack: Stack, client: str) -> None:
    query, expected = streamed_everything(stack)
    outcome = run_node_json(
        "stream-clients.mjs", "--client", client, "--url", stack.gateway.url, "--query", query
    )
    assert outcome["accept"] == [APOLLO_4[client]]
    results = outcome["results"]
    assert results[-1]["errors"] == []
    assert orjson.dumps(without_typename(results[-1]["data"])) == orjson.dumps(expected)
    streamed = [len(r["data"]["phoneNumbers"]["nodes"]) for r in results if r["data"]]
    assert len(set(streamed)) > 2  # the items arrived over several payloads


@pytest.mark.parametrize("fetch_policy", ["no-cache", "cache-first"])
def test_apollo_client_3_reads_stream_as_named_defer_spec_sends_it(
    stack: Stack, fetch_policy: str
) -> None:
    """Apollo Client 3 merges only ``data`` entries (an ``items`` entry failed the query with
    "Cannot read properties of undefined (reading '__typename')"): naming
    ``deferSpec=20220824``, as it does, it gets each streamed item as a ``data`` entry."""
    first = 500 if fetch_policy == "cache-first" else 2000  # its cache merges in O(n^2)
    query = (
        f"{{ phoneNumbers(page: {{first: {first}}}) {{"
        f" nodes @stream(initialCount: 1) {{ {STREAM_FIELDS} }} ... @defer {{ totalCount }} }} }}"
    )
    outcome = run_node_json(
        "stream-clients.mjs", "--client", "apollo-defer", "--url", stack.gateway.url,
        "--query", query, "--until-nodes", str(first), "--fetch-policy", fetch_policy,
    )  # fmt: skip
    assert outcome["accept"] == ["multipart/mixed;deferSpec=20220824,application/json"]
    results = outcome["results"]
    assert results[-1]["errors"] == []
    plain = stack.graphql(plain_twin(query))["data"]
    assert without_typename(results[-1]["data"]) == plain
    assert len({len(r["data"]["phoneNumbers"]["nodes"]) for r in results}) > 2


def test_urql_reads_defer_in_incremental_spec_v0_2(stack: Stack) -> None:
    """urql reads graphql-core's own format too when asked for it (its default Accept names a
    bare multipart/mixed: the 2022 format, above)."""
    outcome = run_node_json(
        "stream-clients.mjs", "--client", "urql", "--url", stack.gateway.url,
        "--query", DEFERRED_IN_NODES, "--accept", "multipart/mixed;incrementalSpec=v0.2",
    )  # fmt: skip
    assert outcome["results"][0]["hasNext"] is True
    assert outcome["results"][-1]["hasNext"] is False
    assert outcome["data"] == stack.graphql(plain_twin(DEFERRED_IN_NODES))["data"]


class NodeLines:
    """A Node script's stdout, one JSON object a line, read in the background."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
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
            pytest.fail("the client printed nothing for a minute", pytrace=False)
        if line is None:
            code = self.process.wait(timeout=10)
            pytest.fail(f"the client exited ({code}) early", pytrace=False)
        return line

    def event(self) -> dict[str, Any]:
        """The next event (a RetryLink's ``retry`` lines are skipped)."""
        while "event" not in (line := self.next()):
            pass
        change: dict[str, Any] = line["event"]["phoneNumberChanges"]
        return change

    def until(self, wanted: str) -> list[dict[str, Any]]:
        """The events up to and including the first whose number is ``wanted``."""
        events = []
        while True:
            event = without_typename(self.event())
            events.append(event)
            if (event.get("number") or {}).get("phoneNumber") == wanted:
                return events


def assigned_numbers(stack: Stack) -> tuple[str, list[str]]:
    """A location, and the numbers assigned to someone there."""
    nodes = stack.graphql(
        "{ phoneNumbers(page: {first: 500}) { nodes { phoneNumber owner { id } location { id } } } }"
    )["data"]["phoneNumbers"]["nodes"]
    assigned = [n for n in nodes if n["phoneNumber"] and n["owner"]]
    location = assigned[0]["location"]["id"]
    return location, [n["phoneNumber"] for n in assigned if n["location"]["id"] == location]


SUBSCRIBERS = ["graphql-ws", "graphql-sse", "apollo-ws", "apollo-multipart", "apollo3-multipart"]


@pytest.mark.parametrize("client", SUBSCRIBERS)
def test_subscription_clients_receive_each_change_once(stack: Stack, client: str) -> None:
    # Each client changes numbers of its own: the simulator is shared by the module.
    index = SUBSCRIBERS.index(client)
    location, numbers = assigned_numbers(stack)
    unassigned, updated = numbers[2 * index : 2 * index + 2]
    process = start_node(
        "stream-clients.mjs", "--client", client, "--url", stack.gateway.url,
        "--query", WATCH, "--variables", json.dumps({"filter": {"locationId": location}}),
        "--token", TOKEN, "--stop-at", updated,
    )  # fmt: skip
    lines = NodeLines(process)
    try:
        first = without_typename(lines.event())
        assert first == {"kind": "SYNCED", "number": None, "previous": None}
        stack.change({"action": "unassign", "phoneNumber": unassigned})
        seen = lines.until(unassigned)
        # Made only once the first change was seen, so every event of it came before.
        stack.change({"action": "state", "phoneNumber": updated, "state": "INACTIVE"})
        seen += lines.until(updated)
        assert lines.next() == {"done": True}
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    about = {
        number: [e["kind"] for e in seen if (e["number"] or {}).get("phoneNumber") == number]
        for number in (unassigned, updated)
    }
    assert about == {unassigned: ["UNASSIGNED"], updated: ["UPDATED"]}
    assert all(e["kind"] != "SYNCED" for e in seen)


# --- graceful shutdown ------------------------------------------------------------------------

# Big enough that the client, reading only the first payload, cannot have the rest buffered.
SHUTDOWN_ENTRIES = 50_000
BIG_STREAM = (
    f"{{ phoneNumbers(page: {{first: {SHUTDOWN_ENTRIES}}}) {{ nodes @stream(initialCount: 1) {{"
    " phoneNumber extension state phoneNumberType mainNumber tollFreeNumber esn"
    " location { id name } owner { id type firstName lastName } } } }"
)


def _read_rest(response: httpx.Response, into: bytearray) -> None:
    for chunk in response.iter_raw():
        into += chunk


def test_sigterm_ends_open_streams_and_subscriptions_with_their_final_payload() -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        simulator_process("--size", str(SHUTDOWN_ENTRIES)) as simulator,
        gateway_process(
            "--shutdown-timeout",
            str(STOP_BOUND * 3),  # uvicorn alone would hold the streams past STOP_BOUND
            env={
                "GATEWAY_UPSTREAM_URL": simulator.url,
                "GATEWAY_CHANGES_POLL_INTERVAL": "1",
            },
        ) as gateway,
        httpx.Client(timeout=LINE_BOUND) as sse_client,
        httpx.Client(timeout=LINE_BOUND) as multipart_client,
    ):
        location, _ = assigned_numbers(Stack(simulator, gateway))
        subscription = sse_client.send(
            sse_client.build_request(
                "POST",
                gateway.url,
                json={"query": WATCH, "variables": {"filter": {"locationId": location}}},
                headers={**headers, "Accept": "text/event-stream"},
            ),
            stream=True,
        )
        sse = bytearray()
        sse_chunks = subscription.iter_raw()
        while b"SYNCED" not in sse:
            sse += next(sse_chunks)
        with multipart_client.stream(
            "POST",
            gateway.url,
            json={"query": BIG_STREAM},
            headers={**headers, "Accept": "multipart/mixed"},
        ) as stream:
            assert stream.status_code == 200
            multipart = bytearray()
            chunks = stream.iter_raw()
            while b'"hasNext":true' not in multipart:
                multipart += next(chunks)
            # Every later upstream page now takes longer than the test may: the walk hangs.
            faulted = httpx.post(
                f"{simulator.origin}/_simulator/faults",
                json={"rules": [{"latency": STOP_BOUND * 3}]},
            )
            assert faulted.status_code < 300, faulted.text
            gateway.process.terminate()
            for chunk in chunks:
                multipart += chunk
        for chunk in sse_chunks:
            sse += chunk
        subscription.close()
        code = gateway.process.wait(timeout=STOP_BOUND)
    assert code == 0
    assert multipart.endswith(b"\r\n-----\r\n")
    final = orjson.loads(multipart.rsplit(b"\r\n---", 2)[-2].partition(b"\r\n\r\n")[2])
    assert final["hasNext"] is False
    assert final["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert "shutting down" in final["errors"][0]["message"]
    assert multipart.count(b'"phoneNumber"') < SHUTDOWN_ENTRIES  # ended, not completed
    assert b"event: complete" not in sse, "graphql-sse would take it as the end"
    assert sse.rstrip().endswith(b"}"), "ended after its last whole event"


@pytest.mark.parametrize("client", ["apollo-multipart", "apollo3-multipart"])
def test_apollo_multipart_subscribers_resubscribe_across_a_gateway_restart(
    stack: Stack, client: str
) -> None:
    """A rolling deploy with Apollo Client's standard helpers (HttpLink behind a RetryLink):
    SIGTERM ends the subscription with Apollo's transport-level error (``payload: null``),
    which RetryLink retries until a gateway answers on the same address again; the client
    subscribes anew (a new ``SYNCED``) and receives the next change."""
    index = 5 + ["apollo-multipart", "apollo3-multipart"].index(client)
    location, numbers = assigned_numbers(stack)
    changed = numbers[2 * index]
    env = {"GATEWAY_UPSTREAM_URL": stack.simulator.url, "GATEWAY_CHANGES_POLL_INTERVAL": "1"}
    with gateway_process(env=env) as first:
        port = urlsplit(first.url).port
        assert port is not None
        process = start_node(
            "stream-clients.mjs", "--client", client, "--url", first.url,
            "--query", WATCH, "--variables", json.dumps({"filter": {"locationId": location}}),
            "--token", TOKEN, "--stop-at", changed,
        )  # fmt: skip
        lines = NodeLines(process)
        try:
            assert without_typename(lines.event())["kind"] == "SYNCED"
            assert first.stop() == 0
            retried = lines.next()
            assert retried["retry"] == 1
            assert "shutting down" in retried["error"]
            with gateway_process("--port", str(port), env=env):
                assert without_typename(lines.event())["kind"] == "SYNCED"  # subscribed anew
                stack.change({"action": "unassign", "phoneNumber": changed})
                seen = lines.until(changed)
                assert [e["kind"] for e in seen] == ["UNASSIGNED"]
                assert lines.next() == {"done": True}
                assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()

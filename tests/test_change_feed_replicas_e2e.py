"""Two ``numbers-gateway serve`` replicas sharing change feeds through a real ``redis-server``.

Issue 21's replica promise, against real processes (``tests/processes.py``): a real simulator,
two gateways with the same Redis and cache-key secret, and an SSE subscriber on each replica
(``phoneNumberChanges`` over GraphQL over SSE, read by httpx in a thread). It proves:

* one poller's worth of upstream requests for both replicas' subscribers (the simulator's
  ``/_simulator/stats``): one per interval, not two;
* each change reaches both subscribers exactly once (the replica that polls, and the one that
  relays what it publishes);
* SIGKILL the polling replica (found by its ``gateway_change_feeds{role="polling"}``): it never
  lets go of its lease, which expires; the other replica takes the feed over within two
  intervals plus the lease, polls at one request per interval again, and its subscriber sees
  no spurious event (the snapshot lives in Redis) and the next change exactly once, and
  nothing more over the next two polls.

"Exactly once" and "nothing spurious" are proven with sentinels, not by reading for a while: a
later change is made only once an event has arrived, so every event in between would have come
before the sentinel's; after the last change, two more polls bound the read. Waits are on
conditions (a poll counted, a role in ``/metrics``), each with a bound that only stops a hang.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from gateway.changes.registry import LEASE_POLLS
from tests.processes import ServedProcess, gateway_process, simulator_process

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(180)]

TOKEN = "demo-admin"
INTERVAL = 1.0  # GATEWAY_CHANGES_POLL_INTERVAL, seconds
LEASE = LEASE_POLLS * INTERVAL  # how long a dead replica's lease outlives it
TAKEOVER = 2 * INTERVAL + LEASE  # issue 21: another replica polls within two intervals (+ lease)
BOUND = 30.0  # seconds; only a backstop against a hang
POLLS_COUNTED = 4  # polls over which the request rate is measured
SECRET = "a-cache-key-secret-shared-by-both-replicas-0123456789"
WATCH = """subscription($filter: PhoneNumberFilter) {
  phoneNumberChanges(filter: $filter) {
    kind number { phoneNumber owner { id } } previous { phoneNumber } } }"""
POLLING = re.compile(r'^gateway_change_feeds\{role="polling"\} (\S+)$', re.MULTILINE)

Found = TypeVar("Found")


def until(predicate: Callable[[], Found | None], what: str, bound: float = BOUND) -> Found:
    """``predicate()`` once truthy; fail after ``bound`` (a hang, not a timing assertion)."""
    deadline = time.monotonic() + bound
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}", pytrace=False)
        time.sleep(0.02)


class Subscriber:
    """One ``phoneNumberChanges`` subscription over SSE, its events read in a thread."""

    def __init__(self, gateway: ServedProcess, location: str) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(BOUND, read=None))
        # Each change's payload; a string says why the stream ended (a dead replica's does).
        self.events: queue.Queue[dict[str, Any] | str] = queue.Queue()
        self._url = gateway.url
        self._location = location
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        ended = "the stream completed"
        try:
            with self.client.stream(
                "POST",
                self._url,
                json={"query": WATCH, "variables": {"filter": {"locationId": self._location}}},
                headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"},
            ) as response:
                if response.status_code != 200:
                    ended = f"answered {response.status_code}: {response.read()!r}"
                    return
                kind = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        kind = line.removeprefix("event:").strip()
                    elif line.startswith("data:") and kind == "next":
                        self.events.put(orjson.loads(line.removeprefix("data:")))
        except Exception as exc:  # reported by ``next``, not lost in this thread
            ended = f"the stream failed: {exc!r}"
        finally:
            self.events.put(ended)

    def next(self) -> dict[str, Any]:
        """The next change (``data.phoneNumberChanges``); fails on errors or a closed stream."""
        try:
            payload = self.events.get(timeout=BOUND)
        except queue.Empty:
            pytest.fail("no event within the bound", pytrace=False)
        assert not isinstance(payload, str), payload
        assert "errors" not in payload, payload
        change: dict[str, Any] = payload["data"]["phoneNumberChanges"]
        return change

    def close(self) -> None:
        self.client.close()
        self._reader.join(timeout=10)


def upstream_requests(simulator: ServedProcess) -> int:
    """List requests the simulator has answered (its changes and stats are not counted)."""
    response = httpx.get(f"{simulator.origin}/_simulator/stats", timeout=BOUND)
    assert response.status_code == 200, response.text
    count: int = response.json()["requests"]
    return count


def polling_feeds(gateway: ServedProcess) -> float:
    """``gateway_change_feeds{role="polling"}`` on this replica."""
    response = httpx.get(f"{gateway.origin}/metrics", timeout=BOUND)
    assert response.status_code == 200, response.text
    text = response.text
    found = POLLING.search(text)
    assert found is not None, text
    return float(found.group(1))


def the_poller(gateways: list[ServedProcess]) -> ServedProcess | None:
    """The replica that polls the feed, once exactly one does."""
    polling = [gateway for gateway in gateways if polling_feeds(gateway) == 1]
    return polling[0] if len(polling) == 1 else None


def next_poll(simulator: ServedProcess) -> tuple[int, float]:
    """Wait for the next upstream request; its count and when it was seen."""
    before = upstream_requests(simulator)
    count = until(lambda: (n := upstream_requests(simulator)) > before and n, "the next poll")
    return count, time.monotonic()


def assert_one_poller(simulator: ServedProcess) -> None:
    """Starting at a poll, POLLS_COUNTED more requests take at least POLLS_COUNTED - 1
    intervals: one poller (one request per interval; the -1 allows for where the first poll
    fell). Two pollers would make them in about half that."""
    start, started = next_poll(simulator)
    until(
        lambda: upstream_requests(simulator) >= start + POLLS_COUNTED,
        f"{POLLS_COUNTED} more polls",
    )
    elapsed = time.monotonic() - started
    assert elapsed >= (POLLS_COUNTED - 1) * INTERVAL, (
        f"{POLLS_COUNTED} upstream requests in {elapsed:.2f}s: more than one poller"
    )


def change(simulator: ServedProcess, **body: Any) -> None:
    response = httpx.post(f"{simulator.origin}/_simulator/changes", json=body, timeout=BOUND)
    assert response.status_code == 200, response.text


def about(event: dict[str, Any]) -> tuple[str, str | None]:
    """An event's kind and the number it is about."""
    entry = event["number"] or event["previous"] or {}
    return event["kind"], entry.get("phoneNumber")


def owned_numbers(gateway: ServedProcess) -> tuple[str, list[str]]:
    """A location, and numbers assigned to someone there."""
    response = httpx.post(
        gateway.url,
        json={
            "query": "{ phoneNumbers(page: {first: 500}) {"
            " nodes { phoneNumber owner { id } location { id } } } }"
        },
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
        timeout=BOUND,
    )
    assert response.status_code == 200, response.text
    nodes = response.json()["data"]["phoneNumbers"]["nodes"]
    owned = [n for n in nodes if n["phoneNumber"] and n["owner"]]
    location = owned[0]["location"]["id"]
    return location, [n["phoneNumber"] for n in owned if n["location"]["id"] == location]


@contextmanager
def replicas(redis_url: str) -> Iterator[tuple[ServedProcess, list[ServedProcess]]]:
    """The simulator and two gateway replicas sharing Redis and the cache-key secret."""
    with simulator_process() as simulator, ExitStack() as stack:
        env = {
            "GATEWAY_UPSTREAM_URL": simulator.url,
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_CACHE_KEY_SECRET": SECRET,
            "GATEWAY_CHANGES_POLL_INTERVAL": str(int(INTERVAL)),
            "GATEWAY_CACHE_TTL": "0",
        }
        gateways = [stack.enter_context(gateway_process(env=env)) for _ in range(2)]
        yield simulator, gateways


def test_two_replicas_share_one_poller_and_the_other_takes_over_when_it_is_killed(
    redis_server: Any,
) -> None:
    with replicas(redis_server.url) as (simulator, gateways), ExitStack() as closing:
        location, numbers = owned_numbers(gateways[0])
        first, sentinel, after_takeover, last = numbers[:4]
        subscribers = [Subscriber(gateway, location) for gateway in gateways]
        for subscriber in subscribers:
            closing.callback(subscriber.close)
        for subscriber in subscribers:
            assert about(subscriber.next()) == ("SYNCED", None)

        # One replica holds the lease and polls; the other relays.
        poller = until(lambda: the_poller(gateways), "one replica polls the feed")
        survivor = next(gateway for gateway in gateways if gateway is not poller)
        on_survivor = subscribers[gateways.index(survivor)]
        assert_one_poller(simulator)

        # Each change reaches both subscribers once: the sentinel, made only after the first
        # change arrived everywhere, is the next event on both.
        change(simulator, action="unassign", phoneNumber=first)
        for subscriber in subscribers:
            assert about(subscriber.next()) == ("UNASSIGNED", first)
        change(simulator, action="state", phoneNumber=sentinel, state="INACTIVE")
        for subscriber in subscribers:
            assert about(subscriber.next()) == ("UPDATED", sentinel)
        assert polling_feeds(poller) == 1  # the same replica polled throughout

        # SIGKILL: no graceful release, the lease must expire; the survivor takes over.
        poller.process.kill()
        killed_at = time.monotonic()
        assert poller.process.wait(timeout=BOUND) < 0
        requests_at_kill = upstream_requests(simulator)
        until(lambda: upstream_requests(simulator) > requests_at_kill, "the survivor polls")
        taken_over = time.monotonic() - killed_at
        assert taken_over <= TAKEOVER, f"the survivor first polled {taken_over:.2f}s after"
        assert polling_feeds(survivor) == 1
        assert_one_poller(simulator)

        # No spurious event through the takeover (the survivor diffs against the snapshot in
        # Redis), and the next change arrives once: each sentinel is the very next event.
        change(simulator, action="unassign", phoneNumber=after_takeover)
        assert about(on_survivor.next()) == ("UNASSIGNED", after_takeover)
        change(simulator, action="unassign", phoneNumber=last)
        assert about(on_survivor.next()) == ("UNASSIGNED", last)
        # And nothing after it: two more polls start, so the first of them has told its
        # subscribers whatever it found (an interval before the second started).
        polled = upstream_requests(simulator)
        until(lambda: upstream_requests(simulator) >= polled + 2, "two more polls")
        assert on_survivor.events.empty(), on_survivor.events.get()

"""End to end through real servers: ``serve`` and ``simulator`` processes, a real HTTP client,
real sockets."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tests.processes import gateway_process, simulator_process

pytestmark = pytest.mark.e2e

EXAMPLE = (
    "{ phoneNumbers(page: {first: 5}) { nodes { phoneNumber owner { lastName } } totalCount } "
    "numberCounts { total } }"
)


def post(url: str, query: str, **headers: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/graphql", json={"query": query}, headers=headers, timeout=30)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_embedded_gateway_answers_the_readme_query_with_no_token() -> None:
    with gateway_process() as served:
        url = served.origin
        body = post(url, EXAMPLE)
        assert "errors" not in body
        assert len(body["data"]["phoneNumbers"]["nodes"]) == 5
        assert body["data"]["numberCounts"]["total"] == body["data"]["phoneNumbers"]["totalCount"]
        assert httpx.get(f"{url}/readyz").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert "gateway_upstream_requests_total" in metrics
        page = httpx.get(f"{url}/graphql", headers={"Accept": "text/html"})
        assert "phoneNumbers(page: {first: 5})" in page.text


def test_gateway_against_a_standalone_simulator() -> None:
    with (
        simulator_process() as simulator,
        gateway_process(env={"GATEWAY_UPSTREAM_URL": simulator.url}) as served,
    ):
        url = served.origin
        scoped = post(url, EXAMPLE, Authorization="Bearer demo-location-admin")
        assert "errors" not in scoped
        everything = post(url, EXAMPLE, Authorization="Bearer demo-admin")
        location_total = scoped["data"]["numberCounts"]["total"]
        assert 0 < location_total < everything["data"]["numberCounts"]["total"]
        locations = post(
            url,
            "{ phoneNumbers(page: {first: 2000}) { nodes { location { id } } } }",
            Authorization="Bearer demo-location-admin",
        )
        nodes = locations["data"]["phoneNumbers"]["nodes"]
        assert len(nodes) == location_total
        assert len({node["location"]["id"] for node in nodes}) == 1

        denied = post(url, EXAMPLE, Authorization="Bearer demo-no-scope")
        assert denied["data"] == {"phoneNumbers": None, "numberCounts": None}
        for error in denied["errors"]:
            assert error["extensions"]["code"] == "FORBIDDEN"
            assert error["extensions"]["upstreamStatus"] == 403
            assert error["extensions"]["trackingId"].startswith("ROUTER_")

        anonymous = post(url, EXAMPLE)
        assert {e["extensions"]["code"] for e in anonymous["errors"]} == {"UNAUTHENTICATED"}


def test_a_stopping_simulator_does_not_wait_out_a_latency_fault() -> None:
    """A request held by a latency fault (here ten minutes) is answered 503 when SIGTERM
    comes, and the simulator exits at once (by the signal, as uvicorn ends), logging no error."""
    with simulator_process("--fault", "latency=600") as simulator:
        held: dict[str, Any] = {}

        def ask() -> None:
            try:
                held["response"] = httpx.get(
                    f"{simulator.url}/telephony/config/numbers",
                    headers={"Authorization": "Bearer demo-admin"},
                    timeout=60,
                )
            except httpx.HTTPError as exc:
                held["error"] = exc

        caller = threading.Thread(target=ask, daemon=True)
        caller.start()
        simulator.wait_for(
            lambda: (
                httpx.get(f"{simulator.origin}/_simulator/stats", timeout=5).json().get("requests")
            ),
            "the request is held",
        )
        sent = time.monotonic()
        simulator.process.send_signal(signal.SIGTERM)
        code = simulator.process.wait(timeout=30)
        took = time.monotonic() - sent
        caller.join(timeout=10)
    assert code == -signal.SIGTERM, simulator.tail(10)
    assert took < 10, took  # not the fault's ten minutes
    response = held.get("response")
    assert response is not None, held
    assert response.status_code == 503, held
    assert response.json()["message"] == "The simulator is stopping."
    # Not cancelled by the grace's end either: uvicorn logs that as an error.
    assert '"level": "error"' not in simulator.tail(20), simulator.tail(20)

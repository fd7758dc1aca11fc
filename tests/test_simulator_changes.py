"""The simulator changing its data on demand (``POST /_simulator/changes``) and by churn, and
its controls on the gateway that embeds it (only there)."""

from __future__ import annotations

from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from gateway.server.app import create_app
from gateway.settings import load_settings
from gateway.simulator import build_demo_world, create_simulator_app
from tests.conftest import RecordingTransport, live_settings

GATEWAY = "http://gateway.test"
FIND = '{ phoneNumbers(filter: {phoneNumber: "+19995550111"}) { nodes { phoneNumber } } }'


def client_of(churn: float = 0.0) -> tuple[httpx.AsyncClient, Any]:
    world = build_demo_world(size=100, seed=5)
    app = create_simulator_app(world, churn=churn)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://webex.test",
        headers={"Authorization": "Bearer demo-admin"},
    )
    return client, app


async def numbers(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/telephony/config/numbers", params=params)
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["phoneNumbers"]
    return items


async def test_a_kept_filtered_list_and_its_counts_follow_a_change() -> None:
    """The index keeps what a filter matched (a walk's pages slice one list): a change
    between two pages is in the next one and in its counts, not the list kept before."""
    client, _app = client_of()
    async with client:
        params = {"available": "true", "details": "true", "max": "3"}
        before = (await client.get("/v1/telephony/config/numbers", params=params)).json()
        free = before["phoneNumbers"][0]["phoneNumber"]
        answer = await client.post(
            "/_simulator/changes", json={"action": "assign", "phoneNumber": free}
        )
        assert answer.status_code == 200
        after = (await client.get("/v1/telephony/config/numbers", params=params)).json()
        assert free not in [n["phoneNumber"] for n in after["phoneNumbers"]]
        assert after["phoneNumbers"][0] == before["phoneNumbers"][1]
        assert after["count"]["available"] == before["count"]["available"] - 1


async def test_assign_unassign_state_add_and_remove_are_served_at_once() -> None:
    client, _app = client_of()
    async with client:
        free = (await numbers(client, available="true"))[0]["phoneNumber"]
        answer = await client.post(
            "/_simulator/changes", json={"action": "assign", "phoneNumber": free}
        )
        assert answer.status_code == 200
        owner = answer.json()["applied"][0]["entry"]["owner"]
        assert (await numbers(client, ownerId=owner["id"]))[0]["phoneNumber"] == free
        assert free not in [n["phoneNumber"] for n in await numbers(client, available="true")]

        batch = {
            "changes": [
                {"action": "unassign", "phoneNumber": free},
                {"action": "state", "phoneNumber": free, "state": "INACTIVE"},
                {"action": "add", "phoneNumber": "+19995550100"},
            ]
        }
        assert (await client.post("/_simulator/changes", json=batch)).status_code == 200
        (entry,) = await numbers(client, phoneNumber=free)
        assert entry["state"] == "INACTIVE"
        assert "owner" not in entry
        assert len(await numbers(client, phoneNumber="+19995550100")) == 1

        removed = {"action": "remove", "phoneNumber": "+19995550100"}
        assert (await client.post("/_simulator/changes", json=removed)).status_code == 200
        assert await numbers(client, phoneNumber="+19995550100") == []
        stats = (await client.get("/_simulator/stats")).json()
        assert stats["changes"] == 5


async def test_bad_changes_are_a_clear_400() -> None:
    client, _ = client_of()
    async with client:
        for body in (
            {"action": "explode"},
            {"action": "assign"},
            {"action": "assign", "phoneNumber": "+10000000000"},
            {"action": "state", "phoneNumber": "x", "state": "GONE"},
            [1, 2],
        ):
            answer = await client.post("/_simulator/changes", json=body)
            assert answer.status_code == 400, body
            assert answer.json()["message"].startswith("change not made")
        assert (await client.post("/_simulator/changes", content=b"{")).status_code == 400


async def test_churn_makes_changes_at_its_rate_when_requests_arrive() -> None:
    client, app = client_of(churn=10)
    now = [0.0]
    app.state.simulator.churn.clock = lambda: now[0]
    app.state.simulator.churn._last = 0.0
    async with client:
        before = await numbers(client, max="2000")
        active_before = await numbers(client, max="2000", state="ACTIVE")  # a kept match
        now[0] = 3.0  # three seconds at ten a second
        after = await numbers(client, max="2000")
        # Thirty due; a few random picks may not apply, and none beyond the rate happen.
        assert 25 <= app.state.simulator.change_count <= 30
        assert before != after
        # The filtered list follows the churn too: the whole list filtered, not the one kept.
        active = [n for n in after if n.get("phoneNumber") and n.get("state") == "ACTIVE"]
        assert active != active_before
        assert await numbers(client, max="2000", state="ACTIVE") == active


async def test_the_gateway_serving_its_embedded_simulator_exposes_its_controls() -> None:
    """``make run`` offline: changes, faults and stats of the gateway's own simulator are on
    the gateway, and GATEWAY_SIMULATOR_CHURN reaches it."""
    app = create_app(load_settings(simulator_churn=5))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url=GATEWAY
        ) as client,
    ):
        stats = (await client.get("/_simulator/stats")).json()
        assert (stats["churn"], stats["changes"]) == (5.0, 0)
        added = {"action": "add", "phoneNumber": "+19995550111"}
        assert (await client.post("/_simulator/changes", json=added)).status_code == 200
        found = await client.post("/graphql", json={"query": FIND, "variables": {}})
        assert found.json()["data"]["phoneNumbers"]["nodes"] == [{"phoneNumber": "+19995550111"}]
        faults = await client.post("/_simulator/faults", json={"rules": [{"status": 503}]})
        assert faults.status_code == 200
        assert (await client.get("/_simulator/stats")).json()["changes"] >= 1


async def test_a_gateway_with_a_real_upstream_exposes_no_simulator_controls() -> None:
    recorder = RecordingTransport(httpx.ASGITransport(app=create_simulator_app(build_demo_world())))
    app = create_app(live_settings(simulator_churn=5), upstream_transport=recorder)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url=GATEWAY
        ) as client,
    ):
        for method, path in [
            ("GET", "/_simulator/stats"),
            ("POST", "/_simulator/changes"),
            ("POST", "/_simulator/faults"),
        ]:
            answer = await client.request(method, path, json={"action": "add"})
            assert answer.status_code == 404, path
    assert recorder.calls == 0

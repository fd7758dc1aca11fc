"""The simulator acts out the Webex endpoint: parameters, conflicts, paging, counts, rights."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.simulator import (
    FaultPlan,
    FaultRule,
    build_demo_world,
    create_simulator_app,
    world_from_items,
)
from gateway.simulator.dataset import OWNER_TYPES, NumberEntry, SimulatorWorld
from gateway.simulator.faults import FaultSpecError

NUMBERS = "/telephony/config/numbers"


async def walk(client: httpx.AsyncClient, params: dict[str, Any] | None = None) -> list[dict]:
    """Page as the Webex SDKs do: send the query once, then follow `next` links as given."""
    response = await client.get(NUMBERS, params=params)
    items: list[dict] = []
    while True:
        assert response.status_code == 200, response.text
        page = response.json().get("phoneNumbers", [])
        items.extend(page)
        next_link = response.links.get("next")
        if not next_link or not page:
            return items
        assert next_link["url"].startswith("http://webex.test/v1/telephony/config/numbers?")
        response = await client.get(next_link["url"])


def bag(items: list[dict]) -> Counter[bytes]:
    return Counter(orjson.dumps(item, option=orjson.OPT_SORT_KEYS) for item in items)


def expected(world: SimulatorWorld, keep: Callable[[NumberEntry], bool]) -> Counter[bytes]:
    return bag([entry.payload for entry in world.demo_org.entries if keep(entry)])


def first(world: SimulatorWorld, keep: Callable[[NumberEntry], bool]) -> NumberEntry:
    return next(entry for entry in world.demo_org.entries if keep(entry))


# --- the demo data ------------------------------------------------------------------------


def test_demo_org_resembles_the_documented_mix(world: SimulatorWorld) -> None:
    entries = world.demo_org.entries
    assert len(entries) >= 800
    assert len(world.demo_org.location_ids) >= 3
    assert {entry.owner_type for entry in entries if entry.owner_type} == set(OWNER_TYPES)
    assert sum(entry.phone_number is None for entry in entries) > len(entries) / 3
    for flag in ("toll_free", "service", "reserved", "restricted_non_geo"):
        assert any(getattr(entry, flag) for entry in entries), flag
    assert any(entry.state == "INACTIVE" for entry in entries)
    assert any(e.phone_number and e.owner_id is None for e in entries)
    mobiles = [entry for entry in entries if entry.telephony_type == "MOBILE_NUMBER"]
    assert mobiles
    assert {entry.owner_type for entry in mobiles} == {"PEOPLE"}
    mains = Counter(entry.location_id for entry in entries if entry.payload["mainNumber"])
    assert mains == dict.fromkeys(world.demo_org.location_ids, 1)
    people = [entry.payload["owner"] for entry in entries if entry.owner_type == "PEOPLE"]
    assert all(owner["firstName"] and owner["lastName"] for owner in people)
    assert all(
        owner["displayName"] == f"{owner['firstName']} {owner['lastName']}" for owner in people
    )


def test_features_have_display_names_and_some_numbers_are_elins(world: SimulatorWorld) -> None:
    entries = world.demo_org.entries
    owners = [entry.payload["owner"] for entry in entries if entry.owner_type]
    features = [owner for owner in owners if owner["type"] not in ("PEOPLE", "VIRTUAL_LINE")]
    assert {owner["type"] for owner in features} >= {"AUTO_ATTENDANT", "CALL_QUEUE", "HUNT_GROUP"}
    for owner in features:
        assert owner["displayName"]
        assert "firstName" not in owner
        assert "lastName" not in owner
    elins = [entry for entry in entries if entry.elin]
    assert 0 < len(elins) < len([entry for entry in entries if entry.phone_number]) / 4
    assert all(entry.payload["elinEnabled"] is True for entry in elins)
    assert {entry.telephony_type for entry in elins} == {"PSTN_NUMBER"}
    expiring = [owner for owner in owners if "elinExpiryTime" in owner]
    assert 0 < len(expiring) < len(elins)
    assert all(owner["elinExpiryTime"].endswith("Z") for owner in expiring)
    # Extension-only entries carry no elinEnabled, numbers always do.
    assert all(("elinEnabled" in entry.payload) is bool(entry.phone_number) for entry in entries)


async def test_owner_name_matches_a_features_display_name(
    simulator: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    queue = first(world, lambda e: e.owner_type == "CALL_QUEUE")
    name = queue.payload["owner"]["displayName"]
    items = await walk(simulator, {"ownerName": name.upper()})
    assert queue.payload in items
    assert all(name.lower() in item["owner"]["displayName"].lower() for item in items)


# --- paging -----------------------------------------------------------------------------------


async def test_following_next_links_visits_every_entry_once(
    simulator: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    items = await walk(simulator, {"max": 37})
    assert bag(items) == expected(world, lambda entry: True)
    assert len(items) == len(world.demo_org.entries)


async def test_server_page_cap_returns_its_maximum_with_a_next_link(world: SimulatorWorld) -> None:
    app = create_simulator_app(world, page_cap=100)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://webex.test/v1",
        headers={"Authorization": "Bearer demo-admin"},
    ) as client:
        response = await client.get(NUMBERS, params={"max": 5000})
        assert len(response.json()["phoneNumbers"]) == 100
        assert "start=100" in response.links["next"]["url"]
        assert len(await walk(client, {"max": 5000})) == len(world.demo_org.entries)


async def test_start_and_max_slice_the_ordered_list(simulator: httpx.AsyncClient) -> None:
    everything = await walk(simulator)
    response = await simulator.get(NUMBERS, params={"start": 10, "max": 5})
    assert response.json()["phoneNumbers"] == everything[10:15]
    last = await simulator.get(NUMBERS, params={"start": len(everything) - 2, "max": 5})
    assert last.json()["phoneNumbers"] == everything[-2:]
    assert "next" not in last.links


async def test_default_order_is_number_then_extension(simulator: httpx.AsyncClient) -> None:
    items = await walk(simulator)
    numbers = [item["phoneNumber"] for item in items if item["phoneNumber"]]
    assert numbers == sorted(numbers)
    first_extension_only = next(i for i, item in enumerate(items) if not item["phoneNumber"])
    assert all(not item["phoneNumber"] for item in items[first_extension_only:])
    extensions = [int(item["extension"]) for item in items[first_extension_only:]]
    assert extensions == sorted(extensions)


@pytest.mark.parametrize(
    ("order", "value"),
    [
        ("lastName", lambda item: (item.get("owner") or {}).get("lastName", "").lower() or None),
        ("dn", lambda item: item.get("phoneNumber")),
        ("extension", lambda item: int(item["extension"]) if item.get("extension") else None),
    ],
)
@pytest.mark.parametrize("direction", ["", "-asc", "-desc"])
async def test_order_sorts_by_key_and_direction(
    simulator: httpx.AsyncClient, order: str, value: Callable[[dict], Any], direction: str
) -> None:
    items = await walk(simulator, {"order": order + direction})
    keys = [value(item) for item in items]
    present = [key for key in keys if key is not None]
    assert present == sorted(present, reverse=direction == "-desc")
    assert all(key is None for key in keys[len(present) :]), "entries lacking the key come last"


# --- every parameter narrows --------------------------------------------------------------


async def test_location_id(simulator: httpx.AsyncClient, world: SimulatorWorld) -> None:
    location = world.demo_org.location_ids[1]
    items = await walk(simulator, {"locationId": location})
    assert bag(items) == expected(world, lambda e: e.location_id == location)


async def test_phone_number_search(simulator: httpx.AsyncClient, world: SimulatorWorld) -> None:
    target = first(world, lambda e: e.phone_number is not None and e.owner_id is not None)
    assert target.phone_number is not None
    items = await walk(simulator, {"phoneNumber": target.phone_number})
    assert items == [target.payload]
    partial = target.phone_number[:7]
    assert bag(await walk(simulator, {"phoneNumber": partial})) == expected(
        world, lambda e: e.phone_number is not None and partial in e.phone_number
    )


@pytest.mark.parametrize("value", [True, False])
async def test_available(simulator: httpx.AsyncClient, world: SimulatorWorld, value: bool) -> None:
    items = await walk(simulator, {"available": str(value).lower()})
    assert items
    assert bag(items) == expected(
        world,
        lambda e: (e.phone_number is not None and e.owner_id is None and not e.reserved) is value,
    )


async def test_owner_name_matches_first_or_last_name(
    simulator: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    items = await walk(simulator, {"ownerName": "LOVELACE"})
    assert items
    assert all("lovelace" in item["owner"]["lastName"].lower() for item in items)
    assert bag(items) == expected(world, lambda e: "lovelace" in e.owner_name)


async def test_owner_id(simulator: httpx.AsyncClient, world: SimulatorWorld) -> None:
    owner = first(world, lambda e: e.owner_type == "CALL_QUEUE").owner_id
    items = await walk(simulator, {"ownerId": owner})
    assert items
    assert bag(items) == expected(world, lambda e: e.owner_id == owner)


@pytest.mark.parametrize("owner_type", OWNER_TYPES)
async def test_owner_type(
    simulator: httpx.AsyncClient, world: SimulatorWorld, owner_type: str
) -> None:
    items = await walk(simulator, {"ownerType": owner_type})
    assert items
    assert bag(items) == expected(world, lambda e: e.owner_type == owner_type)


async def test_extension(simulator: httpx.AsyncClient, world: SimulatorWorld) -> None:
    target = first(world, lambda e: e.extension is not None)
    items = await walk(simulator, {"extension": target.extension})
    assert target.payload in items
    assert bag(items) == expected(world, lambda e: e.extension == target.extension)


@pytest.mark.parametrize(("number_type", "has_number"), [("NUMBER", True), ("EXTENSION", False)])
async def test_number_type(
    simulator: httpx.AsyncClient, world: SimulatorWorld, number_type: str, has_number: bool
) -> None:
    items = await walk(simulator, {"numberType": number_type})
    assert bag(items) == expected(world, lambda e: (e.phone_number is not None) is has_number)


@pytest.mark.parametrize("kind", ["PRIMARY", "ALTERNATE", "FAX", "DNIS"])
async def test_phone_number_type(
    simulator: httpx.AsyncClient, world: SimulatorWorld, kind: str
) -> None:
    items = await walk(simulator, {"phoneNumberType": kind})
    assert items
    assert all(item["phoneNumber"] for item in items)
    assert bag(items) == expected(world, lambda e: e.phone_number_type == kind)


@pytest.mark.parametrize("state", ["ACTIVE", "INACTIVE"])
async def test_state(simulator: httpx.AsyncClient, world: SimulatorWorld, state: str) -> None:
    items = await walk(simulator, {"state": state})
    assert items
    assert bag(items) == expected(world, lambda e: e.phone_number is not None and e.state == state)


@pytest.mark.parametrize(
    ("parameter", "flag"),
    [
        ("tollFreeNumbers", "toll_free"),
        ("restrictedNonGeoNumbers", "restricted_non_geo"),
        ("serviceNumber", "service"),
    ],
)
async def test_boolean_only_filters(
    simulator: httpx.AsyncClient, world: SimulatorWorld, parameter: str, flag: str
) -> None:
    items = await walk(simulator, {parameter: "true"})
    assert items
    assert bag(items) == expected(world, lambda e: getattr(e, flag))
    # false is the upstream's default: it does not narrow
    assert len(await walk(simulator, {parameter: "false"})) == len(world.demo_org.entries)


@pytest.mark.parametrize("value", [True, False])
async def test_reserved_number(
    simulator: httpx.AsyncClient, world: SimulatorWorld, value: bool
) -> None:
    items = await walk(simulator, {"reservedNumber": str(value).lower()})
    assert items
    assert bag(items) == expected(
        world, lambda e: e.phone_number is not None and e.reserved is value
    )


@pytest.mark.parametrize("value", [True, False])
async def test_assigned(simulator: httpx.AsyncClient, world: SimulatorWorld, value: bool) -> None:
    items = await walk(simulator, {"assigned": str(value).lower()})
    assert items
    assert bag(items) == expected(
        world, lambda e: e.phone_number is not None and (e.owner_id is not None) is value
    )


@pytest.mark.parametrize("value", [True, False])
async def test_elin_enabled(
    simulator: httpx.AsyncClient, world: SimulatorWorld, value: bool
) -> None:
    items = await walk(simulator, {"elinEnabled": str(value).lower()})
    assert items
    assert bag(items) == expected(world, lambda e: e.phone_number is not None and e.elin is value)
    assert all(item["elinEnabled"] is value for item in items)


@pytest.mark.parametrize("kind", ["PSTN_NUMBER", "MOBILE_NUMBER"])
async def test_included_telephony_types(
    simulator: httpx.AsyncClient, world: SimulatorWorld, kind: str
) -> None:
    items = await walk(simulator, {"includedTelephonyTypes": kind})
    assert items
    assert bag(items) == expected(world, lambda e: e.telephony_type == kind)


async def test_both_telephony_types_is_everything(
    simulator: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    items = await walk(simulator, {"includedTelephonyTypes": "PSTN_NUMBER,MOBILE_NUMBER"})
    assert len(items) == len(world.demo_org.entries)


async def test_filters_combine(simulator: httpx.AsyncClient, world: SimulatorWorld) -> None:
    location = world.demo_org.location_ids[0]
    items = await walk(simulator, {"locationId": location, "ownerType": "PEOPLE", "max": 7})
    assert items
    assert bag(items) == expected(
        world, lambda e: e.location_id == location and e.owner_type == "PEOPLE"
    )


# --- counts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"ownerType": "PEOPLE"},
        {"numberType": "NUMBER", "state": "INACTIVE"},
        {"assigned": "true"},
        {"elinEnabled": "true", "locationId": "first"},
    ],
)
async def test_details_counts_agree_with_the_entries(
    simulator: httpx.AsyncClient, world: SimulatorWorld, params: dict[str, str]
) -> None:
    if params.get("locationId") == "first":
        params = {**params, "locationId": world.demo_org.location_ids[0]}
    items = await walk(simulator, params)
    response = await simulator.get(NUMBERS, params={**params, "details": "true", "max": 1})
    count = response.json()["count"]
    numbers = [item for item in items if item["phoneNumber"]]
    assert count["total"] == len(items)
    assert count["extensionOnly"] == len(items) - len(numbers)
    assert count["assigned"] == sum("owner" in item for item in numbers)
    assert count["unAssigned"] == sum("owner" not in item for item in numbers)
    assert count["inActive"] == sum(item.get("state") == "INACTIVE" for item in numbers)
    assert count["tollFreeNumbers"] == sum(item["tollFreeNumber"] for item in numbers)
    assert count["mobileNumber"] == sum(
        item["includedTelephonyTypes"] == "MOBILE_NUMBER" for item in numbers
    )
    assert count["serviceNumber"] == sum(
        item["isServiceNumber"] and item["includedTelephonyTypes"] == "PSTN_NUMBER"
        for item in numbers
    )
    assert count["reservedNumber"] == sum(item.get("isReservedNumber", False) for item in numbers)
    assert count["elin"] == sum(item["elinEnabled"] for item in numbers)
    assert count["available"] == sum(
        "owner" not in item and not item["isReservedNumber"] for item in numbers
    )
    assert len(response.json()["phoneNumbers"]) == min(1, len(items))


async def test_no_count_without_details(simulator: httpx.AsyncClient) -> None:
    assert "count" not in (await simulator.get(NUMBERS, params={"max": 1})).json()


# --- the upstream's 400s ------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"available": "true", "ownerType": "PEOPLE"},
        {"numberType": "EXTENSION", "available": "false"},
        {"numberType": "EXTENSION", "state": "ACTIVE"},
        {"reservedNumber": "true", "available": "true"},
        {"reservedNumber": "false", "assigned": "true"},
        {"numberType": "EXTENSION", "assigned": "false"},
        {"assigned": "maybe"},
        {"elinEnabled": "1"},
        {"ownerName": "x" * 256},
        {"ownerType": "ROBOT"},
        {"numberType": "BOTH"},
        {"phoneNumberType": "MAIN"},
        {"state": "DORMANT"},
        {"includedTelephonyTypes": "SATELLITE"},
        {"includedTelephonyType": "PSTN_NUMBER"},
        {"order": "firstName"},
        {"order": "dn-sideways"},
        {"max": "ten"},
        {"max": "-1"},
        {"max": "0"},
        {"start": "-5"},
        {"start": "1.5"},
        {"available": "yes"},
        {"details": "1"},
    ],
)
async def test_invalid_queries_get_the_webex_400(
    simulator: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await simulator.get(NUMBERS, params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["errors"][0]["description"]
    assert isinstance(body["errors"][0]["errorCode"], int)
    assert body["trackingId"].startswith("ROUTER_")
    assert response.headers["TrackingID"] == body["trackingId"]


async def test_available_false_with_owner_type_is_allowed(simulator: httpx.AsyncClient) -> None:
    response = await simulator.get(NUMBERS, params={"available": "false", "ownerType": "PEOPLE"})
    assert response.status_code == 200


async def test_owner_name_of_255_characters_is_allowed(simulator: httpx.AsyncClient) -> None:
    response = await simulator.get(NUMBERS, params={"ownerName": "x" * 255})
    assert response.status_code == 200
    assert response.json()["phoneNumbers"] == []


# --- tokens -------------------------------------------------------------------------------


async def test_missing_or_unknown_token_is_401(simulator: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}):
        response = await simulator.get(NUMBERS, headers=headers)
        assert response.status_code == 401
        assert response.json()["trackingId"] == response.headers["TrackingID"]


async def test_token_without_scope_is_403(simulator: httpx.AsyncClient) -> None:
    response = await simulator.get(NUMBERS, headers={"Authorization": "Bearer demo-no-scope"})
    assert response.status_code == 403


async def test_readonly_admin_sees_the_whole_org(
    simulator: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    simulator.headers["Authorization"] = "Bearer demo-readonly"
    assert len(await walk(simulator)) == len(world.demo_org.entries)


async def test_location_admin_sees_one_location_only(
    simulator: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    simulator.headers["Authorization"] = "Bearer demo-location-admin"
    own = world.demo_org.location_ids[0]
    items = await walk(simulator, {"max": 100})
    assert bag(items) == expected(world, lambda e: e.location_id == own)
    other = world.demo_org.location_ids[1]
    assert await walk(simulator, {"locationId": other}) == []
    counts = (await simulator.get(NUMBERS, params={"details": "true"})).json()["count"]
    assert counts["total"] == len(items)


async def test_partner_reads_the_second_org_and_others_may_not(
    simulator: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    customer = list(world.orgs.values())[1]
    response = await simulator.get(NUMBERS, params={"orgId": customer.id, "max": 5000})
    assert response.status_code == 403
    simulator.headers["Authorization"] = "Bearer demo-partner"
    items = await walk(simulator, {"orgId": customer.id})
    assert bag(items) == bag([entry.payload for entry in customer.entries])
    assert (await simulator.get(NUMBERS, params={"orgId": "not-an-org"})).status_code == 403


# --- faults -------------------------------------------------------------------------------


async def test_faults_for_the_next_n_requests(
    simulator: httpx.AsyncClient, simulator_app: Any
) -> None:
    rules = {"rules": [{"status": 429, "retryAfter": "3", "count": 2}]}
    assert (
        await simulator.post("http://webex.test/_simulator/faults", json=rules)
    ).status_code == 200
    for _ in range(2):
        response = await simulator.get(NUMBERS)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.headers["TrackingID"].startswith("ROUTER_")
    assert (await simulator.get(NUMBERS)).status_code == 200
    assert simulator_app.state.simulator.request_count == 3


@pytest.mark.parametrize(
    ("spec", "status", "content_type"),
    [
        ("status=503,body=html", 503, "text/html"),
        ("status=502,body=empty", 502, None),
        ("status=200,body=truncated", 200, "application/json"),
        ("status=423,retry-after=Wed, 21 Oct 2015 07:28:00 GMT", 423, "application/json"),
        ("status=500", 500, "application/json"),
    ],
)
async def test_fault_kinds(
    world: SimulatorWorld, spec: str, status: int, content_type: str | None
) -> None:
    app = create_simulator_app(world, faults=FaultPlan([FaultRule.parse(spec)]))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://webex.test/v1"
    ) as client:
        response = await client.get(NUMBERS, headers={"Authorization": "Bearer demo-admin"})
    assert response.status_code == status
    if content_type:
        assert response.headers["content-type"].startswith(content_type)
    if "body=" in spec and status != 200:
        with pytest.raises(ValueError, match=r"."):
            json.loads(response.text)


async def test_fraction_of_requests(world: SimulatorWorld) -> None:
    plan = FaultPlan([FaultRule.parse("status=503,fraction=0.3")], seed=1)
    app = create_simulator_app(world, faults=plan)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://webex.test/v1",
        headers={"Authorization": "Bearer demo-admin"},
    ) as client:
        statuses = [(await client.get(NUMBERS, params={"max": 1})).status_code for _ in range(200)]
    failures = statuses.count(503)
    assert 30 <= failures <= 90, failures
    assert statuses.count(200) == 200 - failures


async def test_latency_delays_the_answer(world: SimulatorWorld) -> None:
    """Latency is what makes the gateway's deadline tests time out; here, that it is applied."""
    slept: list[float] = []
    app = create_simulator_app(world, faults=FaultPlan([FaultRule.parse("latency=0.2,count=1")]))

    async def record(seconds: float) -> None:
        slept.append(seconds)

    app.state.simulator.sleep = record
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://webex.test/v1",
        headers={"Authorization": "Bearer demo-admin"},
    ) as client:
        assert (await client.get(NUMBERS)).status_code == 200
        assert (await client.get(NUMBERS)).status_code == 200
    assert slept == [0.2], "the next request only, by the given seconds"


async def test_a_held_request_given_up_on_leaves_nothing_waiting(world: SimulatorWorld) -> None:
    """A caller's timeout through the in-process transport cancels a request a latency fault
    holds: no sleep and no stop-waiter outlive it. After ``stop`` a held request is a 503."""
    app = create_simulator_app(world, faults=FaultPlan([FaultRule.parse("latency=600")]))
    simulator = app.state.simulator
    holding = asyncio.Event()

    async def hold(seconds: float) -> None:
        holding.set()
        await asyncio.sleep(seconds)

    simulator.sleep = hold
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://webex.test/v1",
        headers={"Authorization": "Bearer demo-admin"},
    ) as client:
        before = asyncio.all_tasks()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.get(NUMBERS)
        await asyncio.sleep(0)  # let what the cancellation cancelled end
        assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()
        assert simulator._holds == set()

        holding.clear()
        held = asyncio.ensure_future(client.get(NUMBERS))
        await holding.wait()
        simulator.stop()
        answer = await held
        assert answer.status_code == 503
        assert answer.json()["message"] == "The simulator is stopping."
        assert (await client.get(NUMBERS)).status_code == 503  # no hold after the stop


def test_fault_specs_are_validated() -> None:
    for bad in ("status=abc", "colour=red", "status=42", "fraction=2", "body=xml"):
        with pytest.raises(FaultSpecError):
            FaultRule.parse(bad)


async def test_faults_endpoint_rejects_bad_rules(simulator: httpx.AsyncClient) -> None:
    response = await simulator.post(
        "http://webex.test/_simulator/faults", json={"rules": [{"status": "x"}]}
    )
    assert response.status_code == 400
    response = await simulator.post(
        "http://webex.test/_simulator/faults", json={"rules": [{"colour": 1}]}
    )
    assert response.status_code == 400
    cleared = await simulator.delete("http://webex.test/_simulator/faults")
    assert cleared.json() == {"rules": []}


# --- a user's own data --------------------------------------------------------------------


async def test_serves_a_users_export(world: SimulatorWorld) -> None:
    items = [entry.payload for entry in world.demo_org.entries[:30]]
    app = create_simulator_app(world_from_items(items))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://webex.test/v1",
        headers={"Authorization": "Bearer demo-admin"},
    ) as client:
        served = await walk(client, {"max": 7})
        assert bag(served) == bag(items)
        people = await walk(client, {"ownerType": "PEOPLE"})
        assert bag(people) == bag(
            [item for item in items if item.get("owner", {}).get("type") == "PEOPLE"]
        )


@pytest.mark.e2e
def test_simulator_help_lists_the_demo_tokens_and_faults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.server.cli", "simulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for token in (
        "demo-admin",
        "demo-readonly",
        "demo-location-admin",
        "demo-no-scope",
        "demo-partner",
    ):
        assert token in result.stdout
    assert "retry-after" in result.stdout


@pytest.mark.e2e
def test_simulator_rejects_a_bad_data_file(tmp_path: Path) -> None:
    bad = tmp_path / "numbers.json"
    bad.write_text('{"not": "a list"}')
    result = subprocess.run(
        [sys.executable, "-m", "gateway.server.cli", "simulator", "--data", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--data" in result.stderr


# --- every error carries the Webex error body -----------------------------------------------


def _assert_webex_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    body = response.json()
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["errors"], list)
    assert body["errors"]
    for error in body["errors"]:
        assert isinstance(error["description"], str)
        assert error["description"]
        assert isinstance(error.get("errorCode", 0), int)
    assert body["trackingId"].startswith("ROUTER_")
    assert response.headers["TrackingID"] == body["trackingId"]


async def test_every_status_the_simulator_answers_has_the_webex_error_body(
    world: SimulatorWorld,
) -> None:
    natural = {
        400: ({"Authorization": "Bearer demo-admin"}, {"max": "0"}),
        401: ({}, {}),
        403: ({"Authorization": "Bearer demo-no-scope"}, {}),
    }
    app = create_simulator_app(world)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://webex.test/v1"
    ) as client:
        for status, (headers, params) in natural.items():
            _assert_webex_error(await client.get(NUMBERS, headers=headers, params=params), status)
        other_org = await client.get(
            NUMBERS,
            headers={"Authorization": "Bearer demo-admin"},
            params={"orgId": next(org for org in world.orgs if org != world.demo_org.id)},
        )
        _assert_webex_error(other_org, 403)
        for status in (404, 405, 409, 410, 415, 423, 428, 429, 500, 502, 503, 504):
            app.state.simulator.faults.replace([FaultRule(status=status, count=1)])
            response = await client.get(NUMBERS, headers={"Authorization": "Bearer demo-admin"})
            _assert_webex_error(response, status)


@pytest.mark.parametrize("size", [1000, 5000, 20000])
def test_every_phone_number_of_an_org_is_unique(size: int) -> None:
    """A number is unique in an org (the change feed names entries by it). Two locations of one
    country share a non-geographic prefix (900): the generator must not issue one twice."""
    world = build_demo_world(size=size, seed=7)
    for org in world.orgs.values():
        numbers = [entry.phone_number for entry in org.entries if entry.phone_number]
        assert len(numbers) == len(set(numbers))

"""Webex's own Python SDK (``wxc_sdk``, generated from Webex's OpenAPI descriptions) as an
independent oracle for the simulator and the gateway.

The SDK talks to a real simulator on a loopback port (uvicorn in a thread) with its own
``requests`` session, its own models and its own ``Link`` walk; nothing here reaches past
127.0.0.1. Two claims are checked:

* what the simulator serves is what the SDK's models describe: every item validates as
  ``NumberListPhoneNumber`` and every ``count`` as ``NumberDetails`` (strictly: JSON types as
  declared, no key the models do not know, no enum value they do not list but the one older
  spelling UPSTREAM.md documents), and the SDK follows the simulator's ``next`` links;
* the gateway answers what the SDK reads: for random filters and orders, the gateway's pages,
  walked with cursors, hold the same entries in the same order as the SDK's walk straight
  from the simulator, with the same counts; filters the upstream refuses are refused by both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.applications import Starlette
from wxc_sdk.base import ApiModel
from wxc_sdk.common import NumberState, OwnerType, TelephonyType
from wxc_sdk.rest import RestError, RestSession
from wxc_sdk.telephony import (
    NumberDetails,
    NumberListPhoneNumber,
    NumberListPhoneNumberType,
    TelephonyApi,
)
from wxc_sdk.tokens import Tokens

from gateway.simulator import create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import graphql, live_settings, running_gateway, serve_on_loopback

PAGE_CAP = 150  # the simulator's own page cap: every walk below follows several `next` links
# Owner types the simulator serves that the current SDK does not list: the older spelling of
# PAGING_GROUP, seen in responses (UPSTREAM.md). The SDK's enums take it in (they extend
# themselves with values they meet), so it must not be counted as a finding.
OLDER_OWNER_TYPES = frozenset({"GROUP_PAGING"})
# What the SDK's enums list, taken before any validation can extend them.
SDK_ENUM_VALUES = {
    "state": frozenset(member.value for member in NumberState),
    "phoneNumberType": frozenset(member.value for member in NumberListPhoneNumberType),
    "includedTelephonyTypes": frozenset(member.value for member in TelephonyType),
    "owner.type": frozenset(member.value for member in OwnerType) | OLDER_OWNER_TYPES,
}


# -- the simulator on a loopback port, and the SDK pointed at it -------------------------------


def sdk_session(base_url: str, token: str = "demo-admin") -> RestSession:
    """The SDK's own session with its base URL set to the simulator's."""
    session = RestSession(tokens=Tokens(access_token=token), concurrent_requests=4)
    session.BASE = f"{base_url}/v1"  # type: ignore[misc]  # a ClassVar, shadowed per session
    session.trust_env = False  # no proxy from the environment: loopback only
    return session


@pytest.fixture(scope="module")
def simulator_app(world: SimulatorWorld) -> Starlette:
    return create_simulator_app(world, page_cap=PAGE_CAP)


@pytest.fixture(scope="module")
def simulator_url(simulator_app: Starlette) -> Iterator[str]:
    with serve_on_loopback(simulator_app) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(simulator_url: str) -> Iterator[TelephonyApi]:
    session = sdk_session(simulator_url)
    try:
        yield TelephonyApi(session=session)
    finally:
        session.close()


# -- strict validation -------------------------------------------------------------------------


def unknown_keys(model: BaseModel, where: str = "") -> list[str]:
    """Keys the SDK's models kept as extras (its models allow them), at every depth."""
    found = [f"{where}{key}" for key in model.model_extra or {}]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found.extend(unknown_keys(value, f"{where}{name}."))
    return found


def unlisted_enum_values(item: dict[str, Any]) -> list[str]:
    owner = item.get("owner") or {}
    values = {
        "state": item.get("state"),
        "phoneNumberType": item.get("phoneNumberType"),
        "includedTelephonyTypes": item.get("includedTelephonyTypes"),
        "owner.type": owner.get("type"),
    }
    return [
        f"{key}={value}"
        for key, value in values.items()
        if value is not None and value not in SDK_ENUM_VALUES[key]
    ]


def strictly(model: type[ApiModel], raw: dict[str, Any]) -> ApiModel:
    """Validate as JSON in pydantic's strict mode (no "true" for true, no 1 for "1")."""
    validated = model.model_validate_json(orjson.dumps(raw), strict=True)
    assert unknown_keys(validated) == [], raw
    return validated


def raw_walk(sdk: TelephonyApi, **params: str) -> list[dict[str, Any]]:
    """The items as served, walked by the SDK's own ``follow_pagination`` (no model)."""
    return list(
        sdk.session.follow_pagination(url=sdk.ep("numbers"), params=params, item_key="phoneNumbers")
    )


def sdk_counts(sdk: TelephonyApi, **params: str) -> dict[str, Any]:
    """``count`` of a ``details=true&max=1`` answer, as ``phone_number_details`` asks for it
    (which itself takes no filter)."""
    data = sdk.session.rest_get(sdk.ep("numbers"), params={**params, "details": "true", "max": 1})
    assert isinstance(data, dict)
    count: dict[str, Any] = data["count"]
    return count


# -- what the simulator serves is what the SDK describes ----------------------------------------


@pytest.mark.parametrize("token", ["demo-admin", "demo-location-admin", "demo-partner"])
def test_every_item_and_count_the_simulator_serves_validates_as_the_sdks_models(
    simulator_app: Starlette, simulator_url: str, world: SimulatorWorld, token: str
) -> None:
    session = sdk_session(simulator_url, token)
    try:
        api = TelephonyApi(session=session)
        orgs = list(world.orgs) if token == "demo-partner" else [world.demo_org.id]
        for org_id in orgs:
            served = simulator_app.state.simulator.request_count
            items = raw_walk(api, orgId=org_id)
            pages = simulator_app.state.simulator.request_count - served
            visible = [
                entry
                for entry in world.orgs[org_id].entries
                if token != "demo-location-admin"
                or entry.location_id == world.demo_org.location_ids[0]
            ]
            assert len(items) == len(visible)
            assert pages == -(-len(visible) // PAGE_CAP)  # one request per page, `next` followed
            for item in items:
                strictly(NumberListPhoneNumber, item)
                assert unlisted_enum_values(item) == [], item
            details = strictly(NumberDetails, sdk_counts(api, orgId=org_id))
            assert isinstance(details, NumberDetails)
            assert details.total == len(items)
            assert details.elin == sum(item.get("elinEnabled") is True for item in items)
            # The SDK's own typed walk and counts read the same.
            typed = list(api.phone_numbers(org_id=org_id))
            assert [entry.phone_number for entry in typed] == [
                item["phoneNumber"] for item in items
            ]
            assert api.phone_number_details(org_id=org_id) == details
    finally:
        session.close()


def test_the_new_fields_reach_the_sdk(sdk: TelephonyApi) -> None:
    elins = list(sdk.phone_numbers(elin_enabled=True))
    assert elins
    assert all(entry.elin_enabled is True for entry in elins)
    expiring = [entry.owner for entry in elins if entry.owner and entry.owner.elin_expiry_time]
    assert expiring
    assert all(isinstance(owner.elin_expiry_time, datetime) for owner in expiring)
    assigned = list(sdk.phone_numbers(assigned=True, owner_type="CALL_QUEUE"))
    assert assigned
    for entry in assigned:
        assert entry.owner is not None
        assert entry.owner.display_name
        assert (entry.owner.first_name, entry.owner.last_name) == (None, None)
    unassigned = list(sdk.phone_numbers(assigned=False))
    assert unassigned
    assert all(entry.owner is None and entry.phone_number for entry in unassigned)


@pytest.mark.parametrize(
    "conflict",
    [
        {"reserved_number": True, "assigned": False},
        {"number_type": "EXTENSION", "assigned": True},
        {"reserved_number": False, "available": True},
    ],
)
def test_the_sdk_meets_the_upstreams_400_for_conflicting_filters(
    sdk: TelephonyApi, conflict: dict[str, Any]
) -> None:
    with pytest.raises(RestError) as raised:
        list(sdk.phone_numbers(**conflict))
    assert raised.value.response.status_code == 400
    assert raised.value.response.headers["TrackingID"].startswith("ROUTER_")


# -- the gateway answers what the SDK reads ------------------------------------------------------

# (GraphQL filter field, SDK keyword, values): wire values are the same on both sides.
FILTER_FIELDS: list[tuple[str, str, st.SearchStrategy[Any]]] = [
    ("phoneNumber", "phone_number", st.sampled_from(["+1972", "555001", "+44"])),
    ("available", "available", st.booleans()),
    ("ownerName", "owner_name", st.sampled_from(["a", "Lovelace", "queue", "sales"])),
    ("ownerType", "owner_type", st.sampled_from(["PEOPLE", "PLACE", "CALL_QUEUE", "HUNT_GROUP"])),
    ("extension", "extension", st.sampled_from(["101", "105", "120"])),
    ("numberType", "number_type", st.sampled_from(["NUMBER", "EXTENSION"])),
    ("phoneNumberType", "phone_number_type", st.sampled_from(["PRIMARY", "ALTERNATE", "FAX"])),
    ("state", "state", st.sampled_from(["ACTIVE", "INACTIVE"])),
    ("tollFreeNumbers", "toll_free_numbers", st.booleans()),
    ("restrictedNonGeoNumbers", "restricted_non_geo_numbers", st.booleans()),
    ("serviceNumber", "service_number", st.booleans()),
    ("reservedNumber", "reserved_number", st.booleans()),
    ("assigned", "assigned", st.booleans()),
    ("elinEnabled", "elin_enabled", st.booleans()),
]
ENUM_FIELDS = frozenset({"ownerType", "numberType", "phoneNumberType", "state"})
ORDERS = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["LAST_NAME", "DN", "EXTENSION"]), st.sampled_from(["ASC", "DESC"])),
)
SDK_SORT_KEYS = {"LAST_NAME": "lastName", "DN": "dn", "EXTENSION": "extension"}
NODE = (
    "phoneNumber extension esn state phoneNumberType mainNumber includedTelephonyTypes "
    "tollFreeNumber isServiceNumber isReservedNumber elinEnabled location { id name } "
    "owner { id type firstName lastName displayName elinExpiryTime }"
)
COUNTS = (
    "assigned unAssigned inActive extensionOnly tollFreeNumbers total mobileNumber "
    "serviceNumber reservedNumber available elin"
)
WALK = (
    "query Walk($filter: PhoneNumberFilter, $order: PhoneNumberOrder, $page: PageInput) { "
    "phoneNumbers(filter: $filter, order: $order, page: $page) { totalCount "
    f"nodes {{ {NODE} }} pageInfo {{ hasNextPage endCursor }} }} "
    f"numberCounts(filter: $filter) {{ {COUNTS} }} }}"
)


@st.composite
def filters(draw: st.DrawFn, location_ids: tuple[str, ...]) -> dict[str, Any]:
    """A GraphQL filter of a few fields (``locationId`` among them)."""
    chosen: dict[str, Any] = {}
    if draw(st.booleans()):
        chosen["locationId"] = draw(st.sampled_from(location_ids))
    for name, _, values in draw(
        st.lists(st.sampled_from(FILTER_FIELDS), max_size=3, unique_by=lambda f: f[0])
    ):
        chosen[name] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        chosen["includedTelephonyTypes"] = [draw(st.sampled_from(["PSTN_NUMBER", "MOBILE_NUMBER"]))]
    return chosen


def refused_upstream(flt: dict[str, Any]) -> bool:
    """The combinations UPSTREAM.md says the upstream answers with 400."""
    extension = flt.get("numberType") == "EXTENSION"
    return bool(
        (flt.get("available") is True and "ownerType" in flt)
        or (extension and ("available" in flt or "state" in flt or "assigned" in flt))
        or ("reservedNumber" in flt and ("available" in flt or "assigned" in flt))
    )


def sdk_arguments(flt: dict[str, Any], order: tuple[str, str] | None) -> dict[str, Any]:
    keywords = {name: keyword for name, keyword, _ in FILTER_FIELDS}
    keywords["locationId"] = "location_id"
    arguments = {keywords[name]: value for name, value in flt.items() if name in keywords}
    if "includedTelephonyTypes" in flt:
        (arguments["included_telephony_type"],) = flt["includedTelephonyTypes"]
    if order is not None:
        arguments["order"] = f"{SDK_SORT_KEYS[order[0]]}-{order[1].lower()}"
    return arguments


def wire_params(flt: dict[str, Any]) -> dict[str, str]:
    """The query string of a filter, for the counts the SDK has no filtered call for."""
    params: dict[str, str] = {}
    for name, value in flt.items():
        if isinstance(value, bool):
            params[name] = "true" if value else "false"
        elif isinstance(value, list):
            (params[name],) = value
        else:
            params[name] = value
    return params


def sdk_entry(entry: NumberListPhoneNumber) -> dict[str, Any]:
    """An SDK item in the gateway's shape (the fields ``NODE`` selects)."""
    owner = entry.owner
    return {
        "phoneNumber": entry.phone_number or None,
        "extension": entry.extension,
        "esn": entry.esn,
        "state": entry.state,
        "phoneNumberType": entry.phone_number_type,
        "mainNumber": entry.main_number,
        "includedTelephonyTypes": entry.included_telephony_types,
        "tollFreeNumber": entry.toll_free_number,
        "isServiceNumber": entry.is_service_number,
        "isReservedNumber": entry.is_reserved_number,
        "elinEnabled": entry.elin_enabled,
        "location": {"id": entry.location.id, "name": entry.location.name},
        "owner": None
        if owner is None
        else {
            "id": owner.owner_id,
            "type": owner.owner_type,
            "firstName": owner.first_name,
            "lastName": owner.last_name,
            "displayName": owner.display_name,
            "elinExpiryTime": owner.elin_expiry_time,
        },
    }


def gateway_entry(node: dict[str, Any]) -> dict[str, Any]:
    owner = node["owner"]
    if owner is not None and owner["elinExpiryTime"] is not None:
        owner = {**owner, "elinExpiryTime": datetime.fromisoformat(owner["elinExpiryTime"])}
    return {**node, "owner": owner}


async def gateway_walk(
    gateway: httpx.AsyncClient,
    flt: dict[str, Any],
    order: tuple[str, str] | None,
    first: int,
) -> tuple[list[dict[str, Any]], list[int], dict[str, Any] | None, dict[str, Any] | None]:
    """Every page of the query, walked with ``pageInfo.endCursor``; the nodes, each page's
    ``totalCount``, the counts, and the first error (None when there is none)."""
    variables: dict[str, Any] = {"filter": flt, "page": {"first": first}}
    if order is not None:
        variables["order"] = {"by": order[0], "direction": order[1]}
    nodes: list[dict[str, Any]] = []
    totals: list[int] = []
    counts: dict[str, Any] | None = None
    while True:
        body = await graphql(gateway, WALK, variables)
        if "errors" in body:
            return nodes, totals, counts, body["errors"][0]
        page = body["data"]["phoneNumbers"]
        nodes.extend(page["nodes"])
        totals.append(page["totalCount"])
        counts = body["data"]["numberCounts"]
        if not page["pageInfo"]["hasNextPage"]:
            return nodes, totals, counts, None
        variables["page"] = {"first": first, "after": page["pageInfo"]["endCursor"]}


def test_the_gateway_walks_to_the_same_entries_and_counts_as_the_sdk(
    simulator_app: Starlette, sdk: TelephonyApi, world: SimulatorWorld
) -> None:
    outcomes = {"entries": 0, "empty": 0, "refused": 0}
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        gateway = runner.run(
            stack.enter_async_context(
                running_gateway(live_settings(cache_ttl=0), httpx.ASGITransport(app=simulator_app))
            )
        )
        gateway.headers["Authorization"] = "Bearer demo-admin"
        try:

            @settings(
                max_examples=25,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(
                flt=filters(world.demo_org.location_ids),
                order=ORDERS,
                first=st.sampled_from([7, 100, 400]),
            )
            @example(flt={}, order=("DN", "DESC"), first=400)
            @example(flt={"elinEnabled": True}, order=("LAST_NAME", "ASC"), first=7)
            @example(flt={"assigned": False, "state": "ACTIVE"}, order=None, first=100)
            @example(flt={"ownerType": "AUTO_ATTENDANT", "assigned": True}, order=None, first=7)
            @example(flt={"reservedNumber": True, "assigned": False}, order=None, first=100)
            @example(flt={"numberType": "EXTENSION", "assigned": True}, order=None, first=100)
            def same_walk(flt: dict[str, Any], order: tuple[str, str] | None, first: int) -> None:
                arguments = sdk_arguments(flt, order)
                nodes, totals, counts, error = runner.run(gateway_walk(gateway, flt, order, first))
                if refused_upstream(flt):
                    outcomes["refused"] += 1
                    with pytest.raises(RestError) as raised:
                        list(sdk.phone_numbers(**arguments))
                    assert raised.value.response.status_code == 400
                    assert error is not None
                    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
                    assert nodes == []
                    return
                assert error is None, error
                expected = [sdk_entry(entry) for entry in sdk.phone_numbers(**arguments)]
                assert [gateway_entry(node) for node in nodes] == expected
                outcomes["entries" if expected else "empty"] += 1
                details = NumberDetails.model_validate(sdk_counts(sdk, **wire_params(flt)))
                assert counts == details.model_dump(by_alias=True)
                assert set(totals) == {len(expected)} == {details.total}

            same_walk()
        finally:
            runner.run(stack.aclose())
    # Not vacuous: entries were compared, and refusals met on both sides.
    assert outcomes["entries"] >= 5, outcomes
    assert outcomes["refused"] >= 1, outcomes

"""The GraphQL gateway end to end in-process: exact upstream queries, paging, validation,
errors, auth and batching, counted at the upstream transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.settings import load_settings
from gateway.simulator import create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import RecordingTransport, graphql, live_settings, running_gateway

NODES = "nodes { phoneNumber extension owner { id type lastName } location { id name } }"


# --- translation, as the upstream receives it ------------------------------------------------


@pytest.mark.parametrize(
    ("graphql_filter", "params"),
    [
        ('{locationId: "LOC"}', [("locationId", "LOC")]),
        ('{phoneNumber: "+1972"}', [("phoneNumber", "+1972")]),
        ("{available: true}", [("available", "true")]),
        ("{available: false}", [("available", "false")]),
        ('{ownerName: "Ada L"}', [("ownerName", "Ada L")]),
        ('{ownerId: "OWNER"}', [("ownerId", "OWNER")]),
        ("{ownerType: VIRTUAL_LINE}", [("ownerType", "VIRTUAL_LINE")]),
        ('{extension: "1234"}', [("extension", "1234")]),
        ("{numberType: EXTENSION}", [("numberType", "EXTENSION")]),
        ("{phoneNumberType: FAX}", [("phoneNumberType", "FAX")]),
        ("{state: INACTIVE}", [("state", "INACTIVE")]),
        ("{tollFreeNumbers: true}", [("tollFreeNumbers", "true")]),
        ("{restrictedNonGeoNumbers: false}", [("restrictedNonGeoNumbers", "false")]),
        (
            "{includedTelephonyTypes: [MOBILE_NUMBER]}",
            [("includedTelephonyTypes", "MOBILE_NUMBER")],
        ),
        ("{includedTelephonyTypes: [PSTN_NUMBER, MOBILE_NUMBER]}", []),
        ("{serviceNumber: true}", [("serviceNumber", "true")]),
        ("{reservedNumber: false}", [("reservedNumber", "false")]),
        ("{assigned: true}", [("assigned", "true")]),
        ("{assigned: false}", [("assigned", "false")]),
        ("{elinEnabled: true}", [("elinEnabled", "true")]),
        (
            "{elinEnabled: false, numberType: EXTENSION}",
            [("numberType", "EXTENSION"), ("elinEnabled", "false")],
        ),
        ("{ownerType: PEOPLE, state: ACTIVE}", [("ownerType", "PEOPLE"), ("state", "ACTIVE")]),
        ("{ownerType: null}", []),
    ],
)
async def test_each_filter_field_maps_to_its_parameter(
    gateway: httpx.AsyncClient,
    recorder: RecordingTransport,
    graphql_filter: str,
    params: list[tuple[str, str]],
) -> None:
    body = await graphql(gateway, f"{{ phoneNumbers(filter: {graphql_filter}) {{ {NODES} }} }}")
    assert "errors" not in body, body
    assert recorder.calls == 1
    assert recorder.params() == [*params, ("max", "100")]


@pytest.mark.parametrize(
    ("arguments", "params"),
    [
        ("order: {by: LAST_NAME, direction: DESC}", [("order", "lastName-desc")]),
        ("order: {by: DN}", [("order", "dn-asc")]),
        ("order: {by: EXTENSION, direction: ASC}", [("order", "extension-asc")]),
        ('orgId: "ORG"', [("orgId", "ORG")]),
        ("page: {first: 7}", []),
        ("page: {first: 7, offset: 30}", [("start", "30")]),
    ],
)
async def test_order_org_and_page_shapes(
    gateway: httpx.AsyncClient,
    recorder: RecordingTransport,
    arguments: str,
    params: list[tuple[str, str]],
) -> None:
    await graphql(gateway, f"{{ phoneNumbers({arguments}) {{ nodes {{ extension }} }} }}")
    assert recorder.calls == 1
    sent = recorder.params()
    expected_max = "7" if "first: 7" in arguments else "100"
    assert sent == [*params, ("max", expected_max)]


async def test_total_count_asks_for_details(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    body = await graphql(gateway, "{ phoneNumbers(page: {first: 2}) { totalCount } }")
    assert body["data"]["phoneNumbers"]["totalCount"] == 1000
    assert recorder.params() == [("max", "2"), ("details", "true")]


async def test_number_counts_alone_asks_with_max_1(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    body = await graphql(
        gateway, "{ numberCounts(filter: {ownerType: PEOPLE}) { total assigned } }"
    )
    assert body["data"]["numberCounts"]["total"] > 0
    assert recorder.params() == [("ownerType", "PEOPLE"), ("max", "1"), ("details", "true")]


# --- paging -------------------------------------------------------------------------------


async def upstream_order(simulator_app: Starlette, **params: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator_app),
        base_url="http://webex.test/v1",
        headers={"Authorization": "Bearer demo-admin"},
    ) as client:
        response = await client.get("/telephony/config/numbers", params={"max": 100_000, **params})
        items: list[dict[str, Any]] = response.json()["phoneNumbers"]
        return items


@pytest.mark.parametrize("order", [None, "{by: LAST_NAME, direction: DESC}"])
async def test_cursor_walk_equals_the_upstream_order(
    gateway: httpx.AsyncClient, simulator_app: Starlette, order: str | None
) -> None:
    query = """
      query Walk($after: String) {
        phoneNumbers(ORDER page: {first: 97, after: $after}) {
          edges { cursor node { phoneNumber extension location { id } owner { id } } }
          pageInfo { hasNextPage hasPreviousPage endCursor startCursor }
        }
      }""".replace("ORDER", f"order: {order}" if order else "")
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        body = await graphql(gateway, query, {"after": after})
        connection = body["data"]["phoneNumbers"]
        edges = connection["edges"]
        assert connection["pageInfo"]["hasPreviousPage"] is (after is not None)
        if edges:
            assert connection["pageInfo"]["startCursor"] == edges[0]["cursor"]
            assert connection["pageInfo"]["endCursor"] == edges[-1]["cursor"]
        seen.extend(edge["node"] for edge in edges)
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    wire = {"order": "lastName-desc"} if order else {}
    upstream = await upstream_order(simulator_app, **wire)
    assert [(n["phoneNumber"], n["extension"], n["location"]["id"]) for n in seen] == [
        (u["phoneNumber"] or None, u.get("extension"), u["location"]["id"]) for u in upstream
    ]


async def test_a_page_larger_than_one_upstream_response_follows_next_links(
    world: SimulatorWorld,
) -> None:
    capped = create_simulator_app(world, page_cap=100)
    recorder = RecordingTransport(httpx.ASGITransport(app=capped))
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(
            client,
            "{ phoneNumbers(page: {first: 250, offset: 10}) "
            "{ nodes { phoneNumber extension } pageInfo { hasNextPage } } }",
            headers={"Authorization": "Bearer demo-admin"},
        )
    connection = body["data"]["phoneNumbers"]
    upstream = await upstream_order(create_simulator_app(world))
    assert [n["extension"] for n in connection["nodes"]] == [
        u.get("extension") for u in upstream[10:260]
    ]
    assert connection["pageInfo"]["hasNextPage"] is True
    assert recorder.calls == 3
    assert recorder.params(0) == [("start", "10"), ("max", "250")]
    assert ("start", "110") in recorder.params(1)
    assert all(
        request.headers["Authorization"] == "Bearer demo-admin" for request in recorder.requests
    )


async def test_last_page_has_no_next_page(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    body = await graphql(
        gateway,
        "{ phoneNumbers(page: {first: 10, offset: 995}) { nodes { extension } pageInfo { hasNextPage } } }",
    )
    assert len(body["data"]["phoneNumbers"]["nodes"]) == 5
    assert body["data"]["phoneNumbers"]["pageInfo"]["hasNextPage"] is False


async def test_a_next_link_to_another_origin_is_not_followed() -> None:
    """The caller's token must never travel to a host other than the configured upstream."""

    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("start", "0"))
        items = [{"extension": str(start + i), "location": {"id": "L"}} for i in range(2)]
        return httpx.Response(
            200,
            json={"phoneNumbers": items},
            headers={
                "Link": '<https://evil.example/v1/telephony/config/numbers?start=2>; rel="next"'
            },
        )

    recorder = RecordingTransport(handler=handler)
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(
            client,
            "{ phoneNumbers(page: {first: 4}) { nodes { extension } } }",
            headers={"Authorization": "Bearer secret"},
        )
    assert [n["extension"] for n in body["data"]["phoneNumbers"]["nodes"]] == ["0", "1", "2", "3"]
    assert {request.url.host for request in recorder.requests} == {"webex.test"}
    assert recorder.params(1) == [("start", "2"), ("max", "2")]


async def test_a_next_link_with_the_max_null_defect_is_replaced() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("start", "0"))
        items = [{"extension": str(start + i), "location": {"id": "L"}} for i in range(3)]
        link = f'<http://webex.test/v1/telephony/config/numbers?start={start + 3}&max=null>; rel="next"'
        return httpx.Response(200, json={"phoneNumbers": items}, headers={"Link": link})

    recorder = RecordingTransport(handler=handler)
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(
            client,
            "{ phoneNumbers(page: {first: 5, offset: 1}) { nodes { extension } } }",
            headers={"Authorization": "Bearer t"},
        )
    assert [n["extension"] for n in body["data"]["phoneNumbers"]["nodes"]] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    assert recorder.params(1) == [("start", "4"), ("max", "2")]
    assert "null" not in str(recorder.requests[1].url)


# --- validation: BAD_USER_INPUT, zero upstream calls --------------------------------------


INVALID_FOR_THE_SCHEMA = {"filter: {ownerType: ROBOT}", "page: {first: 99999999999}"}


@pytest.mark.parametrize(
    "arguments",
    [
        "filter: {available: true, ownerType: PEOPLE}",
        "filter: {numberType: EXTENSION, available: true}",
        "filter: {numberType: EXTENSION, state: ACTIVE}",
        "filter: {reservedNumber: true, available: false}",
        "filter: {reservedNumber: false, assigned: true}",
        "filter: {assigned: false, numberType: EXTENSION}",
        "filter: {assigned: true, numberType: EXTENSION, elinEnabled: true}",
        f'filter: {{ownerName: "{"n" * 256}"}}',
        "filter: {ownerType: UNKNOWN}",
        "filter: {state: UNKNOWN}",
        "filter: {phoneNumberType: UNKNOWN}",
        "filter: {includedTelephonyTypes: [UNKNOWN]}",
        "filter: {includedTelephonyTypes: []}",
        "page: {first: 0}",
        "page: {first: 2001}",
        "page: {offset: -1}",
        'page: {offset: 3, after: "cG4xOjA6MA"}',
        'page: {after: "not-a-cursor"}',
        'page: {after: "cG4xOmZmZmZmZmZmZmZmZmZmZmY6Mw"}',
        "filter: {ownerType: ROBOT}",
        "page: {first: 99999999999}",
    ],
)
async def test_invalid_arguments_fail_before_any_upstream_call(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, arguments: str
) -> None:
    # Arguments the schema itself rejects fail validation (400, Apollo's
    # GRAPHQL_VALIDATION_FAILED); the rest fail in the resolver (BAD_USER_INPUT).
    invalid = arguments in INVALID_FOR_THE_SCHEMA
    body = await graphql(
        gateway, f"{{ phoneNumbers({arguments}) {{ totalCount }} }}", status=400 if invalid else 200
    )
    code = "GRAPHQL_VALIDATION_FAILED" if invalid else "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["code"] == code, body
    assert body["errors"][0]["message"]
    assert recorder.calls == 0


async def test_a_cursor_from_another_query_is_rejected(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    first = await graphql(
        gateway,
        "{ phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 2}) { pageInfo { endCursor } } }",
    )
    cursor = first["data"]["phoneNumbers"]["pageInfo"]["endCursor"]
    body = await graphql(
        gateway,
        "query($c: String) { phoneNumbers(filter: {ownerType: PLACE}, page: {after: $c}) { totalCount } }",
        {"c": cursor},
    )
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "different orgId, filter or order" in body["errors"][0]["message"]
    assert recorder.calls == 1


async def test_an_invalid_document_has_a_contract_code(gateway: httpx.AsyncClient) -> None:
    for query, code in (
        ("{ phoneNumbers { nope } }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ phoneNumbers(", "GRAPHQL_PARSE_FAILED"),
        ("query($x: Int!) { numberCounts { total } }", "GRAPHQL_VALIDATION_FAILED"),
    ):
        body = await graphql(gateway, query, status=400)
        assert "data" not in body, "a request error has no data entry"
        assert body["errors"][0]["extensions"]["code"] == code, body


# --- errors -------------------------------------------------------------------------------


def scripted(
    status: int, body: bytes | None = None, **headers: str
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        content = (
            body
            if body is not None
            else (
                b'{"message": "nope", "errors": [{"description": "Upstream says why.", "errorCode": 1}],'
                b' "trackingId": "ROUTER_abc"}'
            )
        )
        return httpx.Response(status, content=content, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "BAD_USER_INPUT"),
        (401, "UNAUTHENTICATED"),
        (403, "FORBIDDEN"),
        (404, "NOT_FOUND"),
        (409, "BAD_USER_INPUT"),
        (500, "UPSTREAM_UNAVAILABLE"),
        (502, "UPSTREAM_UNAVAILABLE"),
        (503, "UPSTREAM_UNAVAILABLE"),
        (504, "UPSTREAM_UNAVAILABLE"),
    ],
)
async def test_upstream_statuses_map_to_contract_codes(status: int, code: str) -> None:
    recorder = RecordingTransport(handler=scripted(status))
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(
            client, "{ phoneNumbers { totalCount } }", headers={"Authorization": "Bearer t"}
        )
    error = body["errors"][0]
    assert body["data"] == {"phoneNumbers": None}
    assert error["extensions"] == {
        "code": code,
        "upstreamStatus": status,
        "trackingId": "ROUTER_abc",
    }
    if status < 500:
        assert "Upstream says why." in error["message"]
        assert recorder.calls == 1, "4xx is never retried"


@pytest.mark.parametrize("status", [423, 429])
async def test_rate_limits_beyond_the_deadline_fail_at_once(status: int) -> None:
    recorder = RecordingTransport(handler=scripted(status, **{"Retry-After": "120"}))
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(
            client, "{ numberCounts { total } }", headers={"Authorization": "Bearer t"}
        )
    assert body["errors"][0]["extensions"] == {
        "code": "RATE_LIMITED",
        "upstreamStatus": status,
        "trackingId": "ROUTER_abc",
        "retryAfter": 120,
    }
    assert recorder.calls == 1


@pytest.mark.parametrize(
    ("body", "content_type"), [(b"<html>Bad gateway</html>", "text/html"), (b"", "text/plain")]
)
async def test_non_json_error_bodies(body: bytes, content_type: str) -> None:
    recorder = RecordingTransport(
        handler=scripted(502, body, **{"TrackingID": "ROUTER_hdr", "Content-Type": content_type})
    )
    async with running_gateway(live_settings(), recorder) as client:
        result = await graphql(
            client, "{ numberCounts { total } }", headers={"Authorization": "Bearer t"}
        )
    assert result["errors"][0]["extensions"] == {
        "code": "UPSTREAM_UNAVAILABLE",
        "upstreamStatus": 502,
        "trackingId": "ROUTER_hdr",
    }


@pytest.mark.parametrize("body", [b"not json", b'{"phoneNumbers": [', b"[1, 2]", b'"text"'])
async def test_unreadable_200_bodies(body: bytes) -> None:
    recorder = RecordingTransport(handler=scripted(200, body))
    async with running_gateway(live_settings(), recorder) as client:
        result = await graphql(
            client, "{ phoneNumbers { totalCount } }", headers={"Authorization": "Bearer t"}
        )
    assert result["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert result["errors"][0]["extensions"]["upstreamStatus"] == 200


async def test_connection_failure_is_upstream_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    recorder = RecordingTransport(handler=handler)
    async with running_gateway(live_settings(), recorder) as client:
        result = await graphql(
            client, "{ numberCounts { total } }", headers={"Authorization": "Bearer t"}
        )
    assert result["errors"][0]["extensions"] == {"code": "UPSTREAM_UNAVAILABLE"}
    assert recorder.calls == 3, "connection failures are retried"


async def test_one_failing_root_field_keeps_its_siblings(
    gateway: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    other_org = list(world.orgs)[1]
    body = await graphql(
        gateway,
        f'{{ mine: numberCounts {{ total }} theirs: numberCounts(orgId: "{other_org}") {{ total }} }}',
    )
    assert body["data"]["mine"]["total"] == 1000
    assert body["data"]["theirs"] is None
    assert body["errors"][0]["path"] == ["theirs"]
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_tolerant_reader_over_http() -> None:
    odd = {
        "phoneNumbers": [
            {
                "phoneNumber": "",
                "extension": "77",
                "state": "QUANTUM",
                "owner": {"id": "o", "type": "ROBOT", "firstName": "R"},
                "location": {"id": "L", "name": "Lab"},
                "somethingNew": [1, 2],
            },
            "not an object",
            {"location": {"id": "L"}},
        ],
        "count": {"total": 2, "elin": 9},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=odd)

    async with running_gateway(live_settings(), RecordingTransport(handler=handler)) as client:
        body = await graphql(
            client,
            "{ phoneNumbers { totalCount nodes { phoneNumber extension state mainNumber "
            "tollFreeNumber isReservedNumber owner { type firstName lastName } location { name } } } }",
            headers={"Authorization": "Bearer t"},
        )
    assert "errors" not in body, body
    first, second = body["data"]["phoneNumbers"]["nodes"]
    assert first["phoneNumber"] is None
    assert first["state"] == "UNKNOWN"
    assert first["owner"] == {"type": "UNKNOWN", "firstName": "R", "lastName": None}
    assert second["owner"] is None
    assert second["mainNumber"] is False
    assert body["data"]["phoneNumbers"]["totalCount"] == 2


async def test_missing_phone_numbers_key_is_an_empty_page() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={"count": {"total": 0}},
            headers={"Link": '<http://webex.test/v1/telephony/config/numbers?start=5>; rel="next"'},
        )

    recorder = RecordingTransport(handler=handler)
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(
            client,
            "{ phoneNumbers { nodes { extension } pageInfo { hasNextPage endCursor } } }",
            headers={"Authorization": "Bearer t"},
        )
    assert body["data"]["phoneNumbers"] == {
        "nodes": [],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    }
    assert recorder.calls == 1, "an empty page ends the walk"


# --- auth ---------------------------------------------------------------------------------


async def test_live_mode_without_authorization_is_unauthenticated_with_no_call(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(client, "{ phoneNumbers { totalCount } numberCounts { total } }")
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"] * 2
    assert recorder.calls == 0


async def test_a_blank_authorization_header_is_no_credentials(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        body = await graphql(client, "{ numberCounts { total } }", headers={"Authorization": "  "})
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert recorder.calls == 0


async def test_only_authorization_is_forwarded_unchanged(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    await graphql(
        gateway,
        "{ numberCounts { total } }",
        headers={
            "Authorization": "Bearer demo-readonly",
            "Cookie": "session=1",
            "X-Forwarded-For": "10.0.0.1",
            "X-Custom": "nope",
        },
    )
    sent = recorder.requests[0].headers
    assert sent["Authorization"] == "Bearer demo-readonly"
    assert not {"cookie", "x-forwarded-for", "x-custom"} & {name.lower() for name in sent}


async def test_embedded_mode_needs_no_token() -> None:
    async with running_gateway(load_settings()) as client:
        body = await graphql(
            client,
            "{ phoneNumbers(page: {first: 5}) { nodes { phoneNumber owner { lastName } } totalCount } "
            "numberCounts { total } }",
        )
    assert "errors" not in body
    assert len(body["data"]["phoneNumbers"]["nodes"]) == 5
    assert body["data"]["phoneNumbers"]["totalCount"] == body["data"]["numberCounts"]["total"]


async def test_location_admin_and_no_scope_tokens(
    gateway: httpx.AsyncClient, world: SimulatorWorld
) -> None:
    body = await graphql(
        gateway,
        "{ phoneNumbers(page: {first: 2000}) { nodes { location { id } } } }",
        headers={"Authorization": "Bearer demo-location-admin"},
    )
    locations = {n["location"]["id"] for n in body["data"]["phoneNumbers"]["nodes"]}
    assert locations == {world.demo_org.location_ids[0]}
    denied = await graphql(
        gateway, "{ numberCounts { total } }", headers={"Authorization": "Bearer demo-no-scope"}
    )
    extensions = denied["errors"][0]["extensions"]
    assert extensions["code"] == "FORBIDDEN"
    assert extensions["upstreamStatus"] == 403
    assert extensions["trackingId"].startswith("ROUTER_")


async def test_a_token_never_appears_in_a_response(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        response = await client.post(
            "/graphql",
            json={"query": '{ phoneNumbers { totalCount } numberCounts(orgId: "x") { total } }'},
            headers={"Authorization": "Bearer super-secret-token-value"},
        )
        metrics = await client.get("/metrics")
    assert "super-secret-token-value" not in response.text
    assert "super-secret-token-value" not in metrics.text


# --- batching within one operation --------------------------------------------------------


async def test_total_count_and_number_counts_share_one_call(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    body = await graphql(
        gateway,
        """{
          a: phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 3}) { totalCount nodes { extension } }
          b: phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 3}) { ...Total }
          numberCounts(filter: {ownerType: PEOPLE}) { total }
        }
        fragment Total on PhoneNumberConnection { totalCount pageInfo { hasNextPage } }""",
    )
    assert "errors" not in body
    assert body["data"]["a"]["totalCount"] == body["data"]["numberCounts"]["total"]
    assert body["data"]["b"]["totalCount"] == body["data"]["numberCounts"]["total"]
    assert recorder.calls == 1
    assert recorder.params() == [("ownerType", "PEOPLE"), ("max", "3"), ("details", "true")]


async def test_counts_ride_on_an_ordered_page_of_the_same_filter(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    await graphql(
        gateway,
        "{ phoneNumbers(order: {by: DN}, page: {first: 4}) { nodes { extension } } numberCounts { total } }",
    )
    assert recorder.calls == 1
    assert recorder.params() == [("order", "dn-asc"), ("max", "4"), ("details", "true")]


async def test_different_filters_are_different_calls(
    gateway: httpx.AsyncClient, recorder: RecordingTransport
) -> None:
    await graphql(
        gateway,
        "{ a: numberCounts(filter: {ownerType: PEOPLE}) { total } b: numberCounts { total } "
        "c: numberCounts(filter: {ownerType: PEOPLE}) { assigned } }",
    )
    assert recorder.calls == 2

"""The inventory export (issue 30), through the app: ``GET /export/phone-numbers.csv`` and
``.ndjson``.

- The rows are the GraphQL answer: for each filter and order, the whole list walked by cursor
  through ``/graphql`` and walked by the export give the same entries in the same order
  (NDJSON: the GraphQL nodes themselves; CSV: those nodes flattened under dotted headers),
  over the simulator, several upstream pages long; the columns are the schema's fields, in
  its order, and the parameters the filter's fields by their GraphQL names.
- Refused before any upstream call: unknown, repeated or malformed parameters and the
  filter's conflicts (400, the message GraphQL gives for the same filter), a missing or
  non-Bearer credential (401); refused by the upstream before any row: 401, 403, 429.
- Never cached; walked a page at a time as the client takes it (a client that does not read
  holds the walk; one that leaves ends it); bounded per caller and in total; ended at
  shutdown.
- An upstream failure after N pages (the token revoked, a 5xx, a timeout): NDJSON ends with a
  trailer saying so and how many rows came, CSV is cut off (its body never ends).
- Spreadsheet formula injection neutralised in CSV cells, E.164 numbers kept; RFC 4180
  quoting; the attachment's filename; the request log and the metrics name the export.

Raw ASGI exchanges (``ExportExchange``) see each body message as it is sent; a real socket,
curl, a spreadsheet and 100,000 entries are in ``test_export_e2e``.
"""

from __future__ import annotations

import asyncio
import csv
import email.message
import io
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from graphql import GraphQLList, GraphQLNonNull, GraphQLObjectType, get_named_type, is_leaf_type
from structlog.testing import capture_logs

from gateway.domain.enums import OwnerType
from gateway.schema.build import build_schema, graphql_schema
from gateway.server.app import create_app
from gateway.settings import load_settings
from gateway.simulator import create_simulator_app, world_from_items
from gateway.simulator.dataset import SimulatorWorld
from gateway.transports.export import ExportAborted
from gateway.transports.export_parameters import FILTER_PARAMETERS, filter_parameter
from gateway.transports.export_rows import COLUMNS, FORMULA_STARTS
from gateway.transports.stream_styles import SHUTDOWN_ERROR
from tests.conftest import (
    GATEWAY_BASE,
    FakeClock,
    RecordingTransport,
    eventually,
    graphql,
    live_settings,
    metric,
    running_gateway,
)

PAGE = 150  # GATEWAY_MAX_PAGE_SIZE here: the 1,000-entry demo org is seven upstream pages
CSV_PATH = "/export/phone-numbers.csv"
NDJSON_PATH = "/export/phone-numbers.ndjson"
ADMIN = {"Authorization": "Bearer demo-admin"}
# The GraphQL oracle: every field of PhoneNumber, written out by hand.
EVERY_FIELD = """phoneNumber extension routingPrefix esn state phoneNumberType mainNumber
  includedTelephonyTypes mobileNetwork routingProfile tollFreeNumber isServiceNumber
  isReservedNumber elinEnabled location { id name }
  owner { id type firstName lastName displayName elinExpiryTime }"""
WALK = f"""query Walk($filter: PhoneNumberFilter, $order: PhoneNumberOrder, $after: String) {{
  phoneNumbers(filter: $filter, order: $order, page: {{first: {PAGE}, after: $after}}) {{
    pageInfo {{ hasNextPage endCursor }} nodes {{ {EVERY_FIELD} }} }} }}"""
E164_NUMBER = "+14155550100"


# --- helpers ----------------------------------------------------------------------------------


@asynccontextmanager
async def gateway_over(
    transport: httpx.AsyncBaseTransport, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A live-mode gateway over ``transport`` with ``PAGE``-item upstream pages."""
    clock = settings.pop("clock", None)
    seams = {"clock": clock} if clock is not None else {}
    async with running_gateway(
        live_settings(max_page_size=PAGE, **settings), transport, **seams
    ) as client:
        client.headers.update(ADMIN)
        yield client


async def graphql_walk(
    client: httpx.AsyncClient, flt: dict[str, Any] | None, order: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The whole list as ``/graphql`` answers it, page after page by cursor."""
    nodes: list[dict[str, Any]] = []
    after = None
    while True:
        body = await graphql(client, WALK, {"filter": flt, "order": order, "after": after})
        assert "errors" not in body, body
        connection = body["data"]["phoneNumbers"]
        nodes += connection["nodes"]
        if not connection["pageInfo"]["hasNextPage"]:
            return nodes
        after = connection["pageInfo"]["endCursor"]


def ndjson_of(body: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The entries and the trailer of an NDJSON export (every line ends with a newline)."""
    assert body.endswith(b"\n")
    lines = [orjson.loads(line) for line in body.split(b"\n")[:-1]]
    return lines[:-1], lines[-1]


def csv_of(body: bytes) -> list[list[str]]:
    """The rows of a CSV export, read by Python's csv module as RFC 4180 says."""
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def value_at(node: dict[str, Any], column: str) -> Any:
    value: Any = node
    for key in column.split("."):
        value = None if value is None else value[key]
    return value


def expected_cell(value: Any) -> str:
    """The oracle's cell: as the GraphQL JSON value reads, text a spreadsheet may not evaluate."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text.startswith(FORMULA_STARTS) and not (text.startswith("+") and text[1:].isdigit()):
        return "'" + text
    return text


def schema_columns() -> list[str]:
    """Every leaf of ``PhoneNumber`` in the schema's order, nested ones dotted (fields with
    arguments or objects of their own, such as ``owner.person``, are not data)."""
    schema = graphql_schema(build_schema())
    phone = schema.type_map["PhoneNumber"]
    assert isinstance(phone, GraphQLObjectType)
    columns = []
    for name, field in phone.fields.items():
        named = get_named_type(field.type)
        if isinstance(named, GraphQLObjectType):
            columns += [
                f"{name}.{sub}"
                for sub, subfield in named.fields.items()
                if not subfield.args and is_leaf_type(get_named_type(subfield.type))
            ]
        else:
            columns.append(name)
    return columns


class FailAfter(httpx.AsyncBaseTransport):
    """The upstream answering the first ``pages`` requests, then failing every one: with
    ``status`` (the token revoked: 401; an outage: 503), or no answer in time (``timeout``)."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, pages: int, status: int | None = None
    ) -> None:
        self.inner = inner
        self.pages = pages
        self.status = status
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.pages:
            return await self.inner.handle_async_request(request)
        if self.status is None:
            raise httpx.ReadTimeout("the upstream did not answer in time", request=request)
        body = {"message": "gone", "trackingId": "ROUTER_0000-1111"}
        return httpx.Response(self.status, content=orjson.dumps(body))


class HoldFrom(httpx.AsyncBaseTransport):
    """Passes the first ``passed`` requests, holds the others until ``release``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, passed: int) -> None:
        self.inner = inner
        self.passed = passed
        self.calls = 0
        self.held = 0
        self.gate = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls > self.passed:
            self.held += 1
            try:
                await self.gate.wait()
            finally:
                self.held -= 1
        return await self.inner.handle_async_request(request)


class ExportExchange:
    """One export request as raw ASGI: each message as it is sent, a client that reads only
    when told to (``hold_body``: every body message waits for ``read_one``), and a way to leave."""

    def __init__(
        self,
        app: Any,
        path: str,
        query: str = "",
        *,
        headers: dict[str, str] | None = None,
        hold_body: bool = False,
    ) -> None:
        self.app = app
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": [
                (b"host", b"gateway.test"),
                *((k.lower().encode(), v.encode()) for k, v in (headers or ADMIN).items()),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("gateway.test", 80),
        }
        self.hold_body = hold_body
        self.messages: list[dict[str, Any]] = []
        self.waiting = 0  # body messages the client has not read yet
        self._reads = asyncio.Semaphore(0)
        self._requested = False
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and self.hold_body:
            self.waiting += 1
            try:
                await self._reads.acquire()
            finally:
                self.waiting -= 1
        self.messages.append(message)

    async def read_one(self) -> None:
        """Take the body message the server is waiting to send, once it has been taken."""
        taken = len(self.messages)
        self._reads.release()
        await eventually(lambda: len(self.messages) > taken, "the client read the message")

    def leave(self) -> None:
        self.gone.set()

    async def run(self) -> None:
        await self.app(self.scope, self.receive, self.send)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def ended(self) -> bool:
        """The body's last message was sent (``more_body`` false): the response is whole."""
        return any(
            m["type"] == "http.response.body" and not m.get("more_body", False)
            for m in self.messages
        )


@asynccontextmanager
async def lifespan_over(
    transport: httpx.AsyncBaseTransport, clock: FakeClock | None = None, **settings: Any
) -> AsyncIterator[LifespanManager]:
    seams = {"clock": clock} if clock is not None else {}
    app = create_app(
        live_settings(max_page_size=PAGE, **settings), upstream_transport=transport, **seams
    )
    async with LifespanManager(app) as manager:
        yield manager


def a_location(world: SimulatorWorld, index: int = 1) -> str:
    return world.demo_org.location_ids[index]


# --- the rows are the GraphQL answer ----------------------------------------------------------


def test_the_columns_are_every_phone_number_field_in_the_schemas_order() -> None:
    assert list(COLUMNS) == schema_columns()
    assert COLUMNS[:2] == ("phoneNumber", "extension")
    assert {"location.id", "location.name", "owner.type", "owner.elinExpiryTime"} <= set(COLUMNS)


def test_the_parameters_are_the_filters_fields_by_their_graphql_names() -> None:
    schema = graphql_schema(build_schema())
    flt = schema.type_map["PhoneNumberFilter"]
    fields = flt.fields  # type: ignore[attr-defined]
    assert [p.name for p in FILTER_PARAMETERS] == list(fields)
    for parameter in FILTER_PARAMETERS:
        graphql_type = fields[parameter.name].type
        inner = graphql_type.of_type if isinstance(graphql_type, GraphQLNonNull) else graphql_type
        assert parameter.repeated == isinstance(inner, GraphQLList), parameter.name


def test_a_list_field_of_the_filter_is_a_repeated_parameter() -> None:
    """Issue 29's fan-out lists are read as ``includedTelephonyTypes`` is, once the domain's
    filter has them: a repeated parameter, each value one item of its kind."""
    location_ids = filter_parameter("location_ids", list[str] | None)
    assert (location_ids.name, location_ids.repeated) == ("locationIds", True)
    assert location_ids.read("locationIds", "L1") == "L1"
    owner_types = filter_parameter("owner_types", list[OwnerType] | None)
    assert (owner_types.name, owner_types.repeated) == ("ownerTypes", True)
    assert owner_types.read("ownerTypes", "CALL_QUEUE") is OwnerType.CALL_QUEUE


FILTERS: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = [
    ("", None, None),
    ("order=LAST_NAME:DESC", None, {"by": "LAST_NAME", "direction": "DESC"}),
    ("ownerType=PEOPLE&order=EXTENSION", {"ownerType": "PEOPLE"}, {"by": "EXTENSION"}),
    ("numberType=NUMBER&includedTelephonyTypes=MOBILE_NUMBER",
     {"numberType": "NUMBER", "includedTelephonyTypes": ["MOBILE_NUMBER"]}, None),
    ("includedTelephonyTypes=PSTN_NUMBER&includedTelephonyTypes=MOBILE_NUMBER",
     {"includedTelephonyTypes": ["PSTN_NUMBER", "MOBILE_NUMBER"]}, None),
    ("available=true&order=DN:ASC", {"available": True}, {"by": "DN", "direction": "ASC"}),
    ("location", None, None),  # one location, its id filled in by the test
]  # fmt: skip


@pytest.mark.parametrize(("query", "flt", "order"), FILTERS, ids=[q or "all" for q, *_ in FILTERS])
async def test_the_rows_are_the_graphql_answer_for_the_same_filter_and_order(
    recorder: RecordingTransport,
    world: SimulatorWorld,
    query: str,
    flt: dict[str, Any] | None,
    order: dict[str, Any] | None,
) -> None:
    if query == "location":
        location = a_location(world)
        query, flt = f"locationId={quote(location)}", {"locationId": location}
    async with gateway_over(recorder) as client:
        nodes = await graphql_walk(client, flt, order)
        assert len(nodes) > PAGE or query.startswith(("numberType", "location")), "several pages"
        before = recorder.calls
        ndjson = await client.get(f"{NDJSON_PATH}?{query}")
        walked = recorder.calls - before
        spreadsheet = await client.get(f"{CSV_PATH}?{query}")
    assert ndjson.status_code == 200, ndjson.text
    entries, trailer = ndjson_of(ndjson.content)
    assert entries == nodes
    assert trailer == {"__export": {"complete": True, "rows": len(nodes)}}
    # One upstream request a page, the cached GraphQL walk of the same pages notwithstanding.
    assert walked == max(1, math.ceil(len(nodes) / PAGE))
    assert spreadsheet.status_code == 200, spreadsheet.text
    assert spreadsheet.headers["content-type"] == "text/csv; charset=utf-8; header=present"
    rows = csv_of(spreadsheet.content)
    assert rows[0] == schema_columns()
    assert rows[1:] == [[expected_cell(value_at(node, c)) for c in rows[0]] for node in nodes]
    # RFC 4180: every record ends with CRLF (the simulator's values hold no line breaks).
    assert spreadsheet.content.count(b"\r\n") == len(rows)
    assert b"\n" not in spreadsheet.content.replace(b"\r\n", b"")


async def test_a_location_admin_exports_what_graphql_shows_them(
    recorder: RecordingTransport,
) -> None:
    async with gateway_over(recorder) as client:
        client.headers["Authorization"] = "Bearer demo-location-admin"
        nodes = await graphql_walk(client, None, None)
        entries, trailer = ndjson_of((await client.get(NDJSON_PATH)).content)
    assert entries == nodes
    assert trailer["__export"]["rows"] == len(nodes) > 0
    assert len({node["location"]["id"] for node in nodes}) == 1


async def test_an_export_is_never_cached(recorder: RecordingTransport) -> None:
    """Each export asks the upstream for every page, however recently the same was asked
    (a download is one moment of the list), and leaves the page cache alone."""
    async with gateway_over(recorder) as client:
        await graphql_walk(client, None, None)  # every page of the list in the page cache
        lookups = await metric(client, "gateway_cache_lookups_total")
        first = recorder.calls
        assert (await client.get(CSV_PATH)).status_code == 200
        second = recorder.calls
        assert (await client.get(CSV_PATH)).status_code == 200
        assert await metric(client, "gateway_cache_lookups_total") == lookups
    assert second - first == recorder.calls - second == math.ceil(1000 / PAGE)


async def test_the_embedded_simulator_exports_for_a_caller_without_a_token() -> None:
    """As on /graphql: with the embedded simulator, no header is its demo full admin."""
    app = create_app(load_settings(simulator_size=300))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url=GATEWAY_BASE
        ) as client,
    ):
        entries, trailer = ndjson_of((await client.get(NDJSON_PATH)).content)
    assert len(entries) == trailer["__export"]["rows"] == 300


# --- refused before any upstream call ---------------------------------------------------------

BAD_PARAMETERS = [
    ("foo=1", "'foo' is not an export parameter"),
    ("locationid=L1", "'locationid' is not an export parameter"),
    ("filter=%7B%7D", "'filter' is not an export parameter"),
    ("available=yes", "available must be true or false, got 'yes'"),
    ("available", "available must be true or false, got ''"),
    ("ownerType=NOPE", "ownerType: 'NOPE' is not a value of OwnerType; use one of PEOPLE"),
    ("ownerType=people", "'people' is not a value of OwnerType"),
    ("includedTelephonyTypes=PSTN_NUMBER&includedTelephonyTypes=FAX",
     "includedTelephonyTypes: 'FAX' is not a value of TelephonyType"),
    ("includedTelephonyTypes=", "'' is not a value of TelephonyType"),
    ("includedTelephonyTypes=UNKNOWN", "UNKNOWN only describes upstream values"),
    ("state=ACTIVE&state=INACTIVE", "state was given 2 times; it takes one value"),
    ("orgId=A&orgId=B", "orgId was given 2 times"),
    ("order=LAST_NAME&order=DN", "order was given 2 times"),
    ("order=lastName", "order must be a sort field (LAST_NAME, DN, EXTENSION)"),
    ("order=LAST_NAME:UP", "got 'LAST_NAME:UP'"),
    ("order=LAST_NAME:", "got 'LAST_NAME:'"),
    ("order=", "got ''"),
    ("available=true&ownerType=PEOPLE", "filter.available: true cannot be combined with"),
    ("numberType=EXTENSION&state=ACTIVE", "filter.numberType: EXTENSION cannot be combined"),
    ("reservedNumber=true&assigned=false", "filter.reservedNumber cannot be combined"),
    ("ownerName=" + "x" * 256, "filter.ownerName is 256 characters long; the most is 255"),
    ("phoneNumber=", "filter.phoneNumber must not be empty"),
    ("ownerId=a%01b", "filter.ownerId contains characters that are not printable"),
    ("orgId=" + "O" * 2000, "orgId is too long"),
    ("x" * 5000 + "=1", "'" + "x" * 64 + "' is not an export parameter"),  # not echoed whole
]  # fmt: skip


@pytest.mark.parametrize("path", [CSV_PATH, NDJSON_PATH])
@pytest.mark.parametrize(
    ("query", "message"), BAD_PARAMETERS, ids=[q[:40] for q, _ in BAD_PARAMETERS]
)
async def test_bad_parameters_are_refused_before_any_upstream_call(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, path: str, query: str, message: str
) -> None:
    response = await gateway.get(f"{path}?{query}")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    [error] = response.json()["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}
    assert message in error["message"], error["message"]
    assert recorder.calls == 0


@pytest.mark.parametrize(
    ("query", "flt"),
    [
        ("available=true&ownerType=PLACE", {"available": True, "ownerType": "PLACE"}),
        ("numberType=EXTENSION&available=false", {"numberType": "EXTENSION", "available": False}),
        ("assigned=true&numberType=EXTENSION", {"assigned": True, "numberType": "EXTENSION"}),
        ("ownerType=UNKNOWN", {"ownerType": "UNKNOWN"}),
        ("ownerName=" + "n" * 300, {"ownerName": "n" * 300}),
    ],
)
async def test_the_filter_is_checked_by_the_rules_graphql_checks_it_by(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, query: str, flt: dict[str, Any]
) -> None:
    exported = (await gateway.get(f"{CSV_PATH}?{query}")).json()["errors"][0]
    answered = (await graphql(gateway, WALK, {"filter": flt}))["errors"][0]
    assert exported["message"] == answered["message"]
    assert exported["extensions"]["code"] == answered["extensions"]["code"] == "BAD_USER_INPUT"
    assert recorder.calls == 0


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT", "DELETE"])
async def test_only_get_reads_an_export(
    gateway: httpx.AsyncClient, recorder: RecordingTransport, method: str
) -> None:
    response = await gateway.request(method, CSV_PATH)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert recorder.calls == 0


@pytest.mark.parametrize("authorization", [None, "", "Basic ZGVtbzpkZW1v", "Bearer", "demo-admin"])
async def test_missing_or_unusable_credentials_are_401_before_any_upstream_call(
    recorder: RecordingTransport, authorization: str | None
) -> None:
    async with gateway_over(recorder) as client:
        del client.headers["Authorization"]
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await client.get(NDJSON_PATH, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert recorder.calls == 0


@pytest.mark.parametrize(
    ("token", "query", "status", "code"),
    [
        ("nobody", "", 401, "UNAUTHENTICATED"),
        ("demo-no-scope", "", 403, "FORBIDDEN"),
        ("demo-admin", "orgId=partner", 403, "FORBIDDEN"),  # another org, without rights
    ],
)
async def test_the_upstreams_refusal_is_answered_with_its_status_before_any_row(
    recorder: RecordingTransport,
    world: SimulatorWorld,
    token: str,
    query: str,
    status: int,
    code: str,
) -> None:
    other_org = list(world.orgs)[1]
    async with gateway_over(recorder) as client:
        response = await client.get(
            f"{CSV_PATH}?{query.replace('partner', other_org)}",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == code
    assert error["extensions"]["upstreamStatus"] == status
    assert error["extensions"]["trackingId"].startswith("ROUTER_")
    assert "content-disposition" not in response.headers
    assert recorder.calls == 1
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


async def test_a_partner_exports_the_org_it_manages(world: SimulatorWorld) -> None:
    customer = list(world.orgs)[1]
    transport = httpx.ASGITransport(app=create_simulator_app(world))
    async with gateway_over(transport) as client:
        client.headers["Authorization"] = "Bearer demo-partner"
        response = await client.get(f"{NDJSON_PATH}?orgId={customer}")
    entries, trailer = ndjson_of(response.content)
    assert trailer["__export"]["rows"] == len(entries) == len(world.orgs[customer].entries)


@pytest.mark.parametrize("total", [-1, 2**40, "many"])
async def test_an_impossible_upstream_count_is_the_upstreams_fault(
    recorder: RecordingTransport, total: Any
) -> None:
    async with gateway_over(CountSays(recorder, total=total)) as client:
        response = await client.get(CSV_PATH)
    if total == "many":  # not a count at all: read as none, the walk decides
        assert response.status_code == 200
        return
    assert response.status_code == 502
    assert response.json()["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"


async def test_a_rate_limited_first_page_is_429_with_retry_after() -> None:
    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "7"}, json={"message": "slow down"})

    async with gateway_over(RecordingTransport(handler=limited), clock=FakeClock()) as client:
        response = await client.get(CSV_PATH)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["retryAfter"] == 7


class CountSays(httpx.AsyncBaseTransport):
    """The upstream, its ``count.total`` replaced by ``total`` (an upstream whose count is
    out of date, or a list that grows while it is walked)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, total: object) -> None:
        self.inner = inner
        self.total = total

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = orjson.loads(await response.aread())
        if "count" in body:
            body["count"]["total"] = self.total
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return httpx.Response(response.status_code, headers=headers, content=orjson.dumps(body))


async def test_a_list_longer_than_an_export_holds_is_refused_before_any_row(
    recorder: RecordingTransport,
) -> None:
    """GATEWAY_MAX_STREAM_ITEMS bounds an export as it bounds a streamed window."""
    async with gateway_over(recorder, max_stream_items=999) as client:
        response = await client.get(CSV_PATH)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["message"].startswith("The filter matches 1000 entries; an export holds at most")
    assert "GATEWAY_MAX_STREAM_ITEMS" in error["message"]
    assert "content-disposition" not in response.headers
    assert recorder.calls == 1


async def test_a_list_of_exactly_the_bound_is_exported_whole(recorder: RecordingTransport) -> None:
    async with gateway_over(recorder, max_stream_items=1000) as client:
        entries, trailer = ndjson_of((await client.get(NDJSON_PATH)).content)
    assert trailer == {"__export": {"complete": True, "rows": 1000}}
    assert len(entries) == 1000


async def test_a_list_that_grows_past_the_bound_while_exported_ends_early(
    recorder: RecordingTransport,
) -> None:
    """The count said the list fits; the walk finds more (or an upstream's next links would
    never end): the export stops at the bound, saying so, and never writes past it."""
    async with gateway_over(CountSays(recorder, total=10), max_stream_items=500) as client:
        response = await client.get(NDJSON_PATH)
        calls = recorder.calls
    entries, trailer = ndjson_of(response.content)
    assert len(entries) == 3 * PAGE  # the fourth page would pass the bound: not written
    error = trailer["__export"]["error"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "grew past 500 entries" in error["message"]
    assert calls == 4  # the walk asked for 501 entries at most, and stopped


# --- failures after the first row -------------------------------------------------------------

FAILURES = [(401, "UNAUTHENTICATED"), (503, "UPSTREAM_UNAVAILABLE"), (None, "UPSTREAM_TIMEOUT")]


@pytest.mark.parametrize(("status", "code"), FAILURES, ids=["revoked", "5xx", "timeout"])
async def test_a_failure_mid_walk_ends_ndjson_with_a_trailer_saying_so(
    recorder: RecordingTransport, status: int | None, code: str
) -> None:
    failing = FailAfter(recorder, pages=10**6, status=status)  # armed after the GraphQL walk
    with capture_logs() as logs:
        async with gateway_over(failing, clock=FakeClock()) as client:
            nodes = await graphql_walk(client, None, None)
            failing.calls, failing.pages = 0, 3
            response = await client.get(NDJSON_PATH)
            failed = await metric(client, 'gateway_exports_total{ended="failed",format="ndjson"}')
    assert response.status_code == 200
    entries, trailer = ndjson_of(response.content)
    assert entries == nodes[: 3 * PAGE]  # every row before the failure, whole
    status_of = trailer["__export"]
    assert status_of["complete"] is False
    assert status_of["rows"] == 3 * PAGE
    assert status_of["error"]["extensions"]["code"] == code
    assert status_of["error"]["message"]
    [line] = [e for e in logs if e["event"] == "http_request" and e["route"] == NDJSON_PATH]
    assert line["errorCodes"] == [code]
    assert line["outcome"] == "error"
    assert line["stream"]["ended"] == "failed"
    assert line["stream"]["items"] == 3 * PAGE
    assert failed == 1


@pytest.mark.parametrize(("status", "code"), FAILURES, ids=["revoked", "5xx", "timeout"])
async def test_a_failure_mid_walk_cuts_a_csv_body_off(
    recorder: RecordingTransport, status: int | None, code: str
) -> None:
    """The body's end is never sent: whole rows up to the failure, then ``ExportAborted``,
    which makes the server close the connection (over a socket: ``test_export_e2e``)."""
    failing = FailAfter(recorder, pages=2, status=status)
    async with lifespan_over(failing, clock=FakeClock()) as manager:
        exchange = ExportExchange(manager.app, CSV_PATH)
        with capture_logs() as logs, pytest.raises(ExportAborted, match=code):
            await exchange.run()
    assert exchange.status == 200
    assert not exchange.ended
    rows = csv_of(exchange.body)
    assert len(rows) == 1 + 2 * PAGE
    assert exchange.body.endswith(b"\r\n")
    [line] = [e for e in logs if e["event"] == "http_request"]
    assert line["stream"]["ended"] == "failed"
    assert line["errorCodes"] == [code]


async def test_an_unexpected_error_mid_walk_is_masked(recorder: RecordingTransport) -> None:
    class Broken(httpx.AsyncBaseTransport):
        calls = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            Broken.calls += 1
            if Broken.calls > 1:
                raise RuntimeError("a bug with a secret in it")
            return await recorder.handle_async_request(request)

    async with gateway_over(Broken()) as client:
        response = await client.get(NDJSON_PATH)
    _, trailer = ndjson_of(response.content)
    error = trailer["__export"]["error"]
    assert error["extensions"]["code"] in ("INTERNAL_SERVER_ERROR", "UPSTREAM_UNAVAILABLE")
    assert "secret" not in response.text


# --- backpressure, disconnects, bounds, shutdown ----------------------------------------------


async def settle() -> None:
    """Let every task that could run, run (nothing here waits for time to pass)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_client_that_does_not_read_holds_the_walk(recorder: RecordingTransport) -> None:
    """The next upstream page is asked for only once the client took the rows of the last:
    with the client not reading, the walk stays where it is."""
    async with lifespan_over(recorder) as manager:
        exchange = ExportExchange(manager.app, NDJSON_PATH, hold_body=True)
        task = asyncio.create_task(exchange.run())
        for page in range(1, 4):
            await eventually(lambda: exchange.waiting == 1, f"page {page}'s rows wait")
            await settle()
            assert recorder.calls == page  # nothing fetched ahead of the client
            await exchange.read_one()
        while not task.done():
            await eventually(lambda: exchange.waiting == 1 or task.done(), "the next write")
            await exchange.read_one()
        await task
    entries, trailer = ndjson_of(exchange.body)
    assert trailer["__export"] == {"complete": True, "rows": 1000}
    assert len(entries) == 1000
    assert recorder.calls == math.ceil(1000 / PAGE)


async def test_a_client_that_leaves_ends_the_walk(recorder: RecordingTransport) -> None:
    async with lifespan_over(recorder) as manager:
        exchange = ExportExchange(manager.app, CSV_PATH, hold_body=True)
        with capture_logs() as logs:
            task = asyncio.create_task(exchange.run())
            await eventually(lambda: exchange.waiting == 1, "the first rows wait")
            exchange.leave()
            await task
            await settle()
        assert exchange.scope["state"]["streams"].open == 0  # the lifespan's OpenStreams
    assert recorder.calls == 1
    [line] = [e for e in logs if e["event"] == "http_request"]
    assert line["stream"]["ended"] == "disconnected"


async def test_a_client_that_leaves_while_a_page_is_fetched_ends_the_walk(
    recorder: RecordingTransport,
) -> None:
    holding = HoldFrom(recorder, passed=1)
    async with lifespan_over(holding) as manager:
        exchange = ExportExchange(manager.app, NDJSON_PATH)
        task = asyncio.create_task(exchange.run())
        await eventually(lambda: holding.held == 1, "the second page is being fetched")
        exchange.leave()
        await task
        assert holding.held == 0  # the fetch was cancelled, not left to finish
    assert holding.calls == 2
    assert not exchange.ended


async def test_exports_share_the_callers_stream_bound(recorder: RecordingTransport) -> None:
    async with lifespan_over(recorder, max_streams_per_caller=1) as manager:
        held = ExportExchange(manager.app, CSV_PATH, hold_body=True)
        task = asyncio.create_task(held.run())
        await eventually(lambda: held.waiting == 1, "the first export streams")
        calls = recorder.calls
        second = ExportExchange(manager.app, NDJSON_PATH)
        await second.run()
        assert second.status == 429
        refusal = orjson.loads(second.body)["errors"][0]
        assert refusal["extensions"]["code"] == "RATE_LIMITED"
        assert (b"retry-after", b"1") in second.messages[0]["headers"]
        assert recorder.calls == calls  # refused before any upstream call
        other = ExportExchange(
            manager.app, NDJSON_PATH, headers={"Authorization": "Bearer demo-readonly"}
        )
        await other.run()  # another caller has a bound of its own
        assert other.status == 200
        assert other.ended
        held.leave()
        await task


async def test_an_export_holds_its_in_flight_place_until_it_ends(
    recorder: RecordingTransport,
) -> None:
    """The in-flight bound (GATEWAY_MAX_IN_FLIGHT) counts an export for as long as it streams;
    the refusal is logged and counted under the export's name."""
    async with lifespan_over(recorder, max_in_flight=1) as manager:
        held = ExportExchange(manager.app, CSV_PATH, hold_body=True)
        task = asyncio.create_task(held.run())
        await eventually(lambda: held.waiting == 1, "the first export streams")
        with capture_logs() as logs:
            refused = ExportExchange(manager.app, NDJSON_PATH)
            await refused.run()
        assert refused.status == 503
        held.leave()
        await task
        after = ExportExchange(manager.app, NDJSON_PATH)
        await after.run()
        assert after.status == 200
    [line] = [e for e in logs if e["event"] == "http_request"]
    assert line["operationName"] == "export:ndjson"
    assert line["errorCodes"] == ["RATE_LIMITED"]


@pytest.mark.parametrize("path", [NDJSON_PATH, CSV_PATH])
async def test_shutdown_ends_an_open_export(recorder: RecordingTransport, path: str) -> None:
    """At shutdown (``OpenStreams.close``, the lifespan's end) an export waiting for a page
    ends at once: NDJSON with the shutdown error in its trailer, CSV cut off."""
    holding = HoldFrom(recorder, passed=1)
    manager = LifespanManager(
        create_app(live_settings(max_page_size=PAGE), upstream_transport=holding)
    )
    await manager.__aenter__()
    exchange = ExportExchange(manager.app, path)
    task = asyncio.create_task(exchange.run())
    try:
        await eventually(lambda: holding.held == 1, "the second page is being fetched")
        await manager.__aexit__(None, None, None)
    finally:
        holding.gate.set()
    if path == CSV_PATH:
        with pytest.raises(ExportAborted, match="RATE_LIMITED"):
            await task
        assert not exchange.ended
        assert len(csv_of(exchange.body)) == 1 + PAGE
        return
    await task
    entries, trailer = ndjson_of(exchange.body)
    assert len(entries) == PAGE
    assert trailer == {"__export": {"complete": False, "rows": PAGE, "error": SHUTDOWN_ERROR}}


# --- cells, names, logs, metrics --------------------------------------------------------------

HOSTILE = [
    '=HYPERLINK("http://evil.test","click")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\t=1+1",
    "\r=1+1",
    "=cmd|' /C calc'!A0",
    "+1 (415) 555-0100",
    "plain, with a comma",
    'with "quotes"',
    "two\nlines",
    "Zoë Ångström 李",
]


def hostile_world() -> SimulatorWorld:
    items = []
    for index, text in enumerate(HOSTILE):
        items.append(
            {
                "phoneNumber": f"+1415555{index:04d}",
                "extension": text if index % 2 else f"{100 + index}",
                "esn": text,
                "state": "ACTIVE",
                "mainNumber": False,
                "tollFreeNumber": False,
                "isServiceNumber": False,
                "location": {"id": f"L{index % 2}", "name": text},
                "owner": {
                    "id": f"P{index}",
                    "type": "PEOPLE",
                    "firstName": text,
                    "lastName": text,
                    "displayName": text,
                },
            }
        )
    return world_from_items(items)


async def test_csv_cells_never_start_a_formula_and_keep_e164_numbers() -> None:
    transport = httpx.ASGITransport(app=create_simulator_app(hostile_world()))
    async with gateway_over(transport) as client:
        spreadsheet = await client.get(CSV_PATH)
        nodes = await graphql_walk(client, None, None)
        entries, _ = ndjson_of((await client.get(NDJSON_PATH)).content)
    rows = csv_of(spreadsheet.content)
    cells = [cell for row in rows for cell in row]
    assert all(
        not cell.startswith(FORMULA_STARTS) or (cell[0] == "+" and cell[1:].isdigit())
        for cell in cells
    ), [c for c in cells if c.startswith(FORMULA_STARTS)]
    by_column = dict(zip(rows[0], zip(*rows[1:], strict=True), strict=True))
    assert all(number.startswith("+1415555") for number in by_column["phoneNumber"])
    names = set(by_column["owner.firstName"])
    assert {'\'=HYPERLINK("http://evil.test","click")', "'+1+1", "'-2+3", "'@SUM(A1:A2)"} <= names
    assert {"'\t=1+1", "'\r=1+1", "'+1 (415) 555-0100"} <= names
    assert {"plain, with a comma", 'with "quotes"', "two\nlines", "Zoë Ångström 李"} <= names
    # Quoted as RFC 4180 says, UTF-8 as it is; NDJSON keeps every value as GraphQL gives it.
    assert b'"with ""quotes"""' in spreadsheet.content
    assert "Zoë Ångström 李".encode() in spreadsheet.content
    assert entries == nodes
    assert {entry["owner"]["firstName"] for entry in entries} == set(HOSTILE)


async def test_the_attachment_names_the_location_or_the_org_and_the_day(
    world: SimulatorWorld,
) -> None:
    clock = FakeClock(wall=1_800_000_000.0)
    day = datetime.fromtimestamp(1_800_000_000.0, UTC).date().isoformat()
    hostile = hostile_world()
    customer = list(world.orgs)[1]
    for served, token, query, path, expected in [
        (world, "demo-admin", "", CSV_PATH, f"phone-numbers-organization-{day}.csv"),
        (world, "demo-partner", f"orgId={customer}", NDJSON_PATH,
         f"phone-numbers-org-{customer}-{day}.ndjson"),
        (world, "demo-admin", f"locationId={a_location(world, 0)}", CSV_PATH,
         f"phone-numbers-{world.demo_org.entries[0].payload['location']['name']}-{day}.csv"),
        (world, "demo-admin", "locationId=nowhere", CSV_PATH, f"phone-numbers-nowhere-{day}.csv"),
        (world, "demo-admin", f"locationIds={a_location(world, 0)}&locationIds={a_location(world, 1)}",
         CSV_PATH, f"phone-numbers-2-locations-{day}.csv"),
        (world, "demo-admin", f"locationIds={a_location(world, 0)}", CSV_PATH,
         f"phone-numbers-{world.demo_org.entries[0].payload['location']['name']}-{day}.csv"),
        # The first entry of L1 is at "+1+1": only its letters and digits are kept.
        (hostile, "demo-admin", "locationId=L1", CSV_PATH, f"phone-numbers-1-1-{day}.csv"),
    ]:  # fmt: skip
        transport = httpx.ASGITransport(app=create_simulator_app(served))
        async with gateway_over(transport, clock=clock) as client:
            response = await client.get(
                f"{path}?{query}", headers={"Authorization": f"Bearer {token}"}
            )
        disposition = response.headers["content-disposition"]
        assert disposition.startswith("attachment; filename=")
        parsed = email.message.Message()
        parsed["content-disposition"] = disposition
        assert parsed.get_filename() == expected, disposition


async def test_a_locations_name_in_the_filename_is_made_safe() -> None:
    items = [
        {
            "phoneNumber": "+14155550100",
            "location": {"id": "L1", "name": 'Zürich "HQ"/../Lab\r\nSet-Cookie: x'},
        }
    ]
    transport = httpx.ASGITransport(app=create_simulator_app(world_from_items(items)))
    async with gateway_over(transport, clock=FakeClock()) as client:
        response = await client.get(f"{CSV_PATH}?locationId=L1")
    disposition = response.headers["content-disposition"]
    assert "set-cookie" not in {name.lower() for name in response.headers}
    ascii_name, unicode_name = disposition.split("; ")[1:]
    assert ascii_name.startswith('filename="phone-numbers-Zurich-HQ-Lab-Set-Cookie-x-')
    assert unicode_name.startswith("filename*=UTF-8''" + quote("phone-numbers-Zürich-HQ-Lab"))
    assert all(32 < ord(char) < 127 for char in disposition.replace(" ", ""))


async def test_the_request_log_and_the_metrics_name_the_export(
    gateway: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        assert (await gateway.get(NDJSON_PATH)).status_code == 200
        assert (await gateway.get(f"{CSV_PATH}?foo=1")).status_code == 400
    complete, refused = [e for e in logs if e["event"] == "http_request"]
    assert complete["operationName"] == "export:ndjson"
    assert complete["operationType"] == "export"
    assert complete["outcome"] == "success"
    assert complete["errorCodes"] == []
    assert complete["upstreamCalls"] == 1
    assert complete["cache"] == []
    assert complete["stream"]["transport"] == "ndjson"
    assert complete["stream"]["items"] == 1000
    assert complete["stream"]["ended"] == "complete"
    assert refused["operationName"] == "export:csv"
    assert refused["outcome"] == "rejected"
    assert refused["route"] == CSV_PATH
    labels = 'operation="export:ndjson",outcome="success"'
    assert await metric(gateway, f"gateway_graphql_operations_total{{{labels}}}") == 1
    labels = 'operation="export:csv",outcome="rejected"'
    assert await metric(gateway, f"gateway_graphql_operations_total{{{labels}}}") == 1
    labels = 'ended="complete",format="ndjson"'
    assert await metric(gateway, f"gateway_exports_total{{{labels}}}") == 1
    route = 'route="/export/phone-numbers.csv",status="400"'
    assert await metric(gateway, f"gateway_http_requests_total{{{route}}}") == 1


async def test_a_browser_may_read_the_filename_of_a_cross_origin_export(
    gateway: httpx.AsyncClient,
) -> None:
    response = await gateway.get(CSV_PATH, headers={"Origin": "http://localhost:3000"})
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "content-disposition" in exposed
    assert response.headers["content-encoding"] == "identity"
    assert response.headers["cache-control"] == "no-store"


def test_the_query_string_is_read_as_a_browser_encodes_it() -> None:
    """``URLSearchParams`` (a frontend's) and ``urlencode`` write lists as repeats."""
    from gateway.transports.export_parameters import read_export_parameters

    query = urlencode(
        [("includedTelephonyTypes", "PSTN_NUMBER"), ("includedTelephonyTypes", "MOBILE_NUMBER"),
         ("ownerName", "Zoë & Co+"), ("order", "LAST_NAME:DESC")]
    )  # fmt: skip
    from starlette.datastructures import QueryParams

    ask = read_export_parameters(QueryParams(query).multi_items())
    assert ask.filter is not None
    assert ask.filter.owner_name == "Zoë & Co+"
    assert [kind.name for kind in ask.filter.included_telephony_types or []] == [
        "PSTN_NUMBER",
        "MOBILE_NUMBER",
    ]
    assert ask.order is not None
    assert ask.order.direction.name == "DESC"

"""Operating the gateway: the request log line, request ids, metrics by operation and client
(bounded), and OpenTelemetry traces (in-memory exporter) down to the upstream's traceparent."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from gateway.observability.metrics import OTHER, BoundedLabel, GatewayMetrics
from gateway.observability.request_facts import (
    RequestFacts,
    UpstreamCall,
    client_field,
    request_id_from,
)
from gateway.observability.tracing import Tracing, TracingConfig, TracingConfigError
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import (
    FakeClock,
    GatedTransport,
    RecordingTransport,
    eventually,
    graphql,
    live_settings,
    metric,
    running_gateway,
)

ADMIN = {"Authorization": "Bearer demo-admin"}
NAMED = "query CountEverything { numberCounts { total } }"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"


def request_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "http_request"]


def only_graphql_line(logs: list[dict[str, Any]]) -> dict[str, Any]:
    lines = [entry for entry in request_lines(logs) if entry["route"] == "/graphql"]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


def named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# --- the log line --------------------------------------------------------------------------


async def test_a_successful_operation_logs_one_line_with_its_facts(
    recorder: RecordingTransport,
) -> None:
    secret_filter = "Zyxwvutsrq"
    async with running_gateway(live_settings(), recorder) as client:
        with capture_logs() as logs:
            await graphql(
                client,
                "query Owners($name: String) { phoneNumbers(filter: {ownerName: $name}) "
                "{ totalCount } numberCounts { total } }",
                {"name": secret_filter},
                headers={
                    **ADMIN,
                    "apollographql-client-name": "admin-console",
                    "apollographql-client-version": "2.4.1",
                },
            )
    line = only_graphql_line(logs)
    assert line["log_level"] == "info"
    assert UUID.fullmatch(line["requestId"])
    assert line["method"] == "POST"
    assert line["status"] == 200
    assert line["durationMs"] > 0
    assert line["operationName"] == "Owners"
    assert line["operationType"] == "query"
    assert line["clientName"] == "admin-console"
    assert line["clientVersion"] == "2.4.1"
    assert line["outcome"] == "success"
    assert line["errorCodes"] == []
    assert line["upstreamCalls"] == recorder.calls == 2
    assert {call["status"] for call in line["upstream"]} == {200}
    assert all(call["trackingId"].startswith("ROUTER_") for call in line["upstream"])
    assert line["cache"] == ["miss:upstream", "miss:upstream"]
    assert "traceId" not in line  # tracing is off
    # Never the token, never a variable's value.
    logged = json.dumps(logs)
    assert "demo-admin" not in logged
    assert secret_filter not in logged


async def test_an_upstream_failure_logs_every_call_with_its_tracking_id() -> None:
    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"message": "busy"}, headers={"TrackingID": "ROUTER_x1"})

    recorder = RecordingTransport(handler=unavailable)
    async with running_gateway(live_settings(), recorder, clock=FakeClock()) as client:
        with capture_logs() as logs:
            body = await graphql(client, NAMED, headers=ADMIN)
    assert body["errors"][0]["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
    line = only_graphql_line(logs)
    assert line["status"] == 200
    assert line["outcome"] == "error"
    assert line["errorCodes"] == ["UPSTREAM_UNAVAILABLE"]
    assert line["upstreamCalls"] == recorder.calls == 3  # the first try and two retries
    assert [(call["status"], call["trackingId"]) for call in line["upstream"]] == [
        (503, "ROUTER_x1")
    ] * 3


async def test_a_forbidden_caller_logs_the_upstreams_status_and_tracking_id(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        with capture_logs() as logs:
            await graphql(client, NAMED, headers={"Authorization": "Bearer demo-no-scope"})
    line = only_graphql_line(logs)
    assert line["errorCodes"] == ["FORBIDDEN"]
    [call] = line["upstream"]
    assert call["status"] == 403
    assert call["trackingId"].startswith("ROUTER_")


@pytest.mark.parametrize(
    ("document", "operation_type", "code"),
    [
        ("{ phoneNumbers { nope } }", "query", "GRAPHQL_VALIDATION_FAILED"),
        ("{ phoneNumbers(", None, "GRAPHQL_PARSE_FAILED"),
    ],
)
async def test_a_rejected_document_logs_its_code_and_no_upstream_call(
    recorder: RecordingTransport, document: str, operation_type: str | None, code: str
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        with capture_logs() as logs:
            await graphql(client, document, headers=ADMIN, status=400)
    line = only_graphql_line(logs)
    assert line["status"] == 400
    assert line["outcome"] == "rejected"
    assert line["errorCodes"] == [code]
    assert line["operationType"] == operation_type
    assert line["upstreamCalls"] == 0
    assert recorder.calls == 0


async def test_a_request_refused_before_graphql_logs_the_code_of_its_body(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        with capture_logs() as logs:
            response = await client.post(
                "/graphql", content=b"{}", headers={"Content-Type": "text/plain"}
            )
    assert response.status_code == 400  # CSRF prevention
    line = only_graphql_line(logs)
    assert line["errorCodes"] == ["BAD_USER_INPUT"]
    assert line["outcome"] == "rejected"


async def test_probes_log_at_debug_with_no_graphql_fields(
    gateway: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        for path in ("/healthz", "/readyz", "/metrics"):
            response = await gateway.get(path)
            assert response.status_code == 200
            assert UUID.fullmatch(response.headers["x-request-id"])
    lines = request_lines(logs)
    assert [line["route"] for line in lines] == ["/healthz", "/readyz", "/metrics"]
    assert {line["log_level"] for line in lines} == {"debug"}
    assert all("operationName" not in line for line in lines)


# --- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "incoming",
    ["abc-123", "01HZX3J4Q5R6S7T8V9W0XYZABC", "a" * 128, "Root.1:2-3_4"],
)
async def test_a_valid_incoming_request_id_is_kept(
    gateway: httpx.AsyncClient, incoming: str
) -> None:
    with capture_logs() as logs:
        response = await gateway.post(
            "/graphql", json={"query": NAMED}, headers={"X-Request-ID": incoming}
        )
    assert response.headers["x-request-id"] == incoming
    assert only_graphql_line(logs)["requestId"] == incoming


@pytest.mark.parametrize("incoming", ["", "a" * 129, "has space", 'quote"d', "semi;colon"])
async def test_an_invalid_request_id_is_replaced(gateway: httpx.AsyncClient, incoming: str) -> None:
    with capture_logs() as logs:
        response = await gateway.post(
            "/graphql", json={"query": NAMED}, headers={"X-Request-ID": incoming}
        )
    replaced = response.headers["x-request-id"]
    assert UUID.fullmatch(replaced)
    assert only_graphql_line(logs)["requestId"] == replaced


def test_request_id_and_client_fields_are_bounded() -> None:
    assert request_id_from(b"\xff\xfe") != "\xff\xfe"
    assert client_field(b"x" * 500) == "x" * 64
    assert client_field(b"web\r\napp\x00") == "webapp"
    assert client_field(b"   ") is None
    assert client_field(None) is None


async def test_every_line_a_request_causes_carries_its_request_id(
    recorder: RecordingTransport,
) -> None:
    # A Redis nobody listens on: the cache logs a warning while serving the request.
    settings = live_settings(redis_url="redis://127.0.0.1:1/0", cache_key_secret="s" * 32)
    async with running_gateway(settings, recorder) as client:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            await graphql(client, NAMED, headers={**ADMIN, "X-Request-ID": "req-42"})
    assert {entry["event"] for entry in logs} >= {"redis_unavailable", "http_request"}
    assert {entry["requestId"] for entry in logs} == {"req-42"}
    assert structlog.contextvars.get_contextvars() == {}  # unbound after the request


# --- metrics -------------------------------------------------------------------------------


def test_bounded_label_keeps_the_first_values_and_folds_the_rest() -> None:
    label = BoundedLabel(limit=2)
    assert [label("a"), label("b"), label("c"), label("a")] == ["a", "b", OTHER, "a"]
    assert label("d", admit=False) == OTHER


def test_operation_labels_are_bounded_and_never_taken_by_rejected_or_unvouched_ones() -> None:
    metrics = GatewayMetrics(label_values_max=2)
    seen = [
        ("Rejected", False, True),
        ("Unvouched", True, False),  # tokenless, or a token the upstream never accepted
        ("A", True, True),
        ("B", True, True),
        ("C", True, True),
        ("A", True, False),  # a name with a label keeps it, whoever sends it
    ]
    for name, executed, may_take_label in seen:
        metrics.observe_operation(
            operation_name=name,
            executed=executed,
            may_take_label=may_take_label,
            outcome="success" if executed else "rejected",
            client_name=name,
            seconds=0.01,
        )
    metrics.observe_operation(
        operation_name=None,
        executed=True,
        may_take_label=True,
        outcome="success",
        client_name=None,
        seconds=0.01,
    )
    text = metrics.render().decode()
    operations = set(re.findall(r'gateway_graphql_operations_total\{operation="([^"]+)"', text))
    assert operations == {"(other)", "A", "B", "(anonymous)"}
    assert 'gateway_graphql_operations_total{operation="A",outcome="success"} 2.0' in text
    clients = set(re.findall(r'gateway_graphql_client_operations_total\{client="([^"]+)"', text))
    assert clients == {"Rejected", "Unvouched", "(other)", "(none)"}


def test_a_label_needs_an_accepted_credential_or_a_trusted_document() -> None:
    facts = RequestFacts(request_id="r")
    assert not facts.may_take_label
    facts.upstream_calls.append(UpstreamCall(status=401))
    facts.upstream_calls.append(UpstreamCall(status=None))  # no answer
    facts.cache.append("reused:answer")  # a stored whole answer proves no credential
    assert not facts.may_take_label
    for event in ("miss:upstream", "hit:local", "hit:redis", "stale:local", "bypass:upstream"):
        assert RequestFacts(request_id="r", cache=[event]).may_take_label, event
    assert RequestFacts(request_id="r", upstream_calls=[UpstreamCall(status=200)]).may_take_label
    assert RequestFacts(request_id="r", trusted_document=True).may_take_label


def operation_labels(text: str) -> set[str]:
    return set(re.findall(r'gateway_graphql_operations_total\{operation="([^"]+)"', text))


async def test_junk_operations_with_made_up_tokens_cannot_take_the_label_slots(
    recorder: RecordingTransport,
) -> None:
    """Issue 18.6: 150 ``query JunkN { __typename }`` (each with its own made-up token, and
    tokenless), plus junk that reaches the upstream and is refused, take no label; a real
    operation with a real token afterwards still gets its own."""
    async with running_gateway(live_settings(), recorder) as client:
        for index in range(150):
            junk = f"query Junk{index} {{ __typename }}"
            await graphql(client, junk, headers={"Authorization": f"Bearer junk-{index}"})
            await graphql(client, junk.replace("Junk", "Tokenless"))
        refused = await graphql(
            client,
            "query JunkCounts { numberCounts { total } }",
            headers={"Authorization": "Bearer junk"},
        )
        assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert recorder.calls == 1
        real = await graphql(client, NAMED, headers=ADMIN)
        assert "errors" not in real, real
        # A repeat answered from the caller's own cache entry keeps it too.
        await graphql(client, NAMED, headers=ADMIN)
        text = (await client.get("/metrics")).text
    assert operation_labels(text) == {"(other)", "CountEverything"}
    assert 'gateway_graphql_operations_total{operation="(other)",outcome="success"} 300.0' in text
    assert (
        'gateway_graphql_operations_total{operation="CountEverything",outcome="success"} 2.0'
        in text
    )


async def test_a_trusted_document_takes_its_label_without_an_upstream_call(
    tmp_path: Path, recorder: RecordingTransport
) -> None:
    listed = "query Listed { __typename }"
    manifest = tmp_path / "persisted-documents.json"
    manifest.write_text(json.dumps({hashlib.sha256(listed.encode()).hexdigest(): listed}))
    settings = live_settings(trusted_documents=str(manifest))
    async with running_gateway(settings, recorder) as client:
        await graphql(client, listed)
        await graphql(client, "query Unlisted { __typename }")
        text = (await client.get("/metrics")).text
    assert operation_labels(text) == {"Listed", "(other)"}
    assert recorder.calls == 0


async def test_metrics_by_operation_and_client_stay_bounded_under_a_flood(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        for index in range(110):
            await graphql(
                client,
                f"query Flood{index} {{ numberCounts {{ total }} }}",
                headers={**ADMIN, "apollographql-client-name": f"client-{index}"},
            )
        text = (await client.get("/metrics")).text
    operations = set(re.findall(r'gateway_graphql_operations_total\{operation="([^"]+)"', text))
    clients = set(re.findall(r'gateway_graphql_client_operations_total\{client="([^"]+)"', text))
    assert len(operations) == len(clients) == 101
    assert "(other)" in operations
    assert "(other)" in clients
    assert 'gateway_graphql_operations_total{operation="(other)",outcome="success"} 10.0' in text


async def test_metrics_report_cache_size_breaker_state_and_process(
    recorder: RecordingTransport,
) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        await graphql(client, NAMED, headers=ADMIN)
        assert await metric(client, "gateway_cache_entries") == 1
        assert await metric(client, "gateway_cache_bytes") > 0
        text = (await client.get("/metrics")).text
    assert 'gateway_upstream_breaker_state{state="closed"} 1.0' in text
    assert 'gateway_upstream_breaker_state{state="open"} 0.0' in text
    assert "process_cpu_seconds_total" in text
    assert "python_info" in text
    assert (
        'gateway_graphql_operations_total{operation="CountEverything",outcome="success"} 1.0'
        in text
    )


async def test_breaker_state_shows_an_open_breaker() -> None:
    recorder = RecordingTransport(handler=lambda request: httpx.Response(500))
    settings = live_settings(breaker_failures=1)
    async with running_gateway(settings, recorder, clock=FakeClock()) as client:
        await graphql(client, NAMED, headers=ADMIN)
        text = (await client.get("/metrics")).text
    assert 'gateway_upstream_breaker_state{state="open"} 1.0' in text


async def test_http_in_flight_counts_requests_being_served(
    world: SimulatorWorld,
) -> None:
    from gateway.simulator import create_simulator_app

    gate = GatedTransport(httpx.ASGITransport(app=create_simulator_app(world)))
    async with running_gateway(live_settings(), gate) as client:
        assert await metric(client, "gateway_http_requests_in_flight") == 0
        pending = asyncio.create_task(graphql(client, NAMED, headers=ADMIN))
        await eventually(lambda: gate.held == 1, "the request waits upstream")
        assert await metric(client, "gateway_http_requests_in_flight") == 1
        gate.release()
        await pending
        assert await metric(client, "gateway_http_requests_in_flight") == 0


# --- tracing -------------------------------------------------------------------------------


def test_tracing_is_off_unless_the_otel_variables_ask() -> None:
    assert not TracingConfig.from_environment({}).enabled
    assert TracingConfig.from_environment(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    ).exporters == ("otlp",)
    assert TracingConfig.from_environment({"OTEL_TRACES_EXPORTER": "console,otlp"}).exporters == (
        "console",
        "otlp",
    )
    for off in (
        {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        },
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ):
        assert not TracingConfig.from_environment(off).enabled
    with pytest.raises(TracingConfigError, match="OTEL_TRACES_EXPORTER: 'zipkin'"):
        TracingConfig.from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc'"):
        TracingConfig.from_environment(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            }
        )


def test_started_tracing_names_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    tracing = Tracing.start(TracingConfig(("otlp",)))
    try:
        provider: Any = tracing.provider
        assert provider.resource.attributes["service.name"] == "numbers-gateway"
    finally:
        tracing.shutdown()
    assert not Tracing.start(TracingConfig()).enabled


async def test_a_request_makes_one_trace_from_server_span_to_upstream_call(
    recorder: RecordingTransport, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    async with running_gateway(live_settings(), recorder, tracing=tracing) as client:
        with capture_logs() as logs:
            await graphql(
                client,
                'query CountEverything { numberCounts(filter: {ownerName: "Secretname"}) '
                "{ total } }",
                headers={**ADMIN, "traceparent": CALLER_TRACEPARENT},
            )
    finished = exporter.get_finished_spans()
    [server] = named(finished, "POST /graphql")
    [operation] = named(finished, "query CountEverything")
    [parse] = named(finished, "graphql.parse")
    [validate] = named(finished, "graphql.validate")
    [lookup] = named(finished, "cache.lookup")
    [flight] = named(finished, "cache.single_flight")
    [upstream] = named(finished, "GET")
    # One trace, continuing the caller's; each span under the one that caused it.
    assert {format(span.context.trace_id, "032x") for span in finished} == {CALLER_TRACE_ID}
    assert parent_of(server) == int(CALLER_SPAN_ID, 16)
    assert server.kind is SpanKind.SERVER
    assert parent_of(operation) == server.context.span_id
    assert parent_of(parse) == parent_of(validate) == operation.context.span_id
    assert parent_of(lookup) == parent_of(flight) == operation.context.span_id
    assert parent_of(upstream) == flight.context.span_id
    assert upstream.kind is SpanKind.CLIENT
    # What the spans say, and what they must not.
    assert dict(server.attributes or {})["http.response.status_code"] == 200
    assert operation.attributes == {
        "graphql.operation.name": "CountEverything",
        "graphql.operation.type": "query",
    }
    assert lookup.attributes == {"cache.result": "miss", "cache.tier": "none"}
    assert flight.attributes == {"cache.single_flight.role": "leader"}
    attributes = dict(upstream.attributes or {})
    assert attributes["http.response.status_code"] == 200
    assert str(attributes["webex.tracking_id"]).startswith("ROUTER_")
    assert "ownerName" in list(attributes["gateway.upstream.query_keys"])  # type: ignore[arg-type]
    exported = json.dumps([span.to_json() for span in finished])
    assert "Secretname" not in exported
    assert "demo-admin" not in exported
    # The log line names the trace.
    assert only_graphql_line(logs)["traceId"] == CALLER_TRACE_ID


async def test_the_upstream_gets_the_gateways_traceparent_and_no_other_caller_header(
    recorder: RecordingTransport, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    async with running_gateway(live_settings(), recorder, tracing=tracing) as client:
        await graphql(
            client,
            NAMED,
            headers={
                **ADMIN,
                "traceparent": CALLER_TRACEPARENT,
                "tracestate": "vendor=secret",
                "baggage": "user=alice",
                "X-Custom": "nope",
            },
        )
    [upstream_span] = named(exporter.get_finished_spans(), "GET")
    [sent] = recorder.requests
    expected = f"00-{CALLER_TRACE_ID}-{upstream_span.context.span_id:016x}-01"
    assert sent.headers["traceparent"] == expected
    for header in ("tracestate", "baggage", "x-custom"):
        assert header not in sent.headers


async def test_each_attempt_is_a_span_and_a_logged_call_of_its_own(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    """The retries are the upstream transport's, under the client: the observers sit under
    them, so a 503 then a 200 is two CLIENT spans, two logged calls and two traceparents."""
    answers = [503, 200]
    sent: list[str | None] = []  # as each attempt went out (a retry re-sends the same request)

    def flaky(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("traceparent"))
        return httpx.Response(answers.pop(0), json={"phoneNumbers": [], "count": {"total": 1}})

    tracing, exporter = spans
    settings = live_settings()
    transport = RecordingTransport(handler=flaky)
    async with running_gateway(settings, transport, tracing=tracing, clock=FakeClock()) as client:
        with capture_logs() as logs:
            body = await graphql(client, NAMED, headers=ADMIN)
    assert body["data"]["numberCounts"]["total"] == 1
    attempts = named(exporter.get_finished_spans(), "GET")
    statuses = [dict(span.attributes or {})["http.response.status_code"] for span in attempts]
    assert statuses == [503, 200]
    assert [header.split("-")[2] if header else None for header in sent] == [
        f"{span.context.span_id:016x}" for span in attempts
    ], "each attempt carries its own span as its parent"
    assert [call["status"] for call in only_graphql_line(logs)["upstream"]] == [503, 200]


async def test_without_a_caller_traceparent_the_gateway_starts_the_trace(
    recorder: RecordingTransport, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    async with running_gateway(live_settings(), recorder, tracing=tracing) as client:
        await graphql(client, NAMED, headers={**ADMIN, "traceparent": "garbage"})
    [server] = named(exporter.get_finished_spans(), "POST /graphql")
    assert server.parent is None
    trace_id = f"{server.context.trace_id:032x}"
    assert recorder.requests[0].headers["traceparent"].split("-")[1] == trace_id


async def test_a_callers_unsampled_trace_is_not_recorded_and_stays_unsampled_upstream(
    recorder: RecordingTransport, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    unsampled = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-00"
    async with running_gateway(live_settings(), recorder, tracing=tracing) as client:
        with capture_logs() as logs:
            await graphql(client, NAMED, headers={**ADMIN, "traceparent": unsampled})
    assert exporter.get_finished_spans() == ()
    assert "traceId" not in only_graphql_line(logs)  # no trace to find
    sent = recorder.requests[0].headers["traceparent"]
    assert sent.startswith(f"00-{CALLER_TRACE_ID}-")
    assert sent.endswith("-00")


async def test_tracing_off_instruments_nothing(recorder: RecordingTransport) -> None:
    async with running_gateway(live_settings(), recorder) as client:
        await graphql(client, NAMED, headers={**ADMIN, "traceparent": CALLER_TRACEPARENT})
    assert "traceparent" not in recorder.requests[0].headers


async def test_probes_make_no_spans_and_errors_mark_the_operation(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    recorder = RecordingTransport(handler=lambda request: httpx.Response(404))
    async with running_gateway(live_settings(), recorder, tracing=tracing) as client:
        await client.get("/healthz")
        await graphql(client, NAMED, headers=ADMIN)
    finished = exporter.get_finished_spans()
    assert not [span for span in finished if "healthz" in span.name]
    [operation] = named(finished, "query CountEverything")
    assert operation.status.status_code is StatusCode.ERROR
    assert operation.attributes is not None
    assert list(operation.attributes["graphql.error_codes"]) == ["NOT_FOUND"]  # type: ignore[arg-type]


async def test_a_single_flight_waiter_links_to_the_leaders_span(
    world: SimulatorWorld, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    from gateway.simulator import create_simulator_app

    tracing, exporter = spans
    gate = GatedTransport(httpx.ASGITransport(app=create_simulator_app(world)))
    async with running_gateway(live_settings(), gate, tracing=tracing) as client:
        first = asyncio.create_task(graphql(client, NAMED, headers=ADMIN))
        await eventually(lambda: gate.held == 1, "the leader's call is upstream")
        second = asyncio.create_task(graphql(client, NAMED, headers=ADMIN))

        async def joined() -> bool:
            return await metric(client, "gateway_single_flight_coalesced_total") == 1

        await eventually(joined, "the second request joins the first's call")
        gate.release()
        await asyncio.gather(first, second)
    flights = named(exporter.get_finished_spans(), "cache.single_flight")
    roles = {span.attributes["cache.single_flight.role"]: span for span in flights}  # type: ignore[index]
    leader, waiter = roles["leader"], roles["waiter"]
    assert gate.calls == 1
    assert [link.context.span_id for link in waiter.links] == [leader.context.span_id]
    assert waiter.context.trace_id != leader.context.trace_id  # two requests, two traces

"""Operation plans (``gateway.execution.operation_plans``) through the whole HTTP stack, and the
incremental directives in every spelling GraphQL allows.

``test_operation_plans`` compares a plan with ``schema.execute`` at the schema. These go where
it does not:

- documents whose ``@defer``/``@stream`` are spelled with ignored tokens between ``@`` and
  the name (``@ defer``, ``@,defer``, ``@#comment`` newline ``defer``): graphql-core reads
  them as the directives, so they are never planned, are answered as incremental operations
  (merged into one JSON result, or streamed), and a negative ``initialCount`` is refused;
- the whole HTTP stack (POST, GET, batches, APQ, headers), two apps over the same simulator,
  one with plans and one without (``schema.plans = None``): status, bytes, the request log
  line's fields and the GraphQL metric samples must be the same, request for request.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.server.app as gateway_app
import gateway.server.request_log as request_log
from gateway.simulator import create_simulator_app
from gateway.simulator.dataset import SimulatorWorld
from tests.conftest import RecordingTransport, examples, live_settings, running_gateway
from tests.test_operation_plans import pair
from tests.test_projection import Operation, operations

# -- incremental directives in another spelling --------------------------------------------

SPELLINGS = ["@ defer", "@,defer", "@#why\ndefer", "@\tdefer"]


@pytest.mark.parametrize("defer", SPELLINGS)
async def test_a_deferring_document_is_never_planned_however_spelled(
    world: SimulatorWorld, defer: str
) -> None:
    """graphql-core parses ``@ defer`` as ``@defer``: such a document may deliver
    incrementally and must never be planned (the module's own rule). Planned, a request that
    activates the directive reaches the plan's ``assert``: the extensions' path logs no
    operation and observes the cost, the plan's logs one and does not."""
    query = (
        "query Q($d: Boolean!) { phoneNumbers(page: {first: 2}) { totalCount "
        f"... {defer}(if: $d) {{ nodes {{ phoneNumber }} }} }} }}"
    )
    async with two_apps(world) as (planned, unplanned):
        for deferred in (False, False, True):
            request = _post({"query": query, "variables": {"d": deferred}}, {})
            assert await planned.send(request) == await unplanned.send(request), deferred
        assert await planned.samples() == await unplanned.samples()
        assert len(planned.schema.plans) == 0, "a document that may deliver incrementally"


@pytest.mark.parametrize("defer", SPELLINGS)
async def test_a_deferred_fragment_however_spelled_is_merged_into_one_json_result(
    world: SimulatorWorld, defer: str
) -> None:
    """Found with the plans: a JSON POST with ``@ defer(if: true)`` took the whole-result
    path and answered INTERNAL_SERVER_ERROR (an incremental result where one was expected)."""
    query = f"{{ phoneNumbers(page: {{first: 2}}) {{ totalCount ... {defer} {{ nodes {{ phoneNumber }} }} }} }}"
    async with two_apps(world) as (planned, _):
        response = await planned.client.post("/graphql", json={"query": query})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "errors" not in answer, answer
    assert len(answer["data"]["phoneNumbers"]["nodes"]) == 2


async def test_a_negative_initial_count_however_spelled_is_bad_user_input(
    world: SimulatorWorld,
) -> None:
    query = "{ phoneNumbers { nodes @ stream(initialCount: -1) { phoneNumber } } }"
    async with two_apps(world) as (planned, _):
        response = await planned.client.post(
            "/graphql", json={"query": query}, headers={"Accept": "multipart/mixed"}
        )
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", response.text


async def test_a_streaming_document_is_never_planned_however_spelled() -> None:
    query = "{ phoneNumbers(page: {first: 2}) { nodes @ stream(initialCount: 1) { phoneNumber } } }"
    async with pair() as both:
        plans = both.planned.schema.plans
        await both.planned.run(both.source, query, None)
        assert len(plans) == 0, "a document that may deliver incrementally was planned"


# -- the whole HTTP stack, with plans and without ------------------------------------------


class LogLines:
    """Stands in for ``request_log``'s logger: keeps each request line's fields."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(fields)

    debug = info


# What differs from run to run whatever the path: timings, ids, the simulator's tracking ids.
_AGE = re.compile(rb'"ageSeconds":[0-9.e-]+')
_TRACKING = re.compile(rb'"trackingId":"[^"]*"')
_VOLATILE_FIELDS = ("requestId", "durationMs", "upstream")
_GRAPHQL_METRICS = ("gateway_graphql_errors", "gateway_operation_cost", "gateway_graphql_operat")


def _stable_body(body: bytes) -> bytes:
    return _TRACKING.sub(b'"trackingId":"-"', _AGE.sub(b'"ageSeconds":0', body))


def _graphql_samples(exposition: str) -> list[str]:
    return sorted(
        line
        for line in exposition.splitlines()
        if line.startswith(_GRAPHQL_METRICS)
        and "_created" not in line
        # Durations differ run to run; their counts do not.
        and ("_duration_" not in line or "_count" in line)
    )


@dataclass
class Side:
    client: httpx.AsyncClient
    log: LogLines
    schema: Any

    async def send(self, request: tuple[str, dict[str, Any]]) -> tuple[Any, ...]:
        method, options = request
        before = len(self.log.lines)
        response = await self.client.request(method, "/graphql", **options)
        lines = [
            {k: v for k, v in line.items() if k not in _VOLATILE_FIELDS}
            for line in self.log.lines[before:]
        ]
        return response.status_code, _stable_body(response.content), lines

    async def samples(self) -> list[str]:
        return _graphql_samples((await self.client.get("/metrics")).text)


@asynccontextmanager
async def two_apps(world: SimulatorWorld, **overrides: Any) -> AsyncIterator[tuple[Side, Side]]:
    """The same settings twice, each over its own simulator of ``world``: plans, none."""
    built: list[Any] = []
    original = gateway_app.build_schema

    def keeping(settings: Any) -> Any:
        schema = original(settings)
        built.append(schema)
        return schema

    log = LogLines()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway_app, "build_schema", keeping)
        patch.setattr(request_log, "log", log)
        async with AsyncExitStack() as stack:
            sides = []
            for _ in range(2):
                transport = RecordingTransport(httpx.ASGITransport(create_simulator_app(world)))
                client = await stack.enter_async_context(
                    running_gateway(live_settings(**overrides), transport)
                )
                client.headers["Authorization"] = "Bearer demo-admin"
                sides.append(Side(client, log, built[-1]))
            sides[1].schema.plans = None
            yield sides[0], sides[1]


def _post(body: Any, headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
    return "POST", {"json": body, "headers": headers}


def _get(operation: Operation, variables: dict[str, Any], headers: dict[str, str]) -> Any:
    params = {"query": operation.query, "variables": orjson.dumps(variables).decode()}
    return "GET", {"params": params, "headers": {**headers, "apollo-require-preflight": "1"}}


HEADERS = st.sampled_from(
    [
        {},
        {"Gateway-Cache-Report": "false"},
        {"Cache-Control": "no-cache"},
        {"Authorization": "Bearer junk"},
        {"Accept": "application/graphql-response+json"},
    ]
)


@st.composite
def requests(draw: st.DrawFn, operation: Operation) -> list[tuple[str, dict[str, Any]]]:
    """The operation sent several ways, each twice (the second may be a plan's)."""
    variables = draw(st.sampled_from([*operation.variables, {}, {"v0": "yes"}]))
    headers = draw(HEADERS)
    digest = hashlib.sha256(operation.query.encode()).hexdigest()
    apq = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    ways = [
        _post({"query": operation.query, "variables": variables}, headers),
        _post({"query": operation.query, "variables": variables, "operationName": "Q"}, headers),
        _get(operation, variables, headers),
        _post({"query": operation.query, "variables": variables, "extensions": apq}, headers),
        _post({"extensions": apq, "variables": variables}, headers),
        _post([{"query": operation.query, "variables": v} for v in operation.variables], headers),
    ]
    chosen = draw(st.lists(st.sampled_from(ways), min_size=1, max_size=3))
    return [way for way in chosen for _ in range(2)]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("env", ["development", "production"])
def test_the_http_stack_answers_alike_with_and_without_plans(
    world: SimulatorWorld, env: str
) -> None:
    overrides: dict[str, Any] = {"env": env, "batch_max": 4}
    if env == "production":
        overrides["cache_key_secret"] = "s" * 48
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        planned, unplanned = runner.run(stack.enter_async_context(two_apps(world, **overrides)))
        try:

            @settings(
                max_examples=examples(40),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(data=st.data(), operation=operations())
            def same_answers(data: st.DataObject, operation: Operation) -> None:
                for request in data.draw(requests(operation)):
                    with_plans = runner.run(planned.send(request))
                    without = runner.run(unplanned.send(request))
                    assert with_plans == without, request
                assert runner.run(planned.samples()) == runner.run(unplanned.samples())

            same_answers()
            assert planned.schema.plans.runs > 0  # not vacuous: plans answered
        finally:
            runner.run(stack.aclose())

"""Operation plans (``gateway.execution.operation_plans``) answer as ``schema.execute`` does.

The property test runs random operations (the projection test's random selections: aliases,
fragments, ``@skip``/``@include`` on variables, root and entity lists, fields with their own
resolvers), with random variables (including ones that do not coerce), random upstream pages
and upstream failures, with and without the cache report, in development and in production,
on two production schemas: one with plans and one without. Each operation runs twice on each
(the first run of a document teaches its plan, the second is answered by it) and every run
must give the same bytes (data, errors with their codes, extensions), the same request facts
(operation name and type, attempted, executed, error codes, cache events) and the same metric
samples (the error counts by code, the cost histogram).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strawberry.types.graphql import OperationType

from gateway.data.page_cache import PageCache
from gateway.data.source import NumbersSource
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import RequestFacts, collecting
from gateway.schema.build import build_schema
from gateway.schema.context import RequestContext
from gateway.settings import Settings, load_settings
from gateway.upstream.client import UpstreamClient
from tests.conftest import examples
from tests.test_projection import PAGES, Operation, operations

UPSTREAM = "http://webex.test/v1"
QUERY_ONLY = frozenset({OperationType.QUERY})


@dataclass
class Upstream:
    """Answers every page request with ``items``, or fails with ``status``."""

    items: list[Any] = field(default_factory=list)
    status: int = 200
    calls: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.status != 200:
            body = {"message": "refused", "trackingId": "ROUTER_1"}
            return httpx.Response(self.status, content=orjson.dumps(body))
        body = {"phoneNumbers": self.items, "count": {"total": len(self.items)}}
        return httpx.Response(200, content=orjson.dumps(body))


@dataclass
class Outcome:
    """What one run left behind: the response's bytes, the request's facts, the metrics."""

    body: bytes
    facts: tuple[Any, ...]
    samples: list[tuple[str, tuple[tuple[str, str], ...], float]]


def metric_samples(metrics: GatewayMetrics) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """The samples the GraphQL layer writes: errors by code and the cost histogram."""
    wanted = {"gateway_graphql_errors", "gateway_operation_cost"}
    return sorted(
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in metrics.registry.collect()
        if family.name in wanted
        for sample in family.samples
        if not sample.name.endswith("_created")
    )


@dataclass
class Gateway:
    """One production schema with its own metrics, over the shared upstream."""

    schema: Any
    metrics: GatewayMetrics
    settings: Settings

    async def run(
        self,
        source: NumbersSource,
        query: str,
        variables: dict[str, Any] | None,
        *,
        operation_name: str | None = None,
        report_cache: bool = False,
        allowed: frozenset[OperationType] | None = None,
    ) -> Outcome:
        context = RequestContext(
            request=None,  # type: ignore[arg-type]  # no resolver here reads it
            settings=self.settings,
            metrics=self.metrics,
            numbers=source.for_caller("Bearer t"),
            report_cache=report_cache,
        )
        facts = RequestFacts(request_id="r")
        with collecting(facts):
            try:
                result = await self.schema.execute(
                    query,
                    variable_values=variables,
                    context_value=context,
                    operation_name=operation_name,
                    allowed_operation_types=allowed,
                )
                errors = [error.formatted for error in result.errors or ()]
                body = orjson.dumps(
                    {"data": result.data, "errors": errors, "ext": result.extensions}
                )
            except Exception as refused:  # strawberry's refusals (operation type, name)
                body = repr(refused).encode()
        return Outcome(
            body,
            (
                facts.operation_name,
                facts.operation_type,
                facts.attempted,
                facts.executed,
                tuple(facts.error_codes),
                tuple(facts.cache),
            ),
            metric_samples(self.metrics),
        )


@dataclass
class Pair:
    """The same production settings with plans and without."""

    planned: Gateway
    unplanned: Gateway
    upstream: Upstream
    source: NumbersSource

    async def both(self, query: str, variables: dict[str, Any] | None, **options: Any) -> bytes:
        planned = await self.planned.run(self.source, query, variables, **options)
        unplanned = await self.unplanned.run(self.source, query, variables, **options)
        assert planned.body == unplanned.body, (
            f"\nplanned:   {planned.body!r}\nunplanned: {unplanned.body!r}"
        )
        assert planned.facts == unplanned.facts
        assert planned.samples == unplanned.samples
        return planned.body


def gateway(settings: Settings, *, plans: bool) -> Gateway:
    schema = build_schema(settings)
    if not plans:
        schema.plans = None
    return Gateway(schema, GatewayMetrics(), settings)


@asynccontextmanager
async def pair(**overrides: Any) -> AsyncIterator[Pair]:
    settings = load_settings(upstream_url=UPSTREAM, cache_ttl=0, **overrides)
    upstream = Upstream()
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        # A bare client, with no resilient transport: a 429 or a 5xx fails at once instead
        # of waiting to retry.
        client = UpstreamClient(http, base_url=UPSTREAM)
        source = NumbersSource(client, PageCache(ttl=0), max_page_size=settings.max_page_size)
        yield Pair(gateway(settings, plans=True), gateway(settings, plans=False), upstream, source)


# Variables the random documents do not declare, of the wrong type, or missing: coercion
# errors (BAD_USER_INPUT) must come out of a plan exactly as out of the extensions.
ODD_VARIABLES = st.one_of(
    st.just(None),
    st.just({}),
    st.fixed_dictionaries({"v0": st.sampled_from(["yes", 1, None, [True]])}),
    st.dictionaries(st.sampled_from(["v0", "v1", "v2", "d", "x"]), st.booleans(), max_size=4),
)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("env", ["development", "production"])
def test_a_plan_answers_like_the_extensions(env: str) -> None:
    overrides: dict[str, Any] = {"env": env}
    if env == "production":
        overrides["cache_key_secret"] = "s" * 48
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        both = runner.run(stack.enter_async_context(pair(**overrides)))
        try:

            @settings(
                max_examples=examples(120),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(
                operation=operations(),
                items=PAGES,
                odd=ODD_VARIABLES,
                status=st.sampled_from([200, 200, 200, 401, 429, 500]),
                report_cache=st.booleans(),
            )
            def same_answer(
                operation: Operation,
                items: list[Any],
                odd: dict[str, Any] | None,
                status: int,
                report_cache: bool,
            ) -> None:
                both.upstream.items = items
                both.upstream.status = status
                for variables in (*operation.variables, odd, operation.variables[0]):
                    runner.run(both.both(operation.query, variables, report_cache=report_cache))

            same_answer()
            # Not vacuous: plans answered most of the runs on the planned side.
            assert both.planned.schema.plans.runs > examples(120), both.planned.schema.plans.runs
        finally:
            runner.run(stack.aclose())


CHOICES = (
    "query A { phoneNumbers(page: {first: 5}) { totalCount } } "
    "query B($n: Int = 3) { phoneNumbers(page: {first: $n}) { nodes { phoneNumber } } }"
)


async def test_operation_choice_type_and_cost_decide_as_without_plans() -> None:
    """The named operation, the operation types a transport allows, and the cost for each
    request's variables are decided per request: a plan never answers what the extensions
    would refuse."""
    async with pair(max_cost=100) as both:
        both.upstream.items = [{"phoneNumber": "+1", "extension": "1"}] * 3
        for name in ("A", "B", "B", "A", None, "C"):
            await both.both(CHOICES, None, operation_name=name)
        for first in (3, 10, 500, 3):  # over GATEWAY_MAX_COST at 500: refused, not planned
            body = await both.both(CHOICES, {"n": first}, operation_name="B")
            assert (b"estimated cost" in body) == (first == 500), body
        subscription = "subscription { phoneNumberChanges { kind } }"
        for _ in range(2):  # a transport that allows only queries: strawberry's refusal
            await both.both(subscription, None, allowed=QUERY_ONLY)
            await both.both(CHOICES, None, operation_name="A", allowed=QUERY_ONLY)
    assert both.planned.schema.plans.runs >= 6


async def test_plans_are_learned_once_per_document_and_bounded() -> None:
    async with pair() as both:
        plans = both.planned.schema.plans
        query = "query One { phoneNumbers { totalCount } }"
        await both.both(query, None)
        assert (len(plans), plans.runs) == (1, 0)
        calls = both.upstream.calls
        await both.both(query, None)
        await both.both(query, None)
        assert (len(plans), plans.runs) == (1, 2)
        # Each run still asks the upstream (caching is off): a plan holds no answers.
        assert both.upstream.calls == calls + 4
        # Refused documents teach nothing: a syntax error, an unknown field.
        for refused in ("{ phoneNumbers {", "{ nothing }"):
            await both.both(refused, None)
        assert len(plans) == 1
        # Documents that may deliver incrementally are never planned.
        deferred = "{ phoneNumbers { ... @defer { totalCount } } }"
        await both.planned.run(both.source, deferred, None)
        assert len(plans) == 1

    small = build_schema(load_settings(upstream_url=UPSTREAM)).plans
    small.__init__(small.limits, max_bytes=3 * 400 * 60)  # room for three 60-char documents
    for n in range(10):
        document = f"query Q{n:02d} {{ phoneNumbers {{ totalCount }} }}".ljust(60)
        small.learn(document, None, _parsed(document), f"Q{n:02d}", OperationType.QUERY)
    assert len(small) == 3


def _parsed(document: str) -> Any:
    from graphql import parse

    return parse(document, no_location=True)


async def test_tracing_and_federated_traces_take_the_extensions_path() -> None:
    """A plan makes no spans and no ftv1 trace: with either asked for it steps aside."""
    async with pair() as both:
        gateway = both.planned
        plans = gateway.schema.plans
        query = "{ phoneNumbers { totalCount } }"
        await gateway.run(both.source, query, None)
        await gateway.run(both.source, query, None)
        assert plans.runs == 1
        context = RequestContext(
            request=None,  # type: ignore[arg-type]
            settings=gateway.settings,
            metrics=gateway.metrics,
            numbers=both.source.for_caller("Bearer t"),
            include_federated_trace=True,
        )
        result = await gateway.schema.execute(query, context_value=context)
        assert "ftv1" in (result.extensions or {})
        from opentelemetry.sdk.trace import TracerProvider

        facts = RequestFacts(request_id="r", tracer=TracerProvider().get_tracer("t"))
        with collecting(facts):
            await gateway.schema.execute(query, context_value=context)
        assert plans.runs == 1


async def test_a_plan_is_keyed_by_the_operation_name_as_sent() -> None:
    """A plan is found under the ``operationName`` the request sent (strawberry keeps it
    privately: were it renamed, every plan would be keyed under None and named requests would
    never find theirs)."""
    async with pair() as both:
        plans = both.planned.schema.plans
        for name in ("B", "B", "A", "A"):
            await both.both(CHOICES, {"n": 2}, operation_name=name)
        assert plans.runs == 2, "the second run of each named operation is its plan's"
        single = "query Only { phoneNumbers { totalCount } }"
        for name in (None, None, "Only", "Only"):
            await both.both(single, None, operation_name=name)
        assert plans.runs == 4, "unnamed and named requests each find the plan they taught"

"""Running a prepared operation: the stages after ``prepare``, each a plain function called in
one place, the same for every transport.

- ``admit``: what depends on the request's variables and on how its answer is delivered: the
  ``@stream``/``@defer`` arguments execution would fail on (``document_limits``), then the
  cost estimate against ``GATEWAY_MAX_COST`` (``cost``; ``held``: an answer held whole, one
  JSON body or a batch's element, prices every list as held). A refusal is
  ``OperationRefused``, before any upstream call.
- ``execute``: one whole result. graphql-core executes the document with the projecting
  executor (``projecting_executor``: lists of phone numbers projected from the upstream items,
  connection selections noted for their resolvers); resolver middleware only for a federated
  trace (``federated_trace``). Its errors become contract errors (``contract_errors``), its
  extensions say what the cache did (``cache_report``), the cost outside production and the
  trace when asked.
- ``frames``: the same for an operation whose answer comes in parts: ``@defer``/``@stream``
  payloads, or a subscription's events; every frame's errors contract errors, the initial
  frame (or each event) carrying the extensions.
- Every path records the operation in the request's facts (``operation_facts``) once, when it
  ends, and observes its cost.

The schema's strawberry types define the GraphQL schema (``schema.build``); this module runs
graphql-core on the ``GraphQLSchema`` strawberry made of them (``build.graphql_schema``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import Any, Final, TypeAlias

import structlog
from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    InitialIncrementalExecutionResult,
    SubsequentIncrementalExecutionResult,
    experimental_execute_incrementally,
    subscribe,
)
from graphql.execution import Executor

from gateway.errors import INTERNAL_ERROR_MESSAGE, ErrorCode
from gateway.execution.cache_report import cache_extensions
from gateway.execution.contract_errors import contract_errors, contract_payload
from gateway.execution.cost import CostLimits, operation_cost, operation_variables, over_limit
from gateway.execution.document_limits import stream_argument_refusal
from gateway.execution.federated_trace import FederatedTrace
from gateway.execution.operation_facts import record_operation
from gateway.execution.prepare import OperationRefused, PreparedOperation
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import current_facts
from gateway.schema.context import RequestContext

log = structlog.get_logger("gateway.graphql")

Frame: TypeAlias = (
    ExecutionResult | InitialIncrementalExecutionResult | SubsequentIncrementalExecutionResult
)
_INTERNAL: Final = {"code": ErrorCode.INTERNAL_SERVER_ERROR.value}


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How one request wants its operation run."""

    held: bool = True  # the answer is held whole (one JSON body, a batch's element)
    report_cache: bool = False  # ``extensions.cache`` asked for (``Gateway-Cache-Report``)
    federated_trace: bool = False  # ``extensions.ftv1``, asked for by a router that may


@dataclass(slots=True)
class Admission:
    """An operation admitted to run: its variables and its cost, for these options."""

    prepared: PreparedOperation
    variables: dict[str, Any] | None
    options: RunOptions
    cost: int
    errors: list[GraphQLError] = field(default_factory=list)  # seen so far, for the facts


class OperationEngine:
    """The stages after ``prepare``, over one schema. Built once by the app; holds no request
    state."""

    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        executor_class: type[Executor[Any]],
        limits: CostLimits,
        production: bool,
        metrics: GatewayMetrics,
    ) -> None:
        self.schema = schema
        self.executor_class = executor_class
        self.limits = limits
        self.production = production
        self.metrics = metrics

    def admit(
        self,
        prepared: PreparedOperation,
        variables: Mapping[str, Any] | None,
        options: RunOptions,
    ) -> Admission:
        """The request-dependent checks; raises ``OperationRefused`` (``BAD_USER_INPUT``)."""
        effective = operation_variables(prepared.operation, variables)
        if prepared.incremental:
            refused = stream_argument_refusal(prepared.operation, prepared.fragments, effective)
            if refused is not None:
                raise OperationRefused([refused])
        cost = operation_cost(
            prepared.operation, prepared.fragments, variables, self.limits, held=options.held
        )
        if cost > self.limits.max_cost:
            raise OperationRefused(
                [over_limit(cost, self.limits, held=options.held, streams=prepared.streams)]
            )
        return Admission(prepared, dict(variables) if variables else None, options, cost)

    def refused(self, refusal: OperationRefused, prepared: PreparedOperation | None) -> None:
        """Record an operation refused before it ran (its codes, counted)."""
        errors = contract_errors(refusal.errors, production=self.production, metrics=self.metrics)
        refusal.errors = errors
        facts = current_facts()
        if facts is not None:
            record_operation(
                facts,
                operation_name=prepared.name if prepared else refusal.operation_name,
                operation_type=prepared.kind.value if prepared else refusal.operation_type,
                errors=errors,
                executed=False,
            )

    async def execute(self, admission: Admission, context: RequestContext) -> ExecutionResult:
        """The operation's one whole result (a query without ``@defer``/``@stream``)."""
        trace = self._trace(admission)
        try:
            # The schema declares @defer and @stream, which graphql-core's ``execute`` refuses;
            # an operation that reaches neither gets one whole result from this one too.
            running = experimental_execute_incrementally(
                **self._arguments(admission, context),
                middleware=[trace] if trace is not None else None,
            )
            result = await running if isawaitable(running) else running
            if not isinstance(result, ExecutionResult):  # never: prepared.incremental is False
                raise TypeError("an incremental result for an operation without @defer/@stream")
        except Exception:
            log.exception("graphql_execution_failed")
            result = ExecutionResult(
                None, [GraphQLError(INTERNAL_ERROR_MESSAGE, extensions=_INTERNAL)]
            )
        errors = self._errors(admission, result.errors or ())
        extensions = self._extensions(admission, context, trace, errors)
        self._record(admission, context)
        return ExecutionResult(result.data, errors or None, extensions or None)

    async def frames(
        self, admission: Admission, context: RequestContext
    ) -> AsyncGenerator[Frame, None]:
        """The operation's frames: the initial result of ``@defer``/``@stream`` then each
        later payload, a subscription's events, or one whole result; every error a contract
        error. Closing the generator stops the operation (its upstream walk included)."""
        try:
            if admission.prepared.subscription:
                # Closed with this generator, at once: the subscription leaves its feed now.
                async with aclosing(self._events(admission, context)) as events:
                    async for event in events:
                        yield event
                return
            running = experimental_execute_incrementally(**self._arguments(admission, context))
            outcome = await running if isawaitable(running) else running
            if isinstance(outcome, ExecutionResult):
                yield self._whole(admission, context, outcome)
                return
            initial = outcome.initial_result
            initial.errors = self._errors(admission, initial.errors or ()) or None
            initial.extensions = self._extensions(admission, context, None, []) or None
            yield initial
            subsequent = outcome.subsequent_results
            try:
                async for frame in subsequent:
                    contract_payload(frame, production=self.production, metrics=self.metrics)
                    for entry in (*(frame.incremental or ()), *(frame.completed or ())):
                        admission.errors.extend(entry.errors or ())
                    yield frame
            finally:
                await subsequent.aclose()
        finally:
            self._record(admission, context)

    async def _events(
        self, admission: Admission, context: RequestContext
    ) -> AsyncGenerator[ExecutionResult, None]:
        try:
            source = subscribe(**self._arguments(admission, context))
            events = await source if isawaitable(source) else source
        except Exception:
            log.exception("graphql_subscription_failed")
            events = ExecutionResult(
                None, [GraphQLError(INTERNAL_ERROR_MESSAGE, extensions=_INTERNAL)]
            )
        if isinstance(events, ExecutionResult):
            yield self._whole(admission, context, events)
            return
        try:
            async for event in events:
                yield self._whole(admission, context, event)
        except Exception as failure:  # graphql-core does not handle a failing source
            error = GraphQLError(str(failure), original_error=failure)
            yield self._whole(admission, context, ExecutionResult(None, [error]))
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _arguments(self, admission: Admission, context: RequestContext) -> dict[str, Any]:
        """What graphql-core runs the admitted operation with (execute or subscribe)."""
        return {
            "schema": self.schema,
            "document": admission.prepared.document,
            "context_value": context,
            "variable_values": admission.variables,
            "operation_name": admission.prepared.operation_name,
            "executor_class": self.executor_class,
            "hide_suggestions": self.production,
        }

    def _whole(
        self, admission: Admission, context: RequestContext, result: ExecutionResult
    ) -> ExecutionResult:
        errors = self._errors(admission, result.errors or ())
        extensions = self._extensions(admission, context, None, errors)
        return ExecutionResult(result.data, errors or None, extensions or None)

    def _trace(self, admission: Admission) -> FederatedTrace | None:
        return FederatedTrace() if admission.options.federated_trace else None

    def _errors(self, admission: Admission, errors: Any) -> list[GraphQLError]:
        coded = contract_errors(errors, production=self.production, metrics=self.metrics)
        admission.errors.extend(coded)
        return coded

    def _extensions(
        self,
        admission: Admission,
        context: RequestContext,
        trace: FederatedTrace | None,
        errors: list[GraphQLError],
    ) -> dict[str, Any]:
        extensions = cache_extensions(
            context.numbers.cache_events, report=admission.options.report_cache
        )
        if not self.production:
            extensions["cost"] = {"estimated": admission.cost, "limit": self.limits.max_cost}
        if trace is not None:
            extensions |= trace.extension(errors)
        return extensions

    def _record(self, admission: Admission, context: RequestContext) -> None:
        """The operation's facts and cost metric, once, when it ends."""
        self.metrics.operation_cost.observe(admission.cost)
        facts = current_facts()
        if facts is None:
            return
        prepared = admission.prepared
        record_operation(
            facts,
            operation_name=prepared.name,
            operation_type=prepared.kind.value,
            errors=admission.errors,
            cache_events=context.numbers.cache_events,
            executed=True,
        )

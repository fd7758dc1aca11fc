"""Operation plans: a document that has passed every check runs again without strawberry's
per-request extension machinery, with the same answer, facts, metrics and errors.

strawberry builds the schema's extensions (eleven with the plan recorder) afresh for every
operation and enters their parse, validate and execute hooks as context managers, even when
parsing and validation are cached (``parsed_documents``, ``ValidationCache``) and most hooks do
nothing for the document: about a third of ``schema.execute`` for a 50-item page (issue 22).
graphql-jit's idea, one level up: once an operation of a document has parsed, validated and
passed the limits, what that proved is kept as an ``OperationPlan`` (the parsed document, the
chosen operation's name and type, its cost when no variable can change it), keyed by the
document's text and the ``operationName`` sent. ``PlanRecorder`` (a schema extension) learns
plans from the ``on_execute`` hook, which strawberry enters only after every parse, validation
and limit check has passed; ``run`` executes a planned operation with graphql-core's executor
and the schema's execution context (so the projection fast path is the same), then does
exactly what the extensions would have:

- the cost estimate for these variables (``OperationCost``), observed as the metric and
  reported in ``extensions.cost`` outside production;
- strawberry's own error processing, then the contract codes and their metric
  (``ContractErrors``);
- the request's facts: attempted, executed, operation name and type, error codes, cache
  events (``OperationObserver``);
- ``extensions.stale`` and ``extensions.cache`` (``CacheReport``).

It declines (None: ``schema.execute`` runs the operation as always) whenever an extension would
do something a plan does not reproduce: tracing on (the operation's parse and validate spans),
a federated trace asked for, a context that is not a request's or delivers incrementally, an
operation type the transport does not allow (the refusal is strawberry's), a cost over the
limit for these variables (the refusal is ``OperationCost``'s). Only queries are planned, and
never a document with ``@defer`` or ``@stream`` anywhere (read from the parsed document, so
``@ defer`` counts too). ``tests/test_operation_plans.py`` compares both paths byte for byte,
fact for fact and metric for metric over random documents, variables and headers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cachetools import LRUCache
from graphql import DocumentNode, GraphQLError
from graphql.execution import ExecutionResult as GraphQLExecutionResult
from graphql.execution import experimental_execute_incrementally
from strawberry.execution.is_awaitable import optimized_is_awaitable
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import _coerce_error  # as strawberry wraps a failure
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from gateway.execution.cache_report import cache_extensions
from gateway.execution.contract_errors import contract_errors
from gateway.execution.cost import chosen_operation, operation_cost
from gateway.execution.directive_hints import uses_incremental_delivery
from gateway.execution.document_limits import parsed_size
from gateway.execution.operation_observer import record_operation
from gateway.observability.request_facts import current_facts
from gateway.schema.context import RequestContext

# What the plans may hold, in bytes of memory as the parse cache estimates a parsed document
# (a plan shares its tree with the parse cache's entry while both hold it).
PLAN_CACHE_BYTES: Final = 16 * 1024 * 1024

PlanKey = tuple[str, str | None]  # the document's text, the operationName sent


@dataclass(frozen=True, slots=True)
class CostLimits:
    """What ``OperationCost`` prices an operation by (the schema's settings)."""

    max_cost: int
    max_page_size: int
    max_entities: int
    max_stream_items: int | None
    report: bool  # extensions.cost in answers (not in production)


@dataclass(frozen=True, slots=True)
class OperationPlan:
    """What one successful run of an operation proved about its document."""

    document: DocumentNode
    operation_name: str | None  # as strawberry resolves it: the one sent, or the operation's
    operation_type: OperationType
    # The cost when the operation declares no variables (nothing can change it); None: priced
    # for each request's variables.
    fixed_cost: int | None
    size: int  # estimated bytes of memory (the parse cache's estimate of the tree)


class OperationPlans:
    """The plans of one schema, bounded in estimated memory, and the path that runs them."""

    def __init__(self, limits: CostLimits, *, max_bytes: int = PLAN_CACHE_BYTES) -> None:
        self.limits = limits
        self._plans: LRUCache[PlanKey, OperationPlan] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda plan: plan.size
        )
        # strawberry's sync execution may record from worker threads.
        self._guard = threading.Lock()
        self.runs = 0  # operations a plan answered (tests and benchmarks read it)

    def __len__(self) -> int:
        return len(self._plans)

    def learn(
        self,
        query: str,
        provided_name: str | None,
        document: DocumentNode,
        operation_name: str | None,
        operation_type: OperationType,
    ) -> None:
        """Keep the plan of an operation that passed every check (``PlanRecorder``). Only
        queries are planned (``execute`` runs nothing else over HTTP), and never a document
        that may deliver incrementally, however its directives are spelled."""
        key = (query, provided_name)
        with self._guard:
            if key in self._plans:
                return  # learned already (this run took the extensions' path: tracing, ftv1)
        if operation_type is not OperationType.QUERY or uses_incremental_delivery(document):
            return
        operation = chosen_operation(document, operation_name)
        if operation is None:
            return
        fixed_cost = None
        if not operation.variable_definitions:
            fixed_cost = self._cost(document, operation_name, None)
        size = parsed_size(query)
        if size > self._plans.maxsize:
            return
        plan = OperationPlan(document, operation_name, operation_type, fixed_cost, size)
        with self._guard:
            self._plans[key] = plan

    def recorder(self) -> type[SchemaExtension]:
        """The schema extension that learns plans; listed with the schema's extensions."""
        learn = self.learn

        class PlanRecorder(SchemaExtension):
            def on_execute(self) -> Iterator[None]:
                # Entered only once parsing, validation and every limit have passed.
                context = self.execution_context
                document = context.graphql_document
                if context.query and document is not None:
                    learn(
                        context.query,
                        # strawberry keeps the name as sent privately; ``operation_name``
                        # falls back to the first operation's.
                        getattr(context, "_provided_operation_name", None),
                        document,
                        context.operation_name,
                        context.operation_type,
                    )
                yield

        return PlanRecorder

    async def run(
        self,
        schema: Any,
        query: str | None,
        *,
        variables: dict[str, Any] | None,
        context: Any,
        operation_name: str | None,
        allowed: Iterable[OperationType],
    ) -> ExecutionResult | None:
        """The operation's result by its plan, or None when there is none or an extension
        would do something for this request that a plan does not (see the module)."""
        if query is None or context.__class__ is not RequestContext:
            return None
        if context.include_federated_trace or context.incremental_delivery:
            return None
        with self._guard:
            plan = self._plans.get((query, operation_name))
        if plan is None or plan.operation_type not in allowed:
            return None
        facts = current_facts()
        if facts is not None and facts.tracer is not None:
            return None
        cost = plan.fixed_cost
        if cost is None:
            try:
                cost = self._cost(plan.document, plan.operation_name, variables)
            except Exception:
                return None
        if cost is None or cost > self.limits.max_cost:
            return None
        self.runs += 1
        return await self._execute(schema, plan, cost, variables, context, facts)

    async def _execute(
        self,
        schema: Any,
        plan: OperationPlan,
        cost: int,
        variables: dict[str, Any] | None,
        context: RequestContext,
        facts: Any,
    ) -> ExecutionResult:
        errors: list[GraphQLError] | None = None
        if facts is not None:
            facts.attempted = facts.executed = True
        # As strawberry's hooks unwind: the cost is observed and the errors made contract
        # errors only when execution returns; the facts are recorded whatever happens
        # (``OperationObserver`` records in a ``finally``).
        try:
            running: Any = experimental_execute_incrementally(
                schema._schema,
                plan.document,
                context_value=context,
                variable_values=variables,
                operation_name=plan.operation_name,
                executor_class=schema.execution_context_class,
                is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]  # as strawberry
                operation_extensions=None,
            )
            outcome = await running if optimized_is_awaitable(running) else running
            assert isinstance(outcome, GraphQLExecutionResult)  # never planned: @defer, @stream
            context.metrics.operation_cost.observe(cost)
            if outcome.errors:
                # strawberry's own processing first (production: no field suggestions),
                # then the contract, as ``ContractErrors`` rewrites them.
                schema._process_errors(outcome.errors, None)
                errors = contract_errors(outcome.errors, context)
        except Exception as failure:
            # A result no extension rewrites (the transport masks it); never expected for a
            # planned document.
            failed = [_coerce_error(failure)]
            schema._process_errors(failed, None)
            return ExecutionResult(
                data=None, errors=failed, extensions=self._extensions(context, cost)
            )
        finally:
            if facts is not None:
                record_operation(
                    facts,
                    operation_name=plan.operation_name,
                    operation_type=plan.operation_type.value,
                    errors=errors,
                    context=context,
                )
        return ExecutionResult(
            data=outcome.data, errors=errors, extensions=self._extensions(context, cost)
        )

    def _extensions(self, context: RequestContext, cost: int) -> dict[str, Any]:
        # In the schema's extension order: CacheReport's, then OperationCost's.
        extensions = cache_extensions(context)
        if self.limits.report:
            extensions = {**extensions, "cost": {"estimated": cost, "limit": self.limits.max_cost}}
        return extensions

    def _cost(
        self,
        document: DocumentNode,
        operation_name: str | None,
        variables: Mapping[str, Any] | None,
    ) -> int | None:
        limits = self.limits
        return operation_cost(
            document,
            operation_name,
            variables,
            max_page_size=limits.max_page_size,
            max_entities=limits.max_entities,
            max_stream_items=limits.max_stream_items,
            incremental=False,
        )

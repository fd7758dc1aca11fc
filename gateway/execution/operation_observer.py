"""The GraphQL side of a request's facts and trace: a strawberry extension.

It lives in the GraphQL layer (it reads the ``RequestContext``) and writes into the
foundation's ``RequestFacts``, which know nothing of GraphQL.

``OperationObserver`` fills the current request's ``RequestFacts`` (operation name and type,
whether it executed, its error codes, what the cache did) and, with tracing on, makes the
operation's span (with parse and validation spans under it) current while the operation runs,
so cache and upstream spans nest under it.

It is listed first in the schema's extensions: hooks unwind in reverse order, so it reads the
result after ``ContractErrors`` has given every error its contract code.

Why not strawberry's ``OpenTelemetryExtension``: its ``resolve`` hook is resolver middleware,
which makes every field a span (thousands for one page) and switches off the projection fast
path (``gateway.execution.projecting_executor`` runs only without middleware); it records the whole
document (literals included) as an attribute; and it takes its tracer at construction, while
ours is the app's, found in the request's facts. The span names and the parse/validate children
follow it and the OpenTelemetry GraphQL conventions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from graphql import GraphQLError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from strawberry.extensions import SchemaExtension

from gateway.errors import ErrorCode
from gateway.observability.request_facts import OPERATION_NAME_MAX, RequestFacts, current_facts
from gateway.schema.context import RequestContext


class OperationObserver(SchemaExtension):
    """Operation facts for the request log and metrics; the operation's span when tracing."""

    _facts: RequestFacts | None = None
    _span: Span | None = None

    def on_operation(self) -> Iterator[None]:
        facts = self._facts = current_facts()
        if facts is None:  # executed outside an HTTP request (tests, schema export)
            yield
            return
        facts.attempted = True
        token = None
        if facts.tracer is not None:
            self._span = facts.tracer.start_span("GraphQL Operation")
            token = otel_context.attach(trace.set_span_in_context(self._span))
        try:
            yield
        finally:
            self._record(facts)
            if token is not None:
                otel_context.detach(token)

    def on_parse(self) -> Iterator[None]:
        yield from self._child_span("graphql.parse")

    def on_validate(self) -> Iterator[None]:
        yield from self._child_span("graphql.validate")

    def on_execute(self) -> Iterator[None]:
        if self._facts is not None:
            self._facts.executed = True
        yield

    def _child_span(self, name: str) -> Iterator[None]:
        facts = self._facts
        if facts is None or facts.tracer is None:
            yield
            return
        span = facts.tracer.start_span(name)
        try:
            yield
        finally:
            span.end()

    def _record(self, facts: RequestFacts) -> None:
        execution = self.execution_context
        try:
            operation_type: str | None = execution.operation_type.value
        except RuntimeError:  # no document, or no operation by that name
            operation_type = None
        result = execution.result
        record_operation(
            facts,
            operation_name=execution.operation_name,
            operation_type=operation_type,
            errors=result.errors if result is not None else None,
            context=execution.context,
        )
        span = self._span
        if span is not None:
            kind = facts.operation_type or "operation"
            span.update_name(f"{kind} {facts.operation_name}" if facts.operation_name else kind)
            if facts.operation_name:
                span.set_attribute("graphql.operation.name", facts.operation_name)
            if facts.operation_type:
                span.set_attribute("graphql.operation.type", facts.operation_type)
            if facts.error_codes:
                span.set_attribute("graphql.error_codes", facts.error_codes)
                span.set_status(Status(StatusCode.ERROR, ", ".join(facts.error_codes)))
            span.end()


def record_operation(
    facts: RequestFacts,
    *,
    operation_name: str | None,
    operation_type: str | None,
    errors: Iterable[GraphQLError] | None,
    context: object,
) -> None:
    """What one operation leaves in the request's facts: its name and type, its errors'
    codes, what the cache did (``OperationObserver`` and operation plans)."""
    facts.operation_name = operation_name[:OPERATION_NAME_MAX] if operation_name else None
    facts.operation_type = operation_type
    for error in errors or ():
        code = (error.extensions or {}).get("code", ErrorCode.INTERNAL_SERVER_ERROR.value)
        facts.add_error_codes([str(code)])
    if isinstance(context, RequestContext):
        facts.cache.extend(f"{e.status}:{e.tier}" for e in context.numbers.cache_events)

"""The GraphQL side of a request's facts and trace: what one operation leaves for the request
log, the metrics and the trace.

``record_operation`` fills the current request's ``RequestFacts`` (operation name and type,
whether it executed, its error codes, what the cache did); ``operation_span`` is the
operation's span while tracing is on (``prepare``'s parse and validation spans, and the cache
and upstream spans, nest under it), named and marked once the operation is known.

Why not strawberry's ``OpenTelemetryExtension``: it is resolver middleware, which makes every
field a span (thousands for one page) and switches off the projection fast path; it records
the whole document (literals included) as an attribute. The span names and the parse/validate
children follow it and the OpenTelemetry GraphQL conventions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from graphql import GraphQLError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from gateway.data.page_cache import CacheEvent
from gateway.errors import ErrorCode
from gateway.observability.request_facts import OPERATION_NAME_MAX, RequestFacts


def note_operation(facts: RequestFacts, name: str | None, kind: str | None) -> None:
    """The operation's name and type, known once it is prepared (a stream's span and log
    line have them before it ends)."""
    facts.operation_name = name[:OPERATION_NAME_MAX] if name else None
    facts.operation_type = kind


def record_operation(
    facts: RequestFacts,
    *,
    operation_name: str | None,
    operation_type: str | None,
    errors: Iterable[GraphQLError] | Iterable[str] | None,
    cache_events: Sequence[CacheEvent] = (),
    executed: bool,
) -> None:
    """What one operation leaves in the request's facts: its name and type, whether it got
    past its checks, its errors' codes (errors, or their codes), what the cache did."""
    facts.attempted = True
    facts.executed = facts.executed or executed
    note_operation(facts, operation_name, operation_type)
    for error in errors or ():
        if isinstance(error, str):
            facts.add_error_codes([error])
            continue
        code = (error.extensions or {}).get("code", ErrorCode.INTERNAL_SERVER_ERROR.value)
        facts.add_error_codes([str(code)])
    facts.cache.extend(f"{event.status}:{event.tier}" for event in cache_events)


@contextmanager
def operation_span(facts: RequestFacts | None) -> Iterator[None]:
    """The operation's span, current for the block when the request is traced; named
    ``<type> <name>`` and marked with its error codes from the facts when the block ends."""
    if facts is None or facts.tracer is None:
        yield
        return
    span = facts.tracer.start_span("GraphQL Operation")
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)
        _end(span, facts)


def _end(span: Span, facts: RequestFacts) -> None:
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

"""The error contract: how every GraphQL error reaches the caller with a contract code.

``GatewayError``s keep their message and extensions. The document's own errors take Apollo
Server's codes, which clients and routers branch on: one that does not parse is
``GRAPHQL_PARSE_FAILED``, one that does not validate ``GRAPHQL_VALIDATION_FAILED``. Variables
that do not coerce are ``BAD_USER_INPUT`` (Apollo's too), and so are our limits (depth, aliases,
root fields, tokens, cost: their errors carry the code from where they are made, or, for the
parser's own bounds, are known by graphql-core's "Parsing aborted." wording). Anything else is a
bug, logged here with its traceback and shown only as a masked ``INTERNAL_SERVER_ERROR``.
``ContractErrors`` is the schema extension that applies this to every result and counts the
errors by code; ``contract_payload`` does the same for the payloads of ``@defer``/``@stream``
after the first, which no extension sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import structlog
from graphql import GraphQLError, GraphQLSyntaxError, SubsequentIncrementalExecutionResult
from strawberry.extensions import SchemaExtension

from gateway.errors import INTERNAL_ERROR_MESSAGE as INTERNAL_ERROR_MESSAGE  # re-exported
from gateway.errors import ErrorCode, GatewayError
from gateway.schema.context import RequestContext

log = structlog.get_logger("gateway.graphql")

# graphql-core ends the errors of its parser's bounds (our token limit among them) this way.
_PARSER_LIMIT = "Parsing aborted."


def _document_error_code(error: GraphQLError, *, validating: bool) -> ErrorCode:
    """The code of an error about the document or its variables (no path, no cause)."""
    if isinstance(error, GraphQLSyntaxError):
        if error.message.endswith(_PARSER_LIMIT):
            return ErrorCode.BAD_USER_INPUT
        return ErrorCode.GRAPHQL_PARSE_FAILED
    if validating:
        return ErrorCode.GRAPHQL_VALIDATION_FAILED
    return ErrorCode.BAD_USER_INPUT  # variable coercion


def to_contract_error(error: GraphQLError, *, validation_error: bool = False) -> GraphQLError:
    """``error`` with a contract code in its extensions; an unexpected one logged and masked.
    ``validation_error``: validation reported it (the document does not validate)."""
    original = error.original_error
    if isinstance(original, GatewayError):
        return GraphQLError(
            original.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=original,
            extensions=original.extensions,
        )
    code = (error.extensions or {}).get("code")
    if original is None and code in ErrorCode.__members__:
        return error  # already a contract error
    if error.path is None and (original is None or isinstance(original, GraphQLError)):
        # Parse, validation and variable-coercion errors: the document or its inputs.
        code = _document_error_code(error, validating=validation_error)
        return GraphQLError(
            error.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            extensions={"code": code.value},
        )
    log.error(
        "graphql_internal_error",
        path=error.path,
        error=error.message,
        exc_info=original if isinstance(original, BaseException) else None,
    )
    return GraphQLError(
        INTERNAL_ERROR_MESSAGE,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": ErrorCode.INTERNAL_SERVER_ERROR.value},
    )


# graphql-core appends suggestions ("Did you mean 'x'?", "Did you mean the enum value 'Y'?")
# to validation and coercion messages of every kind; strawberry only switches off the ones
# for object fields. In production they would rebuild the schema with introspection off.
_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def without_suggestions(error: GraphQLError) -> GraphQLError:
    """``error`` without graphql-core's "Did you mean ...?" hints (production answers)."""
    message = _SUGGESTION.sub("", error.message)
    if message == error.message:
        return error
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=error.extensions,
    )


def contract_payload(
    frame: SubsequentIncrementalExecutionResult, context: object | None = None
) -> SubsequentIncrementalExecutionResult:
    """A subsequent payload of ``@defer``/``@stream`` with its errors made contract errors,
    as ``ContractErrors`` makes those of the initial result (strawberry's extensions see only
    that one). The errors sit in ``incremental[].errors`` (a deferred fragment's or an item's
    field errors) and ``completed[].errors`` (a stream or fragment that failed, as a walk does
    when the upstream fails mid-stream: code, ``upstreamStatus`` and ``trackingId`` kept).
    ``context``: the request's ``RequestContext``, for production wording and the metric.
    Transports call this on every payload after the first, before formatting it."""
    for entry in (*(frame.incremental or ()), *(frame.completed or ())):
        if entry.errors:
            entry.errors = contract_errors(entry.errors, context)
    return frame


def contract_errors(
    errors: list[GraphQLError], context: object | None, validated: frozenset[int] = frozenset()
) -> list[GraphQLError]:
    """``errors`` as contract errors (``validated``: ids of those validation reported),
    without suggestions in production, each counted by code (``ContractErrors``, the later
    payloads of a stream and operation plans)."""
    rewritten = [
        to_contract_error(error, validation_error=id(error) in validated) for error in errors
    ]
    if isinstance(context, RequestContext):
        if context.settings.production:
            rewritten = [without_suggestions(error) for error in rewritten]
        for error in rewritten:
            code = (error.extensions or {}).get("code", ErrorCode.INTERNAL_SERVER_ERROR)
            context.metrics.graphql_errors.labels(code=str(code)).inc()
    return rewritten


class ContractErrors(SchemaExtension):
    """Rewrites the result's errors into contract errors and counts them by code."""

    # ids of the errors validation reported for this operation (from ValidationCache or not):
    # a validation error and a variable-coercion error look alike once in the result.
    _validation_errors: frozenset[int] = frozenset()

    def on_validate(self) -> Iterator[None]:
        yield
        # Hooks unwind in reverse: every validating extension listed after this one is done.
        errors = self.execution_context.pre_execution_errors or ()
        self._validation_errors = frozenset(id(error) for error in errors)

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        result.errors = contract_errors(
            result.errors, self.execution_context.context, self._validation_errors
        )

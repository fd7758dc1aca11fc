"""The error contract: how every GraphQL error reaches the caller with a contract code.

``GatewayError``s keep their message and extensions; parse, validation and argument-coercion
errors are ``BAD_USER_INPUT``; anything else is a bug, logged here with its traceback and shown
only as a masked ``INTERNAL_SERVER_ERROR``. ``ContractErrors`` is the schema extension that
applies this to every result and counts the errors by code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

import structlog
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from gateway.api.context import RequestContext
from gateway.errors import ErrorCode, GatewayError

log = structlog.get_logger("gateway.graphql")

# What a caller sees instead of an unexpected error; the HTTP view uses it too, for a failure
# outside execution.
INTERNAL_ERROR_MESSAGE: Final = "Internal server error."


def to_contract_error(error: GraphQLError) -> GraphQLError:
    """``error`` with a contract code in its extensions; an unexpected one logged and masked."""
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
        return GraphQLError(
            error.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            extensions={"code": ErrorCode.BAD_USER_INPUT.value},
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


class ContractErrors(SchemaExtension):
    """Rewrites the result's errors into contract errors and counts them by code."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        result.errors = [to_contract_error(error) for error in result.errors]
        context = self.execution_context.context
        if isinstance(context, RequestContext) and context.settings.production:
            result.errors = [without_suggestions(error) for error in result.errors]
        if isinstance(context, RequestContext):
            for error in result.errors:
                code = (error.extensions or {}).get("code", ErrorCode.INTERNAL_SERVER_ERROR)
                context.metrics.graphql_errors.labels(code=str(code)).inc()

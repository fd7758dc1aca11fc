"""The error contract: how every GraphQL error reaches the caller with a contract code.

``GatewayError``s keep their message and extensions. The document's own errors get Apollo
Server's codes where the document is prepared (``prepare``: ``GRAPHQL_PARSE_FAILED``,
``GRAPHQL_VALIDATION_FAILED``, and ``BAD_USER_INPUT`` for our limits). Variables that do not
coerce are ``BAD_USER_INPUT`` (Apollo's too). Anything else is a bug, logged here with its
traceback and shown only as a masked ``INTERNAL_SERVER_ERROR``. ``contract_errors`` is the stage
every result's errors go through (counted by code, without suggestions in production), and
``contract_payload`` the same for each payload of ``@defer``/``@stream`` after the first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import structlog
from graphql import GraphQLError, SubsequentIncrementalExecutionResult

from gateway.errors import INTERNAL_ERROR_MESSAGE as INTERNAL_ERROR_MESSAGE  # re-exported
from gateway.errors import ErrorCode, GatewayError
from gateway.observability.metrics import GatewayMetrics

log = structlog.get_logger("gateway.graphql")


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
        # Variable coercion: the request's inputs (the document's own errors are coded
        # where it is prepared).
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


def contract_errors(
    errors: Iterable[GraphQLError], *, production: bool, metrics: GatewayMetrics | None
) -> list[GraphQLError]:
    """``errors`` as contract errors, without suggestions in production, each counted by
    code."""
    rewritten = [to_contract_error(error) for error in errors]
    if production:
        rewritten = [without_suggestions(error) for error in rewritten]
    if metrics is not None:
        for error in rewritten:
            code = (error.extensions or {}).get("code", ErrorCode.INTERNAL_SERVER_ERROR)
            metrics.graphql_errors.labels(code=str(code)).inc()
    return rewritten


def contract_payload(
    frame: SubsequentIncrementalExecutionResult,
    *,
    production: bool,
    metrics: GatewayMetrics | None,
) -> SubsequentIncrementalExecutionResult:
    """A subsequent payload of ``@defer``/``@stream`` with its errors made contract errors, as
    the initial result's are. The errors sit in ``incremental[].errors`` (a deferred fragment's
    or an item's field errors) and ``completed[].errors`` (a stream or fragment that failed, as
    a walk does when the upstream fails mid-stream: code, ``upstreamStatus`` and
    ``trackingId`` kept). Transports call this on every payload after the first."""
    for entry in (*(frame.incremental or ()), *(frame.completed or ())):
        if entry.errors:
            entry.errors = contract_errors(entry.errors, production=production, metrics=metrics)
    return frame

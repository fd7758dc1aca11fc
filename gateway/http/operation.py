"""Running one GraphQL operation that arrived over HTTP, whatever style will answer it.

The one home of the request pipeline: the document resolved (inline, an APQ hash or a trusted
document id, ``persisted``), the choice of operation checked, a stored answer for a repeat
(``reuse``), then execution with the only ``RequestContext`` built anywhere, naming the caller:
every resolver, root fields and federation entities alike, reaches numbers through it. What
comes out is an ``Answer`` (or a ``Refusal`` raised) that a response style writes; the runner
knows nothing of media types, status codes or HTTP caching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from graphql import GraphQLError, OperationDefinitionNode, parse
from starlette.requests import HTTPConnection
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from gateway.api.context import RequestContext
from gateway.api.contract_errors import INTERNAL_ERROR_MESSAGE
from gateway.errors import ErrorCode
from gateway.http.graphql_request import GraphQLParams
from gateway.http.persisted import DocumentPolicy
from gateway.http.refusals import Refusal
from gateway.http.reuse import ResponseReuse
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import current_facts
from gateway.pipeline.source import NumbersSource, usable_authorization
from gateway.settings import Settings

log = structlog.get_logger("gateway.http")

_OPERATION_KEYWORD = re.compile(r"\b(?:query|mutation|subscription)\b")


@dataclass(frozen=True, slots=True)
class OperationCall:
    """One operation to run, as its transport read it."""

    connection: HTTPConnection  # the resolvers' ``context.request``; carries lifespan state
    params: GraphQLParams
    authorization: str | None  # the header (or connection payload) exactly as sent
    queries_only: bool  # only a query may run (a GET: nothing changes state via a link)
    refresh: bool = False  # ``Cache-Control: no-cache``: fresh upstream reads, stored anew
    report_cache: bool = False  # ``extensions.cache`` asked for: never reused
    federated_trace: bool = False  # ``extensions.ftv1`` asked for by a router: never reused
    # What else shapes the answer's bytes, so two shapes never share a stored answer.
    shape: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """One complete GraphQL response, encoded as JSON, and what a style needs to frame it."""

    body: bytes
    # Failed before execution (parse, validation): no ``data`` entry; a request error.
    rejected: bool = False
    # Seconds until an upstream entry it was built from goes stale; None: not reusable
    # (errors, caching off, a stale entry used).
    fresh_for: float | None = None


class OperationRunner:
    """Runs operations for every transport. Built once by ``create_app``; holds no request
    state: the caller's numbers, the document policy and stored answers come from the
    lifespan state on each call's connection."""

    def __init__(self, *, settings: Settings, schema: Any, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.schema = schema
        self.metrics = metrics

    async def run(self, call: OperationCall) -> Answer:
        """The operation's answer; raises ``Refusal`` when it cannot run at all."""
        params = call.params
        state = call.connection.state
        documents: DocumentPolicy = state.documents
        document, register_as = await documents.resolve(
            params.query, params.persisted_hash, params.document_id
        )
        _check_operation_choice(document, params.operation_name)

        reuse: ResponseReuse = state.responses
        # Looked up before anything is built for the request: a repeat costs a hash and a
        # dictionary lookup. The cache report and a federated trace differ each time: those
        # are never reused.
        reuse_key = (
            None
            if call.report_cache or call.federated_trace
            else reuse.key(
                usable_authorization(call.authorization),
                document,
                params.variables,
                params.operation_name,
                shape=call.shape,
            )
        )
        if reuse_key is not None and not call.refresh:
            stored = reuse.get(reuse_key)
            if stored is not None:
                self.metrics.responses_reused.inc()
                facts = current_facts()
                if facts is not None:  # the request's log line and metrics, as if executed
                    facts.attempted = facts.executed = True
                    facts.operation_name = stored.operation_name
                    facts.operation_type = stored.operation_type
                    facts.cache.append("reused:answer")
                return Answer(stored.body, fresh_for=stored.fresh_for)

        context = self._context(call)
        result = await self._execute(call, document, context)
        payload, rejected = result_payload(result)
        if register_as is not None and not rejected:
            await documents.register(register_as, document)
        body = orjson.dumps(payload)
        if result.errors:
            return Answer(body, rejected=rejected)
        fresh_for = context.numbers.fresh_for()
        if reuse_key is not None:
            facts = current_facts()
            reuse.put(
                reuse_key,
                body,
                fresh_for,
                usable_authorization(call.authorization),
                (facts.operation_name, facts.operation_type) if facts else (None, None),
            )
        return Answer(body, fresh_for=fresh_for)

    async def _execute(
        self, call: OperationCall, document: str, context: RequestContext
    ) -> ExecutionResult:
        params = call.params
        try:
            result: ExecutionResult = await self.schema.execute(
                document,
                variable_values=params.variables,
                context_value=context,
                operation_name=params.operation_name,
                allowed_operation_types={OperationType.QUERY} if call.queries_only else None,
            )
        except CannotGetOperationTypeError:
            raise Refusal(
                400,
                f"operationName {params.operation_name!r} names no operation in the document.",
                legacy_status=200,
            ) from None
        except InvalidOperationTypeError:
            # Only queries may travel by GET (the spec), so nothing can change state via a link.
            raise Refusal(
                405,
                "Only queries may be sent with GET; POST other operations.",
                headers={"Allow": "POST"},
            ) from None
        return result

    def _context(self, call: OperationCall) -> RequestContext:
        source: NumbersSource = call.connection.state.numbers
        return RequestContext(
            request=call.connection,
            settings=self.settings,
            metrics=self.metrics,
            numbers=source.for_caller(call.authorization, refresh=call.refresh),
            report_cache=call.report_cache,
            include_federated_trace=call.federated_trace,
        )


def _check_operation_choice(document: str, operation_name: str | None) -> None:
    """Several operations and no ``operationName`` is a request error (the GraphQL spec);
    strawberry would quietly run the first. Parses only when two operation keywords appear,
    so every ordinary request skips this."""
    if operation_name is not None or len(_OPERATION_KEYWORD.findall(document)) < 2:
        return
    try:
        parsed = parse(document, no_location=True)
    except GraphQLError:
        return  # execution reports the syntax error
    operations = sum(isinstance(node, OperationDefinitionNode) for node in parsed.definitions)
    if operations > 1:
        raise Refusal(
            400,
            "The document has several operations: name one in 'operationName'.",
            legacy_status=200,
        )


def _with_contract_code(error: GraphQLError) -> dict[str, Any]:
    """The error as sent. One that reached here without a contract code escaped the schema's
    error handling (strawberry turns an exception in its own hooks into a bare error): it is
    a bug, logged, and masked like any other."""
    formatted: dict[str, Any] = dict(error.formatted)
    if (formatted.get("extensions") or {}).get("code") in ErrorCode.__members__:
        return formatted
    log.error("graphql_uncoded_error", error=error.message, exc_info=error.original_error)
    masked = {
        "message": INTERNAL_ERROR_MESSAGE,
        "extensions": {"code": ErrorCode.INTERNAL_SERVER_ERROR.value},
    }
    if "path" in formatted:
        masked["path"] = formatted["path"]
    return masked


def result_payload(result: ExecutionResult) -> tuple[dict[str, Any], bool]:
    """The GraphQL response of ``result``, and whether the request failed before execution
    (no path on any error and no data): then the response has no ``data`` entry."""
    errors = [_with_contract_code(error) for error in result.errors or ()]
    rejected = result.data is None and bool(errors) and all("path" not in e for e in errors)
    payload: dict[str, Any] = {}
    if not rejected:
        payload["data"] = result.data
    if errors:
        payload["errors"] = errors
    if result.extensions:
        payload["extensions"] = result.extensions
    return payload, rejected

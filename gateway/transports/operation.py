"""Running one GraphQL operation that arrived over HTTP, whatever style will answer it.

The one home of the request pipeline: the document resolved (inline, an APQ hash or a trusted
document id, ``document_policy``), the choice of operation checked, a stored answer for a repeat
(``reuse``), then execution with the only ``RequestContext`` built anywhere, naming the caller:
every resolver, root fields and federation entities alike, reaches numbers through it. What
comes out is an ``Answer`` (or a ``Refusal`` raised) that a response style writes; the runner
knows nothing of media types, status codes or HTTP caching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import structlog
from graphql import (
    GraphQLError,
    OperationDefinitionNode,
    get_operation_ast,
    parse,
)
from graphql.language import OperationType as DocumentOperationType
from starlette.requests import HTTPConnection
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from gateway.data.answer_store import ResponseReuse, count_reused
from gateway.data.caller import Caller
from gateway.data.source import CallerNumbers, NumbersSource
from gateway.errors import ErrorCode
from gateway.execution.contract_errors import (
    INTERNAL_ERROR_MESSAGE,
    contract_payload,
    to_contract_error,
)
from gateway.execution.directive_hints import INCREMENTAL_DIRECTIVE
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import current_facts
from gateway.schema.context import RequestContext
from gateway.settings import Settings
from gateway.transports.documents import DocumentPolicy
from gateway.transports.graphql_request import GraphQLParams
from gateway.transports.incremental_payloads import PayloadWriter, merged_answer
from gateway.transports.negotiation import IncrementalFormat
from gateway.transports.payload_stream import PayloadStream
from gateway.transports.refusals import Refusal

log = structlog.get_logger("gateway.http")

_OPERATION_KEYWORD = re.compile(r"\b(?:query|mutation|subscription)\b")
# A document that may deliver incrementally or is a subscription: worth a streamed response.
_SUBSCRIPTION_HINT = re.compile(r"\bsubscription\b")


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
    router: bool = False  # carries GATEWAY_ROUTER_SECRET: federation operations may run
    # The request's numbers when several operations share them (a batch: one loader, so
    # equal asks across the batch make one upstream call); None: made for this call.
    numbers: CallerNumbers | None = None
    # What else shapes the answer's bytes, so two shapes never share a stored answer.
    shape: str = ""
    # How ``@defer``/``@stream`` payloads are written when they stream (``Accept``'s choice).
    incremental_format: IncrementalFormat = IncrementalFormat.PATHS


@dataclass(frozen=True, slots=True)
class Answer:
    """One complete GraphQL response, encoded as JSON, and what a style needs to frame it."""

    body: bytes
    # Failed before execution (parse, validation): no ``data`` entry; a request error.
    rejected: bool = False
    # Seconds until an upstream entry it was built from goes stale; None: not reusable
    # (errors, caching off, a stale entry used).
    fresh_for: float | None = None
    # The weak ``ETag`` of ``body`` when it is known already (a stored answer); None: the
    # style computes it if it needs one.
    etag: str | None = None
    # The stored answer a repeat of the call looks up (it was reused, or kept for repeats):
    # ``repeat_answers`` remembers it to answer the next identical request. None: a repeat
    # would not be looked up (errors, no-cache, a cache report, an APQ registration).
    reuse_key: str | None = None


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
            params.query, params.persisted_hash, params.document_id, router=call.router
        )
        _check_operation_choice(document, params.operation_name)
        if _is_subscription(document, params.operation_name):
            raise Refusal(
                406,
                "Subscriptions are served as text/event-stream or as Apollo's multipart "
                'subscriptions (multipart/mixed;subscriptionSpec="1.0"): send one in Accept; '
                "or over the graphql-transport-ws WebSocket on this path.",
                legacy_status=200,
            )
        if INCREMENTAL_DIRECTIVE.search(document):
            # Asked for as one JSON result: the directives are hints, the payloads merged.
            return await self._merged(call, document, register_as)

        reuse: ResponseReuse = state.responses
        numbers: NumbersSource = state.numbers
        # One caller however its credential is spelled; None: no credentials that could
        # reach the upstream (nothing is reused or registered for it).
        caller = numbers.callers.known(call.authorization)
        identity = caller.identity if caller is not None else None
        # Looked up before anything is built for the request: a repeat costs a hash and a
        # dictionary lookup. The cache report and a federated trace differ each time: those
        # are never reused.
        reuse_key = (
            None
            if call.report_cache or call.federated_trace or identity is None
            else reuse.key(
                identity,
                document,
                params.variables,
                params.operation_name,
                shape=call.shape,
            )
        )
        # A registration (the document with its APQ hash) is executed, never reused: only
        # an upstream verdict during this very operation may register it (``register``).
        # The key a repeat of this very call looks its answer up by (``repeat_answers``).
        lookup_key = reuse_key if not call.refresh and register_as is None else None
        if lookup_key is not None:
            stored = reuse.get(lookup_key)
            if stored is not None:
                count_reused(stored, self.metrics)
                return Answer(
                    stored.body,
                    fresh_for=stored.fresh_for,
                    etag=stored.etag,
                    reuse_key=lookup_key,
                )

        context = self._context(call, caller=caller)
        try:
            result = await self._execute(call, document, context)
        finally:
            if call.numbers is None:  # made for this call alone (a batch releases its own)
                context.numbers.release()
        payload, rejected = result_payload(result)
        if register_as is not None and not rejected:
            await documents.register(register_as, document, identity)
        body = orjson.dumps(payload)
        if result.errors:
            return Answer(body, rejected=rejected)
        fresh_for = context.numbers.fresh_for()
        if reuse_key is not None and identity is not None:
            facts = current_facts()
            reuse.put(
                reuse_key,
                body,
                fresh_for,
                identity,
                (facts.operation_name, facts.operation_type) if facts else (None, None),
            )
        return Answer(body, fresh_for=fresh_for, reuse_key=lookup_key)

    async def wants_stream(self, call: OperationCall, *, json_preferred: bool = False) -> bool:
        """Whether the operation is one a streamed response serves better (``@defer``,
        ``@stream``, a subscription); a cheap look at the document, which it resolves.
        ``json_preferred`` (the client ranks JSON above streamed types): only a
        subscription, which has no JSON form."""
        documents: DocumentPolicy = call.connection.state.documents
        params = call.params
        document, _ = await documents.resolve(
            params.query, params.persisted_hash, params.document_id, router=call.router
        )
        if json_preferred:
            return _is_subscription(document, params.operation_name)
        return (
            INCREMENTAL_DIRECTIVE.search(document) is not None
            or _SUBSCRIPTION_HINT.search(document) is not None
        )

    async def stream(
        self, call: OperationCall, *, subscriptions: bool = True
    ) -> Answer | PayloadStream:
        """The operation's payloads as they come (``@defer``/``@stream`` payloads, a
        subscription's events, or one result), or an ``Answer`` when it failed before its
        first payload (parse, validation, limits): a request error the caller gets as JSON.
        Raises ``Refusal`` when it cannot run at all (a subscription, with
        ``subscriptions`` False: 406). Never stored for reuse."""
        params = call.params
        documents: DocumentPolicy = call.connection.state.documents
        document, register_as = await documents.resolve(
            params.query, params.persisted_hash, params.document_id, router=call.router
        )
        _check_operation_choice(document, params.operation_name)
        if not subscriptions and _is_subscription(document, params.operation_name):
            raise Refusal(
                406,
                "Subscriptions are served as text/event-stream or as Apollo's multipart "
                'subscriptions (multipart/mixed;subscriptionSpec="1.0"), not as a bare '
                "multipart/mixed: send one in Accept; or over the graphql-transport-ws "
                "WebSocket on this path.",
                legacy_status=200,
            )
        payloads = await self.open_stream(call, document, incremental=True)
        try:
            first = await payloads.peek()
            if first is None or _rejected(first):
                await payloads.aclose()
                body = orjson.dumps(first or {})
                return Answer(body, rejected=first is not None)
            if register_as is not None:
                numbers: NumbersSource = call.connection.state.numbers
                caller = numbers.callers.known(call.authorization)
                await documents.register(
                    register_as, document, caller.identity if caller is not None else None
                )
        except BaseException:
            # Abandoned before the transport took it (the client left, a WebSocket
            # ``complete``): its task and subscription must not outlive this call.
            await payloads.aclose()
            raise
        return payloads

    async def open_stream(
        self, call: OperationCall, document: str, *, incremental: bool
    ) -> PayloadStream:
        """Start the operation's payloads (a task of their own, one payload ahead).
        ``incremental``: the transport sends each payload as it comes (multipart, SSE, a
        WebSocket); False when they are merged into one JSON body, so an ``@stream`` list is
        held whole and is priced and bounded as unstreamed (``RequestContext``)."""
        params = call.params
        _check_operation_named(document, params.operation_name)
        context = self._context(call, incremental_delivery=incremental)
        frames = await self.schema.stream(
            document,
            variable_values=params.variables,
            context_value=context,
            operation_name=params.operation_name,
            allowed_operation_types={OperationType.QUERY} if call.queries_only else None,
        )
        return PayloadStream(
            frames,
            # Later payloads' errors: contract codes, production wording, the metric.
            PayloadWriter(
                _with_contract_code,
                partial(contract_payload, context=context),
                # Merged into one answer: graphql-core's own format, which names each
                # entry's place (no index to work out).
                call.incremental_format if incremental else IncrementalFormat.V0_2,
            ),
            _streamed_result_payload,
            subscription=_is_subscription(document, params.operation_name),
        )

    async def _merged(self, call: OperationCall, document: str, register_as: str | None) -> Answer:
        """An incremental operation answered as one JSON result: its payloads merged."""
        async with await self.open_stream(call, document, incremental=False) as payloads:
            collected = []
            while (payload := await payloads.next()) is not None:
                collected.append(payload)
        if len(collected) == 1 and _rejected(collected[0]):
            return Answer(orjson.dumps(collected[0]), rejected=True)
        if register_as is not None:
            numbers: NumbersSource = call.connection.state.numbers
            caller = numbers.callers.known(call.authorization)
            await documents_of(call).register(
                register_as, document, caller.identity if caller is not None else None
            )
        return Answer(orjson.dumps(merged_answer(collected)))

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

    def _context(
        self,
        call: OperationCall,
        *,
        incremental_delivery: bool = False,
        caller: Caller | None = None,
    ) -> RequestContext:
        """``caller``: the caller ``run`` already identified (its HMAC is not made twice)."""
        source: NumbersSource = call.connection.state.numbers
        numbers = call.numbers or source.for_caller(
            call.authorization, refresh=call.refresh, caller=caller
        )
        return RequestContext(
            request=call.connection,
            settings=self.settings,
            metrics=self.metrics,
            numbers=numbers,
            report_cache=call.report_cache,
            include_federated_trace=call.federated_trace,
            incremental_delivery=incremental_delivery,
        )


def documents_of(call: OperationCall) -> DocumentPolicy:
    policy: DocumentPolicy = call.connection.state.documents
    return policy


def _rejected(payload: dict[str, Any]) -> bool:
    """A payload of a request that failed before execution: errors and no ``data`` entry."""
    return "data" not in payload and "incremental" not in payload and bool(payload.get("errors"))


def _check_operation_named(document: str, operation_name: str | None) -> None:
    """An ``operationName`` naming no operation is a request error (as ``run`` reports it;
    ``schema.stream`` would turn it into an internal error)."""
    if operation_name is None:
        return
    try:
        parsed = parse(document, no_location=True)
    except GraphQLError:
        return  # execution reports the syntax error
    if get_operation_ast(parsed, operation_name) is None:
        raise Refusal(
            400,
            f"operationName {operation_name!r} names no operation in the document.",
            legacy_status=200,
        )


def _is_subscription(document: str, operation_name: str | None) -> bool:
    if "subscription" not in document:
        return False
    try:
        operation = get_operation_ast(parse(document, no_location=True), operation_name)
    except GraphQLError:
        return False
    return operation is not None and operation.operation is DocumentOperationType.SUBSCRIPTION


def _streamed_result_payload(result: ExecutionResult) -> dict[str, Any]:
    """A whole result read from ``schema.stream``: its errors get their contract codes here,
    as the schema's error extension rewrites them only once the whole stream has ended."""
    before_execution = isinstance(result, PreExecutionError)
    if result.errors:
        result = ExecutionResult(
            data=result.data,
            errors=[
                to_contract_error(error, validation_error=before_execution)
                for error in result.errors
            ],
            extensions=result.extensions,
        )
    return result_payload(result)[0]


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

"""One operation as every transport runs it: the request's document resolved, prepared once, its
caller identified once, then answered whole (from the answer store, or executed) or as a stream.

``OperationRunner.prepare`` turns what a transport read (``OperationCall``) into a
``PreparedCall``: the document resolved by the document policy (inline, an APQ hash, a trusted
document id; in production with a manifest only listed documents and what a router needs),
the operation prepared (``execution.prepare``: parsed under the limits, validated, derived;
cached), the operation type checked against the transport (only queries by GET), the caller
identified (``Callers``: one HMAC per request). Everything after reads that value.

``answer`` serves it whole: a repeat by the same caller, while the upstream entries it used
are fresh, gets the stored bytes before any further work (``data.answer_store``; GET and POST
alike); otherwise the engine admits it (the variables' checks and the cost), executes it, and
the answer is kept for repeats. ``stream`` runs it as payloads (``@defer``/``@stream``, or a
subscription's events) for the streamed transports. Neither knows media types, status codes
or HTTP caching: the response styles do (``json_body``, ``stream_styles``).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson
from graphql import (
    ExecutionResult,
    GraphQLError,
    InitialIncrementalExecutionResult,
    OperationType,
)

from gateway.changes.registry import ChangeFeeds
from gateway.data.answer_store import AnswerStore, count_reused
from gateway.data.caller import Caller
from gateway.data.source import CallerNumbers, NumbersSource
from gateway.execution.operation_facts import note_operation, operation_span
from gateway.execution.prepare import OperationRefused, PreparedOperation, PreparedOperations
from gateway.execution.run import Admission, OperationEngine, RunOptions
from gateway.observability.request_facts import current_facts
from gateway.schema.context import RequestContext
from gateway.transports.documents import DocumentPolicy
from gateway.transports.graphql_request import GraphQLParams
from gateway.transports.incremental_payloads import PayloadWriter, merged_answer
from gateway.transports.negotiation import IncrementalFormat
from gateway.transports.payload_stream import PayloadStream
from gateway.transports.refusals import Refusal


@dataclass(frozen=True, slots=True)
class OperationCall:
    """One operation to run, as its transport read it."""

    params: GraphQLParams
    authorization: str | None  # the header (or connection payload) exactly as sent
    queries_only: bool = False  # only a query may run (a GET: nothing changes state via a link)
    refresh: bool = False  # ``Cache-Control: no-cache``: fresh upstream reads, stored anew
    report_cache: bool = False  # ``extensions.cache`` asked for: never reused
    federated_trace: bool = False  # ``extensions.ftv1`` asked for (and allowed): never reused
    router: bool = False  # carries GATEWAY_ROUTER_SECRET: federation operations may run
    client_name: str | None = None  # as the request log keeps it
    # How ``@defer``/``@stream`` payloads are written when they stream (``Accept``'s choice).
    incremental_format: IncrementalFormat = IncrementalFormat.PATHS
    # The request's numbers when several operations share them (a batch: one loader, so
    # equal asks across the batch make one upstream call); None: made for this call.
    numbers: CallerNumbers | None = None


@dataclass(slots=True)
class PreparedCall:
    """A call whose document is resolved and prepared, and whose caller is known."""

    call: OperationCall
    prepared: PreparedOperation
    caller: Caller | None  # None: no credentials that could reach the upstream
    register_as: str | None  # the APQ digest to register the document under once it ran
    trusted: bool = False  # the document is one of the operator's trusted documents
    answer_key: str | None = None  # the stored answer a repeat looks up (None: none)

    @property
    def subscription(self) -> bool:
        return self.prepared.subscription


@dataclass(frozen=True, slots=True)
class Answer:
    """One complete GraphQL response, encoded as JSON, and what a style needs to frame it."""

    body: bytes
    # Failed before execution (parse, validation, limits): no ``data`` entry; a request error.
    rejected: bool = False
    # Seconds until an upstream entry it was built from goes stale; None: not reusable
    # (errors, caching off, a stale entry used).
    fresh_for: float | None = None
    # The weak ``ETag`` of ``body`` when it is known already (a stored answer); None: the
    # style computes it if it needs one.
    etag: str | None = None
    reused: bool = False  # answered from the answer store


@dataclass(slots=True)
class OperationRunner:
    """Runs operations for every transport. Built once by the app's lifespan; holds no
    request state."""

    operations: PreparedOperations
    engine: OperationEngine
    documents: DocumentPolicy
    numbers: NumbersSource
    answers: AnswerStore
    changes: ChangeFeeds | None = None
    tracer: Any = field(default=None)  # the app's tracer while tracing is on

    async def prepare(self, call: OperationCall) -> PreparedCall:
        """The call resolved and prepared; raises ``Refusal`` (it cannot run at all: an
        unknown APQ hash, a document outside the trusted list, a GET of a non-query) or
        ``OperationRefused`` (its document does not parse, validate or name one operation)."""
        params = call.params
        resolved = await self.documents.resolve(
            params.query, params.persisted_hash, params.document_id
        )
        facts = current_facts()
        if resolved.trusted and facts is not None:
            facts.trusted_document = True  # its name may take a metric label
        try:
            prepared = self.operations.prepare(
                resolved.text,
                params.operation_name,
                tracer=facts.tracer if facts is not None else None,
            )
        except OperationRefused as refused:
            if resolved.needs_admission:
                raise self.documents.not_in_list() from None
            self.engine.refused(refused, None)
            raise
        if resolved.needs_admission and not self.documents.admits_operation(
            prepared, router=call.router
        ):
            raise self.documents.not_in_list()
        if facts is not None:  # known from here on, whatever becomes of the operation
            note_operation(facts, prepared.name, prepared.kind.value)
        if call.queries_only and prepared.kind is not OperationType.QUERY:
            # Only queries may travel by GET (the spec), so nothing can change state via a link.
            raise Refusal(
                405,
                "Only queries may be sent with GET; POST other operations"
                + (" (a subscription as text/event-stream)." if prepared.subscription else "."),
                headers={"Allow": "POST"},
            )
        caller = self.numbers.callers.known(call.authorization)
        prepared_call = PreparedCall(
            call, prepared, caller, resolved.register_as, trusted=resolved.trusted
        )
        if (
            caller is not None
            and not prepared.subscription
            and not (call.report_cache or call.federated_trace)
        ):
            # The cache report and a federated trace differ each time: never reused.
            prepared_call.answer_key = self.answers.key(
                caller.identity, prepared.key, params.variables
            )
        return prepared_call

    @staticmethod
    def traced() -> AbstractContextManager[None]:
        """The operation's span around what a transport does for it (``operation_facts``):
        the parse and validation, the answer or the stream's start; a stream's task inherits
        it as its current span."""
        return operation_span(current_facts())

    async def answer(
        self, prepared_call: PreparedCall, admission: Admission | None = None
    ) -> Answer:
        """The operation's one whole answer (``@defer``/``@stream`` payloads merged); raises
        ``Refusal`` only for a subscription (it has no whole answer). ``admission``: admitted
        already (a batch's element, priced against the batch's budget)."""
        call = prepared_call.call
        key = prepared_call.answer_key
        # A registration (the document with its APQ hash) is executed, never reused: only an
        # upstream verdict during this very operation may register it.
        if key is not None and not call.refresh and prepared_call.register_as is None:
            stored = self.answers.get(key)
            if stored is not None:
                count_reused(stored, self.engine.metrics)
                return Answer(
                    stored.body, fresh_for=stored.fresh_for, etag=stored.etag, reused=True
                )
        prepared = prepared_call.prepared
        if prepared.subscription:
            raise Refusal(
                406,
                "Subscriptions are served as text/event-stream or as Apollo's multipart "
                'subscriptions (multipart/mixed;subscriptionSpec="1.0"): send one in Accept; '
                "or over the graphql-transport-ws WebSocket on this path.",
                legacy_status=200,
            )
        if admission is None:
            try:
                admission = self.engine.admit(
                    prepared, call.params.variables, self._options(call, held=True)
                )
            except OperationRefused as refused:
                return self._refused(refused, prepared)
        context = self._context(prepared_call, incremental=False)
        try:
            if prepared.incremental:
                payload = await self._merged(admission, context)
                errors = bool(payload.get("errors"))
            else:
                result = await self.engine.execute(admission, context)
                payload = result_payload(result)
                errors = bool(result.errors)
            await self._register(prepared_call, context, rejected="data" not in payload)
            body = orjson.dumps(payload)
            if errors:
                return Answer(body, rejected="data" not in payload)
            fresh_for = context.numbers.fresh_for()
        finally:
            if call.numbers is None:  # made for this call alone (a batch releases its own)
                context.numbers.release()
        if key is not None and prepared_call.caller is not None:
            self.answers.put(
                key,
                body,
                fresh_for,
                prepared_call.caller.identity,
                (prepared.name, prepared.kind.value),
            )
        return Answer(body, fresh_for=fresh_for)

    def admit_stream(self, prepared_call: PreparedCall) -> Admission | Answer:
        """The operation admitted to stream (its cost priced as streamed), or its refusal as
        an answer (a request error the caller gets as JSON)."""
        call = prepared_call.call
        try:
            return self.engine.admit(
                prepared_call.prepared, call.params.variables, self._options(call, held=False)
            )
        except OperationRefused as refused:
            return self._refused(refused, prepared_call.prepared)

    async def stream(self, prepared_call: PreparedCall, admission: Admission) -> PayloadStream:
        """The operation's payloads as they come (``@defer``/``@stream`` payloads, a
        subscription's events, or one result), read one ahead of the transport; closing the
        stream stops the operation. Never stored for reuse."""
        context = self._context(prepared_call, incremental=True)
        frames = self.engine.frames(admission, context)
        payloads = PayloadStream(
            frames,
            PayloadWriter(format_error, _as_is, prepared_call.call.incremental_format),
            result_payload,
            subscription=prepared_call.subscription,
            on_close=context.numbers.release if prepared_call.call.numbers is None else None,
        )
        if prepared_call.register_as is not None:
            try:
                first = await payloads.peek()
                if first is not None and "data" in first:
                    await self._register(prepared_call, context, rejected=False)
            except BaseException:
                await payloads.aclose()
                raise
        return payloads

    async def _merged(self, admission: Admission, context: RequestContext) -> dict[str, Any]:
        """An incremental operation answered as one JSON result: its payloads merged (written
        in graphql-core's own format, which names each entry's place: no index to work
        out)."""
        writer = PayloadWriter(format_error, _as_is, IncrementalFormat.V0_2)
        collected: list[dict[str, Any]] = []
        frames = self.engine.frames(admission, context)
        try:
            async for frame in frames:
                if isinstance(frame, ExecutionResult):
                    collected.append(result_payload(frame))
                elif isinstance(frame, InitialIncrementalExecutionResult):
                    collected.append(writer.initial(frame))
                else:
                    collected.append(writer.subsequent(frame))
        finally:
            await frames.aclose()
        if len(collected) == 1 and "data" not in collected[0]:
            return collected[0]
        return merged_answer(collected)

    def _refused(self, refused: OperationRefused, prepared: PreparedOperation | None) -> Answer:
        self.engine.refused(refused, prepared)
        return Answer(orjson.dumps(refusal_payload(refused.errors)), rejected=True)

    async def _register(
        self, prepared_call: PreparedCall, context: RequestContext, *, rejected: bool
    ) -> None:
        """Keep a document that ran under its APQ digest, once this operation proved its
        caller real (``DocumentPolicy.register``)."""
        digest = prepared_call.register_as
        caller = prepared_call.caller
        if digest is None or caller is None or rejected:
            return
        await self.documents.register(
            digest,
            prepared_call.prepared.text,
            caller.identity,
            vouched=context.numbers.caller_accepted or prepared_call.trusted,
        )

    def _options(self, call: OperationCall, *, held: bool) -> RunOptions:
        return RunOptions(
            held=held, report_cache=call.report_cache, federated_trace=call.federated_trace
        )

    def _context(self, prepared_call: PreparedCall, *, incremental: bool) -> RequestContext:
        call = prepared_call.call
        numbers = call.numbers or self.numbers.for_caller(
            call.authorization, refresh=call.refresh, caller=prepared_call.caller
        )
        return RequestContext(
            numbers=numbers,
            changes=self.changes,
            client_name=call.client_name,
            incremental_delivery=incremental,
            encoded_lists=True,  # every answer is encoded with orjson
        )


def format_error(error: GraphQLError) -> dict[str, Any]:
    """An error as sent (every error reaching here is a contract error: ``run``)."""
    formatted: dict[str, Any] = dict(error.formatted)
    return formatted


def refusal_payload(errors: Iterable[GraphQLError]) -> dict[str, Any]:
    """The answer of an operation refused before it ran: its errors, no ``data`` entry."""
    return {"errors": [format_error(error) for error in errors]}


def result_payload(result: ExecutionResult) -> dict[str, Any]:
    """The GraphQL response of ``result``. A result that failed before execution (errors
    without a path and no data: the variables did not coerce) has no ``data`` entry."""
    errors = [format_error(error) for error in result.errors or ()]
    payload: dict[str, Any] = {}
    if not (result.data is None and errors and all("path" not in e for e in errors)):
        payload["data"] = result.data
    if errors:
        payload["errors"] = errors
    if result.extensions:
        payload["extensions"] = result.extensions
    return payload


def _as_is(frame: Any) -> Any:
    """Later payloads are contract errors already (``run.frames``)."""
    return frame

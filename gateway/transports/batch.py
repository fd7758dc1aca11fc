"""Batching (``GATEWAY_BATCH_MAX`` > 0): a POST of a JSON array of operations answers a JSON
array of their responses, in order.

The operations run concurrently as one request's operations: they share one loader and one
caller (``CallerNumbers.sharing``), so equal upstream asks across the batch make one upstream
call, while each keeps its own record of what the cache did (its ``extensions.cache`` and how
long its answer stays fresh). Their estimated costs share one budget, ``GATEWAY_MAX_COST``,
checked before any of them runs: a batch costs what one operation may. Everything else is
each operation's own: its document policy (APQ, trusted documents), its limits and cost, its
errors (a refused operation is its own refusal body in the array, the
others still run) and its facts, which the request's log line lists under ``batch``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from graphql import GraphQLError, parse
from starlette.responses import Response

from gateway.data.source import CallerNumbers, NumbersSource
from gateway.errors import ErrorCode
from gateway.execution.cost import operation_cost
from gateway.execution.document_limits import refusal as document_refusal
from gateway.observability.request_facts import RequestFacts, collecting, current_facts
from gateway.settings import Settings
from gateway.transports.documents import DocumentPolicy
from gateway.transports.graphql_request import Batch, GraphQLParams
from gateway.transports.operation import OperationCall, OperationRunner
from gateway.transports.refusals import Refusal
from gateway.transports.response_style import VARY


async def run_batch(
    runner: OperationRunner,
    batch: Batch,
    call_for: Callable[[GraphQLParams], OperationCall],
    media_type: str,
) -> Response:
    """Run every operation of ``batch`` as ``call_for`` makes its call (the request's caller
    and headers), and answer the array of their responses as ``media_type``: 200, whatever
    each one holds (a request error of one operation is its entry's, not the batch's)."""
    request_facts = current_facts()
    numbers: CallerNumbers | None = None
    calls: list[OperationCall | Refusal] = []
    for params in batch.operations:
        if isinstance(params, Refusal):
            calls.append(params)
            continue
        call = call_for(params)
        if numbers is None:  # every call names the same caller: the request's
            source: NumbersSource = call.connection.state.numbers
            numbers = source.for_caller(call.authorization, refresh=call.refresh)
            calls.append(replace(call, numbers=numbers))
        else:  # the same loader, its own record of what the cache did
            calls.append(replace(call, numbers=numbers.sharing()))
    operations = [_facts_like(request_facts) for _ in calls]
    await _hold_to_budget(runner, calls, operations)
    try:
        outcomes = await asyncio.gather(
            *(_run_one(runner, call, facts) for call, facts in zip(calls, operations, strict=True))
        )
    finally:
        if numbers is not None:  # every operation is done with the shared loader's pages
            numbers.release()
    if request_facts is not None:
        for facts in operations:
            _fold(request_facts, facts)
    body = b"[" + b",".join(outcomes) + b"]"
    return Response(body, headers={"Vary": VARY}, media_type=f"{media_type}; charset=utf-8")


def _facts_like(request_facts: RequestFacts | None) -> RequestFacts:
    """Facts of one operation of the request (its log entry under ``batch``)."""
    return RequestFacts(
        request_id=request_facts.request_id if request_facts else "",
        client_name=request_facts.client_name if request_facts else None,
        client_version=request_facts.client_version if request_facts else None,
        tracer=request_facts.tracer if request_facts else None,
        trace_id=request_facts.trace_id if request_facts else None,
    )


async def _hold_to_budget(
    runner: OperationRunner, calls: list[OperationCall | Refusal], operations: list[RequestFacts]
) -> None:
    """One budget for the whole batch: in order, an operation runs only while the estimates
    of those admitted so far plus its own fit ``GATEWAY_MAX_COST``; each one past it becomes
    a ``BAD_USER_INPUT`` refusal before any operation runs, so one POST costs what one
    operation may. An operation over the limit on its own is left to its own cost refusal
    (it makes no call either), and one that cannot be estimated (its document does not
    resolve, parse or pass the document guards) fails on its own, costing nothing."""
    settings = runner.settings
    budget = settings.max_cost
    spent = 0
    for index, call in enumerate(calls):
        if isinstance(call, Refusal):
            continue
        with collecting(operations[index]):  # resolving may vouch for its document
            cost = await _estimate(call, settings)
        if cost is None or cost > budget:
            continue
        if spent + cost > budget:
            calls[index] = Refusal(
                400,
                f"The batch's operations together are estimated above the cost limit of "
                f"{budget} (GATEWAY_MAX_COST): this one ({cost}) would bring them to "
                f"{spent + cost}. Send it in another request, or ask for less.",
                ErrorCode.BAD_USER_INPUT,
                legacy_status=200,
            )
            continue
        spent += cost


async def _estimate(call: OperationCall, settings: Settings) -> int | None:
    """The operation's cost estimate, as the cost limiter will make it; None when it will
    fail before execution (and so cost nothing)."""
    params = call.params
    documents: DocumentPolicy = call.connection.state.documents
    try:
        text, _ = await documents.resolve(
            params.query, params.persisted_hash, params.document_id, router=call.router
        )
        document = parse(text, no_location=True, max_tokens=settings.max_tokens)
    except (Refusal, GraphQLError):
        return None
    if document_refusal(document) is not None:
        return None
    return operation_cost(
        document,
        params.operation_name,
        params.variables,
        max_page_size=settings.max_page_size,
        max_entities=settings.max_entities,
        max_stream_items=settings.max_stream_items,
    )


async def _run_one(
    runner: OperationRunner, call: OperationCall | Refusal, facts: RequestFacts
) -> bytes:
    """One operation, with facts of its own (gather runs it in its own context copy)."""
    with collecting(facts):
        try:
            if isinstance(call, Refusal):
                raise call
            answer = await runner.run(call)
        except Refusal as refusal:
            facts.attempted = True
            facts.add_error_codes([refusal.code.value])
            return refusal.body()
    return answer.body


def _fold(request: RequestFacts, operation: RequestFacts) -> None:
    """An operation's facts into its request's: the codes, calls and cache outcomes of all,
    and the operation's own entry in ``batch``."""
    request.attempted = request.attempted or operation.attempted
    request.executed = request.executed or operation.executed
    request.add_error_codes(operation.error_codes)
    request.upstream_calls.extend(operation.upstream_calls)
    request.cache.extend(operation.cache)
    request.batch.append(operation.operation_log())

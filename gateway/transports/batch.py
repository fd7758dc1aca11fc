"""Batching (``GATEWAY_BATCH_MAX`` > 0): a POST of a JSON array of operations answers a JSON
array of their responses, in order.

The operations run concurrently as one request's operations: they share one loader and one
caller (``CallerNumbers.sharing``), so equal upstream asks across the batch make one upstream
call, while each keeps its own record of what the cache did (its ``extensions.cache`` and how
long its answer stays fresh). Their estimated costs share one budget, ``GATEWAY_MAX_COST``,
checked before any of them runs: a batch costs what one operation may, and since a batch is
answered as one JSON body, every element is priced as held whole (an ``@stream`` list too).
Everything else is each operation's own: its document policy (APQ, trusted documents), its
limits and cost, its errors (a refused operation is its own refusal body in the array, the
others still run) and its facts, which the request's log line lists under ``batch``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import orjson
from starlette.responses import Response

from gateway.data.source import CallerNumbers
from gateway.errors import ErrorCode
from gateway.execution.prepare import OperationRefused
from gateway.execution.run import Admission, RunOptions
from gateway.observability.request_facts import RequestFacts, collecting, current_facts
from gateway.transports.graphql_request import Batch, GraphQLParams
from gateway.transports.operation import (
    OperationCall,
    OperationRunner,
    PreparedCall,
    refusal_payload,
)
from gateway.transports.refusals import Refusal
from gateway.transports.response_style import VARY

# One element of a batch on its way: prepared, admitted, or already answered (its body).
Element = PreparedCall | tuple[PreparedCall, Admission] | bytes
# Every element is answered in the batch's one JSON body: held whole.
_HELD = RunOptions(held=True)


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
    operations = [_facts_like(request_facts) for _ in batch.operations]
    elements: list[Element] = []
    for params, facts in zip(batch.operations, operations, strict=True):
        with collecting(facts), runner.traced():
            element = await _prepared(runner, params, call_for, numbers)
        if isinstance(element, PreparedCall) and numbers is None:
            numbers = element.call.numbers
        elements.append(element)
    _hold_to_budget(runner, elements, operations)
    try:
        outcomes = await asyncio.gather(
            *(
                _run_one(runner, element, facts)
                for element, facts in zip(elements, operations, strict=True)
            )
        )
    finally:
        if numbers is not None:  # every operation is done with the shared loader's pages
            numbers.release()
    if request_facts is not None:
        for facts in operations:
            _fold(request_facts, facts)
    body = b"[" + b",".join(outcomes) + b"]"
    return Response(body, headers={"Vary": VARY}, media_type=f"{media_type}; charset=utf-8")


async def _prepared(
    runner: OperationRunner,
    params: GraphQLParams | Refusal,
    call_for: Callable[[GraphQLParams], OperationCall],
    numbers: CallerNumbers | None,
) -> Element:
    """One element prepared with the batch's shared numbers (the first makes them), or its
    refusal's body."""
    try:
        if isinstance(params, Refusal):
            raise params
        call = call_for(params)
        if numbers is None:  # every call names the same caller: the request's
            numbers = runner.numbers.for_caller(call.authorization, refresh=call.refresh)
        else:  # the same loader, its own record of what the cache did
            numbers = numbers.sharing()
        prepared = await runner.prepare(replace(call, numbers=numbers))
        if prepared.subscription:
            raise Refusal(400, "A batch cannot hold a subscription: send it on its own.")
        return prepared
    except OperationRefused as refused:
        return orjson.dumps(refusal_payload(refused.errors))
    except Refusal as refusal:
        _record_refusal(refusal)
        return refusal.body()


def _hold_to_budget(
    runner: OperationRunner, elements: list[Element], operations: list[RequestFacts]
) -> None:
    """One budget for the whole batch: in order, an operation runs only while the estimates
    of those admitted so far plus its own fit ``GATEWAY_MAX_COST``; each one past it becomes
    a ``BAD_USER_INPUT`` refusal before any operation runs, so one POST costs what one
    operation may. An operation over the limit on its own is left to its own cost refusal
    (it makes no call either)."""
    engine = runner.engine
    budget = engine.limits.max_cost
    spent = 0
    for index, element in enumerate(elements):
        if not isinstance(element, PreparedCall):
            continue
        options = replace(
            _HELD,
            report_cache=element.call.report_cache,
            federated_trace=element.call.federated_trace,
        )
        try:
            admission = engine.admit(element.prepared, element.call.params.variables, options)
        except OperationRefused:
            continue  # refused on its own when it runs (its refusal recorded then)
        cost = admission.cost
        if spent + cost > budget:
            refusal = Refusal(
                400,
                f"The batch's operations together are estimated above the cost limit of "
                f"{budget} (GATEWAY_MAX_COST): this one ({cost}) would bring them to "
                f"{spent + cost}. Send it in another request, or ask for less.",
                ErrorCode.BAD_USER_INPUT,
                legacy_status=200,
            )
            with collecting(operations[index]):
                _record_refusal(refusal)
            elements[index] = refusal.body()
            continue
        spent += cost
        elements[index] = (element, admission)


async def _run_one(runner: OperationRunner, element: Element, facts: RequestFacts) -> bytes:
    """One operation, with facts of its own (gather runs it in its own context copy)."""
    if isinstance(element, bytes):
        return element
    prepared, admission = element if isinstance(element, tuple) else (element, None)
    with collecting(facts), runner.traced():
        try:
            answer = await runner.answer(prepared, admission)
        except Refusal as refusal:
            _record_refusal(refusal)
            return refusal.body()
    return answer.body


def _record_refusal(refusal: Refusal) -> None:
    facts = current_facts()
    if facts is not None:
        facts.attempted = True
        facts.add_error_codes([refusal.code.value])


def _facts_like(request_facts: RequestFacts | None) -> RequestFacts:
    """Facts of one operation of the request (its log entry under ``batch``)."""
    return RequestFacts(
        request_id=request_facts.request_id if request_facts else "",
        client_name=request_facts.client_name if request_facts else None,
        client_version=request_facts.client_version if request_facts else None,
        tracer=request_facts.tracer if request_facts else None,
        trace_id=request_facts.trace_id if request_facts else None,
    )


def _fold(request: RequestFacts, operation: RequestFacts) -> None:
    """An operation's facts into its request's: the codes, calls and cache outcomes of all,
    and the operation's own entry in ``batch``."""
    request.attempted = request.attempted or operation.attempted
    request.executed = request.executed or operation.executed
    request.add_error_codes(operation.error_codes)
    request.upstream_calls.extend(operation.upstream_calls)
    request.cache.extend(operation.cache)
    request.batch.append(operation.operation_log())

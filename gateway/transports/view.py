"""``/graphql``: GraphQL over HTTP as its spec says, in front of the operation runner.

One request: the method is checked (405), a browser asking for HTML gets GraphiQL
(development), a response style is negotiated from ``Accept`` (406 when none fits), the
parameters are read (``graphql_request``), and the ``OperationRunner`` (``operation``) runs
them. The style (``response_style``: ``json_body``) writes what comes out, an answer or
a refusal; every refusal has the one body of ``refusals``, never a ``data`` entry.

Incremental delivery and subscriptions: when ``Accept`` names ``multipart/mixed`` or
``text/event-stream`` and the operation wants a stream (``@defer``, ``@stream``, a
subscription), or no JSON type is acceptable at all, the operation's payloads are written by
a streamed style (``stream_styles``), within the caller's ``GATEWAY_MAX_STREAMS_PER_CALLER``:
``@defer``/``@stream`` payloads in the incremental format ``Accept`` asks for, a subscription
over SSE or Apollo's multipart protocol (``negotiation``). A request that fails before its
first payload is still answered as JSON with its status.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.data.persisted_queries import normal_hash
from gateway.data.source import NumbersSource
from gateway.errors import ErrorCode
from gateway.execution.federated_trace import HEADER as FEDERATED_TRACE_HEADER
from gateway.execution.federated_trace import wants_federated_trace
from gateway.observability.request_facts import current_facts
from gateway.transports.batch import run_batch
from gateway.transports.graphiql import graphiql_response
from gateway.transports.graphql_request import (
    Batch,
    GraphQLParams,
    has_graphql_parameters,
    params_of,
)
from gateway.transports.json_body import JsonBodyStyle
from gateway.transports.negotiation import (
    APPLICATION_JSON,
    EVENT_STREAM,
    GRAPHQL_RESPONSE_JSON,
    MULTIPART_MIXED,
    SubscriptionProtocol,
    choose_media_type,
    choose_stream_type,
    incremental_format,
    prefers_json,
    subscription_protocol,
    wants_html,
)
from gateway.transports.operation import Answer, OperationCall, OperationRunner
from gateway.transports.refusals import Refusal
from gateway.transports.repeat_answers import RepeatPlan, leave_plan
from gateway.transports.request_head import request_head
from gateway.transports.response_style import ResponseStyle
from gateway.transports.router_access import ROUTER_SECRET_HEADER, is_router
from gateway.transports.stream_limits import NO_CALLER, OpenStreams
from gateway.transports.stream_styles import (
    EventStreamFraming,
    MultipartFraming,
    MultipartSubscriptionFraming,
    StreamedResponse,
    StreamFraming,
    early_refusal,
)

# Request header asking for ``extensions.cache`` (what each upstream ask was served from).
CACHE_REPORT_HEADER = "gateway-cache-report"
_ALLOWED_METHODS = "GET, POST"
# Refusals made before a style is negotiated are plain JSON.
_PLAIN_JSON = JsonBodyStyle(APPLICATION_JSON)
# Refusals of a request that accepts only streamed types: JSON with the spec's 4xx statuses.
_STREAM_REFUSALS = JsonBodyStyle(GRAPHQL_RESPONSE_JSON)


def choose_style(accept: str | None) -> ResponseStyle | None:
    """The style ``Accept`` asks for, or None when we can answer with none of its types."""
    media_type = choose_media_type(accept)
    return JsonBodyStyle(media_type) if media_type is not None else None


class GraphQLView:
    """The ASGI app behind ``/graphql``. Built once by ``create_app``; holds no request
    state."""

    def __init__(
        self,
        *,
        runner: OperationRunner,
        ide_page: str | None,
        router_secret: SecretStr | None = None,
        batch_max: int = 0,
    ) -> None:
        self.runner = runner
        self.ide_page = ide_page
        self.router_secret = router_secret
        self.batch_max = batch_max  # 0: a JSON array body is refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response | ASGIApp:
        accept = _header(request, b"accept")
        if request.method not in ("GET", "POST"):
            refusal = Refusal(
                405,
                f"{request.method} is not supported here; use GET or POST.",
                ErrorCode.BAD_USER_INPUT,
                headers={"Allow": _ALLOWED_METHODS},
            )
            return _PLAIN_JSON.refused(refusal, None)
        if (
            request.method == "GET"
            and self.ide_page is not None
            and wants_html(accept)
            and not has_graphql_parameters(request.query_params)
        ):
            return graphiql_response(self.ide_page)
        json_style = choose_style(accept)
        stream_type = choose_stream_type(accept)
        if json_style is None and stream_type is None:
            refusal = Refusal(
                406,
                f"Cannot answer with any type in Accept: {accept!r}; accept "
                f"{GRAPHQL_RESPONSE_JSON}, {APPLICATION_JSON}, {MULTIPART_MIXED} or "
                f"{EVENT_STREAM}.",
            )
            return _PLAIN_JSON.refused(refusal, None)
        style = json_style or _STREAM_REFUSALS
        try:
            params = await params_of(request, batch_max=self.batch_max)
            if isinstance(params, Batch):
                return await run_batch(
                    self.runner,
                    params,
                    lambda one: self._operation_call(request, one),
                    style.media_type,
                )
            call = self._operation_call(request, params)
            if stream_type is not None and (
                json_style is None
                or await self.runner.wants_stream(call, json_preferred=prefers_json(accept))
            ):
                return await self._streamed(request, call, stream_type, style, accept)
            answer = await self.runner.run(call)
        except Refusal as refusal:
            return style.refused(refusal, request)
        if answer.reuse_key is not None and request.method == "GET":
            _leave_plan(request, answer.reuse_key, style.media_type, params)
        return style.answered(answer, request)

    async def _streamed(
        self,
        request: Request,
        call: OperationCall,
        stream_type: str,
        style: ResponseStyle,
        accept: str | None,
    ) -> Response | ASGIApp:
        """The operation's payloads as ``stream_type`` (a subscription as the subscription
        protocol ``accept`` names), or its JSON answer when it failed before the first."""
        streams: OpenStreams = request.state.streams
        numbers: NumbersSource = request.state.numbers
        caller = numbers.callers.known(call.authorization)
        key = caller.identity if caller is not None else NO_CALLER
        # Subscriptions have their own bounds (GATEWAY_MAX_SUBSCRIPTIONS_PER_CALLER): they
        # hold no stream slot, not even while they start (only they "prefer" a stream).
        release: Callable[[], None] = _nothing
        if not await self.runner.wants_stream(call, json_preferred=True):
            streams.acquire(key)
            release = partial(streams.release, key)
        protocol = subscription_protocol(accept)
        try:
            # A client naming no subscription protocol (a bare multipart/mixed: no client
            # reads a subscription framed so) is told which to ask for (406).
            outcome = await self.runner.stream(call, subscriptions=protocol is not None)
        except BaseException:
            release()
            raise
        if isinstance(outcome, Answer):
            release()
            refused = early_refusal(outcome)
            if refused is not None:
                return style.refused(refused, request)
            return style.answered(outcome, request)
        framing: StreamFraming
        if outcome.subscription:
            framing = (
                EventStreamFraming()
                if protocol is SubscriptionProtocol.SSE
                else MultipartSubscriptionFraming()
            )
        elif stream_type == EVENT_STREAM:
            framing = EventStreamFraming()
        else:
            framing = MultipartFraming(call.incremental_format)
        return StreamedResponse(outcome, framing, streams, release=release)

    def _operation_call(self, request: Request, params: GraphQLParams) -> OperationCall:
        """The call that runs ``params`` as this request (a batch's differ only in them)."""
        method = request.method
        head = request_head(request.scope)
        return OperationCall(
            connection=request,
            params=params,
            authorization=_text(head.get(b"authorization")),
            queries_only=method == "GET",
            refresh="no-cache" in (_text(head.get(b"cache-control")) or "").lower(),
            report_cache=(_text(head.get(_CACHE_REPORT)) or "").lower() in ("1", "true", "yes"),
            federated_trace=wants_federated_trace(_text(head.get(_FEDERATED_TRACE))),
            router=is_router(self.router_secret, _text(head.get(_ROUTER_SECRET))),
            shape=method,
            incremental_format=incremental_format(_text(head.get(b"accept"))),
        )


# The headers an operation call reads, as ``request_head`` names them (lower-case bytes).
_CACHE_REPORT = CACHE_REPORT_HEADER.lower().encode("latin-1")
_FEDERATED_TRACE = FEDERATED_TRACE_HEADER.lower().encode("latin-1")
_ROUTER_SECRET = ROUTER_SECRET_HEADER.lower().encode("latin-1")


def _text(value: bytes | None) -> str | None:
    """A header value as Starlette's ``Headers`` gives it."""
    return None if value is None else value.decode("latin-1")


def _header(request: Request, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case), as Starlette's ``Headers``
    would give it, read from the request head the outer layers already parsed (no second
    pass over the header list, no ``Headers`` object). The head is the request as it
    arrived; the only layer that rewrites headers (compression, ``Accept-Encoding``)
    touches none read here."""
    return _text(request_head(request.scope).get(name))


def _leave_plan(request: Request, reuse_key: str, media_type: str, params: GraphQLParams) -> None:
    """How this GET was answered (``JsonBodyStyle``, in ``media_type``), for
    ``repeat_answers`` to answer its repeats the same way."""
    facts = current_facts()
    trusted = facts is not None and facts.trusted_document
    digest = None
    if params.query is None and not trusted:  # resolved from the APQ store by its hash
        digest = normal_hash(params.document_id or params.persisted_hash or "")
        if digest is None:
            return
    leave_plan(
        request.scope,
        RepeatPlan(
            reuse_key=reuse_key,
            content_type=f"{media_type}; charset=utf-8".encode("latin-1"),
            trusted_document=trusted,
            persisted_digest=digest,
        ),
    )


def _nothing() -> None:
    return None

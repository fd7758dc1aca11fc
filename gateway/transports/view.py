"""``/graphql``: GraphQL over HTTP as its spec says, in front of the operation runner.

One request: the method is checked (405), a browser asking for HTML gets GraphiQL
(development), a response style is negotiated from ``Accept`` (406 when none fits), the
parameters are read (``graphql_request``), and the ``OperationRunner`` (``operation``) prepares
the operation once; the style (``json_body``) writes its answer or refusal (every refusal has
the one body of ``refusals``, never a ``data`` entry). A repeat is answered from the answer
store in the runner, before anything else is built for it.

Incremental delivery and subscriptions: when ``Accept`` names ``multipart/mixed`` or
``text/event-stream`` and the prepared operation is one a stream serves (``@defer``,
``@stream``, a subscription), or no JSON type is acceptable at all, its payloads are written by
a streamed style (``stream_styles``), within the caller's ``GATEWAY_MAX_STREAMS_PER_CALLER``:
``@defer``/``@stream`` payloads in the incremental format ``Accept`` asks for, a subscription
over SSE or Apollo's multipart protocol (``negotiation``). A request that fails before its
first payload is still answered as JSON with its status.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import orjson
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ErrorCode
from gateway.execution.federated_trace import HEADER as FEDERATED_TRACE_HEADER
from gateway.execution.federated_trace import wants_federated_trace
from gateway.execution.prepare import OperationRefused
from gateway.observability.request_facts import client_field
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
from gateway.transports.operation import (
    Answer,
    OperationCall,
    OperationRunner,
    PreparedCall,
    refusal_payload,
)
from gateway.transports.refusals import Refusal
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
CLIENT_NAME_HEADER = b"apollographql-client-name"
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
    state (the runner is the lifespan's, in each request's state)."""

    def __init__(
        self,
        *,
        ide_page: str | None,
        router_secret: SecretStr | None = None,
        batch_max: int = 0,
        trace_needs_router: bool = False,
    ) -> None:
        self.ide_page = ide_page
        self.router_secret = router_secret
        self.batch_max = batch_max  # 0: a JSON array body is refused
        # Production: a federated trace costs every field its timing, so only a router
        # (carrying GATEWAY_ROUTER_SECRET) may ask for one.
        self.trace_needs_router = trace_needs_router

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
        runner: OperationRunner = request.state.runner
        try:
            params = await params_of(request, batch_max=self.batch_max)
            if isinstance(params, Batch):
                return await run_batch(
                    runner,
                    params,
                    lambda one: self._operation_call(request, one),
                    style.media_type,
                )
            with runner.traced():
                prepared = await runner.prepare(self._operation_call(request, params))
                if stream_type is not None and (
                    json_style is None
                    or _wants_stream(prepared, json_preferred=prefers_json(accept))
                ):
                    return await self._streamed(
                        request, runner, prepared, stream_type, style, accept
                    )
                answer = await runner.answer(prepared)
        except OperationRefused as refused:
            answer = Answer(orjson.dumps(refusal_payload(refused.errors)), rejected=True)
        except Refusal as refusal:
            return style.refused(refusal, request)
        return style.answered(answer, request)

    async def _streamed(
        self,
        request: Request,
        runner: OperationRunner,
        prepared: PreparedCall,
        stream_type: str,
        style: ResponseStyle,
        accept: str | None,
    ) -> Response | ASGIApp:
        """The operation's payloads as ``stream_type`` (a subscription as the subscription
        protocol ``accept`` names), or its JSON answer when it failed before the first."""
        protocol = subscription_protocol(accept)
        if prepared.subscription and protocol is None:
            # A bare multipart/mixed: no client reads a subscription framed so.
            refusal = Refusal(
                406,
                "Subscriptions are served as text/event-stream or as Apollo's multipart "
                'subscriptions (multipart/mixed;subscriptionSpec="1.0"), not as a bare '
                "multipart/mixed: send one in Accept; or over the graphql-transport-ws "
                "WebSocket on this path.",
                legacy_status=200,
            )
            return style.refused(refusal, request)
        streams: OpenStreams = request.state.streams
        key = prepared.caller.identity if prepared.caller is not None else NO_CALLER
        # Subscriptions have their own bounds (GATEWAY_MAX_SUBSCRIPTIONS_PER_CALLER): they
        # hold no stream slot.
        release: Callable[[], None] = _nothing
        try:
            if not prepared.subscription:
                streams.acquire(key)
                release = partial(streams.release, key)
            admitted = runner.admit_stream(prepared)
            if isinstance(admitted, Answer):
                release()
                return style.answered(admitted, request)
            payloads = await runner.stream(prepared, admitted)
        except Refusal as refusal:
            release()
            return style.refused(refusal, request)
        except BaseException:
            release()
            raise
        try:
            first = await payloads.peek()
        except BaseException:
            await payloads.aclose()
            release()
            raise
        if first is None or ("data" not in first and "incremental" not in first):
            # Failed before its first payload (variables, or a subscription refused at once:
            # limits, credentials): a request error the caller gets as JSON.
            await payloads.aclose()
            release()
            answer = Answer(orjson.dumps(first or {}), rejected=first is not None)
            refused = early_refusal(answer)
            return style.refused(refused, request) if refused else style.answered(answer, request)
        if prepared.subscription and first.get("data") is None:
            await payloads.aclose()
            release()
            answer = Answer(orjson.dumps(first), rejected=True)
            refused = early_refusal(answer)
            return style.refused(refused, request) if refused else style.answered(answer, request)
        framing: StreamFraming
        if prepared.subscription:
            framing = (
                EventStreamFraming()
                if protocol is SubscriptionProtocol.SSE
                else MultipartSubscriptionFraming()
            )
        elif stream_type == EVENT_STREAM:
            framing = EventStreamFraming()
        else:
            framing = MultipartFraming(prepared.call.incremental_format)
        return StreamedResponse(payloads, framing, streams, release=release)

    def _operation_call(self, request: Request, params: GraphQLParams) -> OperationCall:
        """The call that runs ``params`` as this request (a batch's differ only in them)."""
        head = request_head(request.scope)
        router = is_router(self.router_secret, _text(head.get(_ROUTER_SECRET)))
        trace = wants_federated_trace(_text(head.get(_FEDERATED_TRACE)))
        return OperationCall(
            params=params,
            authorization=_text(head.get(b"authorization")),
            queries_only=request.method == "GET",
            refresh="no-cache" in (_text(head.get(b"cache-control")) or "").lower(),
            report_cache=(_text(head.get(_CACHE_REPORT)) or "").lower() in ("1", "true", "yes"),
            federated_trace=trace and (router or not self.trace_needs_router),
            router=router,
            client_name=client_field(head.get(CLIENT_NAME_HEADER)),
            incremental_format=incremental_format(_text(head.get(b"accept"))),
        )


def _wants_stream(prepared: PreparedCall, *, json_preferred: bool) -> bool:
    """Whether a streamed response serves the operation better: a subscription always (it
    has no JSON form); ``@defer``/``@stream`` unless the client ranks JSON higher."""
    return prepared.subscription or (not json_preferred and prepared.prepared.incremental)


# The headers an operation call reads, as ``request_head`` names them (lower-case bytes).
_CACHE_REPORT = CACHE_REPORT_HEADER.lower().encode("latin-1")
_FEDERATED_TRACE = FEDERATED_TRACE_HEADER.lower().encode("latin-1")
_ROUTER_SECRET = ROUTER_SECRET_HEADER.lower().encode("latin-1")


def _text(value: bytes | None) -> str | None:
    """A header value as Starlette's ``Headers`` gives it."""
    return None if value is None else value.decode("latin-1")


def _header(request: Request, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case), read from the request head
    the request log already parsed (no second pass over the header list)."""
    return _text(request_head(request.scope).get(name))


def _nothing() -> None:
    return None

"""``/graphql``: GraphQL over HTTP as its spec says, in front of the executable schema.

One request: method and ``Accept`` are checked (405, 406), the parameters read
(``graphql_request``), the document resolved (inline, an APQ hash or a trusted document id),
then executed with a context naming the caller. Requests that fail before execution answer
4xx with ``application/graphql-response+json`` and 200 with ``application/json`` (the spec's
rule for legacy clients), never with a ``data`` entry. A GET answered entirely from fresh
cache entries is cacheable by the browser (``private, max-age``) and carries an ``ETag``;
a matching ``If-None-Match`` gets 304. Browsers asking for HTML get GraphiQL (development).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from graphql import GraphQLError, OperationDefinitionNode, parse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from gateway.api.context import RequestContext
from gateway.api.federated_trace import HEADER as FEDERATED_TRACE_HEADER
from gateway.api.federated_trace import wants_federated_trace
from gateway.api.schema import INTERNAL_ERROR_MESSAGE
from gateway.errors import ErrorCode
from gateway.http.graphiql import graphiql_response
from gateway.http.graphql_request import (
    GraphQLParams,
    RequestError,
    has_graphql_parameters,
    params_from_body,
    params_from_query_string,
)
from gateway.http.negotiation import (
    APPLICATION_JSON,
    GRAPHQL_RESPONSE_JSON,
    choose_media_type,
    wants_html,
)
from gateway.http.persisted import DocumentPolicy, PersistedDocumentError
from gateway.http.reuse import ResponseReuse
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import current_facts
from gateway.pipeline.source import NumbersSource, usable_authorization
from gateway.settings import Settings

log = structlog.get_logger("gateway.http")

CACHE_REPORT_HEADER = "gateway-cache-report"
_OPERATION_KEYWORD = re.compile(r"\b(?:query|mutation|subscription)\b")
_ALLOWED_METHODS = "GET, POST"
# Answers depend on these request headers; caches must key on them.
_VARY = "Accept, Authorization, Gateway-Cache-Report, Apollo-Federation-Include-Trace"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the view sends: a status, the body (a payload to encode, or bytes already
    encoded), and any extra headers."""

    status: int
    payload: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    body: bytes | None = None

    def encoded(self) -> bytes:
        return self.body if self.body is not None else orjson.dumps(self.payload)


def error_payload(message: str, code: ErrorCode) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code.value}}]}


class GraphQLView:
    """The ASGI app behind ``/graphql``. Built once by ``create_app``; holds no request
    state: the caller's numbers and the document policy come from the lifespan state."""

    def __init__(
        self,
        *,
        settings: Settings,
        schema: Any,
        metrics: GatewayMetrics,
        ide_page: str | None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.metrics = metrics
        self.ide_page = ide_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        accept = request.headers.get("accept")
        if request.method not in ("GET", "POST"):
            answer = Answer(
                405,
                error_payload(
                    f"{request.method} is not supported here; use GET or POST.",
                    ErrorCode.BAD_USER_INPUT,
                ),
                {"Allow": _ALLOWED_METHODS},
            )
            return self._respond(answer, APPLICATION_JSON)
        if (
            request.method == "GET"
            and self.ide_page is not None
            and wants_html(accept)
            and not has_graphql_parameters(request.query_params)
        ):
            return graphiql_response(self.ide_page)
        media_type = choose_media_type(accept)
        if media_type is None:
            answer = Answer(
                406,
                error_payload(
                    f"Cannot answer with any type in Accept: {accept!r}; accept "
                    f"{GRAPHQL_RESPONSE_JSON} or {APPLICATION_JSON}.",
                    ErrorCode.BAD_USER_INPUT,
                ),
            )
            return self._respond(answer, APPLICATION_JSON)
        answer, cacheable_for = await self._answer(request, media_type)
        return self._respond(answer, media_type, request=request, cacheable_for=cacheable_for)

    async def _answer(self, request: Request, media_type: str) -> tuple[Answer, float | None]:
        legacy = media_type == APPLICATION_JSON
        try:
            params = await self._params(request)
            document, register_as = await self._documents(request).resolve(
                params.query, params.persisted_hash, params.document_id
            )
            _check_operation_choice(document, params.operation_name)
        except RequestError as exc:
            return Answer(
                exc.status, error_payload(exc.message, ErrorCode.BAD_USER_INPUT), exc.headers
            ), None
        except PersistedDocumentError as exc:
            # Apollo's clients read PERSISTED_QUERY_NOT_FOUND from a 200, then send the document.
            not_found = exc.code is ErrorCode.PERSISTED_QUERY_NOT_FOUND
            status = 200 if legacy or not_found else 400
            return Answer(status, error_payload(exc.message, exc.code)), None
        except _RequestGraphQLError as exc:
            return Answer(
                200 if legacy else 400, error_payload(exc.message, ErrorCode.BAD_USER_INPUT)
            ), None

        headers = request.headers
        refresh = "no-cache" in headers.get("cache-control", "").lower()
        report_cache = headers.get(CACHE_REPORT_HEADER, "").lower() in ("1", "true", "yes")
        federated_trace = wants_federated_trace(headers.get(FEDERATED_TRACE_HEADER))
        reuse: ResponseReuse = request.state.responses
        # Looked up before anything is built for the request: a repeat costs a hash and a
        # dictionary lookup. The cache report and a federated trace differ each time: those
        # are never reused.
        reuse_key = (
            None
            if report_cache or federated_trace
            else reuse.key(
                usable_authorization(headers.get("authorization")),
                document,
                params.variables,
                params.operation_name,
                shape=request.method,
            )
        )
        if reuse_key is not None and not refresh:
            stored = reuse.get(reuse_key)
            if stored is not None:
                self.metrics.responses_reused.inc()
                facts = current_facts()
                if facts is not None:  # the request's log line and metrics, as if executed
                    facts.attempted = facts.executed = True
                    facts.operation_name = stored.operation_name
                    facts.operation_type = stored.operation_type
                    facts.cache.append("reused:answer")
                return Answer(200, body=stored.body), stored.fresh_for
        context = self._context(
            request, refresh=refresh, report_cache=report_cache, federated_trace=federated_trace
        )
        try:
            result: ExecutionResult = await self.schema.execute(
                document,
                variable_values=params.variables,
                context_value=context,
                operation_name=params.operation_name,
                allowed_operation_types=(
                    {OperationType.QUERY} if request.method == "GET" else None
                ),
            )
        except CannotGetOperationTypeError:
            message = f"operationName {params.operation_name!r} names no operation in the document."
            return Answer(
                200 if legacy else 400, error_payload(message, ErrorCode.BAD_USER_INPUT)
            ), None
        except InvalidOperationTypeError:
            # Only queries may travel by GET (the spec), so nothing can change state via a link.
            message = "Only queries may be sent with GET; POST other operations."
            return Answer(
                405, error_payload(message, ErrorCode.BAD_USER_INPUT), {"Allow": "POST"}
            ), None
        payload, rejected = _payload(result)
        status = 400 if rejected and not legacy else 200
        if register_as is not None and not rejected:
            await self._documents(request).register(register_as, document)
        if result.errors:
            return Answer(status, payload), None
        body = orjson.dumps(payload)
        if reuse_key is not None:
            facts = current_facts()
            reuse.put(
                reuse_key,
                body,
                context.numbers.fresh_for(),
                usable_authorization(request.headers.get("authorization")),
                (facts.operation_name, facts.operation_type) if facts else (None, None),
            )
        return Answer(status, body=body), context.numbers.fresh_for()

    async def _params(self, request: Request) -> GraphQLParams:
        if request.method == "GET":
            return params_from_query_string(request.query_params)
        content_type = request.headers.get("content-type", "")
        essence = content_type.split(";")[0].strip().lower()
        if essence != "application/json":
            raise RequestError(
                415,
                "POST a JSON body with 'Content-Type: application/json'.",
                {"Accept-Post": "application/json"},
            )
        return params_from_body(await request.body())

    def _documents(self, request: Request) -> DocumentPolicy:
        documents: DocumentPolicy = request.state.documents
        return documents

    def _context(
        self, request: Request, *, refresh: bool, report_cache: bool, federated_trace: bool
    ) -> RequestContext:
        source: NumbersSource = request.state.numbers
        numbers = source.for_caller(request.headers.get("authorization"), refresh=refresh)
        return RequestContext(
            request=request,
            settings=self.settings,
            metrics=self.metrics,
            numbers=numbers,
            report_cache=report_cache,
            include_federated_trace=federated_trace,
        )

    def _respond(
        self,
        answer: Answer,
        media_type: str,
        *,
        request: Request | None = None,
        cacheable_for: float | None = None,
    ) -> Response:
        body = answer.encoded()
        headers = {"Vary": _VARY, **(answer.headers or {})}
        if request is not None and request.method == "GET":
            etag = 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            headers["ETag"] = etag
            if cacheable_for is not None and cacheable_for >= 1 and answer.status == 200:
                headers["Cache-Control"] = f"private, max-age={math.floor(cacheable_for)}"
            else:
                headers["Cache-Control"] = "private, no-cache"
            if answer.status == 200 and _matches(request.headers.get("if-none-match"), etag):
                return Response(status_code=304, headers=headers)
        return Response(
            body,
            status_code=answer.status,
            headers=headers,
            media_type=f"{media_type}; charset=utf-8",
        )


class _RequestGraphQLError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in if_none_match.split(","))


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
        raise _RequestGraphQLError(
            "The document has several operations: name one in 'operationName'."
        )


def _with_contract_code(error: GraphQLError) -> dict[str, Any]:
    """The error as sent. One that reached here without a contract code escaped the schema's
    error handling (strawberry turns an exception in its own hooks into a bare error): it is
    a bug, logged, and masked like any other."""
    formatted: dict[str, Any] = dict(error.formatted)
    if (formatted.get("extensions") or {}).get("code") in ErrorCode.__members__:
        return formatted
    log.error("graphql_uncoded_error", error=error.message, exc_info=error.original_error)
    masked = {"message": INTERNAL_ERROR_MESSAGE, "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
    if "path" in formatted:
        masked["path"] = formatted["path"]
    return masked


def _payload(result: ExecutionResult) -> tuple[dict[str, Any], bool]:
    """The response body, and whether the request failed before execution (no path on any
    error and no data): then the body has no ``data`` entry."""
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

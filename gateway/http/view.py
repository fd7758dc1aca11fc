"""The GraphQL HTTP view: strawberry's ASGI view with the gateway's per-request context, a
GraphiQL that opens on an example, and contract-shaped answers to malformed requests.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# strawberry's own HTTP layer (a dependency of strawberry) raises these.
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, OperationDefinitionNode, parse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData

from gateway.api.context import RequestContext
from gateway.api.schema import build_schema
from gateway.errors import ErrorCode
from gateway.http.middleware import send_error
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.source import NumbersSource
from gateway.settings import Settings

_OPERATION_KEYWORD = re.compile(r"\b(?:query|mutation|subscription)\b")

EXAMPLE_OPERATION = """\
# numbers-gateway: phone numbers of a Webex Calling organization.
# With the embedded simulator no token is needed; to act as another demo caller add a
# header such as {"Authorization": "Bearer demo-location-admin"} below.
query FirstNumbers {
  phoneNumbers(page: {first: 5}) {
    nodes {
      phoneNumber
      extension
      state
      location { name }
      owner { type firstName lastName }
    }
    pageInfo { hasNextPage endCursor }
    totalCount
  }
  numberCounts { total assigned unAssigned extensionOnly }
}
"""


class GatewayView(GraphQL[RequestContext, None]):
    """``/graphql``: one fresh ``RequestContext`` (loader, cache report) per request."""

    def __init__(self, *, settings: Settings, metrics: GatewayMetrics) -> None:
        super().__init__(
            build_schema(settings),
            graphql_ide=None if settings.production else "graphiql",
            allow_queries_via_get=True,
        )
        self.settings = settings
        self.metrics = metrics
        self._ide_html: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            response = await self.run(Request(scope=scope, receive=receive))
        except HTTPException as exc:
            # Malformed requests get a GraphQL-shaped body with a contract code, not text.
            await send_error(send, exc.status_code, exc.reason, ErrorCode.BAD_USER_INPUT)
            return
        await response(scope, receive, send)

    @property
    def graphql_ide_html(self) -> str:
        if self._ide_html is None:
            example = EXAMPLE_OPERATION.replace("\\", "\\\\").replace("`", "\\`")
            self._ide_html = re.sub(
                r"const EXAMPLE_QUERY = `.*?`;",
                lambda _: f"const EXAMPLE_QUERY = `{example}`;",
                super().graphql_ide_html,
                count=1,
                flags=re.DOTALL,
            )
        return self._ide_html

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data)

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        """Strawberry's parsing, with every malformed body turned into a 400."""
        try:
            data = await super().parse_http_body(request)
        except HTTPException:
            raise
        except (ValueError, TypeError, AttributeError, KeyError):
            # Not UTF-8, not JSON, or JSON of the wrong shape (a number, a string, ...).
            raise HTTPException(
                400, "The request body must be a JSON object with a 'query' string."
            ) from None
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item.operation_name, str | None):
                raise HTTPException(400, "'operationName' must be a string or null.")
            if item.operation_name is None and _operation_count(item.query) > 1:
                # strawberry would quietly run the first one; the GraphQL spec says no.
                raise HTTPException(
                    400, "The document has several operations: name one in 'operationName'."
                )
        return data

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        if isinstance(response_data, dict) and _rejected_before_execution(dict(response_data)):
            response.status_code = 400
        return response

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> RequestContext:
        source: NumbersSource = request.state.numbers
        numbers = source.for_caller(
            request.headers.get("authorization"),
            refresh="no-cache" in request.headers.get("cache-control", "").lower(),
        )
        return RequestContext(
            request=request,
            response=response,
            settings=self.settings,
            metrics=self.metrics,
            numbers=numbers,
        )


def _operation_count(query: str | None) -> int:
    """Operations in the document. Parses only when two operation keywords appear: an
    anonymous ``{ ... }`` beside another operation already fails validation, so only
    documents with two ``query``/``mutation``/``subscription`` keywords need the real count;
    every ordinary request skips this second parse."""
    if not query or len(_OPERATION_KEYWORD.findall(query)) < 2:
        return 1
    try:
        document = parse(query, no_location=True)
    except GraphQLError:
        return 1
    return sum(isinstance(node, OperationDefinitionNode) for node in document.definitions)


def _rejected_before_execution(response_data: dict[str, Any]) -> bool:
    """A document that failed parsing, validation or a limit: no data, only input errors."""
    errors = response_data.get("errors") or []
    return (
        response_data.get("data") is None
        and bool(errors)
        and all(
            "path" not in error
            and (error.get("extensions") or {}).get("code") == ErrorCode.BAD_USER_INPUT
            for error in errors
        )
    )

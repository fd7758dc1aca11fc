"""The app factory: ``create_app(settings)`` wires settings, schema, upstream and routes.

Nothing is built at import time. The lifespan owns the one shared ``httpx.AsyncClient``
(closed on shutdown) and hands the ``UpstreamClient`` to requests through lifespan state;
the GraphQL view builds a fresh loader per request.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import httpx
import orjson
import structlog
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from gateway.cache import REDIS_OPERATION_TIMEOUT, CacheEvent, ResponseCache, cache_key
from gateway.context import RequestContext
from gateway.errors import Unauthenticated
from gateway.loaders import NumbersLoader
from gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from gateway.schema import build_schema
from gateway.settings import Settings
from gateway.simulator import build_demo_world, create_simulator_app
from gateway.translation import Fetch, UpstreamPage
from gateway.upstream import UpstreamClient

EMBEDDED_UPSTREAM_URL = "http://simulator.embedded/v1"
EMBEDDED_DEFAULT_AUTHORIZATION = "Bearer demo-admin"
USER_AGENT = "numbers-gateway/0.1"

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

log = structlog.get_logger("gateway.http")


class LifespanState(TypedDict):
    upstream: UpstreamClient
    cache: ResponseCache


class GatewayView(GraphQL[RequestContext, None]):
    """Strawberry's ASGI view with our context and a GraphiQL that opens on an example."""

    def __init__(self, *, settings: Settings, metrics: GatewayMetrics) -> None:
        super().__init__(
            build_schema(production=settings.production),
            graphql_ide=None if settings.production else "graphiql",
            allow_queries_via_get=True,
        )
        self.settings = settings
        self.metrics = metrics
        self._ide_html: str | None = None

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

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> RequestContext:
        upstream: UpstreamClient = request.state.upstream
        cache: ResponseCache = request.state.cache
        authorization = request.headers.get("authorization")
        if authorization is None and self.settings.embedded_simulator:
            authorization = EMBEDDED_DEFAULT_AUTHORIZATION
        refresh = "no-cache" in request.headers.get("cache-control", "").lower()
        cache_events: list[CacheEvent] = []

        async def fetch_page(fetch: Fetch) -> UpstreamPage:
            if authorization is None:
                raise Unauthenticated(
                    "Send the caller's Webex token as 'Authorization: Bearer <token>'."
                )
            page, event = await cache.get_or_fetch(
                cache_key(cache.secret, authorization, fetch),
                lambda: upstream.fetch(fetch, authorization),
                refresh=refresh,
            )
            cache_events.append(event)
            return page

        return RequestContext(
            request=request,
            response=response,
            settings=self.settings,
            metrics=self.metrics,
            numbers=NumbersLoader(fetch_page),
            cache_events=cache_events,
        )


class RequestLogMiddleware:
    """One log line and one metric sample per HTTP request; never headers or bodies."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope["path"] if scope["path"] in _KNOWN_ROUTES else "other"
            elapsed = time.perf_counter() - started
            self.metrics.http_requests.labels(route=route, status=str(status)).inc()
            self.metrics.http_duration.labels(route=route).observe(elapsed)
            log.info(
                "http_request",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 1),
            )


_KNOWN_ROUTES = frozenset({"/graphql", "/healthz", "/readyz", "/metrics"})


def build_upstream_http(
    settings: Settings, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    timeout = settings.upstream_timeout
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(
            max_connections=settings.upstream_concurrency * 2,
            max_keepalive_connections=settings.upstream_concurrency,
        ),
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        follow_redirects=False,  # a redirect could carry the caller's token elsewhere
    )


@asynccontextmanager
async def build_cache(
    settings: Settings, metrics: GatewayMetrics, clock: Callable[[], float]
) -> AsyncIterator[ResponseCache]:
    secret = (
        settings.cache_key_secret.get_secret_value().encode() if settings.cache_key_secret else None
    )
    redis = (
        Redis.from_url(
            str(settings.redis_url),
            socket_timeout=REDIS_OPERATION_TIMEOUT,
            socket_connect_timeout=REDIS_OPERATION_TIMEOUT,
        )
        if settings.redis_url is not None
        else None
    )
    cache = ResponseCache(
        ttl=settings.cache_ttl,
        max_entries=settings.cache_max_entries,
        max_bytes=settings.cache_max_bytes,
        secret=secret,
        redis=redis,
        metrics=metrics,
        clock=clock,
    )
    try:
        yield cache
    finally:
        await cache.close()


def create_app(
    settings: Settings,
    *,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    cache_clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the gateway. ``upstream_transport`` replaces the network (tests, embedding);
    ``cache_clock`` replaces the cache's clock (tests of expiry)."""
    metrics = GatewayMetrics()
    simulator_app: Starlette | None = None
    if settings.embedded_simulator:
        upstream_url = EMBEDDED_UPSTREAM_URL
        if upstream_transport is None:
            world = build_demo_world(size=settings.simulator_size, seed=settings.simulator_seed)
            simulator_app = create_simulator_app(world)
            upstream_transport = httpx.ASGITransport(app=simulator_app)
    else:
        upstream_url = str(settings.upstream_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        async with (
            build_upstream_http(settings, upstream_transport) as http,
            build_cache(settings, metrics, cache_clock) as cache,
        ):
            upstream = UpstreamClient(
                http,
                base_url=upstream_url,
                deadline=settings.upstream_timeout,
                concurrency=settings.upstream_concurrency,
                metrics=metrics,
            )
            log.info(
                "gateway_started",
                upstream="embedded simulator" if settings.embedded_simulator else upstream_url,
                env=settings.env.value,
            )
            yield {"upstream": upstream, "cache": cache}

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = getattr(request.state, "upstream", None) is not None
        return JSONResponse(
            {"status": "ready" if ready else "starting"}, status_code=200 if ready else 503
        )

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    view: Any = GatewayView(settings=settings, metrics=metrics)
    app = Starlette(
        routes=[
            Route("/graphql", view, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(RequestLogMiddleware, metrics=metrics)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.simulator_app = simulator_app
    return app

"""The app factory: ``create_app(settings)`` wires settings, schema, upstream and routes.

Nothing is built at import time. The lifespan owns the one shared ``httpx.AsyncClient`` and
the response cache (both closed on shutdown), builds the ``NumbersSource`` over them and hands
it to requests through lifespan state; each request gets its own view of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import httpx
import structlog
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.middleware import (
    BodySizeLimitMiddleware,
    CsrfPreventionMiddleware,
    RequestLogMiddleware,
)
from gateway.http.view import GatewayView
from gateway.observability.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from gateway.pipeline.cache import REDIS_OPERATION_TIMEOUT, ResponseCache
from gateway.pipeline.source import NumbersSource
from gateway.settings import Settings
from gateway.simulator import build_demo_world, create_simulator_app
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import UpstreamClient

EMBEDDED_UPSTREAM_URL = "http://simulator.embedded/v1"
# With the embedded simulator, a caller who sends no token acts as its demo full admin.
EMBEDDED_DEFAULT_AUTHORIZATION = "Bearer demo-admin"
USER_AGENT = "numbers-gateway/0.1"

log = structlog.get_logger("gateway.app")


class LifespanState(TypedDict):
    numbers: NumbersSource


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
    settings: Settings, metrics: GatewayMetrics, clock: Clock
) -> AsyncIterator[ResponseCache]:
    secret = settings.cache_key_secret
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
        secret=secret.get_secret_value().encode() if secret is not None else None,
        redis=redis,
        metrics=metrics,
        stale_if_error=settings.stale_if_error,
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
    clock: Clock = SYSTEM_CLOCK,
) -> Starlette:
    """Build the gateway.

    ``upstream_transport`` replaces the network (tests, embedding); ``clock`` replaces time
    for the cache, the breaker and retry waits (tests).
    """
    metrics = GatewayMetrics()
    if settings.embedded_simulator:
        upstream_url = EMBEDDED_UPSTREAM_URL
        if upstream_transport is None:
            world = build_demo_world(size=settings.simulator_size, seed=settings.simulator_seed)
            upstream_transport = httpx.ASGITransport(app=create_simulator_app(world))
    else:
        upstream_url = str(settings.upstream_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        async with (
            build_upstream_http(settings, upstream_transport) as http,
            build_cache(settings, metrics, clock) as cache,
        ):
            upstream = UpstreamClient(
                http,
                base_url=upstream_url,
                deadline=settings.upstream_timeout,
                concurrency=settings.upstream_concurrency,
                metrics=metrics,
                breaker=CircuitBreaker(
                    failure_threshold=settings.breaker_failures,
                    cooldown=settings.breaker_cooldown,
                    clock=clock.monotonic,
                ),
                clock=clock,
            )
            numbers = NumbersSource(
                upstream,
                cache,
                max_page_size=settings.max_page_size,
                default_authorization=(
                    EMBEDDED_DEFAULT_AUTHORIZATION if settings.embedded_simulator else None
                ),
            )
            log.info(
                "gateway_started",
                upstream="embedded simulator" if settings.embedded_simulator else upstream_url,
                env=settings.env.value,
            )
            yield {"numbers": numbers}

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = getattr(request.state, "numbers", None) is not None
        return JSONResponse(
            {"status": "ready" if ready else "starting"}, status_code=200 if ready else 503
        )

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    view: Any = GatewayView(settings=settings, metrics=metrics)
    return Starlette(
        routes=[
            Route("/graphql", view, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=[
            Middleware(RequestLogMiddleware, metrics=metrics),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
            Middleware(CsrfPreventionMiddleware),
        ],
        lifespan=lifespan,
    )

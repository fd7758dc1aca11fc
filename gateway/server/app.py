"""The app factory: ``create_app(settings)`` wires settings, schema, upstream and routes.

Nothing is built at import time. The lifespan owns the one shared ``httpx.AsyncClient``, the
optional Redis client, the page cache and the persisted-query store (all closed on
shutdown), builds the ``NumbersSource`` over them and hands it to requests through lifespan
state; each request gets its own view of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypedDict

import httpx
import structlog
from graphql.execution import Executor
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from gateway.changes.registry import ChangeFeeds, build_change_feeds
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.data.answer_store import AnswerStore
from gateway.data.guarded_redis import REDIS_OPERATION_TIMEOUT, GuardedRedis
from gateway.data.page_cache import PageCache
from gateway.data.persisted_queries import PersistedQueries
from gateway.data.simulator_marker import SimulatorMarker
from gateway.data.source import NumbersSource
from gateway.execution.cost import CostLimits
from gateway.execution.document_limits import limit_rules
from gateway.execution.prepare import PreparedOperations
from gateway.execution.projecting_executor import projecting_execution_context
from gateway.execution.run import OperationEngine
from gateway.observability.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from gateway.observability.tracing import Tracing
from gateway.schema.build import build_schema, graphql_schema
from gateway.server.middleware import gateway_middleware
from gateway.settings import Settings, SettingsError
from gateway.simulator import (
    CONTROL_PREFIX,
    build_demo_world,
    create_embedded_simulator_app,
    create_simulator_control_app,
)
from gateway.transports.documents import DocumentPolicy
from gateway.transports.export import export_routes
from gateway.transports.graphiql import graphiql_routes, load_examples, render_graphiql_page
from gateway.transports.operation import OperationRunner
from gateway.transports.routes import (
    ASSET_BASE,
    GRAPHQL_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    READY_PATH,
)
from gateway.transports.stream_limits import OpenStreams
from gateway.transports.trusted_documents import TrustedDocuments
from gateway.transports.view import GraphQLView
from gateway.transports.websocket import GraphQLWebSocket
from gateway.upstream.factory import build_upstream

EMBEDDED_UPSTREAM_URL = "http://simulator.embedded/v1"
# With the embedded simulator, a caller who sends no token acts as its demo full admin.
EMBEDDED_DEFAULT_AUTHORIZATION = "Bearer demo-admin"

log = structlog.get_logger("gateway.server.app")


class LifespanState(TypedDict):
    runner: OperationRunner  # every transport's way to run an operation
    numbers: NumbersSource  # readiness: the upstream client is up
    changes: ChangeFeeds  # shutdown ends the subscriptions first (``cli``)
    streams: OpenStreams


def build_redis(settings: Settings, metrics: GatewayMetrics) -> GuardedRedis | None:
    if settings.redis_url is None:
        return None
    client = Redis.from_url(
        str(settings.redis_url),
        socket_timeout=REDIS_OPERATION_TIMEOUT,
        socket_connect_timeout=REDIS_OPERATION_TIMEOUT,
    )
    secret = settings.cache_key_secret  # required with a Redis URL: every replica shares it
    return GuardedRedis(
        client, metrics, secret=secret.get_secret_value().encode() if secret is not None else b""
    )


def build_cache(
    settings: Settings, metrics: GatewayMetrics, clock: Clock, redis: GuardedRedis | None
) -> PageCache:
    secret = settings.cache_key_secret
    return PageCache(
        ttl=settings.cache_ttl,
        max_entries=settings.cache_max_entries,
        max_bytes=settings.cache_max_bytes,
        owner_share=settings.cache_caller_share,
        secret=secret.get_secret_value().encode() if secret is not None else None,
        redis=redis,
        metrics=metrics,
        stale_if_error=settings.stale_if_error,
        clock=clock,
    )


def load_trusted_documents(settings: Settings) -> TrustedDocuments | None:
    """The manifest, read once at start-up; a bad one stops start-up like a bad setting."""
    if settings.trusted_documents is None:
        return None
    try:
        return TrustedDocuments.load(settings.trusted_documents)
    except ValueError as exc:
        raise SettingsError(f"GATEWAY_TRUSTED_DOCUMENTS: {exc}") from None


def build_execution(
    settings: Settings,
    metrics: GatewayMetrics,
    *,
    executor_class: type[Executor[Any]] | None = None,
) -> tuple[PreparedOperations, OperationEngine]:
    """The schema's prepared-operation cache and the engine that runs them, as ``settings``
    configure them (``executor_class``: another projecting executor, for tests)."""
    schema = graphql_schema(build_schema(max_entities=settings.max_entities))
    operations = PreparedOperations(
        schema,
        max_tokens=settings.max_tokens,
        rules=limit_rules(
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_aliases,
            max_root_fields=settings.max_root_fields,
        ),
        production=settings.production,
    )
    engine = OperationEngine(
        schema,
        # Lists of phone numbers are projected from the upstream items by a function compiled
        # once per selection, instead of completed leaf by leaf.
        executor_class=executor_class or projecting_execution_context(),
        limits=CostLimits(
            max_cost=settings.max_cost,
            max_page_size=settings.max_page_size,
            max_entities=settings.max_entities,
            max_stream_items=settings.max_stream_items,
            max_feed_items=settings.changes_max_items,
            max_filter_values=settings.max_filter_values,
        ),
        production=settings.production,
        metrics=metrics,
    )
    return operations, engine


def create_app(
    settings: Settings,
    *,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = SYSTEM_CLOCK,
    tracing: Tracing | None = None,
) -> Starlette:
    """Build the gateway.

    ``upstream_transport`` replaces the network (tests, embedding); ``clock`` replaces time
    for the cache, the breaker and retry waits (tests); ``tracing`` is off unless given
    (``serve`` gives what the ``OTEL_*`` variables ask for).
    """
    metrics = GatewayMetrics()
    tracing = tracing if tracing is not None else Tracing()
    trusted = load_trusted_documents(settings)
    simulator_controls: Starlette | None = None
    if settings.embedded_simulator:
        upstream_url = EMBEDDED_UPSTREAM_URL
        if upstream_transport is None:
            world = build_demo_world(size=settings.simulator_size, seed=settings.simulator_seed)
            simulator = create_embedded_simulator_app(
                world, churn=settings.simulator_churn, seconds_per_entry=settings.simulator_pace
            )
            upstream_transport = httpx.ASGITransport(app=simulator)
            # Its changes, faults and stats, so the change feed can be tried offline; only
            # the gateway's own simulator (never a real upstream, never production).
            simulator_controls = create_simulator_control_app(simulator)
    else:
        upstream_url = str(settings.upstream_url)
    operations, engine = build_execution(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        async with AsyncExitStack() as resources:
            upstream = build_upstream(
                settings,
                base_url=upstream_url,
                transport=upstream_transport,
                metrics=metrics,
                clock=clock,
                tracing=tracing,
            )
            await resources.enter_async_context(upstream.http)
            redis = build_redis(settings, metrics)
            if redis is not None:
                resources.push_async_callback(redis.close)
                if settings.embedded_simulator:
                    # Replicas sharing this Redis must share one simulator too: say so if not.
                    marker = SimulatorMarker(redis)
                    await marker.start()
                    resources.push_async_callback(marker.close)
            cache = build_cache(settings, metrics, clock, redis)
            metrics.watch_cache(cache.local)
            numbers = NumbersSource(
                upstream.client,
                cache,
                max_page_size=settings.max_page_size,
                max_stream_items=settings.max_stream_items,
                max_filter_values=settings.max_filter_values,
                default_authorization=(
                    EMBEDDED_DEFAULT_AUTHORIZATION if settings.embedded_simulator else None
                ),
            )
            apq = (
                PersistedQueries(
                    max_entries=settings.persisted_queries_max_entries,
                    max_bytes=settings.persisted_queries_max_bytes,
                    max_document_bytes=settings.persisted_queries_max_document_bytes,
                    owner_share=settings.cache_caller_share,
                    redis=redis,
                    clock=clock.monotonic,
                )
                if settings.persisted_queries
                else None
            )
            # Closed before the upstream client: shutdown ends every subscription first.
            changes = build_change_feeds(settings, clock=clock, metrics=metrics)
            await changes.start()
            resources.push_async_callback(changes.close)
            # Closed first (callbacks unwind in reverse): open streams and WebSockets end
            # with a final payload while the upstream client is still up.
            streams = OpenStreams(settings.max_streams_per_caller)
            resources.push_async_callback(streams.close)
            runner = OperationRunner(
                operations=operations,
                engine=engine,
                documents=DocumentPolicy(
                    apq=apq,
                    trusted=trusted,
                    trusted_only=settings.production and trusted is not None,
                ),
                numbers=numbers,
                answers=AnswerStore(
                    ttl=settings.cache_ttl,
                    secret=cache.secret,
                    max_entries=settings.cache_max_entries,
                    max_bytes=settings.answer_reuse_max_bytes,
                    owner_share=settings.cache_caller_share,
                    clock=clock,
                ),
                changes=changes,
            )
            log.debug(
                "gateway_started",
                upstream="embedded simulator" if settings.embedded_simulator else upstream_url,
                env=settings.env.value,
            )
            yield {"runner": runner, "numbers": numbers, "changes": changes, "streams": streams}

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready = getattr(request.state, "numbers", None) is not None
        return JSONResponse(
            {"status": "ready" if ready else "starting"}, status_code=200 if ready else 503
        )

    ide_page = (
        None
        if settings.production
        # Behind a proxy that strips a prefix (--root-path), the browser needs it in the URLs.
        else render_graphiql_page(
            asset_base=settings.root_path + ASSET_BASE,
            examples=load_examples(),
            graphql_path=settings.root_path + GRAPHQL_PATH,
        )
    )
    routes: list[BaseRoute] = [
        Route(
            GRAPHQL_PATH,
            GraphQLView(
                ide_page=ide_page,
                router_secret=settings.router_secret,
                batch_max=settings.batch_max,
                trace_needs_router=settings.production,
            ),
        ),
        # graphql-transport-ws: subscriptions (and queries) over a WebSocket, same path.
        WebSocketRoute(
            GRAPHQL_PATH,
            GraphQLWebSocket(
                allowed_origins=tuple(settings.allowed_origins),
                max_message_bytes=settings.max_body_bytes,
            ),
        ),
        Route(HEALTH_PATH, healthz, methods=["GET"]),
        Route(READY_PATH, readyz, methods=["GET"]),
        # The inventory exports: the whole filtered list as CSV or NDJSON, streamed.
        *export_routes(metrics=metrics, clock=clock),
    ]
    if serves_metrics_on_main_port(settings):
        routes.append(metrics_route(metrics))
    if ide_page is not None:
        routes += graphiql_routes(asset_base=ASSET_BASE)
    if simulator_controls is not None:
        routes.append(Mount(CONTROL_PREFIX, app=simulator_controls))
    app = Starlette(
        routes=routes,
        middleware=gateway_middleware(settings, metrics=metrics, tracing=tracing),
        lifespan=lifespan,
    )
    app.state.metrics = metrics  # for the metrics listener (serve, GATEWAY_METRICS_PORT)
    return app


def serves_metrics_on_main_port(settings: Settings) -> bool:
    """``/metrics`` is on the serving port only in development with no metrics port: in
    production the numbers are not for every caller (Apollo Router keeps them apart too)."""
    return settings.metrics_port is None and not settings.production


def create_metrics_app(gateway: Starlette) -> Starlette:
    """The metrics listener's app: ``GET /metrics`` from ``gateway``'s registry, nothing else."""
    return Starlette(routes=[metrics_route(gateway.state.metrics)])


def metrics_route(metrics: GatewayMetrics) -> Route:
    """``GET /metrics``: the registry's exposition (on the main port or its own listener)."""

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Route(METRICS_PATH, metrics_endpoint, methods=["GET"])

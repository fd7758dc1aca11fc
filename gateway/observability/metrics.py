"""Prometheus metrics, one registry per app (no process globals, so tests and apps don't mix).

Labels never carry tokens, org ids, filters or anything else a caller sent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "gateway_http_requests_total",
            "HTTP requests served, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            registry=self.registry,
        )
        self.graphql_errors = Counter(
            "gateway_graphql_errors_total",
            "GraphQL errors returned, by contract code.",
            ["code"],
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests_total",
            "Requests sent to the upstream, by outcome (HTTP status, or 'error').",
            ["outcome"],
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "Time of one upstream request.",
            registry=self.registry,
        )
        self.upstream_in_flight = Gauge(
            "gateway_upstream_in_flight",
            "Upstream requests under way now.",
            registry=self.registry,
        )
        self.upstream_waiting = Gauge(
            "gateway_upstream_waiting",
            "Upstream requests waiting for one of the gateway's upstream slots.",
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "gateway_cache_lookups_total",
            "Response cache lookups, by tier and result.",
            ["tier", "result"],
            registry=self.registry,
        )
        self.single_flight_coalesced = Counter(
            "gateway_single_flight_coalesced_total",
            "Upstream asks that joined an identical call already in flight instead of "
            "making their own.",
            registry=self.registry,
        )
        self.cache_failures = Counter(
            "gateway_cache_backend_failures_total",
            "Shared cache (Redis) operations that failed; the gateway served without it.",
            registry=self.registry,
        )

    def observe_upstream(self, outcome: str, seconds: float) -> None:
        self.upstream_requests.labels(outcome=outcome).inc()
        self.upstream_duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

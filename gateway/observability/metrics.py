"""Prometheus metrics, one registry per app (no process globals, so tests and apps don't mix).

Labels never carry tokens, org ids, filters or variables. Two carry what a caller sent, both
bounded (``BoundedLabel``): operation names (named operations only) and client names
(``apollographql-client-name``). Each keeps the first ``LABEL_VALUES_MAX`` distinct values it
sees; later ones share one label, so a client inventing names cannot grow the series. An
operation name takes a place only once an operation by that name executed for a caller whose
credential the upstream accepted during it (``RequestFacts.caller_accepted``), or ran one of
the operator's trusted documents: anyone can send ``query JunkN { __typename }``, tokenless or
with a made-up token, and such operations must not use up the places real operations need.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "BoundedLabel", "GatewayMetrics"]

LABEL_VALUES_MAX = 100  # distinct operation names (and client names) with their own series
ANONYMOUS = "(anonymous)"  # an operation without a name
NO_CLIENT = "(none)"  # a request without apollographql-client-name
OTHER = "(other)"  # past the bound; parentheses: no GraphQL name can look like these
BREAKER_STATES = ("closed", "open", "half_open")
FEED_ROLES = ("polling", "relaying", "local")  # a change feed's role on this replica
_GRAPHQL_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,127}")


class BoundedLabel:
    """Label values as first seen, at most ``limit`` distinct ones; the rest are ``OTHER``."""

    def __init__(self, limit: int = LABEL_VALUES_MAX) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str, *, admit: bool = True) -> str:
        """``value`` if it has (or, with ``admit``, may take) a place of its own."""
        if value in self._seen:
            return value
        if admit and len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return OTHER


class BreakerView(Protocol):
    @property
    def state(self) -> str: ...


class CacheTierView(Protocol):
    def __len__(self) -> int: ...

    @property
    def size_bytes(self) -> int: ...


class ChangeFeedsView(Protocol):
    @property
    def open_subscriptions(self) -> int: ...

    def feeds_by_role(self) -> dict[str, int]: ...


class _StateCollector(Collector):
    """Gauges read when scraped: the breaker's state, the page cache's local size and the
    change feeds' subscriptions and roles."""

    def __init__(self) -> None:
        self.breaker: BreakerView | None = None
        self.cache: CacheTierView | None = None
        self.changes: ChangeFeedsView | None = None

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "gateway_upstream_breaker_state",
            "The upstream circuit breaker's state: 1 for the current one.",
            labels=["state"],
        )
        current = str(self.breaker.state) if self.breaker is not None else "closed"
        for name in BREAKER_STATES:
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
        cache = self.cache
        yield GaugeMetricFamily(
            "gateway_cache_entries",
            "Entries in the page cache's local tier (expired ones linger until evicted).",
            value=len(cache) if cache is not None else 0,
        )
        yield GaugeMetricFamily(
            "gateway_cache_bytes",
            "Approximate bytes of the page cache's local entries (their encoded size).",
            value=cache.size_bytes if cache is not None else 0,
        )
        changes = self.changes
        yield GaugeMetricFamily(
            "gateway_subscriptions_open",
            "Subscriptions (phoneNumberChanges) open on this replica.",
            value=changes.open_subscriptions if changes is not None else 0,
        )
        feeds = GaugeMetricFamily(
            "gateway_change_feeds",
            "Change feeds on this replica by role: polling (for every replica, or alone "
            "without Redis), relaying (another replica polls), local (Redis unreachable).",
            labels=["role"],
        )
        roles = changes.feeds_by_role() if changes is not None else {}
        for role in FEED_ROLES:
            feeds.add_metric([role], float(roles.get(role, 0)))
        yield feeds


class GatewayMetrics:
    def __init__(self, *, label_values_max: int = LABEL_VALUES_MAX) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The process collectors, on this registry (prometheus_client's default one is unused).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._state = _StateCollector()
        self.registry.register(self._state)
        self.operation_label = BoundedLabel(label_values_max)
        self.client_label = BoundedLabel(label_values_max)
        # The operation series by label values, looked up once (a label lookup costs more
        # than the count); bounded as the labels are.
        self._operation_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._client_series: dict[tuple[str, str], Counter] = {}
        self.http_in_flight = Gauge(
            "gateway_http_requests_in_flight",
            "HTTP requests being served now (probes and /metrics not counted).",
            registry=self.registry,
        )
        self.operations = Counter(
            "gateway_graphql_operations_total",
            "GraphQL requests by operation name and outcome (success, error, rejected).",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.operation_duration = Histogram(
            "gateway_graphql_operation_duration_seconds",
            "Time to answer a GraphQL request, by operation name and outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.client_operations = Counter(
            "gateway_graphql_client_operations_total",
            "GraphQL requests by client name (apollographql-client-name) and outcome.",
            ["client", "outcome"],
            registry=self.registry,
        )
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
            "Page cache lookups (upstream pages), by tier and result.",
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
            "Redis operations (page cache, persisted queries) that failed; the gateway served "
            "without them.",
            registry=self.registry,
        )

        self.cache_invalid_entries = Counter(
            "gateway_cache_backend_invalid_entries_total",
            "Redis entries read back that were not this gateway's (wrong version, checksum or "
            "key); each was a miss.",
            registry=self.registry,
        )
        self.responses_reused = Counter(
            "gateway_responses_reused_total",
            "Repeated operations answered by answer reuse: stored response bytes, no parse, "
            "validation or execution.",
            registry=self.registry,
        )
        self.change_feed_polls = Counter(
            "gateway_change_feed_polls_total",
            "Change feed polls by outcome: ok, rate_limited, upstream_error (backed off), "
            "inconsistent (entries moved mid-walk: thrown away), refused (the caller's error "
            "ended the feed), failed (a bug ended it).",
            ["outcome"],
            registry=self.registry,
        )
        self.change_feed_events = Counter(
            "gateway_change_feed_events_total",
            "Change feed events sent to subscribers, by kind (SYNCED, ADDED, ...).",
            ["kind"],
            registry=self.registry,
        )
        self.exports = Counter(
            "gateway_exports_total",
            "Inventory exports that started (their first page answered), by format (csv, "
            "ndjson) and how they ended: complete, failed (an error ended the walk: the body "
            "says so or is cut off), disconnected, shutdown.",
            ["format", "ended"],
            registry=self.registry,
        )
        self.operation_cost = Histogram(
            "gateway_operation_cost",
            "Estimated cost of executed operations (upstream calls x 50 + items they may return).",
            buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000),
            registry=self.registry,
        )

    def watch_breaker(self, breaker: BreakerView) -> None:
        """Report ``breaker``'s state in ``gateway_upstream_breaker_state``."""
        self._state.breaker = breaker

    def watch_changes(self, changes: ChangeFeedsView) -> None:
        """Report ``gateway_subscriptions_open`` and ``gateway_change_feeds``."""
        self._state.changes = changes

    def watch_cache(self, local: CacheTierView | None) -> None:
        """Report the page cache's local tier size in ``gateway_cache_entries`` / ``_bytes``."""
        self._state.cache = local

    def observe_operation(
        self,
        *,
        operation_name: str | None,
        executed: bool,
        outcome: str,
        client_name: str | None,
        seconds: float,
        may_take_label: bool = False,
        named_by_gateway: bool = False,
    ) -> None:
        """One GraphQL request. A name gets a series of its own only once an operation by
        that name executed with ``may_take_label`` (``RequestFacts.may_take_label``: the
        upstream accepted the caller's credential, or the document is a trusted one); a
        document that failed validation or a caller the upstream never accepted cannot claim
        one, and a name that has one keeps it for all. ``named_by_gateway``: the name is the
        gateway's own (an export's ``export:csv``), one of a fixed few: always its own series,
        taking none of the places callers' names share."""
        if named_by_gateway and operation_name is not None:
            operation = operation_name
        elif operation_name is None:
            operation = ANONYMOUS
        elif _GRAPHQL_NAME.fullmatch(operation_name):
            operation = self.operation_label(operation_name, admit=executed and may_take_label)
        else:
            operation = OTHER
        client = self.client_label(client_name) if client_name is not None else NO_CLIENT
        series = self._operation_series.get((operation, outcome))
        if series is None:
            series = self._operation_series[operation, outcome] = (
                self.operations.labels(operation=operation, outcome=outcome),
                self.operation_duration.labels(operation=operation, outcome=outcome),
            )
        series[0].inc()
        series[1].observe(seconds)
        per_client = self._client_series.get((client, outcome))
        if per_client is None:
            per_client = self._client_series[client, outcome] = self.client_operations.labels(
                client=client, outcome=outcome
            )
        per_client.inc()

    def observe_upstream(self, outcome: str, seconds: float) -> None:
        self.upstream_requests.labels(outcome=outcome).inc()
        self.upstream_duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

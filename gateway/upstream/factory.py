"""Building the upstream: the one shared ``httpx.AsyncClient`` and the ``UpstreamClient``
over it, layered so that every concern sees what it must.

From the caller's side down::

    UpstreamClient              Link walk, URLs, error mapping                 client.py
    httpx.AsyncClient           timeouts, headers, no redirects, no cookies
    ResilientTransport          breaker, deadline, fair slots, retries, bounds  transport.py
    UpstreamCallsObserved       request facts: each attempt, for the log line   observability
    AsyncOpenTelemetryTransport a CLIENT span per attempt (tracing on)          observability
    the wire                    the network (aiohttp), the embedded simulator,     wire.py
                                a test's transport

The observers sit under the retries, so each attempt is a call of its own in the log line and
the trace; the breaker sits above them, so a call it refuses is never made.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar
from typing import Any

import httpx

from gateway.clock import Clock
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracing, instrument_upstream
from gateway.settings import Settings
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import UpstreamClient
from gateway.upstream.transport import ResilientTransport
from gateway.upstream.wire import AiohttpWire

USER_AGENT = "numbers-gateway/0.1"


class NoCookieJar(CookieJar):
    """A cookie jar that never keeps a cookie, for the one ``httpx.AsyncClient`` all callers
    share: a ``Set-Cookie`` in caller A's answer must never travel with caller B's request.

    Why a jar and not a flag: httpx 0.28 has no switch to turn cookies off, and the client
    copies any ``httpx.Cookies`` it is given into a plain jar, but it takes a ``CookieJar``
    as it is (``Cookies(jar).jar is jar``) and does all its cookie work through the jar's two
    standard entry points. Both refuse here, so the jar stays empty whatever httpx calls:
    nothing is stored (``extract_cookies`` returns at once, without parsing ``Set-Cookie``
    headers, which also saves that work on every answer) and so nothing is ever sent (an
    empty jar adds no ``Cookie`` header, and httpx does not even merge it into a request).
    """

    def extract_cookies(self, response: Any, request: urllib.request.Request) -> None:
        return None

    def set_cookie(self, cookie: Cookie) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Upstream:
    """The built upstream: ``http`` is the shared client (the lifespan closes it, and with it
    every transport under it), ``client`` what the data layer calls, ``breaker`` its state
    for the metrics."""

    http: httpx.AsyncClient
    client: UpstreamClient
    breaker: CircuitBreaker


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for requests to ``url`` (``HTTPS_PROXY``,
    ``HTTP_PROXY``, ``ALL_PROXY``), unless ``NO_PROXY`` exempts its host: what httpx reads
    by itself for a client with no transport of its own, which the shared client is not."""
    proxies = urllib.request.getproxies()
    if urllib.request.proxy_bypass(url.host):
        return None
    return proxies.get(url.scheme) or proxies.get("all")


def network_transport(settings: Settings, base_url: str) -> httpx.AsyncBaseTransport:
    """The transport that talks to a real upstream: aiohttp's HTTP client behind httpx's
    transport interface (``wire``: why, and what it keeps of httpx's own), its connection
    pool sized to the slots."""
    return AiohttpWire(
        limits=httpx.Limits(max_connections=settings.upstream_concurrency * 2),
        proxy=environment_proxy(httpx.URL(base_url)),
    )


def build_upstream(
    settings: Settings,
    *,
    base_url: str,
    transport: httpx.AsyncBaseTransport | None,
    metrics: GatewayMetrics | None,
    clock: Clock,
    tracing: Tracing,
) -> Upstream:
    """The upstream the app uses: ``transport`` is the wire (None: the network);
    ``settings`` give the deadline, slots, body bound and breaker; ``clock`` times the
    breaker's cool-down and the retry waits; ``tracing`` adds spans when on."""
    wire = transport if transport is not None else network_transport(settings, base_url)
    breaker = CircuitBreaker(
        failure_threshold=settings.breaker_failures,
        cooldown=settings.breaker_cooldown,
        clock=clock.monotonic,
    )
    resilient = ResilientTransport(
        instrument_upstream(wire, tracing),
        deadline=settings.upstream_timeout,
        concurrency=settings.upstream_concurrency,
        per_caller=settings.upstream_concurrency_per_caller,
        max_body_bytes=settings.max_upstream_bytes,
        breaker=breaker,
        metrics=metrics,
        clock=clock,
    )
    timeout = settings.upstream_timeout
    http = httpx.AsyncClient(
        transport=resilient,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        follow_redirects=False,  # a redirect could carry the caller's token elsewhere
        # Shared by every caller: a cookie one caller's answer sets must never reach another.
        cookies=NoCookieJar(),
    )
    if metrics is not None:
        metrics.watch_breaker(breaker)
    return Upstream(http, UpstreamClient(http, base_url=base_url, clock=clock), breaker)

"""OpenTelemetry traces: off, and costing nothing, unless the standard ``OTEL_*`` variables ask.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or ``console``) or an OTLP endpoint
is set (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``);
``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` keep it off. The SDK reads the rest
itself: ``OTEL_SERVICE_NAME`` (default ``numbers-gateway``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*`` (HTTP/protobuf).
Off, nothing is instrumented: no span objects, no ``traceparent`` upstream, one ``None`` check
per hook.

One request's trace::

    POST /graphql                      SERVER  (RequestLogMiddleware); parent: the caller's
    │                                          traceparent when valid, else a new trace
    └─ query NumbersPage               INTERNAL (api.operation_observer)
       ├─ graphql.parse, graphql.validate
       ├─ cache.lookup                 (the page cache: hit or miss, tier)
       ├─ cache.single_flight          the leader of a fetch; its upstream calls are children:
       │  └─ GET                       CLIENT  (httpx instrumentation): status, webex.tracking_id
       └─ cache.single_flight          a waiter on another request's fetch, linked to the
                                       leader's span

Only the caller's ``traceparent`` is honoured, as the server span's parent: so a frontend's or
a router's trace continues through the gateway. Its ``tracestate`` and ``baggage`` are not read,
so nothing the caller sent travels upstream: the upstream's ``traceparent`` is the gateway's
own client span in that trace. Spans carry no token, no variable values and no document text;
an upstream span's URL is kept without its query string (the query's parameter names are kept).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.observability.request_facts import (
    UpstreamCallsObserved,
    current_facts,
    tracking_id_of,
)

if TYPE_CHECKING:
    from opentelemetry.instrumentation.httpx import RequestInfo, ResponseInfo

__all__ = [
    "SpanContext",
    "Tracing",
    "TracingConfig",
    "TracingConfigError",
    "annotate",
    "instrument_upstream",
    "server_span",
    "span_context",
    "trace_id_of",
    "traced",
]

# Attribute values a span takes (the subset of OpenTelemetry's that the gateway sets).
Attributes = Mapping[str, str | bool | int | float | Sequence[str]]
TRACER_NAME = "numbers-gateway"
DEFAULT_SERVICE_NAME = "numbers-gateway"
EXPORTERS = ("otlp", "console")
_NO_SPAN: AbstractContextManager[None] = nullcontext()
_CALLER_CONTEXT = TraceContextTextMapPropagator()


class TracingConfigError(Exception):
    """An ``OTEL_*`` variable asks for something the gateway cannot do; one line names it."""


OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def check_otlp_endpoint(variable: str, value: str | None) -> None:
    """An OTLP/HTTP endpoint is an absolute http(s) URL with a host (and a valid port):
    anything else would fail at the first export, as non-JSON lines on stderr."""
    if value is None or not value.strip():
        return
    text = value.strip()
    try:
        url = urlsplit(text)
        _ = url.port  # raises for a port that is not one
        valid = url.scheme in ("http", "https") and bool(url.hostname) and " " not in text
    except ValueError:
        valid = False
    if not valid:
        raise TracingConfigError(
            f"{variable}: {value!r} is not an http(s) URL with a host, e.g. "
            "http://otel-collector:4318"
        )


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What the environment asks for: the exporters to use (none: tracing is off)."""

    exporters: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> TracingConfig:
        env = os.environ if environ is None else environ
        # A malformed endpoint is refused even while tracing is off: it would be on later.
        for variable in OTLP_ENDPOINT_VARIABLES:
            check_otlp_endpoint(variable, env.get(variable))
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        named = [
            part.strip().lower()
            for part in env.get("OTEL_TRACES_EXPORTER", "").split(",")
            if part.strip()
        ]
        unknown = [name for name in named if name not in (*EXPORTERS, "none")]
        if unknown:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER: {unknown[0]!r} is not supported here; use "
                "otlp (HTTP/protobuf), console or none"
            )
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        if "none" in named:
            return cls()
        exporters = tuple(dict.fromkeys(named)) or (("otlp",) if endpoint else ())
        if "otlp" in exporters:
            for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
                protocol = env.get(variable, "").strip()
                if protocol and protocol != "http/protobuf":
                    raise TracingConfigError(
                        f"{variable}: {protocol!r} is not supported; the gateway exports OTLP "
                        "over HTTP/protobuf (port 4318)"
                    )
        return cls(exporters)


class Tracing:
    """The app's tracing: ``Tracing()`` is off; ``Tracing(provider)`` traces with ``provider``
    (tests hand in an SDK provider with an in-memory exporter; ``start`` builds the real one)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer: Tracer | None = (
            provider.get_tracer(TRACER_NAME) if provider is not None else None
        )

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def start(cls, config: TracingConfig) -> Tracing:
        """The SDK set up as ``config`` says (off: no SDK is even imported)."""
        if not config.enabled:
            return cls()
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        for name in config.exporters:
            exporter: SpanExporter
            if name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                exporter = OTLPSpanExporter()
            else:
                exporter = ConsoleSpanExporter()
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def shutdown(self) -> None:
        """Flush and stop the exporters (the SDK also does it at exit)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if callable(shutdown):
            shutdown()


def instrument_upstream(
    transport: httpx.AsyncBaseTransport, tracing: Tracing
) -> httpx.AsyncBaseTransport:
    """The transport that talks to the upstream, observed: each request it sends is recorded
    in the current request's facts (always), and, with tracing on, gets a CLIENT span
    (opentelemetry-instrumentation-httpx's transport), which also sends ``traceparent``.
    Wrapped under the retries, so each attempt is a call of its own."""
    if tracing.provider is not None:
        from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

        transport = AsyncOpenTelemetryTransport(
            transport,
            tracer_provider=tracing.provider,
            request_hook=_on_upstream_span_start,
            response_hook=_on_upstream_span_end,
        )
    return UpstreamCallsObserved(transport)


async def _on_upstream_span_start(span: Span, request: RequestInfo) -> None:
    if not span.is_recording() or not isinstance(request.url, httpx.URL):
        return
    # Query values are the caller's filters (names, numbers): keep the URL without them.
    attributes: Mapping[str, Any] = getattr(span, "attributes", None) or {}
    bare = str(request.url.copy_with(query=None))
    for key in ("url.full", "http.url"):
        if key in attributes:
            span.set_attribute(key, bare)
    keys = sorted({key for key, _ in request.url.params.multi_items()})
    span.set_attribute("gateway.upstream.query_keys", keys)


async def _on_upstream_span_end(span: Span, request: RequestInfo, response: ResponseInfo) -> None:
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", response.status_code)
    if response.headers is not None:
        tracking_id = tracking_id_of(httpx.Headers(response.headers))
        if tracking_id is not None:
            span.set_attribute("webex.tracking_id", tracking_id)


@contextmanager
def server_span(
    tracer: Tracer, *, name: str, traceparent: bytes | None, attributes: Mapping[str, Any]
) -> Iterator[Span]:
    """The request's SERVER span, current for the block (so every span the request causes is
    in its trace). Its parent is the caller's ``traceparent`` when that is valid."""
    carrier = {"traceparent": traceparent.decode("latin-1")} if traceparent else {}
    parent = _CALLER_CONTEXT.extract(carrier)
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        otel_context.detach(token)
        span.end()


def traced(
    name: str, attributes: Attributes | None = None, *, link: SpanContext | None = None
) -> AbstractContextManager[Span | None]:
    """A span of the current request's trace, current for the block, or nothing (``None``)
    when tracing is off or no request is being served. ``link``: a span this one waits on."""
    facts = current_facts()
    if facts is None or facts.tracer is None:
        return _NO_SPAN
    return facts.tracer.start_as_current_span(
        name, links=[Link(link)] if link is not None else None, attributes=attributes
    )


def annotate(span: Span | None, attributes: Attributes) -> None:
    """Attributes for a span from ``traced`` (nothing when tracing is off)."""
    if span is not None:
        span.set_attributes(attributes)


def span_context(span: Span | None) -> SpanContext | None:
    """What another span needs to link to ``span`` (None when tracing is off)."""
    return span.get_span_context() if span is not None else None


def trace_id_of(span: Span) -> str | None:
    """The trace id to log, when the trace is sampled (so a backend has it to find)."""
    context = span.get_span_context()
    sampled = context.is_valid and context.trace_flags.sampled
    return format(context.trace_id, "032x") if sampled else None

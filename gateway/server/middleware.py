"""The gateway's middleware stack, outermost first, each layer doing one job:

1. ``RequestLogMiddleware``: one log line per request, the request id, the HTTP and GraphQL
   metrics and the server span (outermost, so it sees every answer, refusals included);
2. ``InFlightLimit``: past ``GATEWAY_MAX_IN_FLIGHT`` requests, 503 with ``Retry-After``;
3. ``CompressionMiddleware``: br or gzip as ``Accept-Encoding`` allows, ``Vary`` always;
4. Starlette's ``CORSMiddleware``: ``GATEWAY_CORS_ORIGINS`` and ``GATEWAY_CORS_ALLOW_HEADERS``;
5. ``BodySizeLimitMiddleware``: 413 past ``GATEWAY_MAX_BODY_BYTES``, 408 past
   ``GATEWAY_BODY_TIMEOUT``;
6. ``CsrfPreventionMiddleware``: Apollo Router's CSRF rule (``GATEWAY_CSRF_PREVENTION``).

Each is the library's or our own layer exactly as written: nothing here re-creates what a
layer would add for a request it could have skipped.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import REQUEST_ID_HEADER
from gateway.observability.tracing import Tracing
from gateway.server.compression import CompressionMiddleware
from gateway.server.connections import InFlightLimit
from gateway.server.request_guards import BodySizeLimitMiddleware, CsrfPreventionMiddleware
from gateway.server.request_log import RequestLogMiddleware
from gateway.settings import Settings
from gateway.transports.routes import GRAPHQL_PATH

CORS_MAX_AGE = 600  # seconds a browser may reuse a preflight's answer


def gateway_middleware(
    settings: Settings, *, metrics: GatewayMetrics, tracing: Tracing
) -> list[Middleware]:
    """The stack for ``settings``, outermost first (as Starlette takes it)."""
    stack = [
        Middleware(RequestLogMiddleware, metrics=metrics, tracing=tracing),
        Middleware(InFlightLimit, max_in_flight=settings.max_in_flight),
        Middleware(CompressionMiddleware, minimum_size=settings.compression_min_bytes),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST"],
            # GATEWAY_CORS_ALLOW_HEADERS: Apollo Client's, OpenTelemetry web's and ours.
            allow_headers=list(settings.cors_allow_headers),
            # Content-Disposition: a frontend's download button names the file as it says.
            expose_headers=[REQUEST_ID_HEADER, "Content-Disposition"],
            allow_credentials=False,  # bearer tokens, never cookies: so '*' is safe
            max_age=CORS_MAX_AGE,
        ),
        Middleware(
            BodySizeLimitMiddleware,
            max_bytes=settings.max_body_bytes,
            read_timeout=settings.body_timeout,
        ),
    ]
    if settings.csrf_prevention:
        stack.append(
            Middleware(
                CsrfPreventionMiddleware,
                path=GRAPHQL_PATH,
                required_headers=settings.csrf_required_headers,
            )
        )
    return stack

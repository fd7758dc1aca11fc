"""What every resolver of one GraphQL request can reach: the caller's numbers and settings."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.data.source import CallerNumbers
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings


@dataclass(slots=True)
class RequestContext:
    request: HTTPConnection
    settings: Settings
    metrics: GatewayMetrics
    numbers: CallerNumbers
    report_cache: bool = False  # the caller asked for extensions.cache (a header)
    include_federated_trace: bool = False  # a router asked for extensions.ftv1 (a header)
    # The response sends each payload as it comes (multipart, SSE, a WebSocket). Only then is
    # an @stream list walked while the client takes it, priced by its upstream pages and
    # allowed up to GATEWAY_MAX_STREAM_ITEMS; merged into one JSON body it is held whole, so
    # it is priced and bounded as unstreamed (api.cost, numbers.types).
    incremental_delivery: bool = False

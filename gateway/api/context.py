"""What every resolver of one GraphQL request can reach: the caller's numbers and settings."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.source import CallerNumbers
from gateway.settings import Settings


@dataclass(slots=True)
class RequestContext:
    request: HTTPConnection
    settings: Settings
    metrics: GatewayMetrics
    numbers: CallerNumbers
    report_cache: bool = False  # the caller asked for extensions.cache (a header)
    include_federated_trace: bool = False  # a router asked for extensions.ftv1 (a header)

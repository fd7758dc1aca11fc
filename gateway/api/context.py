"""What every resolver of one GraphQL request can reach: the caller's numbers and settings."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.source import CallerNumbers
from gateway.settings import Settings


@dataclass(slots=True)
class RequestContext:
    request: HTTPConnection
    response: Response | WebSocket
    settings: Settings
    metrics: GatewayMetrics
    numbers: CallerNumbers

"""What every resolver of one GraphQL request can reach: its loader and the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from gateway.cache import CacheEvent
from gateway.loaders import NumbersLoader
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings


@dataclass(slots=True)
class RequestContext:
    request: HTTPConnection
    response: Response | WebSocket
    settings: Settings
    metrics: GatewayMetrics
    numbers: NumbersLoader
    cache_events: list[CacheEvent] = field(default_factory=list)

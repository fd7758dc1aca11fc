"""What every resolver of one GraphQL operation can reach: the caller's numbers, the change
feeds, and what the executor noted about the connection fields it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.changes.registry import ChangeFeeds
from gateway.data.source import CallerNumbers
from gateway.schema.connection_asks import SelectedConnections


@dataclass(slots=True)
class RequestContext:
    numbers: CallerNumbers
    changes: ChangeFeeds | None = None  # the app's feeds (subscriptions); None: none served
    client_name: str | None = None  # the caller's client name, as the request log keeps it
    # The response sends each payload as it comes (multipart, SSE, a WebSocket). Only then is
    # an @stream list walked while the client takes it, priced by its upstream pages and
    # allowed up to GATEWAY_MAX_STREAM_ITEMS; merged into one JSON body it is held whole, so
    # it is priced and bounded as unstreamed (execution.cost, schema.types).
    incremental_delivery: bool = False
    connections: SelectedConnections = field(default_factory=SelectedConnections)
    # The answer is encoded with orjson (every transport): a projected list may then be put
    # in the result as its encoded JSON (an ``orjson.Fragment``) rather than as dicts.
    encoded_lists: bool = False

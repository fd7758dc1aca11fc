"""The gateway's paths, in one place: the GraphQL endpoint, its GraphiQL assets, the exports
and the probes.

Paths are as the app routes them, without a ``--root-path`` prefix (see ``asgi.app_path``).
"""

from __future__ import annotations

from typing import Final

GRAPHQL_PATH: Final = "/graphql"
# GraphiQL's vendored scripts and stylesheets, under the GraphQL path (one origin, one prefix).
ASSET_BASE: Final = GRAPHQL_PATH + "/assets/"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"
# The inventory exports (``transports.export``), one path per format.
EXPORT_CSV_PATH: Final = "/export/phone-numbers.csv"
EXPORT_NDJSON_PATH: Final = "/export/phone-numbers.ndjson"
# Each export is logged and counted as an operation of the gateway's own name (one per path).
EXPORT_OPERATIONS: Final = {EXPORT_CSV_PATH: "export:csv", EXPORT_NDJSON_PATH: "export:ndjson"}
EXPORT_ROUTES: Final = frozenset(EXPORT_OPERATIONS)
# Routes whose requests run an operation: logged and counted with its name and outcome.
OPERATION_ROUTES: Final = frozenset({GRAPHQL_PATH, *EXPORT_ROUTES})

# Probes and the scrape: logged at debug, never traced, never turned away at capacity.
PROBE_ROUTES: Final = frozenset({HEALTH_PATH, READY_PATH, METRICS_PATH})
# The routes named in logs and metric labels; any other path is ``other`` (bounded labels).
KNOWN_ROUTES: Final = frozenset({*OPERATION_ROUTES, *PROBE_ROUTES})

"""The gateway's paths, in one place: the GraphQL endpoint, its GraphiQL assets and the probes.

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

# Probes and the scrape: logged at debug, never traced, never turned away at capacity.
PROBE_ROUTES: Final = frozenset({HEALTH_PATH, READY_PATH, METRICS_PATH})
# The routes named in logs and metric labels; any other path is ``other`` (bounded labels).
KNOWN_ROUTES: Final = frozenset({GRAPHQL_PATH, *PROBE_ROUTES})

"""The executable schema: ``build_schema`` puts the root types and the entity types together
into the federation 2 subgraph schema; ``graphql_schema`` is the graphql-core schema the
execution layer runs; ``export_sdl`` prints the SDL committed in ``schema/numbers.graphql``.

Nothing else is configured here: limits, caches, the error contract and the projection are
stages of the execution layer (``gateway.execution``), not strawberry extensions.
"""

from __future__ import annotations

import strawberry
from graphql import GraphQLSchema
from strawberry.schema.config import StrawberryConfig

from gateway.schema.entities import DEFAULT_MAX_ENTITIES, ENTITY_TYPES, GatewaySchema
from gateway.schema.resolvers import Query
from gateway.schema.subscriptions import Subscription


def build_schema(*, max_entities: int = DEFAULT_MAX_ENTITIES) -> strawberry.Schema:
    """The subgraph schema; ``_entities`` takes at most ``max_entities`` representations."""
    return GatewaySchema(
        query=Query,
        subscription=Subscription,
        types=list(ENTITY_TYPES),
        # Declares @defer and @stream (graphql-core 3.3's incremental execution).
        config=StrawberryConfig(enable_experimental_incremental_execution=True),
        max_entities=max_entities,
    )


def graphql_schema(schema: strawberry.Schema) -> GraphQLSchema:
    """The graphql-core schema strawberry built from our types, which the execution layer
    validates and executes against.

    A private attribute, read here only: strawberry keeps the ``GraphQLSchema`` it builds as
    ``Schema._schema`` and has no public accessor for it (0.341; its own printer and
    executors read the same attribute). ``tests/test_schema.py`` (the graphql-core schema
    test) fails first if an upgrade renames or changes it."""
    built = schema._schema
    if not isinstance(built, GraphQLSchema):  # pragma: no cover - an upgrade changed it
        raise TypeError("strawberry.Schema._schema is no longer a graphql-core GraphQLSchema")
    return built


def export_sdl() -> str:
    """The subgraph SDL (what ``_service { sdl }`` answers and ``rover subgraph publish``
    takes), as committed in ``schema/numbers.graphql``."""
    return build_schema().as_str() + "\n"

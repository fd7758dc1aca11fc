"""The executable schema: ``build_schema`` puts the root type, the entity types and the
extensions (limits, guards, caches, the error contract) together; ``export_sdl`` prints it.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Final

import strawberry
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxTokensLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from gateway.execution.cache_report import CacheReport
from gateway.execution.contract_errors import ContractErrors
from gateway.execution.cost import cost_limiter
from gateway.execution.document_limits import limit_rules, parsed_documents, stream_arguments
from gateway.execution.federated_trace import FederatedTrace
from gateway.execution.operation_observer import OperationObserver
from gateway.execution.operation_plans import CostLimits, OperationPlans
from gateway.execution.projecting_executor import projecting_execution_context
from gateway.schema.entities import DEFAULT_MAX_ENTITIES, ENTITY_TYPES, GatewaySchema
from gateway.schema.resolvers import Query
from gateway.schema.subscriptions import Subscription
from gateway.settings import Settings

# Validated documents strawberry's ValidationCache keeps, bounded by count.
VALIDATION_CACHE_DOCUMENTS: Final = 128


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema with the limits and production switches of ``settings`` (none if None)."""
    # OperationObserver first: hooks unwind in reverse, so it sees ContractErrors' codes;
    # FederatedTrace before ContractErrors, so its trace carries the contract errors.
    extensions: list[Any] = [OperationObserver, FederatedTrace, ContractErrors, CacheReport]
    production = settings is not None and settings.production
    plans = None
    if settings is not None:
        plans = OperationPlans(
            CostLimits(
                max_cost=settings.max_cost,
                max_page_size=settings.max_page_size,
                max_entities=settings.max_entities,
                max_stream_items=settings.max_stream_items,
                report=not production,
            )
        )
        # Factories, not instances: strawberry builds fresh extensions per operation.
        extensions += [
            partial(MaxTokensLimiter, max_token_count=settings.max_tokens),
            # Built once here, so validation results can be cached (ValidationCache keys on
            # the rules); their errors are BAD_USER_INPUT, not GRAPHQL_VALIDATION_FAILED.
            partial(
                AddValidationRules,
                limit_rules(
                    max_depth=settings.max_query_depth,
                    max_aliases=settings.max_aliases,
                    max_root_fields=settings.max_root_fields,
                ),
            ),
            # Documents seen a moment ago skip parsing and validation (bounded LRUs).
            parsed_documents(),
            partial(ValidationCache, maxsize=VALIDATION_CACHE_DOCUMENTS),
            # After validation is known (from the cache or not), so neither overwrites it.
            cost_limiter(
                max_cost=settings.max_cost,
                max_page_size=settings.max_page_size,
                max_entities=settings.max_entities,
                max_stream_items=settings.max_stream_items,
                report=not production,
            ),
            stream_arguments(),  # a negative @stream initialCount: BAD_USER_INPUT
            # Last: its on_execute is entered only once every check above has passed.
            plans.recorder(),
        ]
    if production:
        extensions.append(DisableIntrospection)
    return GatewaySchema(
        query=Query,
        subscription=Subscription,
        types=list(ENTITY_TYPES),
        extensions=extensions,
        # @defer and @stream (graphql-core 3.3's incremental executor, which the projecting
        # executor extends): lists under @stream are walked while the client takes them.
        config=StrawberryConfig(
            disable_field_suggestions=production,
            enable_experimental_incremental_execution=True,
        ),
        max_entities=settings.max_entities if settings is not None else DEFAULT_MAX_ENTITIES,
        # A document that passed every check runs again without the extensions' machinery.
        plans=plans,
        # Lists of phone numbers are projected from the upstream items by a function compiled
        # once per document, instead of completed leaf by leaf (api/projecting_executor.py).
        execution_context_class=projecting_execution_context(),
    )


def export_sdl() -> str:
    """The subgraph SDL (what ``_service { sdl }`` answers and ``rover subgraph publish``
    takes), as committed in ``schema/numbers.graphql``."""
    return build_schema().as_str() + "\n"

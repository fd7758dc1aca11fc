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
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig

from gateway.api.cache_report import CacheReport
from gateway.api.contract_errors import ContractErrors
from gateway.api.cost import cost_limiter
from gateway.api.document_guards import parsed_documents, root_field_limit
from gateway.api.federated_trace import FederatedTrace
from gateway.api.federation import DEFAULT_MAX_ENTITIES, ENTITY_TYPES, GatewaySchema
from gateway.api.operation_observer import OperationObserver
from gateway.api.projecting_executor import projecting_execution_context
from gateway.api.resolvers import Query
from gateway.settings import Settings

# Validated documents strawberry's ValidationCache keeps, bounded by count.
VALIDATION_CACHE_DOCUMENTS: Final = 128


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema with the limits and production switches of ``settings`` (none if None)."""
    # OperationObserver first: hooks unwind in reverse, so it sees ContractErrors' codes;
    # FederatedTrace before ContractErrors, so its trace carries the contract errors.
    extensions: list[Any] = [OperationObserver, FederatedTrace, ContractErrors, CacheReport]
    production = settings is not None and settings.production
    if settings is not None:
        # Factories, not instances: strawberry builds fresh extensions per operation.
        extensions += [
            partial(MaxTokensLimiter, max_token_count=settings.max_tokens),
            # strawberry's limiters make a new rule class per instance, and so per operation;
            # built once here, the rules are the same each time and validation results can be
            # cached (ValidationCache keys on them).
            partial(
                AddValidationRules,
                [
                    *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
                    *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
                    root_field_limit(settings.max_root_fields),
                ],
            ),
            # Documents seen a moment ago skip parsing and validation (bounded LRUs).
            parsed_documents(),
            partial(ValidationCache, maxsize=VALIDATION_CACHE_DOCUMENTS),
            # After validation is known (from the cache or not), so neither overwrites it.
            cost_limiter(
                max_cost=settings.max_cost,
                max_page_size=settings.max_page_size,
                max_entities=settings.max_entities,
                report=not production,
            ),
        ]
    if production:
        extensions.append(DisableIntrospection)
    return GatewaySchema(
        query=Query,
        types=list(ENTITY_TYPES),
        extensions=extensions,
        config=StrawberryConfig(disable_field_suggestions=production),
        max_entities=settings.max_entities if settings is not None else DEFAULT_MAX_ENTITIES,
        # Lists of phone numbers are projected from the upstream items by a function compiled
        # once per document, instead of completed leaf by leaf (api/projecting_executor.py).
        execution_context_class=projecting_execution_context(),
    )


def export_sdl() -> str:
    """The subgraph SDL (what ``_service { sdl }`` answers and ``rover subgraph publish``
    takes), as committed in ``schema/numbers.graphql``."""
    return build_schema().as_str() + "\n"

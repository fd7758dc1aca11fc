"""What a federation router may run outside the trusted documents.

A router composes and plans with operations no client manifest lists: ``{ _service { sdl } }``
at start-up and an ``_entities`` query per plan step, generated from each client operation.
In production with ``GATEWAY_TRUSTED_DOCUMENTS`` those would be refused, locking the router
out. So: ``_service`` alone answers everyone (the SDL is the contract, nothing secret), and a
request that carries ``GATEWAY_ROUTER_SECRET`` in ``Gateway-Router-Secret`` may also run
``_entities``. Anything else (a root field of ours, a mutation, introspection) stays refused,
secret or not: a client sending its own document through the router is still checked
against the manifest.
"""

from __future__ import annotations

import hmac

from graphql import DocumentNode, OperationDefinitionNode, OperationType
from pydantic import SecretStr

from gateway.execution.fragment_walk import fragment_definitions, selected_fields

ROUTER_SECRET_HEADER = "gateway-router-secret"  # noqa: S105 (a header name)
# Root fields of the federation subgraph protocol; ``__typename`` is harmless anywhere.
SERVICE_ONLY = frozenset({"_service", "__typename"})
FEDERATION_FIELDS = frozenset({"_service", "_entities", "__typename"})


def is_router(secret: SecretStr | None, sent: str | None) -> bool:
    """Whether ``sent`` (the header's value) is the configured router secret; compared in
    constant time, so timing reveals nothing of the secret."""
    if secret is None or sent is None:
        return False
    return hmac.compare_digest(sent.encode("latin-1"), secret.get_secret_value().encode())


def only_root_fields(document: DocumentNode, allowed: frozenset[str]) -> bool:
    """Whether every operation in ``document`` (prepared: parsed under the limits and
    walkable) is a query selecting only ``allowed`` root fields, fragments spread in place
    (``fragment_walk``)."""
    fragments = fragment_definitions(document)
    operations = [
        node for node in document.definitions if isinstance(node, OperationDefinitionNode)
    ]
    return bool(operations) and all(
        operation.operation is OperationType.QUERY
        and all(
            field.name.value in allowed
            for field, _ in selected_fields(operation.selection_set, fragments)
        )
        for operation in operations
    )


def may_be_federation(text: str) -> bool:
    """A cheap look at a document's text: only one naming a federation field can be one a
    router needs (every other is refused without being parsed)."""
    return "_service" in text or "_entities" in text

"""The federation 2 subgraph schema: which entities this subgraph resolves and how
``_entities`` checks its representations before any of their fields run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import strawberry
from strawberry.federation.schema import FederationAny

from gateway.domain.arguments import check_url_text
from gateway.errors import BadUserInput
from gateway.schema.context import RequestContext
from gateway.schema.cost_directives import COST_FEDERATION_VERSION
from gateway.schema.types import Location, Organization, Person

# The federation version in the SDL's @link: the first to define the cost directives
# (``cost_directives``), which @apollo/composition 2.9+ and @theguild/federation-composition
# both accept (tests compose with both).
FEDERATION_VERSION: Final = COST_FEDERATION_VERSION
DEFAULT_MAX_ENTITIES: Final = 1000

# Entity references this subgraph resolves: __typename -> the object for a key.
ENTITY_REFERENCES: Final[Mapping[str, Callable[[strawberry.ID], object]]] = {
    "Location": lambda key: Location(id=key, name=None),
    "Person": lambda key: Person(id=key),
    "Organization": lambda key: Organization(id=key),
}
# The entity types only reachable through ``_entities``: the schema must be told of them.
ENTITY_TYPES: Final = (Person, Organization)


class GatewaySchema(strawberry.federation.Schema):
    """A federation 2 subgraph schema whose ``_entities`` is bounded and checked."""

    def __init__(self, *, max_entities: int = DEFAULT_MAX_ENTITIES, **kwargs: Any) -> None:
        self.max_entities = max_entities  # read by entities_resolver, bound during __init__
        super().__init__(federation_version=FEDERATION_VERSION, **kwargs)

    def entities_resolver(
        self,
        info: strawberry.Info[RequestContext, None],
        representations: list[FederationAny],
    ) -> list[FederationAny]:
        """Entity references, checked as a whole before any of their fields run: more than
        ``max_entities``, an unknown ``__typename``, a representation without an ``id`` or
        with one too long for an upstream URL is ``BAD_USER_INPUT``, so a bad request costs no
        upstream call. Each entity's fields then go through the request's loader like root
        fields: repeats share a call, and a batch of people or locations asking the same thing
        may be answered by one walk (``pipeline.entity_batches``)."""
        if len(representations) > self.max_entities:
            raise BadUserInput(
                f"_entities got {len(representations)} representations; at most "
                f"{self.max_entities} are allowed per request (GATEWAY_MAX_ENTITIES)."
            )
        return [
            FederationAny(entity_reference(representation, index))
            for index, representation in enumerate(representations)
        ]


def entity_reference(representation: object, index: int) -> object:
    """The entity object for ``representations[index]``; ``BadUserInput`` if it is not one."""
    where = f"representations[{index}]"
    if not isinstance(representation, Mapping):
        raise BadUserInput(f"{where} must be an object with __typename and id.")
    typename = representation.get("__typename")
    build = ENTITY_REFERENCES.get(typename) if isinstance(typename, str) else None
    if build is None:
        known = ", ".join(sorted(ENTITY_REFERENCES))
        raise BadUserInput(f"{where}.__typename must be one of {known}; got {typename!r}.")
    key = representation.get("id")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key.strip() or not key.isprintable():
        raise BadUserInput(f"{where} has no usable id: a {typename} is keyed by its id.")
    # An id travels in the upstream URL: a longer one is refused, with the whole request,
    # before it could reach it (Webex ids are about 80 characters).
    check_url_text(f"{where}.id", key)
    return build(strawberry.ID(key))

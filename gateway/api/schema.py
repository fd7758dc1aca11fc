"""The executable schema: the root type, its extensions, and how errors reach the caller.

Every error leaves with a contract code: ``GatewayError``s keep their message and extensions;
parse, validation and argument-coercion errors are ``BAD_USER_INPUT``; anything else is a bug,
logged here with its traceback and shown only as a masked ``INTERNAL_SERVER_ERROR``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, Final

import strawberry
import structlog
from cachetools import LRUCache
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    parse,
)
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.federation.schema import FederationAny
from strawberry.schema.config import StrawberryConfig
from strawberry.types.execution import ExecutionContext

from gateway.api.context import RequestContext
from gateway.api.cost import cost_limiter
from gateway.api.federated_trace import FederatedTrace
from gateway.api.projection import projecting_execution_context
from gateway.api.resolvers import Query
from gateway.errors import BadUserInput, ErrorCode, GatewayError
from gateway.numbers.types import Location, Organization, Person
from gateway.observability.operations import OperationObserver
from gateway.settings import Settings

log = structlog.get_logger("gateway.graphql")

INTERNAL_ERROR_MESSAGE = "Internal server error."
# The federation version in the SDL's @link: one that @apollo/composition 2.x and
# @theguild/federation-composition both accept (tests compose with both).
FEDERATION_VERSION: Final = "2.7"
DEFAULT_MAX_ENTITIES = 100
PLAN_CACHE_SIZE = 128  # validated documents kept (strawberry keeps them, bounded by count)

# Entity references this subgraph resolves: __typename -> the object for a key.
ENTITY_REFERENCES: dict[str, Callable[[strawberry.ID], object]] = {
    "Location": lambda key: Location(id=key, name=None),
    "Person": lambda key: Person(id=key),
    "Organization": lambda key: Organization(id=key),
}


def to_contract_error(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    if isinstance(original, GatewayError):
        return GraphQLError(
            original.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=original,
            extensions=original.extensions,
        )
    code = (error.extensions or {}).get("code")
    if original is None and code in ErrorCode.__members__:
        return error  # already a contract error
    if error.path is None and (original is None or isinstance(original, GraphQLError)):
        # Parse, validation and variable-coercion errors: the document or its inputs.
        return GraphQLError(
            error.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            extensions={"code": ErrorCode.BAD_USER_INPUT.value},
        )
    log.error(
        "graphql_internal_error",
        path=error.path,
        error=error.message,
        exc_info=original if isinstance(original, BaseException) else None,
    )
    return GraphQLError(
        INTERNAL_ERROR_MESSAGE,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": ErrorCode.INTERNAL_SERVER_ERROR.value},
    )


# graphql-core appends suggestions ("Did you mean 'x'?", "Did you mean the enum value 'Y'?")
# to validation and coercion messages of every kind; strawberry only switches off the ones
# for object fields. In production they would rebuild the schema with introspection off.
_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def without_suggestions(error: GraphQLError) -> GraphQLError:
    message = _SUGGESTION.sub("", error.message)
    if message == error.message:
        return error
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=error.extensions,
    )


# Fields an operation may expand to once its fragments are spread. A fragment spread twice
# in a fragment spread twice ... doubles at each level: 30 levels fit in 1.3 KB and would make
# every walk of the document (the limiters', the cost estimate's) run for hours.
MAX_EXPANDED_FIELDS = 5_000
PARSE_CACHE_BYTES = 4 * 1024 * 1024  # of document text; the parsed trees are some times that


def expanded_fields(document: DocumentNode) -> int:
    """How many fields the document's operations select with every fragment spread in place;
    linear in the document's size (each fragment's count is worked out once)."""
    fragments = {
        node.name.value: node
        for node in document.definitions
        if isinstance(node, FragmentDefinitionNode)
    }
    sizes: dict[str, int] = {}

    def size(selection_set: SelectionSetNode | None, spreading: frozenset[str]) -> int:
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += 1 + size(selection.selection_set, spreading)
            elif isinstance(selection, InlineFragmentNode):
                total += size(selection.selection_set, spreading)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in spreading or name not in fragments:
                    continue  # a cycle or an unknown fragment: validation reports it
                if name not in sizes:
                    sizes[name] = size(fragments[name].selection_set, spreading | {name})
                total += sizes[name]
            if total > MAX_EXPANDED_FIELDS:
                return total  # enough to refuse; no need to count on
        return total

    return sum(
        size(node.selection_set, frozenset())
        for node in document.definitions
        if isinstance(node, OperationDefinitionNode)
    )


def _refusal(document: DocumentNode) -> GraphQLError | None:
    """Why a parsed document is refused before validation, if it is."""
    if _has_empty_selection(document):
        # graphql-core 3.3 parses `{}`, which the spec's grammar forbids and on which
        # strawberry's depth limiter fails; say so here, as a syntax error.
        return GraphQLError(
            "Syntax Error: a selection set must select at least one field.",
            extensions={"code": ErrorCode.BAD_USER_INPUT.value},
        )
    fields = expanded_fields(document)
    if fields > MAX_EXPANDED_FIELDS:
        return GraphQLError(
            f"The operation expands to more than {MAX_EXPANDED_FIELDS} fields once its "
            "fragments are spread; select less, or spread fragments fewer times.",
            extensions={"code": ErrorCode.BAD_USER_INPUT.value},
        )
    return None


def parsed_documents() -> type[SchemaExtension]:
    """strawberry's ``ParserCache`` (but one per app, bounded in bytes of document text), with
    two checks made once per document before validation: no empty selection set, and no
    fragment expansion past ``MAX_EXPANDED_FIELDS``. A document that does not parse is left
    to strawberry's own parse, which reports the error as a request error (``ParserCache``
    raises it from the hook, past the error handling)."""
    documents: LRUCache[str, tuple[DocumentNode, GraphQLError | None]] = LRUCache(
        maxsize=PARSE_CACHE_BYTES, getsizeof=len
    )
    guard = threading.Lock()

    class ParsedDocuments(SchemaExtension):
        def on_parse(self) -> Iterator[None]:
            context = self.execution_context
            query = context.query
            if query:
                with guard:
                    found = documents.get(query)
                if found is None:
                    try:
                        document = parse(query, **context.parse_options)
                    except GraphQLError:
                        yield  # strawberry parses again and reports it
                        return
                    found = (document, _refusal(document))
                    if len(query) <= documents.maxsize:
                        with guard:
                            documents[query] = found
                context.graphql_document, refusal = found
                if refusal is not None:
                    raise refusal
            yield

    return ParsedDocuments


def _has_empty_selection(document: DocumentNode) -> bool:
    stack: list[Any] = list(document.definitions)
    while stack:
        node = stack.pop()
        selection_set = getattr(node, "selection_set", None)
        if selection_set is None:
            continue
        if not selection_set.selections:
            return True
        stack.extend(selection_set.selections)
    return False


class ContractErrors(SchemaExtension):
    """Rewrites the result's errors into contract errors and counts them by code."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        result.errors = [to_contract_error(error) for error in result.errors]
        context = self.execution_context.context
        if isinstance(context, RequestContext) and context.settings.production:
            result.errors = [without_suggestions(error) for error in result.errors]
        if isinstance(context, RequestContext):
            for error in result.errors:
                code = (error.extensions or {}).get("code", ErrorCode.INTERNAL_SERVER_ERROR)
                context.metrics.graphql_errors.labels(code=str(code)).inc()


class CacheReport(SchemaExtension):
    """``extensions.cache``: what the cache did for this operation's upstream asks, when the
    caller asks for it (the ``Gateway-Cache-Report: true`` header); ``extensions.stale``
    always, when a stale answer stood in for a failing upstream.

    Only this caller's own entries can be hits (keys include the token), so nothing here
    tells one caller about another.
    """

    def get_results(self) -> dict[str, Any]:
        context = self.execution_context.context
        if not isinstance(context, RequestContext) or not context.numbers.cache_events:
            return {}
        events = context.numbers.cache_events
        stale = {"stale": True} if any(event.status == "stale" for event in events) else {}
        if not context.report_cache:
            # Identical answers stay identical bytes (ETags, shared caches); a stale answer
            # is a different answer, and says so.
            return stale
        return {
            **stale,
            "cache": {
                "hits": sum(event.status == "hit" for event in events),
                "misses": sum(event.status != "hit" for event in events),
                "calls": [
                    {"status": event.status, "tier": event.tier, "ageSeconds": round(event.age, 3)}
                    for event in events
                ],
            },
        }


class GatewaySchema(strawberry.federation.Schema):
    """A federation 2 subgraph schema whose ``_entities`` is bounded and checked."""

    def __init__(self, *, max_entities: int = DEFAULT_MAX_ENTITIES, **kwargs: Any) -> None:
        self.max_entities = max_entities  # read by entities_resolver, bound during __init__
        super().__init__(federation_version=FEDERATION_VERSION, **kwargs)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # ContractErrors logs what is unexpected; expected errors are not log noise.
        return

    def entities_resolver(
        self, info: strawberry.Info, representations: list[FederationAny]
    ) -> list[FederationAny]:
        """Entity references, checked as a whole before any of their fields run: more than
        ``max_entities``, an unknown ``__typename`` or a representation without an ``id`` is
        ``BAD_USER_INPUT``, so a bad request costs no upstream call. Each entity's fields then
        go through the request's loader like root fields: repeats share a call."""
        if len(representations) > self.max_entities:
            raise BadUserInput(
                f"_entities got {len(representations)} representations; at most "
                f"{self.max_entities} are allowed per request (GATEWAY_MAX_ENTITIES)."
            )
        return [
            FederationAny(_reference(representation, index))
            for index, representation in enumerate(representations)
        ]


def _reference(representation: object, index: int) -> object:
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
    return build(strawberry.ID(key))


def root_field_limit(max_root_fields: int) -> type[ValidationRule]:
    """A validation rule: at most ``max_root_fields`` root fields per operation, counting
    those reached through fragments, so a wide operation can't fan out upstream calls."""

    class RootFieldLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            count = self._count(node.selection_set, set())
            if count > max_root_fields:
                self.report_error(
                    GraphQLError(
                        f"The operation selects {count} root fields; at most "
                        f"{max_root_fields} are allowed. Split it into several operations.",
                        node,
                    )
                )

        def _count(self, selection_set: SelectionSetNode, seen: set[str]) -> int:
            count = 0
            for selection in selection_set.selections:
                if isinstance(selection, FieldNode):
                    count += 1
                elif isinstance(selection, InlineFragmentNode):
                    count += self._count(selection.selection_set, seen)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.context.get_fragment(name)
                    if fragment is not None and name not in seen:
                        seen.add(name)
                        count += self._count(fragment.selection_set, seen)
            return count

    return RootFieldLimit


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
            partial(ValidationCache, maxsize=PLAN_CACHE_SIZE),
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
        types=[Person, Organization],
        extensions=extensions,
        config=StrawberryConfig(disable_field_suggestions=production),
        max_entities=settings.max_entities if settings is not None else DEFAULT_MAX_ENTITIES,
        # Lists of phone numbers are projected from the upstream items by a function compiled
        # once per document, instead of completed leaf by leaf (api/projection.py).
        execution_context_class=projecting_execution_context(),
    )


def export_sdl() -> str:
    """The subgraph SDL (what ``_service { sdl }`` answers and ``rover subgraph publish``
    takes), as committed in ``schema/numbers.graphql``."""
    return build_schema().as_str() + "\n"

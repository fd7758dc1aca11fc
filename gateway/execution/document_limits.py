"""Document guards: checks a GraphQL document passes before it may be validated or executed.

``parsed_documents()`` is strawberry's parser cache made bounded in estimated bytes of memory
(text length times what a parsed tree costs per character, measured; a refused document keeps
its refusal, not its tree), with four checks made once per document (no empty selection set,
no spread of a fragment the document does not define, no fragment cycle, no fragment expansion
past ``MAX_EXPANDED_FIELDS``), so every later walk (``fragment_walk``) is bounded;
``root_field_limit()`` is a validation rule bounding root fields, so a wide operation cannot
fan out upstream calls;
``stream_arguments()`` refuses a negative ``@stream(initialCount:)``, literal or variable, in
the operation that will run, as ``BAD_USER_INPUT`` before execution;
``as_limit()`` makes a validation rule's errors limit errors (``BAD_USER_INPUT``), so they are
not taken for the document's own mistakes (``GRAPHQL_VALIDATION_FAILED``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final, cast

from cachetools import LRUCache
from graphql import (
    ASTValidationRule,
    DirectiveNode,
    DocumentNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    OperationDefinitionNode,
    ValidationRule,
    Visitor,
    parse,
    value_from_ast_untyped,
    visit,
)
from graphql.validation import ASTValidationContext
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension

from gateway.errors import ErrorCode
from gateway.execution.cost import chosen_operation, operation_variables
from gateway.execution.directive_hints import STREAM_DIRECTIVE
from gateway.execution.fragment_walk import (
    Fragments,
    expanded_field_count,
    fragment_cycle,
    fragment_definitions,
    selected_fields,
    unknown_fragments,
)

# Fields an operation may expand to once its fragments are spread. A fragment spread twice
# in a fragment spread twice ... doubles at each level: 30 levels fit in 1.3 KB and would make
# every walk of the document (the limiters', the cost estimate's) run for hours.
MAX_EXPANDED_FIELDS: Final = 5_000
# What the parse cache may hold, in bytes of memory as estimated by ``parsed_cost``.
PARSE_CACHE_BYTES: Final = 64 * 1024 * 1024
# Bytes of memory a parsed document takes per character of its text, at most: graphql-core
# keeps every token (a linked list, for locations) and a node per name, so the densest
# documents cost most. Measured with tracemalloc on graphql-core 3.2: `{ a a a ... }` 279,
# `{ a{b{c{d{e{f}}}}} ... }` 339, `{a{a{a ...}}}` 341, 660 aliased `__typename` 73, long
# comments and strings 1-20. Rounded up, so the estimate never undercounts.
PARSED_BYTES_PER_CHARACTER: Final = 400
# What a document the guards refuse costs to remember: its text (the key), the refusal and
# the entry itself; its parsed tree is dropped.
REFUSED_ENTRY_OVERHEAD: Final = 1024


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """One entry of the parse cache: the parsed document, or why it is refused (then the
    tree is not kept), and what the entry costs in memory."""

    document: DocumentNode | None
    refused: GraphQLError | None
    cost: int


def parsed_entry(query: str, document: DocumentNode) -> ParsedDocument:
    """The cache entry for ``query``: a refused document keeps only its refusal, so a flood
    of distinct refused documents costs their text, not their trees."""
    refused = refusal(document)
    if refused is not None:
        return ParsedDocument(None, refused, len(query) + REFUSED_ENTRY_OVERHEAD)
    return ParsedDocument(document, None, parsed_size(query))


def parsed_size(query: str) -> int:
    """Bytes of memory the parsed tree of ``query`` may take, at most (the estimate every
    cache of parsed documents is bounded by: this one and the operation plans)."""
    return len(query) * PARSED_BYTES_PER_CHARACTER


def expanded_fields(document: DocumentNode) -> int:
    """How many fields the document's operations select with every fragment spread in place,
    counted up to just past ``MAX_EXPANDED_FIELDS``."""
    return expanded_field_count(document, MAX_EXPANDED_FIELDS)


def has_empty_selection(document: DocumentNode) -> bool:
    """Whether any selection set of the document selects nothing (``{}``)."""
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


def refusal(document: DocumentNode) -> GraphQLError | None:
    """Why a parsed document is refused before validation, if it is."""
    if has_empty_selection(document):
        # graphql-core 3.3 parses `{}`, which the spec's grammar forbids (graphql-js, and so
        # Apollo, fail to parse it) and on which strawberry's depth limiter fails.
        return GraphQLError(
            "Syntax Error: a selection set must select at least one field.",
            extensions={"code": ErrorCode.GRAPHQL_PARSE_FAILED.value},
        )
    unknown = unknown_fragments(document)
    if unknown:
        # Validation would say the same (KnownFragmentNamesRule), but strawberry's depth
        # limiter, a rule of the same pass, looks every spread up and fails with a KeyError.
        return GraphQLError(
            " ".join(f'Unknown fragment "{name}".' for name in unknown[:10]),
            extensions={"code": ErrorCode.GRAPHQL_VALIDATION_FAILED.value},
        )
    cycle = fragment_cycle(document)
    if cycle is not None:
        # Validation would say the same (NoFragmentCyclesRule), but in the same pass as the
        # root-field limit, whose walk a cycle of doubling spreads would keep busy for hours.
        return GraphQLError(
            f'Cannot spread fragment "{cycle}" within itself.',
            extensions={"code": ErrorCode.GRAPHQL_VALIDATION_FAILED.value},
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
    """strawberry's ``ParserCache`` (but one per app, bounded in estimated bytes of memory,
    ``PARSE_CACHE_BYTES``), with the checks of ``refusal`` made once per document before
    validation. A document these checks refuse is remembered by its refusal alone; one that
    validation or a limit refuses is dropped. A document that does
    not parse is left to strawberry's own parse, which reports the error as a request error
    (``ParserCache`` raises it from the hook, past the error handling)."""
    documents: LRUCache[str, ParsedDocument] = LRUCache(
        maxsize=PARSE_CACHE_BYTES, getsizeof=lambda entry: entry.cost
    )
    guard = threading.Lock()

    class ParsedDocuments(SchemaExtension):
        cache: ClassVar[LRUCache[str, ParsedDocument]] = documents  # to inspect its accounting

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
                    found = parsed_entry(query, document)
                    if found.cost <= documents.maxsize:
                        with guard:
                            documents[query] = found
                if found.refused is not None:
                    raise found.refused
                context.graphql_document = found.document
            yield

        def on_validate(self) -> Iterator[None]:
            yield
            context = self.execution_context
            if context.pre_execution_errors and context.query:
                # Refused by validation or a limit (every hook has run by now): its tree is
                # of no use again, so a flood of distinct refused documents keeps nothing.
                with guard:
                    documents.pop(context.query, None)

    return ParsedDocuments


def negative_initial_count(
    document: DocumentNode, operation_name: str | None, variables: dict[str, Any] | None
) -> GraphQLError | None:
    """The refusal of an ``@stream`` whose ``initialCount`` (a literal, or a variable sent or
    defaulted) is negative: graphql-core would fail on it mid-execution, as an internal
    error. Only the operation that will run counts (``cost.chosen_operation``), with its
    own variables' defaults (``cost.operation_variables``): another operation of the document
    may declare the same variable with another default, or stream a list it never runs.
    Other wrong types are the validator's and the variables' coercion's to report."""
    operation = chosen_operation(document, operation_name)
    if operation is None:
        return None  # no operation can be chosen: the request fails on its own
    values = operation_variables(operation, variables)
    for directive in _stream_directives(operation, fragment_definitions(document)):
        for argument in directive.arguments or ():
            if argument.name.value != "initialCount":
                continue
            count = value_from_ast_untyped(argument.value, values)  # Undefined if not set
            if isinstance(count, int) and not isinstance(count, bool) and count < 0:
                return GraphQLError(
                    f"@stream(initialCount: {count}) is negative; send 0 or more.",
                    directive,
                    extensions={"code": ErrorCode.BAD_USER_INPUT.value},
                )
    return None


def _stream_directives(
    operation: OperationDefinitionNode, fragments: Fragments
) -> list[DirectiveNode]:
    """The ``@stream`` directives ``operation`` reaches, in the fragments it spreads too
    (each fragment visited once, however often it is spread)."""
    collected: list[DirectiveNode] = []
    pending: list[OperationDefinitionNode | FragmentDefinitionNode] = [operation]
    reached: set[str] = set()

    class Collect(Visitor):
        def enter_directive(self, node: DirectiveNode, *_: Any) -> None:
            if node.name.value == "stream":
                collected.append(node)

        def enter_fragment_spread(self, node: FragmentSpreadNode, *_: Any) -> None:
            name = node.name.value
            if name not in reached and name in fragments:
                reached.add(name)
                pending.append(fragments[name])

    collect = Collect()
    while pending:
        visit(pending.pop(), collect)
    return collected


def stream_arguments() -> type[SchemaExtension]:
    """A schema extension refusing a negative ``@stream(initialCount:)`` (literal or
    variable) as ``BAD_USER_INPUT`` before execution (``negative_initial_count``)."""

    class StreamArguments(SchemaExtension):
        def on_validate(self) -> Iterator[None]:
            context = self.execution_context
            document = context.graphql_document
            if (
                document is not None
                and not context.pre_execution_errors
                and STREAM_DIRECTIVE.search(context.query or "") is not None
            ):
                refused = negative_initial_count(
                    document, context.operation_name, context.variables
                )
                if refused is not None:
                    context.pre_execution_errors = [refused]
            yield

    return StreamArguments


def root_field_limit(max_root_fields: int) -> type[ValidationRule]:
    """A validation rule: at most ``max_root_fields`` root fields per operation, counting
    those reached through fragments, so a wide operation can't fan out upstream calls."""

    class RootFieldLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            fragments = fragment_definitions(self.context.document)
            count = sum(1 for _ in selected_fields(node.selection_set, fragments))
            if count > max_root_fields:
                self.report_error(
                    GraphQLError(
                        f"The operation selects {count} root fields; at most "
                        f"{max_root_fields} are allowed. Split it into several operations.",
                        node,
                        extensions={"code": ErrorCode.BAD_USER_INPUT.value},
                    )
                )

    return RootFieldLimit


def _limit_error(error: GraphQLError) -> GraphQLError:
    return GraphQLError(
        error.message,
        error.nodes,
        error.source,
        error.positions,
        error.path,
        error.original_error,
        {**(error.extensions or {}), "code": ErrorCode.BAD_USER_INPUT.value},
    )


class _LimitReporting:
    """A validation context whose reported errors are limit errors; all else is the real one."""

    def __init__(self, context: ASTValidationContext) -> None:
        self._context = context

    def report_error(self, error: GraphQLError) -> None:
        self._context.report_error(_limit_error(error))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def as_limit(rule: type[ASTValidationRule]) -> type[ASTValidationRule]:
    """``rule`` whose errors are limit errors (``BAD_USER_INPUT``): strawberry's depth and
    alias limiters report plain validation errors (from their constructors, on the context),
    which would read as ``GRAPHQL_VALIDATION_FAILED``; a limit is the caller's input, as in
    Apollo's own limits."""

    class Limit(rule):  # type: ignore[valid-type,misc]
        def __init__(self, context: ASTValidationContext) -> None:
            super().__init__(cast("ASTValidationContext", _LimitReporting(context)))

    Limit.__name__ = Limit.__qualname__ = f"{rule.__name__}AsLimit"
    return Limit


def limit_rules(
    *, max_depth: int, max_aliases: int, max_root_fields: int
) -> list[type[ASTValidationRule]]:
    """The validation rules of the operation limits (depth, aliases, root fields), all
    reporting ``BAD_USER_INPUT``. strawberry's limiters make a new rule class per instance;
    built once per schema here, the rules are the same each time and validation results can
    be cached (``ValidationCache`` keys on them)."""
    return [
        *map(as_limit, QueryDepthLimiter(max_depth=max_depth).validation_rules),
        *map(as_limit, MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules),
        root_field_limit(max_root_fields),
    ]

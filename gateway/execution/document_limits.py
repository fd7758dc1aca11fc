"""Document limits: what a parsed document must pass before it is validated or executed.

``refusal`` makes four checks once per document (no empty selection set, no spread of a
fragment the document does not define, no fragment cycle, no fragment expansion past
``MAX_EXPANDED_FIELDS``), so every later walk (``fragment_walk``) is bounded; ``parsed_size``
is what a parsed tree may cost in memory (the prepared-operation cache is bounded by it);
``limit_rules`` are the validation rules of the operation limits (depth, aliases, root fields),
whose errors are limit errors (``BAD_USER_INPUT``, ``as_limit``), not the document's own
mistakes (``GRAPHQL_VALIDATION_FAILED``); ``stream_argument_refusal`` refuses an ``@stream`` or
``@defer`` argument execution would fail on (a negative or null ``initialCount``, a null
``if``), with the request's variables, before execution.
"""

from __future__ import annotations

from typing import Any, Final, cast

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
    value_from_ast_untyped,
    visit,
)
from graphql.pyutils import Undefined
from graphql.validation import ASTValidationContext
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter

from gateway.errors import ErrorCode
from gateway.execution.fragment_walk import (
    Fragments,
    expanded_field_count,
    fragment_cycle,
    fragment_definitions,
    selected_fields,
    unknown_fragments,
)

INCREMENTAL_DIRECTIVES: Final = frozenset({"defer", "stream"})

# Fields an operation may expand to once its fragments are spread. A fragment spread twice
# in a fragment spread twice ... doubles at each level: 30 levels fit in 1.3 KB and would make
# every walk of the document (the limiters', the cost estimate's) run for hours.
MAX_EXPANDED_FIELDS: Final = 5_000
# Bytes of memory a parsed document takes per character of its text, at most: graphql-core
# keeps every token (a linked list, for locations) and a node per name, so the densest
# documents cost most. Measured with tracemalloc on graphql-core 3.2: `{ a a a ... }` 279,
# `{ a{b{c{d{e{f}}}}} ... }` 339, `{a{a{a ...}}}` 341, 660 aliased `__typename` 73, long
# comments and strings 1-20. Rounded up, so the estimate never undercounts.
PARSED_BYTES_PER_CHARACTER: Final = 400


def parsed_size(query: str) -> int:
    """Bytes of memory the parsed tree of ``query`` may take, at most (what the
    prepared-operation cache is bounded by)."""
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


def stream_argument_refusal(
    operation: OperationDefinitionNode, fragments: Fragments, variables: dict[str, Any]
) -> GraphQLError | None:
    """The refusal of an ``@stream`` or ``@defer`` argument that execution would fail on, as
    an internal error, mid-way: a negative or null ``initialCount``, a null ``if`` (a literal,
    or a variable sent or defaulted). Only the operation that will run counts, with its own
    variables' defaults (``variables``: ``cost.operation_variables``); other wrong types are
    the validator's and the variables' coercion's to report."""
    for directive in incremental_directives(operation, fragments):
        name = directive.name.value
        for argument in directive.arguments or ():
            value = value_from_ast_untyped(argument.value, variables)  # Undefined: not set
            if value is Undefined:
                continue
            if argument.name.value == "if" and value is None:
                return _argument_error(
                    f"@{name}(if:) is null; send true or false, or leave it out.", directive
                )
            if argument.name.value == "initialCount" and name == "stream":
                if value is None:
                    return _argument_error(
                        "@stream(initialCount:) is null; send 0 or more, or leave it out.",
                        directive,
                    )
                if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                    return _argument_error(
                        f"@stream(initialCount: {value}) is negative; send 0 or more.", directive
                    )
    return None


def _argument_error(message: str, directive: DirectiveNode) -> GraphQLError:
    return GraphQLError(message, directive, extensions={"code": ErrorCode.BAD_USER_INPUT.value})


def incremental_directives(
    operation: OperationDefinitionNode, fragments: Fragments
) -> list[DirectiveNode]:
    """The ``@stream`` and ``@defer`` directives ``operation`` reaches, in the fragments it
    spreads too (each fragment visited once, however often it is spread)."""
    collected: list[DirectiveNode] = []
    pending: list[OperationDefinitionNode | FragmentDefinitionNode] = [operation]
    reached: set[str] = set()

    class Collect(Visitor):
        def enter_directive(self, node: DirectiveNode, *_: Any) -> None:
            if node.name.value in INCREMENTAL_DIRECTIVES:
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

"""Document guards: checks a GraphQL document passes before it may be validated or executed.

``parsed_documents()`` is strawberry's parser cache made bounded in bytes, with two checks made
once per document (no empty selection set, no fragment expansion past
``MAX_EXPANDED_FIELDS``); ``root_field_limit()`` is a validation rule bounding root fields,
so a wide operation cannot fan out upstream calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Final

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
from strawberry.extensions import SchemaExtension

from gateway.errors import ErrorCode

# Fields an operation may expand to once its fragments are spread. A fragment spread twice
# in a fragment spread twice ... doubles at each level: 30 levels fit in 1.3 KB and would make
# every walk of the document (the limiters', the cost estimate's) run for hours.
MAX_EXPANDED_FIELDS: Final = 5_000
PARSE_CACHE_BYTES: Final = 4 * 1024 * 1024  # of document text; the parsed trees are some times that


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
                    found = (document, refusal(document))
                    if len(query) <= documents.maxsize:
                        with guard:
                            documents[query] = found
                context.graphql_document, refused = found
                if refused is not None:
                    raise refused
            yield

    return ParsedDocuments


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

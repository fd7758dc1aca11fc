"""Operation cost: what one operation can make the gateway do, estimated before it runs.

Each upstream call costs ``CALL_COST``; each item a page may answer costs 1. A field's cost is
multiplied by the sizes of the lists around it, so ``phoneNumbers(page: {first: 2000})`` costs
2,050, ten aliased copies of it 20,500, and ``owner { person { phoneNumbers } }`` under a page of
2,000 nodes costs 2,000 times a whole page. ``_entities`` multiplies by its representations.
A page's items count only when its selection reaches ``nodes`` or ``edges`` (through fragments
too): ``phoneNumbers { totalCount pageInfo { hasNextPage } }`` builds and answers no item, so
it costs the call alone, and a router's plan of 150 people asking ``totalCount`` costs 7,500.
``first`` comes from literals or variables, and a variable the request does not send takes the
default its operation declares (``$f: Int = 2000``, ``$p: PageInput = {first: 2000}``), as
execution will; 100 when absent, the most when unreadable. ``@skip`` and ``@include`` are
ignored, so the estimate never undercounts.

A streamed connection (its ``nodes``/``edges`` all under ``@stream``) is not held whole: its
items cost nothing, the upstream pages it walks cost a call each, once per streamed list (its
first chunk is one shared call; each list walks the rest on its own) (``first`` may then reach
``GATEWAY_MAX_STREAM_ITEMS``, and is read against that ceiling); fields under its items that
make upstream calls of their own still count once per item. Only when the response streams
(``RequestContext.incremental_delivery``): merged into one JSON body the list is held whole,
so it is costed and bounded as unstreamed.

It runs once validation is known (from strawberry's cache, or about to run), before execution:
an operation over ``GATEWAY_MAX_COST`` costs nothing upstream. Its walk is linear in the
document's expanded size, which ``ParsedDocuments`` bounds before anything walks it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    SelectionSetNode,
    ValueNode,
    value_from_ast_untyped,
)
from graphql.pyutils import Undefined
from strawberry.extensions import SchemaExtension

from gateway.domain.arguments import DEFAULT_PAGE_SIZE, page_ceiling
from gateway.errors import ErrorCode
from gateway.execution.directive_hints import STREAM_DIRECTIVE
from gateway.execution.fragment_walk import Spreading, fragment_definitions, selected_fields

CALL_COST = 50
PAGE_FIELDS = frozenset({"phoneNumbers"})
COUNT_FIELDS = frozenset({"numberCounts"})
ITEM_LISTS = frozenset({"nodes", "edges"})
STREAM = "stream"


def upstream_pages(first: int, upstream_page_size: int) -> int:
    """Upstream calls a walk of ``first`` items makes, ``upstream_page_size`` at a time."""
    return max(1, -(-first // upstream_page_size))


def chosen_operation(
    document: DocumentNode, operation_name: str | None
) -> OperationDefinitionNode | None:
    """The operation that would run: the one named ``operation_name``, or the document's
    only one; None when none can be chosen (the request then fails on its own)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [op for op in operations if op.name and op.name.value == operation_name]
    return operations[0] if len(operations) == 1 else None


def operation_variables(
    operation: OperationDefinitionNode, variables: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The variables execution will see: those sent, and the declared default of each one
    not sent (an explicit null is sent, and stays null)."""
    effective: dict[str, Any] = {}
    for definition in operation.variable_definitions or ():
        if definition.default_value is not None:
            name = definition.variable.name.value
            effective[name] = value_from_ast_untyped(definition.default_value)
    effective.update(variables or {})
    return effective


class CostEstimate:
    """Walks one operation; ``total`` is its cost."""

    def __init__(
        self,
        document: DocumentNode,
        variables: Mapping[str, Any] | None,
        *,
        max_page_size: int,
        max_entities: int,
        max_stream_items: int | None = None,
        incremental: bool = True,
    ) -> None:
        self.variables: dict[str, Any] = dict(variables or {})
        self.incremental = incremental  # the response streams: @stream lists are not held
        self.max_page_size = max_page_size
        self.max_stream_items = max_page_size if max_stream_items is None else max_stream_items
        self.max_entities = max_entities
        self.fragments = fragment_definitions(document)
        self.total = 0

    def operation(self, operation: OperationDefinitionNode) -> int:
        self.variables = operation_variables(operation, self.variables)
        self.total = 0
        self._walk(operation.selection_set, 1, ())
        return self.total

    def _fields(
        self, selection_set: SelectionSetNode, spreading: Spreading
    ) -> Iterator[tuple[FieldNode, Spreading]]:
        return selected_fields(selection_set, self.fragments, spreading)

    def _walk(self, selection_set: SelectionSetNode, multiplier: int, spreading: Spreading) -> None:
        for field, path in self._fields(selection_set, spreading):
            name = field.name.value
            inner = multiplier
            if name in PAGE_FIELDS:
                self._page(field, multiplier, path)
                continue
            if name in COUNT_FIELDS:
                self.total += multiplier * CALL_COST
            elif name == "_entities":
                inner = multiplier * self._representations(field)
            if field.selection_set is not None:
                self._walk(field.selection_set, inner, path)

    def _page(self, field: FieldNode, multiplier: int, spreading: Spreading) -> None:
        item_lists = self._item_lists(field.selection_set, spreading)
        streamed = self.incremental and self._all_streamed(item_lists)
        first = self._first(field, streamed=streamed)
        if streamed:
            # Held a chunk at a time, never whole: the walk's calls are what it costs. The
            # first chunk is one call shared by the operation's fields, but each streamed list
            # (``nodes`` and ``edges`` both, or two aliases) walks the rest on its own.
            walks = len(self._response_keys(item_lists))
            rest = upstream_pages(first, self.max_page_size) - 1
            self.total += multiplier * (1 + walks * rest) * CALL_COST
        elif item_lists:
            self.total += multiplier * (CALL_COST + first)
        else:
            # Only totalCount/pageInfo: no item is built or answered, the call is the cost.
            self.total += multiplier * CALL_COST
        if field.selection_set is not None:
            self._walk_page(field.selection_set, multiplier, first, spreading)

    def _walk_page(
        self,
        selection_set: SelectionSetNode,
        multiplier: int,
        first: int,
        spreading: Spreading,
    ) -> None:
        for field, path in self._fields(selection_set, spreading):
            if field.selection_set is None:
                continue
            items = multiplier * first if field.name.value in ITEM_LISTS else multiplier
            self._walk(field.selection_set, items, path)

    def _all_streamed(self, item_lists: list[FieldNode]) -> bool:
        """Whether a connection's item lists (``_item_lists``) stream its items: there is at
        least one, and every one carries an active ``@stream``. One unstreamed item list makes
        the whole page be held, so it is costed (and bounded) as unstreamed."""
        return bool(item_lists) and all(self._streams(field) for field in item_lists)

    def _item_lists(
        self, connection: SelectionSetNode | None, spreading: Spreading
    ) -> list[FieldNode]:
        """The ``nodes``/``edges`` fields a connection's selection reaches, through fragments."""
        if connection is None:
            return []
        return [
            field
            for field, _ in self._fields(connection, spreading)
            if field.name.value in ITEM_LISTS
        ]

    @staticmethod
    def _response_keys(fields: list[FieldNode]) -> set[str]:
        """The distinct lists the fields answer: a key selected twice (in two fragments, say)
        is merged into one field by execution, so one walk."""
        return {(f.alias or f.name).value for f in fields}

    def _streams(self, field: FieldNode) -> bool:
        for directive in field.directives or ():
            if directive.name.value == STREAM:
                condition = self._value(self._argument(directive.arguments, "if"))
                return condition is not False  # absent, true or unreadable: it streams
        return False

    @staticmethod
    def _argument(arguments: Any, name: str) -> ValueNode | None:
        for argument in arguments or ():
            if argument.name.value == name:
                return argument.value  # type: ignore[no-any-return]
        return None

    def _value(self, node: ValueNode | None) -> Any:
        """The Python value of an argument, variables (and their defaults) substituted;
        None when absent or not sent."""
        if node is None:
            return None
        value = value_from_ast_untyped(node, self.variables)
        return None if value is Undefined else value

    def _first(self, field: FieldNode, *, streamed: bool) -> int:
        ceiling = page_ceiling(
            max_page_size=self.max_page_size,
            max_stream_items=self.max_stream_items,
            streamed=streamed,
        )
        page = self._value(self._argument(field.arguments, "page"))
        if page is None:
            return min(DEFAULT_PAGE_SIZE, ceiling)
        if not isinstance(page, Mapping):
            return ceiling
        first = page.get("first", None)
        if first is None or first is Undefined:
            return min(DEFAULT_PAGE_SIZE, ceiling)
        if isinstance(first, int) and not isinstance(first, bool):
            # Over the ceiling is refused before any call; the estimate stays at it.
            return max(1, min(first, ceiling))
        return ceiling

    def _representations(self, field: FieldNode) -> int:
        representations = self._value(self._argument(field.arguments, "representations"))
        if isinstance(representations, list):
            return max(1, min(len(representations), self.max_entities))
        return self.max_entities


def operation_cost(
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
    *,
    max_page_size: int,
    max_entities: int,
    max_stream_items: int | None = None,
    incremental: bool = True,
) -> int | None:
    """The cost of the operation that would run, or None when none can be chosen (the
    request then fails on its own, before execution)."""
    operation = chosen_operation(document, operation_name)
    if operation is None:
        return None
    estimate = CostEstimate(
        document,
        variables,
        max_page_size=max_page_size,
        max_entities=max_entities,
        max_stream_items=max_stream_items,
        incremental=incremental,
    )
    return estimate.operation(operation)


def cost_limiter(
    *,
    max_cost: int,
    max_page_size: int,
    max_entities: int,
    report: bool,
    max_stream_items: int | None = None,
) -> type[SchemaExtension]:
    """A schema extension refusing operations over ``max_cost`` before execution, and
    reporting the estimate (``extensions.cost`` when ``report``; the metric always).
    ``max_stream_items`` is the ceiling of a streamed ``first`` (``max_page_size`` if None)."""

    class OperationCost(SchemaExtension):
        cost: int | None = None

        def on_validate(self) -> Iterator[None]:
            context = self.execution_context
            document = context.graphql_document
            # Validation may already have run (ValidationCache); its errors come first.
            if document is not None and not context.pre_execution_errors:
                # Merged into one JSON body, an @stream list is held whole (RequestContext).
                incremental = getattr(context.context, "incremental_delivery", True)
                self.cost = operation_cost(
                    document,
                    context.operation_name,
                    context.variables,
                    max_page_size=max_page_size,
                    max_entities=max_entities,
                    max_stream_items=max_stream_items,
                    incremental=incremental,
                )
                if self.cost is not None and self.cost > max_cost:
                    hint = (
                        ""
                        if incremental or STREAM_DIRECTIVE.search(context.query or "") is None
                        else " Lists under @stream count their upstream calls, not their "
                        "items, only when the response streams: accept multipart/mixed or "
                        "text/event-stream."
                    )
                    context.pre_execution_errors = [
                        GraphQLError(
                            f"The operation's estimated cost is {self.cost}, above the limit "
                            f"of {max_cost}. Each upstream call counts {CALL_COST} and each "
                            "item a page may return counts 1, times the lists around it: ask "
                            f"for fewer or smaller pages, or split the operation.{hint}",
                            extensions={"code": ErrorCode.BAD_USER_INPUT.value},
                        )
                    ]
            yield

        def on_execute(self) -> Iterator[None]:
            yield
            metrics = getattr(self.execution_context.context, "metrics", None)
            if metrics is not None and self.cost is not None:
                metrics.operation_cost.observe(self.cost)

        def get_results(self) -> dict[str, Any]:
            if not report or self.cost is None:
                return {}
            return {"cost": {"estimated": self.cost, "limit": max_cost}}

    return OperationCost

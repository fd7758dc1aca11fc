"""Operation cost: what one operation can make the gateway do, estimated before it runs.

Each upstream call costs ``CALL_COST``; each item a page may return costs 1. A field's cost is
multiplied by the sizes of the lists around it, so ``phoneNumbers(page: {first: 2000})`` costs
2,050, ten aliased copies of it 20,500, and ``owner { person { phoneNumbers } }`` under a page of
2,000 nodes costs 2,000 times a whole page. ``_entities`` multiplies by its representations.
``first`` comes from literals or variables (100 when absent, the most when unreadable); ``@skip``
and ``@include`` are ignored, so the estimate never undercounts. It runs once validation is
known (from strawberry's cache, or about to run), before execution: an operation over
``GATEWAY_MAX_COST`` costs nothing upstream. Its walk is linear in the document's expanded
size, which ``ParsedDocuments`` bounds before anything walks it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValueNode,
    VariableNode,
)
from strawberry.extensions import SchemaExtension

from gateway.numbers.arguments import DEFAULT_PAGE_SIZE

CALL_COST = 50
PAGE_FIELDS = frozenset({"phoneNumbers"})
COUNT_FIELDS = frozenset({"numberCounts"})
ITEM_LISTS = frozenset({"nodes", "edges"})


class CostEstimate:
    """Walks one operation; ``total`` is its cost."""

    def __init__(
        self,
        document: DocumentNode,
        variables: Mapping[str, Any] | None,
        *,
        max_page_size: int,
        max_entities: int,
    ) -> None:
        self.variables = variables or {}
        self.max_page_size = max_page_size
        self.max_entities = max_entities
        self.fragments = {
            node.name.value: node
            for node in document.definitions
            if isinstance(node, FragmentDefinitionNode)
        }
        self.total = 0

    def operation(self, operation: OperationDefinitionNode) -> int:
        self.total = 0
        self._walk(operation.selection_set, 1, ())
        return self.total

    def _fields(
        self, selection_set: SelectionSetNode, spreading: tuple[str, ...]
    ) -> Iterator[tuple[FieldNode, tuple[str, ...]]]:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                yield selection, spreading
            elif isinstance(selection, InlineFragmentNode):
                yield from self._fields(selection.selection_set, spreading)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in spreading:  # cycles fail validation
                    yield from self._fields(fragment.selection_set, (*spreading, name))

    def _walk(
        self, selection_set: SelectionSetNode, multiplier: int, spreading: tuple[str, ...]
    ) -> None:
        for field, path in self._fields(selection_set, spreading):
            name = field.name.value
            inner = multiplier
            if name in PAGE_FIELDS:
                first = self._first(field)
                self.total += multiplier * (CALL_COST + first)
                if field.selection_set is not None:
                    self._walk_page(field.selection_set, multiplier, first, path)
                continue
            if name in COUNT_FIELDS:
                self.total += multiplier * CALL_COST
            elif name == "_entities":
                inner = multiplier * self._representations(field)
            if field.selection_set is not None:
                self._walk(field.selection_set, inner, path)

    def _walk_page(
        self,
        selection_set: SelectionSetNode,
        multiplier: int,
        first: int,
        spreading: tuple[str, ...],
    ) -> None:
        for field, path in self._fields(selection_set, spreading):
            if field.selection_set is None:
                continue
            items = multiplier * first if field.name.value in ITEM_LISTS else multiplier
            self._walk(field.selection_set, items, path)

    def _argument(self, field: FieldNode, name: str) -> ValueNode | None:
        for argument in field.arguments or ():
            if argument.name.value == name:
                return argument.value
        return None

    def _value(self, node: ValueNode | None) -> Any:
        if isinstance(node, VariableNode):
            return self.variables.get(node.name.value)
        if isinstance(node, IntValueNode):
            return int(node.value)
        if isinstance(node, ObjectValueNode):
            return {field.name.value: field.value for field in node.fields}
        if isinstance(node, ListValueNode):
            return list(node.values)
        return None

    def _first(self, field: FieldNode) -> int:
        page = self._value(self._argument(field, "page"))
        if page is None:
            return min(DEFAULT_PAGE_SIZE, self.max_page_size)
        if not isinstance(page, Mapping):
            return self.max_page_size
        first = page.get("first")
        if isinstance(first, ValueNode):
            first = self._value(first)
        if first is None:
            return min(DEFAULT_PAGE_SIZE, self.max_page_size)
        if isinstance(first, int) and not isinstance(first, bool):
            return max(1, min(first, self.max_page_size))
        return self.max_page_size

    def _representations(self, field: FieldNode) -> int:
        representations = self._value(self._argument(field, "representations"))
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
) -> int | None:
    """The cost of the operation that would run, or None when none can be chosen (the
    request then fails on its own, before execution)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [op for op in operations if op.name and op.name.value == operation_name]
    if len(operations) != 1:
        return None
    estimate = CostEstimate(
        document, variables, max_page_size=max_page_size, max_entities=max_entities
    )
    return estimate.operation(operations[0])


def cost_limiter(
    *, max_cost: int, max_page_size: int, max_entities: int, report: bool
) -> type[SchemaExtension]:
    """A schema extension refusing operations over ``max_cost`` before execution, and
    reporting the estimate (``extensions.cost`` when ``report``; the metric always)."""

    class OperationCost(SchemaExtension):
        cost: int | None = None

        def on_validate(self) -> Iterator[None]:
            context = self.execution_context
            document = context.graphql_document
            # Validation may already have run (ValidationCache); its errors come first.
            if document is not None and not context.pre_execution_errors:
                self.cost = operation_cost(
                    document,
                    context.operation_name,
                    context.variables,
                    max_page_size=max_page_size,
                    max_entities=max_entities,
                )
                if self.cost is not None and self.cost > max_cost:
                    context.pre_execution_errors = [
                        GraphQLError(
                            f"The operation's estimated cost is {self.cost}, above the limit "
                            f"of {max_cost}. Each upstream call counts {CALL_COST} and each "
                            "item a page may return counts 1, times the lists around it: ask "
                            "for fewer or smaller pages, or split the operation.",
                            extensions={"code": "BAD_USER_INPUT"},
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

"""Operation cost: what one operation can make the gateway do, estimated before it runs.

Each upstream call costs ``CALL_COST``; each item the gateway may hold costs 1. A field's cost
is multiplied by the sizes of the lists around it, so ``phoneNumbers(page: {first: 2000})``
costs 2,050, ten aliased copies of it 20,500, and ``owner { person { phoneNumbers } }`` under a
page of 2,000 nodes costs 2,000 times a whole page. ``_entities`` multiplies by its
representations. A page's items count only when its selection reaches ``nodes`` or ``edges``
(through fragments too): ``phoneNumbers { totalCount pageInfo { hasNextPage } }`` builds and
answers no item, so it costs the call alone. A page's size is ``page.first``, or Relay's
``first`` or ``last`` (the field's own arguments), from literals or variables, and a variable
the request does not send takes the default its operation declares, as execution will; 100
when absent, the most when unreadable. Relay's ``last`` without ``before`` costs one call more:
its window is placed by a probe that reads the total first. ``@skip`` and ``@include`` are
ignored, so the estimate never undercounts.

Fields are priced as execution runs them: fields of one selection set with the same response
key are one field (merged, as graphql-core's ``collect_fields`` merges them), so a field asked
twice, once with ``nodes @stream`` and once with ``edges``, is one page whose ``edges`` are held
whole, and priced so.

A streamed connection (every ``nodes``/``edges`` list of the merged field under an active
``@stream``) is not held whole: its items cost nothing but the initial payload's
(``initialCount``, which is held), the upstream pages it walks cost a call each, once per
streamed list (its first chunk is one shared call; each list walks the rest on its own), and
``first`` may reach ``GATEWAY_MAX_STREAM_ITEMS``. Only when the response streams: an answer
held whole (one JSON body, a batch's element) holds every list, so ``held`` prices it as
unstreamed. A subscription (``phoneNumberChanges``) costs what one poll of its feed may: the
counts call and a walk of up to ``GATEWAY_CHANGES_MAX_ITEMS`` entries.

It runs for each request (the variables differ), over a document the prepared-operation cache
holds: its walk is linear in the document's expanded size, which the document limits bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    SelectionSetNode,
    ValueNode,
    value_from_ast_untyped,
)
from graphql.pyutils import Undefined

from gateway.domain.arguments import DEFAULT_MAX_FILTER_VALUES, DEFAULT_PAGE_SIZE, page_ceiling
from gateway.domain.query import CALL_COST as CALL_COST  # the weight routers are told too
from gateway.errors import ErrorCode
from gateway.execution.fragment_walk import Fragments, Spreading, selected_fields

PAGE_FIELDS = frozenset({"phoneNumbers"})
COUNT_FIELDS = frozenset({"numberCounts"})
FEED_FIELDS = frozenset({"phoneNumberChanges"})
ITEM_LISTS = frozenset({"nodes", "edges"})
FAN_OUT_LISTS = ("locationIds", "ownerTypes")
STREAM = "stream"
DEFAULT_FEED_ITEMS = 20_000  # GATEWAY_CHANGES_MAX_ITEMS' default

# Fields of one selection set under one response key, each with the spreading path that led
# to it: execution merges them into one field.
FieldGroup = list[tuple[FieldNode, Spreading]]


@dataclass(frozen=True, slots=True)
class CostLimits:
    """What the estimate reads ``first`` and entities against (the settings)."""

    max_cost: int
    max_page_size: int
    max_entities: int
    max_stream_items: int | None = None
    max_feed_items: int = DEFAULT_FEED_ITEMS
    max_filter_values: int = DEFAULT_MAX_FILTER_VALUES


def upstream_pages(first: int, upstream_page_size: int) -> int:
    """Upstream calls a walk of ``first`` items makes, ``upstream_page_size`` at a time."""
    return max(1, -(-first // upstream_page_size))


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
        operation: OperationDefinitionNode,
        fragments: Fragments,
        variables: Mapping[str, Any] | None,
        limits: CostLimits,
        *,
        held: bool,
    ) -> None:
        self.operation = operation
        self.fragments = fragments
        self.variables = operation_variables(operation, variables)
        self.limits = limits
        self.held = held  # the answer is held whole: no list is streamed
        self.max_page_size = limits.max_page_size
        self.max_stream_items = (
            limits.max_page_size if limits.max_stream_items is None else limits.max_stream_items
        )
        self.total = 0

    def run(self) -> int:
        self.total = 0
        self._walk([(self.operation.selection_set, ())], 1)
        return self.total

    def _groups(self, selection_sets: list[tuple[SelectionSetNode, Spreading]]) -> list[FieldGroup]:
        """The fields of ``selection_sets`` (one merged field's children) by response key."""
        groups: dict[str, FieldGroup] = {}
        for selection_set, spreading in selection_sets:
            for field, path in selected_fields(selection_set, self.fragments, spreading):
                key = (field.alias or field.name).value
                groups.setdefault(key, []).append((field, path))
        return list(groups.values())

    @staticmethod
    def _children(group: FieldGroup) -> list[tuple[SelectionSetNode, Spreading]]:
        return [(f.selection_set, path) for f, path in group if f.selection_set is not None]

    def _walk(
        self, selection_sets: list[tuple[SelectionSetNode, Spreading]], multiplier: int
    ) -> None:
        for group in self._groups(selection_sets):
            name = group[0][0].name.value
            inner = multiplier
            if name in PAGE_FIELDS:
                self._page(group, multiplier)
                continue
            width = max(self._fan_out(field) for field, _ in group)
            if name in COUNT_FIELDS:
                self.total += multiplier * width * CALL_COST
            elif name in FEED_FIELDS:
                # Each part's walk is its own (a first page at least); together they hold at
                # most GATEWAY_CHANGES_MAX_ITEMS entries.
                poll = width + upstream_pages(self.limits.max_feed_items, self.max_page_size)
                self.total += multiplier * poll * CALL_COST
            elif name == "_entities":
                inner = multiplier * max(self._representations(f) for f, _ in group)
            self._walk(self._children(group), inner)

    def _page(self, group: FieldGroup, multiplier: int) -> None:
        item_lists = [
            list_group
            for list_group in self._groups(self._children(group))
            if list_group[0][0].name.value in ITEM_LISTS
        ]
        streamed = (
            not self.held
            and bool(item_lists)
            and all(self._streams(field) for list_group in item_lists for field, _ in list_group)
        )
        first = max(self._first(field, streamed=streamed) for field, _ in group)
        # A window at the list's end (``last`` without ``before``) is placed by a probe first.
        calls = 1 + max(self._probes(field) for field, _ in group)
        # A fan-out asks each of its parts for its share: at most the page from where the part
        # stands, or with ``page.offset`` everything from the part's start to the page's end.
        width = max(self._fan_out(field) for field, _ in group)
        share = first + (max(self._offset(field) for field, _ in group) if width > 1 else 0)
        if streamed:
            # Held a chunk at a time, never whole: the walk's calls are what it costs, and the
            # initial payload's items, which are held. The first chunk is one call shared by
            # the lists, but each streamed list walks the rest on its own.
            rest = upstream_pages(share, self.max_page_size) - 1
            initial = max(
                min(self._initial_count(field), first)
                for list_group in item_lists
                for field, _ in list_group
            )
            walks = len(item_lists)
            self.total += multiplier * ((calls + walks * rest) * width * CALL_COST + initial)
        elif item_lists:
            self.total += multiplier * width * (calls * CALL_COST + share)
        else:
            # Only totalCount/pageInfo: no item is built or answered, the calls are the cost.
            self.total += multiplier * width * calls * CALL_COST
        for child in self._groups(self._children(group)):
            if child[0][0].selection_set is None:
                continue
            items = multiplier * first if child[0][0].name.value in ITEM_LISTS else multiplier
            self._walk(self._children(child), items)

    def _streams(self, field: FieldNode) -> bool:
        stream = _directive(field, STREAM)
        if stream is None:
            return False
        condition = self._value(_argument(stream.arguments, "if"))
        return condition is not False  # absent, true or unreadable: it streams

    def _initial_count(self, field: FieldNode) -> int:
        stream = _directive(field, STREAM)
        count = self._value(_argument(stream.arguments, "initialCount")) if stream else None
        if count is None:
            return 0
        if isinstance(count, int) and not isinstance(count, bool):
            return max(0, count)
        return self.max_stream_items  # unreadable: the most it could hold

    def _value(self, node: ValueNode | None) -> Any:
        """The Python value of an argument, variables (and their defaults) substituted;
        None when absent or not sent."""
        if node is None:
            return None
        value = value_from_ast_untyped(node, self.variables)
        return None if value is Undefined else value

    def _first(self, field: FieldNode, *, streamed: bool) -> int:
        """The most entries the field's page may hold: ``page.first``, Relay's ``first`` or
        ``last`` (the largest, should a refused mix of them be asked), 100 when none is."""
        ceiling = page_ceiling(
            max_page_size=self.max_page_size,
            max_stream_items=self.max_stream_items,
            streamed=streamed,
        )
        sizes: list[Any] = []
        page = self._value(_argument(field.arguments, "page"))
        if isinstance(page, Mapping):
            first = page.get("first", None)
            sizes.append(None if first is Undefined else first)  # a variable not sent: absent
        elif page is not None:
            sizes.append(ceiling)  # unreadable: the most
        for name in ("first", "last"):
            size = self._value(_argument(field.arguments, name))
            if size is not None:
                sizes.append(size)
        return max(_page_size(size, ceiling) for size in sizes or [None])

    def _probes(self, field: FieldNode) -> int:
        """1 when the field asks for the list's last entries (``last`` without ``before``),
        whose window a probe places before the page is asked for; else 0."""
        last = self._value(_argument(field.arguments, "last"))
        before = self._value(_argument(field.arguments, "before"))
        return int(last is not None and before is None)

    def _fan_out(self, field: FieldNode) -> int:
        """The upstream queries the field's filter fans out to: the product of its lists'
        lengths (a list of one, a single value, or none: 1), within the bound execution
        refuses past; an unreadable filter or list: the most."""
        most = self.limits.max_filter_values
        flt = self._value(_argument(field.arguments, "filter"))
        if flt is None:
            return 1
        if not isinstance(flt, Mapping):
            return most
        width = 1
        for name in FAN_OUT_LISTS:
            values = flt.get(name)
            if values is None or values is Undefined or isinstance(values, str):
                continue  # absent, or one value (a list of one, as GraphQL coerces it)
            width *= max(1, min(len(values), most)) if isinstance(values, list) else most
        return min(width, most)

    def _offset(self, field: FieldNode) -> int:
        """``page.offset``, as far as it can be read (unreadable: the most a page may reach)."""
        page = self._value(_argument(field.arguments, "page"))
        offset = page.get("offset", None) if isinstance(page, Mapping) else None
        if offset is None or offset is Undefined:
            return 0
        if isinstance(offset, int) and not isinstance(offset, bool):
            return max(0, min(offset, self.max_stream_items))
        return self.max_stream_items

    def _representations(self, field: FieldNode) -> int:
        representations = self._value(_argument(field.arguments, "representations"))
        if isinstance(representations, list):
            return max(1, min(len(representations), self.limits.max_entities))
        return self.limits.max_entities


def _page_size(size: Any, ceiling: int) -> int:
    """One size argument as the estimate reads it: absent (None) is the default, an integer
    is kept within 1..ceiling (over it is refused before any call; the estimate stays at
    it), anything else (unreadable) is the most."""
    if size is None:
        return min(DEFAULT_PAGE_SIZE, ceiling)
    if isinstance(size, int) and not isinstance(size, bool):
        return max(1, min(size, ceiling))
    return ceiling


def _directive(field: FieldNode, name: str) -> Any:
    for directive in field.directives or ():
        if directive.name.value == name:
            return directive
    return None


def _argument(arguments: Any, name: str) -> ValueNode | None:
    for argument in arguments or ():
        if argument.name.value == name:
            return argument.value  # type: ignore[no-any-return]
    return None


def operation_cost(
    operation: OperationDefinitionNode,
    fragments: Fragments,
    variables: Mapping[str, Any] | None,
    limits: CostLimits,
    *,
    held: bool,
) -> int:
    """The cost of ``operation`` with these variables; ``held``: its answer is held whole
    (one JSON body), so no list is priced as streamed."""
    return CostEstimate(operation, fragments, variables, limits, held=held).run()


def over_limit(cost: int, limits: CostLimits, *, held: bool, streams: bool) -> GraphQLError:
    """The refusal of an operation whose estimate is over ``GATEWAY_MAX_COST``."""
    hint = (
        " Lists under @stream count their upstream calls, not their items, only when the "
        "response streams: accept multipart/mixed or text/event-stream."
        if held and streams
        else ""
    )
    return GraphQLError(
        f"The operation's estimated cost is {cost}, above the limit of {limits.max_cost}. "
        f"Each upstream call counts {CALL_COST} and each item a page may return counts 1, "
        "times the lists around it: ask for fewer or smaller pages, or split the "
        f"operation.{hint}",
        extensions={"code": ErrorCode.BAD_USER_INPUT.value},
    )

"""What a ``phoneNumbers`` field selects of its connection, which decides how its page is read.

A page is fetched before its connection's fields resolve, so the field's resolver must know
what they will be: whether every ``nodes``/``edges`` list is under an active ``@stream`` (the
window is walked while the client takes it, and may reach ``GATEWAY_MAX_STREAM_ITEMS``),
whether ``totalCount`` or ``pageInfo`` needs the upstream's counts. ``connection_asks`` reads
that from the field's nodes: every node of the field, as execution merges them (the same field
asked twice under one response key is one field, and one page), through fragments, at the
connection's level only.

The executor has the field's nodes; a strawberry resolver does not (its ``Info`` exposes them
only by building selection objects for the whole subtree, ~90 µs a field). So the executor
(``execution.projecting_executor``) notes each connection field's asks in the request's
``SelectedConnections`` just before the field's resolver runs, under the field's response path,
and the resolver takes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from graphql import (
    BooleanValueNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionSetNode,
    VariableNode,
)
from graphql.pyutils import Path

ITEM_LISTS: Final = frozenset({"nodes", "edges"})


@dataclass(slots=True)
class ConnectionAsks:
    """What a ``phoneNumbers`` field selects of its connection."""

    item_lists: int = 0  # ``nodes`` and ``edges`` fields, directly or through fragments
    streamed_lists: int = 0  # of those, under an active ``@stream``
    total_count: bool = False
    page_info: bool = False

    @property
    def streams_items(self) -> bool:
        """Whether the items are delivered with ``@stream``: every ``nodes`` or ``edges``
        field is under an active ``@stream`` (the rule ``execution.cost`` prices by). One list
        without it holds the page whole, so the page is bounded as an unstreamed one."""
        return self.item_lists > 0 and self.streamed_lists == self.item_lists


# When no executor noted a field (a schema executed some other way): everything, held whole.
EVERYTHING: Final = ConnectionAsks(item_lists=1, streamed_lists=0, total_count=True, page_info=True)


def connection_asks(
    field_nodes: Iterable[FieldNode],
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
) -> ConnectionAsks:
    """What the field's nodes select on its connection, directly or through fragments
    (``@skip``/``@include`` not applied: a list that might be selected counts)."""
    asks = ConnectionAsks()
    for node in field_nodes:
        _walk(node.selection_set, fragments, variables, asks, set())
    return asks


def _walk(
    selection_set: SelectionSetNode | None,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    asks: ConnectionAsks,
    spreading: set[str],
) -> None:
    for node in selection_set.selections if selection_set is not None else ():
        if isinstance(node, FieldNode):
            name = node.name.value
            if name in ITEM_LISTS:
                asks.item_lists += 1
                asks.streamed_lists += under_active_stream(node, variables)
            elif name == "totalCount":
                asks.total_count = True
            elif name == "pageInfo":
                asks.page_info = True
        elif isinstance(node, InlineFragmentNode):
            _walk(node.selection_set, fragments, variables, asks, spreading)
        elif isinstance(node, FragmentSpreadNode):
            name = node.name.value
            fragment = fragments.get(name)
            if fragment is not None and name not in spreading:  # validation forbids cycles
                _walk(fragment.selection_set, fragments, variables, asks, spreading | {name})


def under_active_stream(field: FieldNode, variables: Mapping[str, Any]) -> bool:
    """``@stream`` on the field and its ``if`` not false (a variable read as sent; an unknown
    or null one counts as not false, so the field is treated as the more demanding case)."""
    for directive in field.directives or ():
        if directive.name.value != "stream":
            continue
        for argument in directive.arguments or ():
            if argument.name.value == "if":
                value = argument.value
                if isinstance(value, VariableNode):
                    return variables.get(value.name.value) is not False
                return not (isinstance(value, BooleanValueNode) and value.value is False)
        return True
    return False


class SelectedConnections:
    """Each connection field's asks in one execution, noted by the executor under the field's
    response path and taken by its resolver."""

    __slots__ = ("_noted",)

    def __init__(self) -> None:
        self._noted: dict[Path, ConnectionAsks] = {}

    def note(self, path: Path, asks: ConnectionAsks) -> None:
        self._noted[path] = asks

    def take(self, path: Path) -> ConnectionAsks:
        return self._noted.pop(path, EVERYTHING)

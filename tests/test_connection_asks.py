"""``connection_asks`` reads a connection's selection as strawberry's ``selected_fields`` does.

strawberry's ``Selection`` objects for the whole subtree (~90 µs a field) would tell the
resolver what it needs: ``nodes``/``edges`` under ``@stream``, ``totalCount`` and ``pageInfo``;
``connection_asks`` walks the field's own nodes at the connection's level, as the executor
hands them over. The property compares both over random selections: fragments (named and
inline, nested), ``@stream`` with literal and variable ``if`` (true, false, null, unknown), and
other directives.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from graphql import FieldNode, FragmentDefinitionNode, OperationDefinitionNode, parse
from hypothesis import given, settings
from hypothesis import strategies as st
from strawberry.types.nodes import (
    FragmentSpread,
    InlineFragment,
    SelectedField,
    Selection,
    convert_selections,
)

from gateway.schema.connection_asks import connection_asks
from tests.conftest import examples

ITEM_LISTS = {"nodes", "edges"}


def reference(selections: list[Selection]) -> tuple[bool, bool, bool]:
    """The resolver's old reading: (streams items, selects totalCount, selects pageInfo)."""

    def fields(selections: list[Selection]) -> list[SelectedField]:
        found: list[SelectedField] = []
        for selection in selections:
            if isinstance(selection, SelectedField):
                found.append(selection)
            elif isinstance(selection, FragmentSpread | InlineFragment):
                found.extend(fields(selection.selections))
        return found

    every = fields(selections)
    lists = [field for field in every if field.name in ITEM_LISTS]
    streams = bool(lists) and all(
        "stream" in field.directives and field.directives["stream"].get("if") is not False
        for field in lists
    )
    names = {field.name for field in every}
    return streams, "totalCount" in names, "pageInfo" in names


STREAM = st.sampled_from(
    [
        "",
        "",
        " @stream",
        " @stream(initialCount: 2)",
        " @stream(if: true)",
        " @stream(if: false)",
        " @stream(if: $s)",
        " @stream(if: $t, initialCount: 1)",
        " @skip(if: true)",
        " @include(if: $s) @stream",
    ]
)


@st.composite
def connection(draw: st.DrawFn, fragments: list[str], depth: int = 0) -> str:
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["nodes", "edges", "total", "info", "inline", "spread"]))
        if kind == "nodes":
            parts.append(f"nodes{draw(STREAM)} {{ phoneNumber }}")
        elif kind == "edges":
            parts.append(f"edges{draw(STREAM)} {{ cursor }}")
        elif kind == "total":
            parts.append("totalCount")
        elif kind == "info":
            parts.append("pageInfo { hasNextPage }")
        elif depth < 2 and kind == "inline":
            parts.append(
                f"... on PhoneNumberConnection {{ {draw(connection(fragments, depth + 1))} }}"
            )
        elif depth < 2:
            name = f"F{len(fragments)}"
            fragments.append("")  # reserve the name before drawing what it holds
            inside = draw(connection(fragments, depth + 1))
            fragments[int(name[1:])] = f"fragment {name} on PhoneNumberConnection {{ {inside} }}"
            parts.append(f"...{name}")
        else:
            parts.append("__typename")
    return " ".join(parts)


@st.composite
def documents(draw: st.DrawFn) -> str:
    fragments: list[str] = []
    inside = draw(connection(fragments))
    return " ".join(
        [f"query Q($s: Boolean, $t: Boolean) {{ phoneNumbers {{ {inside} }} }}", *fragments]
    )


VARIABLES = st.fixed_dictionaries(
    {},
    optional={"s": st.sampled_from([True, False, None]), "t": st.sampled_from([True, False])},
)


@settings(max_examples=examples(300), deadline=None, database=None)
@given(document=documents(), variables=VARIABLES)
def test_connection_asks_reads_as_selected_fields_did(
    document: str, variables: dict[str, Any]
) -> None:
    parsed = parse(document, no_location=True)
    operation = next(d for d in parsed.definitions if isinstance(d, OperationDefinitionNode))
    field = operation.selection_set.selections[0]
    assert isinstance(field, FieldNode)
    fragments = {
        d.name.value: d for d in parsed.definitions if isinstance(d, FragmentDefinitionNode)
    }
    raw = SimpleNamespace(field_nodes=[field], fragments=fragments, variable_values=variables)
    expected = reference(convert_selections(raw, [field])[0].selections)  # type: ignore[arg-type]
    asks = connection_asks([field], fragments, variables)
    assert (asks.streams_items, asks.total_count, asks.page_info) == expected, document

"""The one walk of a selection set with its fragments spread in place.

Every walker of a document's fields (the expansion bound and root-field limit of
``document_guards``, the cost estimate, the router's federation check) goes through here, so
spreads, inline fragments, unknown fragments and cycles are handled by one rule: a spread of a
fragment the document does not define, or of one already being spread on the way here (a
cycle), contributes nothing; validation reports both.

``selected_fields`` walks every path, so a fragment spread twice is walked twice: its time is
the document's expanded size, and a cycle of fragments that double at each step would take
exponential time selecting nothing. So a document reaches it only once ``walkable`` has held:
no fragment cycle (``fragment_cycle``) and an expanded size (``expanded_field_count``, linear
in the document's size) within bound. The parse cache (``document_guards``) refuses any other
document before validation; the router check refuses it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

Fragments = Mapping[str, FragmentDefinitionNode]
# The fragments being spread on the way to a field, outermost first.
Spreading = tuple[str, ...]


def fragment_definitions(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    """The document's fragments by name."""
    return {
        node.name.value: node
        for node in document.definitions
        if isinstance(node, FragmentDefinitionNode)
    }


def spread(
    node: FragmentSpreadNode, fragments: Fragments, spreading: Spreading
) -> tuple[SelectionSetNode, Spreading] | None:
    """What a spread stands for: its fragment's selection set and the spreading path inside
    it; None for an unknown fragment or a cycle (the one rule for both)."""
    name = node.name.value
    fragment = fragments.get(name)
    if fragment is None or name in spreading:
        return None
    return fragment.selection_set, (*spreading, name)


def selected_fields(
    selection_set: SelectionSetNode | None, fragments: Fragments, spreading: Spreading = ()
) -> Iterator[tuple[FieldNode, Spreading]]:
    """The fields a selection set selects at its own level, inline fragments and spreads in
    place, each with the spreading path it was reached through (to walk its own selection
    set with)."""
    for selection in selection_set.selections if selection_set else ():
        if isinstance(selection, FieldNode):
            yield selection, spreading
        elif isinstance(selection, InlineFragmentNode):
            yield from selected_fields(selection.selection_set, fragments, spreading)
        elif isinstance(selection, FragmentSpreadNode):
            inside = spread(selection, fragments, spreading)
            if inside is not None:
                yield from selected_fields(inside[0], fragments, inside[1])


def expanded_field_count(document: DocumentNode, limit: int) -> int:
    """How many fields the document's operations select with every fragment spread in place,
    counted up to just past ``limit``; linear in the document's size: each fragment's count
    is worked out once (a fragment spread twice in a fragment spread twice ... doubles at each
    level, which a walk of every path would take hours over)."""
    fragments = fragment_definitions(document)
    sizes: dict[str, int] = {}

    def size(selection_set: SelectionSetNode | None, spreading: Spreading) -> int:
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += 1 + size(selection.selection_set, spreading)
            elif isinstance(selection, InlineFragmentNode):
                total += size(selection.selection_set, spreading)
            elif isinstance(selection, FragmentSpreadNode):
                inside = spread(selection, fragments, spreading)
                if inside is not None:
                    name = selection.name.value
                    if name not in sizes:
                        sizes[name] = size(*inside)
                    total += sizes[name]
            if total > limit:
                return total  # enough to refuse; no need to count on
        return total

    return sum(
        size(node.selection_set, ())
        for node in document.definitions
        if isinstance(node, OperationDefinitionNode)
    )


def unknown_fragments(document: DocumentNode) -> list[str]:
    """Names of fragments the document spreads but does not define, in order of appearance."""
    defined = fragment_definitions(document)
    unknown: list[str] = []
    stack: list[Any] = list(reversed(document.definitions))
    while stack:
        node = stack.pop()
        if isinstance(node, FragmentSpreadNode):
            name = node.name.value
            if name not in defined and name not in unknown:
                unknown.append(name)
            continue
        selection_set = getattr(node, "selection_set", None)
        if selection_set is not None:
            stack.extend(reversed(selection_set.selections))
    return unknown


def fragment_cycle(document: DocumentNode) -> str | None:
    """The name of a fragment that spreads itself, directly or through others; None when
    there is no cycle. Linear: each fragment is explored once."""
    fragments = fragment_definitions(document)
    spreads: dict[str, list[str]] = {}
    for name, fragment in fragments.items():
        found: list[str] = []
        stack: list[Any] = [fragment.selection_set]
        while stack:
            node = stack.pop()
            if isinstance(node, FragmentSpreadNode):
                if node.name.value in fragments:
                    found.append(node.name.value)
                continue
            selection_set = getattr(node, "selection_set", node)
            stack.extend(getattr(selection_set, "selections", None) or ())
        spreads[name] = found
    done: set[str] = set()
    for start in fragments:
        if start in done:
            continue
        on_path = {start}
        path = [(start, iter(spreads[start]))]
        while path:
            name, following = path[-1]
            step = next(following, None)
            if step is None:
                path.pop()
                on_path.discard(name)
                done.add(name)
            elif step in on_path:
                return step
            elif step not in done:
                on_path.add(step)
                path.append((step, iter(spreads[step])))
    return None


def walkable(document: DocumentNode, max_fields: int) -> bool:
    """Whether ``selected_fields`` may walk the document: no unknown fragment, no cycle, and
    at most ``max_fields`` fields once fragments are spread."""
    return (
        not unknown_fragments(document)
        and fragment_cycle(document) is None
        and expanded_field_count(document, max_fields) <= max_fields
    )

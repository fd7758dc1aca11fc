"""Where a document asks for incremental delivery (``@defer``, ``@stream``).

``INCREMENTAL_DIRECTIVE`` and ``STREAM_DIRECTIVE`` are cheap looks at a document's text, made
before (or instead of) parsing it, to choose a path: GraphQL lets ignored tokens (white space,
commas, a byte-order mark, comments) stand between ``@`` and the directive's name, so
``@ defer`` and ``@#why\\ndefer`` are ``@defer`` too and must match. A match inside a string or
a comment only sends the document the careful way. ``uses_incremental_delivery`` answers
exactly, from the parsed document, where a wrong "no" would matter (operation plans).
"""

from __future__ import annotations

import re
from typing import Final

from graphql import DirectiveNode, DocumentNode, Visitor, visit

_IGNORED = r"(?:[\s,\ufeff]|#[^\n\r]*)*"
INCREMENTAL_DIRECTIVE: Final = re.compile(rf"@{_IGNORED}(?:defer|stream)\b")
STREAM_DIRECTIVE: Final = re.compile(rf"@{_IGNORED}stream\b")
_INCREMENTAL_NAMES: Final = frozenset({"defer", "stream"})


class _IncrementalFinder(Visitor):
    found = False

    def enter_directive(self, node: DirectiveNode, *_: object) -> object:
        if node.name.value in _INCREMENTAL_NAMES:
            self.found = True
            return Visitor.BREAK
        return None


def uses_incremental_delivery(document: DocumentNode) -> bool:
    """Whether any operation or fragment of ``document`` carries ``@defer`` or ``@stream``."""
    finder = _IncrementalFinder()
    visit(document, finder)
    return finder.found

"""The projection fast path's executor hook: a page of phone numbers completed straight from the
upstream items by a projector compiled once (``projection_compiler``), instead of field by field.

graphql-core completes a 2,000-item page field by field: for every item a dataclass from the
reader, then for each of its ~23 selected leaves a resolver call, a ``complete_value`` and a
scalar ``serialize``. The data only passes through, so this module runs a compiled projector
for the list instead.

Where it hooks in
    ``ProjectingExecutionContext`` is the executor strawberry hands to graphql-core
    (``execution_context_class=``); it extends strawberry's own executor (which gives resolvers
    the plain variables dict), so every other field runs exactly as before, at the cost of one
    class check. Its ``execute_field`` recognises the connection's ``nodes`` and ``edges``
    fields (by field name, whatever the alias) on a ``PhoneNumberConnection`` over a
    ``PageResult``, root field and entity field alike, before their resolvers run. The two
    resolvers it stands in for are pure (``PageResult.nodes()`` reads the items with
    ``reader.PHONE_NUMBER``; ``edges()`` pairs them with ``PageResult.cursor(start + i)``), so
    not calling them is not observable; it also saves building 2,000 dataclasses per page.
    With resolver middleware the normal path runs (a middleware must see every field it wraps).

When a projector hands back
    A projector raising ``CannotProject`` (a value it cannot render exactly) leaves the whole
    list to normal execution, which produces the nulls, the propagation and the errors with
    their paths. A projector that raises anything else (a bug) is logged, counted, and handed
    back the same way: the fast path never changes an answer.

Caching
    Projectors are cached per schema (``projecting_execution_context()`` makes one executor
    class with its own bounded LRU) under a digest of the document's text, the operation name,
    the field's path with list indices removed (types included, so ``... on Location`` and
    ``... on Organization`` under ``_entities`` stay apart), and the values of the variables
    that ``@skip``/``@include`` read anywhere in the document. A selection found not
    projectable is cached as such, so it costs one lookup per list.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import structlog
from cachetools import LRUCache
from graphql import (
    FragmentDefinitionNode,
    GraphQLObjectType,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.pyutils import Path, Undefined, UndefinedType
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gateway.api.projection_compiler import (
    INCLUSION_DIRECTIVES,
    CannotProject,
    Projector,
    compile_projector,
)
from gateway.numbers.connection import PageResult
from gateway.numbers.reader import PHONE_NUMBER, ObjectTable
from gateway.numbers.types import PhoneNumberConnection

log = structlog.get_logger("gateway.projection")

DEFAULT_MAX_PROJECTORS: Final = 1024
_CONNECTION_LISTS: Final = frozenset({"nodes", "edges"})
_ABSENT: Final = object()  # a variable the operation did not set

# A projector's key: the schema, the document's digest and operation name, then the field's
# path and the inclusion variables' values (see ``ProjectingExecutionContext._projector_key``).
ProjectorKey = tuple[object, ...]


@dataclass(slots=True)
class ProjectionStats:
    """What the fast path did, per schema: for tests and for reading a profile."""

    compiled: int = 0  # selections compiled (projectable or not)
    projected: int = 0  # lists completed by a projector
    declined: int = 0  # lists whose selection is not projectable
    fallbacks: int = 0  # lists a projector handed back (a value it cannot render)
    failures: int = 0  # lists whose projector raised unexpectedly (a bug; logged)


class ProjectorCache:
    """Bounded LRUs of compiled projectors (``None``: not projectable) and of the variables
    each document's ``@skip``/``@include`` read. Locked: strawberry may execute synchronous
    operations from worker threads, and ``cachetools`` caches are not thread-safe."""

    def __init__(self, max_entries: int = DEFAULT_MAX_PROJECTORS) -> None:
        self.max_entries = max_entries
        self.stats = ProjectionStats()
        self._projectors: LRUCache[ProjectorKey, Projector | None] = LRUCache(max_entries)
        self._variables: LRUCache[ProjectorKey, tuple[str, ...]] = LRUCache(max_entries)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._projectors)

    def projector(self, key: ProjectorKey) -> Projector | UndefinedType | None:
        """The projector stored under ``key`` (None: not projectable), Undefined if none is."""
        with self._lock:
            # A read counts as a use: LRUCache moves the entry to the recent end.
            return self._projectors.get(key, Undefined)

    def store(self, key: ProjectorKey, projector: Projector | None) -> None:
        with self._lock:
            self._projectors[key] = projector

    def directive_variables(
        self,
        key: ProjectorKey,
        operation: OperationDefinitionNode,
        fragments: Mapping[str, FragmentDefinitionNode],
    ) -> tuple[str, ...]:
        """The inclusion variables of the document ``key`` names, worked out once."""
        with self._lock:
            found = self._variables.get(key)
        if found is not None:
            return found
        names = inclusion_variables(operation, fragments)
        with self._lock:
            self._variables[key] = names
        return names


def inclusion_variables(
    operation: OperationDefinitionNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> tuple[str, ...]:
    """The variables any ``@skip``/``@include`` of the document reads, sorted."""
    names: set[str] = set()
    pending: list[SelectionSetNode] = [operation.selection_set]
    pending.extend(fragment.selection_set for fragment in fragments.values())
    while pending:
        for selection in pending.pop().selections:
            for directive in selection.directives or ():
                if directive.name.value in INCLUSION_DIRECTIVES:
                    for argument in directive.arguments or ():
                        if isinstance(argument.value, VariableNode):
                            names.add(argument.value.name.value)
            selection_set = getattr(selection, "selection_set", None)
            if selection_set is not None:
                pending.append(selection_set)
    return tuple(sorted(names))


class ProjectingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor with the projection fast path for lists of phone numbers.

    Use ``projecting_execution_context()``, which binds a projector cache to the class."""

    projectors: ClassVar[ProjectorCache]
    root_table: ClassVar[ObjectTable] = PHONE_NUMBER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._document_key: ProjectorKey | None = None

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: FieldDetailsList,
        path: Path,
        position_context: Any = None,
    ) -> Any:
        if source.__class__ is PhoneNumberConnection and position_context is None:
            projected = self._project(parent_type, source, field_details_list, path)
            if projected is not None:
                return projected
        return super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )

    def _project(
        self,
        parent_type: GraphQLObjectType,
        source: PhoneNumberConnection,
        field_details_list: FieldDetailsList,
        path: Path,
    ) -> list[dict[str, Any]] | None:
        result = source.result
        field_name = field_details_list[0].node.name.value  # the field, whatever its alias
        if result.__class__ is not PageResult or field_name not in _CONNECTION_LISTS:
            return None
        if self.middleware_manager is not None and self.middleware_manager.middlewares:
            return None  # a resolver middleware must see every field it wraps
        assert isinstance(result, PageResult)
        stats = self.projectors.stats
        try:
            projector = self._projector(parent_type, field_details_list, path)
            if projector is None:
                stats.declined += 1
                return None
            projected = projector(result)
        except CannotProject:
            stats.fallbacks += 1
            return None
        except Exception:
            # A bug in this module must not change an answer: normal execution takes over.
            stats.failures += 1
            log.exception("projection_failed", path=path.as_list())
            return None
        stats.projected += 1
        return projected

    def _projector(
        self, parent_type: GraphQLObjectType, field_details_list: FieldDetailsList, path: Path
    ) -> Projector | None:
        """The cached projector of this field here, compiled on first sight."""
        cache = self.projectors
        key = self._projector_key(path)
        projector = cache.projector(key) if key is not None else Undefined
        if isinstance(projector, UndefinedType):
            projector = compile_projector(self, self.root_table, parent_type, field_details_list)
            cache.stats.compiled += 1
            if key is not None:
                cache.store(key, projector)
        return projector

    def _projector_key(self, path: Path) -> ProjectorKey | None:
        """Document, operation, the field's path with its types (not its list indices), and
        the ``@skip``/``@include`` variables' values; None when the document has no text."""
        document = self._document_key or self._digest_document()
        if document is None:
            return None
        steps: list[tuple[str, str | None]] = []
        step: Path | None = path
        while step is not None:
            if isinstance(step.key, str):
                steps.append((step.key, step.typename))
            step = step.prev
        names = self.projectors.directive_variables(
            document, self.operation, self.fragment_definitions
        )
        coerced = self.variable_values.coerced
        values = tuple(coerced.get(name, _ABSENT) for name in names)
        try:
            hash(values)
        except TypeError:
            return None
        return (*document, tuple(steps), values)

    def _digest_document(self) -> ProjectorKey | None:
        """The schema, a digest of the document's text (a key must not hold a megabyte of
        text) and the operation's name; once per operation."""
        location = self.operation.loc
        if location is None:
            return None
        text = location.source.body.encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(text, digest_size=16).digest()
        name = self.operation.name.value if self.operation.name else None
        self._document_key = (self.schema, digest, name)
        return self._document_key


def projecting_execution_context(
    *, max_projectors: int = DEFAULT_MAX_PROJECTORS, root_table: ObjectTable = PHONE_NUMBER
) -> type[ProjectingExecutionContext]:
    """An executor class with its own projector cache: pass it to the schema as
    ``execution_context_class``. ``root_table`` is the reader table of ``PhoneNumber``
    (tests replace it to exercise the fallback)."""

    class BoundProjectingExecutionContext(ProjectingExecutionContext):
        projectors = ProjectorCache(max_projectors)

    BoundProjectingExecutionContext.root_table = root_table
    return BoundProjectingExecutionContext

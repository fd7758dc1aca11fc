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

Streamed lists (``@stream``)
    A connection list under an active ``@stream`` is completed here too, a chunk at a time:
    the first ``initialCount`` items go in the initial payload, and the rest is registered
    with graphql-core's incremental executor as an ``ItemStream`` over ``ProjectedChunks``,
    whose batches are whole projected chunks: the rest of the first chunk (the walk's first
    upstream page, which is all the initial payload waits for, or the page cache's whole
    window), then one per upstream page of the walk (``StreamedWindow.tail``: a fanned-out
    window's chunks are merged, one per page a part walks).
    graphql-core asks a stream for its next batch only once the consumer has taken the
    previous one, and the walk fetches a page only when asked, so the gateway reads one
    upstream page ahead of the client at most; when the stream is aborted (the client went
    away), the walk is closed and no further upstream call is made. A chunk the projector
    hands back is completed item by item the normal way (``complete_stream_item``); a
    selection that is not projectable, an ``initialCount`` past the first chunk, or resolver
    middleware leave the whole list to normal execution, which streams the resolver's async
    iterator item by item. An upstream
    failure mid-walk fails the stream: graphql-core ends it with a ``completed`` entry carrying
    the located error, and ``hasNext: false`` once nothing else is pending.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, ClassVar, Final, cast

import orjson
import structlog
from cachetools import LRUCache
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    located_error,
)
from graphql.execution.collect_fields import FieldDetails, FieldDetailsList
from graphql.execution.executor import StreamUsage
from graphql.execution.incremental.incremental_executor import ItemStream, StreamItemValue
from graphql.execution.incremental.work_queue import WorkResult
from graphql.pyutils import Path, Undefined, UndefinedType
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gateway.domain.connection import PageResult, StreamedWindow
from gateway.domain.reader import PHONE_NUMBER, ObjectTable
from gateway.execution.projection_compiler import (
    INCLUSION_DIRECTIVES,
    CannotProject,
    Projection,
    Projector,
    SelectionWalker,
    compile_projector,
)
from gateway.execution.struct_projection import compile_struct_projector
from gateway.schema.connection_asks import connection_asks
from gateway.schema.context import RequestContext
from gateway.schema.types import PhoneNumberConnection

log = structlog.get_logger("gateway.projection")

DEFAULT_MAX_PROJECTORS: Final = 1024
_CONNECTION_LISTS: Final = frozenset({"nodes", "edges"})
_CONNECTION_FIELDS: Final = frozenset({"phoneNumbers"})
_ABSENT: Final = object()  # a variable the operation did not set
_STREAM: Final = "stream"

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
    streamed: int = 0  # lists under @stream delivered a projected chunk at a time
    chunks: int = 0  # chunks of streamed lists projected after the initial payload
    guarded_items: int = 0  # items built straight from values the well-formed guard passed
    per_value_items: int = 0  # items read value by value (failed the guard, or none emitted)
    encoded: int = 0  # lists (and streamed chunks) encoded in C from the upstream's bytes
    encoded_items: int = 0  # the items of those

    def count_items(self, projection: Projection) -> None:
        """Count a projected page's items by the path they took (once per page)."""
        self.per_value_items += projection.per_value
        self.guarded_items += len(projection.items) - projection.per_value


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


class ConnectionNotingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor (resolvers get the plain variables dict) that notes, before a
    ``phoneNumbers`` field's resolver runs, what the field selects of its connection, every
    merged node of it (``schema.connection_asks``): the resolver reads it to decide how to
    fetch. Normal completion for everything else (tests compare the fast path with it)."""

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: FieldDetailsList,
        path: Path,
        position_context: Any = None,
    ) -> Any:
        if field_details_list[0].node.name.value in _CONNECTION_FIELDS:
            self._note_connection(field_details_list, path)
        return super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )

    def _note_connection(self, field_details_list: FieldDetailsList, path: Path) -> None:
        context = self.context_value
        if isinstance(context, RequestContext):
            asks = connection_asks(
                [details.node for details in field_details_list],
                self.fragment_definitions,
                self.variable_values.coerced,
            )
            context.connections.note(path, asks)


class ProjectingExecutionContext(ConnectionNotingExecutionContext):
    """The executor with the projection fast path for lists of phone numbers.

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
        if (
            source.__class__ is PhoneNumberConnection
            # the connection's lists, whatever their alias; a resolver middleware must see
            # every field it wraps, so with one the normal path runs
            and field_details_list[0].node.name.value in _CONNECTION_LISTS
            and not (self.middleware_manager is not None and self.middleware_manager.middlewares)
        ):
            streamed = self._stream(parent_type, source, field_details_list, path)
            if streamed is not None:
                return streamed
            if position_context is None:
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
    ) -> list[Any] | orjson.Fragment | None:
        result = source.result
        if result.__class__ is not PageResult:
            return None
        assert isinstance(result, PageResult)
        projector = self._usable_projector(parent_type, field_details_list, path)
        if projector is None:
            return None
        stats = self.projectors.stats
        if self._encoded_lists:
            encoded = self._encoded(projector, result, path, each=False)
            if encoded is not None:
                stats.projected += 1
                return orjson.Fragment(encoded)
        projected = self._run_projector(projector, path, result)
        if projected is None:
            return None
        stats.projected += 1
        return projected

    @property
    def _encoded_lists(self) -> bool:
        context = self.context_value
        return isinstance(context, RequestContext) and context.encoded_lists

    def _encoded(self, projector: Projector, page: PageResult, path: Path, *, each: bool) -> Any:
        """The page's list as JSON encoded in C (``struct_projection``; ``each``: one JSON
        per item), or None when its items are not bytes it reads."""
        structs = projector.structs
        if structs is None:
            return None
        try:
            encoded = structs.encoded_each(page) if each else structs.encoded(page)
        except Exception:
            # A bug in this module must not change an answer: the Python projector takes over.
            self.projectors.stats.failures += 1
            log.exception("projection_failed", path=path.as_list())
            return None
        if encoded is not None:
            self.projectors.stats.encoded += 1
            self.projectors.stats.encoded_items += len(page.page.items)
        return encoded

    def _usable_projector(
        self, parent_type: GraphQLObjectType, field_details_list: FieldDetailsList, path: Path
    ) -> Projector | None:
        """The list's projector; None (counted) when its selection is not projectable."""
        projector = self._projector(parent_type, field_details_list, path)
        if projector is None:
            self.projectors.stats.declined += 1
        return projector

    def _run_projector(
        self, projector: Projector, path: Path, page: PageResult
    ) -> list[dict[str, Any]] | None:
        """The Python projector's projection of ``page``; None (counted) when it hands the
        page back or fails."""
        stats = self.projectors.stats
        try:
            projection = projector.project(page)
        except CannotProject:
            stats.fallbacks += 1
            return None
        except Exception:
            # A bug in this module must not change an answer: normal execution takes over.
            stats.failures += 1
            log.exception("projection_failed", path=path.as_list())
            return None
        stats.count_items(projection)
        return projection.items

    def _stream(
        self,
        parent_type: GraphQLObjectType,
        source: PhoneNumberConnection,
        field_details_list: FieldDetailsList,
        path: Path,
    ) -> list[dict[str, Any]] | None:
        """The initial items of a connection list under an active ``@stream``, its rest
        registered as a stream of projected chunks; None: normal execution does it."""
        result = source.result
        if not isinstance(result, PageResult | StreamedWindow):
            return None
        try:
            usage = self.get_stream_usage(field_details_list, path)
        except Exception:  # a bad initialCount: normal execution reports it on the field
            return None
        if usage is None:
            return None
        head = result if isinstance(result, PageResult) else result.head()
        initial_count = usage.initial_count
        if initial_count > len(head.page.items) and isinstance(result, StreamedWindow):
            return None  # the initial payload would wait on the walk: normal execution
        projector = self._usable_projector(parent_type, field_details_list, path)
        if projector is None:
            return None
        projected = self._chunk_items(projector, head, path)
        if projected is None:
            return None
        tail = result.tail() if isinstance(result, StreamedWindow) else None
        rest = [_stream_item(item) for item in projected[initial_count:]]
        if tail is not None and not head.page.has_more:
            tail = None  # the first chunk is the whole window
        if not rest and tail is None:
            return projected  # nothing left to stream
        chunks = ProjectedChunks(
            rest, tail, self._chunk_completer(parent_type, projector, usage, path), path, usage
        )
        self.streams.append(ItemStream(path, usage.label, cast("Any", chunks), initial_count))
        self.projectors.stats.streamed += 1
        return projected[:initial_count]

    def _chunk_completer(
        self, parent_type: GraphQLObjectType, projector: Projector, usage: StreamUsage, path: Path
    ) -> Callable[[PageResult, int], Awaitable[list[WorkResult]]]:
        """How a later chunk becomes stream items: projected, or (when the projector hands
        it back) completed item by item as graphql-core completes a stream item."""
        stats = self.projectors.stats
        field_details_list = usage.field_details_list
        field_name = field_details_list[0].node.name.value
        field_def = parent_type.fields[field_name]

        async def complete(chunk: PageResult, index: int) -> list[WorkResult]:
            projected = self._chunk_items(projector, chunk, path)
            if projected is not None:
                stats.chunks += 1
                return [_stream_item(item) for item in projected]
            info = self.build_resolve_info(
                field_def, [d.node for d in field_details_list], parent_type, path
            )
            items = chunk.nodes() if field_name == "nodes" else chunk.edges()
            return [
                await self._complete_item(info, field_details_list, path.add_key(at, None), item)
                for at, item in enumerate(items, start=index)
            ]

        return complete

    def _chunk_items(self, projector: Projector, chunk: PageResult, path: Path) -> list[Any] | None:
        """A streamed chunk's items: each its JSON encoded in C when the answer is encoded with
        orjson and the chunk is the upstream's bytes, else the Python projector's dicts; None
        when neither projects it."""
        if self._encoded_lists:
            each = self._encoded(projector, chunk, path, each=True)
            if each is not None:
                return [orjson.Fragment(item) for item in each]
        return self._run_projector(projector, path, chunk)

    async def _complete_item(
        self,
        info: GraphQLResolveInfo[Any],
        field_details_list: FieldDetailsList,
        item_path: Path,
        item: Any,
    ) -> WorkResult:
        item_type = _item_type(info.return_type)
        sub_executor = self.create_sub_executor()
        completed = sub_executor.complete_stream_item(
            item_path, item, field_details_list, info, item_type
        )
        if self.is_awaitable(completed):
            return cast("WorkResult", await completed)
        return cast("WorkResult", completed)

    def _projector(
        self, parent_type: GraphQLObjectType, field_details_list: FieldDetailsList, path: Path
    ) -> Projector | None:
        """The cached projector of this field here, compiled on first sight. A list's own
        ``@stream`` only says how it is delivered, so it is compiled without it: a streamed
        and an unstreamed list of the same selection share one projector."""
        cache = self.projectors
        key = self._projector_key(path)
        projector = cache.projector(key) if key is not None else Undefined
        if isinstance(projector, UndefinedType):
            selection = _without_stream(field_details_list)
            projector = compile_projector(self, self.root_table, parent_type, selection)
            if projector is not None:
                walker = SelectionWalker(self, self.root_table)
                projector.structs = compile_struct_projector(walker, parent_type, selection)
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


def _stream_item(item: Any) -> WorkResult:
    return WorkResult(StreamItemValue(item, None))


def _item_type(list_type: GraphQLOutputType) -> GraphQLOutputType:
    inner = list_type.of_type if isinstance(list_type, GraphQLNonNull) else list_type
    assert isinstance(inner, GraphQLList)
    return cast("GraphQLOutputType", inner.of_type)


def _without_stream(field_details_list: FieldDetailsList) -> FieldDetailsList:
    """The field details with the list's own ``@stream`` removed (other directives kept)."""
    stripped: FieldDetailsList = []
    for details in field_details_list:
        node = details.node
        directives = node.directives or ()
        if any(directive.name.value == _STREAM for directive in directives):
            kept = tuple(d for d in directives if d.name.value != _STREAM)
            fields = {key: getattr(node, key) for key in node.keys if key != "directives"}
            node = FieldNode(**fields, directives=kept)
        stripped.append(FieldDetails(node, details.defer_usage, details.fragment_variable_values))
    return stripped


class ProjectedChunks:
    """The rest of a streamed list as graphql-core's stream queue (``StreamQueue``: batches,
    is_stopped, abort): the rest of the first chunk as one batch, then one batch per later
    chunk, asked for only when graphql-core wants the next batch (the consumer took the
    last). Aborting closes the walk."""

    def __init__(
        self,
        first: list[WorkResult],
        tail: AsyncIterator[PageResult] | None,
        complete: Callable[[PageResult, int], Awaitable[list[WorkResult]]],
        path: Path,
        usage: StreamUsage,
    ) -> None:
        self._first = first
        self._tail = tail
        self._complete = complete
        self._path = path
        self._usage = usage
        self._stopped = False
        self._batches: Any = None

    def batches(self) -> AsyncIterator[Sequence[WorkResult]]:
        self._batches = self._produce()
        return cast("AsyncIterator[Sequence[WorkResult]]", self._batches)

    async def _produce(self) -> AsyncIterator[Sequence[WorkResult]]:
        tail = self._tail
        index = self._usage.initial_count
        try:
            first, self._first = self._first, []
            self._stopped = tail is None
            if first:
                index += len(first)
                yield first
            while tail is not None:
                try:
                    chunk = await anext(tail)
                except StopAsyncIteration:
                    self._stopped = True
                    return
                except Exception as failure:
                    raise self._located(failure) from failure
                # Peeking ahead: the last batch carries the stream's completion with it.
                self._stopped = not chunk.page.has_more
                batch = await self._complete(chunk, index)
                index += len(batch)
                if batch:
                    yield batch
                if self._stopped:
                    return
        finally:
            await self._close_tail()

    def _located(self, failure: Exception) -> GraphQLError:
        nodes = [details.node for details in self._usage.field_details_list]
        return located_error(failure, nodes, self._path.as_list())

    def is_stopped(self) -> bool:
        return self._stopped

    def abort(self, reason: BaseException | None = None) -> Awaitable[None] | None:
        """Stop: close the batches (and so the walk) unless graphql-core is inside them right
        now, in which case cancelling its pump closes them."""
        batches = self._batches
        if batches is None:
            return self._close_tail() if self._tail is not None else None
        if batches.ag_running:
            return None
        return cast("Awaitable[None]", batches.aclose())

    async def _close_tail(self) -> None:
        tail, self._tail = self._tail, None
        aclose = getattr(tail, "aclose", None)
        if aclose is not None:
            with suppress(Exception):
                await aclose()


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

"""The projection fast path in C: a selection on a list of phone numbers compiled once into
msgspec ``Struct`` types that decode an upstream body straight into the selected fields, from
which the response list is encoded, with no Python object per value and no dict per item.

What is compiled
    The selection is read by the same ``SelectionWalker`` the Python projector uses (graphql-
    core's own field collection: aliases, merged keys, fragments, ``@skip``/``@include``), so
    the two agree on what is selected and in what order. Each object of it (``PhoneNumber``,
    its ``location`` and ``owner``) becomes a Struct whose fields are the selected upstream
    keys, each typed so that only a value its reading rule reads *as itself* decodes:

    ========================  ===============================================================
    rule                      decodes (anything else fails the body's typed decode)
    ========================  ===============================================================
    ``Text``                  a non-empty string; null or missing where the rule reads null
    ``Flag``                  a boolean; missing where the rule's default stands in
    ``EnumOrUnknown``         one of the enum's values; missing where the default stands in
    ``Instant``               a string or null, then read and rendered by the rule and the
                              schema's ``DateTime`` (Python, only for the values present)
    ``Nested``                an object (with its ``identified_by`` key a non-empty string)
    ``__typename``            absent, or exactly the type's name (a constant)
    ========================  ===============================================================

    A missing key decodes to the rule's reading of a missing value (the Struct field's
    default), a non-null field without one is required. When every response key is the
    upstream key it reads, once each (no alias, nothing read only to check it), the decoded
    Structs are the response and are encoded as they are; otherwise a second set of Structs
    with the response keys is filled from them by ``msgspec.convert`` (in C as well).

Why the answer is the same
    A body decodes only if every selected value is one its rule returns unchanged, so the
    encoded list is exactly what the Python projector (and graphql-core's completion) renders
    for it; a body with any other value fails its typed decode as a whole and the page takes
    the Python projector, which reads value by value, unchanged. Both decodes use msgspec's
    parser (``domain.upstream_items``), and msgspec's string escaping is orjson's, so the
    bytes are the same. ``tests/test_projection.py`` holds the three paths equal on random
    selections over random, malformed and hostile upstream bodies.

What it serves
    ``nodes`` lists, and ``edges`` lists whose edges select one ``node`` beside any ``cursor``
    and ``__typename`` keys: the nodes are encoded as above, and each edge's JSON is laid
    around its node's from a template of the edge's keys in response order, with the cursor
    ``PageResult.cursor`` makes for its position (a fan-out's merged cursor too), written by
    orjson. In whole answers and in ``@stream`` chunks (one encoded item each), for root fields
    and entities, fresh or from the page cache: every page whose items are still the
    upstream's bytes (``UpstreamItems``). A merged fan-out list and an entity's share of a
    walk are too: they pick items from the walked bodies. A body decoded once is kept with its
    body for the request (``UpstreamBody.typed``), so pages sharing it decode it once per
    selection.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson
from graphql import (
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLID,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLString,
    get_named_type,
)
from graphql.execution.collect_fields import FieldDetailsList

from gateway.domain.connection import PageResult
from gateway.domain.reader import (
    EnumOrUnknown,
    Flag,
    Instant,
    Nested,
    ObjectTable,
    Reading,
    Text,
)
from gateway.domain.records import PhoneNumberEdge
from gateway.domain.upstream_items import (
    DECODE_FAILURES,
    UpstreamBody,
    UpstreamItems,
    at_positions,
)
from gateway.execution.projection_compiler import (
    NotProjectable,
    SelectionWalker,
    describes,
    list_item_type,
)

NonEmptyText = Annotated[str, msgspec.Meta(min_length=1)]
_REQUIRED: Final = msgspec.NODEFAULT
_DATETIME_SCALAR: Final = "DateTime"


class _Unreadable(Exception):
    """A body the typed decode does not read (memoised as such on the body)."""


@dataclass(slots=True)
class _Entry:
    """One field of a compiled object: its response key, the upstream key it reads, the
    decoded Struct's attribute, its type and default, and what it needs besides."""

    response_key: str
    upstream_key: str | None  # None: ``__typename`` (a constant)
    attribute: str
    annotation: Any
    default: Any = _REQUIRED
    child: _Object | None = None
    hidden: bool = False  # read only to check it (``identified_by``); not in the response


@dataclass(slots=True)
class _Object:
    """A compiled object: its type's name and its entries in response order."""

    name: str
    entries: list[_Entry] = field(default_factory=list)

    @property
    def direct(self) -> bool:
        """Whether the decoded Struct is the response: keys read as they answer, once each."""
        return all(
            not entry.hidden
            and (entry.upstream_key or "__typename") == entry.response_key
            and (entry.child is None or entry.child.direct)
            for entry in self.entries
        )


class RenderedInstant(str):
    """An ``Instant``'s text as the schema's ``DateTime`` renders it: what a body's time
    decodes to (``dec_hook``: the rule reads it, the scalar renders it), only where one is
    present. One subclass per compiled field, so the hook knows the field's rendering."""

    __slots__ = ()


def _encode_hook(value: object) -> str:
    if isinstance(value, RenderedInstant):
        return str(value)
    # Unreachable: the compiled Structs hold nothing else msgspec cannot encode itself.
    raise TypeError(f"no JSON for a {type(value).__name__} in a compiled Struct")


# Everything a compiled Struct holds is JSON msgspec encodes itself, but a rendered time.
_ENCODER: Final = msgspec.json.Encoder(enc_hook=_encode_hook)


class StructProjector:
    """A compiled selection: encodes a page's ``nodes`` (or ``edges``) from its upstream
    bodies, or answers None for a page it does not read (the Python projector's)."""

    __slots__ = ("_convert_to", "_decoder", "_edge")

    def __init__(
        self,
        decoder: msgspec.json.Decoder[Any],
        convert_to: Any,
        edge: EdgeTemplate | None = None,
    ) -> None:
        self._decoder = decoder
        self._convert_to = convert_to  # list[output Struct], or None: the decoded are
        self._edge = edge  # the list is of edges around these nodes

    def as_edges(self, edge: EdgeTemplate) -> StructProjector:
        """The same nodes, each laid into an edge."""
        return StructProjector(self._decoder, self._convert_to, edge)

    def encoded(self, result: PageResult) -> bytes | None:
        """The list's JSON, or None when the items are not all typed-readable bytes."""
        if self._edge is not None:
            each = self.encoded_each(result)
            return None if each is None else b"[" + b",".join(each) + b"]"
        selected = self._selected(result.page.items)
        return None if selected is None else _ENCODER.encode(selected)

    def encoded_each(self, result: PageResult) -> list[bytes] | None:
        """Each item's JSON (a streamed chunk's items), or None as ``encoded``."""
        selected = self._selected(result.page.items)
        if selected is None:
            return None
        # One encoding pass; JSON text has no raw line break, so the lines are the items.
        nodes = _ENCODER.encode_lines(selected).split(b"\n")[:-1]
        if self._edge is None:
            return nodes
        return self._edge.around(nodes, result.cursor, result.window.start)

    def _selected(self, items: Sequence[Any]) -> list[Any] | None:
        if not isinstance(items, UpstreamItems):
            return None
        try:
            picked = [
                value for body, at in items.runs for value in at_positions(self._typed(body), at)
            ]
        except _Unreadable:
            return None
        if self._convert_to is not None:
            converted: list[Any] = msgspec.convert(picked, self._convert_to, from_attributes=True)
            return converted
        return picked

    def _typed(self, body: UpstreamBody) -> list[Any]:
        memo = body.typed
        if memo is not None and memo[0] is self._decoder:
            if memo[1] is None:
                raise _Unreadable
            return memo[1]
        try:
            decoded: list[Any] = self._decoder.decode(body.content).phoneNumbers or []
        except DECODE_FAILURES:
            body.typed = (self._decoder, None)
            raise _Unreadable from None
        body.typed = (self._decoder, decoded)
        return decoded


_CURSOR: Final = 0
_NODE: Final = 1


class EdgeTemplate:
    """An edge's JSON with holes for its cursor and its node's JSON: the edge's response keys
    in order, each a ``cursor`` (the position's), the ``node`` or a constant ``__typename``."""

    __slots__ = ("_format", "_holes", "_needs_cursor")

    def __init__(self, parts: Sequence[tuple[str, int | str]]) -> None:
        pieces: list[bytes] = []
        holes: list[int] = []
        for response_key, part in parts:
            # orjson escapes the names as JSON does (a GraphQL name needs none; % is doubled
            # for the format below, as a name cannot hold one either).
            key = orjson.dumps(response_key).replace(b"%", b"%%")
            if isinstance(part, str):
                pieces.append(key + b":" + orjson.dumps(part).replace(b"%", b"%%"))
            else:
                pieces.append(key + b":%b")
                holes.append(part)
        self._format = b"{" + b",".join(pieces) + b"}"
        # The format's arguments, in its holes' order, from (cursor JSON, node JSON).
        pick = operator.itemgetter(*holes)
        self._holes: Callable[[tuple[bytes, bytes]], tuple[bytes, ...]] = (
            pick if len(holes) > 1 else lambda pair: (pick(pair),)
        )
        self._needs_cursor = _CURSOR in holes

    def around(self, nodes: list[bytes], cursor: Callable[[int], str], start: int) -> list[bytes]:
        template, holes = self._format, self._holes
        if not self._needs_cursor:
            return [template % holes((b"", node)) for node in nodes]
        dumps = orjson.dumps  # a cursor is base64url text, but its JSON is orjson's to write
        return [
            template % holes((dumps(cursor(position)), node))
            for position, node in enumerate(nodes, start)
        ]


def compile_struct_projector(
    walker: SelectionWalker,
    parent_type: GraphQLObjectType,
    field_details_list: FieldDetailsList,
) -> StructProjector | None:
    """The struct projector of the ``nodes`` or ``edges`` list ``field_details_list``
    selects, or None when the selection is not one it reads (the Python projector's, or
    normal execution's)."""
    field_name = field_details_list[0].node.name.value
    list_field = parent_type.fields.get(field_name)
    if field_name not in ("nodes", "edges") or list_field is None:
        return None
    try:
        walker.check_list(list_field, field_details_list)
        item_type = list_item_type(list_field.type)
        if field_name == "nodes":
            return _StructCompiler(walker).compile(item_type, field_details_list)
        return _compile_edges(walker, item_type, field_details_list)
    except (NotProjectable, TypeError, ValueError):
        return None


def _compile_edges(
    walker: SelectionWalker, edge_type: GraphQLObjectType, field_details_list: FieldDetailsList
) -> StructProjector:
    """Edges selecting one ``node`` (its selection compiled as a ``nodes`` list's) beside
    ``cursor`` and ``__typename`` keys; anything else is the Python projector's."""
    if not describes(edge_type, PhoneNumberEdge):
        raise NotProjectable
    parts: list[tuple[str, int | str]] = []
    nodes: StructProjector | None = None
    for selected in walker.selected(edge_type, field_details_list):
        if selected.field is None:
            parts.append((selected.response_key, edge_type.name))
        elif selected.attribute == "cursor":
            if get_named_type(selected.field.type) is not GraphQLString:
                raise NotProjectable
            parts.append((selected.response_key, _CURSOR))
        elif selected.attribute == "node" and nodes is None:
            node_type = selected.field.type
            if not isinstance(node_type, GraphQLNonNull):
                raise NotProjectable  # a null node is normal execution's to render
            named = get_named_type(node_type)
            if not isinstance(named, GraphQLObjectType):
                raise NotProjectable
            nodes = _StructCompiler(walker).compile(named, selected.details)
            parts.append((selected.response_key, _NODE))
        else:
            raise NotProjectable  # a second node alias, or a field the edge does not have
    if nodes is None:
        raise NotProjectable
    return nodes.as_edges(EdgeTemplate(parts))


class _StructCompiler:
    def __init__(self, walker: SelectionWalker) -> None:
        self.walker = walker
        self._names = itertools.count()
        self._renders: dict[type, Callable[[Any], str | None]] = {}

    def compile(
        self, item_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> StructProjector:
        root = self._object(item_type, self.walker.root_table, field_details_list)
        direct = root.direct
        decoded = self._decoded_struct(root, direct)
        listed: Any = list[decoded]  # type: ignore[valid-type]
        envelope = msgspec.defstruct("Envelope", [("phoneNumbers", listed | None, None)], gc=False)
        renders = self._renders

        def read_instant(kind: type, value: Any) -> Any:
            render = renders.get(kind)
            if render is None:
                # Unreachable (every custom type here is a field's RenderedInstant); msgspec
                # turns a TypeError into a ValidationError: the Python projector's page.
                raise TypeError(f"no reading for {kind.__name__}")
            rendered = render(value)
            if rendered is None:
                raise ValueError("not a time the rule reads")  # the Python projector's null
            return kind(rendered)

        decoder = msgspec.json.Decoder(envelope, dec_hook=read_instant)
        convert_to = None if direct else list[self._output_struct(root)]  # type: ignore[misc]
        return StructProjector(decoder, convert_to)

    # -- the plan -----------------------------------------------------------------------------

    def _object(
        self, graphql_type: GraphQLObjectType, table: ObjectTable, details: FieldDetailsList
    ) -> _Object:
        if not describes(graphql_type, table.type):
            raise NotProjectable
        rules = {rule.attribute: rule for rule in table.fields}
        planned = _Object(graphql_type.name)
        read: set[str] = set()
        for selected in self.walker.selected(graphql_type, details):
            if selected.field is None:
                constant = graphql_type.name
                planned.entries.append(
                    _Entry(
                        selected.response_key,
                        None,
                        self._attribute(),
                        Literal[constant],
                        constant,
                    )
                )
                continue
            rule = rules.get(selected.attribute)
            if rule is None or rule.key in read:
                raise NotProjectable  # outside the tables, or one key read twice (aliases)
            read.add(rule.key)
            planned.entries.append(
                self._entry(
                    selected.response_key, rule.key, selected.field, rule.reading, selected.details
                )
            )
        identified_by = table.identified_by
        for entry in planned.entries:
            if identified_by is not None and entry.upstream_key == identified_by:
                # The object exists only with this key a non-empty text: required as such.
                entry.annotation, entry.default = NonEmptyText, _REQUIRED
                break
        else:
            if identified_by is not None:
                planned.entries.append(
                    _Entry("", identified_by, self._attribute(), NonEmptyText, hidden=True)
                )
        return planned

    def _entry(
        self,
        response_key: str,
        key: str,
        graphql_field: GraphQLField,
        reading: Reading,
        details: FieldDetailsList,
    ) -> _Entry:
        non_null = isinstance(graphql_field.type, GraphQLNonNull)
        named = get_named_type(graphql_field.type)
        attribute = self._attribute()
        if isinstance(reading, Text):
            if named is not GraphQLString and named is not GraphQLID:
                raise NotProjectable
            return self._leaf(response_key, key, attribute, NonEmptyText, reading.default, non_null)
        if isinstance(reading, Flag):
            if named is not GraphQLBoolean:
                raise NotProjectable
            return self._leaf(response_key, key, attribute, bool, reading.default, non_null)
        if isinstance(reading, EnumOrUnknown):
            if not isinstance(named, GraphQLEnumType):
                raise NotProjectable
            values: list[str] = []
            for member in reading.enum:
                # Rendered by the schema's enum as its value: then the value is the answer.
                try:
                    rendered = named.coerce_output_value(member)
                except GraphQLError as exc:
                    raise NotProjectable from exc
                if type(member.value) is not str or rendered != member.value:
                    raise NotProjectable
                values.append(member.value)
            default = None if reading.default is None else reading.default.value
            return self._leaf(
                response_key, key, attribute, Literal[tuple(values)], default, non_null
            )
        if isinstance(reading, Instant):
            if (
                non_null
                or not isinstance(named, GraphQLScalarType)
                or named.name != _DATETIME_SCALAR
            ):
                raise NotProjectable
            serialize = named.serialize
            read_instant = reading.read

            def render(value: Any) -> str | None:
                moment = read_instant(value)
                return None if moment is None else str(serialize(moment))

            kind = type(f"RenderedInstant{attribute}", (RenderedInstant,), {"__slots__": ()})
            self._renders[kind] = render
            return _Entry(response_key, key, attribute, kind | None, None)
        if isinstance(reading, Nested):
            if not isinstance(named, GraphQLObjectType):
                raise NotProjectable
            child = self._object(named, reading.table, details)
            entry = _Entry(response_key, key, attribute, None, child=child)
            if reading.always:
                entry.default = _ALWAYS  # an empty object when missing: filled in below
            elif not non_null:
                entry.default = None
            return entry
        raise NotProjectable  # Count, or a rule this compiler does not know

    @staticmethod
    def _leaf(
        response_key: str, key: str, attribute: str, kind: Any, default: Any, non_null: bool
    ) -> _Entry:
        if default is None:
            if non_null:
                return _Entry(response_key, key, attribute, kind)  # required
            return _Entry(response_key, key, attribute, kind | None, None)
        return _Entry(response_key, key, attribute, kind, default)

    def _attribute(self) -> str:
        return f"f{next(self._names)}"

    # -- the Structs --------------------------------------------------------------------------

    def _decoded_struct(self, planned: _Object, direct: bool) -> type[msgspec.Struct]:
        """The Struct a body's object decodes into: its upstream keys (in response order, so
        that when ``direct`` it is the response as it stands, ``__typename`` included)."""
        fields: list[tuple[str, Any, Any]] = []
        rename: dict[str, str] = {}
        for entry in planned.entries:
            if entry.upstream_key is None and not direct:
                continue  # a constant of the response Struct, never read from the body
            annotation, default = self._typed(entry, direct)
            fields.append((entry.attribute, annotation, default))
            rename[entry.attribute] = entry.upstream_key or "__typename"
        return _struct(planned.name, fields, rename)

    def _typed(self, entry: _Entry, direct: bool) -> tuple[Any, Any]:
        if entry.child is None:
            return entry.annotation, entry.default
        child = self._decoded_struct(entry.child, direct)
        if entry.default is _ALWAYS:
            if any(inner.default is _REQUIRED for inner in entry.child.entries):
                raise NotProjectable  # no empty object to stand in for a missing one
            return child, msgspec.field(default_factory=child)
        if entry.default is None:
            return child | None, None
        return child, _REQUIRED

    def _output_struct(self, planned: _Object) -> type[msgspec.Struct]:
        """The response's Struct: the response keys in order, filled from the decoded one by
        attribute (a constant ``__typename`` by its default)."""
        fields: list[tuple[str, Any, Any]] = []
        rename: dict[str, str] = {}
        for entry in planned.entries:
            if entry.hidden:
                continue
            annotation: Any
            if entry.child is None:
                # Decoded and checked already: taken as it is (a default "" is no text
                # the decoded type would accept, and need not be).
                annotation, default = Any, entry.default
            else:
                child = self._output_struct(entry.child)
                if entry.default is _ALWAYS:
                    annotation, default = child, msgspec.field(default_factory=child)
                elif entry.default is None:
                    annotation, default = child | None, None
                else:
                    annotation, default = child, _REQUIRED
            fields.append((entry.attribute, annotation, default))
            rename[entry.attribute] = entry.response_key
        return _struct(planned.name + "Answer", fields, rename)


_ALWAYS: Final = object()  # a Nested(always=True) entry: an empty object stands in


def _struct(
    name: str, fields: list[tuple[str, Any, Any]], rename: dict[str, str]
) -> type[msgspec.Struct]:
    # kw_only: required and defaulted fields in any order (the response's); gc=False: these
    # hold only text, booleans, None and each other, never a cycle.
    return msgspec.defstruct(
        name,
        [
            (attribute, annotation) if default is _REQUIRED else (attribute, annotation, default)
            for attribute, annotation, default in fields
        ],
        kw_only=True,
        gc=False,
        rename=rename,
    )

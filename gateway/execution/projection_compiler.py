"""The projection compiler: a selection on a list of phone numbers, compiled once into a Python
function that builds the response dicts straight from the raw upstream items (graphql-jit's
idea). Pure: it reads the schema, the reader's tables and a collected selection, and needs
from the executor only its ``collect_subfields``; ``projecting_executor`` runs what it makes.

What is compiled
    The selection is collected by the executor's own ``collect_subfields`` (the function normal
    completion uses), so aliases, merging of equal response keys, named and inline fragments with
    their type conditions, and ``@skip``/``@include`` with literals or variables come out exactly
    as graphql-core would have them, in the same order. Each field is then looked up in the
    reader's table (``PHONE_NUMBER`` with its nested ``LOCATION`` and ``OWNER``): the generated
    code reads the upstream key with the same reading rule (``Text``, ``Flag``, ``EnumOrUnknown``,
    ``Nested``), inlining only the common case and calling the rule's own ``read`` for anything
    else, and serialises the value as the GraphQL type would (enum names are taken from the
    schema's enum type once, at compile time). ``__typename`` is a constant. A ``nodes`` list
    first tries each item with one guard that every value it reads already reads as itself
    (``_fast_path``) and builds the response dict straight from those values; an item failing
    the guard goes through the per-value code above, unchanged. A projector says how many of
    a page's items took the per-value code (``Projection.per_value``), counted on that path
    only, so a guard that stopped matching well-formed items is seen, not just slower.

Why the answer is the same
    * A selection is projectable only when every field in it is a plain field in the tables or
      ``__typename`` (and ``cursor``/``node`` on an edge). A field with its own resolver
      (``NumberOwner.person``, ``Location.phoneNumbers``, ``Location.numberCounts``), anything
      outside the tables, ``@defer``/``@stream``, fragment arguments, ``is_type_of`` checks,
      strawberry field extensions or permission classes (on the list or on any selected field),
      or a scalar other than graphql-core's own ``String``, ``ID`` and ``Boolean`` and the
      schema's ``DateTime`` make it not projectable (``compile_projector`` answers None), and the
      field runs on the normal path. A ``DateTime`` is rendered by the schema's own scalar
      ``serialize`` (the function normal completion calls), so its text is the same by
      construction.
    * Values are read by the reader's own rules, so the two paths cannot disagree on data; the
      guard passes only values each rule returns unchanged (and enum values by the same table).
    * Nothing is rendered that graphql-core would turn into an error: where the compiled code
      meets a null in a non-null position (the tables make that impossible today, but the guard
      is generated wherever a rule could yield null), it raises ``CannotProject`` and the whole
      list falls back to normal execution, which produces the nulls, the propagation and the
      errors with their paths. The fast path itself never produces an error.
    * ``tests/test_projection.py`` does not take this on trust: a property test runs random
      selections against random (malformed) upstream items on both paths and compares the
      answers byte for byte, errors included.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from graphql import (
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLField,
    GraphQLID,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLString,
    get_named_type,
)
from graphql.execution.collect_fields import CollectedFields, FieldDetails, FieldDetailsList

from gateway.domain.connection import PageResult
from gateway.domain.reader import (
    TEXT,
    EnumOrUnknown,
    Flag,
    Instant,
    Nested,
    ObjectTable,
    Reading,
    Text,
)
from gateway.domain.records import PhoneNumberEdge

if TYPE_CHECKING:
    from gateway.execution.struct_projection import StructProjector


class Projection(NamedTuple):
    """A projected page: the list's response dicts, and how many of them the per-value code
    read (items failing the well-formed guard; every item where the selection has no guard,
    as ``edges`` and selections the guard cannot cover). Counted on the per-value path only,
    so the executor's stats show a fast path silently no longer taken, at no cost to an item
    the guard passes."""

    items: list[dict[str, Any]]
    per_value: int


class Projector:
    """A compiled selection: called on a page, its response dicts; ``project`` also says how
    many items took the per-value path. ``structs`` is the same selection compiled for pages
    still in the upstream's bytes (``struct_projection``), when it reads them."""

    __slots__ = ("project", "structs")

    def __init__(self, project: Callable[[PageResult], Projection]) -> None:
        self.project = project
        self.structs: StructProjector | None = None

    def __call__(self, result: PageResult) -> list[dict[str, Any]]:
        return self.project(result).items


# The strawberry definition a GraphQL type or field was built from (its converter's backref).
_DEFINITION: Final = "strawberry-definition"
# The only directives a projectable field may carry (collect_subfields applies them).
INCLUSION_DIRECTIVES: Final = frozenset({"skip", "include"})
_DATETIME_SCALAR: Final = "DateTime"  # strawberry's datetime scalar, by its schema name


class CannotProject(Exception):
    """Raised by a compiled projector for a value it cannot render exactly."""


class _NoFastPath(Exception):
    """The selection reads a field the well-formed item's guard does not cover."""


class NotProjectable(Exception):
    """The selection needs something only normal execution does."""


class SubfieldCollector(Protocol):
    """What the compiler needs of the executor: graphql-core's own field collection."""

    def collect_subfields(
        self, return_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> CollectedFields: ...


def compile_projector(
    collector: SubfieldCollector,
    root_table: ObjectTable,
    parent_type: GraphQLObjectType,
    field_details_list: FieldDetailsList,
) -> Projector | None:
    """The projector of the list field ``field_details_list`` selects on ``parent_type``
    (``nodes`` or ``edges`` of a connection), or None when the selection is not projectable.
    ``root_table`` is the reader table of the list's ``PhoneNumber``."""
    field_name = field_details_list[0].node.name.value
    field = parent_type.fields.get(field_name)
    if field is None:
        return None
    try:
        return ProjectorCompiler(collector, root_table).compile(
            field_name, field, field_details_list
        )
    except NotProjectable:
        return None


def describes(graphql_type: GraphQLObjectType, record: type[Any]) -> bool:
    """Whether ``graphql_type`` is the schema's description of the domain ``record`` (the
    schema types are named as the records they describe, ``schema.types``)."""
    return graphql_type.name == record.__name__


def _field_definition(field: GraphQLField) -> Any:
    """The strawberry field behind ``field``; one with field extensions or permission classes
    (work that wraps its resolver) is not projectable."""
    definition = (field.extensions or {}).get(_DEFINITION)
    if definition is None:
        raise NotProjectable
    if getattr(definition, "extensions", None) or getattr(definition, "permission_classes", None):
        raise NotProjectable
    return definition


def _may_read_null(reading: Reading) -> bool:
    if isinstance(reading, Nested):
        return not reading.always
    if isinstance(reading, Text | Flag | EnumOrUnknown):
        return reading.default is None
    return True


def list_item_type(field_type: GraphQLOutputType) -> GraphQLObjectType:
    inner = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
    if not isinstance(inner, GraphQLList):
        raise NotProjectable
    item = inner.of_type
    item = item.of_type if isinstance(item, GraphQLNonNull) else item
    if not isinstance(item, GraphQLObjectType):
        raise NotProjectable
    return item


class Selected(NamedTuple):
    """One response key of a collected selection: ``field`` None for ``__typename``."""

    response_key: str
    name: str
    field: GraphQLField | None
    attribute: str  # the field's Python attribute ("" for ``__typename``)
    details: FieldDetailsList


class SelectionWalker:
    """A collected selection read the way a compiler needs it: the response keys in
    graphql-core's order, each a plain field of the tables' types (a field with its own
    resolver, extensions, ``@defer``/``@stream``, or an unknown directive: ``NotProjectable``).
    Shared by the two compilers (``ProjectorCompiler`` here, ``struct_projection``)."""

    def __init__(self, collector: SubfieldCollector, root_table: ObjectTable) -> None:
        self.collector = collector
        self.root_table = root_table

    @staticmethod
    def _check_details(details: FieldDetails) -> None:
        """@defer, @stream, fragment arguments and unknown directives: normal execution."""
        if details.defer_usage is not None or details.fragment_variable_values is not None:
            raise NotProjectable
        for directive in details.node.directives or ():
            if directive.name.value not in INCLUSION_DIRECTIVES:
                raise NotProjectable

    def check_list(self, field: GraphQLField, field_details_list: FieldDetailsList) -> None:
        """The list field itself: its details and its own resolver's extensions."""
        for details in field_details_list:
            self._check_details(details)
        _field_definition(field)

    def _subfields(
        self, graphql_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> dict[str, FieldDetailsList]:
        if graphql_type.is_type_of is not None:
            raise NotProjectable
        grouped, new_defer_usages, _ = self.collector.collect_subfields(
            graphql_type, field_details_list
        )
        if new_defer_usages:
            raise NotProjectable
        for details_list in grouped.values():
            for details in details_list:
                self._check_details(details)
        return grouped

    def selected(
        self, graphql_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> list[Selected]:
        """The selected fields of ``graphql_type`` in collected order."""
        found: list[Selected] = []
        for response_key, details_list in self._subfields(graphql_type, field_details_list).items():
            name = details_list[0].node.name.value
            if name == "__typename":
                found.append(Selected(response_key, name, None, "", details_list))
                continue
            field, attribute = self._plain_field(graphql_type, name)
            found.append(Selected(response_key, name, field, attribute, details_list))
        return found

    def _plain_field(self, graphql_type: GraphQLObjectType, name: str) -> tuple[GraphQLField, str]:
        """The field and its Python attribute; only fields without their own resolver."""
        field = graphql_type.fields.get(name)
        if field is None:
            raise NotProjectable
        definition = _field_definition(field)
        if getattr(definition, "base_resolver", None) is not None:
            raise NotProjectable
        return field, str(definition.python_name)


class ProjectorCompiler(SelectionWalker):
    """Generates one projector's Python source from a collected selection and the tables."""

    def __init__(self, collector: SubfieldCollector, root_table: ObjectTable) -> None:
        super().__init__(collector, root_table)
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"Mapping": Mapping, "CannotProject": CannotProject}
        self._counter = itertools.count()

    def compile(
        self, field_name: str, field: GraphQLField, field_details_list: FieldDetailsList
    ) -> Projector:
        self.check_list(field, field_details_list)  # its resolver may have extensions too
        item_type = list_item_type(field.type)
        projection = self._bind(Projection, "projection")
        self._line(0, "def project(result):")
        self._line(1, "out = []")
        self._line(1, "append = out.append")
        # Every item takes the per-value code unless a guard is emitted, which counts those
        # that fail it (one increment on the slow path only).
        per_value = "len(out)"
        if field_name == "nodes":
            self._line(1, "per_value = 0")
            self._line(1, "for item in result.page.items:")
            if self._fast_path(item_type, field_details_list):
                self._line(2, "per_value += 1")
                per_value = "per_value"
            entry = self._object(item_type, self.root_table, field_details_list, "item", 2)
        else:
            self._line(1, "cursor = result.cursor")
            self._line(1, "position = result.window.start - 1")
            self._line(1, "for item in result.page.items:")
            self._line(2, "position += 1")
            entry = self._edge(item_type, field_details_list, "item", 2)
        self._line(2, f"append({entry})")
        self._line(1, f"return {projection}(out, {per_value})")
        # Everything bound becomes a keyword default: a local (LOAD_FAST) in the item loop.
        bound = ", ".join(f"{name}={name}" for name in self.namespace)
        self.lines[0] = f"def project(result, *, {bound}):"
        source = "\n".join(self.lines) + "\n"
        code = compile(source, f"<projection of {field_name}>", "exec")
        # The source is generated from the schema's own names and repr() literals, never
        # from request text, and runs in a namespace holding only what it binds.
        exec(code, self.namespace)  # noqa: S102
        return Projector(self.namespace["project"])

    # -- the well-formed item ------------------------------------------------------------------

    def _fast_path(
        self, item_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> bool:
        """Emit, ahead of the per-value reading, one guard that every value the selection reads
        already has the form its rule reads as itself (a non-empty str for text, a bool for a
        flag, a known enum value, a dict for an object, null only where the rule keeps null),
        and then the response dict straight from those values. An item failing the guard, or
        one whose enum value is unhashable (``in`` raises ``TypeError``), is read by the rules
        below as before. Selections with a field the guard cannot cover get no fast path
        (False)."""
        try:
            guard, entry = self._fast_object(item_type, self.root_table, field_details_list, "item")
        except _NoFastPath:
            return False
        self._line(2, "try:")
        self._line(3, f"if {' and '.join(guard) or 'True'}:")
        self._line(4, f"append({entry})")
        self._line(4, "continue")
        self._line(2, "except TypeError:")
        self._line(3, "pass")
        return True

    def _fast_object(
        self,
        graphql_type: GraphQLObjectType,
        table: ObjectTable,
        field_details_list: FieldDetailsList,
        source: str,
    ) -> tuple[list[str], str]:
        """The guard's conjuncts for ``graphql_type`` read from ``source`` and the expression
        of its response dict. Names are bound by ``:=`` in the guard, which runs first."""
        rules = {rule.attribute: rule for rule in table.fields}
        guard: list[str] = []
        leaves: dict[str, str] = {}
        entries: list[str] = []
        for response_key, name, field, attribute, details_list in self._plain_fields(
            graphql_type, field_details_list, entries
        ):
            rule = rules.get(attribute)
            if rule is None:
                raise _NoFastPath  # not projectable: ``_object`` says so
            if isinstance(rule.reading, Nested):
                value = self._fast_nested(
                    field, rule.key, rule.reading, details_list, source, guard
                )
            elif name in leaves:
                value = leaves[name]
            else:
                value = leaves[name] = self._fast_leaf(field, rule.key, rule.reading, source, guard)
            entries.append(f"{response_key!r}: {value}")
        return guard, "{" + ", ".join(entries) + "}"

    def _fast_leaf(
        self, field: GraphQLField, key: str, reading: Reading, source: str, guard: list[str]
    ) -> str:
        """A value that reads as itself; null passes only where the rule keeps it null (no
        default) in a nullable field (a default, or a null in a non-null field, goes below)."""
        var = self._name("f")
        fetched = f"({var} := {source}.get({key!r}))"
        output = var
        if isinstance(reading, Text):
            form = "{0}.__class__ is str and {1}"
        elif isinstance(reading, Flag):
            form = "{0}.__class__ is bool"
        elif isinstance(reading, EnumOrUnknown):
            named = get_named_type(field.type)
            if not isinstance(named, GraphQLEnumType):
                raise _NoFastPath
            try:
                names = {
                    member.value: named.coerce_output_value(member)
                    for member in reading.enum
                    if type(member.value) is str
                }
            except Exception as exc:
                raise _NoFastPath from exc  # not projectable: ``_enum`` says so
            known = self._bind(names, "known")
            form = "{0} in " + known  # an unhashable value raises TypeError: the rules read it
            if any(upstream != name for upstream, name in names.items()):
                output = f"{known}[{var}]"
        elif isinstance(reading, Instant) and not isinstance(field.type, GraphQLNonNull):
            # A time is never read as itself; its usual form is no time at all (null).
            guard.append(f"{fetched} is None")
            return "None"
        else:
            raise _NoFastPath
        if reading.default is None and not isinstance(field.type, GraphQLNonNull):
            guard.append(f"({fetched} is None or {form.format(var, var)})")
        else:
            guard.append(f"({form.format(fetched, var)})")
        return output

    def _fast_nested(
        self,
        field: GraphQLField,
        key: str,
        reading: Nested,
        field_details_list: FieldDetailsList,
        source: str,
        guard: list[str],
    ) -> str:
        """An object that reads as itself: a dict (with a non-empty str ``identified_by``);
        null passes only where the rule keeps it null in a nullable field."""
        named = get_named_type(field.type)
        if not isinstance(named, GraphQLObjectType):
            raise _NoFastPath
        var = self._name("m")
        inner, entry = self._fast_object(named, reading.table, field_details_list, var)
        form = [f"({var} := {source}.get({key!r})).__class__ is dict"]
        if reading.table.identified_by is not None:
            identifier = self._name("f")
            form.append(
                f"({identifier} := {var}.get({reading.table.identified_by!r})).__class__ is str"
            )
            form.append(identifier)
        form.extend(inner)
        if reading.always or isinstance(field.type, GraphQLNonNull):
            guard.append("(" + " and ".join(form) + ")")
            return entry
        form[0] = f"{var}.__class__ is dict"
        guard.append(f"(({var} := {source}.get({key!r})) is None or " + " and ".join(form) + ")")
        return f"(None if {var} is None else {entry})"

    # -- emitting -----------------------------------------------------------------------------

    def _line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def _name(self, hint: str) -> str:
        return f"{hint}{next(self._counter)}"

    def _bind(self, value: object, hint: str) -> str:
        name = self._name("_" + hint)
        self.namespace[name] = value
        return name

    def _plain_fields(
        self,
        graphql_type: GraphQLObjectType,
        field_details_list: FieldDetailsList,
        entries: list[str],
    ) -> Iterator[tuple[str, str, GraphQLField, str, FieldDetailsList]]:
        """The selected fields of ``graphql_type`` in collected order, as (response key, name,
        field, Python attribute, details); a ``__typename`` is appended to ``entries`` as its
        constant in its place instead."""
        for response_key, name, field, attribute, details_list in self.selected(
            graphql_type, field_details_list
        ):
            if field is None:
                entries.append(f"{response_key!r}: {graphql_type.name!r}")
                continue
            yield response_key, name, field, attribute, details_list

    def _object(
        self,
        graphql_type: GraphQLObjectType,
        table: ObjectTable,
        field_details_list: FieldDetailsList,
        source: str,
        indent: int,
    ) -> str:
        """Emit statements reading ``graphql_type`` from the mapping in ``source``; returns the
        expression of its response dict (keys in the collected order)."""
        if not describes(graphql_type, table.type):
            raise NotProjectable
        rules = {rule.attribute: rule for rule in table.fields}
        getter = f"{source}.get"  # called as a method: faster than a stored bound method
        leaves: dict[str, str] = {}
        entries: list[str] = []
        for response_key, name, field, attribute, details_list in self._plain_fields(
            graphql_type, field_details_list, entries
        ):
            rule = rules.get(attribute)
            if rule is None:
                raise NotProjectable
            if isinstance(rule.reading, Nested):
                value = self._nested(field, rule.key, rule.reading, details_list, getter, indent)
            else:
                value = leaves.get(name) or self._leaf(
                    field, rule.key, rule.reading, getter, indent
                )
                leaves[name] = value
            entries.append(f"{response_key!r}: {value}")
        return "{" + ", ".join(entries) + "}"

    def _leaf(
        self, field: GraphQLField, key: str, reading: Reading, getter: str, indent: int
    ) -> str:
        named = get_named_type(field.type)
        value = self._name("v")
        self._line(indent, f"{value} = {getter}({key!r})")
        if isinstance(reading, Text):
            if named is not GraphQLString and named is not GraphQLID:
                raise NotProjectable
            if reading.default is not None and not isinstance(reading.default, str):
                raise NotProjectable
            # A non-empty str reads as itself, a missing value as the default; String and ID
            # serialise a str as itself. Anything else goes through the rule.
            read = self._bind(reading.read, "text")
            if reading.default is None:
                self._line(
                    indent,
                    f"if {value} is not None and ({value}.__class__ is not str or not {value}):",
                )
                self._line(indent + 1, f"{value} = {read}({value})")
            else:
                self._line(indent, f"if {value}.__class__ is not str or not {value}:")
                self._line(
                    indent + 1,
                    f"{value} = {reading.default!r} if {value} is None else {read}({value})",
                )
        elif isinstance(reading, Flag):
            if named is not GraphQLBoolean:
                raise NotProjectable
            if reading.default is not None and not isinstance(reading.default, bool):
                raise NotProjectable
            read = self._bind(reading.read, "flag")
            self._line(indent, f"if {value}.__class__ is not bool:")
            self._line(
                indent + 1, f"{value} = {reading.default!r} if {value} is None else {read}({value})"
            )
        elif isinstance(reading, EnumOrUnknown):
            value = self._enum(named, reading, value, indent)
        elif isinstance(reading, Instant):
            if not isinstance(named, GraphQLScalarType) or named.name != _DATETIME_SCALAR:
                raise NotProjectable
            # Rare and never on the hot path: the rule reads, the schema's scalar renders
            # (exactly what normal completion's ``complete_leaf_value`` calls).
            read = self._bind(reading.read, "instant")
            serialize = self._bind(named.serialize, "datetime")
            self._line(indent, f"if {value} is not None:")
            self._line(indent + 1, f"{value} = {read}({value})")
            self._line(indent + 1, f"if {value} is not None:")
            self._line(indent + 2, f"{value} = {serialize}({value})")
        else:
            raise NotProjectable  # Count raises on bad data: normal execution reports it
        if isinstance(field.type, GraphQLNonNull) and _may_read_null(reading):
            self._line(indent, f"if {value} is None:")
            self._line(indent + 1, "raise CannotProject")
        return value

    def _enum(self, named: object, reading: EnumOrUnknown, raw: str, indent: int) -> str:
        """Enum values serialise to their names, as the schema's enum type says."""
        if not isinstance(named, GraphQLEnumType):
            raise NotProjectable
        try:
            names: dict[Enum, str] = {
                member: named.coerce_output_value(member) for member in reading.enum
            }
        except Exception as exc:
            raise NotProjectable from exc
        if reading.default is not None and reading.default not in names:
            raise NotProjectable
        # An exact str value of the enum reads as that member (``Enum(value)``); anything else
        # (unknown, missing, another type) goes through the rule itself.
        by_value = {
            member.value: name for member, name in names.items() if type(member.value) is str
        }

        def read_name(raw: object) -> str | None:
            member = reading.read(raw)
            return None if member is None else names[member]

        known = self._bind(by_value, "names")
        value = self._name("e")
        self._line(indent, f"{value} = {known}.get({raw}) if {raw}.__class__ is str else None")
        missing = f" and {raw} is not None" if reading.default is None else ""
        self._line(indent, f"if {value} is None{missing}:")
        self._line(indent + 1, f"{value} = {self._bind(read_name, 'enum')}({raw})")
        return value

    def _nested(
        self,
        field: GraphQLField,
        key: str,
        reading: Nested,
        field_details_list: FieldDetailsList,
        getter: str,
        indent: int,
    ) -> str:
        named = get_named_type(field.type)
        if not isinstance(named, GraphQLObjectType):
            raise NotProjectable
        table = reading.table
        raw = self._name("n")
        result = self._name("o")
        # ``Nested.read``: an object only from a mapping, and with ``identified_by`` only when
        # that key reads as text (``TEXT``, inlined for a non-empty str).
        self._line(indent, f"{raw} = {getter}({key!r})")
        self._line(indent, f"if {raw} is None:")
        self._line(indent + 1, "pass")
        self._line(indent, f"elif {raw}.__class__ is not dict and not isinstance({raw}, Mapping):")
        self._line(indent + 1, f"{raw} = None")
        if table.identified_by is not None:
            text = self._bind(TEXT.read, "text")
            identifier = self._name("i")
            self._line(indent, "else:")
            self._line(indent + 1, f"{identifier} = {raw}.get({table.identified_by!r})")
            self._line(
                indent + 1,
                f"if ({identifier}.__class__ is not str or not {identifier})"
                f" and {text}({identifier}) is None:",
            )
            self._line(indent + 2, f"{raw} = None")
        if reading.always:
            self._line(indent, f"if {raw} is None:")
            self._line(indent + 1, f"{raw} = {self._bind({}, 'empty')}")
            entry = self._object(named, table, field_details_list, raw, indent)
            self._line(indent, f"{result} = {entry}")
            return result
        self._line(indent, f"if {raw} is None:")
        if isinstance(field.type, GraphQLNonNull):
            self._line(indent + 1, "raise CannotProject")
        else:
            self._line(indent + 1, f"{result} = None")
        self._line(indent, "else:")
        entry = self._object(named, table, field_details_list, raw, indent + 1)
        self._line(indent + 1, f"{result} = {entry}")
        return result

    def _edge(
        self,
        edge_type: GraphQLObjectType,
        field_details_list: FieldDetailsList,
        item: str,
        indent: int,
    ) -> str:
        """An edge: its ``cursor`` from ``PageResult.cursor(position)``, its ``node`` from the
        item (as ``PageResult.edges()`` builds it)."""
        if not describes(edge_type, PhoneNumberEdge):
            raise NotProjectable
        cursor: str | None = None
        entries: list[str] = []
        for response_key, _, field, attribute, details_list in self._plain_fields(
            edge_type, field_details_list, entries
        ):
            if attribute == "cursor":
                if get_named_type(field.type) is not GraphQLString:
                    raise NotProjectable
                if cursor is None:
                    cursor = self._name("c")
                    self._line(indent, f"{cursor} = cursor(position)")
                entries.append(f"{response_key!r}: {cursor}")
            elif attribute == "node":
                node_type = get_named_type(field.type)
                if not isinstance(node_type, GraphQLObjectType):
                    raise NotProjectable
                node = self._object(node_type, self.root_table, details_list, item, indent)
                entries.append(f"{response_key!r}: {node}")
            else:
                raise NotProjectable
        return "{" + ", ".join(entries) + "}"

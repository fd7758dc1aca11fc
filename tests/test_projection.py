"""The projection fast path (``gateway.execution.projecting_executor``) answers as normal execution.

The property test runs random selections over the ``PhoneNumber`` subtree (aliases, merged
response keys, named and inline fragments, ``@skip``/``@include`` with literals and variables,
``__typename`` everywhere, fields with their own resolvers that force the normal path) through
``phoneNumbers`` on the root field and on the ``Location`` and ``Organization`` entities, against
random upstream items (unknown enum values, missing keys, wrong types, owners without an id,
locations that are not objects). Each operation runs on two schemas that differ only in the
executor, with the same upstream items, and the two answers must be the same bytes: data,
errors (messages, locations, paths, extensions) and extensions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from graphql import GraphQLObjectType, GraphQLSchema, OperationDefinitionNode, parse
from graphql.execution.collect_fields import (
    CollectedFields,
    FieldDetailsList,
    collect_fields,
    collect_subfields,
)
from graphql.execution.values import VariableValues
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.data.page_cache import PageCache
from gateway.data.source import NumbersSource
from gateway.domain.arguments import cursor_fields
from gateway.domain.reader import FLAG, PHONE_NUMBER, FieldRule, Text
from gateway.execution.projecting_executor import (
    ConnectionNotingExecutionContext,
    ProjectingExecutionContext,
    projecting_execution_context,
)
from gateway.execution.projection_compiler import Projector, compile_projector
from gateway.schema.build import build_schema, graphql_schema
from gateway.schema.context import RequestContext
from gateway.simulator import build_demo_world
from gateway.upstream.client import UpstreamClient
from tests.conftest import InProcess, examples, live_settings

UPSTREAM = "http://webex.test/v1"


# -- two schemas, one upstream ----------------------------------------------------------------


def gateway_schema(execution_context_class: type[Any]) -> InProcess:
    """The gateway's own stages over the production schema, run by
    ``execution_context_class``: the fast path's, or the connection-noting executor with
    graphql-core's normal completion."""
    # The limits wide open (random selections nest deep, alias freely, and cost many calls
    # under a page): a refusal would compare nothing.
    wide_open = live_settings(
        max_cost=10_000_000, max_query_depth=100, max_aliases=1000, max_tokens=100_000
    )
    return InProcess(wide_open, executor_class=execution_context_class)


@dataclass
class FakeUpstream:
    """Answers every page request with ``items`` (``count.total`` = how many), or with
    ``raw`` entries (each an entry's JSON text, spelled as a hostile upstream might: escaped
    keys, repeated keys, bytes orjson would not write) when set."""

    items: list[Any] = field(default_factory=list)
    raw: list[bytes] | None = None
    calls: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.raw is not None:
            count = orjson.dumps({"total": len(self.raw)})
            listed = b",".join(self.raw)
            return httpx.Response(
                200, content=b'{"phoneNumbers":[' + listed + b'],"count":' + count + b"}"
            )
        body = {"phoneNumbers": self.items, "count": {"total": len(self.items)}}
        return httpx.Response(200, content=orjson.dumps(body))


@dataclass
class SideBySide:
    """The same operation three ways: the Python projector (answers as dicts), the C path
    (``struct_projection``: lists encoded from the upstream's bytes, as every transport runs
    it), and normal execution. Each projecting schema has its own executor class, so each
    one's stats count only its own runs."""

    fast_class: type[ProjectingExecutionContext]
    fast: Any
    encoded_class: type[ProjectingExecutionContext]
    encoded: Any
    normal: Any
    upstream: FakeUpstream
    source: NumbersSource

    async def answer(
        self,
        schema: Any,
        query: str,
        variables: dict[str, Any] | None,
        *,
        encoded_lists: bool = False,
    ) -> bytes:
        context = RequestContext(self.source.for_caller(None), encoded_lists=encoded_lists)
        result = await schema.execute(query, variable_values=variables, context_value=context)
        errors = [error.formatted for error in result.errors or ()]
        return orjson.dumps({"data": result.data, "errors": errors, "ext": result.extensions})

    async def both(self, query: str, variables: dict[str, Any] | None = None) -> bytes:
        fast = await self.answer(self.fast, query, variables)
        encoded = await self.answer(self.encoded, query, variables, encoded_lists=True)
        normal = await self.answer(self.normal, query, variables)
        assert fast == normal, f"\nfast:   {fast!r}\nnormal: {normal!r}"
        assert encoded == normal, f"\nin C:   {encoded!r}\nnormal: {normal!r}"
        assert self.fast_class.projectors.stats.failures == 0
        assert self.encoded_class.projectors.stats.failures == 0
        return fast

    @property
    def stats(self) -> Any:
        return self.fast_class.projectors.stats

    @property
    def encoded_stats(self) -> Any:
        return self.encoded_class.projectors.stats


@asynccontextmanager
async def side_by_side(
    fast_class: type[ProjectingExecutionContext] | None = None, *, cache_ttl: float = 0
) -> AsyncIterator[SideBySide]:
    fast_class = fast_class or projecting_execution_context()
    upstream = FakeUpstream()
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        client = UpstreamClient(http, base_url=UPSTREAM)
        source = NumbersSource(
            client, PageCache(ttl=cache_ttl), max_page_size=2000, default_authorization="Bearer t"
        )
        encoded_class = projecting_execution_context(root_table=fast_class.root_table)
        yield SideBySide(
            fast_class,
            gateway_schema(fast_class),
            encoded_class,
            gateway_schema(encoded_class),
            gateway_schema(ConnectionNotingExecutionContext),
            upstream,
            source,
        )


# -- random upstream items --------------------------------------------------------------------

ENUM_VALUES = {
    "state": ["ACTIVE", "INACTIVE", "UNKNOWN"],
    "phoneNumberType": ["PRIMARY", "ALTERNATE", "FAX", "DNIS", "UNKNOWN"],
    "includedTelephonyTypes": ["PSTN_NUMBER", "MOBILE_NUMBER", "UNKNOWN"],
    "type": ["PEOPLE", "PLACE", "VIRTUAL_LINE", "CALL_QUEUE", "GROUP_PAGING", "UNKNOWN"],
}
TEXT_KEYS = ["phoneNumber", "extension", "routingPrefix", "esn", "mobileNetwork", "routingProfile"]
FLAG_KEYS = ["mainNumber", "tollFreeNumber", "isServiceNumber", "isReservedNumber", "elinEnabled"]

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)
TEXTS = st.one_of(
    st.sampled_from(["", "+19725550001", "1234", "x"]), st.text(max_size=6), JSON_VALUES
)
FLAGS = st.one_of(
    st.booleans(), st.sampled_from(["true", "false", "TRUE", "False", "yes", ""]), JSON_VALUES
)


# Timestamps as the upstream sends them, in other ISO 8601 spellings (offsets, no offset, a
# date alone, fractions), times with no UTC equivalent, and things that are no time at all.
TIMES = st.one_of(
    st.sampled_from(
        [
            "2026-01-15T09:30:00.000Z",
            "2026-01-15T09:30:00+05:30",
            "2026-01-15T09:30:00",
            "2026-01-15",
            "2026-01-15T09:30:00.123456-08:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-02-30T00:00:00Z",
            "soon",
        ]
    ),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda moment: moment.isoformat()),
    JSON_VALUES,
)


def enums(key: str) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(ENUM_VALUES[key]),
        st.sampled_from(["BOGUS", "active", ""]),
        JSON_VALUES,
    )


LOCATIONS = st.one_of(
    st.fixed_dictionaries({}, optional={"id": TEXTS, "name": TEXTS, "extra": JSON_VALUES}),
    st.fixed_dictionaries({"id": st.just("loc-1")}, optional={"name": TEXTS}),
    JSON_VALUES,
)
OWNER_FIELDS = {
    "type": enums("type"),
    "firstName": TEXTS,
    "lastName": TEXTS,
    "displayName": TEXTS,
    "elinExpiryTime": TIMES,
}
OWNERS = st.one_of(
    st.fixed_dictionaries({}, optional={"id": TEXTS, **OWNER_FIELDS}),
    # An owner is there only with an id that reads as text: most generated ones have one.
    st.fixed_dictionaries({"id": st.sampled_from(["p1", "p2", 7])}, optional=OWNER_FIELDS),
    st.fixed_dictionaries({"id": st.sampled_from(["p1", "p2"]), "type": st.just("PEOPLE")}),
    JSON_VALUES,
)
ITEMS = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(TEXT_KEYS, TEXTS),
        **dict.fromkeys(FLAG_KEYS, FLAGS),
        **{key: enums(key) for key in ("state", "phoneNumberType", "includedTelephonyTypes")},
        "location": LOCATIONS,
        "owner": OWNERS,
    },
)
# Well-formed items, as the upstream sends nearly all of them: every value already has the
# form its rule reads as itself, so the projector's guard lets them through whole.
WELL_FORMED_TEXTS = st.sampled_from(["+19725550001", "1234", "x", "Tim"])
WELL_FORMED_ITEMS = st.fixed_dictionaries(
    {
        **dict.fromkeys(["mainNumber", "tollFreeNumber", "isServiceNumber"], st.booleans()),
        "location": st.fixed_dictionaries(
            {"id": st.just("loc-1")}, optional={"name": WELL_FORMED_TEXTS | st.none()}
        ),
    },
    optional={
        **dict.fromkeys(TEXT_KEYS, WELL_FORMED_TEXTS | st.none()),
        "isReservedNumber": st.booleans() | st.none(),
        "elinEnabled": st.booleans(),
        **{
            key: st.sampled_from(ENUM_VALUES[key]) | st.none()
            for key in ("state", "phoneNumberType", "includedTelephonyTypes")
        },
        "owner": st.none()
        | st.fixed_dictionaries(
            {"id": st.sampled_from(["p1", "p2"]), "type": st.sampled_from(ENUM_VALUES["type"])},
            optional=dict.fromkeys(["firstName", "lastName", "displayName"], WELL_FORMED_TEXTS),
        ),
    },
)


# Values one step from well-formed: each fails the guard of some rule (missing, empty text,
# a number, a text flag, an unknown or unhashable enum value, an object where a value goes).
NEAR_MISSES = [None, "", 7, "true", "BOGUS", ["PEOPLE"], {"id": "x"}]
SPOILABLE = [
    *([key] for key in [*TEXT_KEYS, *FLAG_KEYS, "state", "phoneNumberType"]),
    ["includedTelephonyTypes"],
    ["location"],
    ["location", "id"],
    ["location", "name"],
    ["owner"],
    *(["owner", key] for key in ["id", "type", "firstName", "lastName", "elinExpiryTime"]),
]


@st.composite
def spoiled_items(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed item with one value (top-level or nested) missing or a near miss: the
    projector's guard must fail and the rules read the item, exactly as normal execution."""
    item: dict[str, Any] = draw(WELL_FORMED_ITEMS)
    *parents, key = draw(st.sampled_from(SPOILABLE))
    target = item
    for parent in parents:
        if not isinstance(target.get(parent), dict):
            return item
        target[parent] = dict(target[parent])
        target = target[parent]
    if draw(st.integers(0, len(NEAR_MISSES))) == 0:
        target.pop(key, None)
    else:
        target[key] = draw(st.sampled_from(NEAR_MISSES))
    return item


# Non-objects in the list are dropped by the body reader on both paths alike.
PAGES = st.lists(
    st.one_of(ITEMS, ITEMS, JSON_SCALARS, WELL_FORMED_ITEMS, spoiled_items(), spoiled_items()),
    max_size=5,
)

# Members a hostile or odd upstream adds to an entry, as JSON text: its own ``__typename``
# (equal to the schema's or not, with its key escaped), keys this gateway does not know with
# values orjson would not read the same (an integer past 64 bits, a number past a double,
# deep nesting), text escaped in every way, and repeats of the entry's own keys (the last
# one counts, on every path).
EXTRA_MEMBERS = [
    b'"__typename":"PhoneNumber"',
    b'"__typename":"Location"',
    b'"\\u005f_typename":"PhoneNumber"',
    b'"\\u005f_typename":"Other"',
    b'"junk":123456789012345678901234567890',
    b'"huge":1e400',
    b'"deep":' + b"[" * 40 + b"]" * 40,
    b'"unknown\\u00e9":{"nested":[1,2.5,{"x":null}],"t":"Zo\\u00eb \\ud83d\\ude00"}',
    b'"state":"BOGUS"',
    b'"owner":7',
    b'"location":{"id":""}',
    b'"extension":4711',
]
# Rarer, and fatal to the whole body on every path: bytes that are not UTF-8, a lone surrogate.
FATAL_MEMBERS = [b'"bad":"\xff"', b'"lone":"\\ud800"']
NESTED_SPELLINGS = [
    (b'"location":{', b'"location":{"__typename":"Location",'),
    (b'"location":{', b'"location":{"__typename":"NumberOwner",'),
    (b'"owner":{', b'"owner":{"\\u005f_typename":"NumberOwner",'),
    (b'"owner":{', b'"owner":{"id":"not-this-one",'),
    (b'"phoneNumber":', b'"phone\\u004eumber":'),
    (b'"firstName":', b'"first\\u004eame":'),
]


@st.composite
def hostile_entries(draw: st.DrawFn) -> bytes:
    """An entry's JSON text: well-formed (or one step from it), spelled with extra members
    before its own (repeats lose) or after them (repeats win) and nested rewrites."""
    item = draw(st.one_of(WELL_FORMED_ITEMS, WELL_FORMED_ITEMS, spoiled_items()))
    own = orjson.dumps(item)[1:-1]
    for old, new in draw(st.lists(st.sampled_from(NESTED_SPELLINGS), max_size=2)):
        own = own.replace(old, new, 1)
    before = draw(st.lists(st.sampled_from(EXTRA_MEMBERS), max_size=3))
    after = draw(st.lists(st.sampled_from(EXTRA_MEMBERS), max_size=1))
    if draw(st.integers(0, 40)) == 0:
        after.append(draw(st.sampled_from(FATAL_MEMBERS)))
    return b"{" + b",".join(member for member in [*before, own, *after] if member) + b"}"


RAW_PAGES = st.lists(hostile_entries(), max_size=5)
UPSTREAM_PAGES = st.one_of(
    PAGES.map(lambda items: ("items", items)),
    RAW_PAGES.map(lambda raw: ("raw", raw)),
)


# -- random selections ------------------------------------------------------------------------

PHONE_NUMBER_LEAVES = [
    "phoneNumber",
    "extension",
    "routingPrefix",
    "esn",
    "state",
    "phoneNumberType",
    "mainNumber",
    "includedTelephonyTypes",
    "mobileNetwork",
    "routingProfile",
    "tollFreeNumber",
    "isServiceNumber",
    "isReservedNumber",
    "elinEnabled",
]
LEAVES = {
    "PhoneNumber": PHONE_NUMBER_LEAVES,
    "Location": ["id", "name"],
    "NumberOwner": ["id", "type", "firstName", "lastName", "displayName", "elinExpiryTime"],
}
OBJECTS = {"PhoneNumber": {"location": "Location", "owner": "NumberOwner"}}
# Fields with their own resolvers: the selection must take the normal path.
RESOLVED = {
    "Location": [
        "numberCounts { total assigned }",
        "phoneNumbers(page: {first: 3}) { totalCount nodes { phoneNumber state owner { id } } }",
    ],
    "NumberOwner": ["person { id __typename }"],
}


@dataclass
class Document:
    """What a selection drew besides its text: fragments and the variables it reads."""

    fragments: list[str] = field(default_factory=list)
    variables: set[str] = field(default_factory=set)
    names: itertools.count[int] = field(default_factory=itertools.count)


@st.composite
def directives(draw: st.DrawFn, document: Document) -> str:
    kind = draw(st.sampled_from(["", "", "", "", "skip", "include"]))
    if not kind:
        return ""
    argument = draw(st.sampled_from(["true", "false", "$v0", "$v1", "$v2", "$d"]))
    if argument.startswith("$"):
        document.variables.add(argument[1:])
    return f" @{kind}(if: {argument})"


def every_field(type_name: str) -> str:
    """Every plain field of ``type_name``, nested objects included."""
    nested = [
        f"{name} {{ {every_field(target)} }}" for name, target in OBJECTS.get(type_name, {}).items()
    ]
    return " ".join([*LEAVES[type_name], *nested])


@st.composite
def selection(draw: st.DrawFn, type_name: str, document: Document, depth: int = 0) -> str:
    """One selection set's contents on ``type_name``."""
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                [
                    *("leaf", "leaf", "leaf", "object", "object", "every"),
                    *("typename", "inline", "spread", "resolved"),
                ]
            )
        )
        if kind == "every":
            parts.append(every_field(type_name))
        elif kind == "object" and OBJECTS.get(type_name):
            name, target = draw(st.sampled_from(sorted(OBJECTS[type_name].items())))
            alias = draw(st.sampled_from(["", f"{name}A: ", f"{name}B: "]))
            inner = draw(selection(target, document, depth + 1))
            parts.append(f"{alias}{name}{draw(directives(document))} {{ {inner} }}")
        elif kind == "typename":
            alias = draw(st.sampled_from(["", "kind: ", "t: "]))
            parts.append(f"{alias}__typename{draw(directives(document))}")
        elif kind in ("inline", "spread") and depth < 3:
            inner = draw(selection(type_name, document, depth + 1))
            if kind == "inline":
                condition = draw(st.sampled_from([f" on {type_name}", ""]))
                parts.append(f"...{condition}{draw(directives(document))} {{ {inner} }}")
            else:
                name = f"F{next(document.names)}"
                document.fragments.append(f"fragment {name} on {type_name} {{ {inner} }}")
                parts.append(f"...{name}{draw(directives(document))}")
        elif kind == "resolved" and type_name in RESOLVED and draw(st.integers(0, 3)) == 0:
            parts.append(draw(st.sampled_from(RESOLVED[type_name])))
        else:
            name = draw(st.sampled_from(LEAVES[type_name]))
            alias = draw(st.sampled_from(["", "", f"{name}A: ", f"{name}B: "]))
            parts.append(f"{alias}{name}{draw(directives(document))}")
    return " ".join(parts)


@st.composite
def connection(draw: st.DrawFn, document: Document) -> str:
    """The inside of a ``phoneNumbers { ... }``: nodes and edges, with aliases and extras."""
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["nodes", "edges", "edges", "extra", "inline"]))
        # Aliases never shared between different fields: equal response keys merge.
        alias = draw(st.sampled_from(["", "", f"{kind[0]}1: ", f"{kind[0]}2: "]))
        if kind == "nodes":
            inner = draw(selection("PhoneNumber", document))
            parts.append(f"{alias}nodes{draw(directives(document))} {{ {inner} }}")
        elif kind == "edges":
            edge: list[str] = []
            for _ in range(draw(st.integers(1, 3))):
                part = draw(st.sampled_from(["node", "node", "cursor", "c: cursor", "__typename"]))
                if part == "node":
                    node_alias = draw(st.sampled_from(["", "n: "]))
                    inner = draw(selection("PhoneNumber", document))
                    part = f"{node_alias}node{draw(directives(document))} {{ {inner} }}"
                edge.append(part)
            if draw(st.booleans()):
                edge = [
                    f"... on PhoneNumberEdge{draw(directives(document))} {{ {' '.join(edge)} }}"
                ]
            parts.append(f"{alias}edges {{ {' '.join(edge)} }}")
        elif kind == "inline":
            inner = draw(selection("PhoneNumber", document))
            parts.append(f"... on PhoneNumberConnection {{ nodes {{ {inner} }} }}")
        else:
            parts.append(
                draw(
                    st.sampled_from(
                        ["totalCount", "__typename", "pageInfo { hasNextPage endCursor }"]
                    )
                )
            )
    return " ".join(parts)


@dataclass(frozen=True)
class Operation:
    query: str
    variables: tuple[dict[str, Any], dict[str, Any]]  # two runs: plans must not leak across


@st.composite
def operations(draw: st.DrawFn) -> Operation:
    document = Document()
    page = draw(st.sampled_from(["{first: 50}", "{first: 10, offset: 7}"]))
    roots: list[str] = []
    where = draw(st.sampled_from(["root", "entities", "both"]))
    if where in ("root", "both"):
        roots.append(f"phoneNumbers(page: {page}) {{ {draw(connection(document))} }}")
    if where in ("entities", "both"):
        location = draw(connection(document))
        organization = draw(connection(document))
        roots.append(
            "_entities(representations: ["
            '{__typename: "Location", id: "loc-1"}, {__typename: "Organization", id: "org-1"}, '
            '{__typename: "Location", id: "loc-2"}]) { __typename '
            f"... on Location {{ id phoneNumbers(page: {page}) {{ {location} }} }} "
            f"... on Organization {{ phoneNumbers {{ {organization} }} }} }}"
        )
    declared = sorted(document.variables)
    definitions = ", ".join(
        "$d: Boolean = true" if name == "d" else f"${name}: Boolean!" for name in declared
    )
    header = f"query Q({definitions})" if definitions else "query Q"
    query = " ".join([f"{header} {{ {' '.join(roots)} }}", *document.fragments])
    required = [name for name in declared if name != "d"]
    values = st.fixed_dictionaries({name: st.booleans() for name in required})
    return Operation(query, (draw(values), draw(values)))


EVERY_FIELD = (
    "__typename phoneNumber extension routingPrefix esn state phoneNumberType mainNumber "
    "includedTelephonyTypes mobileNetwork routingProfile tollFreeNumber isServiceNumber "
    "isReservedNumber elinEnabled location { __typename id name } "
    "owner { __typename id type firstName lastName displayName elinExpiryTime }"
)
EVERY_FIELD_PAGE = (
    "{ phoneNumbers(page: {first: 50, offset: 3}) { "
    f"nodes {{ {EVERY_FIELD} }} edges {{ cursor node {{ {EVERY_FIELD} }} }} }} }}"
)


# -- the property ------------------------------------------------------------------------------


def test_fast_path_answers_like_normal_execution() -> None:
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        pair = runner.run(stack.enter_async_context(side_by_side()))
        try:

            @settings(
                max_examples=examples(200),
                deadline=None,
                database=None,
                suppress_health_check=[
                    HealthCheck.too_slow,
                    HealthCheck.data_too_large,
                    HealthCheck.filter_too_much,
                ],
            )
            @given(operation=operations(), page=UPSTREAM_PAGES)
            def same_answer(operation: Operation, page: tuple[str, list[Any]]) -> None:
                kind, entries = page
                pair.upstream.items = entries if kind == "items" else []
                pair.upstream.raw = entries if kind == "raw" else None
                # Bounded: an answer that never comes fails the example (and is shrunk).
                for variables in operation.variables:
                    runner.run(asyncio.wait_for(pair.both(operation.query, variables), 20))
                # Every reading rule meets these items, whatever the random selection took.
                runner.run(asyncio.wait_for(pair.both(EVERY_FIELD_PAGE), 20))

            same_answer()
            # Not vacuous: many lists went through the fast path, and (at the ci profile's
            # depth, where random selections reach fields with resolvers) some could not.
            assert pair.stats.projected > examples(100), pair.stats
            # ...and many of them were encoded in C, straight from the upstream's bytes.
            assert pair.encoded_stats.encoded > examples(50), pair.encoded_stats
            if examples(200) >= 100:
                assert pair.stats.declined > 0, pair.stats
        finally:
            runner.run(stack.aclose())


# -- examples ---------------------------------------------------------------------------------


def simulator_items(count: int) -> list[Any]:
    """Realistic items: the simulator's, well-formed as the upstream sends nearly all."""
    world = build_demo_world(size=max(count, 50), seed=11)
    return [dict(entry.payload) for entry in world.demo_org.entries][:count]


def demo_items(count: int) -> list[Any]:
    """Realistic items (the simulator's) with a few malformed ones among them."""
    items = simulator_items(max(count, 50))
    items[1]["state"] = "SOMETHING_NEW"
    items[2]["location"] = "not an object"
    items[3]["owner"] = {"type": "PEOPLE", "firstName": "No", "lastName": "Id"}
    items[4]["mainNumber"] = "true"
    items[5]["extension"] = 4711
    items[6]["isReservedNumber"] = ["yes"]
    items[7]["owner"] = {"id": "aa", "type": "AUTO_ATTENDANT", "elinExpiryTime": "never"}
    items[8]["owner"] = {"id": "p", "type": "PEOPLE", "elinExpiryTime": "2026-01-15T10:30+01:00"}
    return items[:count]


async def test_a_full_page_of_2000_is_the_same_on_both_paths() -> None:
    async with side_by_side() as pair:
        pair.upstream.items = demo_items(2000)
        answer = await pair.both(
            "{ phoneNumbers(page: {first: 2000}) { totalCount "
            f"nodes {{ {EVERY_FIELD} }} edges {{ __typename cursor node {{ {EVERY_FIELD} }} }} }} }}"
        )
        data = orjson.loads(answer)["data"]["phoneNumbers"]
        assert len(data["nodes"]) == len(data["edges"]) == 2000
        assert data["nodes"][1]["state"] == "UNKNOWN"
        assert data["nodes"][2]["location"] == {"__typename": "Location", "id": "", "name": None}
        assert data["nodes"][3]["owner"] is None
        assert data["nodes"][4]["mainNumber"] is True
        assert data["nodes"][5]["extension"] == "4711"
        assert data["nodes"][7]["owner"]["elinExpiryTime"] is None
        assert data["nodes"][8]["owner"]["elinExpiryTime"] == "2026-01-15T09:30:00+00:00"
        elins = [node for node in data["nodes"] if node["elinEnabled"]]
        assert elins
        assert any(node["owner"] and node["owner"]["elinExpiryTime"] for node in elins)
        assert pair.stats.projected == 2  # nodes and edges, both projected


async def test_well_formed_items_take_the_guard_and_a_malformed_one_the_per_value_path() -> None:
    # Equal answers do not show which path built them: the stats do. A guard that stopped
    # matching well-formed items would leave every answer the same, only slower. A time set
    # (``elinExpiryTime``) never reads as itself, so it is left out here and counted below.
    selection = EVERY_FIELD.replace(" elinExpiryTime", "")
    assert selection != EVERY_FIELD
    query = f"{{ phoneNumbers(page: {{first: 500}}) {{ nodes {{ {selection} }} }} }}"
    async with side_by_side() as pair:
        pair.upstream.items = simulator_items(500)
        await pair.both(query)
        assert (pair.stats.projected, pair.stats.fallbacks) == (1, 0)
        assert (pair.stats.guarded_items, pair.stats.per_value_items) == (500, 0)

        pair.upstream.items[317] = {**pair.upstream.items[317], "mainNumber": "true"}
        answer = await pair.both(query)
        assert orjson.loads(answer)["data"]["phoneNumbers"]["nodes"][317]["mainNumber"] is True
        assert (pair.stats.projected, pair.stats.fallbacks) == (2, 0)
        assert (pair.stats.guarded_items, pair.stats.per_value_items) == (500 + 499, 1)

        # Edges have no guard: each one is read value by value.
        await pair.both("{ phoneNumbers(page: {first: 500}) { edges { cursor node { esn } } } }")
        assert (pair.stats.guarded_items, pair.stats.per_value_items) == (999, 1 + 500)

        # Exactly the items whose owner has a time set take the per-value path for it.
        pair.upstream.items = simulator_items(500)
        timed = sum(
            1 for item in pair.upstream.items if (item.get("owner") or {}).get("elinExpiryTime")
        )
        assert timed > 0
        await pair.both(query.replace(selection, EVERY_FIELD))
        assert pair.stats.guarded_items == 999 + 500 - timed
        assert pair.stats.per_value_items == 501 + timed


async def test_the_fast_path_is_used_for_root_and_entity_lists() -> None:
    async with side_by_side() as pair:
        pair.upstream.items = demo_items(20)
        await pair.both("{ phoneNumbers { nodes { phoneNumber } edges { cursor } } }")
        assert (pair.stats.projected, pair.stats.declined) == (2, 0)
        await pair.both(
            '{ _entities(representations: [{__typename: "Location", id: "loc-1"}]) '
            "{ ... on Location { phoneNumbers { nodes { state location { id } } } } } }"
        )
        assert (pair.stats.projected, pair.stats.declined) == (3, 0)


@pytest.mark.parametrize(
    "selection",
    [
        "owner { id person { id } }",
        "location { id numberCounts { total } }",
        "location { phoneNumbers(page: {first: 2}) { totalCount } }",
    ],
)
async def test_fields_with_their_own_resolvers_take_the_normal_path(selection: str) -> None:
    async with side_by_side() as pair:
        pair.upstream.items = demo_items(20)
        await pair.both(f"{{ phoneNumbers {{ nodes {{ phoneNumber {selection} }} }} }}")
        assert pair.stats.projected == 0
        assert pair.stats.declined == 1


async def test_a_nested_connection_is_projected_inside_a_normal_list() -> None:
    async with side_by_side() as pair:
        pair.upstream.items = demo_items(3)
        answer = await pair.both(
            "{ phoneNumbers { nodes { location { phoneNumbers(page: {first: 5}) "
            "{ nodes { phoneNumber } } } } } }"
        )
        assert pair.stats.declined == 1  # the outer list: Location.phoneNumbers has a resolver
        assert pair.stats.projected == 2  # each item's own connection but the third's:
        # its location is not an object, so its id is empty and its connection an error.
        (error,) = orjson.loads(answer)["errors"]
        assert error["path"] == ["phoneNumbers", "nodes", 2, "location", "phoneNumbers"]


async def test_projectors_are_compiled_once_per_document_and_inclusion_variables() -> None:
    query = (
        "query Q($show: Boolean!, $page: PageInput) { phoneNumbers(page: $page) { "
        "nodes { phoneNumber owner @include(if: $show) { id } } edges { cursor } } }"
    )
    async with side_by_side() as pair:
        pair.upstream.items = demo_items(10)
        await pair.both(query, {"show": True})
        assert pair.stats.compiled == 2  # nodes and edges
        await pair.both(query, {"show": True, "page": {"first": 5}})  # not an inclusion variable
        assert pair.stats.compiled == 2
        await pair.both(query, {"show": False})
        assert pair.stats.compiled == 4  # the key holds every @skip/@include variable's value
        await pair.both(query, {"show": False})
        await pair.both(query, {"show": True})
        assert pair.stats.compiled == 4
        assert pair.stats.projected == 10


async def test_a_value_the_projector_cannot_render_falls_back_to_normal_completion() -> None:
    # A table in which a non-null flag can read as null: the projector meets a null it must
    # not render, hands the list back, and normal completion (the real reader) answers.
    nullable = tuple(
        dataclasses.replace(rule, reading=FLAG) if rule.key == "mainNumber" else rule
        for rule in PHONE_NUMBER.fields
    )
    table = dataclasses.replace(PHONE_NUMBER, fields=nullable)
    assert any(isinstance(rule, FieldRule) and rule.reading is FLAG for rule in table.fields)
    async with side_by_side(projecting_execution_context(root_table=table)) as pair:
        pair.upstream.items = [{"mainNumber": True}, {"phoneNumber": "+1"}]
        answer = await pair.both("{ phoneNumbers { nodes { phoneNumber mainNumber } } }")
        assert orjson.loads(answer)["data"]["phoneNumbers"]["nodes"][1]["mainNumber"] is False
        assert (pair.stats.projected, pair.stats.fallbacks) == (0, 1)
        pair.upstream.items = [{"mainNumber": True}]
        await pair.both("{ phoneNumbers { nodes { phoneNumber mainNumber } } }")
        assert (pair.stats.projected, pair.stats.fallbacks) == (1, 1)


async def test_the_projector_cache_is_bounded() -> None:
    async with side_by_side(projecting_execution_context(max_projectors=3)) as pair:
        pair.upstream.items = demo_items(3)
        for alias in ("a", "b", "c", "d", "e"):
            await pair.both(f"{{ phoneNumbers {{ {alias}: nodes {{ phoneNumber }} }} }}")
        assert len(pair.fast_class.projectors) == 3
        assert pair.stats.compiled == 5


@dataclasses.dataclass(frozen=True, slots=True)
class ExplodingText(Text):
    """A reading with a bug: it raises on one value (off the inlined str path)."""

    def read(self, value: object) -> str | None:
        if value == 99:
            raise RuntimeError("a bug in a reading rule")
        return Text.read(self, value)


async def test_a_projector_that_raises_is_logged_and_falls_back() -> None:
    rules = tuple(
        dataclasses.replace(rule, reading=ExplodingText()) if rule.key == "esn" else rule
        for rule in PHONE_NUMBER.fields
    )
    fast_class = projecting_execution_context(
        root_table=dataclasses.replace(PHONE_NUMBER, fields=rules)
    )
    async with side_by_side(fast_class) as pair:
        pair.upstream.items = [{"esn": "12"}, {"esn": 5}, {"esn": 99}]
        fast = await pair.answer(pair.fast, "{ phoneNumbers { nodes { esn } } }", None)
        normal = await pair.answer(pair.normal, "{ phoneNumbers { nodes { esn } } }", None)
        assert fast == normal
        assert (pair.stats.projected, pair.stats.failures) == (0, 1)


# -- the compiler alone ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentCollector:
    """graphql-core's field collection over one operation without variables: all the compiler
    needs of an executor."""

    schema: GraphQLSchema
    operation: OperationDefinitionNode

    def collect_subfields(
        self, return_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> CollectedFields:
        return collect_subfields(
            self.schema,
            {},
            VariableValues(sources={}, coerced={}),
            self.operation,
            return_type,
            field_details_list,
        )


def compiled_nodes(selection: str) -> Projector | None:
    """The projector of ``{ phoneNumbers { nodes { <selection> } } }``, compiled without
    running anything."""
    schema = graphql_schema(build_schema())
    operation = parse(f"{{ phoneNumbers {{ nodes {{ {selection} }} }} }}").definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    collector = DocumentCollector(schema, operation)
    query_type = schema.query_type
    assert query_type is not None
    root = collect_fields(
        schema, {}, VariableValues(sources={}, coerced={}), query_type, operation
    ).grouped_field_set["phoneNumbers"]
    connection = schema.get_type("PhoneNumberConnection")
    assert isinstance(connection, GraphQLObjectType)
    nodes = collector.collect_subfields(connection, root).grouped_field_set["nodes"]
    return compile_projector(collector, PHONE_NUMBER, connection, nodes)


def test_the_compiler_projects_upstream_items_without_an_executor() -> None:
    projector = compiled_nodes("__typename number: phoneNumber state")
    assert projector is not None
    page = SimpleNamespace(page=SimpleNamespace(items=[{"phoneNumber": "+1", "state": "ACTIVE"}]))
    assert projector(page) == [  # type: ignore[arg-type]
        {"__typename": "PhoneNumber", "number": "+1", "state": "ACTIVE"}
    ]


def test_a_projection_counts_the_items_read_value_by_value() -> None:
    projector = compiled_nodes("phoneNumber mainNumber")
    assert projector is not None
    items = [{"phoneNumber": "+1", "mainNumber": True}, {"phoneNumber": 5, "mainNumber": False}]
    page = SimpleNamespace(page=SimpleNamespace(items=items))
    projection = projector.project(page)  # type: ignore[arg-type]
    assert projection.items == [
        {"phoneNumber": "+1", "mainNumber": True},
        {"phoneNumber": "5", "mainNumber": False},
    ]
    assert projection.per_value == 1  # the number that is not text


def test_the_compiler_declines_a_field_with_its_own_resolver() -> None:
    assert compiled_nodes("phoneNumber owner { person { id } }") is None


# -- the C path (struct_projection) -----------------------------------------------------------


async def test_a_page_is_encoded_in_c_from_the_upstream_bytes() -> None:
    async with side_by_side() as pair:
        pair.upstream.items = simulator_items(300)
        await pair.both(f"{{ phoneNumbers(page: {{first: 300}}) {{ nodes {{ {EVERY_FIELD} }} }} }}")
        assert (pair.encoded_stats.encoded, pair.encoded_stats.encoded_items) == (1, 300)
        # An alias, a hidden owner id and a time: the response Structs are filled from the
        # decoded ones (msgspec.convert), in C as well.
        await pair.both(
            "{ phoneNumbers(page: {first: 300}) { nodes { n: phoneNumber "
            "owner { kind: __typename e: elinExpiryTime } } } }"
        )
        assert pair.encoded_stats.encoded == 2
        # One malformed value anywhere the selection reads: the whole page takes the Python
        # projector, unchanged.
        pair.upstream.items = demo_items(300)
        await pair.both(f"{{ phoneNumbers(page: {{first: 300}}) {{ nodes {{ {EVERY_FIELD} }} }} }}")
        assert pair.encoded_stats.encoded == 2
        assert pair.encoded_stats.projected == 3


async def test_a_cached_page_is_read_in_c_as_it_was_stored() -> None:
    """The page cache keeps the upstream's bodies: a hit is encoded from them, with no dict
    made to store the page or to read it back."""
    async with side_by_side(cache_ttl=60) as pair:
        pair.upstream.items = simulator_items(200)
        query = f"{{ phoneNumbers(page: {{first: 200}}) {{ nodes {{ {EVERY_FIELD} }} }} }}"
        first = await pair.answer(pair.encoded, query, None, encoded_lists=True)
        again = await pair.answer(pair.encoded, query, None, encoded_lists=True)
        normal = await pair.answer(pair.normal, query, None)
        assert first == again == normal
        assert pair.upstream.calls == 1
        assert pair.encoded_stats.encoded == 2


async def test_a_fanned_out_list_is_merged_from_the_bytes_and_encoded_in_c() -> None:
    async with side_by_side() as pair:
        items = simulator_items(40)
        pair.upstream.items = items
        locations = sorted({item["location"]["id"] for item in items})[:2]
        await pair.both(
            f"{{ phoneNumbers(filter: {{locationIds: {orjson.dumps(locations).decode()}}}, "
            f"page: {{first: 30}}) {{ nodes {{ {EVERY_FIELD} }} }} }}"
        )
        assert pair.encoded_stats.encoded == 1


async def streamed_payloads(
    pair: Any, schema: Any, query: str, *, encoded_lists: bool
) -> list[bytes]:
    """Every payload of a streamed answer, serialised as a transport writes it."""
    context = RequestContext(
        pair.source.for_caller(None), incremental_delivery=True, encoded_lists=encoded_lists
    )
    frames = await schema.frames(query, context_value=context)
    return [orjson.dumps(frame.formatted) async for frame in frames]


@pytest.mark.parametrize(
    ("list_field", "selection"),
    [("nodes", EVERY_FIELD), ("edges", f"cursor node {{ {EVERY_FIELD} }}")],
)
async def test_streamed_chunks_are_encoded_in_c_one_item_at_a_time(
    list_field: str, selection: str
) -> None:
    """A streamed list's chunk is its items encoded in C, one JSON each (edges laid around
    their nodes), the bytes of the Python projector's payloads."""
    async with side_by_side() as pair:
        pair.upstream.items = simulator_items(120)
        query = (
            "{ phoneNumbers(page: {first: 120}) { totalCount "
            f"{list_field} @stream(initialCount: 7) {{ {selection} }} }} }}"
        )
        in_c = await streamed_payloads(pair, pair.encoded, query, encoded_lists=True)
        as_dicts = await streamed_payloads(pair, pair.fast, query, encoded_lists=False)
        assert in_c == as_dicts
        assert len(in_c) >= 2
        assert pair.encoded_stats.streamed == 1
        # The upstream page is one chunk: all 120 items encoded in C, the head's 7 included.
        assert (pair.encoded_stats.encoded, pair.encoded_stats.encoded_items) == (1, 120)
        initial = orjson.loads(in_c[0])
        assert len(initial["data"]["phoneNumbers"][list_field]) == 7


async def test_edges_are_laid_around_nodes_encoded_in_c() -> None:
    """An edge's JSON is its template (keys in response order, a constant ``__typename``, the
    position's cursor) around the node's C-encoded JSON: the bytes of the other two paths,
    at an offset too, and with the cursors that page on from where they stand."""
    async with side_by_side() as pair:
        pair.upstream.items = simulator_items(300)
        await pair.both(
            "{ phoneNumbers(page: {first: 120, offset: 33}) { edges { "
            f"cursor node {{ {EVERY_FIELD} }} }} }} }}"
        )
        assert (pair.encoded_stats.encoded, pair.encoded_stats.encoded_items) == (1, 120)
        await pair.both(
            "{ phoneNumbers(page: {first: 50}) { e: edges { kind: __typename c: cursor "
            "n: node { phoneNumber owner { __typename id } } cursor } } }"
        )
        assert pair.encoded_stats.encoded == 2
        # Two node aliases with their own selections: the Python projector's (unchanged).
        await pair.both(
            "{ phoneNumbers(page: {first: 50}) { edges { node { esn } n: node { phoneNumber } } } }"
        )
        assert pair.encoded_stats.encoded == 2
        # Edges of a node alone: no cursor made.
        await pair.both("{ phoneNumbers(page: {first: 50}) { edges { node { esn } } } }")
        assert pair.encoded_stats.encoded == 3
        # A fanned-out list's edges carry its merged cursors.
        locations = sorted({item["location"]["id"] for item in pair.upstream.items})[:2]
        await pair.both(
            f"{{ phoneNumbers(filter: {{locationIds: {orjson.dumps(locations).decode()}}}, "
            "page: {first: 30}) { edges { cursor node { phoneNumber esn } } } }"
        )
        assert pair.encoded_stats.encoded == 4
        # Each encoded cursor names its own position in the window (at the offset).
        answer = await pair.answer(
            pair.encoded,
            "{ phoneNumbers(page: {first: 20, offset: 5}) { edges { cursor node { esn } } } }",
            None,
            encoded_lists=True,
        )
        edges = orjson.loads(answer)["data"]["phoneNumbers"]["edges"]
        positions = [int(cursor_fields(edge["cursor"], "after")[1][-1]) for edge in edges]
        assert positions == list(range(5, 25))

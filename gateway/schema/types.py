"""The GraphQL types of the public schema (CONTRACT.md): enums, inputs, output objects and
the federation entities.

Output objects are plain strawberry dataclasses built by the ``reader``; the connection
resolves its nodes, edges and page info lazily, so a field nobody selected costs nothing.
The entities' own fields (``Location.phoneNumbers`` and the like) are a few lines each: they
hand their arguments and their key to the request's numbers, reached through the context.
Both are described here as Protocols (``NumbersContext``, ``RequestNumbers``), which the
GraphQL context and ``pipeline.source.CallerNumbers`` satisfy; so this module imports nothing
from the layers above it, not even for type checking.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Protocol, TypeVar

import strawberry
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionSetNode,
    VariableNode,
)

from gateway.domain.query import EntityKey


@strawberry.enum(description="Whether a phone number is in service.")
class NumberState(Enum):
    ACTIVE = strawberry.enum_value("ACTIVE", description="The number is active and routable.")
    INACTIVE = strawberry.enum_value(
        "INACTIVE", description="The number is provisioned but not yet active."
    )
    UNKNOWN = strawberry.enum_value(
        "UNKNOWN",
        description="The upstream sent a state this gateway does not know yet. "
        "Never valid as a filter value.",
    )


@strawberry.enum(description="How a phone number is used at its location.")
class PhoneNumberType(Enum):
    PRIMARY = strawberry.enum_value("PRIMARY", description="The owner's primary number.")
    ALTERNATE = strawberry.enum_value("ALTERNATE", description="An alternate number of the owner.")
    FAX = strawberry.enum_value("FAX", description="A fax number.")
    DNIS = strawberry.enum_value(
        "DNIS", description="A dialed-number identification service number."
    )
    UNKNOWN = strawberry.enum_value(
        "UNKNOWN",
        description="The upstream sent a type this gateway does not know yet. "
        "Never valid as a filter value.",
    )


@strawberry.enum(description="Whether an entry has a phone number or is an extension only.")
class NumberType(Enum):
    NUMBER = strawberry.enum_value("NUMBER", description="Entries that have a phone number.")
    EXTENSION = strawberry.enum_value(
        "EXTENSION",
        description="Extension-only entries. Cannot be combined with `available` or `state`.",
    )


@strawberry.enum(description="The telephony network a number belongs to.")
class TelephonyType(Enum):
    PSTN_NUMBER = strawberry.enum_value(
        "PSTN_NUMBER", description="A public switched telephone network number."
    )
    MOBILE_NUMBER = strawberry.enum_value("MOBILE_NUMBER", description="A mobile number.")
    UNKNOWN = strawberry.enum_value(
        "UNKNOWN",
        description="The upstream sent a type this gateway does not know yet. "
        "Never valid as a filter value.",
    )


@strawberry.enum(description="What kind of entity a number or extension is assigned to.")
class OwnerType(Enum):
    PEOPLE = strawberry.enum_value("PEOPLE", description="A person.")
    PLACE = strawberry.enum_value("PLACE", description="A workspace.")
    VIRTUAL_LINE = strawberry.enum_value("VIRTUAL_LINE", description="A virtual line.")
    AUTO_ATTENDANT = strawberry.enum_value("AUTO_ATTENDANT", description="An auto attendant.")
    CALL_QUEUE = strawberry.enum_value("CALL_QUEUE", description="A call queue.")
    GROUP_PAGING = strawberry.enum_value(
        "GROUP_PAGING", description="A paging group (older upstream spelling)."
    )
    PAGING_GROUP = strawberry.enum_value("PAGING_GROUP", description="A paging group.")
    HUNT_GROUP = strawberry.enum_value("HUNT_GROUP", description="A hunt group.")
    VOICE_MESSAGING = strawberry.enum_value("VOICE_MESSAGING", description="Voice messaging.")
    OFFICE_ANYWHERE = strawberry.enum_value(
        "OFFICE_ANYWHERE", description="Office Anywhere (single number reach)."
    )
    BROADWORKS_ANYWHERE = strawberry.enum_value(
        "BROADWORKS_ANYWHERE", description="BroadWorks Anywhere (single number reach)."
    )
    CONTACT_CENTER_LINK = strawberry.enum_value(
        "CONTACT_CENTER_LINK", description="A Contact Center link."
    )
    CONTACT_CENTER_ADAPTER = strawberry.enum_value(
        "CONTACT_CENTER_ADAPTER", description="A Contact Center adapter."
    )
    ROUTE_LIST = strawberry.enum_value("ROUTE_LIST", description="A route list.")
    VOICEMAIL_GROUP = strawberry.enum_value("VOICEMAIL_GROUP", description="A voicemail group.")
    COLLABORATE_BRIDGE = strawberry.enum_value(
        "COLLABORATE_BRIDGE", description="A collaborate bridge."
    )
    AI_RECEPTIONIST = strawberry.enum_value("AI_RECEPTIONIST", description="An AI receptionist.")
    UNKNOWN = strawberry.enum_value(
        "UNKNOWN",
        description="The upstream sent an owner type this gateway does not know yet. "
        "Never valid as a filter value.",
    )


@strawberry.enum(description="What to sort phone numbers by.")
class PhoneNumberSortField(Enum):
    LAST_NAME = strawberry.enum_value("LAST_NAME", description="The owner's last name.")
    DN = strawberry.enum_value("DN", description="The directory number (the phone number).")
    EXTENSION = strawberry.enum_value("EXTENSION", description="The extension.")


@strawberry.enum(description="Sort direction.")
class SortDirection(Enum):
    ASC = strawberry.enum_value("ASC", description="Ascending.")
    DESC = strawberry.enum_value("DESC", description="Descending.")


@strawberry.input(
    description="Narrows the list. Every field is optional; unset fields do not filter. "
    "Each maps to the upstream query parameter of the same name."
)
class PhoneNumberFilter:
    location_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only numbers of this location."
    )
    phone_number: str | None = strawberry.field(
        default=None, description="Search for this phone number."
    )
    available: bool | None = strawberry.field(
        default=None,
        description="Only available (unassigned) numbers. `true` cannot be combined with "
        "`ownerType`; cannot be combined with `reservedNumber` or `numberType: EXTENSION`.",
    )
    owner_name: str | None = strawberry.field(
        default=None, description="Only numbers whose owner has this name (at most 255 characters)."
    )
    owner_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="Only entries assigned to the person, workspace or feature with this id "
        "(UUID or broadsoftId).",
    )
    owner_type: OwnerType | None = strawberry.field(
        default=None, description="Only numbers whose owner is of this type."
    )
    extension: str | None = strawberry.field(
        default=None, description="Only entries with exactly this extension."
    )
    number_type: NumberType | None = strawberry.field(
        default=None, description="Only numbers, or only extension-only entries."
    )
    phone_number_type: PhoneNumberType | None = strawberry.field(
        default=None,
        description="Only numbers of this type; excludes extension-only entries.",
    )
    state: NumberState | None = strawberry.field(
        default=None,
        description="Only numbers in this state; excludes extension-only entries. "
        "Cannot be combined with `numberType: EXTENSION`.",
    )
    toll_free_numbers: bool | None = strawberry.field(
        default=None, description="Only toll-free numbers."
    )
    restricted_non_geo_numbers: bool | None = strawberry.field(
        default=None, description="Only restricted non-geographical numbers."
    )
    included_telephony_types: list[TelephonyType] | None = strawberry.field(
        default=None,
        description="Only numbers of these telephony types; unset means both PSTN and mobile. "
        "Must not be empty.",
    )
    service_number: bool | None = strawberry.field(
        default=None, description="Only service (high-concurrency) numbers."
    )
    reserved_number: bool | None = strawberry.field(
        default=None,
        description="`true`: only reserved numbers; `false`: only non-reserved numbers. "
        "Cannot be combined with `available` or `assigned`.",
    )
    assigned: bool | None = strawberry.field(
        default=None,
        description="`true`: only numbers assigned to an owner; `false`: only numbers without "
        "one. Cannot be combined with `numberType: EXTENSION` or `reservedNumber`.",
    )
    elin_enabled: bool | None = strawberry.field(
        default=None,
        description="`true`: only numbers used as an Emergency Location Identification Number "
        "(ELIN, the callback number of an emergency call); `false`: only numbers that are not.",
    )


@strawberry.input(description="The order of the list; without it, by number then extension.")
class PhoneNumberOrder:
    by: PhoneNumberSortField = strawberry.field(description="What to sort by.")
    direction: SortDirection = strawberry.field(
        default=SortDirection.ASC, description="Ascending (default) or descending."
    )


@strawberry.input(
    description="Which slice of the list to return. Use `after` (cursor paging) or `offset`, "
    "not both."
)
class PageInput:
    first: int | None = strawberry.field(
        default=None,
        description="How many entries to return: 1 up to the gateway's maximum page size "
        "(2000 unless configured); default 100.",
    )
    after: str | None = strawberry.field(
        default=None,
        description="Return entries after this opaque cursor (from `pageInfo.endCursor` or an "
        "edge). A cursor is only valid with the same org, filter and order.",
    )
    offset: int | None = strawberry.field(
        default=None,
        description="Zero-based position to start at. Cannot be combined with `after`.",
    )


FilterArgument = Annotated[
    PhoneNumberFilter | None,
    strawberry.argument(description="Narrows the list; unset fields do not filter."),
]
OrderArgument = Annotated[
    PhoneNumberOrder | None,
    strawberry.argument(description="Sort order; default: by number, then extension."),
]
PageArgument = Annotated[
    PageInput | None,
    strawberry.argument(description="Which slice: `first` with `after` or `offset`."),
]


@strawberry.federation.type(
    keys=["id"],
    description="A location of the organization. A federation entity: other subgraphs (a "
    "locations service) may own it too; this one adds its phone numbers and counts.",
)
class Location:
    id: strawberry.ID = strawberry.field(description="The location's id.")
    name: str | None = strawberry.federation.field(
        shareable=True,
        description="The location's name, as the numbers' data carries it; null for a "
        "location reached only by reference (the locations service answers it there).",
    )

    @strawberry.field(description="The location's phone numbers (`filter.locationId` is the id).")
    async def phone_numbers(
        self,
        info: strawberry.Info[NumbersContext, None],
        filter: FilterArgument = None,
        order: OrderArgument = None,
        page: PageArgument = None,
    ) -> PhoneNumberConnection | None:
        key = EntityKey("location_id", self.id, "Location")
        return await numbers_connection(info, None, filter, order, page, key)

    @strawberry.field(description="Counts over the location's numbers the filter matches.")
    async def number_counts(
        self, info: strawberry.Info[NumbersContext, None], filter: FilterArgument = None
    ) -> NumberCounts | None:
        key = EntityKey("location_id", self.id, "Location")
        return await caller_numbers(info).number_counts(None, filter, entity_key=key)


@strawberry.federation.type(
    keys=["id"],
    description="A person. A federation entity owned by a people service; this subgraph adds "
    "the numbers and extensions assigned to them.",
)
class Person:
    id: strawberry.ID = strawberry.field(description="The person's id.")

    @strawberry.field(description="The person's phone numbers (`filter.ownerId` is the id).")
    async def phone_numbers(
        self,
        info: strawberry.Info[NumbersContext, None],
        filter: FilterArgument = None,
        order: OrderArgument = None,
        page: PageArgument = None,
    ) -> PhoneNumberConnection | None:
        key = EntityKey("owner_id", self.id, "Person")
        return await numbers_connection(info, None, filter, order, page, key)


@strawberry.federation.type(
    keys=["id"],
    description="A Webex organization. A federation entity; this subgraph adds its phone "
    "numbers and counts.",
)
class Organization:
    id: strawberry.ID = strawberry.field(description="The organization's id.")

    @strawberry.field(description="The organization's phone numbers (`orgId` is the id).")
    async def phone_numbers(
        self,
        info: strawberry.Info[NumbersContext, None],
        filter: FilterArgument = None,
        order: OrderArgument = None,
        page: PageArgument = None,
    ) -> PhoneNumberConnection | None:
        return await numbers_connection(info, self.id, filter, order, page, None)

    @strawberry.field(description="Counts over the organization's numbers the filter matches.")
    async def number_counts(
        self, info: strawberry.Info[NumbersContext, None], filter: FilterArgument = None
    ) -> NumberCounts | None:
        return await caller_numbers(info).number_counts(self.id, filter)


@strawberry.type(description="The person, workspace or feature a number is assigned to.")
class NumberOwner:
    id: strawberry.ID = strawberry.field(description="The owner's id.")
    type: OwnerType = strawberry.field(description="What kind of owner this is.")
    first_name: str | None = strawberry.field(
        description="First name; only people and virtual lines have one."
    )
    last_name: str | None = strawberry.field(
        description="Last name; only people and virtual lines have one."
    )
    display_name: str | None = strawberry.field(
        description="The name the owner is shown with; features such as auto attendants and "
        "call queues have only this one."
    )
    elin_expiry_time: datetime | None = strawberry.field(
        description="When (UTC) a temporary ELIN assignment to this owner, made when they "
        "placed an emergency call, expires; null when there is none (or the upstream's value "
        "cannot be read)."
    )

    @strawberry.field(
        description="The owner as a `Person` entity, so a supergraph can join the people "
        "service's fields; null unless the owner type is PEOPLE."
    )
    def person(self) -> Person | None:
        return Person(id=self.id) if self.type is OwnerType.PEOPLE else None


@strawberry.type(
    description="A phone number or extension of the organization, with its status and owner."
)
class PhoneNumber:
    phone_number: str | None = strawberry.field(
        description="The phone number in E.164 form; null for extension-only entries."
    )
    extension: str | None = strawberry.field(description="The extension, if any.")
    routing_prefix: str | None = strawberry.field(description="The location's routing prefix.")
    esn: str | None = strawberry.field(
        description="Enterprise significant number: routing prefix plus extension."
    )
    state: NumberState | None = strawberry.field(
        description="Whether the number is active; null for extension-only entries."
    )
    phone_number_type: PhoneNumberType | None = strawberry.field(
        description="How the number is used."
    )
    main_number: bool = strawberry.field(
        description="True when this number is the location's caller ID (main number)."
    )
    included_telephony_types: TelephonyType | None = strawberry.field(
        description="The number's telephony type (a single value despite the plural name)."
    )
    mobile_network: str | None = strawberry.field(
        description="The mobile network; mobile numbers only."
    )
    routing_profile: str | None = strawberry.field(
        description="The routing profile; mobile numbers only."
    )
    toll_free_number: bool = strawberry.field(description="True for a toll-free number.")
    is_service_number: bool = strawberry.field(
        description="True for a service (high-concurrency) number; false for a standard one."
    )
    is_reserved_number: bool | None = strawberry.field(
        description="True when the number is reserved; null when the upstream does not say."
    )
    elin_enabled: bool | None = strawberry.field(
        description="True when the number is used as an Emergency Location Identification "
        "Number (ELIN) for callbacks after an emergency call; null when the upstream does not say."
    )
    location: Location = strawberry.field(description="The location the number belongs to.")
    owner: NumberOwner | None = strawberry.field(
        description="Who the number is assigned to; null when unassigned."
    )


@strawberry.type(description="A phone number with the cursor of its position.")
class PhoneNumberEdge:
    cursor: str = strawberry.field(description="Opaque cursor; pass it as `page.after`.")
    node: PhoneNumber = strawberry.field(description="The phone number.")


@strawberry.type(description="Where this page sits in the whole list.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More entries follow this page.")
    has_previous_page: bool = strawberry.field(description="Entries precede this page.")
    start_cursor: str | None = strawberry.field(
        description="Cursor of the first entry; null on an empty page."
    )
    end_cursor: str | None = strawberry.field(
        description="Cursor of the last entry; pass it as `page.after` for the next page."
    )


@strawberry.type(description="Counts over every entry the filter matches, not only one page.")
class NumberCounts:
    assigned: int | None = strawberry.field(description="Numbers assigned to an owner.")
    un_assigned: int | None = strawberry.field(description="Numbers not assigned to anyone.")
    in_active: int | None = strawberry.field(description="Inactive numbers.")
    extension_only: int | None = strawberry.field(description="Extensions without a phone number.")
    toll_free_numbers: int | None = strawberry.field(description="Toll-free numbers.")
    total: int | None = strawberry.field(description="All matched numbers and extensions.")
    mobile_number: int | None = strawberry.field(description="Mobile numbers.")
    service_number: int | None = strawberry.field(description="PSTN service numbers.")
    reserved_number: int | None = strawberry.field(description="Reserved numbers.")
    available: int | None = strawberry.field(description="Numbers available for assignment.")
    elin: int | None = strawberry.field(
        description="Numbers used as Emergency Location Identification Numbers (ELIN)."
    )


class PageSource(Protocol):
    """What a connection reads its fields from (``numbers.connection.PageResult``, or
    ``StreamedPageResult`` whose lists are async iterators read as the upstream is walked)."""

    def nodes(self) -> list[PhoneNumber] | AsyncIterator[PhoneNumber]: ...
    def edges(self) -> list[PhoneNumberEdge] | AsyncIterator[PhoneNumberEdge]: ...
    def page_info(self) -> PageInfo: ...
    def total_count(self) -> int: ...


class RequestNumbers(Protocol):
    """What the fields read numbers through: one request's numbers
    (``pipeline.source.CallerNumbers``), with its caller, loader and cache record."""

    async def phone_numbers(
        self,
        org_id: str | None,
        flt: PhoneNumberFilter | None,
        order: PhoneNumberOrder | None,
        page: PageInput | None,
        *,
        entity_key: EntityKey | None = None,
        total: bool = False,
        streamed: bool = False,
        held_stream: bool = False,
    ) -> PageSource: ...

    async def number_counts(
        self,
        org_id: str | None,
        flt: PhoneNumberFilter | None,
        *,
        entity_key: EntityKey | None = None,
    ) -> NumberCounts: ...


class NumbersContext(Protocol):
    """What the fields need of the GraphQL context (``api.context.RequestContext``)."""

    @property
    def numbers(self) -> RequestNumbers: ...


ContextT = TypeVar("ContextT", bound=NumbersContext)
_ITEM_LISTS = frozenset({"nodes", "edges"})


@strawberry.type(description="One page of phone numbers, Relay-style.")
class PhoneNumberConnection:
    result: strawberry.Private[PageSource]

    # A list under @stream is an async iterator (the upstream walk), hence graphql_type.
    @strawberry.field(
        description="The page's phone numbers, in the upstream's order.",
        graphql_type=list[PhoneNumber],
    )
    def nodes(self) -> list[PhoneNumber] | AsyncIterator[PhoneNumber]:
        return self.result.nodes()

    @strawberry.field(
        description="The page's phone numbers with their cursors.",
        graphql_type=list[PhoneNumberEdge],
    )
    def edges(self) -> list[PhoneNumberEdge] | AsyncIterator[PhoneNumberEdge]:
        return self.result.edges()

    @strawberry.field(description="Where this page sits in the whole list.")
    def page_info(self) -> PageInfo:
        return self.result.page_info()

    @strawberry.field(description="How many entries the filter matches in all (every page).")
    def total_count(self) -> int:
        return self.result.total_count()


def caller_numbers(info: strawberry.Info[ContextT, None]) -> RequestNumbers:
    """The request's numbers, through the context."""
    return info.context.numbers


@dataclass(slots=True)
class ConnectionAsks:
    """What a ``phoneNumbers`` field selects of its connection that changes how it is read
    (``connection_asks`` fills it in)."""

    item_lists: int = 0  # ``nodes`` and ``edges`` fields, directly or through fragments
    streamed_lists: int = 0  # of those, under an active ``@stream``
    total_count: bool = False
    page_info: bool = False

    @property
    def streams_items(self) -> bool:
        """Whether the items are delivered with ``@stream``: every ``nodes`` or ``edges``
        field is under an active ``@stream`` (the rule ``api.cost`` prices by). One list
        without it holds the page whole, so the page is bounded as an unstreamed one."""
        return self.item_lists > 0 and self.streamed_lists == self.item_lists


def connection_asks(info: strawberry.Info[ContextT, None]) -> ConnectionAsks:
    """What the field's first node selects on its connection, directly or through fragments
    (``@skip``/``@include`` not applied, as strawberry's ``selected_fields``). Read from the
    document's own nodes: only the connection's level is walked, where ``selected_fields``
    would build objects for the whole subtree on every request."""
    raw = info._raw_info  # strawberry's Info exposes no public accessor for the nodes
    asks = ConnectionAsks()
    _walk_connection(raw.field_nodes[0].selection_set, raw.fragments, info.variable_values, asks)
    return asks


def _walk_connection(
    selection_set: SelectionSetNode | None,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    asks: ConnectionAsks,
) -> None:
    for node in selection_set.selections if selection_set is not None else ():
        if isinstance(node, FieldNode):
            name = node.name.value
            if name in _ITEM_LISTS:
                asks.item_lists += 1
                asks.streamed_lists += _under_active_stream(node, variables)
            elif name == "totalCount":
                asks.total_count = True
            elif name == "pageInfo":
                asks.page_info = True
        elif isinstance(node, InlineFragmentNode):
            _walk_connection(node.selection_set, fragments, variables, asks)
        elif isinstance(node, FragmentSpreadNode):
            fragment = fragments[node.name.value]
            _walk_connection(fragment.selection_set, fragments, variables, asks)


def _under_active_stream(field: FieldNode, variables: Mapping[str, Any]) -> bool:
    """``@stream`` on the field and its ``if`` not false (a variable read as sent, an
    unknown or null one counting as not false, as strawberry's directive values read)."""
    for directive in field.directives or ():
        if directive.name.value != "stream":
            continue
        for argument in directive.arguments or ():
            if argument.name.value == "if":
                value = argument.value
                if isinstance(value, VariableNode):
                    return variables.get(value.name.value) is not False
                return getattr(value, "value", None) is not False
        return True
    return False


async def numbers_connection(
    info: strawberry.Info[ContextT, None],
    org_id: str | None,
    flt: PhoneNumberFilter | None,
    order: PhoneNumberOrder | None,
    page: PageInput | None,
    entity_key: EntityKey | None,
) -> PhoneNumberConnection:
    """What every ``phoneNumbers`` field answers, root or entity: one page of the query, or
    with ``@stream`` on its items a window walked while the client takes it."""
    asks = connection_asks(info)
    asks_stream = asks.streams_items
    # Merged into one JSON body (``RequestContext.incremental_delivery`` False), a streamed
    # list would be held whole: bounded as unstreamed. A context that does not say executes
    # the stream itself (``schema.stream`` in tests), so it streams.
    streamed = asks_stream and getattr(info.context, "incremental_delivery", True)
    # A streamed window answers pageInfo before its walk ends: from the upstream's total.
    total = asks.total_count or (streamed and asks.page_info)
    result = await caller_numbers(info).phone_numbers(
        org_id,
        flt,
        order,
        page,
        entity_key=entity_key,
        total=total,
        streamed=streamed,
        held_stream=asks_stream and not streamed,
    )
    return PhoneNumberConnection(result=result)

"""The schema's object types (CONTRACT.md): the phone number and what hangs off it, the page
of numbers (a Relay-style connection), the counts, the federation entities and a change.

They describe to GraphQL the domain's records (``domain.records``), which are what actually flow
through execution: a type without a resolver reads each field straight from the record's
attribute of the same name, so an upstream item is read once, by the reader, and never copied
into a schema object. The entities' own fields (``Location.phoneNumbers`` and the like) are a
few lines each: they hand their arguments, made domain asks (``schema.inputs``), and their key
to the request's numbers, reached through the context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import strawberry

from gateway.data.source import CallerNumbers
from gateway.domain import enums as domain_enums
from gateway.domain import records
from gateway.domain.connection import PageResult, StreamedWindow
from gateway.domain.query import EntityKey
from gateway.schema.context import RequestContext
from gateway.schema.cost_directives import counts_directives, page_directives
from gateway.schema.enums import (
    NumberState,
    OwnerType,
    PhoneNumberChangeKind,
    PhoneNumberType,
    TelephonyType,
)
from gateway.schema.inputs import (
    AfterArgument,
    BeforeArgument,
    FilterArgument,
    FirstArgument,
    LastArgument,
    OrderArgument,
    PageArgument,
    PhoneNumberFilter,
    PhoneNumberOrder,
    to_filter,
    to_order,
    to_page,
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

    @strawberry.field(
        description="The location's phone numbers (`filter.locationId` is the id).",
        directives=page_directives(),
    )
    async def phone_numbers(
        self,
        info: strawberry.Info[RequestContext, None],
        filter: FilterArgument = None,
        order: OrderArgument = None,
        page: PageArgument = None,
        first: FirstArgument = None,
        after: AfterArgument = None,
        last: LastArgument = None,
        before: BeforeArgument = None,
    ) -> PhoneNumberConnection | None:
        key = EntityKey("location_id", self.id, "Location")
        paging = to_page(page, first, after, last, before)
        return await numbers_connection(info, None, filter, order, paging, key)

    @strawberry.field(
        description="Counts over the location's numbers the filter matches.",
        graphql_type=NumberCounts | None,
        directives=counts_directives(),
    )
    async def number_counts(
        self, info: strawberry.Info[RequestContext, None], filter: FilterArgument = None
    ) -> records.NumberCounts | None:
        key = EntityKey("location_id", self.id, "Location")
        return await caller_numbers(info).number_counts(None, to_filter(filter), entity_key=key)


@strawberry.federation.type(
    keys=["id"],
    description="A person. A federation entity owned by a people service; this subgraph adds "
    "the numbers and extensions assigned to them.",
)
class Person:
    id: strawberry.ID = strawberry.field(description="The person's id.")

    @strawberry.field(
        description="The person's phone numbers (`filter.ownerId` is the id).",
        directives=page_directives(),
    )
    async def phone_numbers(
        self,
        info: strawberry.Info[RequestContext, None],
        filter: FilterArgument = None,
        order: OrderArgument = None,
        page: PageArgument = None,
        first: FirstArgument = None,
        after: AfterArgument = None,
        last: LastArgument = None,
        before: BeforeArgument = None,
    ) -> PhoneNumberConnection | None:
        key = EntityKey("owner_id", self.id, "Person")
        paging = to_page(page, first, after, last, before)
        return await numbers_connection(info, None, filter, order, paging, key)


@strawberry.federation.type(
    keys=["id"],
    description="A Webex organization. A federation entity; this subgraph adds its phone "
    "numbers and counts.",
)
class Organization:
    id: strawberry.ID = strawberry.field(description="The organization's id.")

    @strawberry.field(
        description="The organization's phone numbers (`orgId` is the id).",
        directives=page_directives(),
    )
    async def phone_numbers(
        self,
        info: strawberry.Info[RequestContext, None],
        filter: FilterArgument = None,
        order: OrderArgument = None,
        page: PageArgument = None,
        first: FirstArgument = None,
        after: AfterArgument = None,
        last: LastArgument = None,
        before: BeforeArgument = None,
    ) -> PhoneNumberConnection | None:
        paging = to_page(page, first, after, last, before)
        return await numbers_connection(info, self.id, filter, order, paging, None)

    @strawberry.field(
        description="Counts over the organization's numbers the filter matches.",
        graphql_type=NumberCounts | None,
        directives=counts_directives(),
    )
    async def number_counts(
        self, info: strawberry.Info[RequestContext, None], filter: FilterArgument = None
    ) -> records.NumberCounts | None:
        return await caller_numbers(info).number_counts(self.id, to_filter(filter))


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
        # ``self`` is the reader's ``records.NumberOwner``: its type is the domain's member.
        owner_type: object = self.type
        return Person(id=self.id) if owner_type is domain_enums.OwnerType.PEOPLE else None


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
    cursor: str = strawberry.field(
        description="Opaque cursor of this entry: pass it as `after` (or `page.after`) "
        "to continue after it, or as `before` to page back from it."
    )
    node: PhoneNumber = strawberry.field(description="The phone number.")


@strawberry.type(description="Where this page sits in the whole list.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More entries follow this page.")
    has_previous_page: bool = strawberry.field(description="Entries precede this page.")
    start_cursor: str | None = strawberry.field(
        description="Cursor of the first entry; null on an empty page. Pass it as `before` "
        "for the previous page."
    )
    end_cursor: str | None = strawberry.field(
        description="Cursor of the last entry; pass it as `after` (or `page.after`) for the "
        "next page."
    )


@strawberry.type(description="One page of phone numbers, Relay-style.")
class PhoneNumberConnection:
    result: strawberry.Private[PageResult | StreamedWindow]

    # A list under @stream is an async iterator (the upstream walk), hence graphql_type; the
    # items are the reader's records (the projection fast path usually stands in for these).
    @strawberry.field(
        description="The page's phone numbers, in the upstream's order.",
        graphql_type=list[PhoneNumber],
    )
    def nodes(self) -> list[records.PhoneNumber] | AsyncIterator[records.PhoneNumber]:
        return self.result.nodes()

    @strawberry.field(
        description="The page's phone numbers with their cursors.",
        graphql_type=list[PhoneNumberEdge],
    )
    def edges(self) -> list[records.PhoneNumberEdge] | AsyncIterator[records.PhoneNumberEdge]:
        return self.result.edges()

    @strawberry.field(description="Where this page sits in the whole list.", graphql_type=PageInfo)
    def page_info(self) -> records.PageInfo:
        return self.result.page_info()

    @strawberry.field(description="How many entries the filter matches in all (every page).")
    def total_count(self) -> int:
        return self.result.total_count()


@strawberry.type(description="One change to the entries a filter matches, seen by polling.")
class PhoneNumberChange:
    kind: PhoneNumberChangeKind = strawberry.field(description="What happened.")
    number: PhoneNumber | None = strawberry.field(
        description="The entry after the change; null for SYNCED and REMOVED."
    )
    previous: PhoneNumber | None = strawberry.field(
        description="The entry before the change; null for SYNCED and ADDED."
    )
    observed_at: datetime = strawberry.field(
        description="When the gateway saw the change (the poll that found it), in UTC."
    )


def caller_numbers(info: strawberry.Info[RequestContext, None]) -> CallerNumbers:
    """The request's numbers, through the context."""
    return info.context.numbers


async def numbers_connection(
    info: strawberry.Info[RequestContext, None],
    org_id: str | None,
    flt: PhoneNumberFilter | None,
    order: PhoneNumberOrder | None,
    page: records.PageRequest | None,
    entity_key: EntityKey | None,
) -> PhoneNumberConnection:
    """What every ``phoneNumbers`` field answers, root or entity: one page of the query, or
    with ``@stream`` on its items a window walked while the client takes it. What the field
    selects of its connection (``connection_asks``) decides how it is read; ``page`` (from
    the ``page`` input or Relay's arguments: ``inputs.to_page``) which slice."""
    asks = info.context.connections.take(info.path)
    # Merged into one JSON body (``RequestContext.incremental_delivery`` False), a streamed
    # list would be held whole: bounded as unstreamed.
    streamed = asks.streams_items and info.context.incremental_delivery
    result = await caller_numbers(info).phone_numbers(
        org_id,
        to_filter(flt),
        to_order(order),
        page,
        entity_key=entity_key,
        # A streamed window answers pageInfo before its walk ends: from the upstream's total.
        total=asks.total_count or (streamed and asks.page_info),
        streamed=streamed,
        held_stream=asks.streams_items and not streamed,
    )
    return PhoneNumberConnection(result=result)

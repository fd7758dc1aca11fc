"""The root ``Query`` type. Resolvers hand their arguments to the request's numbers and
return; argument rules live in ``domain.arguments``, the data path in ``data.source``; entity
fields live with their types (``schema.types``).
"""

from __future__ import annotations

from typing import Annotated

import strawberry

from gateway.domain import records
from gateway.schema.context import RequestContext
from gateway.schema.cost_directives import counts_directives, page_directives
from gateway.schema.inputs import (
    AfterArgument,
    BeforeArgument,
    FilterArgument,
    FirstArgument,
    LastArgument,
    OrderArgument,
    PageArgument,
    to_filter,
    to_page,
)
from gateway.schema.types import (
    NumberCounts,
    PhoneNumberConnection,
    caller_numbers,
    numbers_connection,
)

OrgIdArgument = Annotated[
    strawberry.ID | None,
    strawberry.argument(
        description="The organization to list; default is the caller's own. Partners pass "
        "the id of an organization they manage."
    ),
]


@strawberry.type(description="Read the phone numbers of Webex Calling organizations.")
class Query:
    @strawberry.field(
        description="A page of the organization's phone numbers and extensions, with their "
        "status and owner. Null (with an error) when the upstream call fails.",
        directives=page_directives(),
    )
    async def phone_numbers(
        self,
        info: strawberry.Info[RequestContext, None],
        org_id: OrgIdArgument = None,
        filter: FilterArgument = None,
        order: OrderArgument = None,
        page: PageArgument = None,
        first: FirstArgument = None,
        after: AfterArgument = None,
        last: LastArgument = None,
        before: BeforeArgument = None,
    ) -> PhoneNumberConnection | None:
        paging = to_page(page, first, after, last, before)
        return await numbers_connection(info, org_id, filter, order, paging, None)

    @strawberry.field(
        description="Counts over every entry the filter matches: assigned, unassigned, "
        "inactive, extension-only, toll-free, mobile, service and reserved numbers.",
        graphql_type=NumberCounts | None,
        directives=counts_directives(),
    )
    async def number_counts(
        self,
        info: strawberry.Info[RequestContext, None],
        org_id: OrgIdArgument = None,
        filter: FilterArgument = None,
    ) -> records.NumberCounts | None:
        return await caller_numbers(info).number_counts(org_id, to_filter(filter))

"""The root ``Query`` type. Resolvers read arguments, ask the loader, and wrap the answer;
validation and mapping live in ``translation``, HTTP in ``upstream``, batching in ``loaders``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import strawberry
from strawberry.types import Info
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection

from gateway.context import RequestContext
from gateway.graphql_types import (
    NumberCounts,
    PageInput,
    PhoneNumberConnection,
    PhoneNumberFilter,
    PhoneNumberOrder,
)
from gateway.translation import (
    Fetch,
    PageResult,
    numbers_query,
    page_window,
    to_number_counts,
)

OrgIdArgument = Annotated[
    strawberry.ID | None,
    strawberry.argument(
        description="The organization to list; default is the caller's own. Partners pass "
        "the id of an organization they manage."
    ),
]
FilterArgument = Annotated[
    PhoneNumberFilter | None,
    strawberry.argument(description="Narrows the list; unset fields do not filter."),
]


def selects(selections: Iterable[Selection], name: str) -> bool:
    """Whether ``name`` is selected directly or through fragments."""
    for selection in selections:
        if isinstance(selection, SelectedField) and selection.name == name:
            return True
        if isinstance(selection, FragmentSpread | InlineFragment) and selects(
            selection.selections, name
        ):
            return True
    return False


@strawberry.type(description="Read the phone numbers of Webex Calling organizations.")
class Query:
    @strawberry.field(
        description="A page of the organization's phone numbers and extensions, with their "
        "status and owner. Null (with an error) when the upstream call fails."
    )
    async def phone_numbers(
        self,
        info: Info[RequestContext, None],
        org_id: OrgIdArgument = None,
        filter: FilterArgument = None,
        order: Annotated[
            PhoneNumberOrder | None,
            strawberry.argument(description="Sort order; default: by number, then extension."),
        ] = None,
        page: Annotated[
            PageInput | None,
            strawberry.argument(description="Which slice: `first` with `after` or `offset`."),
        ] = None,
    ) -> PhoneNumberConnection | None:
        query = numbers_query(org_id, filter, order)
        window = page_window(query, page, info.context.settings.max_page_size)
        wants_total = selects(info.selected_fields[0].selections, "totalCount")
        answer = await info.context.numbers.load(Fetch(query, window, details=wants_total))
        return PhoneNumberConnection(result=PageResult(query, window, answer))

    @strawberry.field(
        description="Counts over every entry the filter matches: assigned, unassigned, "
        "inactive, extension-only, toll-free, mobile, service and reserved numbers."
    )
    async def number_counts(
        self,
        info: Info[RequestContext, None],
        org_id: OrgIdArgument = None,
        filter: FilterArgument = None,
    ) -> NumberCounts | None:
        query = numbers_query(org_id, filter, None)
        answer = await info.context.numbers.load(Fetch(query, None, details=True))
        return to_number_counts(answer.count)

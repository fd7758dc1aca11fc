"""The root ``Query`` type. Resolvers read arguments, ask the caller's numbers, and wrap the
answer; validation lives in ``numbers.arguments``, the data path in ``pipeline.source``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import strawberry
from strawberry.types import Info
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection

from gateway.api.context import RequestContext
from gateway.numbers.arguments import numbers_query, page_window
from gateway.numbers.types import (
    NumberCounts,
    PageInput,
    PhoneNumberConnection,
    PhoneNumberFilter,
    PhoneNumberOrder,
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
        total = selects(info.selected_fields[0].selections, "totalCount")
        return PhoneNumberConnection(
            result=await info.context.numbers.page(query, window, total=total)
        )

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
        return await info.context.numbers.counts(numbers_query(org_id, filter, None))

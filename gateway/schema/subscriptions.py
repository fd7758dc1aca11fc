"""The root ``Subscription`` type: ``phoneNumberChanges`` hands its arguments and the caller's
numbers to the app's ``ChangeFeeds`` (in the context, so every transport that subscribes with
a ``RequestContext`` serves it)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import strawberry

from gateway.domain import records
from gateway.errors import GatewayError
from gateway.schema.context import RequestContext
from gateway.schema.cost_directives import feed_directives
from gateway.schema.inputs import FilterArgument, to_filter
from gateway.schema.resolvers import OrgIdArgument
from gateway.schema.types import PhoneNumberChange


@strawberry.type(description="Live changes to phone numbers, found by polling the upstream.")
class Subscription:
    @strawberry.subscription(
        description="The changes to the entries the filter matches: `SYNCED` once the "
        "baseline is taken, then one event per changed entry per poll. One poll serves every "
        "subscriber with the same token, org and filter.",
        graphql_type=PhoneNumberChange,
        directives=feed_directives(),
    )
    async def phone_number_changes(
        self,
        info: strawberry.Info[RequestContext, None],
        org_id: OrgIdArgument = None,
        filter: FilterArgument = None,
    ) -> AsyncGenerator[records.PhoneNumberChange, None]:
        context = info.context
        if context.changes is None:
            raise GatewayError("Subscriptions are not served here.")
        # aclosing: a client that leaves closes this generator, and with it the watch at
        # once (its subscriber leaves the feed and logs its line), not whenever GC runs.
        async with aclosing(
            context.changes.watch(
                context.numbers, org_id, to_filter(filter), client_name=context.client_name
            )
        ) as changes:
            async for change in changes:
                yield change

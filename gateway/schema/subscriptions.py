"""The root ``Subscription`` type: ``phoneNumberChanges`` hands its arguments and the caller's
numbers to the app's ``ChangeFeeds`` (lifespan state, reached through the connection, so any
transport that runs ``schema.subscribe`` with a ``RequestContext`` serves it)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import strawberry

from gateway.changes.registry import ChangeFeeds
from gateway.domain.changes import PhoneNumberChange
from gateway.observability.request_facts import CLIENT_NAME_HEADER, client_field
from gateway.schema.context import RequestContext
from gateway.schema.resolvers import OrgIdArgument
from gateway.schema.types import FilterArgument


def client_name(info: strawberry.Info[RequestContext, None]) -> str | None:
    """The caller's client name as it may be logged: the request log's rule (printable,
    bounded), not the raw header."""
    return client_field(info.context.request.headers.get(CLIENT_NAME_HEADER))


def change_feeds(info: strawberry.Info[RequestContext, None]) -> ChangeFeeds:
    feeds: ChangeFeeds = info.context.request.state.changes
    return feeds


@strawberry.type(description="Live changes to phone numbers, found by polling the upstream.")
class Subscription:
    @strawberry.subscription(
        description="The changes to the entries the filter matches: `SYNCED` once the "
        "baseline is taken, then one event per changed entry per poll. One poll serves every "
        "subscriber with the same token, org and filter."
    )
    async def phone_number_changes(
        self,
        info: strawberry.Info[RequestContext, None],
        org_id: OrgIdArgument = None,
        filter: FilterArgument = None,
    ) -> AsyncGenerator[PhoneNumberChange, None]:
        feeds = change_feeds(info)
        # aclosing: a client that leaves closes this generator, and with it the watch at
        # once (its subscriber leaves the feed and logs its line), not whenever GC runs.
        async with aclosing(
            feeds.watch(info.context.numbers, org_id, filter, client_name=client_name(info))
        ) as changes:
            async for change in changes:
                yield change

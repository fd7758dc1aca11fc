"""The response's ``extensions.cache`` and ``extensions.stale``: what the page cache did for
one operation's upstream asks, told to the caller who asks for it."""

from __future__ import annotations

from typing import Any

from strawberry.extensions import SchemaExtension

from gateway.schema.context import RequestContext


class CacheReport(SchemaExtension):
    """``extensions.cache``: what the cache did for this operation's upstream asks, when the
    caller asks for it (the ``Gateway-Cache-Report: true`` header); ``extensions.stale``
    always, when a stale answer stood in for a failing upstream.

    Only this caller's own entries can be hits (keys include the token), so nothing here
    tells one caller about another.
    """

    def get_results(self) -> dict[str, Any]:
        return cache_extensions(self.execution_context.context)


def cache_extensions(context: object) -> dict[str, Any]:
    """The response's ``extensions`` entries for what the cache did: ``stale`` always when a
    stale answer stood in, ``cache`` when the caller asked (an operation plan calls this too)."""
    if not isinstance(context, RequestContext) or not context.numbers.cache_events:
        return {}
    events = context.numbers.cache_events
    stale = {"stale": True} if any(event.status == "stale" for event in events) else {}
    if not context.report_cache:
        # Identical answers stay identical bytes (ETags, shared caches); a stale answer
        # is a different answer, and says so.
        return stale
    return {
        **stale,
        "cache": {
            "hits": sum(event.status == "hit" for event in events),
            "misses": sum(event.status != "hit" for event in events),
            "calls": [
                {"status": event.status, "tier": event.tier, "ageSeconds": round(event.age, 3)}
                for event in events
            ],
        },
    }

"""The response's ``extensions.cache`` and ``extensions.stale``: what the page cache did for
one operation's upstream asks, told to the caller who asks for it.

``extensions.stale`` is always there when a stale answer stood in for a failing upstream (a
stale answer is a different answer, and says so); ``extensions.cache`` only when the caller
asked (the ``Gateway-Cache-Report: true`` header), so identical answers stay identical bytes
(ETags, reused answers). Only this caller's own entries can be hits (keys include the token),
so nothing here tells one caller about another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.data.page_cache import CacheEvent


def cache_extensions(events: Sequence[CacheEvent], *, report: bool) -> dict[str, Any]:
    """The ``extensions`` entries for what the cache did for ``events`` (one operation's)."""
    if not events:
        return {}
    stale = {"stale": True} if any(event.status == "stale" for event in events) else {}
    if not report:
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

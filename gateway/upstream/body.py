"""Reading one upstream page body: items and the optional ``count``, or an upstream fault."""

from __future__ import annotations

from typing import Any

from gateway.errors import UpstreamUnavailable


def read_numbers_body(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Items and the optional ``count`` of one upstream page body.

    A missing or null ``phoneNumbers`` is an empty page (the upstream leaves it out when
    nothing matches); entries that are not objects are dropped. A body that is not an
    object, or a ``phoneNumbers`` that is not a list, is the upstream's fault: serving it as
    an empty page would present wrong data as right.
    """
    if not isinstance(body, dict):
        raise UpstreamUnavailable(
            f"The upstream answered with a JSON {type(body).__name__}, not an object.",
            upstream_status=200,
        )
    items = body.get("phoneNumbers")
    if items is None:
        items = []
    elif not isinstance(items, list):
        raise UpstreamUnavailable(
            f"The upstream's phoneNumbers is a JSON {type(items).__name__}, not a list.",
            upstream_status=200,
        )
    count = body.get("count")
    return [item for item in items if isinstance(item, dict)], (
        count if isinstance(count, dict) else None
    )

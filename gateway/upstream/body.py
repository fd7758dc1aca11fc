"""Reading one upstream page body: its items (kept as the body's bytes) and the optional
``count``, or an upstream fault.

The rules, whatever path a body takes: a body that is not JSON, not an object, or whose
``phoneNumbers`` is not a list is the upstream's fault (serving it as an empty page would
present wrong data as right); a missing or null ``phoneNumbers`` is an empty page (the
upstream leaves it out when nothing matches); entries that are not objects are dropped; a
``count`` that is not an object is none.

Most bodies are well-formed, and for them nothing is built in Python: one pass of msgspec's
decoder checks the shape (each entry an object, skipped, not decoded) and reads ``count``, and
the items stay the body's bytes (``domain.upstream_items``). Any other body is decoded whole and
read by the rules above, its items positions of the objects among its entries. Both passes are
msgspec's parser; a body in which the shape pass skipped bytes that are not UTF-8 is decoded
whole too, so the fast pass accepts exactly what a whole decode accepts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.domain.upstream_items import (
    DECODE_FAILURES,
    UpstreamBody,
    UpstreamItems,
    decode_json,
)
from gateway.errors import UpstreamUnavailable


class _AnyObject(msgspec.Struct, gc=False):
    """Any JSON object, its keys skipped (a JSON value of another kind fails)."""


class _Envelope(msgspec.Struct, gc=False):
    phoneNumbers: list[_AnyObject] | None = None  # noqa: N815  # the upstream's key
    count: Any = None


_ENVELOPE = msgspec.json.Decoder(_Envelope, float_hook=float)


class NotJSON(Exception):
    """The body is not JSON."""


def read_numbers_page(content: bytes | bytearray) -> tuple[UpstreamItems, dict[str, Any] | None]:
    """Items and the optional ``count`` of one upstream page body; ``NotJSON`` when it is not
    JSON, ``UpstreamUnavailable`` when it is not the shape of a page."""
    try:
        envelope = _ENVELOPE.decode(content)
        if not content.isascii():
            content.decode("utf-8")  # the shape pass does not check skipped text
    except (*DECODE_FAILURES, UnicodeDecodeError):
        return _read_whole(content)
    listed = envelope.phoneNumbers or ()
    count = envelope.count
    items = UpstreamItems.of_body(UpstreamBody(content), range(len(listed)))
    return items, count if isinstance(count, dict) else None


def _read_whole(content: bytes | bytearray) -> tuple[UpstreamItems, dict[str, Any] | None]:
    try:
        body = decode_json(content)
    except DECODE_FAILURES:
        raise NotJSON from None
    entries, count = _entries_of(body)
    positions = tuple(index for index, entry in enumerate(entries) if isinstance(entry, dict))
    return UpstreamItems.of_body(UpstreamBody(content, entries), positions), count


def _entries_of(body: Any) -> tuple[list[Any], dict[str, Any] | None]:
    """The ``phoneNumbers`` entries (objects or not) and the optional ``count``."""
    if not isinstance(body, dict):
        raise UpstreamUnavailable(
            f"The upstream answered with a JSON {type(body).__name__}, not an object.",
            upstream_status=200,
        )
    entries = body.get("phoneNumbers")
    if entries is None:
        entries = []
    elif not isinstance(entries, list):
        raise UpstreamUnavailable(
            f"The upstream's phoneNumbers is a JSON {type(entries).__name__}, not a list.",
            upstream_status=200,
        )
    count = body.get("count")
    return entries, count if isinstance(count, dict) else None

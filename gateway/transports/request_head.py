"""The request head read once: the first value of every request header by lower-case name,
kept in the ASGI scope so the request log and the fused middleware read one dictionary
instead of each scanning the header list again.

The head is the request as it arrived. A layer that rewrites ``scope["headers"]`` (the
compression middleware narrows ``Accept-Encoding`` for brotli-asgi) does so in a copy of the
scope; layers inside it read the rewritten list themselves, never this head.
"""

from __future__ import annotations

from starlette.types import Scope

_SCOPE_KEY = "numbers_gateway.head"
# HTTP/1.x: a request with neither header has no body at all (RFC 9112, section 6.3).
_HTTP1 = frozenset({"1.0", "1.1"})


class RequestHead:
    """The first value of each request header, by lower-case name."""

    __slots__ = ("values",)

    def __init__(self, values: dict[bytes, bytes]) -> None:
        self.values = values

    def get(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        return self.values.get(name)

    def has_no_body(self, scope: Scope) -> bool:
        """An HTTP/1.x request with neither ``Content-Length`` nor ``Transfer-Encoding``: its
        body is empty by the protocol."""
        values = self.values
        return (
            scope.get("http_version") in _HTTP1
            and b"content-length" not in values
            and b"transfer-encoding" not in values
        )


def request_head(scope: Scope) -> RequestHead:
    """The head of the request ``scope`` describes, read on first use and then kept."""
    head: RequestHead | None = scope.get(_SCOPE_KEY)
    if head is None:
        values: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            name = key.lower()
            if name not in values:  # the first value wins, as ``asgi.header`` reads it
                values[name] = bytes(value)
        head = scope[_SCOPE_KEY] = RequestHead(values)
    return head

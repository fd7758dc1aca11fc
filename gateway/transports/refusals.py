"""Requests refused before GraphQL executes them, and the one body they all answer with.

Every refusal, whichever layer makes it (a connection bound, a request guard, the view, the
parameter reader, the document policy), is answered with the same GraphQL-shaped body:
``{"errors": [{"message", "extensions": {"code", ...}}]}``, never a ``data`` entry. The
request log reads the codes back from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import ErrorCode


def refusal_payload(
    message: str, code: ErrorCode, extensions: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The GraphQL response body of a refused request."""
    return {
        "errors": [{"message": message, "extensions": {"code": code.value, **(extensions or {})}}]
    }


def refusal_body(
    message: str, code: ErrorCode, extensions: Mapping[str, Any] | None = None
) -> bytes:
    """``refusal_payload`` as JSON bytes."""
    return orjson.dumps(refusal_payload(message, code, extensions))


class Refusal(Exception):
    """A request refused before execution: its status, error and extra response headers.

    ``status`` is what ``application/graphql-response+json`` answers with; ``legacy_status``
    what ``application/json`` answers with, where the GraphQL-over-HTTP spec keeps 200 for a
    well-formed HTTP request whose GraphQL cannot run (by default the same as ``status``)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: ErrorCode = ErrorCode.BAD_USER_INPUT,
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
        legacy_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.extensions: dict[str, Any] = dict(extensions or {})
        self.legacy_status = status if legacy_status is None else legacy_status

    def status_for(self, *, legacy: bool) -> int:
        return self.legacy_status if legacy else self.status

    def body(self) -> bytes:
        return refusal_body(self.message, self.code, self.extensions)

"""The gateway's error vocabulary: every error a caller can see, with its contract code.

    GatewayError                 (code, message, extensions)
    ├── BadUserInput             BAD_USER_INPUT: the caller's arguments, caught before any call
    ├── Unauthenticated          UNAUTHENTICATED: no credentials for a live upstream
    └── UpstreamError            an upstream answer or failure, with status and tracking id
        ├── UpstreamRejected     other 4xx: BAD_USER_INPUT, UNAUTHENTICATED, FORBIDDEN, NOT_FOUND
        ├── RateLimited          RATE_LIMITED, with ``retryAfter`` seconds
        ├── UpstreamTimeout      UPSTREAM_TIMEOUT: the exchange's deadline passed
        └── UpstreamUnavailable  UPSTREAM_UNAVAILABLE: 5xx, connection failure, unreadable body

A document that does not parse is GRAPHQL_PARSE_FAILED, one that does not validate
GRAPHQL_VALIDATION_FAILED (Apollo's codes, given in ``gateway.execution.prepare``); variables
that do not coerce and the operation limits (depth, aliases, tokens, root fields, cost,
entities) are BAD_USER_INPUT. Anything else raised while resolving is a bug and is masked as
INTERNAL_SERVER_ERROR.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final


class ErrorCode(StrEnum):
    GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"  # Apollo's: the document does not parse
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"  # Apollo's: it does not validate
    BAD_USER_INPUT = "BAD_USER_INPUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
    PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
    PERSISTED_QUERY_NOT_IN_LIST = "PERSISTED_QUERY_NOT_IN_LIST"


# What a caller sees instead of an unexpected error (a bug), wherever it is masked: the error
# contract, the HTTP view, a change feed's end.
INTERNAL_ERROR_MESSAGE: Final = "Internal server error."


class GatewayError(Exception):
    """An error that is part of the API: its message and extensions are shown to the caller."""

    code: ErrorCode = ErrorCode.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code.value}


class BadUserInput(GatewayError):
    code = ErrorCode.BAD_USER_INPUT


class Unauthenticated(GatewayError):
    code = ErrorCode.UNAUTHENTICATED


class UpstreamError(GatewayError):
    """Caused by the upstream; carries what the caller needs to follow it up with Webex."""

    code = ErrorCode.UPSTREAM_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        upstream_status: int | None = None,
        tracking_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.upstream_status = upstream_status
        self.tracking_id = tracking_id

    @property
    def extensions(self) -> dict[str, Any]:
        extensions = super().extensions
        if self.upstream_status is not None:
            extensions["upstreamStatus"] = self.upstream_status
        if self.tracking_id is not None:
            extensions["trackingId"] = self.tracking_id
        return extensions


class UpstreamRejected(UpstreamError):
    """A 4xx other than rate limiting: the caller's request or rights, never retried."""


class RateLimited(UpstreamError):
    code = ErrorCode.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        upstream_status: int | None = None,
        tracking_id: str | None = None,
    ) -> None:
        super().__init__(message, upstream_status=upstream_status, tracking_id=tracking_id)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, Any]:
        extensions = super().extensions
        # Whole seconds, rounded up: a client that waits this long is not early.
        extensions["retryAfter"] = max(0, -int(-self.retry_after // 1))
        return extensions


class UpstreamTimeout(UpstreamError):
    code = ErrorCode.UPSTREAM_TIMEOUT


class UpstreamUnavailable(UpstreamError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE


# Upstream statuses that map to a specific contract code; other 4xx are the caller's request.
_REJECTION_CODES = {
    400: ErrorCode.BAD_USER_INPUT,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
}


def code_for_upstream_status(status: int) -> ErrorCode:
    """The contract code for a non-2xx upstream status (rate limits handled by the caller)."""
    if status in _REJECTION_CODES:
        return _REJECTION_CODES[status]
    if status in (423, 429):
        return ErrorCode.RATE_LIMITED
    if 400 <= status < 500:
        return ErrorCode.BAD_USER_INPUT
    return ErrorCode.UPSTREAM_UNAVAILABLE

"""How a GraphQL answer is written over HTTP: the interface every response style implements.

The view negotiates a style from ``Accept``, hands the operation to the ``OperationRunner``,
and gives the style what came out: an ``Answer`` or a ``Refusal``. ``json_body`` is the one
style today (one JSON body, ``application/graphql-response+json`` or legacy
``application/json``); incremental delivery (``multipart/mixed``, ``text/event-stream``) adds
styles beside it, each in its own module, without the view or the runner growing.
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from gateway.transports.operation import Answer
from gateway.transports.refusals import Refusal

# Answers depend on these request headers; caches must key on them.
VARY = "Accept, Authorization, Gateway-Cache-Report, Apollo-Federation-Include-Trace"


class ResponseStyle(Protocol):
    """One way of writing answers, chosen per request by content negotiation."""

    @property
    def media_type(self) -> str:
        """The media type the style answers with."""
        ...

    def refused(self, refusal: Refusal, request: Request | None) -> Response:
        """A request refused before execution; ``request`` is None when it was refused
        before its parameters were read (method, ``Accept``)."""
        ...

    def answered(self, answer: Answer, request: Request) -> Response:
        """An operation's answer, executed or reused."""
        ...

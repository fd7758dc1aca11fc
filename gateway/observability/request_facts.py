"""What one request did, gathered while it runs, for its log line, its metrics and its trace.

``RequestLogMiddleware`` makes one ``RequestFacts`` per HTTP request and puts it in a context
variable for the request's duration. What happens deeper in fills it in, with no parameter
threaded through: the GraphQL extension (``api.operation_observer``: operation name and
type, error codes, cache outcomes) and the transport under the upstream client
(``UpstreamCallsObserved``: each upstream request's status, Webex tracking id and duration).
Tasks a request starts (the loader's batch, a single-flight fetch) copy its context, so what
they do is counted for the request that started them.

Nothing here holds a token, a header other than the client's name and version (bounded), or
a variable's value.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

REQUEST_ID_HEADER = "x-request-id"
# A caller's (or proxy's) request id is kept when it is 1-128 characters of these: UUIDs,
# ULIDs, nginx's and Envoy's ids and most trace ids qualify; anything else (spaces, quotes,
# control characters, a novel) is replaced by a fresh UUID rather than echoed.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Webex tracking ids look like ROUTER_<uuid>; an upstream's header is not trusted further.
TRACKING_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
CLIENT_FIELD_MAX = 64  # characters kept of apollographql-client-name / -version
# The header Apollo clients (and routers) name themselves in; logged through ``client_field``.
CLIENT_NAME_HEADER = "apollographql-client-name"
CLIENT_VERSION_HEADER = "apollographql-client-version"
OPERATION_NAME_MAX = 128  # characters of an operation name logged
UPSTREAM_CALLS_LOGGED = 20  # calls detailed in one log line (all are counted)
# Cache statuses (``PageCache``'s ``CacheEvent.status``) of a page this caller got: from the
# upstream (miss, bypass, refresh) or from an entry stored from such an answer (hit, stale).
PAGE_ANSWERED = frozenset({"hit", "miss", "bypass", "refresh", "stale"})


class RequestIds:
    """New request ids, shaped as version-4 UUIDs: 74 random bits drawn once per process (and
    again in a forked child) and a 48-bit counter from a random start. A request id names a
    request in logs and traces and must be unique, not secret: ``uuid.uuid4()`` per request
    (a ``getrandom`` call and a ``UUID`` object) was a tenth of a repeated query's CPU."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": version, variant
        self._next = itertools.count(secrets.randbits(48))

    def new(self) -> str:
        return f"{self._prefix}{next(self._next) & 0xFFFFFFFFFFFF:012x}"


_request_ids: RequestIds | None = None


def new_request_id() -> str:
    """A new request id (``RequestIds``; the generator is made on first use)."""
    global _request_ids
    if _request_ids is None:
        _request_ids = RequestIds()
    return _request_ids.new()


def request_id_from(value: bytes | None) -> str:
    """The incoming ``X-Request-ID`` when it is valid, else a new UUID."""
    if value is not None:
        text = value.decode("latin-1")
        if REQUEST_ID.fullmatch(text):
            return text
    return new_request_id()


def client_field(value: bytes | str | None) -> str | None:
    """A client-supplied name or version as it may be logged: printable ASCII only, at most
    ``CLIENT_FIELD_MAX`` characters; None when nothing is left. Raw header bytes, or the text
    Starlette decoded from them (latin-1, so the same characters)."""
    if value is None:
        return None
    raw = value.decode("latin-1") if isinstance(value, bytes) else value
    text = "".join(ch for ch in raw if " " <= ch <= "~").strip()
    return text[:CLIENT_FIELD_MAX] or None


def tracking_id_of(headers: httpx.Headers, body: Any = None) -> str | None:
    """The Webex tracking id of an upstream answer (its JSON body's ``trackingId`` first,
    then the ``TrackingID`` header), if it looks like one: the one rule for every log line,
    span and error that echoes one."""
    candidates = [body.get("trackingId") if isinstance(body, dict) else None]
    candidates.append(headers.get("trackingid"))
    for candidate in candidates:
        if isinstance(candidate, str) and TRACKING_ID.fullmatch(candidate):
            return candidate
    return None


@dataclass(slots=True)
class UpstreamCall:
    """One HTTP request to the upstream (each retry and each followed page is one)."""

    status: int | None = None  # None: no answer (connection error, timeout, cancelled)
    tracking_id: str | None = None
    duration_ms: float | None = None

    def as_log(self) -> dict[str, Any]:
        return {"status": self.status, "trackingId": self.tracking_id, "ms": self.duration_ms}


@dataclass(slots=True)
class RequestFacts:
    """One HTTP request's facts; see the module docstring for who fills in what."""

    request_id: str
    client_name: str | None = None
    client_version: str | None = None
    # The document came from the operator's trusted-documents manifest (``vouch_for_document``).
    trusted_document: bool = False
    tracer: Tracer | None = None  # the app's tracer while tracing is on, else None
    trace_id: str | None = None
    operation_name: str | None = None
    operation_type: str | None = None
    attempted: bool = False  # a GraphQL operation was attempted (executed or refused)
    executed: bool = False  # it got past parsing and validation
    error_codes: list[str] = field(default_factory=list)
    upstream_calls: list[UpstreamCall] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)  # "status:tier" per upstream ask
    # A batch (GATEWAY_BATCH_MAX): one entry per operation, in order (``operation_log``).
    batch: list[dict[str, Any]] = field(default_factory=list)
    # A streamed response (multipart, SSE): transport, payloads, items, how it ended, ms.
    stream: dict[str, Any] | None = None

    @property
    def outcome(self) -> str:
        """``success``, ``error`` (executed, with errors) or ``rejected`` (never executed)."""
        if not self.executed:
            return "rejected"
        return "error" if self.error_codes else "success"

    @property
    def caller_accepted(self) -> bool:
        """Whether the upstream accepted this caller's credential during this request: an
        upstream call answered 2xx, or a page came from the cache under this caller's own
        key (stored only from such an answer). A reused whole answer proves nothing: one
        that made no upstream call (``{ __typename }``) is kept for any credential."""
        if any(200 <= (call.status or 0) < 300 for call in self.upstream_calls):
            return True
        return any(event.split(":", 1)[0] in PAGE_ANSWERED for event in self.cache)

    @property
    def may_take_label(self) -> bool:
        """Whether this operation's name may take a metric label of its own (if it executed):
        an accepted credential or a trusted document, so that neither tokenless nor junk-token
        floods of ``query JunkN { __typename }`` can fill the label slots real operations need."""
        return self.trusted_document or self.caller_accepted

    def operation_log(self) -> dict[str, Any]:
        """This operation's own facts, as one entry of a batch's ``batch`` log field."""
        return {
            "operationName": self.operation_name,
            "operationType": self.operation_type,
            "outcome": self.outcome,
            "errorCodes": self.error_codes,
            "upstreamCalls": len(self.upstream_calls),
            "cache": self.cache,
        }

    def add_error_codes(self, codes: Iterable[str]) -> None:
        for code in codes:
            if code not in self.error_codes:
                self.error_codes.append(code)


_current: ContextVar[RequestFacts | None] = ContextVar("gateway_request_facts", default=None)


def current_facts() -> RequestFacts | None:
    """The facts of the request this code runs for; None outside a request."""
    return _current.get()


def vouch_for_document() -> None:
    """Record that the current request's document is one of the operator's trusted documents
    (its operation name may then take a metric label, whatever the credential)."""
    facts = _current.get()
    if facts is not None:
        facts.trusted_document = True


@contextmanager
def collecting(facts: RequestFacts) -> Iterator[RequestFacts]:
    """Make ``facts`` the current request's for the duration of the block."""
    token = _current.set(facts)
    try:
        yield facts
    finally:
        _current.reset(token)


class UpstreamCallsObserved(httpx.AsyncBaseTransport):
    """Records each request sent through ``inner`` in the current request's facts.

    It wraps the transport that talks to the upstream, under the retries and the ``Link``
    walk, so it sees every request that goes out, retries and followed pages included; a
    request that gets no answer stays recorded with no status. Its duration runs until the
    answer's head arrives."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def __aenter__(self) -> UpstreamCallsObserved:
        await self.inner.__aenter__()
        return self

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        facts = _current.get()
        if facts is None:
            return await self.inner.handle_async_request(request)
        call = UpstreamCall()
        facts.upstream_calls.append(call)
        started = time.perf_counter()
        response = await self.inner.handle_async_request(request)
        call.status = response.status_code
        call.tracking_id = tracking_id_of(response.headers)
        call.duration_ms = round((time.perf_counter() - started) * 1000, 1)
        return response

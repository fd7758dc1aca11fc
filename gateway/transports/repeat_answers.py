"""Repeats answered before the work a stored answer does not need (issue 22, target (c)).

A GET the view answered from the answer store (``reuse``), or whose fresh answer it kept
there, leaves a plan behind: the key of that stored answer and the media type it was written
as. The plan is remembered under a digest of everything in the request the view could have
read: the path, the query string, the HTTP version and every header but those the view never
reads (the request id, the client's name and version and the trace context: the request
log's) and ``If-None-Match`` (answered here as the view answers it). A request with the same
digest is the same call by the same caller with the same negotiated style.

This layer is the outermost of the gateway's own, in front of the request log and the fused
guards (``gateway_middleware``), and answers such a repeat itself in one pass: the stored
answer's bytes with the status (304 included) and headers the view, the guards and the log
would have sent, the log line and metrics the request log writes (its own ``record``), the
reuse counted as the runner counts it (``reuse.count_reused``). It skips what a stored answer
does not need: Starlette's routing, a ``Request``, content negotiation, parameter parsing, the
caller's HMAC, the answer's key, the log layer's per-request context and the guards' send
wrappers. Anything not certain goes the normal way, through every layer: another method or
path, a digest never seen, a plan whose stored answer has expired or been evicted, a request
any guard has work for (``Origin``, compression, a body, a CSRF refusal, the in-flight bound
reached), tracing on (the log layer's span).

A plan holds no token: the digest is keyed with a secret of this process, and the stored
answer stays keyed per caller (``ResponseReuse.key``), so a different ``Authorization`` never
finds another caller's plan or answer.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.data.answer_store import ResponseReuse, StoredAnswer, count_reused
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import REQUEST_ID_HEADER
from gateway.server.gateway_middleware import GatewayMiddleware, plain_vary
from gateway.server.request_log import LOGGED_HEADERS, RequestLogMiddleware, facts_of
from gateway.transports.asgi import app_path
from gateway.transports.json_body import cache_control, etag_matches
from gateway.transports.request_head import RequestHead, request_head
from gateway.transports.response_style import VARY
from gateway.transports.routes import GRAPHQL_PATH

_REQUEST_ID = REQUEST_ID_HEADER.encode()
# Read only by the request log (its line, metrics and span), or answered here
# (``If-None-Match``): two requests differing only in these are the same call.
_NOT_IN_DIGEST = LOGGED_HEADERS | {b"traceparent", b"tracestate", b"if-none-match"}
PLANS_KEPT = 1024  # distinct repeated requests remembered; the oldest is forgotten first
# A request whose path, query string and headers exceed this is not remembered (nor hashed).
_REQUEST_BYTES_MAX = 16 * 1024
_SLOT = "numbers_gateway.repeat_slot"
# The view's Vary as the guards send it for a request that needed none of their layers.
_PLAIN_VARY = plain_vary([VARY.encode("latin-1")])


@dataclass(frozen=True, slots=True)
class RepeatPlan:
    """What the view derived for a request, enough to answer its repeats."""

    reuse_key: str  # ``Answer.reuse_key``: the stored answer a repeat looks up
    content_type: bytes  # the negotiated style's ``Content-Type``
    trusted_document: bool  # the document is a trusted one (its facts say so, as resolved)
    # The APQ digest the document was resolved from (a hash-only request, not a trusted
    # document): a repeat is answered here only while the store still holds it, as the view
    # would resolve it; None: the request carried its document, or the manifest vouched.
    persisted_digest: str | None = None


class _Slot:
    """Where the view leaves the plan of the request it answered."""

    __slots__ = ("plan",)

    def __init__(self) -> None:
        self.plan: RepeatPlan | None = None


def _document_held(scope: Scope, plan: RepeatPlan) -> bool:
    """Whether the plan's document resolves as it did: always for one the request carries or
    the manifest vouched for; for an APQ hash, while this replica's store holds it."""
    if plan.persisted_digest is None:
        return True
    documents = scope.get("state", {}).get("documents")
    apq = getattr(documents, "apq", None)
    return apq is not None and bool(apq.held_here(plan.persisted_digest))


def leave_plan(scope: Scope, plan: RepeatPlan) -> None:
    """The view's part: the request ``scope`` was answered as ``plan`` says (kept only when
    ``RepeatAnswers`` asked for it)."""
    slot: _Slot | None = scope.get(_SLOT)
    if slot is not None:
        slot.plan = plan


class RepeatAnswers:
    """The ASGI layer: answers a remembered GET from the answer store, else passes it on
    (and remembers the plan the view leaves). ``app`` is the request log wrapping the fused
    guards, as ``create_app`` orders them."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        if not isinstance(app, RequestLogMiddleware) or not isinstance(app.app, GatewayMiddleware):
            raise TypeError("RepeatAnswers goes in front of the request log and the guards")
        self.log = app  # the rest of the gateway, starting with its request log
        self.guards = app.app
        self.metrics = metrics
        self._digest_key = secrets.token_bytes(32)  # this process's: digests are ours only
        self._plans: dict[bytes, RepeatPlan] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.log(scope, receive, send)
            return
        started = time.perf_counter()  # the log's duration, as its own timer would start
        digest = self._digest(scope)
        if digest is None:
            await self.log(scope, receive, send)
            return
        plan = self._plans.get(digest)
        if plan is not None and self.log.tracer is None:
            reuse: ResponseReuse | None = scope.get("state", {}).get("responses")
            stored = reuse.get(plan.reuse_key) if reuse is not None else None
            if stored is not None and _document_held(scope, plan):
                head = request_head(scope)
                if self.guards.needs_no_layer(scope, head) and not self.guards.at_capacity():
                    await self._answer(head, send, plan, stored, started)
                    return
        slot = scope[_SLOT] = _Slot()
        await self.log(scope, receive, send)
        if slot.plan is not None:
            self._remember(digest, slot.plan)

    def _digest(self, scope: Scope) -> bytes | None:
        """The request's digest, or None when it is not one to remember (another path, too
        large, or a field holding the separator, which would make two requests one)."""
        if app_path(scope) != GRAPHQL_PATH:
            return None
        parts: list[Any] = [
            scope.get("http_version", "").encode("latin-1"),
            scope.get("root_path", "").encode("utf-8", "surrogateescape"),
            scope["path"].encode("utf-8", "surrogateescape"),
            scope.get("query_string", b""),
        ]
        for name, value in scope["headers"]:
            if name not in _NOT_IN_DIGEST:
                parts += (name, value)
        material = b"\0".join(parts)
        if len(material) > _REQUEST_BYTES_MAX or material.count(b"\0") != len(parts) - 1:
            return None
        return hashlib.blake2b(material, digest_size=16, key=self._digest_key).digest()

    def _remember(self, digest: bytes, plan: RepeatPlan) -> None:
        plans = self._plans
        if digest not in plans and len(plans) >= PLANS_KEPT:
            plans.pop(next(iter(plans)))  # the oldest
        plans[digest] = plan

    async def _answer(
        self,
        head: RequestHead,
        send: Send,
        plan: RepeatPlan,
        stored: StoredAnswer,
        started: float,
    ) -> None:
        """The stored answer as the layers would have sent it: ``JsonBodyStyle.answered`` for
        a GET, the guards' ``Vary``, the log's ``X-Request-ID``, line and metrics."""
        facts = facts_of(head)
        facts.trusted_document = plan.trusted_document  # as resolving the document vouched
        limit = self.guards.limited
        in_flight = self.metrics.http_in_flight
        in_flight.inc()
        limit.in_flight += 1
        status = 500  # what the log says if the answer fails before its status is known
        try:
            count_reused(stored, self.metrics, facts)
            etag = stored.etag
            headers = [
                (b"vary", _PLAIN_VARY),
                (b"etag", etag.encode("latin-1")),
                (b"cache-control", cache_control(200, stored.fresh_for).encode("latin-1")),
            ]
            if_none_match = head.get(b"if-none-match")
            body = stored.body
            if etag_matches(
                None if if_none_match is None else if_none_match.decode("latin-1"), etag
            ):
                status, body = 304, b""
            else:
                status = 200
                headers += (
                    (b"content-length", str(len(body)).encode("latin-1")),
                    (b"content-type", plan.content_type),
                )
            headers.append((_REQUEST_ID, facts.request_id.encode("latin-1")))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            limit.in_flight -= 1
            try:
                self.log.record("GET", GRAPHQL_PATH, facts, status, time.perf_counter() - started)
            finally:
                in_flight.dec()

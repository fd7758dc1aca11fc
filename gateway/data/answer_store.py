"""Whole answers kept for repeats: an identical operation by the same caller, while every
upstream entry it used is still fresh, is answered with the bytes already produced, with no
admission, execution or encoding again (``transports.operation``).

The key is an HMAC, under the cache secret, of the caller's identity (``Callers``: one for
every spelling of a credential), the prepared operation's key (the document's text and the
``operationName`` sent) and the variables; so two tokens never share an answer, and a GET
and a POST of the same operation by the same caller share one. Answers carrying the cache
report or a federated trace differ each time and are never kept. Only answers without errors
whose every upstream ask was a fresh cache entry or a new upstream answer are kept, and each
dies with the shortest-lived entry it used. ``Cache-Control: no-cache`` skips the lookup (and
stores the fresh answer); a TTL of 0 turns the store off.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.data.local_tier import LocalTier
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_facts import RequestFacts, current_facts


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    body: bytes
    fresh_for: float  # seconds left when it was served again
    operation_name: str | None
    operation_type: str | None
    etag: str  # ``weak_etag(body)``, computed once when stored


def weak_etag(body: bytes) -> str:
    """The weak ``ETag`` of an answer's bytes (what a GET carries and ``If-None-Match``
    names)."""
    return 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def count_reused(
    stored: StoredAnswer, metrics: GatewayMetrics, facts: RequestFacts | None = None
) -> None:
    """A request answered with ``stored``: the reuse metric, and the request's facts (its log
    line and operation metrics; ``facts``, else the current request's) as if the operation
    had executed."""
    metrics.responses_reused.inc()
    facts = facts if facts is not None else current_facts()
    if facts is not None:
        facts.attempted = facts.executed = True
        facts.operation_name = stored.operation_name
        facts.operation_type = stored.operation_type
        facts.cache.append("reused:answer")


class AnswerStore:
    """A bounded store of answer bytes, keyed per caller and operation."""

    def __init__(
        self,
        *,
        ttl: float,
        secret: bytes,
        max_entries: int,
        max_bytes: int,
        owner_share: float,
        clock: Any,
    ) -> None:
        self.ttl = ttl
        self.secret = secret
        self.clock = clock
        self._answers = (
            LocalTier(ttl, max_entries, max_bytes, clock.monotonic, owner_share)
            if ttl > 0
            else None
        )

    def key(
        self,
        caller: str,
        operation: tuple[str, str | None],
        variables: dict[str, Any] | None,
    ) -> str | None:
        """The answer's name, or None when it cannot be reused (no caching, or variables
        that cannot be written down canonically). ``caller`` is ``Caller.identity``;
        ``operation`` the prepared operation's key (document text, ``operationName``)."""
        if self._answers is None:
            return None
        try:
            material = orjson.dumps(
                [caller, operation[0], operation[1], variables], option=orjson.OPT_SORT_KEYS
            )
        except TypeError:
            return None
        return hmac.new(self.secret, material, hashlib.sha256).hexdigest()

    def get(self, key: str) -> StoredAnswer | None:
        if self._answers is None:
            return None
        found = self._answers.get_raw(key)
        if found is None:
            return None
        raw, stored_at = found
        # Stored as one line [operation name, operation type, ETag], then the body: what the
        # request's log line and the response's headers need, so a repeat hashes nothing.
        head, _, body = raw.partition(b"\n")
        name, kind, etag = orjson.loads(head)
        fresh_for = self.ttl - (self.clock.monotonic() - stored_at)
        return StoredAnswer(body, fresh_for, name, kind, etag)

    def put(
        self,
        key: str,
        body: bytes,
        fresh_for: float | None,
        caller: str,
        operation: tuple[str | None, str | None] = (None, None),
    ) -> None:
        """Keep ``body`` for the ``fresh_for`` seconds its upstream entries stay fresh, in
        ``caller``'s share of the store."""
        if self._answers is None or fresh_for is None:
            return
        # Stored "as old as" its oldest entry, so it expires with it.
        stored_at = self.clock.monotonic() - (self.ttl - fresh_for)
        head = orjson.dumps([*operation, weak_etag(body)])
        self._answers.set(key, head + b"\n" + body, stored_at, caller)

"""The response path for repeats: an identical operation by the same caller, while every
upstream entry it used is still fresh, is answered with the bytes already produced, without
parsing, validating or executing again.

The key is an HMAC, under the cache secret, of the caller's credentials, the document, the
variables, the operation name and what shapes the bytes (whether the cache report was asked
for); so two tokens never share an answer. Only answers without errors whose every upstream
ask was a fresh cache entry or a new upstream answer are kept, and each dies with the
shortest-lived entry it used. ``Cache-Control: no-cache`` skips the lookup (and stores the
fresh answer); a TTL of 0 turns the path off.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.pipeline.cache import CacheEvent, LocalTier
from gateway.upstream.slots import caller_of

_FRESH = frozenset({"hit", "miss", "refresh"})


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    body: bytes
    fresh_for: float  # seconds left when it was served again


class ResponseReuse:
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
        authorization: str | None,
        document: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        shape: str,
    ) -> str | None:
        """The answer's name, or None when it cannot be reused (no caching, or variables
        that cannot be written down canonically)."""
        if self._answers is None:
            return None
        try:
            material = orjson.dumps(
                [authorization, document, variables, operation_name, shape],
                option=orjson.OPT_SORT_KEYS,
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
        body, stored_at = found
        return StoredAnswer(body, self.ttl - (self.clock.monotonic() - stored_at))

    def put(
        self, key: str, body: bytes, events: list[CacheEvent], authorization: str | None
    ) -> None:
        """Keep ``body`` for as long as the youngest-dying upstream entry it used lives."""
        if self._answers is None or not events:
            return
        if any(event.status not in _FRESH for event in events):
            return  # a stale or uncached ask: this answer must not outlive the request
        oldest = max(event.age for event in events)
        # Stored "as old as" its oldest entry, so it expires with it.
        stored_at = self.clock.monotonic() - oldest
        owner = caller_of(authorization or "")
        self._answers.set(key, body, stored_at, owner)

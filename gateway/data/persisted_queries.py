"""The store of Apollo's automatic persisted queries (APQ): registered documents by hash.

A local store bounded in entries and bytes, each caller held to its share of both, and, with
Redis, the shared tier, bounded per caller and globally. Which documents may be registered
(callers the upstream accepted, documents that parsed and validated) is the document policy's
decision (``http.document_policy``); this module only keeps them, and never answers a hash
with a document that is not its own.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from gateway.data.guarded_redis import GuardedRedis
from gateway.data.local_tier import LocalTier

REDIS_PREFIX = "numbers-gateway:apq:v2:"
# Per caller (its identity, never the token): documents it registered in Redis this period.
REDIS_OWNER_PREFIX = "numbers-gateway:apq-owner:v2:"
# All replicas together: documents registered in Redis this period, whoever registered them.
REDIS_REGISTRATIONS_KEY = "numbers-gateway:apq-registrations:v2"
REDIS_TTL_SECONDS = 24 * 3600
# The share that holds documents another replica registered.
REPLICA_OWNER = "\x00replica"
_SHA256_HEX = frozenset("0123456789abcdef")


def sha256_hex(document: str) -> str:
    """A document's id: the lower-case hex SHA-256 of its UTF-8 text (APQ's and the
    trusted-documents manifests')."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def normal_hash(value: str) -> str | None:
    """A lower-case sha256 hex digest, with an optional ``sha256:`` prefix; else None."""
    digest = value.removeprefix("sha256:").lower()
    return digest if len(digest) == 64 and set(digest) <= _SHA256_HEX else None


class PersistedQueries:
    """Registered APQ documents: a local store bounded in entries and bytes, with each caller
    held to ``owner_share`` of both, and Redis for a bounded time and size.

    Registration is keyed by the document's hash, so any caller holding the hash may run it
    (the document is no secret: anyone can compute its hash); whoever first registers a hash
    holds it in their share, so one caller's flood evicts only its own documents, never
    another caller's. Redis takes, per ``REDIS_TTL_SECONDS`` window, at most a caller's share
    of ``max_entries`` from each caller and ``max_entries`` in all (a counter every replica
    shares); each document lives ``REDIS_TTL_SECONDS``, so Redis holds at most
    ``2 * max_entries`` documents (this window's and the last one's) of at most
    ``max_document_bytes`` each, plus one small counter per caller, however many callers or
    tokens there are.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        max_document_bytes: int = 64 * 1024,
        owner_share: float = 1.0,
        redis: GuardedRedis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_document_bytes = max_document_bytes
        self.clock = clock
        self._local = LocalTier(
            float(REDIS_TTL_SECONDS), max_entries, max_bytes, clock, owner_share
        )
        self._redis = redis

    async def get(self, digest: str) -> str | None:
        found = self._local.get_raw(digest)
        if found is not None:
            return bytes(found[0]).decode("utf-8")
        if self._redis is None:
            return None
        raw = await self._redis.get(REDIS_PREFIX + digest)
        if raw is None:
            return None
        document = raw.decode("utf-8", errors="replace")
        if sha256_hex(document) != digest:
            return None  # never run something other than what the hash names
        # Held in the share of no caller in particular: it was registered elsewhere.
        self._local.set(digest, raw, self.clock(), REPLICA_OWNER)
        return document

    def held_here(self, digest: str) -> bool:
        """Whether this replica holds ``digest``'s document now (its own tier, marked as just
        used, as ``get`` marks it). A stored answer to a hash-only request may be reused
        without resolving the hash only while this holds (``http.repeat_answers``); when it
        does not, the request resolves it, from Redis or into ``PERSISTED_QUERY_NOT_FOUND``."""
        return self._local.get_raw(digest) is not None

    async def put(self, digest: str, document: str, caller: str) -> bool:
        """Register ``document`` under ``digest`` in ``caller``'s share (``Caller.identity``);
        False when it is too large to keep. Registering a held hash again only refreshes it."""
        raw = document.encode("utf-8")
        if len(raw) > self.max_document_bytes:
            return False
        if self._local.get_raw(digest) is not None:
            return True  # held already, by whoever registered it first
        self._local.set(digest, raw, self.clock(), caller)
        if self._redis is not None and await self._within_redis_bounds(caller):
            await self._redis.set(REDIS_PREFIX + digest, raw, ttl_ms=REDIS_TTL_SECONDS * 1000)
        return True

    async def _within_redis_bounds(self, caller: str) -> bool:
        """Whether Redis may take one more document from ``caller`` this window: within its
        share, and within the global bound. Either counter unreadable: no."""
        assert self._redis is not None
        ttl_ms = REDIS_TTL_SECONDS * 1000
        by_caller = await self._redis.count(REDIS_OWNER_PREFIX + caller, ttl_ms=ttl_ms)
        if by_caller is None or by_caller > self._local.max_owner_entries:
            return False  # counted before the global counter: a flooder spends only its own
        in_all = await self._redis.count(REDIS_REGISTRATIONS_KEY, ttl_ms=ttl_ms)
        return in_all is not None and in_all <= self.max_entries

    def __len__(self) -> int:
        return len(self._local)

"""Persisted documents: Apollo's automatic persisted queries (APQ) and trusted documents.

APQ: a client sends ``extensions.persistedQuery.sha256Hash``; a hash we hold runs its
document; an unknown one answers ``PERSISTED_QUERY_NOT_FOUND`` so the client sends the document
with the hash, which registers it (after checking that the hash is the document's). Registered
documents live in a bounded local LRU and, with Redis, in the shared tier.

Trusted documents: ``GATEWAY_TRUSTED_DOCUMENTS`` names a manifest, in either format clients'
build tools write: Apollo's persisted query manifest (``{"format":
"apollo-persisted-query-manifest", "operations": [{"id", "body", ...}]}``) or GraphQL Codegen's
client-preset ``persisted-documents.json`` (``{"<hash>": "<document>"}``). Clients may send just
the id (``documentId``, or the APQ hash). In production, with a manifest, any other document is
refused before it is parsed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import orjson
from cachetools import LRUCache

from gateway.errors import ErrorCode
from gateway.http.refusals import Refusal
from gateway.pipeline.guarded_redis import GuardedRedis

REDIS_PREFIX = "numbers-gateway:apq:v1:"
REDIS_TTL_SECONDS = 7 * 24 * 3600
_SHA256_HEX = frozenset("0123456789abcdef")


class PersistedDocumentError(Refusal):
    """A persisted-document request that cannot run, with its contract code.

    ``PERSISTED_QUERY_NOT_FOUND`` answers 200 whatever the media type: Apollo's clients read it
    from a 200, then send the document. Others are 400 (200 as ``application/json``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        not_found = code is ErrorCode.PERSISTED_QUERY_NOT_FOUND
        super().__init__(200 if not_found else 400, message, code, legacy_status=200)


def sha256_hex(document: str) -> str:
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def _normal_hash(value: str) -> str | None:
    """A lower-case sha256 hex digest, with an optional ``sha256:`` prefix; else None."""
    digest = value.removeprefix("sha256:").lower()
    return digest if len(digest) == 64 and set(digest) <= _SHA256_HEX else None


class TrustedDocuments:
    """The manifest: document id (its sha256, lower-case hex) to document."""

    def __init__(self, documents: dict[str, str], source: str) -> None:
        self.documents = documents
        self.source = source

    @classmethod
    def load(cls, path: Path) -> TrustedDocuments:
        """Read a manifest; raises ``ValueError`` with one line saying what is wrong."""
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        if isinstance(data, dict) and data.get("format") == "apollo-persisted-query-manifest":
            operations = data.get("operations")
            if not isinstance(operations, list):
                raise ValueError(f"{path}: 'operations' must be a list")
            pairs = [(op.get("id"), op.get("body")) for op in operations if isinstance(op, dict)]
            if len(pairs) != len(operations):
                raise ValueError(f"{path}: every operation must be an object")
        elif isinstance(data, dict):
            pairs = list(data.items())  # GraphQL Codegen: {"<hash>": "<document>"}
        else:
            raise ValueError(
                f"{path}: expected Apollo's persisted query manifest or GraphQL Codegen's "
                "persisted-documents.json (an object)"
            )
        documents: dict[str, str] = {}
        for key, body in pairs:
            if not isinstance(key, str) or not isinstance(body, str):
                raise ValueError(f"{path}: every entry needs a string id and a string body")
            digest = _normal_hash(key)
            if digest is None or digest != sha256_hex(body):
                raise ValueError(
                    f"{path}: id {key[:20]!r} is not the sha256 of its document; this gateway "
                    "accepts sha256 document ids only"
                )
            documents[digest] = body
        return cls(documents, str(path))

    def get(self, document_id: str) -> str | None:
        digest = _normal_hash(document_id)
        return self.documents.get(digest) if digest is not None else None

    def __contains__(self, document: str) -> bool:
        return sha256_hex(document) in self.documents


class PersistedQueries:
    """Registered APQ documents: a local LRU bounded in entries and bytes, and Redis."""

    def __init__(
        self, *, max_entries: int, max_bytes: int, redis: GuardedRedis | None = None
    ) -> None:
        self.max_entries = max_entries
        self._local: LRUCache[str, str] = LRUCache(maxsize=max_bytes, getsizeof=len)
        self._redis = redis

    async def get(self, digest: str) -> str | None:
        found = self._local.get(digest)
        if found is not None or self._redis is None:
            return found
        raw = await self._redis.get(REDIS_PREFIX + digest)
        if raw is None:
            return None
        document = raw.decode("utf-8", errors="replace")
        if sha256_hex(document) != digest:
            return None  # never run something other than what the hash names
        self._remember(digest, document)
        return document

    async def put(self, digest: str, document: str) -> None:
        self._remember(digest, document)
        if self._redis is not None:
            await self._redis.set(
                REDIS_PREFIX + digest, document.encode(), ttl_ms=REDIS_TTL_SECONDS * 1000
            )

    def _remember(self, digest: str, document: str) -> None:
        if len(document) > self._local.maxsize:
            return
        while len(self._local) >= self.max_entries:
            self._local.popitem()
        self._local[digest] = document

    def __len__(self) -> int:
        return len(self._local)


@dataclass(frozen=True, slots=True)
class DocumentPolicy:
    """How the view turns a request's document, hash or id into the text to run."""

    apq: PersistedQueries | None
    trusted: TrustedDocuments | None
    trusted_only: bool  # production with a manifest

    async def resolve(
        self, query: str | None, persisted_hash: str | None, document_id: str | None
    ) -> tuple[str, str | None]:
        """The document to run, and the APQ digest to register it under once it has run
        (a document that does not parse or validate is never registered)."""
        if document_id is not None or (persisted_hash is not None and query is None):
            return await self._by_id(document_id or persisted_hash or ""), None
        assert query is not None  # the request parser guarantees a query, a hash or an id
        if self.trusted_only and (self.trusted is None or query not in self.trusted):
            raise PersistedDocumentError(
                ErrorCode.PERSISTED_QUERY_NOT_IN_LIST,
                "This gateway runs trusted documents only, and this one is not in its "
                "manifest. Send the id of a document the manifest lists.",
            )
        if persisted_hash is None or self.apq is None:
            return query, None
        return query, self._digest_of(persisted_hash, query)

    async def _by_id(self, document_id: str) -> str:
        if self.trusted is not None:
            found = self.trusted.get(document_id)
            if found is not None:
                return found
        if self.trusted_only:
            raise PersistedDocumentError(
                ErrorCode.PERSISTED_QUERY_NOT_IN_LIST,
                "No document with this id is in the gateway's trusted documents.",
            )
        digest = _normal_hash(document_id)
        if self.apq is None or digest is None:
            raise PersistedDocumentError(
                ErrorCode.PERSISTED_QUERY_NOT_FOUND
                if self.apq is not None
                else ErrorCode.BAD_USER_INPUT,
                "PersistedQueryNotFound"
                if self.apq is not None
                else "Persisted queries are turned off here: send the document in 'query'.",
            )
        found = await self.apq.get(digest)
        if found is None:
            # Apollo Client's link retries with the document when it sees this exact message
            # or code.
            raise PersistedDocumentError(
                ErrorCode.PERSISTED_QUERY_NOT_FOUND, "PersistedQueryNotFound"
            )
        return found

    @staticmethod
    def _digest_of(persisted_hash: str, query: str) -> str:
        digest = _normal_hash(persisted_hash)
        if digest is None or digest != sha256_hex(query):
            raise PersistedDocumentError(
                ErrorCode.BAD_USER_INPUT,
                "extensions.persistedQuery.sha256Hash is not the sha256 of 'query'; send the "
                "hex digest of the document exactly as sent.",
            )
        return digest

    async def register(self, digest: str, query: str) -> None:
        """Keep a document that ran under its APQ digest."""
        if self.apq is not None:
            await self.apq.put(digest, query)

"""The document policy: how a request's document, APQ hash or trusted-document id becomes the
text to run, and when a document may be registered for APQ.

APQ: a client sends ``extensions.persistedQuery.sha256Hash``; a hash we hold runs its
document; an unknown one answers ``PERSISTED_QUERY_NOT_FOUND`` so the client sends the document
with the hash, which registers it (after checking that the hash is the document's), but only
once it has run, only up to ``GATEWAY_PERSISTED_QUERIES_MAX_DOCUMENT_BYTES``, and only for a
caller the upstream accepted during that very operation (``CallerNumbers.caller_accepted``: a
page the upstream answered for this caller's credential, fresh or from its own cache entries)
or for a trusted document. A credential-shaped header is not a caller: ``Bearer junk``,
``{ __typename }`` (no upstream call) and an answer whose every field failed ``UNAUTHENTICATED``
register nothing. The store is ``data.persisted_queries``; the manifest is
``trusted_documents``.

Trusted documents only (production with a manifest): a listed document runs; an unlisted one
that names no federation field is refused before it is parsed; one that does is prepared like
any other and runs only if it is a router's federation operation (``router_access``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.data.persisted_queries import PersistedQueries, normal_hash, sha256_hex
from gateway.errors import ErrorCode
from gateway.execution.prepare import PreparedOperation
from gateway.transports.refusals import Refusal
from gateway.transports.router_access import (
    FEDERATION_FIELDS,
    SERVICE_ONLY,
    may_be_federation,
    only_root_fields,
)
from gateway.transports.trusted_documents import TrustedDocuments

NOT_IN_LIST = (
    "This gateway runs trusted documents only, and this one is not in its manifest. Send the "
    "id of a document the manifest lists."
)


class PersistedDocumentError(Refusal):
    """A persisted-document request that cannot run, with its contract code.

    ``PERSISTED_QUERY_NOT_FOUND`` answers 200 whatever the media type: Apollo's clients read it
    from a 200, then send the document. Others are 400 (200 as ``application/json``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        not_found = code is ErrorCode.PERSISTED_QUERY_NOT_FOUND
        super().__init__(200 if not_found else 400, message, code, legacy_status=200)


@dataclass(frozen=True, slots=True)
class ResolvedDocument:
    """The text a request runs, and what the policy knows of it."""

    text: str
    register_as: str | None = None  # the APQ digest to keep it under once it has run
    trusted: bool = False  # listed in the operator's manifest
    # Trusted documents only, and this one is not listed: it may run only as a router's
    # federation operation (``DocumentPolicy.admits_operation``, once prepared).
    needs_admission: bool = False


@dataclass(frozen=True, slots=True)
class DocumentPolicy:
    """How a request's document, hash or id becomes the text to run."""

    apq: PersistedQueries | None
    trusted: TrustedDocuments | None
    trusted_only: bool  # production with a manifest

    async def resolve(
        self, query: str | None, persisted_hash: str | None, document_id: str | None
    ) -> ResolvedDocument:
        """The document to run; raises ``PersistedDocumentError`` when there is none to run."""
        if document_id is not None or (persisted_hash is not None and query is None):
            return await self._by_id(document_id or persisted_hash or "")
        assert query is not None  # the request parser guarantees a query, a hash or an id
        listed = self.trusted is not None and query in self.trusted
        if self.trusted_only and not listed:
            if not may_be_federation(query):
                raise self.not_in_list()
            return ResolvedDocument(query, needs_admission=True)
        if persisted_hash is None or self.apq is None:
            return ResolvedDocument(query, trusted=listed)
        return ResolvedDocument(query, self._digest_of(persisted_hash, query), trusted=listed)

    def admits_operation(self, prepared: PreparedOperation, *, router: bool) -> bool:
        """Whether an unlisted document may run where only trusted documents run: a
        federation operation a router needs, ``_service`` for anyone, ``_entities`` too for a
        request carrying the router secret."""
        return only_root_fields(prepared.document, FEDERATION_FIELDS if router else SERVICE_ONLY)

    @staticmethod
    def not_in_list() -> PersistedDocumentError:
        return PersistedDocumentError(ErrorCode.PERSISTED_QUERY_NOT_IN_LIST, NOT_IN_LIST)

    async def _by_id(self, document_id: str) -> ResolvedDocument:
        if self.trusted is not None:
            found = self.trusted.get(document_id)
            if found is not None:
                return ResolvedDocument(found, trusted=True)
        if self.trusted_only:
            raise PersistedDocumentError(
                ErrorCode.PERSISTED_QUERY_NOT_IN_LIST,
                "No document with this id is in the gateway's trusted documents.",
            )
        digest = normal_hash(document_id)
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
        return ResolvedDocument(found)

    @staticmethod
    def _digest_of(persisted_hash: str, query: str) -> str:
        digest = normal_hash(persisted_hash)
        if digest is None or digest != sha256_hex(query):
            raise PersistedDocumentError(
                ErrorCode.BAD_USER_INPUT,
                "extensions.persistedQuery.sha256Hash is not the sha256 of 'query'; send the "
                "hex digest of the document exactly as sent.",
            )
        return digest

    async def register(self, digest: str, query: str, caller: str, *, vouched: bool) -> None:
        """Keep a document that ran under its APQ digest, in the share of ``caller``
        (``Caller.identity``), when the operation proved the caller real (``vouched``: the
        upstream accepted its credential during it, or the document is a trusted one)."""
        if self.apq is not None and vouched:
            await self.apq.put(digest, query, caller)

"""The document policy: how a request's document, APQ hash or trusted-document id becomes the
text to run, and when a document may be registered for APQ.

APQ: a client sends ``extensions.persistedQuery.sha256Hash``; a hash we hold runs its
document; an unknown one answers ``PERSISTED_QUERY_NOT_FOUND`` so the client sends the document
with the hash, which registers it (after checking that the hash is the document's), but only
once it has parsed and validated, only up to ``GATEWAY_PERSISTED_QUERIES_MAX_DOCUMENT_BYTES``,
and only for a caller the upstream accepted during that very operation
(``RequestFacts.caller_accepted``: a 2xx upstream answer, or a page cached under this caller's
own key) or for a trusted document. A credential-shaped header is not a caller: ``Bearer
junk``, ``{ __typename }`` (no upstream call) and an answer whose every field failed
``UNAUTHENTICATED`` register nothing. The store is ``pipeline.persisted_queries``; the
manifest is ``http.trusted_documents``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.data.persisted_queries import PersistedQueries, normal_hash, sha256_hex
from gateway.errors import ErrorCode
from gateway.observability.request_facts import current_facts, vouch_for_document
from gateway.transports.refusals import Refusal
from gateway.transports.trusted_documents import TrustedDocuments


class PersistedDocumentError(Refusal):
    """A persisted-document request that cannot run, with its contract code.

    ``PERSISTED_QUERY_NOT_FOUND`` answers 200 whatever the media type: Apollo's clients read it
    from a 200, then send the document. Others are 400 (200 as ``application/json``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        not_found = code is ErrorCode.PERSISTED_QUERY_NOT_FOUND
        super().__init__(200 if not_found else 400, message, code, legacy_status=200)


def upstream_vouched_for_caller() -> bool:
    """Whether the current operation proved its caller real: the upstream accepted the
    caller's credential during it, or it ran one of the operator's trusted documents."""
    facts = current_facts()
    return facts is not None and (facts.caller_accepted or facts.trusted_document)


@dataclass(frozen=True, slots=True)
class DocumentPolicy:
    """How the view turns a request's document, hash or id into the text to run."""

    apq: PersistedQueries | None
    trusted: TrustedDocuments | None
    trusted_only: bool  # production with a manifest

    async def resolve(
        self,
        query: str | None,
        persisted_hash: str | None,
        document_id: str | None,
        *,
        router: bool = False,
    ) -> tuple[str, str | None]:
        """The document to run, and the APQ digest to register it under once it has run
        (a document that does not parse or validate is never registered). ``router``: the
        request carries the router secret (``TrustedDocuments.admits``)."""
        if document_id is not None or (persisted_hash is not None and query is None):
            return await self._by_id(document_id or persisted_hash or ""), None
        assert query is not None  # the request parser guarantees a query, a hash or an id
        if self.trusted_only and (
            self.trusted is None or not self.trusted.admits(query, router=router)
        ):
            raise PersistedDocumentError(
                ErrorCode.PERSISTED_QUERY_NOT_IN_LIST,
                "This gateway runs trusted documents only, and this one is not in its "
                "manifest. Send the id of a document the manifest lists.",
            )
        if self.trusted is not None and query in self.trusted:
            vouch_for_document()  # the operator listed it: its name may take a metric label
        if persisted_hash is None or self.apq is None:
            return query, None
        return query, self._digest_of(persisted_hash, query)

    async def _by_id(self, document_id: str) -> str:
        if self.trusted is not None:
            found = self.trusted.get(document_id)
            if found is not None:
                vouch_for_document()
                return found
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
        return found

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

    async def register(self, digest: str, query: str, caller: str | None) -> None:
        """Keep a document that parsed and validated under its APQ digest, in the share of
        ``caller`` (``Caller.identity``), once this operation proved the caller real
        (``upstream_vouched_for_caller``); nothing is kept otherwise. Called after the
        operation ran, so the upstream's verdict on the credential is known."""
        if self.apq is not None and caller is not None and upstream_vouched_for_caller():
            await self.apq.put(digest, query, caller)

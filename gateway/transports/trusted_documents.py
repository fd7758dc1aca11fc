"""Trusted documents: the operator's manifest of the only documents production runs.

``GATEWAY_TRUSTED_DOCUMENTS`` names a manifest, in either format clients' build tools write:
Apollo's persisted query manifest (``{"format": "apollo-persisted-query-manifest",
"operations": [{"id", "body", ...}]}``) or GraphQL Codegen's client-preset
``persisted-documents.json`` (``{"<hash>": "<document>"}``). Clients may send just the id
(``documentId``, or the APQ hash). In production, with a manifest, any other document is
refused (``documents``), except the federation operations a router needs
(``router_access``).
"""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.data.persisted_queries import normal_hash, sha256_hex


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
            digest = normal_hash(key)
            if digest is None or digest != sha256_hex(body):
                raise ValueError(
                    f"{path}: id {key[:20]!r} is not the sha256 of its document; this gateway "
                    "accepts sha256 document ids only"
                )
            documents[digest] = body
        return cls(documents, str(path))

    def get(self, document_id: str) -> str | None:
        digest = normal_hash(document_id)
        return self.documents.get(digest) if digest is not None else None

    def __contains__(self, document: str) -> bool:
        return sha256_hex(document) in self.documents

"""Preparing an operation: a document's text and ``operationName`` become a ``PreparedOperation``
once, and every transport runs that.

``PreparedOperations.prepare`` parses the text with the token limit (``GATEWAY_MAX_TOKENS``: no
parse anywhere in the gateway goes without it; the body or message holding the text is bounded
before, by ``GATEWAY_MAX_BODY_BYTES``), applies the document limits (``document_limits``: empty
selections, unknown fragments, cycles, expansion), chooses the operation (several operations
and no ``operationName``, or an ``operationName`` naming none, is a request error, as the
GraphQL spec says), validates it against the schema with the operation limits (depth, aliases,
root fields; in production no introspection and no suggestions), and derives what every later
stage reads: the operation's kind and name, whether it reaches ``@defer`` or ``@stream``.

What it proved is kept under (text, ``operationName``), bounded in estimated bytes of memory
(``document_limits.parsed_size``; a refusal keeps its errors, never its tree): this cache *is*
the plan cache. A repeat skips parsing, validation and derivation; the checks that depend on
the request (the variables' ``@stream``/``@defer`` arguments and the cost estimate) still run
for each request (``run``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cachetools import LRUCache
from graphql import (
    ASTValidationRule,
    DocumentNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    GraphQLSyntaxError,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    OperationType,
    parse,
    specified_rules,
    validate,
)

from gateway.errors import ErrorCode
from gateway.execution.contract_errors import without_suggestions
from gateway.execution.document_limits import (
    incremental_directives,
    parsed_size,
    refusal,
)
from gateway.execution.fragment_walk import fragment_definitions

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

# What the prepared operations may hold, in bytes of memory as ``parsed_size`` estimates them.
PREPARED_CACHE_BYTES: Final = 64 * 1024 * 1024
# What a refused document costs to remember beyond its text: the errors and the entry.
REFUSED_ENTRY_OVERHEAD: Final = 1024
# graphql-core ends the errors of its parser's bounds (the token limit) this way.
_PARSER_LIMIT: Final = "Parsing aborted."
# Validation errors reported at most (graphql-core stops there with "Too many errors").
MAX_VALIDATION_ERRORS: Final = 20

PreparedKey = tuple[str, str | None]  # the document's text, the operationName sent


class OperationRefused(Exception):
    """An operation that cannot run at all: its errors (each with its contract code) are the
    whole answer, with no ``data`` entry (a request error: 400 as
    ``application/graphql-response+json``, 200 as ``application/json``)."""

    def __init__(
        self,
        errors: Sequence[GraphQLError],
        *,
        operation_name: str | None = None,
        operation_type: str | None = None,
    ) -> None:
        super().__init__(errors[0].message if errors else "refused")
        self.errors = list(errors)
        # The operation it would have run, when the document got that far (for the log).
        self.operation_name = operation_name
        self.operation_type = operation_type

    @property
    def codes(self) -> list[str]:
        return [str((error.extensions or {}).get("code")) for error in self.errors]


@dataclass(frozen=True, slots=True)
class PreparedOperation:
    """One operation of one document, parsed, checked and validated once."""

    text: str
    operation_name: str | None  # as the request sent it (the cache's key with the text)
    document: DocumentNode
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDefinitionNode]
    kind: OperationType
    defers: bool  # the operation reaches an @defer (in its fragments too)
    streams: bool  # the operation reaches an @stream
    size: int  # estimated bytes of memory (``parsed_size``)

    @property
    def key(self) -> PreparedKey:
        return (self.text, self.operation_name)

    @property
    def name(self) -> str | None:
        """The operation's own name (what logs and metrics call it)."""
        return self.operation.name.value if self.operation.name else None

    @property
    def incremental(self) -> bool:
        """Whether it may deliver incrementally (``@defer`` or ``@stream``)."""
        return self.defers or self.streams

    @property
    def subscription(self) -> bool:
        return self.kind is OperationType.SUBSCRIPTION


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A cache entry for a document that cannot run: only its errors (and the operation's
    name and type, when the document got that far)."""

    errors: tuple[GraphQLError, ...]
    size: int
    operation_name: str | None = None
    operation_type: str | None = None

    def refused(self) -> OperationRefused:
        return OperationRefused(
            self.errors, operation_name=self.operation_name, operation_type=self.operation_type
        )


class PreparedOperations:
    """The prepared operations of one schema: ``prepare`` and its bounded cache."""

    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        max_tokens: int,
        rules: Sequence[type[ASTValidationRule]] = (),
        production: bool = False,
        max_bytes: int = PREPARED_CACHE_BYTES,
    ) -> None:
        self.schema = schema
        self.max_tokens = max_tokens
        self.production = production
        self.rules: tuple[type[ASTValidationRule], ...] = (
            *specified_rules,
            *rules,
            *((NoSchemaIntrospectionCustomRule,) if production else ()),
        )
        self._entries: LRUCache[PreparedKey, PreparedOperation | _Refusal] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda entry: entry.size
        )
        self.parses = 0  # documents parsed (a repeat parses nothing: tests count this)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held_bytes(self) -> int:
        """What the entries hold, as ``parsed_size`` estimates it."""
        return int(self._entries.currsize)

    def prepare(
        self, text: str, operation_name: str | None, *, tracer: Tracer | None = None
    ) -> PreparedOperation:
        """The prepared operation, from the cache or made now; raises ``OperationRefused``
        (the same errors for every repeat of a refused document). ``tracer``: spans for the
        parse and the validation when they run."""
        key = (text, operation_name)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._make(text, operation_name, tracer)
            if entry.size <= self._entries.maxsize:
                self._entries[key] = entry
        if isinstance(entry, _Refusal):
            raise entry.refused()
        return entry

    def _make(
        self, text: str, operation_name: str | None, tracer: Tracer | None
    ) -> PreparedOperation | _Refusal:
        operation: OperationDefinitionNode | None = None
        try:
            with _span(tracer, "graphql.parse"):
                document = self._parse(text)
            operation = _chosen_operation(document, operation_name)
            with _span(tracer, "graphql.validate"):
                self._validate(document)
        except OperationRefused as refused:
            return _Refusal(
                tuple(refused.errors),
                len(text) + REFUSED_ENTRY_OVERHEAD,
                operation_name=operation.name.value if operation and operation.name else None,
                operation_type=operation.operation.value if operation else None,
            )
        fragments = fragment_definitions(document)
        directives = {d.name.value for d in incremental_directives(operation, fragments)}
        return PreparedOperation(
            text=text,
            operation_name=operation_name,
            document=document,
            operation=operation,
            fragments=fragments,
            kind=operation.operation,
            defers="defer" in directives,
            streams="stream" in directives,
            size=parsed_size(text),
        )

    def _parse(self, text: str) -> DocumentNode:
        self.parses += 1
        try:
            document = parse(text, max_tokens=self.max_tokens)
        except GraphQLSyntaxError as error:
            limit = error.message.endswith(_PARSER_LIMIT)
            code = ErrorCode.BAD_USER_INPUT if limit else ErrorCode.GRAPHQL_PARSE_FAILED
            raise OperationRefused([_coded(error, code)]) from None
        refused = refusal(document)
        if refused is not None:
            raise OperationRefused([refused])
        return document

    def _validate(self, document: DocumentNode) -> None:
        errors = validate(self.schema, document, self.rules, max_errors=MAX_VALIDATION_ERRORS)
        if not errors:
            return
        coded = [
            # The limit rules give their errors BAD_USER_INPUT (``document_limits.as_limit``).
            error
            if (error.extensions or {}).get("code") is not None
            else _coded(error, ErrorCode.GRAPHQL_VALIDATION_FAILED)
            for error in errors
        ]
        if self.production:
            coded = [without_suggestions(error) for error in coded]
        raise OperationRefused(coded)


def _chosen_operation(
    document: DocumentNode, operation_name: str | None
) -> OperationDefinitionNode:
    """The operation that runs: the one named ``operation_name``, or the document's only one.
    Several and no name, or a name naming none, is a request error (strawberry would quietly
    run the first)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        named = [op for op in operations if op.name and op.name.value == operation_name]
        if len(named) == 1:
            return named[0]
        message = f"operationName {operation_name!r} names no operation in the document."
        if named:
            message = f"operationName {operation_name!r} names several operations."
        raise OperationRefused([_request_error(message)])
    if len(operations) == 1:
        return operations[0]
    if not operations:
        raise OperationRefused([_request_error("The document has no operation to run.")])
    raise OperationRefused(
        [_request_error("The document has several operations: name one in 'operationName'.")]
    )


def _request_error(message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": ErrorCode.BAD_USER_INPUT.value})


def _coded(error: GraphQLError, code: ErrorCode) -> GraphQLError:
    return GraphQLError(
        error.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        extensions={**(error.extensions or {}), "code": code.value},
    )


def _span(tracer: Tracer | None, name: str) -> AbstractContextManager[Span | None]:
    if tracer is None:
        return nullcontext()
    # A refusal is the caller's document, not a failure of ours: no exception event.
    return tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False)

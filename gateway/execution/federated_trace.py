"""Federated tracing (ftv1): a router's per-field timings of this subgraph, as Apollo encodes them.

A federation router that reports field-level usage to GraphOS (Apollo Router, Apollo Gateway)
sends ``apollo-federation-include-trace: ftv1`` on its subgraph requests; the subgraph answers
with ``extensions.ftv1``: the base64 of one ``Trace`` message of Apollo's ``reports.proto``
(the copy in ``@apollo/usage-reporting-protobuf``), which the router stitches into its own trace
of the whole plan. Without the header nothing is recorded and nothing is added.

What is recorded (the subset of ``Trace`` a subgraph fills in, as Apollo Server's inline-trace
plugin does): the operation's wall-clock start and end, its duration, and a tree of nodes under
``root``, one per resolved field (response name, return type, parent type, start and end as
nanosecond offsets from the operation's start) with list items as index nodes between them;
each error of the response hangs on the node of its path (root for errors without a path),
with its message, locations and JSON: the error as the response has it, after the contract
rewrite, so a trace never says more than the response does (masked messages stay masked).
Documents that fail before execution (parse, validation, limits) get no trace: nothing ran.

Why it is middleware made per operation: graphql-core resolver middleware wraps every field of
the operation it is given, and switches off the projection fast path
(``gateway.execution.projecting_executor``). So ``run`` passes a ``FederatedTrace`` only to an
operation whose request asked for one (and, in production, carries the router secret): every
other operation keeps the fast path and pays nothing. With one, every field runs on the normal
path, as it must for every field to have a timing.

The protobuf is written by hand (``ProtoWriter``: varints and length-delimited fields are all
``Trace`` needs), so this module depends on nothing new. Field numbers are ``reports.proto``'s.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import Any, Final

from graphql import GraphQLError, GraphQLResolveInfo

HEADER: Final = "apollo-federation-include-trace"
HEADER_VALUE: Final = "ftv1"
EXTENSION_KEY: Final = "ftv1"

# reports.proto: message Trace
_TRACE_END_TIME: Final = 3  # google.protobuf.Timestamp
_TRACE_START_TIME: Final = 4  # google.protobuf.Timestamp
_TRACE_DURATION_NS: Final = 11  # uint64
_TRACE_ROOT: Final = 14  # Node
# google/protobuf/timestamp.proto
_TIMESTAMP_SECONDS: Final = 1  # int64
_TIMESTAMP_NANOS: Final = 2  # int32
# Trace.Node
_NODE_RESPONSE_NAME: Final = 1  # string (oneof id)
_NODE_INDEX: Final = 2  # uint32 (oneof id)
_NODE_TYPE: Final = 3  # string
_NODE_START_TIME: Final = 8  # uint64, ns from the trace's start
_NODE_END_TIME: Final = 9  # uint64
_NODE_ERROR: Final = 11  # repeated Error
_NODE_CHILD: Final = 12  # repeated Node
_NODE_PARENT_TYPE: Final = 13  # string
_NODE_ORIGINAL_FIELD_NAME: Final = 14  # string, set only when aliased
# Trace.Error
_ERROR_MESSAGE: Final = 1  # string
_ERROR_LOCATION: Final = 2  # repeated Location
_ERROR_JSON: Final = 4  # string
# Trace.Location
_LOCATION_LINE: Final = 1  # uint32
_LOCATION_COLUMN: Final = 2  # uint32

_VARINT: Final = 0
_LENGTH_DELIMITED: Final = 2


def wants_federated_trace(header_value: str | None) -> bool:
    """Whether a request's ``apollo-federation-include-trace`` header asks for ftv1."""
    return header_value is not None and header_value.strip().lower() == HEADER_VALUE


class ProtoWriter:
    """The protobuf wire format, the part of it ``Trace`` uses: varint and length-delimited
    fields. Zero scalars and empty strings are left out, as proto3 encoders do."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def to_bytes(self) -> bytes:
        return bytes(self._buffer)

    def _varint(self, value: int) -> None:
        if value < 0:  # int64/int32: two's complement over ten bytes
            value += 1 << 64
        while value > 0x7F:
            self._buffer.append((value & 0x7F) | 0x80)
            value >>= 7
        self._buffer.append(value)

    def _key(self, number: int, wire_type: int) -> None:
        self._varint((number << 3) | wire_type)

    def uint(self, number: int, value: int, *, always: bool = False) -> ProtoWriter:
        """A uint64/uint32/int64/int32 field (omitted when 0 unless ``always``: a oneof's
        chosen member is written even when it is 0)."""
        if value or always:
            self._key(number, _VARINT)
            self._varint(value)
        return self

    def string(self, number: int, value: str | None) -> ProtoWriter:
        """A string field (omitted when empty or None)."""
        if value:
            self.message(number, value.encode())
        return self

    def message(self, number: int, payload: bytes) -> ProtoWriter:
        """A length-delimited field: an embedded message's bytes (written even when empty:
        a present, empty message differs from an absent one)."""
        self._key(number, _LENGTH_DELIMITED)
        self._varint(len(payload))
        self._buffer += payload
        return self


@dataclass(slots=True)
class TraceNode:
    """One node of the trace tree: a field (``response_name``) or a list item (``index``)."""

    response_name: str | None = None
    index: int | None = None
    original_field_name: str | None = None
    type: str | None = None
    parent_type: str | None = None
    start_ns: int = 0
    end_ns: int = 0
    errors: list[GraphQLError] = field(default_factory=list)
    children: dict[str | int, TraceNode] = field(default_factory=dict)

    def child(self, key: str | int) -> TraceNode:
        found = self.children.get(key)
        if found is None:
            found = TraceNode(index=key) if isinstance(key, int) else TraceNode(response_name=key)
            self.children[key] = found
        return found

    def encode(self) -> bytes:
        writer = ProtoWriter()
        if self.response_name is not None:
            writer.string(_NODE_RESPONSE_NAME, self.response_name)
        elif self.index is not None:
            writer.uint(_NODE_INDEX, self.index, always=True)  # index 0 is still the choice
        writer.string(_NODE_TYPE, self.type)
        writer.uint(_NODE_START_TIME, self.start_ns)
        writer.uint(_NODE_END_TIME, self.end_ns)
        for error in self.errors:
            writer.message(_NODE_ERROR, encode_error(error))
        for child in self.children.values():
            writer.message(_NODE_CHILD, child.encode())
        writer.string(_NODE_PARENT_TYPE, self.parent_type)
        writer.string(_NODE_ORIGINAL_FIELD_NAME, self.original_field_name)
        return writer.to_bytes()


def encode_error(error: GraphQLError) -> bytes:
    writer = ProtoWriter().string(_ERROR_MESSAGE, error.message)
    for location in error.locations or ():
        where = ProtoWriter().uint(_LOCATION_LINE, location.line)
        writer.message(_ERROR_LOCATION, where.uint(_LOCATION_COLUMN, location.column).to_bytes())
    formatted = error.formatted
    writer.string(_ERROR_JSON, json.dumps(formatted, separators=(",", ":"), ensure_ascii=False))
    return writer.to_bytes()


def encode_timestamp(epoch_ns: int) -> bytes:
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    return ProtoWriter().uint(_TIMESTAMP_SECONDS, seconds).uint(_TIMESTAMP_NANOS, nanos).to_bytes()


def encode_trace(start_epoch_ns: int, duration_ns: int, root: TraceNode) -> bytes:
    """One ``Trace`` message: start and end (wall clock), duration, and the node tree."""
    return (
        ProtoWriter()
        .message(_TRACE_END_TIME, encode_timestamp(start_epoch_ns + duration_ns))
        .message(_TRACE_START_TIME, encode_timestamp(start_epoch_ns))
        .uint(_TRACE_DURATION_NS, duration_ns)
        .message(_TRACE_ROOT, root.encode())
        .to_bytes()
    )


class FederatedTrace:
    """One operation's trace, recorded while it runs: graphql-core resolver middleware (its
    ``resolve``), made only for an operation whose request asked for it and may have it."""

    def __init__(self) -> None:
        self._root = TraceNode()
        self._start_epoch_ns = time.time_ns()
        self._start_ns = time.monotonic_ns()  # monotonic: offsets never jump with the clock

    def resolve(
        self,
        _next: Callable[..., Any],
        root: Any,
        info: GraphQLResolveInfo[Any],
        *args: str,
        **kwargs: Any,
    ) -> Any:
        node = self._node_at(info.path.as_list())
        node.type = str(info.return_type)
        node.parent_type = info.parent_type.name
        if info.field_name != node.response_name:
            node.original_field_name = info.field_name
        node.start_ns = self._elapsed()
        value: object = _next(root, info, *args, **kwargs)
        if isawaitable(value):
            return self._finish(node, value)
        node.end_ns = self._elapsed()
        return value

    async def _finish(self, node: TraceNode, value: Awaitable[object]) -> object:
        try:
            return await value
        finally:
            node.end_ns = self._elapsed()

    def extension(self, errors: Iterable[GraphQLError]) -> dict[str, str]:
        """``extensions.ftv1`` of the operation, ending now, with ``errors`` (the response's,
        after the contract rewrite) hung on the nodes of their paths."""
        duration = self._elapsed()
        for error in errors:
            self._node_at(error.path).errors.append(error)
        trace = encode_trace(self._start_epoch_ns, max(duration, 1), self._root)
        return {EXTENSION_KEY: base64.b64encode(trace).decode("ascii")}

    def _elapsed(self) -> int:
        return time.monotonic_ns() - self._start_ns

    def _node_at(self, path: Sequence[str | int] | None) -> TraceNode:
        node = self._root
        for key in path or ():
            node = node.child(key)
        return node

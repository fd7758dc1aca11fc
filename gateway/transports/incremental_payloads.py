"""Incremental delivery's payloads as clients read them, and their merge into one answer.

graphql-core 3.3 produces the newer incremental format (``pending`` ids announced, then
``incremental`` entries that name an id, then ``completed``). Apollo Client 3, urql and
GraphiQL read the format of ``deferSpec=20220824`` instead: every ``incremental`` entry
carries its own ``path`` (for ``@stream`` items, the list's path plus the index of the
first item) and ``data`` (``@defer``) or ``items`` (``@stream``), and ``hasNext`` says
whether more follows. ``PayloadWriter`` converts one operation's frames, in order, into that
format; it keeps only the pending ids and a counter per stream, never the data sent.

``merged_answer`` folds the payloads back into one complete result: what a client that
accepts no incremental media type gets (the directives are hints a server may inline).

Every error goes out with a contract code, including those of later payloads (which the
schema's error extension never sees: they are produced after its hook has run, so the
writer is given ``contract_errors.contract_payload`` to rewrite them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError
from graphql.execution import (
    InitialIncrementalExecutionResult,
    SubsequentIncrementalExecutionResult,
)
from graphql.execution.types import IncrementalDeferResult, IncrementalStreamResult
from strawberry.types import ExecutionResult

Payload = dict[str, Any]
Frame = ExecutionResult | InitialIncrementalExecutionResult | SubsequentIncrementalExecutionResult
# How an error is written (the runner's: a contract code, an uncoded one masked).
ErrorFormatter = Callable[[GraphQLError], dict[str, Any]]
# Makes a later payload's errors contract errors (``contract_errors.contract_payload``).
LaterPayloadContract = Callable[
    [SubsequentIncrementalExecutionResult], SubsequentIncrementalExecutionResult
]
PathKey = str | int


@dataclass(slots=True)
class _Pending:
    path: list[PathKey]
    label: str | None
    stream: bool  # a list delivered with @stream (else a deferred fragment)
    next_index: int = 0  # a stream's next item index (its list's length when announced)


class PayloadWriter:
    """One operation's frames as ``deferSpec=20220824`` payloads, in order."""

    def __init__(self, format_error: ErrorFormatter, contract_later: LaterPayloadContract) -> None:
        self._format_error = format_error
        self._contract_later = contract_later
        self._pending: dict[str, _Pending] = {}
        self.items = 0  # streamed list items written so far (for the request's log line)

    def _errors(self, errors: Iterable[GraphQLError]) -> list[dict[str, Any]]:
        return [self._format_error(error) for error in errors]

    def initial(self, frame: InitialIncrementalExecutionResult) -> Payload:
        payload: Payload = {"data": frame.data}
        if frame.errors:
            payload["errors"] = self._errors(frame.errors)
        payload["hasNext"] = frame.has_next
        if frame.extensions:
            payload["extensions"] = frame.extensions
        self._announce(frame.pending, [([], frame.data)])
        return payload

    def subsequent(self, frame: SubsequentIncrementalExecutionResult) -> Payload:
        frame = self._contract_later(frame)
        entries: list[Payload] = []
        for result in frame.incremental or ():
            entry = self._incremental_entry(result)
            if entry is not None:
                entries.append(entry)
        for completed in frame.completed or ():
            pending = self._pending.pop(completed.id, None)
            if pending is not None and completed.errors:
                # A deferred fragment or a stream that failed as a whole: its errors, at
                # its place, as the older format carries them.
                failed: Payload = (
                    {"items": None, "path": self._next_path(pending)}
                    if pending.stream
                    else {"data": None, "path": pending.path}
                )
                failed["errors"] = self._errors(completed.errors)
                entries.append(failed)
        self._announce(
            frame.pending or (),
            [(entry["path"], entry.get("data", entry.get("items"))) for entry in entries],
        )
        payload: Payload = {"hasNext": frame.has_next}
        if entries:
            payload["incremental"] = entries
        if frame.extensions:
            payload["extensions"] = frame.extensions
        return payload

    def _incremental_entry(
        self, result: IncrementalDeferResult | IncrementalStreamResult
    ) -> Payload | None:
        pending = self._pending.get(result.id)
        if pending is None:
            return None
        entry: Payload
        if isinstance(result, IncrementalStreamResult):
            pending.stream = True
            entry = {"items": result.items, "path": self._next_path(pending)}
            pending.next_index += len(result.items)
            self.items += len(result.items)
        else:
            entry = {"data": result.data, "path": [*pending.path, *(result.sub_path or ())]}
        if pending.label is not None:
            entry["label"] = pending.label
        if result.errors:
            entry["errors"] = self._errors(result.errors)
        if result.extensions:
            entry["extensions"] = result.extensions
        return entry

    @staticmethod
    def _next_path(pending: _Pending) -> list[PathKey]:
        """Where a stream's next items go: the list's path plus their index."""
        return [*pending.path, pending.next_index]

    def _announce(self, announced: Sequence[Any], delivered: list[tuple[list[Any], Any]]) -> None:
        """Remember what was announced; a stream starts where its list ends in the data
        delivered with the announcement (its initial items)."""
        for pending in announced:
            path = list(pending.path)
            listed = _value_at(path, delivered)
            stream = isinstance(listed, list)
            self._pending[pending.id] = _Pending(
                path, pending.label, stream, len(listed) if stream else 0
            )


def _value_at(path: list[PathKey], delivered: list[tuple[list[Any], Any]]) -> Any:
    """The value at ``path`` inside one of the delivered (path, value) pairs, or None."""
    for base, value in delivered:
        if path[: len(base)] != base:
            continue
        found = value
        for key in path[len(base) :]:
            if isinstance(found, dict) and isinstance(key, str):
                found = found.get(key)
            elif isinstance(found, list) and isinstance(key, int) and 0 <= key < len(found):
                found = found[key]
            else:
                found = None
                break
        if found is not None:
            return found
    return None


def merged_answer(payloads: Iterable[Payload]) -> Payload:
    """The one complete result the payloads add up to (``hasNext`` dropped)."""
    merged: Payload = {}
    errors: list[dict[str, Any]] = []
    extensions: dict[str, Any] = {}
    for payload in payloads:
        if "data" in payload and "incremental" not in payload and not merged:
            merged["data"] = payload["data"]
        for entry in payload.get("incremental", ()):
            _apply(merged, entry)
            errors += entry.get("errors", ())
        errors += payload.get("errors", ())
        extensions |= payload.get("extensions") or {}
    if errors:
        merged["errors"] = errors
    if extensions:
        merged["extensions"] = extensions
    return merged


def _apply(merged: Payload, entry: Payload) -> None:
    """One incremental entry into the merged data, at its path."""
    path: list[PathKey] = entry["path"]
    if "items" in entry:
        target = _walk(merged.get("data"), path[:-1])
        index = path[-1] if path and isinstance(path[-1], int) else None
        if isinstance(target, list) and index is not None and entry["items"] is not None:
            target[index:] = entry["items"]
        return
    target = _walk(merged.get("data"), path)
    if isinstance(target, dict) and isinstance(entry.get("data"), dict):
        _deep_merge(target, entry["data"])


def _walk(data: Any, path: Sequence[PathKey]) -> Any:
    for key in path:
        if isinstance(data, dict) and isinstance(key, str):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _deep_merge(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        existing = target.get(key)
        if isinstance(existing, dict) and isinstance(value, dict):
            _deep_merge(existing, value)
        else:
            target[key] = value

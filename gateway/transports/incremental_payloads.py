"""Incremental delivery's payloads in the format the client asked for, and their merge into one
answer.

graphql-core 3.3 executes ``@defer`` and ``@stream`` in the format of ``incrementalSpec=v0.2``
(graphql-js 17.0.0-alpha.9's): a payload announces ``pending`` ids (each with its ``path``),
``incremental`` entries name an id (and a ``subPath`` below its path), and ``completed`` ends
an id (with ``errors`` when it failed as a whole). ``PayloadWriter`` writes one operation's
frames, in order, in one ``IncrementalFormat`` (``negotiation``):

- ``V0_2``: that format as it is, its errors with contract codes.
- ``PATHS`` and ``DEFER_SPEC`` (the 2022 format of ``deferSpec=20220824``: Apollo Client 3,
  urql, GraphiQL, Apollo Router): every ``incremental`` entry carries its own ``path`` and
  ``data`` (``@defer``) or ``items`` (``@stream``: the list's path plus the index of the first
  item), and ``hasNext`` says whether more follows. With ``DEFER_SPEC`` each streamed item is
  a ``data`` entry at its own index instead, which clients that merge only ``data`` place too.
  The writer keeps the pending ids, each one's path and a stream's next index, never the data
  sent.

A payload may announce an id and deliver it at once (a fragment deferred inside a deferred
fragment or inside streamed items, whose data is ready with its parent's): announcements are
read before the entries, and a stream announced in a payload starts where its list ends in the
data that payload delivers (its parent's entry, whatever the order of the entries).

``merged_answer`` folds payloads of any of these formats back into one complete result: what
a client that accepts no incremental media type gets (the directives are hints a server may
inline).

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
from graphql.execution.types import (
    CompletedResult,
    IncrementalDeferResult,
    IncrementalStreamResult,
    PendingResult,
)
from strawberry.types import ExecutionResult

from gateway.transports.negotiation import IncrementalFormat

Payload = dict[str, Any]
Frame = ExecutionResult | InitialIncrementalExecutionResult | SubsequentIncrementalExecutionResult
# How an error is written (the runner's: a contract code, an uncoded one masked).
ErrorFormatter = Callable[[GraphQLError], dict[str, Any]]
# Makes a later payload's errors contract errors (``contract_errors.contract_payload``).
LaterPayloadContract = Callable[
    [SubsequentIncrementalExecutionResult], SubsequentIncrementalExecutionResult
]
PathKey = str | int
IncrementalResult = IncrementalDeferResult | IncrementalStreamResult


@dataclass(slots=True)
class _Pending:
    path: list[PathKey]
    label: str | None
    # A stream's next item index (where its list ended when announced); None for a deferred
    # fragment, and for a stream until the data its announcement came with has been read.
    next_index: int | None = None


@dataclass(frozen=True, slots=True)
class _Delivered:
    """Data a payload delivered at ``path``: a value, or (``items``) list items from the
    index that ends ``path``."""

    path: list[PathKey]
    value: Any
    items: bool = False

    def at(self, rest: Sequence[PathKey]) -> Any:
        """The value ``rest`` further down (from the list, for items), or None."""
        if not self.items:
            return _walk(self.value, rest)
        start, index = self.path[-1], rest[0] if rest else None
        if not isinstance(index, int) or not isinstance(start, int):
            return None
        offset = index - start
        found = self.value[offset] if 0 <= offset < len(self.value) else None
        return _walk(found, rest[1:])


class _Deliveries:
    """What one payload delivered, by the path it sits under: a pending id's data is found
    in as many look-ups as its path is deep, however many entries the payload holds (a
    stream's items each with a deferred fragment make thousands)."""

    def __init__(self, *delivered: _Delivered) -> None:
        self._under: dict[tuple[PathKey, ...], list[_Delivered]] = {}
        for part in delivered:
            self.add(part)

    def add(self, part: _Delivered) -> None:
        base = part.path[:-1] if part.items else part.path
        self._under.setdefault(tuple(base), []).append(part)

    def value_at(self, path: Sequence[PathKey]) -> Any:
        """The value at ``path`` inside one of the delivered values, or None."""
        for depth in range(len(path), -1, -1):
            for part in self._under.get(tuple(path[:depth]), ()):
                found = part.at(path[depth:])
                if found is not None:
                    return found
        return None


class PayloadWriter:
    """One operation's frames as payloads in ``spec``'s format, in order."""

    def __init__(
        self,
        format_error: ErrorFormatter,
        contract_later: LaterPayloadContract,
        spec: IncrementalFormat = IncrementalFormat.PATHS,
    ) -> None:
        self._format_error = format_error
        self._contract_later = contract_later
        self.spec = spec
        self._pending: dict[str, _Pending] = {}
        self.items = 0  # streamed list items written so far (for the request's log line)

    def _errors(self, errors: Iterable[GraphQLError]) -> list[dict[str, Any]]:
        return [self._format_error(error) for error in errors]

    def initial(self, frame: InitialIncrementalExecutionResult) -> Payload:
        payload: Payload = {"data": frame.data}
        if frame.errors:
            payload["errors"] = self._errors(frame.errors)
        if self.spec is IncrementalFormat.V0_2:
            payload["pending"] = [_pending_entry(pending) for pending in frame.pending]
        else:
            self._announce(frame.pending)
            self._locate_streams(
                [self._pending[pending.id] for pending in frame.pending],
                _Deliveries(_Delivered([], frame.data)),
            )
        payload["hasNext"] = frame.has_next
        if frame.extensions:
            payload["extensions"] = frame.extensions
        return payload

    def subsequent(self, frame: SubsequentIncrementalExecutionResult) -> Payload:
        frame = self._contract_later(frame)
        if self.spec is IncrementalFormat.V0_2:
            return self._as_v0_2(frame)
        self._announce(frame.pending or ())
        entries = self._entries(frame.incremental or (), frame.pending or ())
        for completed in frame.completed or ():
            pending = self._pending.pop(completed.id, None)
            if pending is not None and completed.errors:
                entries.append(self._failed(pending, completed.errors))
        payload: Payload = {"hasNext": frame.has_next}
        if entries:
            payload["incremental"] = entries
        if frame.extensions:
            payload["extensions"] = frame.extensions
        return payload

    def _as_v0_2(self, frame: SubsequentIncrementalExecutionResult) -> Payload:
        payload: Payload = {}
        if frame.pending:
            payload["pending"] = [_pending_entry(pending) for pending in frame.pending]
        if frame.incremental:
            payload["incremental"] = [self._v0_2_entry(result) for result in frame.incremental]
        if frame.completed:
            payload["completed"] = [self._completed_entry(done) for done in frame.completed]
        payload["hasNext"] = frame.has_next
        if frame.extensions:
            payload["extensions"] = frame.extensions
        return payload

    def _v0_2_entry(self, result: IncrementalResult) -> Payload:
        entry: Payload
        if isinstance(result, IncrementalStreamResult):
            entry = {"items": result.items, "id": result.id}
            self.items += len(result.items)
        else:
            entry = {"data": result.data, "id": result.id}
        if result.sub_path:
            entry["subPath"] = result.sub_path
        if result.errors:
            entry["errors"] = self._errors(result.errors)
        if result.extensions:
            entry["extensions"] = result.extensions
        return entry

    def _completed_entry(self, completed: CompletedResult) -> Payload:
        entry: Payload = {"id": completed.id}
        if completed.errors:
            entry["errors"] = self._errors(completed.errors)
        return entry

    def _announce(self, announced: Iterable[PendingResult]) -> None:
        for pending in announced:
            self._pending[pending.id] = _Pending(list(pending.path), pending.label)

    def _entries(
        self, results: Sequence[IncrementalResult], announced: Sequence[PendingResult]
    ) -> list[Payload]:
        """The frame's entries with their paths, in the frame's order. An item entry of a
        stream announced in this frame waits until the entry delivering its list is read."""
        written: list[list[Payload] | None] = [None] * len(results)
        delivered = _Deliveries()
        waiting = list(range(len(results)))
        while waiting:
            still: list[int] = []
            for index in waiting:
                result = results[index]
                pending = self._pending.get(result.id)
                if pending is None:  # not announced: nothing says where it goes
                    written[index] = []
                    continue
                if isinstance(result, IncrementalStreamResult) and pending.next_index is None:
                    self._locate_streams([pending], delivered)
                    if pending.next_index is None:
                        still.append(index)
                        continue
                written[index] = self._incremental_entries(result, pending, delivered)
            if len(still) == len(waiting):
                # No entry of this frame holds their lists (graphql-core always sends a
                # stream's list with its announcement): counted from 0 rather than lost.
                for index in still:
                    pending = self._pending[results[index].id]
                    if pending.next_index is None:
                        pending.next_index = 0
                    written[index] = self._incremental_entries(results[index], pending, delivered)
                still = []
            waiting = still
        self._locate_streams(
            [self._pending[p.id] for p in announced if p.id in self._pending], delivered
        )
        return [entry for entries in written for entry in entries or ()]

    def _incremental_entries(
        self, result: IncrementalResult, pending: _Pending, delivered: _Deliveries
    ) -> list[Payload]:
        entries: list[Payload]
        if isinstance(result, IncrementalStreamResult):
            start = pending.next_index or 0
            path = [*pending.path, start]
            delivered.add(_Delivered(path, result.items, items=True))
            if self.spec is IncrementalFormat.DEFER_SPEC:
                entries = [
                    {"data": item, "path": [*pending.path, start + offset]}
                    for offset, item in enumerate(result.items)
                ]
            else:
                entries = [{"items": result.items, "path": path}]
            pending.next_index = start + len(result.items)
            self.items += len(result.items)
        else:
            path = [*pending.path, *(result.sub_path or ())]
            delivered.add(_Delivered(path, result.data))
            entries = [{"data": result.data, "path": path}]
        for entry in entries:
            if pending.label is not None:
                entry["label"] = pending.label
        if result.errors:  # on the first entry: each error once
            entries[0]["errors"] = self._errors(result.errors)
        if result.extensions:
            entries[0]["extensions"] = result.extensions
        return entries

    def _failed(self, pending: _Pending, errors: Sequence[GraphQLError]) -> Payload:
        """A deferred fragment or a stream that failed as a whole: its errors, at its place,
        as the 2022 format carries them."""
        failed: Payload
        if pending.next_index is None:
            failed = {"data": None, "path": pending.path}
        elif self.spec is IncrementalFormat.DEFER_SPEC:
            # Nothing to place: an empty fragment on the list's parent carries the errors
            # (a null item would break a list of non-null items).
            failed = {"data": {}, "path": pending.path[:-1]}
        else:
            failed = {"items": None, "path": [*pending.path, pending.next_index]}
        if pending.label is not None:
            failed["label"] = pending.label
        failed["errors"] = self._errors(errors)
        return failed

    @staticmethod
    def _locate_streams(pendings: Iterable[_Pending], delivered: _Deliveries) -> None:
        """A stream starts where its list ends in the data delivered with its announcement
        (its initial items); a pending id whose path holds no list there is a fragment."""
        for pending in pendings:
            if pending.next_index is None:
                listed = delivered.value_at(pending.path)
                if isinstance(listed, list):
                    pending.next_index = len(listed)


def _pending_entry(pending: PendingResult) -> Payload:
    entry: Payload = {"id": pending.id, "path": list(pending.path)}
    if pending.label is not None:
        entry["label"] = pending.label
    return entry


def merged_answer(payloads: Iterable[Payload]) -> Payload:
    """The one complete result the payloads add up to (``hasNext`` dropped), whichever
    ``IncrementalFormat`` wrote them."""
    merged: Payload = {}
    errors: list[dict[str, Any]] = []
    extensions: dict[str, Any] = {}
    paths: dict[str, list[PathKey]] = {}  # incrementalSpec=v0.2: each pending id's path
    for payload in payloads:
        if "data" in payload and "incremental" not in payload and not merged:
            merged["data"] = payload["data"]
        for pending in payload.get("pending", ()):
            paths[pending["id"]] = pending["path"]
        for entry in payload.get("incremental", ()):
            if "id" in entry:
                _apply_v0_2(merged, entry, paths.get(entry["id"]))
            else:
                _apply(merged, entry)
            errors += entry.get("errors", ())
        for completed in payload.get("completed", ()):
            errors += completed.get("errors", ())
        errors += payload.get("errors", ())
        extensions |= payload.get("extensions") or {}
    if errors:
        merged["errors"] = errors
    if extensions:
        merged["extensions"] = extensions
    return merged


def _apply(merged: Payload, entry: Payload) -> None:
    """One 2022-format entry into the merged data, at its path."""
    path: list[PathKey] = entry["path"]
    index = path[-1] if path and isinstance(path[-1], int) else None
    if "items" in entry:
        target = _walk(merged.get("data"), path[:-1])
        if isinstance(target, list) and index is not None and entry["items"] is not None:
            target[index:] = entry["items"]
        return
    data = entry.get("data")
    if index is not None:  # a list item's fields, or (DEFER_SPEC) a streamed item itself
        listed = _walk(merged.get("data"), path[:-1])
        if isinstance(listed, list) and index == len(listed):
            listed.append(data)
            return
    target = _walk(merged.get("data"), path)
    if isinstance(target, dict) and isinstance(data, dict):
        _deep_merge(target, data)


def _apply_v0_2(merged: Payload, entry: Payload, path: list[PathKey] | None) -> None:
    """One ``incrementalSpec=v0.2`` entry into the merged data, at its pending id's path."""
    if path is None:
        return
    target = _walk(merged.get("data"), [*path, *entry.get("subPath", ())])
    if "items" in entry:
        if isinstance(target, list):
            target.extend(entry["items"])
    elif isinstance(target, dict) and isinstance(entry.get("data"), dict):
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

"""A page's items as the upstream sent them: the bodies they came in, and which entries of each
body's ``phoneNumbers`` are the page's, decoded into Python only when something reads them.

Why items stay bytes
    A 2,000-item body is about a megabyte of JSON. Decoding it into dicts costs more than the
    whole rest of a page's answer, and most of it is thrown away: a selection reads a few of
    the 23 fields. So a page keeps its bodies (``UpstreamBody``) and the positions of its
    entries (``UpstreamItems``); the projection fast path decodes a body straight into typed
    structures holding only the selected fields (``execution.struct_projection``), and the page
    cache stores the bodies as they came (``data.page_cache``), so a hit is read the same way.
    Anything that reads the items as mappings (the tolerant reader, the fan-out merge, entity
    batches, exports, the change feed) gets them decoded once per body, on first read.

How a body is decoded
    ``decode_json`` is the one JSON reading of an upstream body, for both forms: msgspec's
    decoder (the typed decode uses the same parser, so the two cannot disagree on what JSON
    says), integers exact at any size, and a number too large for a double read as infinity
    (``float``'s reading) rather than refusing the body: a value no selection reads must not
    change whether a page is served. Bodies enter only through ``upstream.body``, which has
    checked their shape: an object whose ``phoneNumbers`` is missing, null, or a list.
    Positions name entries of that list; an entry that is not an object is never named.

Slices, picks and joins (``items[a:b]``, ``pick``, ``join``) make new ``UpstreamItems`` over the
same bodies without decoding anything, so a window cut from a walk, an entity's share of a walk
or a merge of several lists is still bytes the fast path reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final, overload

import msgspec

# The upstream body's JSON, as Python values (see the module docstring).
_JSON: Final = msgspec.json.Decoder(float_hook=float)
DECODE_FAILURES: Final = (msgspec.DecodeError, RecursionError)

Item = dict[str, Any]
Buffer = bytes | bytearray | memoryview  # a body as received, or a view into a cache entry


def decode_json(content: Buffer) -> Any:
    """``content`` as JSON; raises one of ``DECODE_FAILURES`` when it is not JSON."""
    return _JSON.decode(content)


class UpstreamBody:
    """One upstream answer's body, as received, and its ``phoneNumbers`` entries once decoded.

    ``typed`` keeps the one typed decode of it a request made last (the decoder it used and
    the entries), so pages sharing a body (an entity batch's shares of one walk) decode it
    once per selection."""

    __slots__ = ("_entries", "content", "typed")

    def __init__(self, content: Buffer, entries: list[Any] | None = None) -> None:
        self.content = content
        self._entries = entries
        self.typed: tuple[object, list[Any] | None] | None = None  # None: not readable typed

    @property
    def entries(self) -> list[Any]:
        """The body's ``phoneNumbers`` list as decoded JSON (every entry, objects or not)."""
        if self._entries is None:
            body = decode_json(self.content)
            found = body.get("phoneNumbers") if isinstance(body, dict) else None
            self._entries = found if isinstance(found, list) else []
        return self._entries

    def __len__(self) -> int:
        return len(self.content)


Run = tuple[UpstreamBody, Sequence[int]]  # a body and positions in its phoneNumbers, in order


class UpstreamItems(Sequence[Item]):
    """A page's items: runs of (body, positions), in order. Reads as a sequence of the items'
    dicts (decoded on first read, once per body); slicing, ``pick`` and ``join`` stay bytes."""

    __slots__ = ("_decoded", "_length", "runs")

    def __init__(self, runs: Sequence[Run] = ()) -> None:
        self.runs: tuple[Run, ...] = tuple((body, at) for body, at in runs if len(at))
        self._length = sum(len(at) for _, at in self.runs)
        self._decoded: list[Item] | None = None

    @classmethod
    def of_body(cls, body: UpstreamBody, positions: Sequence[int]) -> UpstreamItems:
        return cls(((body, positions),))

    @classmethod
    def concat(cls, parts: Sequence[UpstreamItems]) -> UpstreamItems:
        """The items of ``parts`` one after another."""
        return cls([run for part in parts for run in part.runs])

    @property
    def bodies(self) -> list[UpstreamBody]:
        """The distinct bodies the items are in, in the order they first appear."""
        return list({id(body): body for body, _ in self.runs}.values())

    def decoded(self) -> list[Item]:
        """The items as dicts, decoded on first read."""
        if self._decoded is None:
            self._decoded = [
                item for body, at in self.runs for item in at_positions(body.entries, at)
            ]
        return self._decoded

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Item]:
        return iter(self.decoded())

    @overload
    def __getitem__(self, index: int) -> Item: ...
    @overload
    def __getitem__(self, index: slice) -> UpstreamItems: ...
    def __getitem__(self, index: int | slice) -> Item | UpstreamItems:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step != 1:
                return self.pick(range(start, stop, step))
            return self._between(start, max(start, stop))
        return self.decoded()[index]

    def _between(self, start: int, stop: int) -> UpstreamItems:
        runs: list[Run] = []
        offset = 0
        for body, at in self.runs:
            low, high = max(start - offset, 0), min(stop - offset, len(at))
            if low < high:
                runs.append((body, at[low:high]))
            offset += len(at)
            if offset >= stop:
                break
        return UpstreamItems(runs)

    def pick(self, indices: Sequence[int]) -> UpstreamItems:
        """The items at ``indices`` (of this sequence), in that order."""
        located = [(body, position) for body, at in self.runs for position in at]
        runs: list[tuple[UpstreamBody, list[int]]] = []
        for index in indices:
            body, position = located[index]
            if runs and runs[-1][0] is body:
                runs[-1][1].append(position)
            else:
                runs.append((body, [position]))
        return UpstreamItems([(body, tuple(at)) for body, at in runs])

    def locate(self, index: int) -> tuple[UpstreamBody, int]:
        """The body and position of the item at ``index``."""
        if index < 0:
            index += self._length
        for body, at in self.runs:
            if index < len(at):
                return body, at[index]
            index -= len(at)
        raise IndexError(index)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and self.decoded() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by its items

    def __repr__(self) -> str:
        return f"UpstreamItems({len(self)} items in {len(self.runs)} runs)"


def at_positions(entries: list[Any], positions: Sequence[int]) -> Sequence[Any]:
    """``entries`` at ``positions`` (of a run): a slice for a range of them, the list itself
    when the range is all of it."""
    if isinstance(positions, range) and positions.step == 1:
        if positions.start == 0 and positions.stop == len(entries):
            return entries
        return entries[positions.start : positions.stop]
    return [entries[position] for position in positions]


class PickedItems:
    """Items gathered one at a time from other pages' items, in order (a merge, a partition):
    ``UpstreamItems`` over the same bodies while every source is one, dicts otherwise."""

    __slots__ = ("_plain", "_runs")

    def __init__(self) -> None:
        self._runs: list[tuple[UpstreamBody, list[int]]] = []
        self._plain: list[Item] | None = None

    def add(self, source: Sequence[Item], index: int) -> None:
        """The item at ``index`` of ``source``."""
        if self._plain is None and isinstance(source, UpstreamItems):
            self.add_location(*source.locate(index))
            return
        if self._plain is None:
            self._plain = list(UpstreamItems(self._runs))
        self._plain.append(source[index])

    def add_location(self, body: UpstreamBody, position: int) -> None:
        if self._plain is not None:
            self._plain.append(body.entries[position])
        elif self._runs and self._runs[-1][0] is body:
            self._runs[-1][1].append(position)
        else:
            self._runs.append((body, [position]))

    def items(self) -> Sequence[Item]:
        if self._plain is not None:
            return self._plain
        return UpstreamItems([(body, tuple(at)) for body, at in self._runs])


def join(parts: Sequence[Sequence[Item]]) -> Sequence[Item]:
    """The items of ``parts`` one after another: ``UpstreamItems`` when every part is one."""
    upstream = [part for part in parts if isinstance(part, UpstreamItems)]
    if len(upstream) == len(parts):
        return UpstreamItems.concat(upstream)
    return [item for part in parts for item in part]

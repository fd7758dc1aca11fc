"""The in-process store of encoded entries that the page cache and answer reuse both keep:
an LRU bounded by entries and by bytes, expiring after a TTL, with each caller held to a
share of the entries and of the bytes.

It stores bytes and knows nothing of what they encode; each user decodes its own entries.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# What one entry costs beyond its bytes (the key, the slot, dictionary room), so that many
# small entries cannot hide from the byte bound.
ENTRY_OVERHEAD = 512


@dataclass(frozen=True, slots=True)
class _Slot:
    raw: bytes  # the encoded entry: what the byte bound counts is what memory holds
    stored_at: float  # monotonic
    owner: str  # a hash of the caller's credentials, never the token


class LocalTier:
    """LRU, expiring after ``ttl``, bounded by entries and by bytes, with each owner
    (caller) held to ``owner_share`` of the entries and of the bytes.

    Entries are kept encoded and decoded by the reader on a hit, so the byte bound is what
    the process really holds (decoded pages take several times their JSON size). The owner
    share keeps one caller from filling the store and evicting every other tenant, with
    large entries or with many tiny ones: past its share, a caller's own oldest entries go
    first.
    """

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float],
        owner_share: float = 1.0,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_owner_bytes = max(1, int(max_bytes * owner_share))
        self.max_owner_entries = max(1, int(max_entries * owner_share))
        self.clock = clock
        self.size_bytes = 0
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._by_owner: dict[str, OrderedDict[str, None]] = {}
        self._owner_bytes: Counter[str] = Counter()

    def get_raw(self, key: str) -> tuple[bytes, float] | None:
        """The stored bytes and when they were stored (monotonic), unless expired."""
        slot = self._slots.get(key)
        if slot is None:
            return None
        if self.clock() - slot.stored_at >= self.ttl:
            self._remove(key)
            return None
        self._slots.move_to_end(key)
        self._by_owner[slot.owner].move_to_end(key)
        return slot.raw, slot.stored_at

    def set(self, key: str, raw: bytes, stored_at: float, owner: str) -> None:
        size = len(raw) + ENTRY_OVERHEAD
        self._remove(key)
        if size > self.max_owner_bytes:
            return  # larger than a caller's whole share: serve it, don't keep it
        mine = self._by_owner.get(owner)
        while mine and (
            self._owner_bytes[owner] + size > self.max_owner_bytes
            or len(mine) >= self.max_owner_entries
        ):
            self._remove(next(iter(mine)))
        while self._slots and (
            self.size_bytes + size > self.max_bytes or len(self._slots) >= self.max_entries
        ):
            self._remove(next(iter(self._slots)))
        self._slots[key] = _Slot(raw, stored_at, owner)
        self._by_owner.setdefault(owner, OrderedDict())[key] = None
        self._owner_bytes[owner] += size
        self.size_bytes += size

    def _remove(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        size = len(slot.raw) + ENTRY_OVERHEAD
        self.size_bytes -= size
        self._owner_bytes[slot.owner] -= size
        owned = self._by_owner[slot.owner]
        del owned[key]
        if not owned:
            del self._by_owner[slot.owner]
            del self._owner_bytes[slot.owner]

    def __len__(self) -> int:
        return len(self._slots)

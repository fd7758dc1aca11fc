"""What the change feeds of one process may hold in memory: each feed remembers the entries its
subscribers were last told (its snapshot, up to ``GATEWAY_CHANGES_MAX_ITEMS`` entries), and
those bytes are charged to the feed's caller, bounded per caller
(``GATEWAY_CHANGES_MAX_BYTES_PER_CALLER``) and in total (``GATEWAY_CHANGES_MAX_BYTES``).

A snapshot is counted as its JSON size (what the upstream sent for those entries; the
process holds about three and a half times that as Python objects). A feed is charged when
it learns its entries (its first poll or relayed baseline) and again whenever they change,
and its charge is dropped when it stops. A new feed is refused at once when its caller, or
the process, already holds its bound; one whose own entries do not fit ends with an error
that says which bound and what to do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import BadUserInput, GatewayError, RateLimited

MIB = 1024 * 1024
# What one entry adds to its snapshot's JSON besides its identity and itself: a colon and a
# comma. Used to count a relayed change without encoding the whole snapshot again.
_ENTRY_FRAME = 2


def snapshot_bytes(snapshot: Mapping[str, Any]) -> int:
    """A snapshot's size as the bound counts it: its JSON."""
    return len(orjson.dumps(snapshot))


def entry_bytes(identity: str, entry: Mapping[str, Any]) -> int:
    """What one entry adds to its snapshot's size (its share of ``snapshot_bytes``)."""
    return len(orjson.dumps(identity)) + _ENTRY_FRAME + len(orjson.dumps(entry))


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


class SnapshotBudget:
    """The bytes each feed's snapshot holds, charged to the feed's caller."""

    def __init__(self, *, per_caller: int, total: int, retry_after: float) -> None:
        self.per_caller = per_caller
        self.total = total
        self.retry_after = retry_after
        self._charges: dict[str, tuple[str, int]] = {}  # feed instance -> (caller, bytes)
        self._by_caller: Counter[str] = Counter()
        self.held = 0  # bytes, every feed's

    def held_by(self, caller: str) -> int:
        return self._by_caller[caller]

    def charge_of(self, feed: str) -> int:
        return self._charges.get(feed, ("", 0))[1]

    def admit(self, caller: str) -> None:
        """Raise ``RateLimited`` when a new feed of ``caller`` has no room to start."""
        if self._by_caller[caller] >= self.per_caller:
            raise RateLimited(
                f"This caller's change feeds hold {_mib(self._by_caller[caller])} of entries, "
                f"the most one caller may ({_mib(self.per_caller)}, "
                "GATEWAY_CHANGES_MAX_BYTES_PER_CALLER); end one of its subscriptions, or "
                "subscribe with narrower filters, before starting another.",
                retry_after=self.retry_after,
            )
        if self.held >= self.total:
            raise RateLimited(
                f"The gateway's change feeds hold {_mib(self.held)} of entries, the most it "
                f"allows ({_mib(self.total)}, GATEWAY_CHANGES_MAX_BYTES); try again later.",
                retry_after=self.retry_after,
            )

    def charge(self, feed: str, caller: str, size: int) -> GatewayError | None:
        """Charge ``feed`` (its instance) ``size`` bytes in place of what it held; the error
        to end it with instead when they do not fit (its charge is then dropped)."""
        held_before = self.charge_of(feed)
        refused = self._refusal(caller, size, held_before)
        if refused is not None:
            self.release(feed)
            return refused
        self.release(feed)
        self._charges[feed] = (caller, size)
        self._by_caller[caller] += size
        self.held += size
        return None

    def _refusal(self, caller: str, size: int, held_before: int) -> GatewayError | None:
        if size > self.per_caller:
            return BadUserInput(
                f"This filter's entries take {_mib(size)}, more than one caller's change "
                f"feeds may hold ({_mib(self.per_caller)}, "
                "GATEWAY_CHANGES_MAX_BYTES_PER_CALLER). Subscribe with a narrower filter, "
                "for example one location (filter.locationId) or one owner type."
            )
        others = self._by_caller[caller] - held_before
        if others + size > self.per_caller:
            return RateLimited(
                f"This feed's entries ({_mib(size)}) and this caller's other change feeds "
                f"({_mib(others)}) would hold more than one caller may "
                f"({_mib(self.per_caller)}, GATEWAY_CHANGES_MAX_BYTES_PER_CALLER); end "
                "another subscription, or subscribe with a narrower filter.",
                retry_after=self.retry_after,
            )
        if self.held - held_before + size > self.total:
            return RateLimited(
                f"The gateway's change feeds would hold more than it allows "
                f"({_mib(self.total)}, GATEWAY_CHANGES_MAX_BYTES) with this one "
                f"({_mib(size)}); try again later.",
                retry_after=self.retry_after,
            )
        return None

    def release(self, feed: str) -> None:
        caller, size = self._charges.pop(feed, ("", 0))
        if not size and not caller:
            return
        self.held -= size
        self._by_caller[caller] -= size
        if self._by_caller[caller] <= 0:
            del self._by_caller[caller]

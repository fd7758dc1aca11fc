"""What changed between two polls of one filter: entry identities, snapshots and their diff,
and the ``PhoneNumberChange`` records the change feed (``Subscription.phoneNumberChanges``) sends.

A snapshot maps each entry's identity (its phone number, or its location and extension when it
has none) to the entry exactly as the upstream sent it. ``diff_snapshots`` gives one change per
entry that differs, of the most specific kind: ownership changes (ASSIGNED, UNASSIGNED,
REASSIGNED) before UPDATED. Entries that did not change give nothing, so polling unchanged data
is silent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from gateway.domain.enums import PhoneNumberChangeKind
from gateway.domain.reader import to_phone_number
from gateway.domain.records import PhoneNumberChange

Entry = dict[str, Any]
Snapshot = dict[str, Entry]


@dataclass(frozen=True, slots=True)
class EntryChange:
    """One entry's change as the poller finds it, before it is read into records: the
    upstream items themselves, so it travels between replicas as JSON."""

    kind: PhoneNumberChangeKind
    after: Entry | None
    before: Entry | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "after": self.after, "before": self.before}

    def observed(self, observed_at: datetime) -> PhoneNumberChange:
        """The change as the schema sends it, read by the same tolerant reader as queries."""
        return PhoneNumberChange(
            kind=self.kind,
            number=to_phone_number(self.after) if self.after is not None else None,
            previous=to_phone_number(self.before) if self.before is not None else None,
            observed_at=observed_at,
        )


SYNCED = EntryChange(PhoneNumberChangeKind.SYNCED, None, None)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def entry_identity(entry: Mapping[str, Any]) -> str:
    """The entry's name across polls: its phone number, or (location id, extension) for an
    extension-only entry. An entry with neither is named by its whole content."""
    number = _text(entry.get("phoneNumber"))
    if number is not None:
        return "number:" + number
    location = entry.get("location")
    location_id = _text(location.get("id")) if isinstance(location, Mapping) else None
    extension = _text(entry.get("extension"))
    if extension is not None:
        return f"extension:{location_id or ''}:{extension}"
    return "entry:" + orjson.dumps(entry, option=orjson.OPT_SORT_KEYS).decode()


def snapshot_of(entries: Iterable[Entry]) -> Snapshot:
    return {entry_identity(entry): entry for entry in entries}


def _owner_id(entry: Mapping[str, Any]) -> str | None:
    owner = entry.get("owner")
    return _text(owner.get("id")) if isinstance(owner, Mapping) else None


def change_kind(before: Entry, after: Entry) -> PhoneNumberChangeKind | None:
    """The most specific kind of change from ``before`` to ``after``; None when equal."""
    if before == after:
        return None
    owner_before, owner_after = _owner_id(before), _owner_id(after)
    if owner_before is None and owner_after is not None:
        return PhoneNumberChangeKind.ASSIGNED
    if owner_before is not None and owner_after is None:
        return PhoneNumberChangeKind.UNASSIGNED
    if owner_before != owner_after:
        return PhoneNumberChangeKind.REASSIGNED
    return PhoneNumberChangeKind.UPDATED


def diff_snapshots(before: Snapshot, after: Snapshot) -> list[EntryChange]:
    """One change per entry that differs, in the order of ``after`` then removals."""
    changes: list[EntryChange] = []
    for identity, entry in after.items():
        previous = before.get(identity)
        if previous is None:
            changes.append(EntryChange(PhoneNumberChangeKind.ADDED, entry, None))
            continue
        kind = change_kind(previous, entry)
        if kind is not None:
            changes.append(EntryChange(kind, entry, previous))
    changes.extend(
        EntryChange(PhoneNumberChangeKind.REMOVED, None, entry)
        for identity, entry in before.items()
        if identity not in after
    )
    return changes

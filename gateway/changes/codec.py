"""The change feed's wire format between replicas, in one place: the messages a feed's lease
holder publishes on its channel (``FeedMessage``), the snapshot it keeps under its key
(``SharedSnapshot``) and the token its lease holds.

All three are sealed as every Redis entry is (``guarded_redis.seal``: a version line, the key
or channel they were written for, and an HMAC under the cache-key secret every replica
shares). So someone who can write to Redis but does not hold the secret can neither forge one
(a made-up ``ADDED``, an ``end`` with their own text, a lease value that would keep every
replica from polling) nor move a genuine one to another feed (an entry of another location
into a location admin's feed): each opens only under the name it was sealed for, and anything
else reads as ``UnsealedMessage``, no snapshot, or no holder.

A sealed message could still be published again as it is. So each one names the lease it was
sent under (``epoch``: a fresh random id each time a replica takes a feed's lease) and its
number in that lease (``seq``, from 1): the relay (``coordination``) applies a message only
from a lease it saw held and only once, and a replayed one is refused before its feed sees
it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.data.guarded_redis import seal, unseal
from gateway.domain.changes import EntryChange, Snapshot
from gateway.domain.enums import PhoneNumberChangeKind
from gateway.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class SharedSnapshot:
    """The feed's entries as its lease holder last committed them, and their random id."""

    snapshot_id: str
    entries: Snapshot


@dataclass(frozen=True, slots=True)
class FeedMessage:
    """What one poll tells every subscriber of a feed: the baseline is taken (``synced``),
    these entries changed, or the feed ended with an error (``end``: its message and
    extensions, as the caller will see them). Shared messages also name the snapshot they
    were diffed against (``base``, None for a baseline), the one they made, the replica that
    sent them (``origin``), and the lease and number they were sent under (``epoch``,
    ``seq``)."""

    observed_at: float  # wall time of the poll
    synced: bool = False
    changes: list[EntryChange] = field(default_factory=list)
    end: dict[str, Any] | None = None
    base: str | None = None
    snapshot_id: str | None = None
    origin: str = ""
    epoch: str = ""
    seq: int = 0


class MalformedMessage(ValueError):
    """A message on a feed's channel that opens (it was sealed by a replica) but is not a
    ``FeedMessage`` this replica can apply (a bug, or a replica of another format)."""


class UnsealedMessage(MalformedMessage):
    """A message that was not sealed for this feed's channel under the shared secret: forged,
    damaged, or another feed's message published here."""


def seal_message(channel: str, message: FeedMessage, secret: bytes) -> bytes:
    payload = orjson.dumps(
        {
            "at": message.observed_at,
            "synced": message.synced,
            "changes": [change.to_json() for change in message.changes],
            "end": message.end,
            "base": message.base,
            "id": message.snapshot_id,
            "origin": message.origin,
            "epoch": message.epoch,
            "seq": message.seq,
        }
    )
    return seal(channel, payload, secret)


def open_message(channel: str, raw: bytes, secret: bytes) -> FeedMessage:
    """The message a replica sealed for ``channel``; ``UnsealedMessage`` for anything not
    sealed for it, ``MalformedMessage`` for a sealed one that is not whole (checked whole
    here, so a feed never meets a half-valid message)."""
    payload = unseal(channel, raw, secret)
    if payload is None:
        raise UnsealedMessage("not sealed for this feed")
    return decode_message(payload)


def decode_message(payload: bytes) -> FeedMessage:
    """A message's payload, once its seal is checked."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage("not JSON") from exc
    if not isinstance(data, dict):
        raise MalformedMessage("not an object")
    at, synced, changes = data.get("at"), data.get("synced"), data.get("changes")
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise MalformedMessage("no time")
    if not isinstance(synced, bool) or not isinstance(changes, list):
        raise MalformedMessage("no synced flag or changes")
    base, snapshot_id, origin = data.get("base"), data.get("id"), data.get("origin")
    if not all(isinstance(v, str | None) for v in (base, snapshot_id)):
        raise MalformedMessage("bad snapshot ids")
    if not isinstance(origin, str):
        raise MalformedMessage("no origin")
    epoch, seq = data.get("epoch"), data.get("seq")
    if not isinstance(epoch, str) or isinstance(seq, bool) or not isinstance(seq, int):
        raise MalformedMessage("no epoch or sequence")
    return FeedMessage(
        observed_at=float(at),
        synced=synced,
        changes=[_decode_change(change) for change in changes],
        end=_decode_end(data.get("end")),
        base=base,
        snapshot_id=snapshot_id,
        origin=origin,
        epoch=epoch,
        seq=seq,
    )


# Which side of a change its kind has: ADDED only the entry after, REMOVED only the one before.
_SIDES = {
    PhoneNumberChangeKind.ADDED: (True, False),
    PhoneNumberChangeKind.REMOVED: (False, True),
}


def _decode_change(data: object) -> EntryChange:
    if not isinstance(data, dict):
        raise MalformedMessage("a change is not an object")
    try:
        kind = PhoneNumberChangeKind(str(data.get("kind")))
    except ValueError as exc:
        raise MalformedMessage("unknown change kind") from exc
    after, before = data.get("after"), data.get("before")
    if kind is PhoneNumberChangeKind.SYNCED:
        raise MalformedMessage("SYNCED is no change")
    has_after, has_before = _SIDES.get(kind, (True, True))
    for entry, present in ((after, has_after), (before, has_before)):
        if isinstance(entry, dict) != present or (not present and entry is not None):
            raise MalformedMessage(f"a {kind.value} change without its entries")
    return EntryChange(kind, after, before)


_KNOWN_CODES = frozenset(code.value for code in ErrorCode)


def _decode_end(end: object) -> dict[str, Any] | None:
    """The end's message and extensions; a code this replica does not know (a newer one
    sent it, mid rolling deploy) reads as INTERNAL_SERVER_ERROR, the contract's catch-all."""
    if end is None:
        return None
    if not isinstance(end, dict):
        raise MalformedMessage("the end is not an object")
    message, extensions = end.get("message"), end.get("extensions")
    if not isinstance(message, str) or not isinstance(extensions, dict):
        raise MalformedMessage("an end without its message or extensions")
    if extensions.get("code") not in _KNOWN_CODES:
        extensions = {**extensions, "code": ErrorCode.INTERNAL_SERVER_ERROR.value}
    return {"message": message, "extensions": extensions}


def seal_snapshot(key: str, snapshot: SharedSnapshot, secret: bytes) -> bytes:
    payload = orjson.dumps({"id": snapshot.snapshot_id, "entries": snapshot.entries})
    return seal(key, payload, secret)


def open_snapshot(key: str, raw: bytes, secret: bytes) -> SharedSnapshot | None:
    """The snapshot sealed for ``key``; None for anything else (not sealed for it, or not a
    snapshot), which the feed treats as no snapshot: it takes a new baseline."""
    payload = unseal(key, raw, secret)
    if payload is None:
        return None
    try:
        stored = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(stored, dict):
        return None
    snapshot_id, entries = stored.get("id"), stored.get("entries")
    if not isinstance(snapshot_id, str) or not isinstance(entries, dict):
        return None
    if not all(isinstance(entry, dict) for entry in entries.values()):
        return None
    return SharedSnapshot(snapshot_id, entries)


def seal_lease(key: str, epoch: str, secret: bytes) -> bytes:
    """The value a lease holder writes to the feed's lease key: its epoch, sealed, so another
    replica can tell a holder's lease from anything else written there."""
    return seal(key, epoch.encode(), secret)


def open_lease(key: str, raw: object, secret: bytes) -> str | None:
    """The epoch of the lease ``raw`` (the lease key's value), or None when it is no lease
    a replica sealed for this key."""
    if not isinstance(raw, bytes):
        return None
    payload = unseal(key, raw, secret)
    if payload is None:
        return None
    try:
        return payload.decode()
    except UnicodeDecodeError:
        return None

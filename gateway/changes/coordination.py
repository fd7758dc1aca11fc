"""Who polls a change feed, where its shared snapshot lives, and how its changes reach the
subscribers of other replicas.

``hold`` answers each poll interval with the feed's ``Role`` on this replica:

* ``POLL_LOCAL``: poll and tell only this replica's subscribers. ``LocalCoordination`` (no
  Redis) always answers it; ``RedisCoordination`` answers it while Redis is unreachable, so a
  feed never goes silent because Redis did: every replica then polls its own feeds, against
  its own memory of what its subscribers were sent.
* ``POLL_SHARED``: this replica holds the feed's renewable lease (``SET NX PX``, renewed by
  its holder only): it polls, and ``commit`` writes the new shared snapshot to Redis and
  publishes its changes on the feed's channel, in one script that first checks the lease (a
  replica that lost its lease mid-poll can neither overwrite the new holder's snapshot nor
  send changes twice). The holder is the replica and the feed instance (a random nonce per
  ``ChangeFeed``): a feed stopping as its same-name successor starts on the same replica
  cannot release or renew the successor's lease.
* ``RELAY``: another replica holds the lease; this one relays what it publishes (one pattern
  subscription per replica, opened when the first feed starts, never before: an idle gateway
  holds no pub/sub connection and logs nothing about it).

A replica that dies stops renewing; its lease expires and another replica's next attempt
takes the feed over, diffing against the snapshot in Redis (sealed like every Redis entry:
version, key and checksum; anything else reads as no snapshot).

Each shared snapshot has a random id, and each published message names the snapshot it was
diffed against (``base``) and the one it made (``snapshot_id``); how a replica uses them to
neither replay nor lose a change is ``feed.ChangeFeed``'s business. A message that does not
decode whole (``FeedMessage.decode``) or that its feed fails to apply is logged once per kind
and makes that feed catch up from the shared snapshot; the relay goes on with the next one.

Every key is named by the feed's name (a hash of the caller's identity, the org and the
filter): no key or channel carries a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gateway.data.guarded_redis import seal, unseal
from gateway.domain.changes import EntryChange, Snapshot
from gateway.domain.enums import PhoneNumberChangeKind
from gateway.errors import ErrorCode

log = structlog.get_logger("gateway.changes")

KEY_PREFIX = "numbers-gateway:changes:v2:"
CHANNEL_PREFIX = KEY_PREFIX + "feed:"
# A snapshot can be megabytes (20,000 entries); it gets longer than a cache lookup does.
SNAPSHOT_TIMEOUT = 5.0
REDIS_TIMEOUT = 1.0  # a lease, an existence check: Redis answers these at once or is down
# Polls a snapshot outlives its last writer by: long enough for another replica to take the
# feed over, short enough that a feed nobody watches any more leaves nothing behind.
SNAPSHOT_POLLS = 4
RELAY_RETRY = 0.5  # seconds between the relay's attempts to reach a Redis that is down


class Role(enum.Enum):
    """What this replica does for a feed this interval (see the module docstring)."""

    POLL_LOCAL = "local"
    POLL_SHARED = "polling"
    RELAY = "relaying"


class CoordinationUnavailable(Exception):
    """Redis failed or was slow: the feed polls on its own this interval."""


@dataclass(frozen=True, slots=True)
class SharedSnapshot:
    """The feed's entries as its lease holder last committed them, and their random id."""

    snapshot_id: str
    entries: Snapshot


def new_snapshot_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class FeedMessage:
    """What one poll tells every subscriber of a feed: the baseline is taken (``synced``),
    these entries changed, or the feed ended with an error (``end``: its message and
    extensions, as the caller will see them). Shared messages also name the snapshot they
    were diffed against (``base``, None for a baseline), the one they made, and the replica
    that sent them (``origin``)."""

    observed_at: float  # wall time of the poll
    synced: bool = False
    changes: list[EntryChange] = field(default_factory=list)
    end: dict[str, Any] | None = None
    base: str | None = None
    snapshot_id: str | None = None
    origin: str = ""

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "at": self.observed_at,
                "synced": self.synced,
                "changes": [change.to_json() for change in self.changes],
                "end": self.end,
                "base": self.base,
                "id": self.snapshot_id,
                "origin": self.origin,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> FeedMessage:
        """The message another replica published; ``MalformedMessage`` for anything that is
        not one (garbage on the channel, a replica of another version), checked whole here
        so a feed never meets a half-valid message."""
        try:
            data = orjson.loads(raw)
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
        return cls(
            observed_at=float(at),
            synced=synced,
            changes=[_decode_change(change) for change in changes],
            end=_decode_end(data.get("end")),
            base=base,
            snapshot_id=snapshot_id,
            origin=origin,
        )


class MalformedMessage(ValueError):
    """A message on a feed's channel that is not a ``FeedMessage`` this replica can apply."""


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


# A feed's message, or None: a message for that feed arrived and could not be applied (the
# feed catches up from the shared snapshot instead).
Deliver = Callable[[str, FeedMessage | None], None]


class FeedCoordination(Protocol):
    """What a feed's poll loop asks of its coordination (local or across replicas). Every
    coroutine but ``hold``, ``release`` and ``close`` may raise ``CoordinationUnavailable``.
    ``instance`` names one ``ChangeFeed`` object: a feed that stops and its same-name
    successor on the same replica are different lease holders."""

    @property
    def relay_connected(self) -> bool: ...

    async def start(self, deliver: Deliver) -> None: ...
    async def hold(self, name: str, instance: str, ttl: float) -> Role: ...
    async def load(self, name: str) -> SharedSnapshot | None: ...
    async def commit(
        self, name: str, instance: str, snapshot: SharedSnapshot, message: FeedMessage
    ) -> bool: ...
    async def end(self, name: str, instance: str, message: FeedMessage) -> None: ...
    async def release(self, name: str, instance: str) -> None: ...
    async def close(self) -> None: ...


class LocalCoordination:
    """One process: it always polls, and the feed keeps its own snapshot."""

    relay_connected = True  # nothing to relay

    async def start(self, deliver: Deliver) -> None:
        pass

    async def hold(self, name: str, instance: str, ttl: float) -> Role:
        return Role.POLL_LOCAL

    async def load(self, name: str) -> SharedSnapshot | None:
        return None

    async def commit(
        self, name: str, instance: str, snapshot: SharedSnapshot, message: FeedMessage
    ) -> bool:
        return False  # never asked: a local feed never holds a shared lease

    async def end(self, name: str, instance: str, message: FeedMessage) -> None:
        pass

    async def release(self, name: str, instance: str) -> None:
        pass

    async def close(self) -> None:
        pass


# KEYS: lease, snapshot. ARGV: holder, sealed snapshot, its ttl (ms), channel, message.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""
# KEYS: lease. ARGV: holder, ttl (ms). Takes a free lease or renews our own.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS: lease. ARGV: holder. Lets go of our own lease only.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(name: str) -> str:
    return KEY_PREFIX + "lease:" + name


def snapshot_key(name: str) -> str:
    return KEY_PREFIX + "snapshot:" + name


def channel_of(name: str) -> str:
    return CHANNEL_PREFIX + name


def _feed_of(message: dict[str, Any]) -> str:
    """The feed a pub/sub message was published for, from its channel."""
    channel = message.get("channel", b"")
    text = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else str(channel)
    return text.removeprefix(CHANNEL_PREFIX)


class RedisCoordination:
    """Feeds shared by replicas through one Redis (see the module docstring)."""

    def __init__(self, client: Redis, *, poll_interval: float, secret: bytes) -> None:
        self.client = client
        self.poll_interval = poll_interval
        # Snapshots are sealed under the cache-key secret every replica shares, like every
        # other Redis entry: one written by anyone else does not open.
        self._secret = secret
        # This replica's name on the messages it sends and (with the feed instance's) on the
        # leases it holds: random, so a restarted replica is another holder, and never
        # derived from anything a caller sent.
        self.holder = secrets.token_hex(16)
        self._rejections_logged: set[str] = set()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None
        self._relay_connected = False
        self._relay_known = False
        self._commit = client.register_script(_COMMIT)
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    @property
    def relay_connected(self) -> bool:
        """Whether this replica hears the feeds' channels now (a relay that is not may have
        missed a message: its feeds catch up from the shared snapshot)."""
        return self._relay_connected

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def _ensure_listening(self) -> None:
        """The relay, started by the first feed: an idle gateway opens no pub/sub connection.
        The first subscription happens here, so the first feed knows whether it can relay;
        the listener then runs in a context of its own (it serves every feed, so no request's
        id belongs on its lines)."""
        if self._pubsub is not None:
            return
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._bounded(self._pubsub.psubscribe(CHANNEL_PREFIX + "*"))
            self._set_relay(connected=True)
        except CoordinationUnavailable as exc:
            self._set_relay(connected=False, error=str(exc))
            await self._reset_pubsub()
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(), context=contextvars.Context()
        )

    async def _listen(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                if not self._relay_connected:
                    await self._pubsub.psubscribe(CHANNEL_PREFIX + "*")
                    self._set_relay(connected=True)
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError, TimeoutError) as exc:
                self._set_relay(connected=False, error=type(exc).__name__)
                await self._reset_pubsub()
                # A real pause before reconnecting to a real server (not the poll clock).
                await asyncio.sleep(RELAY_RETRY)
                continue
            if message is None or message.get("type") != "pmessage":
                continue
            try:
                self._relay(message)
            except Exception as exc:
                # One message must not end the relay of every feed on this replica (which
                # would still report itself connected): that feed catches up instead.
                self._reject(message, f"not applied: {type(exc).__name__}")

    async def _reset_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)

    def _set_relay(self, *, connected: bool, error: str | None = None) -> None:
        """One line per change of state, not one per attempt while Redis is down (and none
        for the first connection, which is the normal case)."""
        if self._relay_known and connected == self._relay_connected:
            return
        recovered = self._relay_known and connected
        self._relay_known = True
        self._relay_connected = connected
        if recovered:
            log.info("change_feed_relay_restored")
        elif not connected:
            log.warning("change_feed_relay_unavailable", error=error)

    def _relay(self, message: dict[str, Any]) -> None:
        try:
            decoded = FeedMessage.decode(message["data"])
        except (MalformedMessage, KeyError, TypeError) as exc:
            # MalformedMessage's reasons are a fixed vocabulary; others are named by type.
            detail = str(exc) if isinstance(exc, MalformedMessage) else type(exc).__name__
            self._reject(message, f"unreadable: {detail}")
            return
        if decoded.origin == self.holder:
            return  # our own poll: its feed told its subscribers already
        if self._deliver is not None:
            self._deliver(_feed_of(message), decoded)

    def _reject(self, message: dict[str, Any], reason: str) -> None:
        """Log a kind of bad message once per replica (garbage on a channel repeats), and
        tell its feed it missed one."""
        if reason not in self._rejections_logged:
            self._rejections_logged.add(reason)
            log.warning("change_feed_message_rejected", reason=reason)
        if self._deliver is not None:
            with contextlib.suppress(Exception):
                self._deliver(_feed_of(message), None)

    async def _bounded(self, operation: Awaitable[Any], within: float = REDIS_TIMEOUT) -> Any:
        """The operation's result; ``CoordinationUnavailable`` when Redis failed or was slow."""
        try:
            async with asyncio.timeout(within):
                return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            raise CoordinationUnavailable(type(exc).__name__) from exc

    def _ms(self, seconds: float) -> int:
        return max(1, int(seconds * 1000))

    def _lease_holder(self, instance: str) -> str:
        return f"{self.holder}:{instance}"

    async def hold(self, name: str, instance: str, ttl: float) -> Role:
        await self._ensure_listening()
        holder = self._lease_holder(instance)
        try:
            held = await self._bounded(
                self._hold(keys=[lease_key(name)], args=[holder, self._ms(ttl)])
            )
        except CoordinationUnavailable:
            return Role.POLL_LOCAL
        if held == 1:
            return Role.POLL_SHARED
        # Another replica polls; relaying needs the channels, else this replica polls itself.
        return Role.RELAY if self._relay_connected else Role.POLL_LOCAL

    async def load(self, name: str) -> SharedSnapshot | None:
        key = snapshot_key(name)
        raw = await self._bounded(self.client.get(key), SNAPSHOT_TIMEOUT)
        if not isinstance(raw, bytes):
            return None
        payload = unseal(key, raw, self._secret)
        if payload is None:
            log.warning("change_feed_snapshot_rejected", reason="wrong version, key or checksum")
            return None
        try:
            stored = orjson.loads(payload)
            return SharedSnapshot(str(stored["id"]), dict(stored["entries"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    async def commit(
        self, name: str, instance: str, snapshot: SharedSnapshot, message: FeedMessage
    ) -> bool:
        """Store the snapshot and publish the message, if this replica still holds the lease."""
        message = dataclasses.replace(message, origin=self.holder)
        key = snapshot_key(name)
        sealed = seal(
            key,
            orjson.dumps({"id": snapshot.snapshot_id, "entries": snapshot.entries}),
            self._secret,
        )
        publish = message.encode() if message.synced or message.changes else b""
        ttl = self._ms(self.poll_interval * SNAPSHOT_POLLS)
        done = await self._bounded(
            self._commit(
                keys=[lease_key(name), key],
                args=[self._lease_holder(instance), sealed, ttl, channel_of(name), publish],
            ),
            SNAPSHOT_TIMEOUT,
        )
        return bool(done == 1)

    async def end(self, name: str, instance: str, message: FeedMessage) -> None:
        message = dataclasses.replace(message, origin=self.holder)
        await self._bounded(self.client.delete(snapshot_key(name)))
        await self._bounded(self.client.publish(channel_of(name), message.encode()))
        await self.release(name, instance)

    async def release(self, name: str, instance: str) -> None:
        holder = self._lease_holder(instance)
        with contextlib.suppress(CoordinationUnavailable):  # the lease expires on its own
            await self._bounded(self._release(keys=[lease_key(name)], args=[holder]))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        for closing in (
            self._pubsub.aclose() if self._pubsub is not None else None,  # type: ignore[no-untyped-call]
            self.client.aclose(),
        ):
            if closing is not None:
                with contextlib.suppress(CoordinationUnavailable):
                    await self._bounded(closing)

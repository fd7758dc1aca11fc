"""Who polls a change feed, where its shared snapshot lives, and how its changes reach the
subscribers of other replicas.

``hold`` answers each poll interval with the feed's ``Role`` on this replica:

* ``POLL_LOCAL``: poll and tell only this replica's subscribers. ``LocalCoordination`` (no
  Redis) always answers it; ``RedisCoordination`` answers it while Redis is unreachable, so a
  feed never goes silent because Redis did: every replica then polls its own feeds, against
  its own memory of what its subscribers were sent.
* ``POLL_SHARED``: this replica holds the feed's lease, a redis-py ``Lock`` (``SET NX PX``,
  1.5 poll intervals) whose token is a sealed, random epoch (``codec.seal_lease``). A
  heartbeat renews it every third of its life for as long as the feed holds it, so a poll
  that takes longer than the lease (a 20,000-entry org is a dozen upstream pages) keeps it.
  Every write of the feed's state is fenced by that token, in one script that first checks
  the lease: ``commit`` (write the new snapshot, publish its changes), ``end`` (delete the
  snapshot, publish the end, let go of the lease) and ``release`` (the hand-over: let go so
  another replica takes over at its next interval). A replica that lost its lease can do
  none of them: it cannot overwrite the new holder's snapshot, send changes twice, end every
  replica's subscribers or free the new holder's lease. The holder is the replica and the
  feed instance (a random nonce per ``ChangeFeed``): a feed stopping as its same-name
  successor starts on the same replica holds another lease.
* ``RELAY``: another replica holds the lease; this one relays what it publishes (one pattern
  subscription per replica, opened when the first feed starts, never before: an idle gateway
  holds no pub/sub connection and logs nothing about it).

A replica that dies stops renewing; its lease expires and another replica's next attempt
takes the feed over, diffing against the snapshot in Redis. A lease key holding anything but a
holder's sealed token with an expiry (someone wrote to Redis) is not a holder: it is logged
(``change_feed_lease_rejected``, once) and taken over, so no write to Redis silences a feed
for good.

Messages and snapshots are sealed (``codec``): one that does not open for its feed's channel
is dropped (``change_feed_message_rejected``, logged once per kind). One that opens is applied
only if it comes from a lease this replica saw held (its own read of the lease key) and has a
number it has not heard from that lease: a replayed message is dropped before its feed sees
it. Each shared snapshot has a random id, and each message names the snapshot it was diffed
against (``base``) and the one it made (``snapshot_id``); how a replica uses them to neither
replay nor lose a change is ``feed.ChangeFeed``'s business. A sealed message that is not whole
or that its feed fails to apply makes that feed catch up from the shared snapshot.

Every key is named by the feed's name (a hash of the caller's identity, the org and the
filter): no key or channel carries a token. Every Redis operation is bounded in time, and
``close`` too, even against a Redis that stopped answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from gateway.changes.codec import (
    FeedMessage,
    MalformedMessage,
    SharedSnapshot,
    UnsealedMessage,
    open_lease,
    open_message,
    open_snapshot,
    seal_lease,
    seal_message,
    seal_snapshot,
)

log = structlog.get_logger("gateway.changes")

# v3: sealed messages and lease tokens. A replica of another version uses other keys and
# channels, so mid rolling deploy the two sets poll apart rather than fight over one lease.
KEY_PREFIX = "numbers-gateway:changes:v3:"
CHANNEL_PREFIX = KEY_PREFIX + "feed:"
# A snapshot can be megabytes (20,000 entries); it gets longer than a cache lookup does.
SNAPSHOT_TIMEOUT = 5.0
REDIS_TIMEOUT = 1.0  # a lease, an existence check: Redis answers these at once or is down
# Polls a snapshot outlives its last writer by: long enough for another replica to take the
# feed over, short enough that a feed nobody watches any more leaves nothing behind.
SNAPSHOT_POLLS = 4
RELAY_RETRY = 0.5  # seconds between the relay's attempts to reach a Redis that is down
HEARTBEATS_PER_LEASE = 3  # renewals per lease lifetime: two may fail before it lapses
# A holder's lease never lives longer than its ttl; one that would live much longer (or for
# ever) was written by someone else, even with a genuine token copied in.
LEASE_CEILING = 4
# Epochs of one feed a relay remembers: the leases it heard from, and those it found were
# no longer held (a replay of their messages is refused without asking Redis again).
EPOCHS_REMEMBERED = 8
SUPERSEDED_REMEMBERED = 64
CLOSE_TIMEOUT = 2.0  # the most ``close`` waits for tasks that should stop at once


class Role(enum.Enum):
    """What this replica does for a feed this interval (see the module docstring)."""

    POLL_LOCAL = "local"
    POLL_SHARED = "polling"
    RELAY = "relaying"


class CoordinationUnavailable(Exception):
    """Redis failed or was slow: the feed polls on its own this interval."""


def new_snapshot_id() -> str:
    return secrets.token_hex(8)


# A feed's message, or None: a message for that feed arrived and could not be applied (the
# feed catches up from the shared snapshot instead).
Deliver = Callable[[str, FeedMessage | None], None]


class FeedCoordination(Protocol):
    """What a feed's poll loop asks of its coordination (local or across replicas). Every
    coroutine but ``hold``, ``release`` and ``close`` may raise ``CoordinationUnavailable``.
    ``instance`` names one ``ChangeFeed`` object: a feed that stops and its same-name
    successor on the same replica are different lease holders. ``commit`` and ``end`` answer
    whether they happened (False: this instance does not hold the lease)."""

    @property
    def relay_connected(self) -> bool: ...

    async def start(self, deliver: Deliver) -> None: ...
    async def hold(self, name: str, instance: str, ttl: float) -> Role: ...
    async def load(self, name: str) -> SharedSnapshot | None: ...
    async def commit(
        self, name: str, instance: str, snapshot: SharedSnapshot, message: FeedMessage
    ) -> bool: ...
    async def end(self, name: str, instance: str, message: FeedMessage) -> bool: ...
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

    async def end(self, name: str, instance: str, message: FeedMessage) -> bool:
        return False

    async def release(self, name: str, instance: str) -> None:
        pass

    async def close(self) -> None:
        pass


# KEYS: lease, snapshot. ARGV: token, sealed snapshot, its ttl (ms), channel, message.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""
# KEYS: lease, snapshot. ARGV: token, channel, message. The end, then the hand-over.
_END = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: lease. Its value and remaining lifetime (ms; -1 for none), read together.
_READ = """
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""
# KEYS: lease. ARGV: the value found there. Clears a lease that is no holder's, unless it
# changed since it was read (a holder may have taken the key meanwhile).
_CLEAR = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(name: str) -> str:
    return KEY_PREFIX + "lease:" + name


def snapshot_key(name: str) -> str:
    return KEY_PREFIX + "snapshot:" + name


def channel_of(name: str) -> str:
    return CHANNEL_PREFIX + name


def _channel(message: dict[str, Any]) -> str:
    channel = message.get("channel", b"")
    return channel.decode("utf-8", "replace") if isinstance(channel, bytes) else str(channel)


async def settle(tasks: Iterable[asyncio.Task[Any]], within: float) -> bool:
    """Wait for ``tasks`` to finish, ``within`` seconds at most even when one ignores its
    cancellation (a library that swallows it must not hold shutdown up); cancel what is left.
    True when all finished."""
    waiting = {task for task in tasks if not task.done()}
    if not waiting:
        return True
    _, pending = await asyncio.wait(waiting, timeout=within)
    for task in pending:
        task.cancel()
        # Retrieved, so an abandoned task's failure is no "exception never retrieved" line.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return not pending


class FeedLease:
    """One feed instance's hold on its feed's lease: a redis-py ``Lock`` whose token is a
    sealed epoch (fresh each time the lease is taken), renewed by a heartbeat while held."""

    def __init__(self, client: Redis, name: str, ttl: float) -> None:
        self.key = lease_key(name)
        self.ttl = ttl
        self.lock: Lock = client.lock(
            self.key, timeout=ttl, blocking=False, thread_local=False, raise_on_release_error=False
        )
        self.epoch: str | None = None  # set while this instance holds the lease
        self.token = b""
        self._seq = 0
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self.epoch is not None

    def took(self, epoch: str, token: bytes) -> None:
        self.epoch, self.token, self._seq = epoch, token, 0
        self.beat()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def lost(self) -> None:
        """This instance no longer holds the lease (it lapsed, was taken, or was let go)."""
        self.epoch, self.token = None, b""
        self.stop_beating()

    def beat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            # A context of its own: it renews for the feed, not for the request that began it.
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat(), context=contextvars.Context()
            )

    def stop_beating(self) -> asyncio.Task[None] | None:
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None and heartbeat is not asyncio.current_task():
            heartbeat.cancel()
        return heartbeat

    async def _beat(self) -> None:
        """Renew the lease every third of its life, on the real clock: Redis expires it by
        its own. A renewal that fails (Redis slow or down) is tried again at the next beat;
        a lease found taken ends the beating (the fenced writes fail; ``hold`` finds out)."""
        while self.held:
            period = self.ttl / HEARTBEATS_PER_LEASE
            await asyncio.sleep(period)
            self.lock.timeout = self.ttl
            try:
                async with asyncio.timeout(period):
                    await self.lock.reacquire()
            except LockError:  # taken, or let go of meanwhile: this instance holds nothing
                self.epoch, self.token, self._heartbeat = None, b"", None
                return
            except (RedisError, OSError, TimeoutError):
                continue


@dataclasses.dataclass(slots=True)
class _Heard:
    """What this replica heard on one feed's channel: the leases (epochs) it saw held, with
    the last number it heard from each, and leases it found were no longer held."""

    last: OrderedDict[str, int] = dataclasses.field(default_factory=OrderedDict)
    superseded: OrderedDict[str, None] = dataclasses.field(default_factory=OrderedDict)

    def know(self, epoch: str) -> None:
        if epoch not in self.last:
            self.last[epoch] = 0
            while len(self.last) > EPOCHS_REMEMBERED:
                self.last.popitem(last=False)

    def supersede(self, epoch: str) -> None:
        self.superseded[epoch] = None
        while len(self.superseded) > SUPERSEDED_REMEMBERED:
            self.superseded.popitem(last=False)


class RedisCoordination:
    """Feeds shared by replicas through one Redis (see the module docstring)."""

    def __init__(self, client: Redis, *, poll_interval: float, secret: bytes) -> None:
        self.client = client
        self.poll_interval = poll_interval
        # Messages, snapshots and lease tokens are sealed under the cache-key secret every
        # replica shares, like every other Redis entry: one written by anyone else does not
        # open.
        self._secret = secret
        # This replica's name on the messages it sends and in the epochs of the leases it
        # takes: random, so a restarted replica is another holder, and never derived from
        # anything a caller sent.
        self.holder = secrets.token_hex(16)
        self._leases: dict[tuple[str, str], FeedLease] = {}
        self._heard: dict[str, _Heard] = {}  # per feed this replica has
        self._rejections_logged: set[str] = set()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None
        self._relay_connected = False
        self._relay_known = False
        self._closed = False
        self._commit = client.register_script(_COMMIT)
        self._end = client.register_script(_END)
        self._clear = client.register_script(_CLEAR)
        self._read = client.register_script(_READ)

    @property
    def relay_connected(self) -> bool:
        """Whether this replica hears the feeds' channels now (a relay that is not may have
        missed a message: its feeds catch up from the shared snapshot)."""
        return self._relay_connected

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    # --- the relay ------------------------------------------------------------------------

    async def _ensure_listening(self) -> None:
        """The relay, started by the first feed: an idle gateway opens no pub/sub connection.
        The first subscription happens here, so the first feed knows whether it can relay;
        the listener then runs in a context of its own (it serves every feed, so no request's
        id belongs on its lines)."""
        if self._pubsub is not None or self._closed:
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
                    async with asyncio.timeout(REDIS_TIMEOUT):
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
                await self._relay(message)
            except Exception as exc:
                # One message must not end the relay of every feed on this replica (which
                # would still report itself connected): that feed catches up instead.
                self._reject(_channel(message), f"not applied: {type(exc).__name__}")

    async def _reset_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(REDIS_TIMEOUT):
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

    async def _relay(self, message: dict[str, Any]) -> None:
        channel = _channel(message)
        name = channel.removeprefix(CHANNEL_PREFIX)
        heard = self._heard.get(name)
        if heard is None:
            return  # no feed of that name on this replica: nothing to open
        raw = message.get("data")
        try:
            if not isinstance(raw, bytes):
                raise MalformedMessage("no data")
            decoded = open_message(channel, raw, self._secret)
        except UnsealedMessage as exc:
            # Not a replica's (forged, or another feed's moved here): no catch-up either, so
            # a flood of them costs each feed nothing but this check.
            self._reject(channel, str(exc), catch_up=False)
            return
        except MalformedMessage as exc:
            self._reject(channel, f"unreadable: {exc}")
            return
        if decoded.origin == self.holder:
            return  # our own poll: its feed told its subscribers already
        if not await self._first_hearing(name, heard, decoded):
            self._reject(channel, "replayed, or from a lease no longer held", catch_up=False)
            return
        if self._deliver is not None:
            self._deliver(name, decoded)

    async def _first_hearing(self, name: str, heard: _Heard, message: FeedMessage) -> bool:
        """Whether ``message`` comes from a lease this replica saw held, numbered past what
        it heard from that lease (False: a replay, or a message of a lease since let go)."""
        last = heard.last.get(message.epoch)
        if last is None:
            if message.epoch in heard.superseded:
                return False
            try:
                holding = await self._holder_of(name)
            except CoordinationUnavailable:
                return False  # cannot tell: the feed catches up at its next interval
            if holding != message.epoch:
                heard.supersede(message.epoch)
                return False
            heard.know(message.epoch)
            last = 0
        if message.seq <= last:
            return False
        heard.last[message.epoch] = message.seq
        return True

    async def _holder_of(self, name: str) -> str | None:
        """The epoch of the lease held on ``name`` now, if a holder's token is there."""
        key = lease_key(name)
        return open_lease(key, await self._bounded(self.client.get(key)), self._secret)

    def _reject(self, channel: str, reason: str, *, catch_up: bool = True) -> None:
        """Log a kind of bad message once per replica (garbage on a channel repeats); tell its
        feed it missed one when it may have been a real message it cannot apply."""
        if reason not in self._rejections_logged:
            self._rejections_logged.add(reason)
            log.warning("change_feed_message_rejected", reason=reason)
        if catch_up and self._deliver is not None:
            with contextlib.suppress(Exception):
                self._deliver(channel.removeprefix(CHANNEL_PREFIX), None)

    # --- the lease ------------------------------------------------------------------------

    async def _bounded(self, operation: Awaitable[Any], within: float = REDIS_TIMEOUT) -> Any:
        """The operation's result; ``CoordinationUnavailable`` when Redis failed or was slow.
        A ``LockError`` is no outage: it says whose lease it is, so it passes."""
        try:
            async with asyncio.timeout(within):
                return await operation
        except LockError:
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            raise CoordinationUnavailable(type(exc).__name__) from exc

    def _ms(self, seconds: float) -> int:
        return max(1, int(seconds * 1000))

    def _lease_of(self, name: str, instance: str, ttl: float) -> FeedLease:
        lease = self._leases.get((name, instance))
        if lease is None:
            lease = self._leases[(name, instance)] = FeedLease(self.client, name, ttl)
            self._heard.setdefault(name, _Heard())
        lease.ttl = lease.lock.timeout = ttl
        return lease

    async def hold(self, name: str, instance: str, ttl: float) -> Role:
        await self._ensure_listening()
        lease = self._lease_of(name, instance, ttl)
        try:
            if await self._renew_or_take(lease):
                return Role.POLL_SHARED
            if await self._clear_if_no_holder(name, lease):
                return Role.POLL_SHARED
        except CoordinationUnavailable:
            return Role.POLL_LOCAL
        # Another replica polls; relaying needs the channels, else this replica polls itself.
        return Role.RELAY if self._relay_connected else Role.POLL_LOCAL

    async def _renew_or_take(self, lease: FeedLease) -> bool:
        if lease.held:
            try:
                await self._bounded(lease.lock.reacquire())
                lease.beat()
                return True
            except LockNotOwnedError:
                lease.lost()
        epoch = f"{self.holder}:{secrets.token_hex(8)}"
        token = seal_lease(lease.key, epoch, self._secret)
        if await self._bounded(lease.lock.acquire(token=token)):
            lease.took(epoch, token)
            return True
        return False

    async def _clear_if_no_holder(self, name: str, lease: FeedLease) -> bool:
        """The lease key holds something: a holder's sealed token with a lifetime no holder
        exceeds (another replica polls), or anything else, which is cleared and taken (True)."""
        value, pttl = await self._bounded(self._read(keys=[lease.key]))
        if value is None:
            return False  # let go of since: taken at the next interval
        epoch = open_lease(lease.key, value, self._secret)
        if epoch is not None and 0 < pttl <= self._ms(lease.ttl * LEASE_CEILING):
            self._heard[name].know(epoch)
            return False
        reason = "not a holder's token" if epoch is None else "a lifetime no holder sets"
        if reason not in self._rejections_logged:
            self._rejections_logged.add(reason)
            log.warning("change_feed_lease_rejected", feed=name[:12], reason=reason)
        await self._bounded(self._clear(keys=[lease.key], args=[value]))
        return await self._renew_or_take(lease)

    # --- the feed's state -----------------------------------------------------------------

    async def load(self, name: str) -> SharedSnapshot | None:
        key = snapshot_key(name)
        raw = await self._bounded(self.client.get(key), SNAPSHOT_TIMEOUT)
        if not isinstance(raw, bytes):
            return None
        snapshot = open_snapshot(key, raw, self._secret)
        if snapshot is None:
            log.warning("change_feed_snapshot_rejected", reason="not sealed for this feed")
        return snapshot

    def _sealed(self, name: str, lease: FeedLease, message: FeedMessage) -> bytes:
        assert lease.epoch is not None
        numbered = dataclasses.replace(
            message, origin=self.holder, epoch=lease.epoch, seq=lease.next_seq()
        )
        return seal_message(channel_of(name), numbered, self._secret)

    async def commit(
        self, name: str, instance: str, snapshot: SharedSnapshot, message: FeedMessage
    ) -> bool:
        """Store the snapshot and publish the message, if this instance holds the lease."""
        lease = self._leases.get((name, instance))
        if lease is None or not lease.held:
            return False
        key = snapshot_key(name)
        sealed = seal_snapshot(key, snapshot, self._secret)
        publish = self._sealed(name, lease, message) if message.synced or message.changes else b""
        ttl = self._ms(self.poll_interval * SNAPSHOT_POLLS)
        done = await self._bounded(
            self._commit(
                keys=[lease.key, key],
                args=[lease.token, sealed, ttl, channel_of(name), publish],
            ),
            SNAPSHOT_TIMEOUT,
        )
        if done != 1:
            lease.lost()
        return bool(done == 1)

    async def end(self, name: str, instance: str, message: FeedMessage) -> bool:
        """Delete the snapshot, publish the end and let go of the lease, if this instance
        holds it."""
        lease = self._leases.get((name, instance))
        if lease is None or not lease.held:
            return False
        sealed = self._sealed(name, lease, message)
        try:
            done = await self._bounded(
                self._end(
                    keys=[lease.key, snapshot_key(name)],
                    args=[lease.token, channel_of(name), sealed],
                )
            )
        finally:
            lease.lost()  # ended and let go of, or not ours any more
        return bool(done == 1)

    async def release(self, name: str, instance: str) -> None:
        """The hand-over: let go of this instance's lease (if it still holds it), so another
        replica takes the feed over at its next interval rather than after the lease."""
        lease = self._leases.pop((name, instance), None)
        if not any(other == name for other, _ in self._leases):
            self._heard.pop(name, None)
        if lease is None:
            return
        lease.stop_beating()
        if lease.held:
            lease.lost()
            # The lease expires on its own if Redis does not answer; never another's.
            with contextlib.suppress(CoordinationUnavailable, LockError):
                await self._bounded(lease.lock.release())

    async def close(self) -> None:
        """Stop the relay and every heartbeat and close the connections, each wait bounded:
        a Redis that stopped answering does not hold shutdown up."""
        self._closed = True
        beating = (lease.stop_beating() for lease in self._leases.values())
        tasks = [heartbeat for heartbeat in beating if heartbeat is not None]
        if self._listener is not None:
            self._listener.cancel()
            tasks.append(self._listener)
        await settle(tasks, CLOSE_TIMEOUT)
        closing = [
            asyncio.ensure_future(self._pubsub.aclose())  # type: ignore[no-untyped-call]
            if self._pubsub is not None
            else None,
            asyncio.ensure_future(self.client.aclose()),
        ]
        await settle([task for task in closing if task is not None], REDIS_TIMEOUT)

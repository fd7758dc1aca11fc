"""One change feed: the poll loop of one (caller, org, filter) and the subscribers it serves.

Each interval the coordination gives the feed its role on this replica (see
``coordination``): poll for everyone (the lease holder), relay another replica's polls, or
poll on its own (no Redis, or Redis unreachable). Rate limits (429/423) and upstream failures
back the loop off, honouring ``Retry-After``, and the subscription lives on; the caller's own
failures (401, 403, a filter too large, ...) end it for every subscriber with the contract
error.

What subscribers are told, and the guarantee across role switches: every replica keeps in
memory the entries its subscribers were last told (``seen``) and which shared snapshot that
is, if any (``seen_id``). A poll of its own diffs against ``seen``; a relayed message applies
only when it was diffed against ``seen_id``; anything else (a relay that missed a message, a
switch between local polling and the lease, a snapshot lost with a Redis restart) makes the
replica load the shared snapshot and tell its subscribers what differs from ``seen``. So a
change is never sent twice to a subscriber and never lost: the subscriber's view converges on
the upstream at the next poll or relayed message. What no poller can give: a change undone
between two polls is never seen, and a replica that fell behind the relay catches up at the
next message (or its next interval) rather than at once.

Each subscriber holds a bounded queue of polls' worth of changes: one that falls
``SUBSCRIBER_BACKLOG`` polls behind is ended with a clear error rather than let grow. What
``seen`` holds is charged to the feed's caller (``budget``); a feed whose entries do not fit
ends here with an error that says why, and a stopped feed lets go of them and of its charge.

A stopped feed's loop ends at its next step even if a library swallowed its cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from gateway.changes.budget import SnapshotBudget, entry_bytes, snapshot_bytes
from gateway.changes.codec import FeedMessage, SharedSnapshot
from gateway.changes.coordination import (
    CoordinationUnavailable,
    FeedCoordination,
    Role,
    new_snapshot_id,
)
from gateway.changes.polling import InconsistentPoll
from gateway.clock import Clock
from gateway.domain.changes import (
    SYNCED,
    Entry,
    EntryChange,
    Snapshot,
    diff_snapshots,
    entry_identity,
    snapshot_of,
)
from gateway.errors import (
    INTERNAL_ERROR_MESSAGE,
    ErrorCode,
    GatewayError,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.observability.metrics import GatewayMetrics

log = structlog.get_logger("gateway.changes")

SUBSCRIBER_BACKLOG = 32  # polls' worth of changes a subscriber may have unread
MAX_BACKOFF_POLLS = 8  # upstream failures back off to at most this many poll intervals
RESYNC_ROUNDS = 3  # loads of the shared snapshot one catch-up tries before the next message


class FeedEnded(GatewayError):
    """The error a feed ended with, as every replica's subscribers see it."""

    def __init__(self, message: str, extensions: dict[str, Any]) -> None:
        try:
            error_code = ErrorCode(str(extensions.get("code")))
        except ValueError:
            error_code = ErrorCode.INTERNAL_SERVER_ERROR
        super().__init__(message, code=error_code)
        # A code this replica does not know (a newer replica's, mid rolling deploy) is shown
        # as the contract's catch-all rather than as a code no client expects.
        self._extensions = {**extensions, "code": error_code.value}

    @property
    def extensions(self) -> dict[str, Any]:
        return dict(self._extensions)


class Subscriber:
    """One subscription's queue: what its feed delivered and it has not read yet."""

    def __init__(self, backlog: int = SUBSCRIBER_BACKLOG) -> None:
        self.backlog = backlog
        self.synced = False
        self._pending: deque[tuple[float, list[EntryChange]]] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        self._error: GatewayError | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    def deliver(self, message: FeedMessage) -> None:
        if self._ended:
            return
        changes = list(message.changes)
        if not self.synced:
            if not (message.synced or changes):
                return
            self.synced = True
            changes.insert(0, SYNCED)
        if not changes:
            return
        if len(self._pending) >= self.backlog:
            self._pending.clear()  # the subscriber is gone or stuck: stop holding for it
            self.end(
                RateLimited(
                    f"This subscription fell more than {self.backlog} polls behind its change "
                    "feed and was ended; read changes as they come, then subscribe again.",
                    retry_after=0,
                )
            )
            return
        self._pending.append((message.observed_at, changes))
        self._ready.set()

    def end(self, error: GatewayError | None = None) -> None:
        """No more changes: after what is queued, finish (or raise ``error``)."""
        if not self._ended:
            self._ended = True
            self._error = error
        self._ready.set()

    async def batches(self) -> AsyncIterator[tuple[float, list[EntryChange]]]:
        while True:
            while self._pending:
                yield self._pending.popleft()
            if self._ended:
                if self._error is not None:
                    raise self._error
                return
            self._ready.clear()
            await self._ready.wait()


Poll = Callable[[], Awaitable[list[Entry]]]  # the entries the filter matches now


class ChangeFeed:
    """The loop of one feed in this process, shared by all its subscribers here."""

    def __init__(
        self,
        name: str,
        poll: Poll,
        coordination: FeedCoordination,
        *,
        interval: float,
        lease: float,
        clock: Clock,
        on_stopped: Callable[[ChangeFeed], None],
        caller: str = "",
        budget: SnapshotBudget | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.name = name
        self.caller = caller  # whom the bytes of its snapshot are charged to (an HMAC)
        # This object's name on the lease: its same-name successor here is another holder.
        self.instance = secrets.token_hex(8)
        self._poll = poll
        self._coordination = coordination
        self._interval = interval
        self._lease = lease
        self._clock = clock
        self._on_stopped = on_stopped
        self._budget = budget
        self._metrics = metrics
        self.subscribers: set[Subscriber] = set()
        self.role: Role | None = None
        self.seen: Snapshot | None = None  # the entries as this replica's subscribers know them
        self.seen_id: str | None = None  # the shared snapshot ``seen`` is, if any
        self.seen_bytes = 0  # the size of ``seen`` as the budget counts it
        self.synced_at: float | None = None
        self.ended = False
        self._stop_requested = False
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        self._held_back: list[FeedMessage] = []  # relayed while a resync was loading

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def join(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)
        if self.synced_at is not None:
            subscriber.deliver(FeedMessage(observed_at=self.synced_at, synced=True))

    def leave(self, subscriber: Subscriber) -> bool:
        """Drop a subscriber; True when it was the last one (the feed stops)."""
        self.subscribers.discard(subscriber)
        if self.subscribers:
            return False
        self.stop()
        return True

    def stop(self) -> None:
        """Stop the loop, once. Its first cancellation lands in its ``finally``, which is
        still letting go of the lease; a second one (the last subscriber left, then shutdown
        stops every feed; or shutdown ends the subscribers, whose leaving stops the feed again)
        would cancel that release half-way, and the other replicas would wait for the lease
        to expire instead of taking over at their next interval."""
        if self._stop_requested:
            return
        self._stop_requested = True
        if self._budget is not None:
            self._budget.release(self.instance)
        for task in (self._resync, self._task):
            # Not our own task: the feed ending from inside its loop returns on its own.
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        self._on_stopped(self)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The feed's loop (done once it stopped and let go of its lease)."""
        return self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def when_stopped(self, callback: Callable[[], None]) -> None:
        if self._task is None or self._task.done():
            callback()
        else:
            self._task.add_done_callback(lambda _task: callback())

    async def wait_stopped(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- what subscribers are told --------------------------------------------------------

    def _tell(self, message: FeedMessage) -> None:
        if (message.synced or message.changes) and self.synced_at is None:
            self.synced_at = message.observed_at
        for subscriber in list(self.subscribers):
            if message.end is not None:
                subscriber.end(FeedEnded(str(message.end["message"]), message.end["extensions"]))
            else:
                subscriber.deliver(message)
        if message.end is not None:
            self.ended = True
            self.subscribers.clear()
            self.stop()

    def _end_here(self, error: GatewayError) -> None:
        """End this replica's subscribers (not other replicas': the bound is this process's)."""
        self._tell(
            FeedMessage(
                self._clock.wall(), end={"message": error.message, "extensions": error.extensions}
            )
        )

    def _charged(self, size: int) -> bool:
        """Charge the feed's caller ``size`` bytes for what ``seen`` is about to hold; False
        (and the feed ends here) when they do not fit. A stopped feed holds nothing (a late
        message or resync must not charge what its stop let go of)."""
        if self._stop_requested:
            return False
        if self._budget is None:
            return True
        refused = self._budget.charge(self.instance, self.caller, size)
        if refused is not None:
            self._end_here(refused)
            return False
        return True

    def _catch_up(self, entries: Snapshot, snapshot_id: str | None, observed_at: float) -> None:
        """Tell subscribers what differs between ``seen`` and ``entries`` (the baseline when
        they were told nothing yet), and remember ``entries`` as what they know."""
        size = snapshot_bytes(entries)
        if not self._charged(size):
            return
        if self.seen is None:
            message = FeedMessage(observed_at=observed_at, synced=True)
        else:
            message = FeedMessage(observed_at, changes=diff_snapshots(self.seen, entries))
        self.seen, self.seen_id, self.seen_bytes = dict(entries), snapshot_id, size
        self._tell(message)

    def receive(self, message: FeedMessage | None) -> None:
        """A message another replica published for this feed (relayed by the coordination);
        None when one arrived that could not be read or applied: catch up from the shared
        snapshot instead, as after any missed message."""
        if message is None:
            self.seen_id = None  # what subscribers here know is no shared snapshot any more
            self._start_resync()
        elif message.end is not None:
            self._tell(message)
        elif self._resync is not None and not self._resync.done():
            self._held_back.append(message)
        elif not self._apply(message):
            self._start_resync()

    def _apply(self, message: FeedMessage) -> bool:
        """Apply a relayed message if it follows what subscribers here know; False when they
        need a resync instead."""
        if message.snapshot_id is not None and message.snapshot_id == self.seen_id:
            return True  # a resync caught up past it already
        if self.seen is None or message.base is None or message.base != self.seen_id:
            return False
        size = self.seen_bytes
        for change in message.changes:
            for entry, sign in ((change.before, -1), (change.after, 1)):
                if entry is not None:
                    size += sign * entry_bytes(entry_identity(entry), entry)
        if not self._charged(size):
            return True  # ended: nothing more to apply
        for change in message.changes:
            if change.after is not None:
                self.seen[entry_identity(change.after)] = change.after
            elif change.before is not None:
                self.seen.pop(entry_identity(change.before), None)
        self.seen_id, self.seen_bytes = message.snapshot_id, size
        self._tell(message)
        return True

    def _start_resync(self) -> asyncio.Task[None]:
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(self._resynced())
        return self._resync

    async def _resynced(self) -> None:
        """Catch subscribers here up with the shared snapshot, then apply what was relayed
        meanwhile; a message that still does not follow means another round."""
        for _ in range(RESYNC_ROUNDS):
            try:
                shared = await self._coordination.load(self.name)
            except CoordinationUnavailable:
                return  # the loop polls on its own next interval
            if shared is None:
                return  # no baseline yet: the holder's first message brings it
            if shared.snapshot_id != self.seen_id:
                self._catch_up(shared.entries, shared.snapshot_id, self._clock.wall())
            held, self._held_back = self._held_back, []
            if all(self._apply(message) for message in held):
                return

    # --- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._poll_while_watched()
        finally:
            # Also when cancelled (the last subscriber left, shutdown): a cancelled task may
            # still await, and letting go of the lease now lets another replica take over at
            # its next attempt instead of after the lease expires. ``stop`` cancels only once,
            # so nothing cancels this release half-way (and the release is bounded).
            self.seen = None  # the snapshot goes with the feed, whoever still holds the feed
            self._held_back = []
            await self._coordination.release(self.name, self.instance)

    async def _poll_while_watched(self) -> None:
        while True:
            wait = self._interval
            role = await self._coordination.hold(self.name, self.instance, self._lease)
            # Checked after each step as well as cancelled: a cancellation that a library
            # swallowed (one landing as its own timeout fires) must not leave a stopped feed
            # polling for ever (after the poll in ``_poll_once``).
            if self._stop_requested:
                return
            self._switch(role)
            if role is Role.RELAY:
                if self.seen_id is None:
                    await self._start_resync()
            else:
                next_poll = await self._poll_once(shared=role is Role.POLL_SHARED)
                if next_poll is None:
                    return
                # Through a backoff too, the holder's heartbeat keeps its lease: another
                # replica polling now would only meet the same rate limit.
                wait = next_poll
            await self._clock.sleep(wait)

    def _switch(self, role: Role) -> None:
        """Log the switches between sharing the feed and polling it alone (Redis went away,
        or came back); a feed that was always local has nothing to say."""
        previous, self.role = self.role, role
        if previous is None or previous is role:
            return
        if role is Role.POLL_LOCAL:
            log.warning("change_feed_polling_locally", feed=self.name[:12], reason="redis")
        elif previous is Role.POLL_LOCAL:
            log.info("change_feed_shared_again", feed=self.name[:12], role=role.value)

    def _observe(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.change_feed_polls.labels(outcome=outcome).inc()

    async def _poll_once(self, *, shared: bool) -> float | None:
        """One poll and its commit; the seconds until the next poll, or None when the feed
        ended."""
        previous: SharedSnapshot | None = None
        if shared:
            try:
                previous = await self._coordination.load(self.name)
            except CoordinationUnavailable:
                shared = False
        try:
            entries = await self._poll()
        except RateLimited as limited:
            self._failures += 1
            self._observe("rate_limited")
            return max(self._interval, limited.retry_after)
        except InconsistentPoll:
            # The entries moved under the walk: no diff from it (it would invent REMOVED and
            # ADDED pairs), no commit; the next interval walks again.
            self._observe("inconsistent")
            return self._interval
        except (UpstreamUnavailable, UpstreamTimeout):
            self._failures += 1
            self._observe("upstream_error")
            return self._interval * float(min(MAX_BACKOFF_POLLS, 2 ** (self._failures - 1)))
        except GatewayError as refused:
            # The caller's own answer (401, 403, a filter too large): it will not change by
            # polling again, so every subscriber learns it and the feed ends.
            self._observe("refused")
            await self._end({"message": refused.message, "extensions": refused.extensions}, shared)
            return None
        except Exception:
            # A bug: logged with its traceback, shown masked, and the feed ends rather
            # than leave its subscribers waiting on a poller that is gone.
            log.exception("change_feed_failed", feed=self.name[:12])
            self._observe("failed")
            masked = {
                "message": INTERNAL_ERROR_MESSAGE,
                "extensions": {"code": ErrorCode.INTERNAL_SERVER_ERROR.value},
            }
            await self._end(masked, shared)
            return None
        self._failures = 0
        self._observe("ok")
        if self._stop_requested:
            return None  # stopped while the poll ran: nothing to commit for anyone
        snapshot = snapshot_of(entries)
        del entries
        now = self._clock.wall()
        made: str | None = None
        if shared:
            made = new_snapshot_id()
            message = FeedMessage(
                now,
                synced=previous is None,
                changes=diff_snapshots(previous.entries, snapshot) if previous else [],
                base=previous.snapshot_id if previous else None,
                snapshot_id=made,
            )
            previous = None  # the old snapshot need not outlive the diff
            try:
                if not await self._coordination.commit(
                    self.name, self.instance, SharedSnapshot(made, snapshot), message
                ):
                    return self._interval  # the lease moved on: its new holder tells us
            except CoordinationUnavailable:
                made = None  # polled, not shared: subscribers here still learn it
        # Committed first even when this process has no room for it (the budget ends the
        # feed here and lets go of the lease): other replicas may, and one takes it over.
        self._catch_up(snapshot, made, now)
        return None if self.ended else self._interval

    async def _end(self, end: dict[str, Any], shared: bool) -> None:
        """End the feed with the caller's own answer: for every replica's subscribers when
        this one holds the lease (fenced: one that lost it cannot end the new holder's feed
        or delete its snapshot), and for this replica's in any case: its poll learnt it."""
        message = FeedMessage(self._clock.wall(), end=end)
        if shared:
            with contextlib.suppress(CoordinationUnavailable):
                await self._coordination.end(self.name, self.instance, message)
        self._tell(message)

"""The gateway's upstream slots, shared fairly between callers.

At most ``capacity`` upstream requests are in flight at once, and at most ``per_caller`` of
them for one caller (a caller is its identity, a keyed hash of its normalised credential that
the data layer derives, never the token). When a slot frees up it goes to the next waiting
caller in round-robin order, not to whoever queued most: one tenant's flood waits behind its
own share and cannot starve the others. The resilient transport holds a slot for each attempt
while it is on the wire, its body read included.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairSlots:
    def __init__(self, capacity: int, per_caller: int) -> None:
        self.capacity = capacity
        self.per_caller = max(1, min(per_caller, capacity))
        self.in_use = 0
        self._held: Counter[str] = Counter()
        # Round-robin order of callers with waiters; each holds its FIFO of waiters.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @asynccontextmanager
    async def slot(self, caller: str) -> AsyncIterator[None]:
        await self._acquire(caller)
        try:
            yield
        finally:
            self._release(caller)

    def _free_for(self, caller: str) -> bool:
        return self.in_use < self.capacity and self._held[caller] < self.per_caller

    async def _acquire(self, caller: str) -> None:
        if caller not in self._waiting and self._free_for(caller):
            self._take(caller)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(caller, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(caller)  # granted just as we gave up: hand it on
            else:
                self._forget(caller, granted)
            raise

    def _take(self, caller: str) -> None:
        self.in_use += 1
        self._held[caller] += 1

    def _release(self, caller: str) -> None:
        self.in_use -= 1
        self._held[caller] -= 1
        if not self._held[caller]:
            del self._held[caller]
        self._dispatch()

    def _forget(self, caller: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(caller)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiting[caller]

    def _dispatch(self) -> None:
        """Hand free slots to waiting callers, one each in turn."""
        while self.in_use < self.capacity and self._waiting:
            for caller in list(self._waiting):
                if self._held[caller] >= self.per_caller:
                    continue
                queue = self._waiting.pop(caller)
                waiter = queue.popleft()
                if queue:
                    self._waiting[caller] = queue  # to the back of the round
                if waiter.done():
                    break  # cancelled, its task not yet resumed: nothing to grant; look again
                self._take(caller)
                waiter.set_result(None)
                break
            else:
                return  # everyone waiting is at their share

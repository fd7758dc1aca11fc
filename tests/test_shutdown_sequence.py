"""The shutdown sequence's own rules, without a process (``tests/test_shutdown.py`` runs it
under ``serve``): its order, and that no step keeps it past its timeout, not even one that
never ends or a task that will not be cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from gateway.changes.registry import ChangeFeeds, build_change_feeds
from gateway.server.cli import run_until_stopped
from gateway.server.connections import ConnectionGuard
from gateway.server.shutdown import ShutdownSequence
from gateway.transports.stream_limits import OpenStreams
from tests.conftest import live_settings


def _sequence(timeout: float) -> tuple[ShutdownSequence, OpenStreams, ChangeFeeds]:
    sequence = ShutdownSequence(
        ConnectionGuard(max_connections=8, header_timeout=5), timeout=timeout
    )
    streams = OpenStreams(4)
    changes = build_change_feeds(live_settings())
    sequence.app_state = {"streams": streams, "changes": changes}
    return sequence, streams, changes


async def _closed() -> None:
    return None


async def test_streams_end_before_the_feeds_let_go_and_both_before_the_close(
    monkeypatch: Any,
) -> None:
    """Streams first, so each transport ends its subscriptions its own way (a WebSocket with
    1012, SSE with no ``complete``): the feeds ending them first would complete them."""
    sequence, streams, changes = _sequence(timeout=5)
    steps: list[str] = []
    feeds_close = changes.close

    async def close_feeds() -> None:
        steps.append("feeds" + (" after streams" if streams.closing.is_set() else ""))
        await feeds_close()

    async def close() -> None:
        steps.append("close")

    monkeypatch.setattr(changes, "close", close_feeds)
    with capture_logs() as logs:
        await sequence.run([], close)
    assert steps == ["feeds after streams", "close"]
    assert [line["event"] for line in logs] == ["gateway_stopping", "gateway_stopped"]
    stopped = logs[-1]
    assert stopped["cut"] == {
        "requests": 0,
        "websockets": 0,
        "connections": 0,
        "feeds": 0,
        "resources": False,
        "by": None,
    }


async def test_a_step_that_never_ends_is_cut_at_the_deadline(monkeypatch: Any) -> None:
    """The hang of issue 27: letting go of the leases waited without bound (a feed that did
    not stop kept polling and renewing its lease). Now it is cut at the drain deadline, said
    so, and the close still runs."""
    sequence, _, changes = _sequence(timeout=1.0)
    closed: list[bool] = []

    async def never() -> None:
        await asyncio.Event().wait()

    async def close() -> None:
        closed.append(True)

    monkeypatch.setattr(changes, "close", never)
    with capture_logs() as logs:
        await asyncio.wait_for(sequence.run([], close), 10)  # a backstop, not a measure
    [stopped] = [line for line in logs if line["event"] == "gateway_stopped"]
    assert stopped["cut"]["feeds"] >= 1
    assert stopped["cut"]["by"] == "deadline"
    assert closed == [True]


async def test_a_second_signal_ends_the_drain_at_once(monkeypatch: Any) -> None:
    sequence, _, changes = _sequence(timeout=3600)

    async def never() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(changes, "close", never)
    running = asyncio.ensure_future(sequence.run([], _closed))
    await asyncio.sleep(0.2)
    assert not running.done(), "the drain waits"
    with capture_logs() as logs:
        sequence.interrupt(15)
        await asyncio.wait_for(running, 10)
    [stopped] = [line for line in logs if line["event"] == "gateway_stopped"]
    assert stopped["cut"]["by"] == "SIGTERM"


def test_a_task_that_will_not_be_cancelled_does_not_keep_the_process() -> None:
    """``asyncio.run`` waits for every task left to end once cancelled, however long: one
    that swallows its cancellation (a loop that polls on) held the process for good."""

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def main() -> None:
        asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)

    with capture_logs() as logs:
        run_until_stopped(main(), None)
    [abandoned] = [line for line in logs if line["event"] == "gateway_tasks_abandoned"]
    assert "stubborn" in abandoned["tasks"][0]

"""A page read for a request is freed with the answer, by reference counting, not left as
cyclic garbage for the collector (issue 22).

graphql-core's executor refers to itself (its resolve-info helpers hold its bound methods)
and to the request's context; the context reaches the request's loader, whose futures held
every page it loaded. So each 2,000-item page (thousands of dicts) lived until a collection
found the cycle, and the collections that walked them cost a fifth of the request and
stalled the loop for hundreds of milliseconds at a time. The runner (and a batch, once all of
its operations are done) releases the loader's pages; these tests count what is left in
cycles after one request.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.data.entity_batches import Answered
from gateway.domain.query import UpstreamPage
from tests.conftest import RecordingTransport, live_settings, running_gateway

PAGE = "{ phoneNumbers(page: {first: 200}) { nodes { phoneNumber extension } totalCount } }"


@pytest.fixture
def cyclic_garbage() -> Iterator[list[Any]]:
    """What a collection finds unreachable, kept for inspection (``gc.DEBUG_SAVEALL``)."""
    gc.collect()
    gc.disable()  # no collection in between: everything cyclic is still there at the end
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[Any] = []
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def pages_in(garbage: list[Any]) -> list[Any]:
    gc.collect()
    found = [o for o in gc.garbage if isinstance(o, UpstreamPage | Answered)]
    gc.garbage.clear()
    return found


async def test_an_operations_pages_are_not_left_in_reference_cycles(
    gateway: httpx.AsyncClient, cyclic_garbage: list[Any]
) -> None:
    response = await gateway.post("/graphql", json={"query": PAGE})
    assert len(response.json()["data"]["phoneNumbers"]["nodes"]) == 200
    assert pages_in(cyclic_garbage) == []


async def test_a_batchs_pages_are_not_left_in_reference_cycles(
    recorder: RecordingTransport, cyclic_garbage: list[Any]
) -> None:
    async with running_gateway(live_settings(batch_max=2, cache_ttl=0), recorder) as client:
        response = await client.post(
            "/graphql",
            json=[{"query": PAGE}, {"query": PAGE}],
            headers={"Authorization": "Bearer demo-admin"},
        )
    assert [len(entry["data"]["phoneNumbers"]["nodes"]) for entry in response.json()] == [
        200,
        200,
    ]
    assert pages_in(cyclic_garbage) == []

"""Where one uncached request's time goes, by phase, measured in process side by side.

A cProfile of a request inflates every Python call and hides allocation and GC cost, so the
phases are timed as variants of the same work, interleaved round by round (a busy machine
slows them alike), each the median of its rounds:

    floor     ``orjson.loads`` + ``orjson.dumps`` of the upstream body (the target's floor)
    read      an ``httpx`` GET of the upstream body over a transport returning fixed bytes
    shape     the body's shape checked and its items counted (``upstream.body``: one msgspec
              pass, nothing decoded into Python)
    project   the selection's compiled Structs over the body: the typed decode of the
              selected fields and the list's encoding, in C (``execution.struct_projection``)
    encode    ``orjson.dumps`` of the response (the encoded list copied in as a fragment)
    execute   the production pipeline (``build_execution``'s prepared operations, warm, and
              the engine's admission and execution) plus the encode: what ``OperationRunner``
              does; GraphQL overhead is execute − read − decode − project − encode
    app       the whole ASGI app (``create_app``: view, runner, middleware) in process;
              middleware and view = app − execute

``benchmarks/peer_gateway.py`` prints these beside its over-HTTP figures (the server's share:
an HTTP request's latency − app). Run alone:
``.venv/bin/python benchmarks/phases.py [--size 2000] [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from typing import Any, ClassVar

import httpx
import orjson
import structlog
from asgi_lifespan import LifespanManager
from large_page import FIELDS, UPSTREAM, fixed_transport, interleaved

from gateway.clock import SYSTEM_CLOCK
from gateway.data.page_cache import PageCache
from gateway.data.source import NumbersSource
from gateway.domain.connection import PageResult
from gateway.domain.upstream_items import UpstreamBody, UpstreamItems
from gateway.execution.projecting_executor import (
    ProjectingExecutionContext,
    projecting_execution_context,
)
from gateway.execution.run import RunOptions
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import Tracing
from gateway.schema.context import RequestContext
from gateway.server.app import build_execution, create_app
from gateway.server.cli import settle_heap
from gateway.settings import load_settings
from gateway.transports.operation import result_payload
from gateway.upstream.body import read_numbers_page
from gateway.upstream.factory import build_upstream

PHASES = ("read", "shape", "project", "encode", "graphql", "middleware")


def query(size: int) -> str:
    return f"{{ phoneNumbers(page: {{first: {size}}}) {{ nodes {{ {FIELDS} }} }} }}"


def upstream_body(size: int) -> bytes:
    """A ``size``-item page of the simulator's data, as the upstream sends it."""
    from gateway.simulator import build_demo_world

    world = build_demo_world(size=max(size, 100), seed=7)
    return orjson.dumps({"phoneNumbers": [e.payload for e in world.demo_org.entries[:size]]})


def recording(executor: type[ProjectingExecutionContext]) -> Any:
    """``executor`` (the production one), keeping the last page and projector it used, so the
    projector can be timed alone on exactly what the request projected."""

    class Recording(executor):  # type: ignore[misc,valid-type]
        last: ClassVar[dict[str, Any]] = {}

        def _project(
            self, parent_type: Any, source: Any, field_details_list: Any, path: Any
        ) -> Any:
            projected = super()._project(parent_type, source, field_details_list, path)
            self.last["page"] = source.result
            return projected

        def _projector(self, parent_type: Any, field_details_list: Any, path: Any) -> Any:
            projector = super()._projector(parent_type, field_details_list, path)
            self.last["projector"] = projector
            return projector

    return Recording


async def measure(size: int, rounds: int) -> dict[str, float]:
    """Median ms of each phase and of floor, execute and app, from one interleaved group."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    body = upstream_body(size)
    transport = fixed_transport(body)
    settings = load_settings(upstream_url=UPSTREAM, cache_ttl=0)
    app = create_app(settings, upstream_transport=transport)
    operations, engine = build_execution(settings, GatewayMetrics())
    # A second production pipeline, recording: run once, to find what the projector is given.
    executor = recording(projecting_execution_context())
    recording_operations, recording_engine = build_execution(
        settings, GatewayMetrics(), executor_class=executor
    )
    document = query(size)
    payload = orjson.dumps({"query": document})
    # Uncompressed, as the peer benchmark asks every server (compression is its own cost).
    headers = {
        "Authorization": "Bearer b",
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",
    }
    # The upstream as the lifespan builds it (the resilient transport, headers, timeouts, no
    # cookie jar).
    upstream = build_upstream(
        settings,
        base_url=UPSTREAM,
        transport=transport,
        metrics=None,
        clock=SYSTEM_CLOCK,
        tracing=Tracing(),
    )
    async with (
        LifespanManager(app) as manager,
        upstream.http,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway.test"
        ) as client,
    ):

        async def whole_app() -> bytes:
            response = await client.post("/graphql", content=payload, headers=headers)
            assert response.status_code == 200, response.text[:300]
            return response.content

        # The pipeline as the lifespan builds it, caching off, over the same fixed bytes.
        source = NumbersSource(
            upstream.client,
            PageCache(ttl=0),
            max_page_size=settings.max_page_size,
        )

        payloads: list[dict[str, Any]] = []

        async def execute(pipeline: Any = (operations, engine)) -> bytes:
            prepared_operations, operation_engine = pipeline
            prepared = prepared_operations.prepare(document, None)
            admission = operation_engine.admit(prepared, None, RunOptions())
            context = RequestContext(numbers=source.for_caller("Bearer b"), encoded_lists=True)
            result = await operation_engine.execute(admission, context)
            context.numbers.release()  # as the runner does once the operation is done
            assert not result.errors, result.errors
            payload = result_payload(result)
            if not payloads:
                payloads.append(payload)
            return orjson.dumps(payload)

        await execute((recording_operations, recording_engine))
        page, projector = executor.last.pop("page"), executor.last.pop("projector")
        settle_heap()  # as `numbers-gateway serve` does once the app is built
        assert projector is not None, "the selection was not projected"
        # The response as the runner encodes it: the list in it already JSON (a fragment).
        response_document = payloads[0]

        async def floor() -> None:
            orjson.dumps(orjson.loads(body))

        async def read() -> None:
            (await upstream.http.get(UPSTREAM + "/telephony/config/numbers")).read()

        async def shape() -> None:
            read_numbers_page(body)

        structs = projector.structs
        assert structs is not None, "the selection is not read in C"
        assert isinstance(page.page.items, UpstreamItems)

        async def project() -> None:
            # A fresh body each round: a body keeps its typed decode for the request.
            fresh = UpstreamItems.of_body(UpstreamBody(body), range(len(page.page.items)))
            result = PageResult(
                None,
                page.window,
                dataclasses.replace(page.page, items=fresh),
                cursors=page.cursor,
            )
            assert structs.encoded(result) is not None

        async def encode() -> None:
            orjson.dumps(response_document)

        medians = await interleaved(
            {
                "floor": floor,
                "read": read,
                "shape": shape,
                "project": project,
                "encode": encode,
                "execute": execute,
                "app": whole_app,
            },
            rounds,
        )
    own = medians["read"] + medians["shape"] + medians["project"] + medians["encode"]
    medians["graphql"] = max(0.0, medians["execute"] - own)
    medians["middleware"] = max(0.0, medians["app"] - medians["execute"])
    return medians


def print_breakdown(size: int, medians: dict[str, float], http_ms: float | None = None) -> None:
    """One request's phases in ms and as a multiple of the floor; with ``http_ms`` (one
    request over HTTP from one client, p50) the server's share beside them."""
    floor = medians["floor"]
    print(f"  one {size:,}-item request by phase (ms; × the orjson floor, {floor:.2f} ms)")
    labels = {
        "read": "read (httpx GET of the upstream body)",
        "shape": "shape (one msgspec pass: valid, items counted)",
        "project": "project (typed decode + encode, in C)",
        "encode": "encode (orjson.dumps, the list a fragment)",
        "graphql": "GraphQL overhead (execution, resolver, plan)",
        "middleware": "middleware + view (ASGI, in process)",
    }
    for phase in PHASES:
        ms = medians[phase]
        print(f"    {labels[phase]:<50}{ms:>8.2f}{ms / floor:>7.1f}×")
    print(f"    {'= the whole app in process':<50}{medians['app']:>8.2f}")
    if http_ms is not None:
        server = http_ms - medians["app"]
        shown = f"{server:>8.2f}" if server > 0 else "   ≈ 0 (within noise)"
        print(f"    {'server, loopback, load client (over HTTP − app)':<50}{shown}")
        print(f"    {'= one request over HTTP, one client (p50)':<50}{http_ms:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    medians = asyncio.run(measure(args.size, args.rounds))
    print_breakdown(args.size, medians)


if __name__ == "__main__":
    main()

"""Shared fixtures: the simulator, a recording transport, and gateways built around them."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from graphql import DocumentNode, ExecutionResult, OperationDefinitionNode, parse
from hypothesis import settings as hypothesis_settings
from starlette.applications import Starlette

from gateway.execution.cost import CostLimits, operation_cost
from gateway.execution.fragment_walk import fragment_definitions
from gateway.execution.prepare import OperationRefused
from gateway.execution.run import RunOptions
from gateway.observability.metrics import GatewayMetrics
from gateway.schema.context import RequestContext
from gateway.server.app import build_execution, create_app
from gateway.settings import Settings, load_settings
from gateway.simulator import build_demo_world, create_simulator_app
from gateway.simulator.dataset import SimulatorWorld

UPSTREAM_BASE = "http://webex.test/v1"
GATEWAY_BASE = "http://gateway.test"

# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE: `ci` (the default) runs each property test
# at its full depth; `dev` (`make test-fast`) runs a tenth of it, for a quick inner loop; `deep`
# ten times it, to hunt by hand after a change to a fast path (with `-o timeout=0`: it runs past
# the per-test bound, whose alarm would land inside a running event loop).
CI_EXAMPLES = 100
hypothesis_settings.register_profile("ci", max_examples=CI_EXAMPLES)
hypothesis_settings.register_profile("dev", max_examples=CI_EXAMPLES // 10)
hypothesis_settings.register_profile("deep", max_examples=CI_EXAMPLES * 10)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def estimated_cost(
    document: str | DocumentNode,
    operation_name: str | None = None,
    variables: dict[str, Any] | None = None,
    *,
    max_page_size: int = 2000,
    max_entities: int = 1000,
    max_stream_items: int | None = None,
    held: bool = False,
) -> int | None:
    """The cost estimate of the operation of ``document`` that would run (``execution.cost``),
    or None when none can be chosen; ``held``: priced as an answer held whole."""
    parsed = parse(document) if isinstance(document, str) else document
    operations = [d for d in parsed.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [op for op in operations if op.name and op.name.value == operation_name]
    if len(operations) != 1:
        return None
    limits = CostLimits(
        max_cost=10**9,
        max_page_size=max_page_size,
        max_entities=max_entities,
        max_stream_items=max_stream_items,
    )
    return operation_cost(operations[0], fragment_definitions(parsed), variables, limits, held=held)


class InProcess:
    """Operations run in process through the gateway's own stages, as the transports run them:
    prepared (``execution.prepare``), admitted (variables and cost), then executed whole
    (``execute``) or as frames (``frames``: ``@defer``/``@stream`` payloads, a subscription's
    events). A refusal comes back as a result with its errors and no data."""

    def __init__(self, settings: Settings | None = None, **execution: Any) -> None:
        self.settings = settings or live_settings()
        self.metrics = GatewayMetrics()
        self.operations, self.engine = build_execution(self.settings, self.metrics, **execution)

    def _admit(
        self, query: str, variables: dict[str, Any] | None, operation_name: str | None, held: bool
    ) -> Any:
        prepared = self.operations.prepare(query, operation_name)
        return self.engine.admit(prepared, variables, RunOptions(held=held))

    async def execute(
        self,
        query: str,
        variable_values: dict[str, Any] | None = None,
        context_value: RequestContext | None = None,
        operation_name: str | None = None,
    ) -> ExecutionResult:
        assert context_value is not None
        try:
            admission = self._admit(query, variable_values, operation_name, held=True)
        except OperationRefused as refused:
            return ExecutionResult(None, refused.errors)
        return await self.engine.execute(admission, context_value)

    async def frames(
        self,
        query: str,
        variable_values: dict[str, Any] | None = None,
        context_value: RequestContext | None = None,
        operation_name: str | None = None,
    ) -> AsyncIterator[Any]:
        assert context_value is not None
        try:
            admission = self._admit(query, variable_values, operation_name, held=False)
        except OperationRefused as refused:
            return _single(ExecutionResult(None, refused.errors))
        return self.engine.frames(admission, context_value)

    subscribe = frames
    stream = frames


async def _single(result: ExecutionResult) -> AsyncIterator[ExecutionResult]:
    yield result


def examples(ci_depth: int) -> int:
    """A property test's ``max_examples``: ``ci_depth`` under the ci profile, scaled down with
    the loaded profile (a tenth under dev), so one variable sets the whole suite's depth."""
    return max(1, ci_depth * hypothesis_settings.default.max_examples // CI_EXAMPLES)


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests to ``inner`` (or a handler) and keeps each one for assertions."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        handler: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.inner = inner
        self.handler = handler
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.handler is not None:
            return self.handler(request)
        assert self.inner is not None
        return await self.inner.handle_async_request(request)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def params(self, index: int = -1) -> list[tuple[str, str]]:
        return list(self.requests[index].url.params.multi_items())


class GatedTransport(httpx.AsyncBaseTransport):
    """Holds every upstream request until ``release()``: tests wait for a state (all callers
    queued, joined or in flight), never for an amount of time. ``answer`` makes the response
    (default: pass to ``inner``)."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        answer: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.inner = inner
        self.answer = answer
        self.calls = 0
        self.held = 0
        self.peak = 0
        self._gate = asyncio.Event()

    def release(self) -> None:
        self._gate.set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.held += 1
        self.peak = max(self.peak, self.held)
        try:
            await self._gate.wait()
        finally:
            self.held -= 1
        if self.answer is not None:
            return self.answer(request)
        assert self.inner is not None
        return await self.inner.handle_async_request(request)


async def eventually(condition: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait until ``condition`` holds; the bound is only a backstop against a hang."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        outcome = condition()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


async def metric(client: httpx.AsyncClient, name: str) -> float:
    """One sample of the gateway's ``/metrics`` (0 when absent)."""
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class FakeClock:
    """One fake for every clock the gateway reads (``gateway.clock.Clock``).

    ``now`` is the monotonic time; moving it moves wall time by as much, as real time would.
    ``jump_wall`` moves only the wall clock (NTP, an operator's ``date``). ``sleep`` records
    the wait and returns at once.
    """

    def __init__(self, monotonic: float = 1_000.0, wall: float = 1_800_000_000.0) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self.waits: list[float] = []

    @property
    def now(self) -> float:
        return self._monotonic

    @now.setter
    def now(self, value: float) -> None:
        self._wall += value - self._monotonic
        self._monotonic = value

    def jump_wall(self, seconds: float) -> None:
        self._wall += seconds

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(scope="session")
def world() -> SimulatorWorld:
    return build_demo_world(size=1000, seed=7)


@pytest.fixture
def simulator_app(world: SimulatorWorld) -> Starlette:
    return create_simulator_app(world)


@pytest.fixture
def recorder(simulator_app: Starlette) -> RecordingTransport:
    return RecordingTransport(httpx.ASGITransport(app=simulator_app))


@pytest.fixture
async def simulator(simulator_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the simulator alone, as a Webex SDK would talk to it."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator_app),
        base_url="http://webex.test/v1",
        headers={"Authorization": "Bearer demo-admin"},
    ) as client:
        yield client


@contextmanager
def serve_on_loopback(app: Starlette, *, lifespan: str = "off") -> Iterator[str]:
    """uvicorn in a thread on a free 127.0.0.1 port (the socket is bound before it starts);
    ``lifespan="on"`` runs the app's lifespan in the server's own loop (a whole gateway)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan=lifespan, ws="none", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@asynccontextmanager
async def running_gateway(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None, **seams: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client of it. ``seams``: ``clock``."""
    app = create_app(settings, upstream_transport=transport, **seams)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app),
            base_url=GATEWAY_BASE,
            # The tests read what the cache did from each answer's extensions.cache.
            headers={"Gateway-Cache-Report": "true"},
        ) as client,
    ):
        yield client


def live_settings(**overrides: Any) -> Settings:
    """Settings for a gateway with a 'live' upstream (served by the transport under test)."""
    return load_settings(upstream_url=UPSTREAM_BASE, **overrides)


@pytest.fixture
async def gateway(recorder: RecordingTransport) -> AsyncIterator[httpx.AsyncClient]:
    """A live-mode gateway whose upstream is the simulator behind a recording transport."""
    async with running_gateway(live_settings(), recorder) as client:
        client.headers["Authorization"] = "Bearer demo-admin"
        yield client


async def graphql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    status: int = 200,
    **kw: Any,
) -> dict[str, Any]:
    """POST an operation as a current client does (``Accept:
    application/graphql-response+json``): documents rejected before execution (parse,
    validation, limits) answer 400, everything that executed answers 200."""
    headers = {"Accept": "application/graphql-response+json", **kw.pop("headers", {})}
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers, **kw
    )
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's own GATEWAY_* settings."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


class RedisServer:
    """A real redis-server on a free loopback port, started and stopped by the tests."""

    def __init__(self) -> None:
        import shutil
        import socket
        import subprocess

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (make test installs it where it can)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        import socket
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server() -> Any:
    server = RedisServer()
    yield server
    server.stop()

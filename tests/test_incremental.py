"""Incremental delivery's engine, in process through ``schema.stream``: ``@stream`` on the
connection lists follows the upstream walk (a projected chunk per upstream page, one page
ahead of the consumer at most, stopped when the consumer goes away), ``@defer`` on any
fragment, and errors mid-stream end it with a contract error. The HTTP transports have their
own tests; the upstream pages by a small page size (the simulator's page cap) throughout."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from graphql import SubsequentIncrementalExecutionResult

from gateway.data.page_cache import PageCache
from gateway.data.source import NumbersSource
from gateway.schema.context import RequestContext
from gateway.simulator.app import create_simulator_app
from gateway.simulator.dataset import SimulatorWorld, build_demo_world
from gateway.upstream.client import UpstreamClient
from tests.conftest import InProcess, RecordingTransport, eventually, live_settings

UPSTREAM = "http://webex.test/v1"
PAGE_CAP = 5  # the simulator's own page size: every walk takes many upstream pages
MAX_PAGE_SIZE = 10  # so a streamed window's first chunk is two upstream pages


@dataclass
class Engine:
    """The schema over the simulator, with the upstream requests recorded."""

    schema: Any
    source: NumbersSource
    upstream: RecordingTransport
    # As the transports run it: projected lists encoded in C from the upstream's bytes.
    encoded_lists: bool = False

    def context(self, *, incremental: bool = True) -> RequestContext:
        return RequestContext(
            self.source.for_caller(None),
            incremental_delivery=incremental,
            encoded_lists=self.encoded_lists,
        )

    async def frames(
        self, query: str, variables: dict[str, Any] | None = None
    ) -> AsyncIterator[Any]:
        return await self.schema.frames(
            query, variable_values=variables, context_value=self.context()
        )

    async def collect(
        self, query: str, variables: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every payload, formatted as a transport would (subsequent ones contract-checked)."""
        frames = []
        async for frame in await self.frames(query, variables):
            frames.append(formatted(frame))
        return frames

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        result = await self.schema.execute(
            query, variable_values=variables, context_value=self.context(incremental=False)
        )
        assert not result.errors, result.errors
        return result.data  # type: ignore[no-any-return]


def formatted(frame: Any) -> dict[str, Any]:
    if isinstance(frame, SubsequentIncrementalExecutionResult):
        return frame.formatted  # type: ignore[no-any-return]  # contract errors already
    out: dict[str, Any] = {"data": frame.data}
    if frame.errors:
        out["errors"] = [error.formatted for error in frame.errors]
    for key in ("pending", "has_next"):
        value = getattr(frame, key, None)
        if value is not None:
            out["hasNext" if key == "has_next" else key] = (
                [p.formatted for p in value] if key == "pending" else value
            )
    return out


def _merge(target: dict[str, Any], data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def reassemble(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """The data a client builds from the payloads: items appended, deferred data merged."""
    data = copy.deepcopy(frames[0]["data"])
    paths: dict[str, list[Any]] = {}
    for frame in frames:
        for pending in frame.get("pending") or ():
            paths[pending["id"]] = pending["path"]
        for entry in frame.get("incremental") or ():
            target: Any = data
            for key in paths[entry["id"]] + (entry.get("subPath") or []):
                target = target[key]
            if "items" in entry:
                target.extend(entry["items"])
            else:
                _merge(target, entry["data"])
    return data


def engine_over(
    world: SimulatorWorld,
    handler: Callable[[httpx.Request], httpx.Response | None] | None = None,
    *,
    page_cap: int = PAGE_CAP,
    max_page_size: int = MAX_PAGE_SIZE,
    cache_ttl: float = 0,
    relinked: str | None = None,
    gate: PageGate | None = None,
) -> Engine:
    """``handler`` may answer a request itself (a fault) instead of the simulator;
    ``relinked``: the simulator's ``next`` links point at this origin instead (unsafe);
    ``gate``: every upstream request waits there until the test lets it through."""
    simulator: httpx.AsyncBaseTransport = httpx.ASGITransport(
        app=create_simulator_app(world, page_cap=page_cap)
    )
    if gate is not None:
        gate.inner, simulator = simulator, gate

    class Faulty(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            answer = handler(request) if handler is not None else None
            if answer is not None:
                return answer
            response = await simulator.handle_async_request(request)
            link = response.headers.get("link")
            if relinked is not None and link is not None:
                response.headers["link"] = link.replace(UPSTREAM.split("/v1")[0], relinked)
            return response

    recorder = RecordingTransport(Faulty())
    client = UpstreamClient(
        httpx.AsyncClient(transport=recorder),
        base_url=UPSTREAM,  # a bare client: one attempt per request, no retries
    )
    source = NumbersSource(
        client,
        PageCache(ttl=cache_ttl),
        max_page_size=max_page_size,
        max_stream_items=100_000,
        default_authorization="Bearer demo-admin",
    )
    # The engine's own limits, wide open: these tests are about the walk, not the cost.
    settings = live_settings(
        max_cost=10_000_000, max_page_size=max_page_size, max_stream_items=100_000
    )
    return Engine(InProcess(settings), source, recorder)


class PageGate(httpx.AsyncBaseTransport):
    """Holds each upstream request (one upstream page) until the test lets it through with
    ``release``, one page at a time: what a payload waited for is counted, never timed."""

    def __init__(self) -> None:
        self.inner: httpx.AsyncBaseTransport | None = None
        self.asked = 0
        self.answered = 0
        self._let_through = asyncio.Semaphore(0)

    def release(self, pages: int = 1) -> None:
        for _ in range(pages):
            self._let_through.release()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.asked += 1
        await self._let_through.acquire()
        assert self.inner is not None
        response = await self.inner.handle_async_request(request)
        self.answered += 1
        return response


@pytest.fixture
def engine(world: SimulatorWorld) -> Engine:
    return engine_over(world)


NODE = "phoneNumber extension state owner { id type lastName } location { id name }"


async def cursor_walk(engine: Engine, arguments: str, node: str = NODE) -> list[dict[str, Any]]:
    """Every edge of the query, a page of MAX_PAGE_SIZE at a time by ``after``."""
    edges: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        cursor = f', after: "{after}"' if after else ""
        page = f"{{first: {MAX_PAGE_SIZE}{cursor}}}"
        data = await engine.execute(
            f"{{ phoneNumbers({arguments} page: {page}) {{ pageInfo {{ hasNextPage endCursor }} "
            f"edges {{ cursor node {{ {node} }} }} }} }}"
        )
        connection = data["phoneNumbers"]
        edges.extend(connection["edges"])
        if not connection["pageInfo"]["hasNextPage"]:
            return edges
        after = connection["pageInfo"]["endCursor"]


CASES = [
    pytest.param("", NODE, id="everything"),
    pytest.param("order: {by: DN, direction: DESC}", NODE, id="by-dn-desc"),
    pytest.param("filter: {numberType: NUMBER} order: {by: LAST_NAME}", NODE, id="numbers-by-name"),
    pytest.param("filter: {ownerType: PEOPLE}", NODE, id="people"),
    # owner.person has a resolver: not projectable, so normal execution streams it.
    pytest.param("filter: {assigned: true}", "phoneNumber owner { person { id } }", id="fallback"),
]


@pytest.mark.parametrize(("arguments", "node"), CASES)
async def test_a_streamed_list_equals_the_cursor_walk(
    engine: Engine, arguments: str, node: str
) -> None:
    walked = await cursor_walk(engine, arguments, node)
    assert len(walked) > 2 * MAX_PAGE_SIZE, "the walk must take several pages"
    frames = await engine.collect(
        f"{{ phoneNumbers({arguments} page: {{first: 5000}}) {{ totalCount "
        f"pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} "
        f"edges @stream(initialCount: 2) {{ cursor node {{ {node} }} }} }} }}"
    )
    assert len(frames) > 3, "delivered in several payloads"
    assert frames[-1]["hasNext"] is False
    assert all("errors" not in frame for frame in frames)
    connection = reassemble(frames)["phoneNumbers"]
    assert orjson.dumps(connection["edges"]) == orjson.dumps(walked)
    assert connection["totalCount"] == len(walked)
    assert connection["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": False,
        "startCursor": walked[0]["cursor"],
        "endCursor": walked[-1]["cursor"],
    }


async def test_a_streamed_window_answers_exactly_as_the_held_page(engine: Engine) -> None:
    """Within GATEWAY_MAX_PAGE_SIZE both can be asked for: the same bytes, field for field."""
    selection = (
        "totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor } "
        "nodes{STREAM} { phoneNumber owner { lastName } } "
        "edges{STREAM} { cursor node { extension } }"
    )
    query = "{ phoneNumbers(page: {offset: 7, first: 9}) { " + selection + " } }"
    held = await engine.execute(query.replace("{STREAM}", ""))
    frames = await engine.collect(query.replace("{STREAM}", " @stream(initialCount: 1)"))
    assert orjson.dumps(reassemble(frames)) == orjson.dumps(held)


async def test_a_stream_on_an_entity_field_equals_the_cursor_walk(engine: Engine) -> None:
    first = await engine.execute("{ phoneNumbers(page: {first: 1}) { nodes { location { id } } } }")
    location = first["phoneNumbers"]["nodes"][0]["location"]["id"]
    walked = await cursor_walk(engine, f'filter: {{locationId: "{location}"}}', "phoneNumber")
    frames = await engine.collect(
        """query ($reps: [_Any!]!) { _entities(representations: $reps) { ... on Location {
            phoneNumbers(page: {first: 100000}) { nodes @stream { phoneNumber } } } } }""",
        {"reps": [{"__typename": "Location", "id": location}]},
    )
    nodes = reassemble(frames)["_entities"][0]["phoneNumbers"]["nodes"]
    assert nodes == [edge["node"] for edge in walked]


async def test_items_are_sent_as_each_upstream_page_arrives(engine: Engine) -> None:
    """The first payload needs the first upstream page only (not a GATEWAY_MAX_PAGE_SIZE
    chunk of several); each later one one upstream page, and the walk is never more than one
    page ahead of what the consumer took."""
    stats = engine.schema.engine.executor_class.projectors.stats
    streamed_before, chunks_before = stats.streamed, stats.chunks
    frames = await engine.frames(
        "{ phoneNumbers(page: {first: 60}) { nodes @stream(initialCount: 0) { phoneNumber } } }"
    )
    initial = formatted(await anext(frames))
    assert engine.upstream.calls == 1, "the first payload waits for no walk"
    assert initial["data"]["phoneNumbers"]["nodes"] == []
    taken = 0
    async for frame in frames:
        taken += 1
        # A page per payload, and one page fetched ahead.
        assert engine.upstream.calls <= 1 + taken
        if not formatted(frame)["hasNext"]:
            break
    assert engine.upstream.calls == 60 // PAGE_CAP
    assert stats.streamed == streamed_before + 1, "the projection fast path streamed it"
    assert stats.chunks > chunks_before


@pytest.mark.parametrize("first", [2000, 5000])
async def test_the_first_rows_leave_after_the_first_upstream_page(first: int) -> None:
    """Behind an upstream that caps its pages at 500, ``nodes @stream(initialCount: 10)``
    sends its initial payload once the first upstream page is in, whatever the window
    (within GATEWAY_MAX_PAGE_SIZE or past it), with ``pageInfo`` and ``totalCount`` exact
    from that page's counts; the rest follows a page at a time."""
    world = build_demo_world(size=2300, seed=7)
    gate = PageGate()
    engine = engine_over(world, page_cap=500, max_page_size=2000, gate=gate)
    query = (
        f"{{ phoneNumbers(page: {{first: {first}}}) {{ totalCount "
        "pageInfo { hasNextPage hasPreviousPage startCursor endCursor } "
        "nodes @stream(initialCount: 10) { phoneNumber extension } } }"
    )
    frames = await engine.frames(query)
    initial_payload = asyncio.ensure_future(anext(frames))
    await eventually(lambda: gate.asked == 1, "the first upstream page is asked for")
    gate.release()
    await eventually(
        lambda: initial_payload.done() or gate.asked > 1, "the payload or a second page"
    )
    for _ in range(100):  # the walk may ask for its next page before the payload is handed on
        await asyncio.sleep(0)
    assert initial_payload.done(), "the initial payload waits for another upstream page"
    initial = formatted(initial_payload.result())
    assert gate.answered == 1, "the initial payload waited for one upstream page"
    assert dict(engine.upstream.params(0))["details"] == "true"
    connection = initial["data"]["phoneNumbers"]
    assert len(connection["nodes"]) == 10
    assert connection["totalCount"] == 2300
    window = min(first, 2300)
    # The whole window, as the held page of it would answer.
    held = await engine_over(world, page_cap=2300, max_page_size=2300).execute(
        query.replace(" @stream(initialCount: 10)", "").replace(str(first), str(window))
    )
    assert connection["pageInfo"] == held["phoneNumbers"]["pageInfo"]
    assert connection["nodes"] == held["phoneNumbers"]["nodes"][:10]
    rest = [initial]
    gate.release(10)  # every page the walk may still ask for
    async for frame in frames:
        rest.append(formatted(frame))
    assert reassemble(rest)["phoneNumbers"] == held["phoneNumbers"]
    assert gate.answered == -(-window // 500), "then one upstream page at a time"


async def test_a_consumer_that_goes_away_stops_the_walk(engine: Engine) -> None:
    frames = await engine.frames(
        "{ phoneNumbers(page: {first: 500}) { edges @stream { cursor node { phoneNumber } } } }"
    )
    await anext(frames)
    await anext(frames)
    await anext(frames)
    await frames.aclose()  # type: ignore[attr-defined]
    stopped_at = engine.upstream.calls
    assert stopped_at <= MAX_PAGE_SIZE // PAGE_CAP + 3
    # Whatever the event loop still had to run has run: no request followed.
    for _ in range(50):
        await asyncio.sleep(0)
    assert engine.upstream.calls == stopped_at


async def test_each_upstream_request_of_a_walk_asks_for_a_page_at_most(
    world: SimulatorWorld,
) -> None:
    """An upstream that would serve the whole rest of a window in one answer is still asked
    for a page at a time: a body per request stays one page, whatever the window."""
    engine = engine_over(world, page_cap=100_000, max_page_size=100)
    frames = await engine.collect(
        "{ phoneNumbers(page: {first: 1000}) { nodes @stream(initialCount: 0) { phoneNumber } } }"
    )
    assert all("errors" not in frame for frame in frames)
    assert len(reassemble(frames)["phoneNumbers"]["nodes"]) == 1000
    asked = [int(dict(engine.upstream.params(i))["max"]) for i in range(engine.upstream.calls)]
    assert engine.upstream.calls == 10
    assert max(asked) <= 100, asked


async def test_a_walk_past_an_unsafe_next_link_still_asks_for_a_page_at_most(
    world: SimulatorWorld,
) -> None:
    """A ``next`` link the gateway will not follow (another origin) is replaced by its own
    request for the rest, which asks for a page at most too."""
    engine = engine_over(world, page_cap=100_000, max_page_size=100, relinked="http://evil.test")
    frames = await engine.collect(
        "{ phoneNumbers(page: {first: 1000}) { nodes @stream(initialCount: 0) { phoneNumber } } }"
    )
    assert all("errors" not in frame for frame in frames)
    assert len(reassemble(frames)["phoneNumbers"]["nodes"]) == 1000
    hosts = {request.url.host for request in engine.upstream.requests}
    assert hosts == {"webex.test"}, "the unsafe link was never followed"
    asked = [int(dict(engine.upstream.params(i))["max"]) for i in range(engine.upstream.calls)]
    assert engine.upstream.calls == 10
    assert max(asked) <= 100, asked


async def test_a_long_stream_takes_its_first_chunk_and_total_fresh(world: SimulatorWorld) -> None:
    """The total a stream's pageInfo is built from is of the walk's moment: a window longer
    than its first chunk fetches that chunk anew, even when the page cache holds it; a window
    the chunk holds whole is answered from the cache like a page."""
    engine = engine_over(world, cache_ttl=300)
    held = "{ phoneNumbers(page: {first: %d}) { totalCount nodes%s { phoneNumber } } }"
    await engine.execute(held % (MAX_PAGE_SIZE, ""))  # the first chunk, counts and all, cached
    primed = engine.upstream.calls
    frames = await engine.collect(held % (MAX_PAGE_SIZE, " @stream(initialCount: 1)"))
    assert engine.upstream.calls == primed, "a window the chunk holds is served from the cache"
    assert all("errors" not in frame for frame in frames)
    frames = await engine.collect(held % (50, " @stream(initialCount: 1)"))
    assert all("errors" not in frame for frame in frames)
    firsts = [
        i for i in range(engine.upstream.calls) if "start" not in dict(engine.upstream.params(i))
    ]
    assert len(firsts) == 2, "the long stream asked for its first chunk (and total) again"
    assert "details" in dict(engine.upstream.params(firsts[1]))
    assert len(reassemble(frames)["phoneNumbers"]["nodes"]) == 50


def failing_from(position: int, status: int) -> Callable[[httpx.Request], httpx.Response | None]:
    """An upstream that fails every request starting at ``position`` or later."""

    def answer(request: httpx.Request) -> httpx.Response | None:
        start = int(request.url.params.get("start", "0"))
        if start < position:
            return None
        body = {"message": "Something went wrong", "trackingId": "ROUTER_1234-5678"}
        return httpx.Response(status, content=orjson.dumps(body))

    return answer


@pytest.mark.parametrize(
    ("status", "code"), [(503, "UPSTREAM_UNAVAILABLE"), (400, "BAD_USER_INPUT")]
)
async def test_an_upstream_failure_mid_walk_ends_the_stream_with_the_error(
    world: SimulatorWorld, status: int, code: str
) -> None:
    engine = engine_over(world, failing_from(30, status))
    frames = await engine.collect(
        "{ phoneNumbers(page: {first: 80}) { totalCount nodes @stream { phoneNumber } } }"
    )
    last = frames[-1]
    assert last["hasNext"] is False
    [failed] = last["completed"]
    [error] = failed["errors"]
    assert error["extensions"]["code"] == code
    assert error["extensions"]["upstreamStatus"] == status
    assert error["extensions"]["trackingId"] == "ROUTER_1234-5678"
    assert error["path"] == ["phoneNumbers", "nodes"]
    data = reassemble(frames)["phoneNumbers"]
    assert len(data["nodes"]) == 30, "every item before the failure was delivered"
    assert data["totalCount"] > 80


FIRST_OVER = "{ phoneNumbers(page: {first: FIRST}) { nodes STREAM { phoneNumber } } }"


@pytest.mark.parametrize(
    ("first", "stream", "ceiling"),
    [
        (MAX_PAGE_SIZE + 1, "", MAX_PAGE_SIZE),
        (100_001, "@stream", 100_000),
        (0, "@stream", 100_000),
    ],
)
async def test_first_over_its_ceiling_is_refused_before_any_upstream_call(
    engine: Engine, first: int, stream: str, ceiling: int
) -> None:
    query = FIRST_OVER.replace("FIRST", str(first)).replace("STREAM", stream)
    [frame] = await engine.collect(query)
    [error] = frame["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert f"between 1 and {ceiling}" in error["message"]
    assert engine.upstream.calls == 0


async def test_a_list_without_stream_under_its_ceiling_is_one_payload(engine: Engine) -> None:
    frames = await engine.collect(FIRST_OVER.replace("FIRST", "10").replace("STREAM", ""))
    assert len(frames) == 1
    assert len(frames[0]["data"]["phoneNumbers"]["nodes"]) == 10
    hint = await engine.collect(FIRST_OVER.replace("FIRST", "11").replace("STREAM", ""))
    assert "under @stream may ask for up to 100000" in hint[0]["errors"][0]["message"]


async def test_defer_of_counts_total_and_owner_person(engine: Engine) -> None:
    query = """{
      phoneNumbers(filter: {ownerType: PEOPLE}, page: {first: 4}) {
        nodes { phoneNumber owner { type DEFER { person { id } } } }
        DEFER { totalCount }
      }
      DEFER { numberCounts { total assigned } }
    }"""
    whole = await engine.execute(query.replace("DEFER", "..."))
    frames = await engine.collect(query.replace("DEFER", "... @defer"))
    assert len(frames) > 1
    assert frames[-1]["hasNext"] is False
    assert "numberCounts" not in frames[0]["data"]
    assert orjson.dumps(reassemble(frames)) == orjson.dumps(whole)


async def test_each_upstream_pages_chunk_is_encoded_in_c_as_the_python_projector_renders_it() -> (
    None
):
    """The transports' path (lists encoded from the upstream's bytes, ``struct_projection``)
    streams the same payloads, chunk by chunk, as the Python projector's dicts."""
    world = build_demo_world(size=60, seed=5)
    query = (
        "{ phoneNumbers(page: {first: 40}) { nodes @stream(initialCount: 3) { "
        "__typename phoneNumber extension state owner { id firstName elinExpiryTime } "
        "location { id name } } } }"
    )
    plain = engine_over(world)
    in_c = engine_over(world)
    in_c.encoded_lists = True
    as_dicts = [orjson.dumps(frame) for frame in await plain.collect(query)]
    encoded = [orjson.dumps(frame) for frame in await in_c.collect(query)]
    assert encoded == as_dicts
    stats = in_c.schema.engine.executor_class.projectors.stats
    assert stats.streamed == 1
    # The head and every later upstream page of the walk (pages of PAGE_CAP entries).
    assert stats.chunks >= 40 // PAGE_CAP - 2
    assert stats.encoded == stats.chunks + 1

"""GraphiQL shows what the docs promise (issue 28, deliverable 5), against a real gateway.

The browser tests drive Debian's headless Chromium through Playwright (no ``playwright
install``), against ``numbers-gateway serve`` with its defaults (development, the embedded
simulator, no poll interval set): the tabs, the headers GraphiQL sends, what a result looks
like, the streamed example visibly streaming, the change-feed example showing a change, and
no GraphiQL in production. The tests without a browser pin down the defaults those rest on:
the demo's poll interval, the embedded simulator's pace, and the examples' own comments.
Each test's docstring quotes the statement it holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.routing import Mount

from gateway.server.app import create_app
from gateway.settings import (
    CHANGES_POLL_INTERVAL,
    DEMO_CHANGES_POLL_INTERVAL,
    Settings,
    load_settings,
)
from gateway.simulator import CONTROL_PREFIX, build_demo_world, create_simulator_app
from gateway.simulator.app import (
    EMBEDDED_PAGE_CAP,
    EMBEDDED_SECONDS_PER_ENTRY,
    NUMBERS_PATH,
    Simulator,
)
from gateway.transports.graphiql import (
    ASSET_CACHE_CONTROL,
    GRAPHIQL_CSP,
    load_examples,
    load_manifest,
    load_page_assets,
)
from tests.processes import ServedProcess, gateway_process, simulator_process
from tests.test_graphiql_offline import CHROMIUM_ARGS, _chromium

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "schema" / "examples"
DEMO_SIZE: int = Settings.model_fields["simulator_size"].default  # entries in the demo org
RESULT_TEXT = "() => document.querySelector('.result-window .CodeMirror').CodeMirror.getValue()"
# The tools section holds the variables and the headers editors; the one shown is the headers'.
HEADERS_EDITOR = 'section[aria-label="Headers"] .graphiql-editor:not(.hidden) .CodeMirror'

# ``make run``'s pacing (the test helper turns it off for every other test).
AT_ITS_DEFAULTS = {"GATEWAY_SIMULATOR_PACE": str(EMBEDDED_SECONDS_PER_ENTRY)}


def example(name: str) -> str:
    return (EXAMPLES / name).read_text(encoding="utf-8")


def feed_example_change() -> dict[str, Any]:
    """The change the change-feed example's comment tells a reader to make with curl."""
    found = re.search(
        r"curl \S+/_simulator/changes -d '(\{.*\})'", example("watch-assignments.graphql")
    )
    assert found, "the change-feed example no longer says how to make a change"
    change: dict[str, Any] = json.loads(found.group(1))
    return change


# --- the defaults the demo rests on (no browser) -------------------------------------------


def test_the_demo_polls_the_embedded_simulator_often_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The change-feed example: "In development against the embedded simulator the gateway
    polls every 2 seconds (GATEWAY_CHANGES_POLL_INTERVAL; 30 seconds otherwise)"."""
    for name in ("GATEWAY_CHANGES_POLL_INTERVAL", "GATEWAY_ENV", "GATEWAY_UPSTREAM_URL"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().changes_poll_interval == DEMO_CHANGES_POLL_INTERVAL == 2
    assert load_settings(env="development").changes_poll_interval == 2
    upstream = "https://webexapis.com/v1"
    assert load_settings(upstream_url=upstream).changes_poll_interval == CHANGES_POLL_INTERVAL
    production = load_settings(env="production", upstream_url=upstream)
    assert production.changes_poll_interval == CHANGES_POLL_INTERVAL == 30
    assert load_settings(changes_poll_interval=45).changes_poll_interval == 45
    monkeypatch.setenv("GATEWAY_CHANGES_POLL_INTERVAL", "7")
    assert load_settings().changes_poll_interval == 7, "a set interval wins, demo or not"
    monkeypatch.setenv("GATEWAY_CHANGES_POLL_INTERVAL", "30")
    assert load_settings().changes_poll_interval == 30


def test_the_feed_example_says_how_often_the_demo_polls() -> None:
    lines = example("watch-assignments.graphql").splitlines()
    comment = " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))
    said = re.search(
        r"polls every (\d+) seconds \(GATEWAY_CHANGES_POLL_INTERVAL; (\d+) seconds", comment
    )
    assert said, comment
    assert (float(said.group(1)), float(said.group(2))) == (
        DEMO_CHANGES_POLL_INTERVAL,
        CHANGES_POLL_INTERVAL,
    )


async def test_the_feed_example_change_applies_to_the_embedded_simulator() -> None:
    """The change the example's comment gives assigns a number that the demo data has
    unassigned, so the feed reports it as ASSIGNED."""
    change = feed_example_change()
    assert change["action"] == "assign"
    app = create_app(load_settings())
    lookup = (
        "query ($n: String) { phoneNumbers(filter: {phoneNumber: $n}) { nodes { owner { id } } } }"
    )
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway.test"
        ) as client,
    ):
        variables = {"n": change["phoneNumber"]}
        before = await client.post("/graphql", json={"query": lookup, "variables": variables})
        assert before.json()["data"]["phoneNumbers"]["nodes"] == [{"owner": None}]
        made = await client.post(CONTROL_PREFIX + "/changes", content=json.dumps(change))
        assert made.status_code == 200, made.text
        [applied] = made.json()["applied"]
        assert applied["entry"]["phoneNumber"] == change["phoneNumber"]
        assert applied["entry"]["owner"]["type"] == "PEOPLE"


class SleepRecorder:
    """Stands in for the simulator's ``sleep``: records each wait, waits for nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_the_simulator_answers_at_once_unless_paced() -> None:
    """The standalone simulator and the test bed are not paced; a paced one waits per entry
    it answers (none for an empty page)."""
    world = build_demo_world(size=300, seed=7)
    unpaced = create_simulator_app(world)
    paced = create_simulator_app(world, page_cap=100, seconds_per_entry=0.002)
    assert unpaced.state.simulator.seconds_per_entry == 0
    for app, expected in (
        (unpaced, []),
        (paced, [0.2, 0.01, 0.002]),  # a capped page of 100, a page of 5, max=1 with counts
    ):
        recorder = SleepRecorder()
        app.state.simulator.sleep = recorder
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://simulator.test"
        ) as client:
            for query in ("max=2000", "max=5", "max=1&details=true", "max=5&start=100000"):
                response = await client.get(
                    f"{NUMBERS_PATH}?{query}", headers={"Authorization": "Bearer demo-admin"}
                )
                assert response.status_code == 200, response.text
        assert recorder.waits == pytest.approx(expected)


def _embedded_simulator(app: Any) -> Simulator:
    [controls] = [r for r in app.routes if isinstance(r, Mount) and r.path == CONTROL_PREFIX]
    simulator: Simulator = controls.app.state.simulator
    return simulator


async def test_the_gateway_embeds_a_paced_simulator_where_small_queries_wait_little() -> None:
    """The streamed example: "The embedded simulator answers like a real upstream, 100
    entries a page and about 0.1 s a page, so its 1,000 entries take about a second" — while
    an ordinary query of a few entries waits a few milliseconds."""
    assert (EMBEDDED_PAGE_CAP, EMBEDDED_SECONDS_PER_ENTRY) == (100, 0.001)  # as it says
    app = create_app(load_settings(cache_ttl=0))
    simulator = _embedded_simulator(app)
    assert (simulator.page_cap, simulator.seconds_per_entry) == (100, 0.001)
    recorder = SleepRecorder()
    simulator.sleep = recorder
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway.test"
        ) as client,
    ):
        first = await client.post("/graphql", json={"query": example("first-numbers.graphql")})
        assert "errors" not in first.json(), first.text
        assert sum(recorder.waits) <= 0.01, recorder.waits  # 5 entries and the counts
        recorder.waits.clear()
        streamed = await client.post(
            "/graphql",
            json={"query": example("every-number-streamed.graphql")},
            headers={"Accept": "text/event-stream"},
        )
        assert streamed.status_code == 200
        assert streamed.text.count('"phoneNumber"') == DEMO_SIZE
        pages = [wait for wait in recorder.waits if wait > 0.001]
        assert pages == pytest.approx([0.1] * (DEMO_SIZE // 100)), recorder.waits


# --- in Chromium -------------------------------------------------------------------------


class GraphiQLPage:
    """One browser page on GraphiQL, with what it sent and what went wrong: its POSTs
    (headers and JSON body), console errors (CSP violations are console errors) and any
    request for another host (``CHROMIUM_ARGS`` send those to a closed port).

    Requests are watched, not intercepted: with interception on, Chromium turns its HTTP cache
    off and sends ``Cache-Control: no-cache``, which the gateway rightly takes as a refresh,
    so no result would ever show a cache hit."""

    def __init__(self, page: Any, expect: Any) -> None:
        self.page = page
        self.expect = expect
        self.posts: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.console_errors: list[str] = []
        self.left_the_machine: list[str] = []
        page.set_default_timeout(30_000)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console_errors.append(f"page error: {error}"))
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _request(self, request: Any) -> None:
        url = urlsplit(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
            self.left_the_machine.append(request.url)
        if request.method == "POST":
            self.posts.append((request.headers, request.post_data_json or {}))

    def open(self, gateway: ServedProcess) -> Any:
        response = self.page.goto(gateway.url)
        self.page.wait_for_selector(".graphiql-container")
        return response

    def open_tab(self, title: str) -> None:
        self.page.locator(".graphiql-tab", has_text=title).click()
        self.expect(self.page.locator(".graphiql-query-editor")).to_contain_text(title)

    def result(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.page.evaluate(RESULT_TEXT))
        return parsed

    def wait_for_result(self, condition: str, timeout: float = 20_000) -> dict[str, Any]:
        """Wait until the result pane holds JSON ``r`` for which the JavaScript ``condition``
        holds; return it. (The pane renders only its visible lines; its editor holds all.)"""
        self.page.wait_for_function(
            f"""() => {{
              const pane = document.querySelector('.result-window .CodeMirror');
              if (!pane) {{ return false; }}
              try {{
                const r = JSON.parse(pane.CodeMirror.getValue());
                return Boolean({condition});
              }} catch (error) {{
                return false;
              }}
            }}""",
            timeout=timeout,
        )
        return self.result()

    def run(self, operation: str, condition: str, attempts: int = 3) -> dict[str, Any]:
        """Run the open tab until it has sent ``operation`` and its result satisfies
        ``condition``: right after a tab switch or an edit GraphiQL may still send what it
        had before (its editor state updates debounced), so such a run is run again."""
        for attempt in range(attempts):
            self.page.evaluate(RESULT_TEXT.replace("getValue()", "setValue('')"))
            sent = len(self.posts)
            self.page.locator(".graphiql-execute-button").click()
            try:
                found = self.wait_for_result(condition, timeout=10_000)
            except Exception:
                if attempt == attempts - 1:
                    raise
                continue
            if operation in {body.get("operationName") for _, body in self.posts[sent:]}:
                return found
        raise AssertionError(f"GraphiQL did not send {operation}: {self.posts[-3:]}")

    def run_sending(
        self, operation: str, wanted: Callable[[dict[str, str]], bool], attempts: int = 10
    ) -> dict[str, Any]:
        """Run the open tab until the request it sends has headers ``wanted`` accepts (an
        edit of the headers editor reaches GraphiQL debounced) and return that run's result."""
        for _ in range(attempts):
            self.page.evaluate(RESULT_TEXT.replace("getValue()", "setValue('')"))
            sent = len(self.posts)
            self.page.locator(".graphiql-execute-button").click()
            found = self.wait_for_result("r.data || r.errors")
            mine = [h for h, body in self.posts[sent:] if body.get("operationName") == operation]
            if mine and wanted(mine[-1]):
                return found
            self.page.wait_for_timeout(200)  # not a timing assert: a pause before trying again
        raise AssertionError(f"GraphiQL never sent the edited headers: {self.posts[-1][0]}")

    def set_headers(self, text: str) -> None:
        """Replace the headers editor's text as a person would: select all, then insert
        ``text`` in one input (typed key by key, the editor would close brackets itself)."""
        self.page.locator(HEADERS_EDITOR).click()
        self.page.keyboard.press("Control+A")
        self.page.keyboard.insert_text(text)
        shown = self.page.evaluate(
            f"() => document.querySelector('{HEADERS_EDITOR}').CodeMirror.getValue()"
        )
        assert shown == text

    def sent(self, operation: str) -> list[dict[str, str]]:
        """The headers of each POST of ``operation``, in order."""
        return [h for h, body in self.posts if body.get("operationName") == operation]

    def assert_clean(self) -> None:
        assert self.left_the_machine == [], f"the page tried to leave: {self.left_the_machine}"
        assert self.console_errors == [], self.console_errors


class Chromium:
    """One headless Chromium for the module; each test opens a page in a fresh context (its
    own storage, so tabs start from the examples)."""

    def __init__(self, browser: Any, expect: Any) -> None:
        self.browser = browser
        self.expect = expect

    def graphiql(self) -> GraphiQLPage:
        context = self.browser.new_context(viewport={"width": 1400, "height": 900})
        return GraphiQLPage(context.new_page(), self.expect)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: `pip install playwright`"
    )
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield Chromium(browser, sync_api.expect)
        finally:
            browser.close()


@pytest.fixture(scope="module")
def demo() -> Iterator[ServedProcess]:
    """``numbers-gateway serve`` exactly as ``make run`` starts it: no GATEWAY_* at all."""
    with gateway_process(env=AT_ITS_DEFAULTS) as gateway:
        yield gateway


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_graphiql_opens_with_a_tab_per_example_and_the_headers_editor_open(
    chromium: Chromium, demo: ServedProcess
) -> None:
    """README: "Open http://127.0.0.1:8000/graphql in a browser for GraphiQL with an example
    operation"; "/graphql (... GraphiQL for browsers in development)"; "GraphiQL works
    offline: GraphiQL 4.1.2 with React 18 ... served from /graphql/assets/ with immutable
    caching and subresource integrity. The page is our own (a strict CSP, no inline code
    ...), opens a tab per operation in schema/examples/, with the headers editor open.\""""
    graphiql = chromium.graphiql()
    page, expect = graphiql.page, chromium.expect
    responses: dict[str, dict[str, str]] = {}
    page.on("response", lambda r: responses.setdefault(urlsplit(r.url).path, r.headers))
    response = graphiql.open(demo)
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == GRAPHIQL_CSP

    titles = [title for title, _ in load_examples(EXAMPLES)]  # operation names, by file name
    assert titles[:2] == ["AvailableNumbers", "PeopleNumbers"]
    expect(page.locator(".graphiql-tab")).to_have_text(titles, use_inner_text=True)
    headers_tab = page.locator('.graphiql-editor-tools button[data-name="headers"]')
    expect(headers_tab).to_have_class(re.compile(r"\bactive\b"))
    expect(page.get_by_role("region", name="Headers")).to_contain_text("Bearer demo-admin")

    loaded = page.evaluate(
        """() => ({
          react: window.React.version,
          inline: [...document.scripts].filter(s => !s.src && s.type !== 'application/json')
            .length,
          files: [...document.querySelectorAll('script[src], link[rel=stylesheet]')]
            .map(e => [new URL(e.src || e.href).pathname, e.integrity]),
        })"""
    )
    assert loaded["react"] == "18.3.1"
    assert loaded["inline"] == 0, "an inline script on the page"
    expected = {
        f"/graphql/assets/{a.path}"
        for a in (*load_manifest(), *load_page_assets())
        if a.role != "license"
    }
    assert "/graphql/assets/graphiql-4.1.2/graphiql.min.js" in expected
    assert {path for path, _ in loaded["files"]} == expected
    for path, integrity in loaded["files"]:
        assert integrity.startswith("sha256-"), path
        assert responses[path]["cache-control"] == ASSET_CACHE_CONTROL, path
    graphiql.assert_clean()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_graphiql_sends_its_headers_and_shows_the_cache_report(
    chromium: Chromium, demo: ServedProcess
) -> None:
    """README: "send `Gateway-Cache-Report: true` (GraphiQL does) and the response carries
    `extensions.cache` with `hits`, `misses` and, per upstream ask, `status` ..., `tier` ...
    and `ageSeconds`"; and what a query's result looks like in GraphiQL: the response as the
    gateway sent it, its ``data`` and its ``extensions`` (the cache report and the cost)."""
    graphiql = chromium.graphiql()
    graphiql.open(demo)
    graphiql.open_tab("PeopleNumbers")
    first = graphiql.run("PeopleNumbers", "r.data.people && r.extensions.cache")
    assert set(first) == {"data", "extensions"}
    assert set(first["data"]) == {"people", "numberCounts"}
    assert first["data"]["people"]["totalCount"] == first["data"]["numberCounts"]["total"] > 0
    assert set(first["extensions"]) == {"cache", "cost"}
    report = first["extensions"]["cache"]
    assert set(report) == {"hits", "misses", "calls"}
    assert report["hits"] + report["misses"] == len(report["calls"]) >= 1
    for call in report["calls"]:
        assert set(call) == {"status", "tier", "ageSeconds"}
        assert call["status"] in {"hit", "miss", "refresh", "bypass", "stale"}
        assert call["tier"] in {"local", "redis", "upstream"}
    # Again: the same upstream asks are now answered from this caller's cached pages.
    again = graphiql.run("PeopleNumbers", "r.extensions.cache.hits > 0")
    assert {call["status"] for call in again["extensions"]["cache"]["calls"]} == {"hit"}
    assert {call["tier"] for call in again["extensions"]["cache"]["calls"]} == {"local"}

    sent = graphiql.sent("PeopleNumbers")[-1]
    assert sent["content-type"] == "application/json"
    assert sent["accept"] == "application/json"
    assert sent["authorization"] == "Bearer demo-admin"  # from the headers editor
    assert sent["gateway-cache-report"] == "true"  # from the page, with every operation
    introspection = graphiql.sent("IntrospectionQuery")
    assert introspection, "GraphiQL loads the schema over the same fetcher"
    assert all(h["gateway-cache-report"] == "true" for h in introspection)
    graphiql.assert_clean()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_no_token_is_needed_and_another_demo_caller_is_one_header_away(
    chromium: Chromium, demo: ServedProcess
) -> None:
    """The first example: "With the embedded simulator no token is needed; to act as another
    demo caller add a header such as {"Authorization": "Bearer demo-location-admin"}
    below"; what the headers editor holds is what GraphiQL sends, and a Gateway-Cache-Report
    there replaces the page's own."""
    graphiql = chromium.graphiql()
    graphiql.open(demo)
    graphiql.open_tab("FirstNumbers")

    graphiql.set_headers("{}")
    anyone = graphiql.run_sending("FirstNumbers", lambda headers: "authorization" not in headers)
    assert "errors" not in anyone
    assert anyone["data"]["numberCounts"]["total"] == DEMO_SIZE

    graphiql.set_headers(
        '{"Authorization": "Bearer demo-location-admin", "gateway-cache-report": "false"}'
    )
    scoped = graphiql.run_sending(
        "FirstNumbers",
        lambda headers: headers.get("authorization") == "Bearer demo-location-admin",
    )
    assert "errors" not in scoped, scoped
    numbers = scoped["data"]["phoneNumbers"]
    assert 0 < scoped["data"]["numberCounts"]["total"] < DEMO_SIZE
    assert numbers["totalCount"] == scoped["data"]["numberCounts"]["total"]
    assert len({node["location"]["name"] for node in numbers["nodes"]}) == 1
    assert "cache" not in scoped.get("extensions", {}), "the editor's header replaces the page's"
    assert graphiql.sent("FirstNumbers")[-1]["gateway-cache-report"] == "false"
    graphiql.assert_clean()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_streamed_example_visibly_streams_and_ends_merged(chromium: Chromium) -> None:
    """The streamed example: "the list arrives page by page as the gateway walks the upstream
    (@stream), the total a moment later (@defer) ... watch the list grow"; README: the
    ``deferSpec=20220824`` payloads are what GraphiQL reads. The result pane shows the list
    growing in several steps, each painted in a frame of its own, and ends as one merged
    result with every entry and the total (no ``hasNext``, no ``incremental``).

    The simulator holds more entries than one first chunk (GATEWAY_MAX_PAGE_SIZE, 2,000), so
    the list streams page by page after that chunk whether or not the first chunk itself
    leaves page by page (issue 28, deliverable 4, which makes the default 1,000 stream the
    same way); everything else is the default demo."""
    size = 2500
    graphiql = chromium.graphiql()
    with gateway_process(env={**AT_ITS_DEFAULTS, "GATEWAY_SIMULATOR_SIZE": str(size)}) as gateway:
        graphiql.open(gateway)
        graphiql.open_tab("EveryNumberStreamed")
        # At every painted frame, how many entries the pane shows (each time it changed).
        graphiql.page.evaluate(
            """() => {
              window.entriesPainted = [];
              const pane = document.querySelector('.result-window .CodeMirror').CodeMirror;
              function frame() {
                const shown = (pane.getValue().match(/"phoneNumber"/g) || []).length;
                const seen = window.entriesPainted;
                if (seen[seen.length - 1] !== shown) { seen.push(shown); }
                requestAnimationFrame(frame);
              }
              requestAnimationFrame(frame);
            }"""
        )
        final = graphiql.run(
            "EveryNumberStreamed",
            f"r.data.phoneNumbers.nodes.length === {size} && r.data.phoneNumbers.totalCount",
        )
        painted: list[int] = graphiql.page.evaluate("() => window.entriesPainted")
    assert set(final) == {"data", "extensions"}, "one merged result"
    assert set(final["data"]["phoneNumbers"]) == {"nodes", "totalCount"}
    assert final["data"]["phoneNumbers"]["totalCount"] == size
    assert "cache" in final["extensions"]
    growing = [count for count in painted if count > 0]
    assert growing == sorted(growing), painted
    assert growing[-1] == size, painted
    assert len([count for count in growing if count < size]) >= 3, f"no visible growth: {painted}"
    assert graphiql.sent("EveryNumberStreamed")[-1]["accept"] == (
        "text/event-stream, application/json"
    )
    graphiql.assert_clean()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_change_feed_example_shows_a_change_within_seconds(
    chromium: Chromium, demo: ServedProcess
) -> None:
    """The change-feed example: "SYNCED first, then one event per changed entry per poll ...
    the gateway polls every 2 seconds ... Run this, then change a number: curl ... and its
    ASSIGNED event arrives within a few seconds", with the gateway's defaults (no interval
    set). The wait below only bounds a hang, under the 30 s of the production default; the
    default itself is test_the_demo_polls_the_embedded_simulator_often_unless_told_otherwise."""
    graphiql = chromium.graphiql()
    graphiql.open(demo)
    graphiql.open_tab("WatchAssignments")
    synced = graphiql.run("WatchAssignments", "r.data.phoneNumberChanges.kind === 'SYNCED'")
    assert synced["data"]["phoneNumberChanges"]["number"] is None
    change = feed_example_change()
    made = httpx.post(
        f"{demo.origin}{CONTROL_PREFIX}/changes", content=json.dumps(change), timeout=30
    )
    assert made.status_code == 200, made.text
    number = json.dumps(change["phoneNumber"])
    event = graphiql.wait_for_result(
        "r.data.phoneNumberChanges.kind === 'ASSIGNED' && "
        f"r.data.phoneNumberChanges.number.phoneNumber === {number}",
        timeout=25_000,
    )
    assert event["data"]["phoneNumberChanges"]["previous"] == {"owner": None}
    assert event["data"]["phoneNumberChanges"]["number"]["owner"]["type"] == "PEOPLE"
    sent = graphiql.sent("WatchAssignments")[-1]
    assert sent["accept"] == "text/event-stream, application/json"
    graphiql.assert_clean()


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_browser_gets_the_page_only_for_a_get_without_an_operation(
    chromium: Chromium, demo: ServedProcess
) -> None:
    """README: "A GET to `/graphql` gets the page only from a browser asking for HTML with no
    operation in the query string"."""
    graphiql = chromium.graphiql()
    query = quote("{ numberCounts { total } }")
    response = graphiql.page.goto(f"{demo.url}?query={query}")
    assert not response.headers["content-type"].startswith("text/html")
    assert set(json.loads(response.text())) & {"data", "errors"}
    assert graphiql.page.locator(".graphiql-container").count() == 0
    plain = httpx.get(demo.url, headers={"Accept": "application/json"}, timeout=30)
    assert not plain.headers["content-type"].startswith("text/html")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_production_serves_no_graphiql(chromium: Chromium) -> None:
    """README: "`GATEWAY_ENV` ... `production` turns off introspection, GraphiQL and field
    suggestions"; GraphiQL is "Development only"."""
    graphiql = chromium.graphiql()
    with (
        simulator_process() as simulator,
        gateway_process(
            env={"GATEWAY_ENV": "production", "GATEWAY_UPSTREAM_URL": simulator.url}
        ) as gateway,
    ):
        response = graphiql.page.goto(gateway.url)
        assert not response.headers["content-type"].startswith("text/html")
        assert graphiql.page.locator(".graphiql-container").count() == 0
        for asset in (load_manifest()[0], load_page_assets()[0]):
            missing = graphiql.page.goto(f"{gateway.origin}/graphql/assets/{asset.path}")
            assert missing.status == 404, asset.path
